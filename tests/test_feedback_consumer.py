"""The feedback consumer on the real broker: decision log, join, poison, commits, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from feedback.consumer import FeedbackConfig
from feedback.decision_log import DecisionLog, DecisionLogError
from feedback.runner import RunningFeedbackConsumer, started_feedback_consumer
from schemas.feedback import Feedback
from schemas.routing import Disposition, RoutedTicket, RoutingDecision, TriageReason
from schemas.taxonomy import Taxonomy
from schemas.ticket import Ticket
from tests.kafka_helpers import OutputReader, committed, produce
from worker.broker import TopicLayout, create_layout
from worker.config import Settings

PARTITIONS = 2
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
FAST = FeedbackConfig(commit_interval_s=0.1, gauge_interval_s=0.1, size_interval_s=0.1)
SAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "samples" / "feedback"


@pytest.fixture
def layout(bootstrap: str, taxonomy_file: Path) -> Taxonomy:
    tax = Taxonomy.load(taxonomy_file)
    create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=PARTITIONS))
    return tax


def settings_for(bootstrap: str, taxonomy_file: Path, unique: str, store: Path) -> Settings:
    return Settings(
        kafka={"bootstrap_servers": bootstrap, "commit_interval_s": 0.1},
        taxonomy_path=taxonomy_file,
        metrics={"enabled": False},
        feedback={"group_id": f"fb-{unique}", "store_path": store},
    )


def routed(
    tax: Taxonomy, ticket_id: str, queue: str | None, *, model: str, triage: bool = False
) -> tuple[str, bytes]:
    """A routed (or triage) record as the worker publishes it: (topic, value)."""
    probabilities = {label: 0.0 for label in tax.labels}
    probabilities[queue or tax.labels[0]] = 1.0
    topic = tax.topics.triage if triage or queue is None else tax.topic_for(queue)
    record = RoutedTicket(
        ticket=Ticket(id=ticket_id, subject=f"ticket {ticket_id}", body="text", created_at=T0),
        decision=RoutingDecision(
            queue=queue,
            confidence=0.4 if triage else 0.95,
            probabilities=probabilities if queue else {},
            model_id=model,
            engine_latency_s=0.01,
        ),
        disposition=Disposition.TRIAGE if triage or queue is None else Disposition.ROUTED,
        triage_reason=(
            (TriageReason.LOW_CONFIDENCE if queue else TriageReason.DEADLINE_EXCEEDED)
            if triage or queue is None
            else None
        ),
        topic=topic,
        source_topic=tax.topics.inbound,
        source_partition=0,
        source_offset=0,
        received_at=T0,
        decided_at=T0,
        published_at=T0,
    )
    return topic, record.model_dump_json().encode()


def publish_decisions(bootstrap: str, records: Sequence[tuple[str, bytes]]) -> None:
    by_topic: dict[str, list[bytes]] = {}
    for topic, value in records:
        by_topic.setdefault(topic, []).append(value)
    for topic, values in by_topic.items():
        keys = [json.loads(v)["ticket"]["id"].encode() for v in values]
        assert produce(bootstrap, topic, values, keys=keys) == len(values)


def feedback(ticket_id: str, final_queue: str, *, minutes: int = 45) -> bytes:
    return (
        Feedback(
            ticket_id=ticket_id,
            final_queue=final_queue,
            outcome="resolved",
            occurred_at=T0 + timedelta(minutes=minutes),
            actor="agent.smith",
        )
        .model_dump_json()
        .encode()
    )


def publish_feedback(bootstrap: str, tax: Taxonomy, values: Sequence[bytes]) -> None:
    keys = [f"k{i}".encode() for i in range(len(values))]
    assert produce(bootstrap, tax.topics.feedback, values, keys=keys) == len(values)


async def eventually(predicate: Callable[[], Any], *, timeout_s: float = 30, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


@contextlib.asynccontextmanager
async def running(
    settings: Settings, registry: CollectorRegistry, **kwargs: Any
) -> AsyncIterator[RunningFeedbackConsumer]:
    kwargs.setdefault("config", FAST)
    async with started_feedback_consumer(settings, registry=registry, **kwargs) as fc:
        task = asyncio.create_task(fc.run())
        try:
            yield fc
        finally:
            fc.stop()
            await task


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_feedback_before_its_decision_is_held_then_joined(
    bootstrap: str, layout: Taxonomy, taxonomy_file: Path, unique: str, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    settings = settings_for(bootstrap, taxonomy_file, unique, tmp_path / "log.sqlite3")
    publish_feedback(bootstrap, layout, [feedback("INC100", "database")])
    async with running(settings, registry) as fc:
        await eventually(
            lambda: sample(
                registry, "router_feedback_events_total", source="canonical", outcome="resolved"
            ),
            what="the feedback stored",
        )
        await eventually(lambda: sample(registry, "router_feedback_held") == 1, what="held gauge")
        assert (
            sample(
                registry,
                "router_feedback_verdicts_total",
                queue="servers_storage",
                model="expert-a",
                verdict="reassigned",
            )
            == 0
        )
        publish_decisions(
            bootstrap, [routed(layout, "INC100", "servers_storage", model="expert-a")]
        )
        await eventually(
            lambda: sample(
                registry,
                "router_feedback_verdicts_total",
                queue="servers_storage",
                model="expert-a",
                verdict="reassigned",
            ),
            what="the held feedback joined with its decision",
        )
        await eventually(lambda: sample(registry, "router_feedback_held") == 0, what="nothing held")
        assert sample(registry, "router_feedback_held_seconds_count") == 1
        assert sample(registry, "router_feedback_without_decision_total", source="canonical") == 0
        assert fc.store.lookup("INC100") is not None


async def test_feedback_whose_decision_never_comes_is_counted_after_the_hold(
    bootstrap: str, layout: Taxonomy, taxonomy_file: Path, unique: str, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    settings = settings_for(bootstrap, taxonomy_file, unique, tmp_path / "log.sqlite3")
    clock_offset = [0.0]
    publish_decisions(bootstrap, [routed(layout, "INC1", "hardware", model="expert-a")])
    publish_feedback(
        bootstrap, layout, [feedback("INC404", "hardware"), feedback("INC1", "hardware")]
    )
    async with running(settings, registry, clock=lambda: time.time() + clock_offset[0]):
        await eventually(
            lambda: sample(
                registry,
                "router_feedback_verdicts_total",
                queue="hardware",
                model="expert-a",
                verdict="confirmed",
            ),
            what="the known ticket judged",
        )
        await eventually(
            lambda: sample(registry, "router_decision_log_caught_up") == 1, what="caught up"
        )
        assert sample(registry, "router_feedback_without_decision_total", source="canonical") == 0
        clock_offset[0] = 601.0  # past the default 600 s hold
        await eventually(
            lambda: (
                sample(registry, "router_feedback_without_decision_total", source="canonical") == 1
            ),
            what="the unknown ticket given up on",
        )


async def test_verdicts_triage_outcomes_and_live_accuracy_per_queue_and_version(
    bootstrap: str, layout: Taxonomy, taxonomy_file: Path, unique: str, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    settings = settings_for(bootstrap, taxonomy_file, unique, tmp_path / "log.sqlite3")
    decisions = [
        routed(layout, "A1", "network_vpn", model="expert-a"),
        routed(layout, "A2", "network_vpn", model="expert-a"),
        routed(layout, "A3", "database", model="expert-a"),
        routed(layout, "B1", "network_vpn", model="expert-b"),
        routed(layout, "T1", "hardware", model="expert-b", triage=True),
        routed(layout, "T2", "hardware", model="expert-b", triage=True),
        routed(layout, "T3", None, model="expert-b"),
    ]
    publish_decisions(bootstrap, decisions)
    final = {
        "A1": "network_vpn",
        "A2": "security_incident",
        "A3": "database",
        "B1": "network_vpn",
        "T1": "hardware",
        "T2": "software",
        "T3": "software",
    }
    publish_feedback(bootstrap, layout, [feedback(t, q) for t, q in final.items()])
    async with running(settings, registry):
        await eventually(
            lambda: sample(registry, "router_live_judged_decisions", window="1h") == 4,
            what="4 judged",
        )
        verdicts = {
            (q, m, v): sample(
                registry, "router_feedback_verdicts_total", queue=q, model=m, verdict=v
            )
            for q in ("network_vpn", "database")
            for m in ("expert-a", "expert-b")
            for v in ("confirmed", "reassigned")
        }
        assert {k: v for k, v in verdicts.items() if v} == {
            ("network_vpn", "expert-a", "confirmed"): 1,
            ("network_vpn", "expert-a", "reassigned"): 1,
            ("database", "expert-a", "confirmed"): 1,
            ("network_vpn", "expert-b", "confirmed"): 1,
        }
        assert (
            sample(
                registry, "router_feedback_triage_outcomes_total", queue="hardware", guess="right"
            )
            == 1
        )
        assert (
            sample(
                registry, "router_feedback_triage_outcomes_total", queue="software", guess="wrong"
            )
            == 1
        )
        assert (
            sample(
                registry, "router_feedback_triage_outcomes_total", queue="software", guess="none"
            )
            == 1
        )
        assert sample(registry, "router_live_correct_decisions", window="24h") == 3
        assert sample(registry, "router_live_accuracy_ratio", window="1h") == pytest.approx(0.75)
        await eventually(
            lambda: sample(registry, "router_decision_log_decisions") == 7, what="size gauge"
        )
        assert sample(registry, "router_feedback_delay_seconds_count") == 7


async def test_poison_feedback_is_dead_lettered_with_reasons_and_committed(
    bootstrap: str, layout: Taxonomy, taxonomy_file: Path, unique: str, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    settings = settings_for(bootstrap, taxonomy_file, unique, tmp_path / "log.sqlite3")
    unknown_group = json.loads((SAMPLES / "zendesk-group-assignment-changed.json").read_text())
    unknown_group["event"]["current"] = "999999"
    comment_only = json.loads((SAMPLES / "zendesk-group-assignment-changed.json").read_text())
    comment_only["type"] = "zen:event-type:ticket.comment_added"
    bad = {
        b"\xff\xfe": "undecodable",
        b"{not json": "undecodable",
        b'{"ticket_id": "INC1"}': "unknown_format",
        b'{"ticket_id": "INC1", "final_queue": 7, "outcome": "resolved"}': "invalid",
        json.dumps(unknown_group).encode(): "unknown_group",
        json.dumps({"ticket_id": "X" * 100_000, "final_queue": "database"}).encode(): "invalid",
    }
    good = [(SAMPLES / "jira-issue-updated.json").read_bytes(), json.dumps(comment_only).encode()]
    values = [*bad, *good]
    publish_feedback(bootstrap, layout, values)
    async with running(settings, registry) as fc:
        await eventually(lambda: fc.consumer.feedback_processed == len(values), what="all read")
        group = settings.feedback.group_id
        await eventually(
            lambda: (
                sum(committed(bootstrap, group, layout.topics.feedback, PARTITIONS).values())
                == len(values)
            ),
            what="every offset committed",
        )
    reader = OutputReader(bootstrap, [layout.topics.feedback_dead_letter])
    dead = reader.read_until(lambda rs: len(rs) >= len(bad), timeout_s=30)
    reader.close()
    assert sorted(r.value for r in dead) == sorted(bad)
    for record in dead:
        assert record.headers["router.dead-letter.reason"].decode() == bad[record.value]
        assert record.headers["__connect.errors.exception.message"]
        assert record.headers["router.source.topic"].decode() == layout.topics.feedback
    for reason in set(bad.values()):
        expected = sum(1 for r in bad.values() if r == reason)
        assert sample(registry, "router_feedback_dead_lettered_total", reason=reason) == expected
    assert (
        sample(registry, "router_feedback_skipped_total", source="zendesk", reason="no_signal") == 1
    )
    assert (
        sample(registry, "router_feedback_events_total", source="jira", outcome="reassigned") == 1
    )


class FailingDecisionLog(DecisionLog):
    """A real store whose disk 'fails' on the third feedback batch."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches = 0
        self.stored = 0

    def add_feedback(self, items: Any, *, now: float) -> Any:
        self.batches += 1
        if self.batches == 3:
            raise DecisionLogError("write failed: disk I/O error")
        stored = super().add_feedback(items, now=now)
        self.stored += len(stored)
        return stored


