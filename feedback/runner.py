"""Assembles one feedback consumer: decision log, producer, decision reader, feedback consumer,
health server, in that order.

Owns start-up order and teardown (one AsyncExitStack, reverse order, also on errors), as
`worker.runner` does for the worker. It installs no signal handlers (the CLI does) and maps
no exit codes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry

from feedback.consumer import FeedbackConfig, FeedbackConsumer
from feedback.decision_log import DecisionLog
from feedback.metrics import FeedbackMetrics
from schemas.group_map import GroupMap
from schemas.taxonomy import Taxonomy
from worker import kafka_io
from worker.config import Settings, masked
from worker.health import serve_health
from worker.kafka_io import Publisher, Reader, Source
from worker.runner import consumer_config, producer_config

log = structlog.get_logger(__name__)


def feedback_config(settings: Settings) -> FeedbackConfig:
    """The consumer's knobs from the settings."""
    fb = settings.feedback
    days = fb.decision_retention_days
    return FeedbackConfig(
        join_wait_s=fb.join_wait_s,
        max_held=fb.max_held,
        decision_retention_s=None if days is None else days * 86400.0,
        commit_interval_s=settings.kafka.commit_interval_s,
    )


# Fetch buffers are the consumer's largest memory: librdkafka's defaults (50 MiB a fetch,
# 64 MiB queued) cost ~100 MiB of RSS while a backlog is read; these cost about a third of
# that and still read >10k decisions/s on the 2-core development machine (README). A
# value in `kafka.extra` wins.
FETCH_LIMITS = {
    "fetch.max.bytes": str(2 * 2**20),
    "max.partition.fetch.bytes": str(512 * 2**10),
    "queued.max.messages.kbytes": "4096",
    "queued.min.messages": "1000",
}


def feedback_consumer_config(settings: Settings) -> dict[str, str]:
    """The feedback topic's consumer: the worker's settings in the feedback group."""
    conf = {**consumer_config(settings), "group.id": settings.feedback.group_id}
    for key, value in FETCH_LIMITS.items():
        conf.setdefault(key, value)
    return conf


def decision_reader_config(settings: Settings) -> dict[str, str]:
    """The routed/triage reader: no group membership, committed outputs only."""
    return {
        **settings.kafka.common_config(),
        "group.id": f"{settings.feedback.group_id}-decision-log",
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": "50",
        **FETCH_LIMITS,
        **settings.kafka.extra,
    }


def dead_letter_producer_config(settings: Settings) -> dict[str, str]:
    """The dead-letter producer: the worker's, never transactional."""
    conf = producer_config(settings)
    conf.pop("transactional.id", None)
    return conf


@dataclass
class RunningFeedbackConsumer:
    """A started feedback consumer's parts, for the CLI, benchmarks and tests."""

    settings: Settings
    consumer: FeedbackConsumer
    source: Source
    reader: Reader
    store: DecisionLog
    metrics: FeedbackMetrics
    health_port: int | None

    def stop(self) -> None:
        self.consumer.stop()

    async def run(self, *, stop_after: int | None = None) -> None:
        """Consume until stopped (see `FeedbackConsumer.run`)."""
        await self.consumer.run(self.source, self.reader, stop_after=stop_after)


@contextlib.asynccontextmanager
async def started_feedback_consumer(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    config: FeedbackConfig | None = None,
    store: DecisionLog | None = None,
) -> AsyncIterator[RunningFeedbackConsumer]:
    """Start every part in order; tear down in reverse order on exit.

    Args:
        settings: the settings (`feedback` and `kafka` sections).
        registry: where the metrics go (a fresh one when None).
        clock: wall-clock seconds for the store's times.
        config: knobs instead of those derived from `settings` (tests, benchmarks).
        store: an unopened decision log instead of `settings.feedback.store_path`.

    Raises:
        TaxonomyError, GroupMapError: invalid taxonomy or group map (exit 2).
        DecisionLogError: the decision log cannot be opened (exit 4).
        BrokerUnreachableError: no broker answered (exit 3).
    """
    taxonomy = Taxonomy.load(settings.taxonomy_path)
    group_map = GroupMap.load(settings.feedback.group_map_path, labels=taxonomy.labels)
    metrics = FeedbackMetrics(registry or CollectorRegistry())
    async with contextlib.AsyncExitStack() as stack:
        if store is None:
            store = DecisionLog(settings.feedback.store_path, cache_mib=settings.feedback.cache_mib)
        store.open()
        stack.callback(store.close)
        kafka_io.wait_for_broker(
            settings.kafka.bootstrap_servers,
            timeout_s=30,
            conf={
                k: v for k, v in settings.kafka.common_config().items() if k != "bootstrap.servers"
            },
        )
        publisher = Publisher(conf=dead_letter_producer_config(settings))
        await publisher.start()
        stack.push_async_callback(publisher.close)
        consumer = FeedbackConsumer(
            config=config or feedback_config(settings),
            taxonomy=taxonomy,
            group_map=group_map,
            store=store,
            publisher=publisher,
            metrics=metrics,
            clock=clock,
        )
        reader = Reader(conf=decision_reader_config(settings), topics=taxonomy.decision_topics())
        await reader.start(store.positions())
        stack.push_async_callback(reader.close)
        source = Source(
            conf=feedback_consumer_config(settings),
            topics=[taxonomy.topics.feedback],
            listener=consumer,
        )
        await source.start()
        stack.push_async_callback(source.close)
        health_port = None
        if settings.metrics.enabled:
            health_port = await serve_health(
                stack,
                registry=metrics.registry,
                heartbeat=lambda: consumer.heartbeat,
                is_ready=lambda: consumer.is_ready,
                host=settings.metrics.host,
                port=settings.feedback.metrics_port,
            )
        metrics.ready.set_function(lambda: 1.0 if consumer.is_ready else 0.0)
        log.info(
            "feedback_consumer_started",
            settings=masked(settings),
            store=str(store.path),
            metrics_port=health_port,
        )
        yield RunningFeedbackConsumer(
            settings=settings,
            consumer=consumer,
            source=source,
            reader=reader,
            store=store,
            metrics=metrics,
            health_port=health_port,
        )
