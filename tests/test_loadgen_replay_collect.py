"""Replay and collect against the real broker, with a stand-in router in between."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.collect import account
from bench.outputs import OutputTopics, RouterOffsets, read_outputs
from loadgen.itsm_formats import PayloadFormat
from loadgen.replay import (
    HEADER_SENT_AT_NS,
    CorpusItem,
    ManifestRow,
    ReplayTarget,
    plan,
    read_manifest,
    replay,
)
from loadgen.traffic import Schedule
from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.parse import parse_ticket
from schemas.routing import Disposition, RoutedTicket, RoutingDecision, TriageReason
from schemas.ticket import Ticket

QUEUES = ["hardware", "software", "network_vpn"]
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
CORPUS = [
    CorpusItem(Ticket(id="c1", created_at=NOW, subject="Laptop screen flickers"), "hardware", "P3"),
    CorpusItem(Ticket(id="c2", created_at=NOW, subject="Excel crashes on open"), "software", "P4"),
    CorpusItem(Ticket(id="c3", created_at=NOW, subject="VPN keeps dropping"), "network_vpn", "P2"),
    CorpusItem(Ticket(id="c4", created_at=NOW, subject="Dock not detected"), "hardware", "P4"),
]


def create_topics(bootstrap: str, names: list[str], partitions: int = 2) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions) for n in names])
    for fut in futures.values():
        fut.result(timeout=30)


def evenly(n: int, span_s: float) -> Schedule:
    return Schedule(
        start=NOW,
        duration_s=span_s,
        times_s=np.linspace(0.0, span_s, n, endpoint=False),
        storm_index=np.full(n, -1, dtype=np.int64),
        storms=(),
    )


def read_all(bootstrap: str, topic: str, n: int, partitions: int = 2) -> list[Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Any] = []
    try:
        for _ in range(600):  # bounded: a missing record fails the test instead of hanging
            if len(out) >= n:
                break
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(msg)
    finally:
        consumer.close()
    return out


@pytest.mark.parametrize("fmt", [PayloadFormat.SERVICENOW, PayloadFormat.JIRA])
def test_replay_publishes_every_ticket_with_send_header_and_manifest(
    bootstrap: str, unique: str, fmt: PayloadFormat
) -> None:
    inbound = f"tickets.inbound.{unique}"
    create_topics(bootstrap, [inbound])
    planned = plan(evenly(40, 10.0), CORPUS, seed=1, speedup=None)
    manifest = io.StringIO()
    result = replay(
        planned,
        CORPUS,
        target=ReplayTarget(bootstrap=bootstrap, topic=inbound, fmt=fmt, run=7),
        manifest=manifest,
        progress=False,
    )
    assert (result.sent, result.delivered, result.failed) == (40, 40, 0)
    rows = [json.loads(line) for line in manifest.getvalue().splitlines()]
    by_id = {r["ticket_id"]: r for r in rows}
    assert len(by_id) == 40 and all(r["delivered"] for r in rows)
    records = read_all(bootstrap, inbound, 40)
    assert len(records) == 40
    for msg in records:
        ticket = parse_ticket(msg.value())
        row = by_id[ticket.id]
        assert msg.key().decode() == ticket.id
        headers = dict(msg.headers())
        assert int(headers[HEADER_SENT_AT_NS]) / 1e9 == pytest.approx(row["sent_at"])
        assert row["queue"] == CORPUS[planned[row["seq"]].corpus_index].queue
        assert ticket.subject == CORPUS[planned[row["seq"]].corpus_index].ticket.subject
        assert (row["partition"], row["offset"]) == (
            msg.partition(),
            msg.offset(),
        )


def test_paced_replay_never_sends_early_and_keeps_schedule_order(
    bootstrap: str, unique: str
) -> None:
    inbound = f"tickets.inbound.{unique}"
    create_topics(bootstrap, [inbound])
    planned = plan(evenly(30, 60.0), CORPUS, seed=2, speedup=60.0)  # one real second
    manifest = io.StringIO()
    result = replay(
        planned,
        CORPUS,
        target=ReplayTarget(bootstrap=bootstrap, topic=inbound),
        manifest=manifest,
        progress=False,
        speedup=60.0,
    )
    rows = sorted(
        (json.loads(line) for line in manifest.getvalue().splitlines()), key=lambda r: r["seq"]
    )
    assert result.sent == 30 and result.speedup == 60.0
    assert all(r["lag_s"] >= 0 for r in rows)
    assert [r["due_s"] for r in rows] == pytest.approx([p.scheduled_s / 60 for p in planned])
    sent = [r["sent_at"] for r in rows]
    assert sent == sorted(sent)
    assert result.lag_max_s >= result.lag_p50_s >= 0


def test_bounded_replay_stops_at_its_wall_limit(bootstrap: str, unique: str) -> None:
    inbound = f"tickets.inbound.{unique}"
    create_topics(bootstrap, [inbound])
    planned = plan(evenly(20, 100.0), CORPUS, seed=3, speedup=100.0)  # due 0.0 .. 0.95 s
    result = replay(
        planned,
        CORPUS,
        target=ReplayTarget(bootstrap=bootstrap, topic=inbound),
        manifest=io.StringIO(),
        progress=False,
        max_wall_s=0.5,
    )
    assert result.stopped_early
    assert result.sent <= 11  # due times 0.00 .. 0.50 s


def stand_in_router(
    bootstrap: str,
    inbound: str,
    n: int,
    *,
    topics: dict[str, str],
    triage: str,
    dead: str,
    group: str,
) -> list[str]:
    """Route like a worker would, with known faults: drop #0 (and commit past it, a real
    loss), repeat #1, triage #2, dead-letter #3, misroute #4. Returns the ticket ids in
    replay order."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    records = sorted(read_all(bootstrap, inbound, n), key=lambda m: m.key())
    ids = []
    for i, msg in enumerate(records):
        ticket = parse_ticket(msg.value())
        ids.append(ticket.id)
        truth = next(c.queue for c in CORPUS if c.ticket.subject == ticket.subject)
        now = datetime.now(UTC)
        src = {
            "source_topic": inbound,
            "source_partition": msg.partition(),
            "source_offset": msg.offset(),
        }
        if i == 0:
            continue
        if i == 3:
            dl = DeadLetter(
                raw=msg.value(),
                raw_key=msg.key(),
                reason=DeadLetterReason.INVALID,
                error_type="ValidationError",
                error="x",
                failed_at=now,
                **src,
            )
            producer.produce(dead, dl.model_dump_json().encode())
            continue
        predicted = truth
        if i == 4:
            predicted = "hardware" if truth == "software" else "software"
        disposition = Disposition.TRIAGE if i == 2 else Disposition.ROUTED
        out = RoutedTicket(
            ticket=ticket,
            decision=RoutingDecision(
                queue=predicted, confidence=0.9, model_id="stand-in", engine_latency_s=0.001
            ),
            disposition=disposition,
            triage_reason=TriageReason.LOW_CONFIDENCE if i == 2 else None,
            topic=triage if i == 2 else topics[predicted],
            enqueued_at=None,
            received_at=now,
            decided_at=now,
            published_at=now,
            **src,
        )
        for _ in range(2 if i == 1 else 1):
            producer.produce(out.topic, out.model_dump_json().encode(), key=ticket.id.encode())
    assert producer.flush(30) == 0
    ends: dict[int, int] = {}
    for msg in records:
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
    committer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    committer.commit(
        offsets=[TopicPartition(inbound, p, o) for p, o in ends.items()], asynchronous=False
    )
    committer.close()
    return ids


