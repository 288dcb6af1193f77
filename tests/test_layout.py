"""The package map holds: arrows only point down, and no module outgrows its room.

schemas <- expert <- worker <- feedback <- loadgen <- bench <- scenarios <- ticket_router.py.
A package may import itself and the packages below it, never one above (a worker that
imports the learning loop, or a traffic generator that imports a measurement, is a smell).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["schemas", "expert", "worker", "feedback", "loadgen", "bench", "scenarios"]
MAX_MODULE_LINES = 700


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_itself_and_the_packages_below_it(package: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    upward = {
        f"{path.relative_to(ROOT)} imports {sorted(_imported_packages(path) - allowed)}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if _imported_packages(path) - allowed
    }
    assert not upward


def test_no_package_module_passes_the_size_of_one_concern() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for package in LAYERS
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text("utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these by concern: {long}"


def test_nothing_imports_the_console_script() -> None:
    importers = [
        str(path.relative_to(ROOT))
        for package in LAYERS
        for path in (ROOT / package).rglob("*.py")
        if "ticket_router" in {n.split(".")[0] for n in _all_imports(path)}
    ]
    assert not importers


def _all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names
