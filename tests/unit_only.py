"""The unit-only run's guard: a broker, a child process or `import vllm` fails the run.

`make test-fast` deselects the `integration`, `slow` and `chaos` tests and sets
ROUTER_TESTS_UNIT_ONLY=1; with it, this plugin refuses every real part a test starts anyway,
lists the tests that did at the end, and fails the run. A test missing its `integration`
mark shows there, instead of quietly making the inner loop slow.
"""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys
from collections.abc import Sequence

import pytest

from worker.broker import EmbeddedBroker

UNIT_ONLY = os.environ.get("ROUTER_TESTS_UNIT_ONLY") == "1"
# `platform.processor()` runs `uname -p`, and a desk file records `git rev-parse`: neither
# is a part under test.
ALLOWED_CHILDREN = frozenset({"uname", "git"})


class RealPartInUnitRun(BaseException):
    """A unit-only run started a real part (a BaseException: `except Exception` in the
    code under test cannot swallow it)."""


_violations: list[str] = []


def _refuse(what: str) -> RealPartInUnitRun:
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
    _violations.append(f"{test}: {what}")
    return RealPartInUnitRun(f"{what} in a unit-only run: mark the test integration")


class _NoVllm(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: object = None) -> None:
        if name == "vllm" or name.startswith("vllm."):
            raise _refuse(f"import {name}")
        return None


def _guard_real_parts() -> None:
    """Make a broker start, a child process or an `import vllm` fail this run."""
    popen_init = subprocess.Popen.__init__

    def no_child(self: subprocess.Popen[bytes], args: object, *a: object, **kw: object) -> None:
        program = args[0] if isinstance(args, list | tuple) and args else args
        if str(program) in ALLOWED_CHILDREN:
            popen_init(self, args, *a, **kw)  # type: ignore[arg-type]
            return
        raise _refuse(f"child process {args!r}")

    def no_broker(self: EmbeddedBroker, **_kw: object) -> int:
        raise _refuse("the embedded broker")

    subprocess.Popen.__init__ = no_child  # type: ignore[method-assign,assignment]
    EmbeddedBroker.start = no_broker  # type: ignore[method-assign,assignment]
    sys.meta_path.insert(0, _NoVllm())


def pytest_configure(config: pytest.Config) -> None:
    if UNIT_ONLY:
        _guard_real_parts()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _violations:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _violations:
        terminalreporter.section("real parts started in a unit-only run")
        for line in _violations:
            terminalreporter.line(line)
