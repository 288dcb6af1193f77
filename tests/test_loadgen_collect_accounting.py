"""`collect.account`: joining the manifest with outputs, without Kafka."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from loadgen.collect import Observation, OutputKind, account, parse_output
from loadgen.replay import ManifestRow
from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.routing import Disposition, RoutedTicket, RoutingDecision, TriageReason
from schemas.ticket import Ticket

LABELS = ["hardware", "software", "network_vpn"]
T0 = 1_800_000_000.0


def row(tid: str, queue: str, sent_at: float, *, delivered: bool = True) -> ManifestRow:
    return ManifestRow(
        ticket_id=tid,
        queue=queue,
        format="canonical",
        storm=None,
        seq=0,
        scheduled_s=sent_at - T0,
        due_s=sent_at - T0,
        sent_at=sent_at,
        lag_s=0.0,
        delivered=delivered,
    )


def obs(
    tid: str | None, kind: OutputKind, done: float, predicted: str | None = None, *, offset: int = 0
) -> Observation:
    return Observation(
        topic="out",
        partition=0,
        offset=offset,
        kind=kind,
        ticket_id=tid,
        record_ts=done,
        consumed_at=done + 100,
        predicted=predicted,
        confidence=0.9 if predicted else None,
        received_at=done - 0.3 if predicted else None,
        decided_at=done - 0.1 if predicted else None,
        published_at=done - 0.05 if predicted else None,
    )


MANIFEST = [
    row("a", "hardware", T0 + 0),
    row("b", "software", T0 + 1),
    row("c", "network_vpn", T0 + 2),
    row("d", "hardware", T0 + 3),
    row("e", "software", T0 + 61),  # never answered
    row("f", "software", T0 + 62, delivered=False),  # the broker never took it
]
OUTPUTS = [
    obs("a", OutputKind.ROUTED, T0 + 0.5, "hardware"),
    obs("b", OutputKind.ROUTED, T0 + 2.0, "hardware"),  # misrouted
    obs("c", OutputKind.TRIAGE, T0 + 62.5, "network_vpn"),
    obs("d", OutputKind.DEAD_LETTER, T0 + 4.0),
    obs("a", OutputKind.ROUTED, T0 + 70.0, "hardware", offset=9),  # redelivered
    obs("zzz", OutputKind.ROUTED, T0 + 1.0, "software"),  # an earlier run's ticket
    obs(None, OutputKind.UNREADABLE, T0 + 1.0),
]


def test_counts_lost_duplicated_and_unexpected_tickets() -> None:
    acc = account(MANIFEST, OUTPUTS, labels=LABELS, bin_s=60)
    assert (acc.sent, acc.send_failed, acc.seen) == (5, 1, 4)
    assert (acc.routed, acc.triaged, acc.dead_lettered) == (2, 1, 1)
    assert acc.lost_ids == ["e"] and acc.lost == 1
    assert acc.duplicated_ids == {"a": 2} and acc.duplicated == 1
    assert acc.unexpected == 1 and acc.unreadable_outputs == 1


def test_accuracy_and_rates_against_ground_truth() -> None:
    acc = account(MANIFEST, OUTPUTS, labels=LABELS)
    assert acc.accuracy_routed == pytest.approx(1 / 2)  # a right, b wrong
    assert acc.accuracy_top1 == pytest.approx(2 / 3)  # plus c's triage guess, right
    assert acc.correct_routed_share == pytest.approx(1 / 5)
    assert acc.triage_rate == pytest.approx(1 / 5)
    assert acc.dead_letter_rate == pytest.approx(1 / 5)
    # rows truth, columns predicted
    assert acc.confusion == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]


def test_latency_uses_the_first_output_and_the_send_time() -> None:
    acc = account(MANIFEST, OUTPUTS, labels=LABELS)
    by_id = {o.ticket_id: o for o in acc.outcomes}
    assert by_id["a"].latency_s == pytest.approx(0.5)  # not the duplicate's 70 s
    assert by_id["b"].latency_s == pytest.approx(1.0)
    assert by_id["c"].latency_s == pytest.approx(60.5)
    assert by_id["d"].latency_s == pytest.approx(1.0)
    assert by_id["e"].kind == "lost" and by_id["e"].latency_s is None
    assert by_id["a"].inference_s == pytest.approx(0.2)
    assert by_id["a"].queue_wait_s == pytest.approx(0.2)
    assert acc.latency_s["max"] == pytest.approx(60.5)
    assert acc.latency_s["p50"] == pytest.approx(1.0)


def test_series_has_sent_done_and_backlog_per_bin() -> None:
    acc = account(MANIFEST, OUTPUTS, labels=LABELS, bin_s=60)
    s = acc.series
    assert s.t_s == [0.0, 60.0]
    assert s.sent == [4, 1]
    assert s.done == [3, 1]
    assert s.backlog == [1, 1]  # c waits over the bin edge; e never comes out
    assert s.queued == [1, 0]  # the same without the LOST ticket
    assert s.latency_p50_s[0] == pytest.approx(1.0)


def test_empty_run_has_no_rates() -> None:
    acc = account([], [], labels=LABELS)
    assert acc.sent == 0 and acc.accuracy_routed is None and acc.latency_s == {}


def _routed(tid: str, disposition: Disposition) -> RoutedTicket:
    now = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    return RoutedTicket(
        ticket=Ticket(id=tid, created_at=now, subject="printer jammed"),
        decision=RoutingDecision(
            queue="hardware",
            confidence=0.4,
            probabilities={"hardware": 0.4, "software": 0.6},
            model_id="m",
            engine_latency_s=0.01,
        ),
        disposition=disposition,
        triage_reason=TriageReason.LOW_CONFIDENCE if disposition is Disposition.TRIAGE else None,
        topic="t",
        source_topic="in",
        source_partition=0,
        source_offset=5,
        received_at=now,
        decided_at=now,
        published_at=now,
    )


def test_parse_output_reads_routed_triage_dead_letter_and_garbage() -> None:
    kw = {"partition": 0, "offset": 1, "record_ts": 1.0, "consumed_at": 2.0}
    routed = parse_output(
        topic="q",
        value=_routed("X1", Disposition.ROUTED).model_dump_json().encode(),
        dead_letter_topic="dl",
        **kw,
    )
    triage = parse_output(
        topic="tr",
        value=_routed("X2", Disposition.TRIAGE).model_dump_json().encode(),
        dead_letter_topic="dl",
        **kw,
    )
    dl = DeadLetter(
        raw=b'{"ticket": {"id": 42}}',
        raw_key=None,
        reason=DeadLetterReason.INVALID,
        error_type="ValidationError",
        error="subject: missing",
        source_topic="in",
        source_partition=0,
        source_offset=3,
        failed_at=datetime(2026, 11, 27, tzinfo=UTC),
    )
    dead = parse_output(
        topic="dl", value=dl.model_dump_json().encode(), dead_letter_topic="dl", **kw
    )
    garbage = parse_output(topic="q", value=b"\xff", dead_letter_topic="dl", **kw)
    assert (routed.kind, routed.ticket_id, routed.predicted) == (
        OutputKind.ROUTED,
        "X1",
        "hardware",
    )
    assert (triage.kind, triage.ticket_id) == (OutputKind.TRIAGE, "X2")
    assert (dead.kind, dead.ticket_id) == (OutputKind.DEAD_LETTER, "42")
    assert (garbage.kind, garbage.ticket_id) == (OutputKind.UNREADABLE, None)