async def test_offsets_are_committed_only_after_the_feedback_is_stored(
    bootstrap: str, layout: Taxonomy, taxonomy_file: Path, unique: str, tmp_path: Path
) -> None:
    n = 20
    path = tmp_path / "log.sqlite3"
    settings = settings_for(bootstrap, taxonomy_file, unique, path)
    publish_decisions(
        bootstrap, [routed(layout, f"INC{i}", "database", model="expert-a") for i in range(n)]
    )
    publish_feedback(bootstrap, layout, [feedback(f"INC{i}", "database") for i in range(n)])
    small = replace(FAST, max_poll_records=4)
    failing = FailingDecisionLog(path)
    async with started_feedback_consumer(
        settings, registry=CollectorRegistry(), config=small, store=failing
    ) as crashing:
        with pytest.raises(DecisionLogError, match="disk I/O error"):
            await crashing.run()
    group = settings.feedback.group_id
    after_crash = sum(committed(bootstrap, group, layout.topics.feedback, PARTITIONS).values())
    assert 0 < failing.stored < n
    assert after_crash <= failing.stored  # never past what the store holds

    registry = CollectorRegistry()
    async with running(settings, registry, config=small) as fc:
        await eventually(
            lambda: (
                sum(committed(bootstrap, group, layout.topics.feedback, PARTITIONS).values()) == n
            ),
            what="all committed after the restart",
        )
        assert fc.consumer.feedback_processed == n - after_crash  # the uncommitted tail, again
        stats = fc.store.window(judged_since=0)
    assert stats.routed == stats.routed_correct == n  # each ticket judged once, none twice
    verdicts = sample(
        registry,
        "router_feedback_verdicts_total",
        queue="database",
        model="expert-a",
        verdict="confirmed",
    )
    assert verdicts == n - failing.stored  # re-read records already stored do not count again


