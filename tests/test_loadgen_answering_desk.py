"""The answering desk on the real broker: it reads decisions and publishes the desk's feedback."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from loadgen.answering_desk import AnsweringDesk, DeskTarget
from loadgen.desk import DeskResponse
from schemas.routing import Disposition, RoutedTicket, RoutingDecision, TriageReason
from schemas.taxonomy import Taxonomy
from schemas.ticket import Ticket
from tests.kafka_helpers import OutputReader, produce
from worker.broker import TopicLayout, create_layout

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def _decision(ticket_id: str, queue: str, *, topic: str, triage: bool = False) -> bytes:
    return (
        RoutedTicket(
            ticket=Ticket(id=ticket_id, subject="VPN down", created_at=T0),
            decision=RoutingDecision(
                queue=queue,
                confidence=0.4 if triage else 0.9,
                probabilities={queue: 1.0},
                model_id="expert@v1",
                engine_latency_s=0.01,
            ),
            disposition=Disposition.TRIAGE if triage else Disposition.ROUTED,
            triage_reason=TriageReason.LOW_CONFIDENCE if triage else None,
            topic=topic,
            source_topic="tickets.inbound",
            source_partition=0,
            source_offset=0,
            received_at=T0,
            decided_at=T0,
            published_at=T0,
        )
        .model_dump_json()
        .encode()
    )


def test_each_decided_ticket_gets_one_answer_with_its_true_queue(
    bootstrap: str, taxonomy_file: Path
) -> None:
    tax = Taxonomy.load(taxonomy_file)
    create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=2))
    topic = {q.name: q.topic for q in tax.queues}
    truths = {"A1": "network_vpn", "A2": "cloud_devops", "A3": "database"}
    desk = AnsweringDesk(
        DeskTarget(
            bootstrap=bootstrap,
            decision_topics=(*topic.values(), tax.topics.triage),
            feedback_topic=tax.topics.feedback,
        ),
        truths=truths,
        tiers={q.name: q.tier for q in tax.queues},
        desk=DeskResponse(noise=0.0),
        speedup=6000.0,  # a desk minute is 10 ms: every answer is due at once
        seed=0,
    )
    reader = OutputReader(bootstrap, [tax.topics.feedback])
    desk.start()
    try:
        produce(
            bootstrap,
            topic["network_vpn"],
            [
                _decision("A1", "network_vpn", topic=topic["network_vpn"]),
                _decision("A1", "network_vpn", topic=topic["network_vpn"]),  # a duplicate
                _decision("OTHER", "network_vpn", topic=topic["network_vpn"]),  # not ours
            ],
        )
        produce(
            bootstrap,
            topic["servers_storage"],
            [_decision("A2", "servers_storage", topic=topic["servers_storage"])],
        )
        produce(
            bootstrap,
            tax.topics.triage,
            [_decision("A3", "software", topic=tax.topics.triage, triage=True)],
        )
        reader.read_until(lambda rs: len(rs) >= 3, timeout_s=60)
        # The desk decides what it will answer as it reads a decision: once it has read all
        # five and has nothing left to answer, stopping it (a flush) loses no answer.
        deadline = time.monotonic() + 60
        while not (len(desk.decisions) == 5 and desk.pending == 0):
            assert time.monotonic() < deadline, f"{len(desk.decisions)} of 5 decisions read"
            time.sleep(0.05)
    finally:
        desk.stop()
    records = reader.read_to_end()
    reader.close()
    assert len(records) == 3  # one answer per ticket: no duplicate, nothing for OTHER
    events = {r.key.decode(): json.loads(r.value) for r in records if r.key}
    assert {k: e["final_queue"] for k, e in events.items()} == truths
    assert (events["A1"]["outcome"], events["A1"]["previous_queue"]) == ("confirmed", None)
    assert (events["A2"]["outcome"], events["A2"]["previous_queue"]) == (
        "reassigned",
        "servers_storage",
    )
    assert (events["A3"]["outcome"], events["A3"]["previous_group"]) == ("reassigned", "triage")
    assert desk.feedback_published == 3
    seen = desk.decisions
    assert len(seen) == 5 and sum(d.first for d in seen) == 4
    assert {d.model_id for d in seen} == {"expert@v1"}
