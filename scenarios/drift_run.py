"""One drift run's shared state and its child processes.

Owns `DriftRun` (the options, the run's clock and progress lines, the Ctrl-C flag, the
child processes and the samples and phase timings the report reads) and how a child
`ticket-router` command is spawned with its log file, awaited on its /readyz and stopped.
It decides nothing about the scenario's phases (`scenarios.drift`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenarios.drift_setup import DriftOptions


@dataclass(slots=True)
class DriftRun:
    """The run's state, shared by its phases (times from `time.monotonic`)."""

    options: DriftOptions
    started: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)

    def say(self, phase: str, message: str) -> None:
        """One progress line: `drift [mm:ss] phase: message`."""
        t = int(time.monotonic() - self.started)
        print(f"drift [{t // 60:02d}:{t % 60:02d}] {phase}: {message}", flush=True)

    @contextlib.contextmanager
    def phase(self, name: str, what: str) -> Any:
        self.say(name, what)
        t0 = time.monotonic()
        try:
            yield
        finally:
            wall = round(time.monotonic() - t0, 1)
            self.phases.append({"phase": name, "wall_s": wall})
            self.say(name, f"done in {wall:.0f} s")

    def on_sigint(self, _signum: int, _frame: object) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        print("drift: interrupted: finishing with what was measured (Ctrl-C again to abort)")


def spawn(args: Sequence[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `python -m ticket_router <args>` in its own session, output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own console script, fixed arguments
            [sys.executable, "-m", "ticket_router", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 60.0) -> int:
    """SIGTERM the child (it drains); SIGKILL its session after `grace_s`; the exit code."""
    from scenarios.demo import stop_worker

    return stop_worker(proc, grace_s=grace_s)


def wait_until_ready(run: DriftRun, name: str, port: int, *, timeout_s: float) -> None:
    """Wait for child `name`'s /readyz on `port`; RuntimeError naming its log if it never is."""
    from scenarios.demo import wait_ready

    proc = run.procs[name]
    if not wait_ready(proc, url=f"http://127.0.0.1:{port}/readyz", timeout_s=timeout_s):
        raise RuntimeError(f"{name} did not become ready; see {run.options.out_dir}/{name}.log")
