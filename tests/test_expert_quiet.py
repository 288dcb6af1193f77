"""A quiet CLI: engine and library output goes to .state/logs/, the command's lines stay.

First the diversion itself, in this process (what a library logs, warns or prints, what C
code writes to fd 2, what a child process prints), then `route` run as a user runs it: a
real vLLM start on the tiny expert, quiet and with --verbose.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from expert import quiet
from tests.expert_fixtures import VLLM_CACHE

REPO = Path(__file__).resolve().parents[1]
TRUNCATION = (
    "Token indices sequence length is longer than the specified maximum sequence length "
    "for this model (700 > 512). Running this sequence through the model will result in "
    "indexing errors"
)


def _library_noise() -> None:
    """What libraries do while a command runs, by every route they use. (Python warnings
    are shown by pytest's recorder here, not written: the route test sees those.)"""
    library = logging.getLogger("unit_library")
    handler = logging.StreamHandler()  # as transformers does when it is first imported
    library.addHandler(handler)
    library.propagate = False
    try:
        library.warning("INFO 12-03 [core.py] engine noise")
    finally:
        library.removeHandler(handler)
    print("a library's print to stderr", file=sys.stderr)
    os.write(2, b"[W utils.cpp:68] C++ noise on fd 2\n")
    subprocess.run(  # noqa: S603 - this interpreter, a fixed one-liner
        [sys.executable, "-c", "import sys; print('engine core child noise', file=sys.stderr)"],
        check=True,
    )


@pytest.mark.integration  # starts a child process
def test_library_output_goes_to_the_log_and_ours_stays(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with quiet.library_output("unit", verbose=False, log_dir=tmp_path) as log:
        assert log is not None
        _library_noise()
        print("our progress line", file=quiet.user_stderr())
        print("our table row")
    terminal = capfd.readouterr()
    assert "our table row" in terminal.out
    assert "our progress line" in terminal.err
    assert f"engine and library output: {log}" in terminal.err
    text = log.read_text()
    for noise in (
        "engine noise",
        "print to stderr",
        "C++ noise",
        "engine core child noise",
    ):
        assert noise in text, noise
        assert noise not in terminal.err + terminal.out, noise
    assert "our progress line" not in text


@pytest.mark.integration  # starts a child process
def test_verbose_diverts_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with quiet.library_output("unit", verbose=True, log_dir=tmp_path) as log:
        assert log is None
        _library_noise()
    terminal = capfd.readouterr()
    assert "C++ noise" in terminal.err and "engine core child noise" in terminal.err
    assert not list(tmp_path.iterdir())


def test_a_warning_that_matters_becomes_one_line_of_ours(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the warning would be shown (stderr, so the log) under the diversion's hook.
    shown: list[str] = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *_: shown.append(str(message)))
    tokenizer = logging.getLogger("unit_tokenizer")
    with quiet.library_output("unit", verbose=False, log_dir=tmp_path) as log:
        tokenizer.warning(TRUNCATION)
        tokenizer.warning(TRUNCATION)
        warnings.warn("Casting torch.float16 to torch.bfloat16.", UserWarning, stacklevel=1)
        print("Casting torch.float16 to torch.bfloat16.", file=sys.stderr)  # not a warning
    err = capfd.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("note:")]
    assert ours == [
        "note: some tickets are longer than the model's 512 tokens: their ends are cut off"
        f" (details in {log})",
        f"note: the engine casts the model's torch.float16 weights to torch.bfloat16"
        f" (details in {log})",
    ]
    assert shown == ["Casting torch.float16 to torch.bfloat16."]


@pytest.mark.integration  # starts a child process
def test_library_knobs_are_set_for_children_and_restored_after(tmp_path: Path) -> None:
    before = {key: os.environ.get(key) for key in quiet.QUIET_ENV}
    with quiet.library_output("unit", verbose=False, log_dir=tmp_path):
        child = subprocess.run(  # noqa: S603 - this interpreter, a fixed one-liner
            [sys.executable, "-c", "import os; print(os.environ['VLLM_LOGGING_STREAM'])"],
            capture_output=True,
            text=True,
            check=True,
        )
    assert child.stdout.strip() == "ext://sys.stderr"
    assert {key: os.environ.get(key) for key in quiet.QUIET_ENV} == before


def test_a_command_without_library_output_leaves_no_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with quiet.library_output("unit", verbose=False, log_dir=tmp_path):
        print("just ours")
    assert not list(tmp_path.iterdir())
    assert "engine and library output" not in capfd.readouterr().err


def _route(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own console script, fixed arguments
        [sys.executable, "-m", "ticket_router", "route", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "ROUTER_ENGINE__CACHE_DIR": str(VLLM_CACHE),
        },
        timeout=600,
        check=False,
    )


VLLM_LINE = "Initializing a V1 LLM engine"


@pytest.mark.slow
@pytest.mark.timeout(900)  # the session's tiny expert, then two engine starts, on a busy machine
def test_route_shows_its_decision_and_keeps_vllm_in_the_log(
    tiny_expert_dir: Path, tmp_path: Path
) -> None:
    result = _route("--model", str(tiny_expert_dir), "VPN drops\nerror 809", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    terminal = result.stdout.splitlines() + result.stderr.splitlines()
    assert "expert      tiny-expert, adapter none" in result.stdout
    assert "started in" in result.stderr
    for line in terminal:
        assert not line.startswith(("INFO", "WARNING", "(MainProcess", "(EngineCore")), line
        assert "LOAD REPORT" not in line and "Loading safetensors" not in line, line
        assert VLLM_LINE not in line, line
    logs = list((tmp_path / ".state" / "logs").glob("route-*.log"))
    assert len(logs) == 1
    last = result.stderr.splitlines()[-1]
    assert last == f"engine and library output: .state/logs/{logs[0].name}"
    assert VLLM_LINE in logs[0].read_text()
    assert len(terminal) < 15, terminal

    verbose = _route("--verbose", "--model", str(tiny_expert_dir), "VPN drops", cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert VLLM_LINE in verbose.stderr
    assert "expert      tiny-expert, adapter none" in verbose.stdout
    assert len(list((tmp_path / ".state" / "logs").glob("route-*.log"))) == 1
