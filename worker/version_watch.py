"""Noticing a newly promoted expert version: polling the registry's `current` pointer.

Owns when the worker looks at the registry and what it does with what it reads: every
`poll_s` seconds (and at once on `wake()`, which the CLI calls on SIGHUP) it reads the
pointer file; a name that differs from the version serving is handed to the
`SwappableExpert`. A refused version is not tried again until the pointer changes or a
SIGHUP asks for it, so a bad promotion does not reload an engine every few seconds.

Why polling a small file rather than a file watch: a watch (inotify) misses changes on
network volumes (NFS, many CSI drivers) and Kubernetes ConfigMap updates (a symlink swap
above the file); reading a few bytes every two seconds works on every volume type and
costs nothing. It never writes the registry and performs no swap itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from expert.registry import Registry, RegistryError
from worker.swap import SwappableExpert

log = structlog.get_logger(__name__)


class VersionWatcher:
    """Polls the registry pointer and swaps the engine to each new version.

    Args:
        registry: the expert registry.
        engine: the engine to swap.
        poll_s: seconds between two reads of the pointer.
        on_crash: called when the watcher fails unexpectedly (the worker stops, and the
            error is raised again by `stop()`).
    """

    def __init__(
        self,
        *,
        registry: Registry,
        engine: SwappableExpert,
        poll_s: float,
        on_crash: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.poll_s = poll_s
        self.on_crash = on_crash
        self.refused: str | None = None
        self.checks = 0
        self._wake = asyncio.Event()
        self._forced = False
        self._last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="version-watch")
        self._task.add_done_callback(self._finished)

    def wake(self) -> None:
        """Read the pointer now, and retry it even if it names a refused version."""
        self._forced = True
        self._wake.set()

    async def stop(self) -> None:
        """Stop watching (an engine load under way is cancelled and its engine stopped).

        Raises:
            Exception: whatever made the watcher fail, if it did.
        """
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.critical("version_watch_failed", error_type=type(exc).__name__, error=str(exc))
        if self.on_crash is not None:
            self.on_crash()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            forced, self._forced = self._forced, False
            self._wake.clear()
            await self.check(forced=forced)

    async def check(self, *, forced: bool = False) -> None:
        """Read the pointer once and swap when it names another version.

        Args:
            forced: retry the pointer's version even if it was refused before.
        """
        self.checks += 1
        try:
            name = await asyncio.to_thread(self.registry.current_name)
        except RegistryError as exc:
            if str(exc) != self._last_error:  # once per distinct problem, not every poll
                log.warning("registry_pointer_unreadable", error=str(exc))
            self._last_error = str(exc)
            return
        self._last_error = None
        if name is None or name == self.engine.version:
            return
        if name == self.refused and not forced:
            return
        log.info("registry_pointer_changed", version=name, serving=self.engine.version)
        self.refused = None if await self.engine.swap_to(name) else name
