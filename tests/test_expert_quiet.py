"""A quiet CLI: engine and library output goes to .state/logs/, the command's lines stay.

The diversion itself, in this process: what a library logs, warns or prints, what C code
writes to fd 2, what a child process prints. `route` run as a user runs it (a real vLLM
start, quiet and with --verbose) is in tests/test_worker_route.py, whose child-process runs
it shares.
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
