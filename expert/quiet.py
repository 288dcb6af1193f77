"""Where engine and library output goes while a command runs: a log file, or the terminal.

Owns keeping vLLM, transformers, torch, peft, Hugging Face and tokenizers off the terminal
of a command (`expert build`, `route`, `demo`...): their `logging` records, `warnings.warn`
warnings, tqdm bars, what C++ code prints and what the vLLM engine-core child process
prints all go to `.state/logs/<command>-<timestamp>.log`, and the command's own lines and
tables stay on the terminal. The few library warnings a user should act on become one line
of ours (`NOTABLE`). With `--verbose` nothing is diverted and everything shows as before.

How: the libraries' environment knobs are set before they are imported (child processes
inherit them); file descriptor 2 and `sys.stderr` point at the log while the command runs,
so whatever the libraries write to stderr (their handlers, warnings, bars, C++ prints, the
engine core) lands there, from this process or its children. Standard output is left as it
is: it carries the command's results. Our own stderr lines (progress bars, `route`'s
summary, errors) go to `user_stderr()`, the terminal's stderr.

It decides nothing about what a command prints, and it does not touch the worker's logs: a
service's logs are its output (`worker.logs`).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

LOG_DIR = Path(".state/logs")
VERBOSE_HELP = "Show engine and library logs here."

# Read when the libraries are imported, and by the engine-core child, which inherits them.
# vLLM logs to stdout by default, but stdout is the command's (route prints results there):
# its log joins the other libraries' on stderr, also with --verbose.
LIBRARY_ENV: dict[str, str] = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}
# Bars and colours only garble a log file.
QUIET_ENV: dict[str, str] = {
    **LIBRARY_ENV,
    "VLLM_LOGGING_COLOR": "0",
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


@dataclass(frozen=True, slots=True)
class Notable:
    """A library message a user should see, and the line of ours that says it.

    Attributes:
        pattern: matched against the message as the library formats it.
        line: our words; `{name}` fields come from the pattern's named groups.
    """

    pattern: re.Pattern[str]
    line: str


NOTABLE: tuple[Notable, ...] = (
    Notable(
        re.compile(
            r"Your device (?P<device>\S+) doesn't support (?P<wanted>\S+)\. "
            r"Falling back to (?P<used>\S+)"
        ),
        "this {device} cannot compute in {wanted}: the engine falls back to {used} (slower)",
    ),
    Notable(
        re.compile(r"Casting (?P<from_>\S+) to (?P<to>\S+)\.$"),
        "the engine casts the model's {from_} weights to {to}",
    ),
    Notable(
        re.compile(
            r"Token indices sequence length is longer than the specified maximum sequence "
            r"length for this model \((?P<n>\d+) > (?P<max>\d+)\)"
        ),
        "some tickets are longer than the model's {max} tokens: their ends are cut off",
    ),
)


def notable_line(message: str) -> tuple[int, str] | None:
    """(index in `NOTABLE`, our line) for a library message a user should see, else None."""
    for index, notable in enumerate(NOTABLE):
        if (match := notable.pattern.search(message)) is not None:
            return index, notable.line.format(**match.groupdict())
    return None


@dataclass(slots=True)
class _Diversion:
    log: TextIO
    path: Path
    user: TextIO
    said: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: bool = True

    def say_if_notable(self, message: str) -> None:
        found = notable_line(message)
        if found is None or not self.active:
            return
        index, line = found
        with self.lock:
            if index in self.said:
                return
            self.said.add(index)
        self.user.write(f"note: {line} (details in {self.path})\n")
        self.user.flush()


_current: _Diversion | None = None
# Every log opened, closed at exit: library handlers may hold them after their block.
_open_logs: list[TextIO] = []


def _close_logs() -> None:
    for log in _open_logs:
        log.close()


atexit.register(_close_logs)


def user_stderr() -> TextIO:
    """Where the command's own stderr lines go: the terminal's stderr (also while library
    output is diverted to the log file)."""
    return _current.user if _current is not None else sys.stderr


@contextlib.contextmanager
def library_output(
    command: str, *, verbose: bool, log_dir: Path = LOG_DIR
) -> Iterator[Path | None]:
    """Divert engine and library output to `<log_dir>/<command>-<timestamp>.log` while the
    block runs (unless `verbose`), and say where in one line at the end.

    Args:
        command: names the log file ("expert-build").
        verbose: divert nothing: the libraries print to the terminal (vLLM's log on
            stderr, not stdout).
        log_dir: the folder of the log files.

    Yields:
        The log file (an outer block's, when one already diverts), or None when verbose.
    """
    global _current
    if _current is not None:  # an outer block already diverts
        yield _current.path
        return
    if verbose:
        with _environment(LIBRARY_ENV):
            yield None
        return
    path, log = _open_log(command, log_dir)
    header_bytes = path.stat().st_size
    with _environment(QUIET_ENV), _stderr_to(log) as user:
        diversion = _Diversion(log=log, path=path, user=user)
        _current = diversion
        restore_warnings = _watch_warnings(diversion)
        _watch_records(diversion)
        restore_structlog = _structlog_to(log)
        try:
            yield path
        finally:
            diversion.active = False
            _current = None
            restore_structlog()
            restore_warnings()
            log.flush()
            if path.stat().st_size > header_bytes:
                user.write(f"engine and library output: {path}\n")
                user.flush()
            else:  # no library ran (a command that failed early, a route with nothing to infer)
                path.unlink(missing_ok=True)


def _open_log(command: str, log_dir: Path) -> tuple[Path, TextIO]:
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.log"
    # Kept open after the block: handlers created inside it keep writing to it until exit.
    log = path.open("a", encoding="utf-8", buffering=1)
    _open_logs.append(log)
    log.write(f"# ticket-router {command} ({' '.join(sys.argv[1:])}) at {datetime.now()}\n")
    log.flush()
    return path, log


@contextlib.contextmanager
def _stderr_to(log: TextIO) -> Iterator[TextIO]:
    """Point fd 2 (C code, child processes) and `sys.stderr` (Python code) at `log`; yield
    the terminal's stderr for our own lines."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_stderr = sys.stderr
    saved_fd = os.dup(2)
    user = _terminal(saved_stderr, saved_fd)
    os.dup2(log.fileno(), 2)
    sys.stderr = log
    try:
        yield user
    finally:
        log.flush()
        sys.stderr = saved_stderr
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        if user is not saved_stderr:
            user.close()


@contextlib.contextmanager
def _environment(knobs: dict[str, str]) -> Iterator[None]:
    """Set the knobs the user has not set; unset them again afterwards."""
    added = {k: v for k, v in knobs.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _terminal(stream: TextIO, saved_fd: int) -> TextIO:
    """The stream our own stderr lines use while fd 2 points at the log."""
    try:
        on_fd_2 = stream.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        on_fd_2 = False
    if not on_fd_2:
        return stream  # already elsewhere (a test runner's capture): keep writing there
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding=encoding, errors="replace")


def _watch_warnings(diversion: _Diversion) -> Callable[[], None]:
    previous = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        diversion.say_if_notable(str(message))
        previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show

    def restore() -> None:
        warnings.showwarning = previous

    return restore


def _watch_records(diversion: _Diversion) -> None:
    """See every log record this process creates. The wrapper stays installed (inert once
    the block ends): vLLM wraps the factory it finds, and unwrapping would drop its part."""
    inner = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = inner(*args, **kwargs)
        if diversion.active and record.levelno >= logging.WARNING:
            with contextlib.suppress(Exception):  # a record that cannot format is not ours
                diversion.say_if_notable(record.getMessage())
        return record

    logging.setLogRecordFactory(factory)


def _structlog_to(log: TextIO) -> Callable[[], None]:
    """Our modules' structlog events are diagnostics here (the command prints its own
    lines): unless a command configured structlog itself, they go to the log file too."""
    import structlog

    if structlog.is_configured():
        return lambda: None
    factory = structlog.PrintLoggerFactory(file=log)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=factory,
    )

    def restore() -> None:
        if structlog.get_config()["logger_factory"] is factory:
            structlog.reset_defaults()

    return restore
