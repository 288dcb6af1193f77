"""One `StreamingExpert` on its own event loop, in its own thread.

Owns that thread and loop and the calls carried across them. vLLM's AsyncLLM start-up is
synchronous: it blocks the event loop it runs on for the whole engine-core load (seconds to
tens of seconds). A version loaded while the worker routes must therefore not be loaded on
the worker's loop, or every in-flight ticket would stall. Each engine here lives on its own
loop; callers on the worker's loop await its coroutines through `run_coroutine_threadsafe`,
and cancelling a caller cancels the call (the expert then aborts its vLLM request).

It makes no routing decision and knows nothing of versions or registries.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from expert.engine import StreamingExpert
from expert.serving import EngineConfig, EngineFailure, Prediction
from schemas.ticket import Ticket

T = TypeVar("T")

_JOIN_TIMEOUT_S = 30.0


class EngineThread:
    """A `StreamingExpert` whose coroutines all run on a private loop in a private thread.

    Args:
        config: the expert to serve.
        name: the thread's name (shows in thread dumps).
    """

    def __init__(self, config: EngineConfig, *, name: str) -> None:
        self.config = config
        self.name = name
        self.expert = StreamingExpert(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start the thread, then load and warm up the expert on it.

        Raises:
            ExpertLoadError: the expert cannot be loaded (the thread is stopped again).
        """
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        self._thread.start()
        try:
            await self._call(self.expert.start())
        except BaseException:
            # Also on cancellation: an engine core half started must not outlive this.
            await asyncio.shield(self.shutdown())
            raise

    async def classify(self, ticket: Ticket | str, *, request_id: str) -> Prediction:
        """`StreamingExpert.classify`, run on the engine's loop."""
        return await self._call(self.expert.classify(ticket, request_id=request_id))

    def load(self) -> tuple[int, int]:
        """(running, waiting) requests of the expert, best effort."""
        return self.expert.load()

    async def shutdown(self) -> None:
        """Stop the expert, then the loop and the thread (idempotent)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self.expert.shutdown(), loop)
            )
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop)
            )
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread = self._thread
            if thread is not None:
                await asyncio.to_thread(thread.join, _JOIN_TIMEOUT_S)
            if thread is None or not thread.is_alive():
                loop.close()

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise EngineFailure(f"engine thread {self.name} is not running")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