async def test_restart_keeps_the_decision_log_and_resumes_where_it_ended(
    bootstrap: str, layout: Taxonomy, taxonomy_file: Path, unique: str, tmp_path: Path
) -> None:
    settings = settings_for(bootstrap, taxonomy_file, unique, tmp_path / "log.sqlite3")
    publish_decisions(
        bootstrap, [routed(layout, f"OLD{i}", "software", model="expert-a") for i in range(30)]
    )
    first = CollectorRegistry()
    async with running(settings, first):
        await eventually(
            lambda: sample(first, "router_decisions_logged_total") == 30, what="30 logged"
        )
    publish_decisions(
        bootstrap, [routed(layout, f"NEW{i}", "hardware", model="expert-b") for i in range(5)]
    )
    second = CollectorRegistry()
    async with running(settings, second) as fc:
        await eventually(lambda: sample(second, "router_decisions_logged_total") == 5, what="5 new")
        await eventually(lambda: fc.reader.caught_up, what="caught up")
        assert sample(second, "router_decisions_logged_total") == 5  # nothing read twice
        old = fc.store.lookup("OLD7")
        assert old is not None and (old.queue, old.model_id) == ("software", "expert-a")
        assert fc.store.count_decisions() == 35


@pytest.mark.slow
async def test_the_real_workers_decisions_are_logged_and_judged(
    bootstrap: str,
    layout: Taxonomy,
    taxonomy_file: Path,
    unique: str,
    tmp_path: Path,
    streaming_expert: Any,
) -> None:
    from loadgen.corpus import generate
    from worker.kafka_io import Publisher, Source
    from worker.metrics import Metrics
    from worker.pipeline import Pipeline
    from worker.runner import consumer_config, pipeline_config, producer_config

    tickets = generate(12, seed=7)
    truth = {t.ticket.id: t.queue for t in tickets}
    produce(
        bootstrap, layout.topics.inbound, [t.ticket.model_dump_json().encode() for t in tickets]
    )
    settings = Settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": f"w-{unique}", "commit_interval_s": 0.1},
        taxonomy_path=taxonomy_file,
        metrics={"enabled": False},
        feedback={"group_id": f"fb-{unique}", "store_path": tmp_path / "log.sqlite3"},
    )
    publisher = Publisher(conf=producer_config(settings))
    await publisher.start()
    pipeline = Pipeline(
        config=pipeline_config(settings),
        taxonomy=layout,
        engine=streaming_expert,
        publisher=publisher,
        metrics=Metrics(CollectorRegistry()),
    )
    source = Source(
        conf=consumer_config(settings), topics=[layout.topics.inbound], listener=pipeline
    )
    await source.start()
    try:
        await pipeline.run(source, stop_after=len(tickets))
    finally:
        await source.close()
        await publisher.close()
    reader = OutputReader(bootstrap, layout.decision_topics())
    outputs = reader.read_until(lambda rs: len(rs) >= len(tickets), timeout_s=30)
    reader.close()
    routed = {r.key.decode(): RoutedTicket.model_validate_json(r.value) for r in outputs if r.key}
    assert sorted(routed) == sorted(truth)

    publish_feedback(bootstrap, layout, [feedback(t, q) for t, q in truth.items()])
    registry = CollectorRegistry()
    model = streaming_expert.model_id
    async with running(settings, registry) as fc:

        def judged() -> float:
            verdicts = sum(
                sample(registry, "router_feedback_verdicts_total", queue=q, model=model, verdict=v)
                for q in layout.labels
                for v in ("confirmed", "reassigned")
            )
            triaged = sum(
                sample(registry, "router_feedback_triage_outcomes_total", queue=q, guess=g)
                for q in layout.labels
                for g in ("right", "wrong", "none")
            )
            return verdicts + triaged

        await eventually(lambda: judged() == len(tickets), what="every real decision judged")
        for ticket_id, out in routed.items():
            logged = fc.store.lookup(ticket_id)
            assert logged is not None
            assert (logged.model_id, logged.queue, logged.disposition) == (
                model,
                out.decision.queue,
                out.disposition,
            )
    confirmed = sum(
        1
        for t, out in routed.items()
        if out.disposition is Disposition.ROUTED and out.decision.queue == truth[t]
    )
    assert (
        sum(
            sample(
                registry,
                "router_feedback_verdicts_total",
                queue=q,
                model=model,
                verdict="confirmed",
            )
            for q in layout.labels
        )
        == confirmed
    )
