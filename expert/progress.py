"""Progress a person can see: a rich bar on a terminal, periodic plain lines elsewhere.

Owns how long-running commands (builds, evaluations, the demo's steps) report progress. On a
terminal it draws a rich progress bar; when the output is not a terminal (`make demo` piped
to a file, CI logs) a bar prints nothing for minutes, so it prints one line every
`every_s` seconds instead (and at the end). It never decides what the work is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Protocol

from expert import quiet


class StepReporter(Protocol):
    """What a build's `on_progress` callback gets called with."""

    def __call__(self, done: int, total: int, loss: float) -> None: ...


class _LinePrinter:
    def __init__(self, label: str, *, every_s: float, stream: IO[str], unit: str) -> None:
        self._label = label
        self._every_s = every_s
        self._stream = stream
        self._unit = unit
        self._started = time.monotonic()
        self._last_print: float | None = None
        self._last: tuple[int, int, float] | None = None
        self._printed: tuple[int, int, float] | None = None

    def __call__(self, done: int, total: int, loss: float) -> None:
        self._last = (done, total, loss)
        now = time.monotonic()
        due = self._last_print is None or now - self._last_print >= self._every_s
        if due or done >= total:
            self._print(now)

    def _print(self, now: float) -> None:
        if self._last is None:
            return
        done, total, loss = self._last
        elapsed = now - self._started
        eta = elapsed / done * (total - done) if done else float("nan")
        loss_part = "" if loss != loss else f", loss {loss:.3f}"  # NaN: no loss to show
        self._stream.write(
            f"{self._label}: {done}/{total} {self._unit}{loss_part}, "
            f"{elapsed:.0f} s elapsed, ~{eta:.0f} s left\n"
        )
        self._stream.flush()
        self._last_print = now
        self._printed = self._last

    def close(self) -> None:
        if self._last is not None and self._last is not self._printed:
            self._print(time.monotonic())


@contextmanager
def progress(
    label: str,
    *,
    unit: str = "steps",
    every_s: float = 15.0,
    stream: IO[str] | None = None,
    force_lines: bool = False,
) -> Iterator[StepReporter]:
    """A `(done, total, loss)` callback that shows progress while the block runs.

    Args:
        label: what is progressing ("training", "building the default expert").
        unit: what `done` counts.
        every_s: seconds between plain lines when the output is not a terminal.
        stream: where plain lines and the bar go (default: the terminal's stderr, also
            while `expert.quiet` sends library output to a log file).
        force_lines: print plain lines even on a terminal (tests).
    """
    out = stream if stream is not None else quiet.user_stderr()
    if not force_lines and out.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            TextColumn(f"{{task.completed}}/{{task.total}} {unit}  {{task.fields[loss_text]}}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(file=out)) as bar:
            task = bar.add_task(label, total=None, loss_text="")

            def update(done: int, total: int, loss: float) -> None:
                text = "" if loss != loss else f"loss {loss:.3f}"
                bar.update(task, completed=done, total=total, loss_text=text)

            yield update
        return
    printer = _LinePrinter(label, every_s=every_s, stream=out, unit=unit)
    try:
        yield printer
    finally:
        printer.close()
