"""Assembles one worker: engine, producer, pipeline, consumer, health server, in that order.

Owns start-up order and teardown (one AsyncExitStack, reverse order, also on errors). It
installs no signal handlers (the CLI does) and maps no exit codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry

from expert.engine import StreamingExpert
from expert.registry import Registry
from expert.serving import ExpertLoadError, check_labels
from schemas.taxonomy import Taxonomy
from schemas.ticket import SourceSystem
from worker import kafka_io
from worker.broker import DEAD_LETTER_MAX_MESSAGE_BYTES
from worker.config import ENFORCED_CONSUMER, ENFORCED_PRODUCER, Settings, masked
from worker.errors import EngineUnavailableError
from worker.health import serve_health
from worker.kafka_io import Publisher, Source
from worker.metrics import Metrics
from worker.pipeline import Pipeline, PipelineConfig
from worker.swap import RELEASE_MARGIN_S, SwappableExpert
from worker.version_watch import VersionWatcher

log = structlog.get_logger(__name__)


def consumer_config(settings: Settings) -> dict[str, str]:
    """librdkafka consumer settings: defaults < user `extra` < enforced overrides."""
    k = settings.kafka
    conf = {
        **k.common_config(),
        "group.id": k.group_id,
        "session.timeout.ms": str(k.session_timeout_ms),
        "max.poll.interval.ms": str(k.max_poll_interval_ms),
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": "10",
        **k.extra,
    }
    return _enforce(conf, ENFORCED_CONSUMER)


def producer_config(settings: Settings) -> dict[str, str]:
    """librdkafka producer settings: defaults < user `extra` < enforced overrides."""
    conf = {
        **settings.kafka.common_config(),
        # Room for a dead letter of the largest inbound record (see worker.broker).
        "message.max.bytes": str(DEAD_LETTER_MAX_MESSAGE_BYTES),
        "linger.ms": "2",
        "compression.type": "lz4",
        **settings.kafka.extra,
    }
    enforced = dict(ENFORCED_PRODUCER)
    if settings.kafka.exactly_once:
        enforced["transactional.id"] = settings.kafka.effective_transactional_id()
    return _enforce(conf, enforced)


def _enforce(conf: dict[str, str], enforced: dict[str, str]) -> dict[str, str]:
    for key, value in enforced.items():
        if key in conf and conf[key] != value:
            log.warning("kafka_setting_overridden", setting=key, given=conf[key], used=value)
        conf[key] = value
    return conf


def pipeline_config(settings: Settings) -> PipelineConfig:
    fmt = settings.kafka.source_format
    return PipelineConfig(
        max_in_flight=settings.max_in_flight,
        confidence_threshold=settings.routing.confidence_threshold,
        mode_overrides=settings.routing.modes,
        deadline_s=settings.routing.deadline_s,
        commit_interval_s=settings.kafka.commit_interval_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        source_format=SourceSystem(fmt) if fmt else None,
        exactly_once=settings.kafka.exactly_once,
        transactional_id=settings.kafka.effective_transactional_id(),
        transaction_max_s=settings.kafka.transaction_max_s,
        transaction_max_tickets=settings.kafka.transaction_max_tickets,
    )


@dataclass
class Worker:
    """A running worker's parts, for the CLI and tests."""

    settings: Settings
    pipeline: Pipeline
    source: Source
    metrics: Metrics
    health_port: int | None
    watcher: VersionWatcher | None = None

    def stop(self) -> None:
        self.pipeline.stop()

    def reload(self) -> bool:
        """Read the expert registry's pointer now (SIGHUP); False when there is no registry."""
        if self.watcher is None:
            return False
        self.watcher.wake()
        return True


def _engine(
    settings: Settings, taxonomy: Taxonomy, metrics: Metrics
) -> StreamingExpert | SwappableExpert:
    """The expert as configured: a fixed folder, or a registry's versions (swappable)."""
    if settings.engine.registry_dir is None:
        return StreamingExpert(settings.engine)
    engine: SwappableExpert

    def label_build() -> None:
        metrics.build_info.info(
            {"version": _version(), "model": engine.model_id, "adapter": engine.adapter_id or ""}
        )

    engine = SwappableExpert(
        settings=settings.engine,
        registry=Registry(settings.engine.registry_dir),
        labels=taxonomy.labels,
        metrics=metrics,
        release_timeout_s=settings.routing.deadline_s + RELEASE_MARGIN_S,
        on_switch=label_build,
    )
    return engine


@contextlib.asynccontextmanager
async def started_worker(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    on_engine_ready: Callable[[], None] | None = None,
) -> AsyncIterator[Worker]:
    """Start every part in order; tear down in reverse order on exit.

    Raises:
        TaxonomyError: the taxonomy file is invalid.
        EngineUnavailableError: the expert failed to load or its labels differ (exit 4).
        BrokerUnreachableError: no broker answered (exit 3).
    """
    taxonomy = Taxonomy.load(settings.taxonomy_path)
    metrics = Metrics(registry or CollectorRegistry())
    async with contextlib.AsyncExitStack() as stack:
        # The engine first: its core process must start before librdkafka's threads exist.
        # (A later version's engine core is spawned, which is safe beside them: worker.swap.)
        engine = _engine(settings, taxonomy, metrics)
        try:
            await engine.start()
            stack.push_async_callback(engine.shutdown)
            if isinstance(engine, StreamingExpert):
                check_labels(engine.card, taxonomy.labels)
                metrics.expert_version.info({"version": "", "model": engine.model_id})
        except ExpertLoadError as exc:
            raise EngineUnavailableError(str(exc)) from exc
        metrics.build_info.info(
            {"version": _version(), "model": engine.model_id, "adapter": engine.adapter_id or ""}
        )
        if on_engine_ready is not None:
            on_engine_ready()
        kafka_io.wait_for_broker(
            settings.kafka.bootstrap_servers,
            timeout_s=30,
            conf={
                k: v for k, v in settings.kafka.common_config().items() if k != "bootstrap.servers"
            },
        )
        publisher = Publisher(conf=producer_config(settings))
        await publisher.start()
        stack.push_async_callback(publisher.close)
        if settings.kafka.exactly_once:
            await publisher.init_transactions()
        pipeline = Pipeline(
            config=pipeline_config(settings),
            taxonomy=taxonomy,
            engine=engine,
            publisher=publisher,
            metrics=metrics,
        )
        source = Source(
            conf=consumer_config(settings), topics=[taxonomy.topics.inbound], listener=pipeline
        )
        await source.start()
        stack.push_async_callback(source.close)
        health_port = None
        if settings.metrics.enabled:
            health_port = await serve_health(
                stack,
                registry=metrics.registry,
                heartbeat=lambda: pipeline.heartbeat,
                is_ready=lambda: pipeline.is_ready,
                host=settings.metrics.host,
                port=settings.metrics.port,
            )
        metrics.ready.set_function(lambda: 1.0 if pipeline.is_ready else 0.0)
        watcher = None
        if isinstance(engine, SwappableExpert):
            watcher = VersionWatcher(
                registry=engine.registry,
                engine=engine,
                poll_s=settings.engine.registry_poll_s,
                on_crash=pipeline.stop,
            )
            await watcher.start()
            stack.push_async_callback(watcher.stop)
        log.info(
            "worker_started",
            settings=masked(settings),
            model=engine.model_id,
            metrics_port=health_port,
        )
        yield Worker(
            settings=settings,
            pipeline=pipeline,
            source=source,
            metrics=metrics,
            health_port=health_port,
            watcher=watcher,
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ticket-router")
    except PackageNotFoundError:
        return "0+unknown"
