"""Pipeline logic with in-memory fakes (the same behaviours run end to end in test_worker_e2e)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from schemas.routing import RoutedTicket
from schemas.taxonomy import Taxonomy
from tests.fakes import (
    FakeEngine,
    InMemoryPublisher,
    InMemorySource,
    RewindableInMemorySource,
    TransactionalInMemoryPublisher,
)
from worker.errors import FatalError, RetryableError
from worker.kafka_io import InboundRecord
from worker.metrics import Metrics
from worker.pipeline import H_SOURCE_OFFSET, Pipeline, PipelineConfig

TAX = Taxonomy.load()
TOPIC = TAX.topics.inbound


def _ticket(i: int, subject: str) -> bytes:
    return json.dumps(
        {
            "id": f"T{i}",
            "source": "canonical",
            "subject": subject,
            "body": "",
            "created_at": datetime.now(UTC).isoformat(),
        }
    ).encode()


def _record(i: int, value: bytes, partition: int = 0) -> InboundRecord:
    return InboundRecord(
        topic=TOPIC,
        partition=partition,
        offset=i,
        key=None,
        value=value,
        timestamp_ms=None,
        headers=(),
    )


def _decide(text: str) -> tuple[str, float]:
    if "vpn" in text:
        return ("network_vpn", 0.9)
    return ("hardware", 0.3)  # unsure


def _pipeline(
    engine: FakeEngine, publisher: InMemoryPublisher, **cfg: object
) -> tuple[Pipeline, Metrics]:
    metrics = Metrics(CollectorRegistry())
    config = PipelineConfig(commit_interval_s=0.01, poll_timeout_s=0.001, **cfg)  # type: ignore[arg-type]
    p = Pipeline(config=config, taxonomy=TAX, engine=engine, publisher=publisher, metrics=metrics)
    p.on_assigned([(TOPIC, 0), (TOPIC, 1)])
    return p, metrics


async def test_every_record_gets_exactly_one_output_and_offsets_reach_the_end() -> None:
    records = [
        _record(0, _ticket(0, "vpn down")),
        _record(1, b"\xff\xfe not json"),
        _record(2, _ticket(2, "monitor flickers")),
        _record(3, b'{"id": 3}'),
    ]
    source, pub = InMemorySource(records=list(records)), InMemoryPublisher()
    pipeline, metrics = _pipeline(FakeEngine(TAX.labels, _decide), pub)
    await pipeline.run(source, stop_after=len(records))
    assert sorted(pub.topics()) == sorted(
        [
            TAX.topic_for("network_vpn"),
            TAX.topics.dead_letter,
            TAX.topics.triage,
            TAX.topics.dead_letter,
        ]
    )
    assert sorted(int(h[H_SOURCE_OFFSET]) for *_, h in pub.sent) == [0, 1, 2, 3]
    assert source.last_committed() == {(TOPIC, 0): 4}
    routed = RoutedTicket.model_validate_json(
        next(v for t, _, v, _ in pub.sent if t == TAX.topics.triage)
    )
    assert routed.triage_reason == "low_confidence" and routed.decision.queue == "hardware"
    dead = next(v for t, _, v, _ in pub.sent if t == TAX.topics.dead_letter)
    assert dead == b"\xff\xfe not json"  # raw bytes preserved exactly
    reg = metrics.registry
    assert reg.get_sample_value("router_tickets_routed_total", {"queue": "network_vpn"}) == 1
    assert reg.get_sample_value("router_tickets_triaged_total", {"reason": "low_confidence"}) == 1
    assert (
        reg.get_sample_value("router_tickets_dead_lettered_total", {"reason": "undecodable"}) == 1
    )
    assert reg.get_sample_value("router_messages_consumed_total", {"topic": TOPIC}) == 4


async def test_engine_failure_crashes_without_committing() -> None:
    source = InMemorySource(records=[_record(i, _ticket(i, "vpn")) for i in range(3)])
    pub = InMemoryPublisher()
    pipeline, _ = _pipeline(FakeEngine(TAX.labels, _decide, fail=True), pub)
    with pytest.raises(FatalError, match="engine failed"):
        await pipeline.run(source)
    assert source.commits == []
    assert pub.sent == []  # nothing routed on a dead engine


async def test_failed_output_is_never_committed_past() -> None:
    pub = InMemoryPublisher(failing_topics={TAX.topic_for("network_vpn")})
    records = [_record(0, _ticket(0, "screen")), _record(1, _ticket(1, "vpn broken"))]
    source = InMemorySource(records=records)
    pipeline, _ = _pipeline(FakeEngine(TAX.labels, _decide), pub, publish_retry_max_s=0.5)
    with pytest.raises(RetryableError, match="broker down"):
        await pipeline.run(source)
    assert all(c.get((TOPIC, 0), 0) <= 1 for c in source.commits)


async def test_deadline_sends_ticket_to_triage_with_reason() -> None:
    pub = InMemoryPublisher()
    source = InMemorySource(records=[_record(0, _ticket(0, "vpn"))])
    pipeline, metrics = _pipeline(
        FakeEngine(TAX.labels, _decide, delay_s=1.0), pub, deadline_s=0.05
    )
    await pipeline.run(source, stop_after=1)
    ((topic, _, value, headers),) = pub.sent
    assert topic == TAX.topics.triage
    assert RoutedTicket.model_validate_json(value).triage_reason == "deadline_exceeded"
    assert headers["router.triage-reason"] == b"deadline_exceeded"
    assert (
        metrics.registry.get_sample_value(
            "router_tickets_triaged_total", {"reason": "deadline_exceeded"}
        )
        == 1
    )


async def test_in_flight_bound_pauses_and_resumes() -> None:
    n = 40
    source = InMemorySource(records=[_record(i, _ticket(i, "vpn")) for i in range(n)])
    pub = InMemoryPublisher()
    pipeline, _ = _pipeline(FakeEngine(TAX.labels, _decide, delay_s=0.01), pub, max_in_flight=4)
    await pipeline.run(source, stop_after=n)
    assert len(pub.sent) == n
    assert source.pauses >= 1
    assert source.last_committed() == {(TOPIC, 0): n}


async def test_stop_drains_in_flight_tickets_before_committing() -> None:
    source = InMemorySource(records=[_record(i, _ticket(i, "vpn")) for i in range(10)])
    pub = InMemoryPublisher()
    pipeline, _ = _pipeline(FakeEngine(TAX.labels, _decide, delay_s=0.2), pub, shutdown_grace_s=5.0)

    async def stop_soon() -> None:
        while pipeline.tracker.in_flight() < 10:  # noqa: ASYNC110 - polling a predicate
            await asyncio.sleep(0.001)
        pipeline.stop()

    await asyncio.gather(pipeline.run(source), stop_soon())
    assert len(pub.sent) == 10
    assert source.last_committed() == {(TOPIC, 0): 10}


async def test_exactly_once_outputs_and_offsets_commit_together_in_transactions() -> None:
    n = 23
    pub = TransactionalInMemoryPublisher()
    source = RewindableInMemorySource(records=[_record(i, _ticket(i, "vpn")) for i in range(n)])
    source.publisher = pub
    pipeline, _ = _pipeline(
        FakeEngine(TAX.labels, _decide),
        pub,
        exactly_once=True,
        transactional_id="w1",
        transaction_max_tickets=5,
    )
    await pipeline.run(source, stop_after=n)
    assert source.commits == []  # offsets travel only inside transactions
    assert len(pub.committed_offsets) >= n // 5
    assert pub.committed_offsets[-1] == {(TOPIC, 0): n}
    assert sorted(int(h[H_SOURCE_OFFSET]) for *_, h in pub.sent) == list(range(n))
    txns = {h["router.txn"] for *_, h in pub.sent}
    assert len(txns) == len(pub.committed_offsets)
    assert all(t.startswith(b"w1:") for t in txns)


async def test_aborted_transaction_is_reread_and_committed_once() -> None:
    n = 12
    pub = TransactionalInMemoryPublisher(fail_next_commit=True)
    source = RewindableInMemorySource(records=[_record(i, _ticket(i, "vpn")) for i in range(n)])
    source.publisher = pub
    pipeline, metrics = _pipeline(
        FakeEngine(TAX.labels, _decide),
        pub,
        exactly_once=True,
        transactional_id="w1",
        transaction_max_tickets=4,
    )

    def all_committed() -> bool:
        return bool(pub.committed_offsets) and pub.committed_offsets[-1] == {(TOPIC, 0): n}

    async def stop_when_all_committed() -> None:
        while not all_committed():  # noqa: ASYNC110 - polling a predicate
            await asyncio.sleep(0.001)
        pipeline.stop()

    await asyncio.gather(pipeline.run(source), stop_when_all_committed())
    assert pub.aborted == 1 and source.rewinds == 1
    offsets = sorted(int(h[H_SOURCE_OFFSET]) for *_, h in pub.sent)
    assert offsets == list(range(n))  # the aborted four were routed again, once
    assert metrics.registry.get_sample_value("router_commits_total", {"result": "aborted"}) == 1


async def test_dead_letter_too_large_for_the_cluster_is_cut_and_marked_not_crash_looped() -> None:
    raw = b"~" + b"x" * 2000
    pub = InMemoryPublisher(max_value_bytes=1500)
    source = InMemorySource(records=[_record(0, raw)])
    pipeline, metrics = _pipeline(FakeEngine(TAX.labels, _decide), pub)
    await pipeline.run(source, stop_after=1)
    ((topic, _, value, headers),) = pub.sent
    assert topic == TAX.topics.dead_letter
    assert raw.startswith(value) and len(value) < len(raw)
    assert headers["router.dead-letter.truncated-from-bytes"] == str(len(raw)).encode()
    assert headers["router.dead-letter.sha256"] == hashlib.sha256(raw).hexdigest().encode()
    assert source.last_committed() == {(TOPIC, 0): 1}
