"""Zero-downtime expert swap: the engine the pipeline routes with, able to change version.

Owns which expert version serves new tickets, loading a newly promoted version (beside the
old one when memory allows, else after draining it), the switch, releasing the old engine
once its in-flight tickets are answered, refusing a bad version while the old one keeps
routing, and the swap's metrics and log events. It implements the pipeline's `Engine`
protocol and answers with `VersionedPrediction`, so every output names the version that
decided it.

It never writes the registry (the pointer is the promoter's) and does not notice new
versions by itself: `worker.version_watch` asks it to swap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil
import structlog

from expert.registry import Registry, RegistryError, VersionInfo, versioned_model_id
from expert.serving import (
    EngineConfig,
    EngineFailure,
    ExpertLoadError,
    LabelMismatchError,
    check_labels,
    load_card,
)
from schemas.ticket import Ticket
from worker.config import EngineSettings
from worker.engine_thread import EngineThread
from worker.errors import FatalError
from worker.metrics import Metrics
from worker.seams import VersionedPrediction

log = structlog.get_logger(__name__)

SwapMode = Literal["overlap", "drain_first"]

# What an engine's start can raise besides ExpertLoadError (StreamingExpert wraps vLLM's
# OSError/ValueError/RuntimeError; the rest can escape from its warm-up or tokenizer).
# Anything else is a bug and crashes the worker.
ENGINE_START_ERRORS = (ExpertLoadError, OSError, ValueError, RuntimeError, KeyError)
# Beyond the KV cache and the weights, an AsyncLLM engine core (interpreter, torch, vLLM)
# takes about this much resident memory on a CPU.
ENGINE_PROCESS_BYTES = 1 << 30
# Old-engine tickets are bounded by the pipeline's deadline; this much is added to it.
RELEASE_MARGIN_S = 5.0


class VersionRefused(Exception):
    """A version the worker will not serve; the one serving keeps routing.

    Attributes:
        version: the refused version (None: `model_dir`).
        reason: "registry" (unknown, unreadable or changed since added), "card" (the model
            card does not load), "label_mismatch" (not the taxonomy's queues) or
            "load_failed" (the engine did not start or warm up).
    """

    def __init__(self, version: str | None, reason: str, error: BaseException) -> None:
        super().__init__(f"version {version!r} refused ({reason}): {error}")
        self.version = version
        self.reason = reason
        self.error = error


@dataclass
class ServedVersion:
    """One loaded engine, the version it serves and the calls it has in flight."""

    engine: EngineThread
    version: str | None
    model_id: str
    adapter_id: str | None
    recommended_threshold: float | None
    recommended_queue_thresholds: Mapping[str, float] = field(default_factory=dict)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


def memory_available_bytes() -> int:
    """Memory a new engine may take: the host's available memory, capped by the cgroup's
    (a container's limit) when there is one."""
    available = int(psutil.virtual_memory().available)
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            available = min(available, int(limit) - usage)
        break
    return max(0, available)


def engine_bytes_needed(config: EngineConfig, version_dir: Path) -> int:
    """Memory an engine serving `version_dir` needs: KV cache, weights, process overhead."""
    weights = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())
    return int(config.kv_cache_gib * 2**30) + weights + ENGINE_PROCESS_BYTES


def _plain_engine_config(settings: EngineSettings, **update: object) -> EngineConfig:
    fields = set(EngineConfig.model_fields)
    return EngineConfig.model_validate(settings.model_dump(include=fields)).model_copy(
        update=update
    )


def use_spawned_engine_cores() -> None:
    """Engine cores are started by spawn (fork + exec), never by a bare fork.

    A second engine starts while librdkafka's threads run; a forked child would inherit
    their locks mid-use. vLLM's CPU platform already forces spawn; on a GPU its default is
    fork, so the worker sets it for every engine it starts.
    """
    if os.environ.get("VLLM_WORKER_MULTIPROC_METHOD") != "spawn":
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"


class SwappableExpert:
    """The pipeline's engine when a registry is configured: one served version at a time.

    Args:
        settings: the engine settings (registry folder, swap mode, vLLM settings).
        registry: the expert registry.
        labels: the taxonomy's queues; a version answering anything else is refused.
        metrics: where the swap metrics go.
        release_timeout_s: how long an old engine's in-flight tickets are waited for.
        on_switch: called after each switch (e.g. to relabel build info).
        engine_factory: builds the engine for one version (config, thread name); tests
            pass a fake.
    """

    def __init__(
        self,
        *,
        settings: EngineSettings,
        registry: Registry,
        labels: Sequence[str],
        metrics: Metrics,
        release_timeout_s: float = 35.0,
        on_switch: Callable[[], None] | None = None,
        engine_factory: Callable[[EngineConfig, str], EngineThread] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.labels = list(labels)
        self.metrics = metrics
        self.release_timeout_s = release_timeout_s
        self.on_switch = on_switch
        self._engine_factory = engine_factory or (
            lambda config, name: EngineThread(config, name=name)
        )
        self._active: ServedVersion | None = None
        self._loaded: list[ServedVersion] = []
        self._routing = asyncio.Event()  # cleared while a drain-first swap has no engine
        self._routing.set()
        self._swap_lock = asyncio.Lock()
        self._serial = 0

    # ------------------------------------------------------------------ Engine protocol

    def _require_active(self) -> ServedVersion:
        if self._active is None:
            raise EngineFailure("the expert is not started")
        return self._active

    @property
    def version(self) -> str | None:
        """The registry version serving new tickets (None: `model_dir`, none promoted yet)."""
        return self._require_active().version

    @property
    def routing_paused(self) -> bool:
        """True while a drain-first swap holds new tickets (no engine serves)."""
        return not self._routing.is_set()

    @property
    def model_id(self) -> str:
        """The served model id; "<card model_id>@<version>" when it came from the registry."""
        return self._require_active().model_id

    @property
    def adapter_id(self) -> str | None:
        return self._require_active().adapter_id

    @property
    def recommended_threshold(self) -> float | None:
        return self._require_active().recommended_threshold

    @property
    def recommended_queue_thresholds(self) -> Mapping[str, float]:
        return self._require_active().recommended_queue_thresholds

    async def classify(self, ticket: Ticket | str, *, request_id: str) -> VersionedPrediction:
        """Classify on the version serving now; the answer names that version.

        Raises:
            EngineFailure: the engine failed; a retry goes to whichever version serves then.
        """
        await self._routing.wait()
        served = self._require_active()  # chosen before any await: the switch is atomic
        served.in_flight += 1
        served.idle.clear()
        try:
            prediction = await served.engine.classify(ticket, request_id=request_id)
        finally:
            served.in_flight -= 1
            if served.in_flight == 0:
                served.idle.set()
        return VersionedPrediction(
            **{f.name: getattr(prediction, f.name) for f in dataclasses.fields(prediction)},
            model_id=served.model_id,
            adapter_id=served.adapter_id,
            recommended_threshold=served.recommended_threshold,
            recommended_queue_thresholds=served.recommended_queue_thresholds,
        )

    def load(self) -> tuple[int, int]:
        """(running, waiting) requests over every loaded engine."""
        running = waiting = 0
        for served in self._loaded:
            r, w = served.engine.load()
            running, waiting = running + r, waiting + w
        return running, waiting

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Serve the registry's current version (`model_dir` when none is promoted yet).

        Raises:
            ExpertLoadError: the current version (or `model_dir`) cannot be served; the
                worker exits 4 (the registry's pointer must be fixed).
        """
        use_spawned_engine_cores()
        try:
            name = await asyncio.to_thread(self.registry.current_name)
        except RegistryError as exc:
            raise ExpertLoadError(f"expert registry: {exc}") from exc
        if name is None:
            log.warning(
                "registry_empty",
                registry=str(self.registry.root),
                serving=str(self.settings.model_dir),
            )
        try:
            served = await self._load(name)
        except VersionRefused as exc:
            raise ExpertLoadError(str(exc)) from exc
        self._switch(served)
        log.info("expert_version_serving", version=name, model=served.model_id)

    async def shutdown(self) -> None:
        """Stop every loaded engine (idempotent)."""
        self._active = None
        while self._loaded:
            await self._release(self._loaded[-1], wait_s=0)

    # ------------------------------------------------------------------ swapping

    async def swap_to(self, version: str) -> bool:
        """Serve `version` from now on, or refuse it and keep the current one.

        Returns:
            True when `version` serves new tickets; False when it was refused.

        Raises:
            FatalError: drain-first mode, the new version failed and the old one could not
                be loaded again (nothing left to route with).
        """
        async with self._swap_lock:
            old = self._require_active()
            if version == old.version:
                return True
            started = time.monotonic()
            mode, needed, available = self._choose_mode(version)
            log.info(
                "expert_swap_started",
                version=version,
                previous=old.version,
                mode=mode,
                needed_bytes=needed,
                available_bytes=available,
            )
            if mode == "overlap":
                ok = await self._swap_overlapping(version, old, started)
            else:
                ok = await self._swap_drain_first(version, old, started)
            return ok

    def _choose_mode(self, version: str) -> tuple[SwapMode, int | None, int | None]:
        configured = self.settings.swap_mode
        if configured != "auto":
            return configured, None, None
        try:
            needed = engine_bytes_needed(self.settings, self.registry.path_of(version))
        except (OSError, RegistryError):
            return "overlap", None, None  # the load will refuse it with the reason
        available = memory_available_bytes()
        return ("overlap" if available >= needed else "drain_first"), needed, available

    async def _swap_overlapping(self, version: str, old: ServedVersion, started: float) -> bool:
        try:
            new = await self._load(version)
        except VersionRefused as exc:
            self._refused(exc)
            return False
        self._switch(new)
        self._swapped(new, old, started, mode="overlap")
        await self._release(old, wait_s=self.release_timeout_s)
        return True

    async def _swap_drain_first(self, version: str, old: ServedVersion, started: float) -> bool:
        try:
            await asyncio.to_thread(self._check_version, version)
        except VersionRefused as exc:
            self._refused(exc)
            return False
        self._routing.clear()  # tickets wait here (within their deadline) until a version serves
        try:
            await self._release(old, wait_s=self.release_timeout_s)
            try:
                new = await self._load(version)
            except VersionRefused as exc:
                self._refused(exc)
                try:
                    self._switch(await self._load(old.version))
                except VersionRefused as again:
                    raise FatalError(
                        f"version {version!r} failed and {old.version!r} did not load again: "
                        f"{again}"
                    ) from again
                return False
            self._switch(new)
            self._swapped(new, old, started, mode="drain_first")
            return True
        finally:
            self._routing.set()

    def _check_version(self, version: str) -> VersionInfo:
        """The cheap checks, before any engine starts: known, unchanged, right labels.

        Raises:
            VersionRefused: with the reason.
        """
        try:
            info = self.registry.info(version)
            self.registry.verify(version)
        except RegistryError as exc:
            raise VersionRefused(version, "registry", exc) from exc
        try:
            check_labels(load_card(info.path), self.labels)
        except LabelMismatchError as exc:
            raise VersionRefused(version, "label_mismatch", exc) from exc
        except ExpertLoadError as exc:
            raise VersionRefused(version, "card", exc) from exc
        return info

    async def _load(self, version: str | None) -> ServedVersion:
        """Check, start and warm up an engine for `version` (None: `model_dir`).

        Raises:
            VersionRefused: the version cannot be served (no engine is left running).
        """
        if version is None:
            config = _plain_engine_config(self.settings)
        else:
            info = await asyncio.to_thread(self._check_version, version)
            config = _plain_engine_config(self.settings, model_dir=info.path, adapter_dir=None)
        self._serial += 1
        engine = self._engine_factory(config, f"expert-engine-{self._serial}")
        try:
            await engine.start()
        except ENGINE_START_ERRORS as exc:
            raise VersionRefused(version, "load_failed", exc) from exc
        expert = engine.expert
        try:
            check_labels(expert.card, self.labels)
        except LabelMismatchError as exc:
            await engine.shutdown()
            raise VersionRefused(version, "label_mismatch", exc) from exc
        model_id = expert.model_id
        if version is not None:
            model_id = versioned_model_id(model_id, version)
        served = ServedVersion(
            engine=engine,
            version=version,
            model_id=model_id,
            adapter_id=expert.adapter_id,
            recommended_threshold=expert.recommended_threshold,
            recommended_queue_thresholds=expert.recommended_queue_thresholds,
        )
        self._loaded.append(served)
        self.metrics.expert_engines.set(len(self._loaded))
        return served

    def _switch(self, served: ServedVersion) -> None:
        self._active = served
        self.metrics.expert_version.info(
            {"version": served.version or "", "model": served.model_id}
        )
        if self.on_switch is not None:
            self.on_switch()

    def _swapped(
        self, new: ServedVersion, old: ServedVersion, started: float, *, mode: SwapMode
    ) -> None:
        duration_s = time.monotonic() - started
        self.metrics.expert_swaps.labels(result="succeeded").inc()
        self.metrics.expert_swap_duration.observe(duration_s)
        log.info(
            "expert_swapped",
            version=new.version,
            previous=old.version,
            model=new.model_id,
            mode=mode,
            duration_s=round(duration_s, 3),
            old_in_flight=old.in_flight,
        )

    def _refused(self, refusal: VersionRefused) -> None:
        self.metrics.expert_swaps.labels(result="refused").inc()
        log.error(
            "expert_swap_refused",
            version=refusal.version,
            serving=self._active.version if self._active is not None else None,
            reason=refusal.reason,
            error_type=type(refusal.error).__name__,
            error=str(refusal.error)[:1000],
        )

    async def _release(self, served: ServedVersion, *, wait_s: float) -> None:
        """Let `served`'s in-flight tickets finish (at most `wait_s`), then stop its engine."""
        started = time.monotonic()
        drained = True
        if wait_s > 0 and served.in_flight:
            try:
                async with asyncio.timeout(wait_s):
                    await served.idle.wait()
            except TimeoutError:
                drained = False
        left = served.in_flight
        try:
            await served.engine.shutdown()
        finally:
            if served in self._loaded:
                self._loaded.remove(served)
            self.metrics.expert_engines.set(len(self._loaded))
        log.info(
            "expert_version_released",
            version=served.version,
            model=served.model_id,
            drained=drained,
            in_flight_left=left,
            drain_s=round(time.monotonic() - started, 3),
        )
