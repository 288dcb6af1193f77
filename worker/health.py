"""The worker's HTTP endpoint: /metrics (Prometheus), /healthz (alive), /readyz (ready).

/healthz checks the age of the consume loop's heartbeat, not whether Kafka is reachable:
a live worker waiting for a broker should be left alone, a stuck loop restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Generator

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def build_app(
    *,
    registry: CollectorRegistry,
    heartbeat: Callable[[], float],
    is_ready: Callable[[], bool],
    max_heartbeat_age_s: float = 30.0,
) -> FastAPI:
    """The ASGI app serving metrics and probes."""
    app = FastAPI(title="ticket-router worker", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Response:
        age_s = time.monotonic() - heartbeat()
        ok = age_s <= max_heartbeat_age_s
        return Response(
            f"{'ok' if ok else 'stale'} heartbeat_age_s={age_s:.1f}\n",
            status_code=200 if ok else 503,
            media_type="text/plain",
        )

    @app.get("/readyz")
    def readyz() -> Response:
        ok = is_ready()
        return Response(
            "ready\n" if ok else "not ready\n",
            status_code=200 if ok else 503,
            media_type="text/plain",
        )

    return app


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the worker's CLI owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HealthServer:
    """uvicorn serving `build_app(...)` inside the worker's event loop."""

    def __init__(self, *, app: FastAPI, host: str, port: int) -> None:
        self._server = _QuietServer(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="health-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        sockets = self._server.servers[0].sockets if self._server.servers else []
        return int(sockets[0].getsockname()[1]) if sockets else 0

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


async def serve_health(
    stack: contextlib.AsyncExitStack,
    *,
    registry: CollectorRegistry,
    heartbeat: Callable[[], float],
    is_ready: Callable[[], bool],
    host: str,
    port: int,
) -> int:
    """Start /metrics, /healthz and /readyz on `stack` (stopped when it closes); return the
    bound port."""
    server = HealthServer(
        app=build_app(registry=registry, heartbeat=heartbeat, is_ready=is_ready),
        host=host,
        port=port,
    )
    await server.start()
    stack.push_async_callback(server.stop)
    return server.port