def test_collect_finds_lost_duplicated_triaged_dead_lettered_and_misrouted(
    bootstrap: str, unique: str
) -> None:
    inbound = f"tickets.inbound.{unique}"
    routed = {q: f"tickets.routed.{q}.{unique}" for q in QUEUES}
    triage, dead = f"tickets.triage.{unique}", f"tickets.dead-letter.{unique}"
    create_topics(bootstrap, [inbound, *routed.values(), triage, dead])
    n = 30
    manifest = io.StringIO()
    replay(
        plan(evenly(n, 1.0), CORPUS, seed=4, speedup=None),
        CORPUS,
        target=ReplayTarget(bootstrap=bootstrap, topic=inbound),
        manifest=manifest,
        progress=False,
    )
    group = f"stand-in-{unique}"
    ids = stand_in_router(
        bootstrap, inbound, n, topics=routed, triage=triage, dead=dead, group=group
    )
    rows = [json.loads(line) for line in manifest.getvalue().splitlines()]
    manifest_rows = [ManifestRow(**r) for r in rows]
    observations = read_outputs(
        bootstrap,
        OutputTopics(routed=tuple(routed.values()), triage=triage, dead_letter=dead),
        group_id=f"collect-{unique}",
        expected_ids={r.ticket_id for r in manifest_rows},
        idle_timeout_s=3.0,
        deadline_s=60.0,
    )
    partitions = {r.partition for r in manifest_rows if r.partition is not None}
    with RouterOffsets(bootstrap, group_id=group, topic=inbound, partitions=partitions) as offs:
        committed = offs.read()
    acc = account(manifest_rows, observations, labels=QUEUES, bin_s=1.0, committed=committed)
    assert acc.sent == n
    assert acc.lost_ids == [ids[0]] and acc.not_routed == 0
    # Without the router's offsets nothing can be called lost.
    blind = account(manifest_rows, observations, labels=QUEUES, bin_s=1.0)
    assert (blind.lost, blind.not_routed_ids) == (0, [ids[0]])
    assert acc.duplicated_ids == {ids[1]: 2}
    assert (acc.triaged, acc.dead_lettered, acc.routed) == (1, 1, n - 3)
    assert acc.accuracy_routed == pytest.approx((n - 4) / (n - 3))
    assert all(
        o.latency_s is not None and o.latency_s > 0 for o in acc.outcomes if o.kind != "lost"
    )
    assert sum(acc.series.sent) == n and acc.series.backlog[-1] == 1  # the lost one


def test_read_manifest_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(
        json.dumps(
            {
                "ticket_id": "T1",
                "queue": "hardware",
                "format": "canonical",
                "storm": None,
                "seq": 0,
                "scheduled_s": 1.0,
                "due_s": 0.1,
                "sent_at": 5.0,
                "lag_s": 0.0,
                "delivered": True,
                "partition": 0,
                "offset": 3,
                "error": None,
            }
        )
        + "\n"
    )
    (row,) = read_manifest(path)
    assert (row.ticket_id, row.offset, row.delivered) == ("T1", 3, True)
