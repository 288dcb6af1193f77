"""`collect.account`: joining the manifest with outputs, and the collector's stop rule,
without Kafka."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench.collect import (
    LOST,
    NOT_ROUTED,
    Observation,
    OutputKind,
    account,
    owed_ids,
    parse_output,
    unrouted_count,
)
from bench.outputs import ProgressWatch, StopReason, WaitPolicy
from loadgen.replay import ManifestRow
from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.routing import Disposition, RoutedTicket, RoutingDecision, TriageReason
from schemas.ticket import Ticket

LABELS = ["hardware", "software", "network_vpn"]
T0 = 1_800_000_000.0


def row(
    tid: str, queue: str, sent_at: float, *, delivered: bool = True, offset: int | None = None
) -> ManifestRow:
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
        partition=0 if delivered else None,
        offset=(int(sent_at - T0) if offset is None else offset) if delivered else None,
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
    # e (offset 61) has no output and the router committed past it: really lost.
    acc = account(MANIFEST, OUTPUTS, labels=LABELS, bin_s=60, committed={0: 62})
    assert (acc.sent, acc.send_failed, acc.seen) == (5, 1, 4)
    assert (acc.routed, acc.triaged, acc.dead_lettered) == (2, 1, 1)
    assert acc.lost_ids == ["e"] and acc.lost == 1 and acc.not_routed == 0
    assert acc.duplicated_ids == {"a": 2} and acc.duplicated == 1
    assert acc.unexpected == 1 and acc.unreadable_outputs == 1


@pytest.mark.parametrize("committed", [None, {}, {0: 61}, {1: 500}])
def test_a_ticket_the_router_has_not_committed_past_is_not_routed_never_lost(
    committed: dict[int, int] | None,
) -> None:
    acc = account(MANIFEST, OUTPUTS, labels=LABELS, bin_s=60, committed=committed)
    assert acc.lost == 0 and acc.lost_ids == []
    assert acc.not_routed == 1 and acc.not_routed_ids == ["e"]
    assert {o.ticket_id: o.kind for o in acc.outcomes}["e"] == NOT_ROUTED


def test_outputs_of_the_runs_other_tickets_are_neither_expected_nor_unexpected() -> None:
    acc = account(MANIFEST, OUTPUTS, labels=LABELS, other_ids={"zzz"})
    assert acc.unexpected == 0 and acc.other_seen == 1 and acc.sent == 5


def test_owed_and_unrouted_follow_the_routers_committed_offsets() -> None:
    rows = [row(t, "hardware", T0 + i) for i, t in enumerate("abcd")]  # offsets 0..3
    assert owed_ids(rows, {0: 2}) == {"a", "b"}
    assert unrouted_count(rows, {0: 2}) == 2
    assert owed_ids(rows, None) == set() and unrouted_count(rows, None) == 4
    assert unrouted_count(rows, {0: 4}) == 0


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
    assert by_id["e"].kind == NOT_ROUTED and by_id["e"].latency_s is None
    assert by_id["a"].inference_s == pytest.approx(0.2)
    assert by_id["a"].queue_wait_s == pytest.approx(0.2)
    assert acc.latency_s["max"] == pytest.approx(60.5)
    assert acc.latency_s["p50"] == pytest.approx(1.0)


def test_series_has_sent_done_and_backlog_per_bin() -> None:
    acc = account(MANIFEST, OUTPUTS, labels=LABELS, bin_s=60, committed={0: 62})
    s = acc.series
    assert s.t_s == [0.0, 60.0]
    assert s.sent == [4, 1]
    assert s.done == [3, 1]
    assert s.backlog == [1, 1]  # c waits over the bin edge; e never comes out
    assert s.queued == [1, 0]  # the same without the LOST ticket
    assert s.latency_p50_s[0] == pytest.approx(1.0)
    # Not lost (no commit past it), e is still waiting at the end.
    assert account(MANIFEST, OUTPUTS, labels=LABELS, bin_s=60).series.queued == [1, 1]


def test_tickets_sent_or_waiting_while_the_router_was_saturated_are_flagged_as_backlog() -> None:
    # 10 s bins. Bins 0-1: 5 tickets each, answered 0.2 s later. At 20 s a burst of 30 the
    # router answers at 1/s (21 s .. 50 s); 4 more tickets sent into that backlog at 31-34 s.
    rows, outs = [], []
    for i in range(10):
        rows.append(row(f"k{i}", "hardware", T0 + 2 * i))
        outs.append(obs(f"k{i}", OutputKind.ROUTED, T0 + 2 * i + 0.2, "hardware"))
    for j in range(30):
        rows.append(row(f"b{j}", "hardware", T0 + 20 + j / 10, offset=100 + j))
        outs.append(obs(f"b{j}", OutputKind.ROUTED, T0 + 21 + j, "hardware"))
    for j in range(4):
        rows.append(row(f"late{j}", "software", T0 + 31 + j, offset=200 + j))
        outs.append(obs(f"late{j}", OutputKind.ROUTED, T0 + 51 + j, "software"))
    acc = account(rows, outs, labels=LABELS, bin_s=10, committed={0: 300})
    # b19..b29 wait through bin 3, b29 and the late ones through bin 4; bin 5 clears.
    assert acc.series.saturated == [False, False, False, True, True, False]
    flagged = {o.ticket_id for o in acc.outcomes if o.backlogged}
    # b0..b8 were answered within their own (unsaturated) bin; b9.. waited into bin 3.
    assert flagged == {f"b{j}" for j in range(9, 30)} | {f"late{j}" for j in range(4)}
    assert acc.backlogged == 25
    assert acc.latency_kept_up_s["max"] < 10 < acc.latency_backlogged_s["p50"]


def test_a_router_that_finishes_its_queue_in_each_bin_is_never_saturated() -> None:
    # 40 tickets 0.25 s apart, each answered 2 s later: always ~8 in flight, none waits long.
    rows = [row(f"t{i}", "hardware", T0 + i / 4) for i in range(40)]
    outs = [obs(f"t{i}", OutputKind.ROUTED, T0 + i / 4 + 2.0, "hardware") for i in range(40)]
    acc = account(rows, outs, labels=LABELS, bin_s=5, committed={0: 100})
    assert not any(acc.series.saturated) and acc.backlogged == 0


def test_tickets_still_waiting_when_the_run_ended_saturate_the_bins_they_waited_through() -> None:
    rows = [row(f"t{i}", "hardware", T0 + i) for i in range(30)]
    outs = [obs(f"t{i}", OutputKind.ROUTED, T0 + i + 0.1, "hardware") for i in range(10)]
    outs.append(obs("t10", OutputKind.ROUTED, T0 + 29.5, "hardware"))  # sent 10 s, waited
    acc = account(rows, outs, labels=LABELS, bin_s=5, committed={0: 11})
    assert acc.not_routed == 19 and acc.lost == 0
    assert acc.series.saturated == [False, False, False, True, True, True]
    assert {o.ticket_id for o in acc.outcomes if o.backlogged and o.latency_s} == {"t10"}


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


def test_progress_watch_waits_while_outputs_arrive_or_the_routers_lag_shrinks() -> None:
    watch = ProgressWatch(WaitPolicy(stall_s=60.0), started_at=0.0)
    watch.observe(1.0, answered=0, unrouted=100)  # the first reading is a baseline
    assert watch.verdict(59.0, complete=False) is None
    # No new output for 100 s, but the router keeps committing: still waiting.
    for t in range(10, 110, 10):
        assert watch.observe(float(t), answered=0, unrouted=100 - t // 10)
        assert watch.verdict(float(t), complete=False) is None
    assert watch.observe(120.0, answered=5, unrouted=90)  # outputs count too
    assert not watch.observe(170.0, answered=5, unrouted=90)
    assert watch.verdict(179.0, complete=False) is None
    assert watch.verdict(180.0, complete=False) is StopReason.STALLED
    assert watch.verdict(180.0, complete=True) is StopReason.COMPLETE


def test_progress_watch_has_no_cap_unless_one_is_set() -> None:
    uncapped = ProgressWatch(WaitPolicy(stall_s=10.0, max_wait_s=None), started_at=0.0)
    capped = ProgressWatch(WaitPolicy(stall_s=10.0, max_wait_s=50.0), started_at=0.0)
    for t in range(0, 200, 5):
        for w in (uncapped, capped):
            w.observe(float(t), answered=t, unrouted=None)
    assert uncapped.verdict(200.0, complete=False) is None
    assert capped.verdict(200.0, complete=False) is StopReason.CAPPED


def test_lost_and_not_routed_are_the_only_kinds_without_an_output() -> None:
    acc = account(MANIFEST, OUTPUTS, labels=LABELS, committed={0: 62})
    silent = {o.kind for o in acc.outcomes if o.done_at is None}
    assert silent == {LOST}
