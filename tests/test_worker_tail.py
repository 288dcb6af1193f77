"""`ticket-router tail`: a worker's outputs printed as a downstream consumer sees them.

Real parts: the real broker, a real worker pipeline (real Source and Publisher, the
session's streaming vLLM engine serving the tiny expert) and `tail` run as a child process.
The worker group's committed offsets must not move, and tail's own group never commits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from expert.engine import StreamingExpert
from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.routing import (
    Disposition,
    RoutedTicket,
    RoutingDecision,
    SimilarTicket,
    TriageReason,
    top_suggestions,
)
from schemas.taxonomy import QueueMode, Taxonomy
from schemas.ticket import Ticket
from tests.kafka_helpers import OutputReader, OutRecord, committed, produce
from tests.worker_process import output_topics, ticket_payload
from worker.broker import TopicLayout, create_layout
from worker.config import Settings
from worker.kafka_io import InboundRecord, Publisher, Source
from worker.metrics import Metrics
from worker.pipeline import H_DEAD_LETTER_REASON, H_DISPOSITION, Pipeline
from worker.runner import consumer_config, pipeline_config, producer_config
from worker.tail import (
    DEAD_LETTER,
    SHADOW,
    StartFilter,
    UnknownQueueError,
    describe,
    raw_json,
    topic_of,
)

REPO = Path(__file__).resolve().parents[1]
TAX = Taxonomy.load()
PARTITIONS = 3
BAD = [b"{not json", b'{"number": "INC1", "short_description": 5}']
EMAIL_BODY = "The VPN drops every 10 minutes.\nThanks\nAnna Schmidt\nPhone: +49 30 1234 567"


def _tail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own console script, fixed arguments
        [sys.executable, "-m", "ticket_router", "tail", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def _routed(ticket_id: str, *, queue: str, confidence: float, triage: bool) -> RoutedTicket:
    now = datetime.now(UTC)
    rest = (1 - confidence) / (len(TAX.labels) - 1)
    return RoutedTicket(
        ticket=Ticket(id=ticket_id, subject="VPN drops", created_at=now),
        decision=RoutingDecision(
            queue=queue,
            confidence=confidence,
            probabilities={q: confidence if q == queue else rest for q in TAX.labels},
            model_id="tiny-expert",
            engine_latency_s=0.01,
        ),
        disposition=Disposition.TRIAGE if triage else Disposition.ROUTED,
        triage_reason=TriageReason.LOW_CONFIDENCE if triage else None,
        topic=TAX.topics.triage if triage else TAX.topic_for(queue),
        source_topic=TAX.topics.inbound,
        source_partition=0,
        source_offset=7,
        enqueued_at=now - timedelta(milliseconds=42),
        received_at=now,
        decided_at=now,
        published_at=now,
    )


def _shadow(ticket_id: str, *, queue: str, confidence: float, would_route: bool) -> RoutedTicket:
    """The worker's pair for a queue in shadow mode, as `Pipeline._publish_shadow` writes
    it: the triage record (shadow_mode), copied to the shadow topic with disposition shadow
    and the reason autoroute would have had. Returns the shadow record, validated."""
    triaged = _routed(ticket_id, queue=queue, confidence=confidence, triage=True)
    shadow = triaged.model_copy(
        update={
            "triage_reason": None if would_route else TriageReason.LOW_CONFIDENCE,
            "mode": QueueMode.SHADOW,
            "disposition": Disposition.SHADOW,
            "topic": TAX.topics.shadow,
        }
    )
    return RoutedTicket.model_validate_json(shadow.model_dump_json())


def _record(topic: str, value: bytes, headers: tuple[tuple[str, bytes], ...] = ()) -> InboundRecord:
    return InboundRecord(
        topic=topic,
        partition=1,
        offset=5,
        key=None,
        value=value,
        timestamp_ms=int(time.time() * 1000),
        headers=headers,
    )


# ---------------------------------------------------------------------------- formatting


def test_a_triage_line_shows_the_top_queues_and_the_similar_tickets_queues() -> None:
    triaged = _routed("INC0000044", queue="hardware", confidence=0.31, triage=True)
    similar = tuple(
        SimilarTicket(
            ticket_id=f"T-{n}", snippet="printer jammed", queue=q, similarity=0.9 - n / 10
        )
        for n, q in enumerate(["hardware", "network_vpn", "hardware"])
    )
    decision = triaged.decision.model_copy(
        update={
            "suggestions": top_suggestions(triaged.decision.probabilities),
            "similar_tickets": similar,
        }
    )
    triaged = triaged.model_copy(update={"decision": decision})
    record = _record(triaged.topic, triaged.model_dump_json().encode())
    line = describe(record, dead_letter_topic=TAX.topics.dead_letter)
    assert "top hardware 0.31 " in line, line
    assert "similar hardwarex2 network_vpnx1" in line, line


def test_queue_names_triage_and_dead_letter_resolve_to_their_topics() -> None:
    assert topic_of("network_vpn", TAX) == TAX.topic_for("network_vpn")
    assert topic_of("triage", TAX) == TAX.topics.triage
    assert topic_of(DEAD_LETTER, TAX) == TAX.topics.dead_letter
    assert topic_of(SHADOW, TAX) == TAX.topics.shadow
    with pytest.raises(UnknownQueueError, match="network_vpn.*shadow"):
        topic_of("nope", TAX)


def test_a_queue_named_triage_or_shadow_wins_over_the_control_topic() -> None:
    data = TAX.model_dump(mode="json")
    data["queues"][0].update(name="shadow", topic="tickets.routed.shadow")
    data["queues"][1].update(name="triage", topic="tickets.routed.triage")
    tax = Taxonomy.model_validate(data)
    assert topic_of("shadow", tax) == "tickets.routed.shadow"
    assert topic_of("triage", tax) == "tickets.routed.triage"
    assert topic_of("dead-letter", tax) == tax.topics.dead_letter


def test_a_shadow_decision_says_what_the_router_would_have_routed() -> None:
    would = _shadow("INC0000050", queue="network_vpn", confidence=0.934, would_route=True)
    record = _record(TAX.topics.shadow, would.model_dump_json().encode())
    line = describe(record, dead_letter_topic=TAX.topics.dead_letter)
    for part in ("INC0000050", "SHADOW would have routed to network_vpn", "conf 0.934"):
        assert part in line, line
    assert '"VPN drops"' in line and "ticket itself went to triage" in line, line
    assert raw_json(record, dead_letter_topic=TAX.topics.dead_letter) == would.model_dump_json()

    unsure = _shadow("INC0000051", queue="hardware", confidence=0.31, would_route=False)
    line = describe(
        _record(TAX.topics.shadow, unsure.model_dump_json().encode()),
        dead_letter_topic=TAX.topics.dead_letter,
    )
    assert "SHADOW would have sent to triage (low_confidence), best hardware" in line, line
    assert "conf 0.310" in line and "would have routed" not in line, line


def test_the_desks_triage_record_of_a_shadow_queue_is_not_shown_as_a_shadow_decision() -> None:
    triaged = _routed("INC0000052", queue="network_vpn", confidence=0.9, triage=True)
    triaged = triaged.model_copy(
        update={"triage_reason": TriageReason.SHADOW_MODE, "mode": QueueMode.SHADOW}
    )
    record = _record(TAX.topics.triage, triaged.model_dump_json().encode())
    line = describe(record, dead_letter_topic=TAX.topics.dead_letter)
    assert "triage: shadow_mode" in line and "SHADOW" not in line, line


def test_routed_and_triaged_tickets_print_id_queue_confidence_latency_and_subject() -> None:
    routed = _routed("INC0000042", queue="network_vpn", confidence=0.934, triage=False)
    line = describe(
        _record(routed.topic, routed.model_dump_json().encode()),
        dead_letter_topic=TAX.topics.dead_letter,
    )
    for part in ("INC0000042", "network_vpn", "conf 0.934", "e2e 42 ms", '"VPN drops"'):
        assert part in line, line
    assert "triage" not in line
    triaged = _routed("INC0000043", queue="hardware", confidence=0.31, triage=True)
    record = _record(triaged.topic, triaged.model_dump_json().encode())
    assert "triage: low_confidence" in describe(record, dead_letter_topic=TAX.topics.dead_letter)
    assert raw_json(record, dead_letter_topic=TAX.topics.dead_letter) == triaged.model_dump_json()


def test_dead_letters_print_reason_source_and_raw_and_json_is_the_envelope() -> None:
    letter = DeadLetter(
        raw=b"{not json",
        reason=DeadLetterReason.UNDECODABLE,
        error_type="TicketParseError",
        error="not JSON: Expecting property name",
        source_topic=TAX.topics.inbound,
        source_partition=2,
        source_offset=9,
        failed_at=datetime.now(UTC),
    )
    headers = [*letter.headers(), (H_DEAD_LETTER_REASON, b"undecodable")]
    record = _record(TAX.topics.dead_letter, letter.raw, tuple(headers))
    line = describe(record, dead_letter_topic=TAX.topics.dead_letter)
    assert "dead-letter undecodable" in line and f"{TAX.topics.inbound}[2]@9" in line
    assert "not JSON: Expecting property name" in line and '"{not json"' in line
    envelope = DeadLetter.model_validate_json(
        raw_json(record, dead_letter_topic=TAX.topics.dead_letter)
    )
    assert (envelope.raw, envelope.reason, envelope.source_offset) == (letter.raw, "undecodable", 9)


def test_records_the_router_did_not_write_are_reported_not_crashed_on() -> None:
    for topic in (TAX.topics.triage, TAX.topics.dead_letter):
        record = _record(topic, b"\xff garbage")
        assert "unreadable record" in describe(record, dead_letter_topic=TAX.topics.dead_letter)
        out = json.loads(raw_json(record, dead_letter_topic=TAX.topics.dead_letter))
        assert out["offset"] == 5 and out["error"]


def test_from_the_end_skips_older_records_until_a_partition_shows_a_new_one() -> None:
    since = 1_000_000
    admit = StartFilter(since)

    def rec(partition: int, ts: int | None) -> InboundRecord:
        return InboundRecord("t", partition, 0, None, b"", ts, ())

    assert not admit.admits(rec(0, since - 1))
    assert admit.admits(rec(0, since))
    assert admit.admits(rec(0, since - 5))  # later in a partition that is caught up
    assert not admit.admits(rec(1, since - 1))
    assert admit.admits(rec(2, None))
    assert StartFilter(None).admits(rec(3, 0))


# ---------------------------------------------------------------------------- real broker


@pytest.fixture
def layout(bootstrap: str, taxonomy_file: Path) -> Taxonomy:
    tax = Taxonomy.load(taxonomy_file)
    create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=PARTITIONS))
    return tax


async def _run_worker(settings: Settings, tax: Taxonomy, engine: StreamingExpert, n: int) -> None:
    """The worker's pipeline on real Kafka clients, with the session's streaming engine."""
    publisher = Publisher(conf=producer_config(settings))
    await publisher.start()
    pipeline = Pipeline(
        config=pipeline_config(settings),
        taxonomy=tax,
        engine=engine,
        publisher=publisher,
        metrics=Metrics(CollectorRegistry()),
    )
    source = Source(conf=consumer_config(settings), topics=[tax.topics.inbound], listener=pipeline)
    await source.start()
    try:
        await pipeline.run(source, stop_after=n)
    finally:
        await source.close()
        await publisher.close()


def _group_of(stderr: str) -> str:
    match = re.search(r"group (ticket-router-tail-\w+)", stderr)
    assert match, stderr
    return match.group(1)


async def test_tail_prints_what_the_worker_published_and_commits_no_offsets(
    bootstrap: str,
    taxonomy_file: Path,
    layout: Taxonomy,
    tiny_expert_dir: Path,
    streaming_expert: StreamingExpert,
    unique: str,
) -> None:
    n = 12
    payloads = [ticket_payload(i) for i in range(n - 1)]
    payloads.append(ticket_payload(n, subject="vpn", body=EMAIL_BODY))
    produce(bootstrap, layout.topics.inbound, payloads + BAD)
    group = f"g-{unique}"
    settings = Settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": group},
        engine={"model_dir": tiny_expert_dir, "cache_dir": REPO / ".state" / "vllm-cache"},
        taxonomy_path=taxonomy_file,
        routing={"confidence_threshold": 0.0},  # everything to its queue
        shutdown_grace_s=10,
    )
    await _run_worker(settings, layout, streaming_expert, len(payloads) + len(BAD))
    reader = OutputReader(bootstrap, output_topics(layout))
    out = reader.read_until(lambda rs: len(rs) >= len(payloads) + len(BAD), timeout_s=60)
    reader.close()
    before = committed(bootstrap, group, layout.topics.inbound, PARTITIONS)
    assert sum(before.values()) == len(payloads) + len(BAD)

    by_topic: dict[str, list[OutRecord]] = {}
    for record in out:
        by_topic.setdefault(record.topic, []).append(record)
    queue = max(layout.labels, key=lambda q: len(by_topic.get(layout.topic_for(q), [])))
    expected = by_topic[layout.topic_for(queue)]
    common = ["--from-beginning", "--bootstrap", bootstrap, "--taxonomy", str(taxonomy_file)]
    raw = _tail(queue, "--json", "--max", str(len(expected)), *common)
    assert raw.returncode == 0, raw.stderr[-2000:]
    assert sorted(raw.stdout.splitlines()) == sorted(r.value.decode() for r in expected)
    assert all(r.headers[H_DISPOSITION] == b"routed" for r in expected)

    readable = _tail(DEAD_LETTER, "--max", str(len(BAD)), *common)
    assert readable.returncode == 0, readable.stderr[-2000:]
    lines = readable.stdout.splitlines()
    assert len(lines) == len(BAD)
    assert {re.search(r"dead-letter (\w+)", line).group(1) for line in lines} == {  # type: ignore[union-attr]
        "undecodable",
        "invalid",
    }
    assert all(f"from {layout.topics.inbound}[" in line for line in lines)

    # The email-style ticket: the expert read the cleaned text, the published body is raw.
    email = next(
        RoutedTicket.model_validate_json(r.value)
        for r in out
        if r.topic != layout.topics.dead_letter and b"Anna Schmidt" in r.value
    )
    assert email.ticket.body == EMAIL_BODY

    after = committed(bootstrap, group, layout.topics.inbound, PARTITIONS)
    assert after == before
    for result, topic in ((raw, layout.topic_for(queue)), (readable, layout.topics.dead_letter)):
        assert committed(bootstrap, _group_of(result.stderr), topic, PARTITIONS) == {}


def test_tail_from_the_end_prints_only_records_published_after_it_started(
    bootstrap: str, taxonomy_file: Path, layout: Taxonomy
) -> None:
    topic = layout.topics.triage
    old = [
        _routed(f"OLD{i}", queue="hardware", confidence=0.2, triage=True).model_dump_json()
        for i in range(6)
    ]
    produce(bootstrap, topic, [v.encode() for v in old])
    new = [
        _routed(f"NEW{i}", queue="database", confidence=0.3, triage=True).model_dump_json()
        for i in range(3)
    ]
    process = subprocess.Popen(  # noqa: S603 - our own console script, fixed arguments
        [sys.executable, "-m", "ticket_router", "tail", "triage", "--json", "--max", "3",
         "--bootstrap", bootstrap, "--taxonomy", str(taxonomy_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ.copy(),
    )  # fmt: skip
    try:
        assert process.stderr is not None
        ready = threading.Event()
        errors: list[str] = []

        def watch() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                errors.append(line)
                if line.startswith("following "):
                    ready.set()

        threading.Thread(target=watch, daemon=True).start()
        assert ready.wait(timeout=60), "".join(errors)
        produce(bootstrap, topic, [v.encode() for v in new])
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, "".join(errors)
    printed = [RoutedTicket.model_validate_json(line).ticket.id for line in stdout.splitlines()]
    assert sorted(printed) == ["NEW0", "NEW1", "NEW2"]


def test_tail_shadow_follows_the_shadow_topic(
    bootstrap: str, taxonomy_file: Path, layout: Taxonomy
) -> None:
    published = [
        _shadow("SH1", queue="network_vpn", confidence=0.93, would_route=True),
        _shadow("SH2", queue="hardware", confidence=0.2, would_route=False),
    ]
    values = [
        r.model_copy(update={"topic": layout.topics.shadow}).model_dump_json() for r in published
    ]
    produce(bootstrap, layout.topics.shadow, [v.encode() for v in values])
    common = ["--from-beginning", "--max", "2", "--bootstrap", bootstrap]
    raw = _tail(SHADOW, "--json", *common, "--taxonomy", str(taxonomy_file))
    assert raw.returncode == 0, raw.stderr[-2000:]
    assert f"following {layout.topics.shadow} " in raw.stderr
    assert sorted(raw.stdout.splitlines()) == sorted(values)
    readable = _tail(SHADOW, *common, "--taxonomy", str(taxonomy_file))
    assert readable.returncode == 0, readable.stderr[-2000:]
    lines = sorted(readable.stdout.splitlines(), key=lambda line: "SH2" in line)
    assert "SH1" in lines[0] and "SHADOW would have routed to network_vpn" in lines[0]
    assert "SH2" in lines[1] and "SHADOW would have sent to triage" in lines[1]


def test_tail_refuses_an_unknown_queue_and_a_missing_topic(
    bootstrap: str, taxonomy_file: Path, unique: str
) -> None:
    unknown = _tail("nope", "--bootstrap", bootstrap)
    assert unknown.returncode == 2 and "known:" in unknown.stderr
    # taxonomy_file's topics were never created (no `layout` fixture here).
    missing = _tail("triage", "--bootstrap", bootstrap, "--taxonomy", str(taxonomy_file))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
