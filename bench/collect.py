"""Measure a run: join the router's outputs with the replay manifest (pure).

Owns parsing an output record (`parse_output`) and `account`: throughput, latency, backlog,
accuracy, triage/dead-letter rates, and every sent ticket's fate. A ticket with no output
is LOST only when the router's consumer group committed past its inbound record (the router
took it and wrote nothing: a real loss); otherwise it was NOT ROUTED when the run ended
(still in the inbound topic, or in flight). No I/O: reading the topics and the router's
committed offsets is `bench.outputs`' job.

Latency: a ticket's end-to-end latency is its first output record's Kafka timestamp minus
the send time in the manifest. The record timestamp is stamped on the output path (the
worker's producer, or the broker with LogAppendTime), so it includes the publish, which the
worker's own `published_at` (hand-off to the producer) does not; `published_at` is the
fallback when a record has no timestamp.

Backlog: a time bin is saturated when a ticket already waiting at its start is still
waiting at its end (it waited a whole bin: the router did not clear its queue). A ticket is
flagged `backlogged` when a bin it was sent or waited in is saturated: its latency is mostly
waiting behind a backlog the load generator built, not the router's latency at a load it
keeps up with. An unflagged ticket never waited through a whole bin after the one it was
sent in, so its latency stays under two bins.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import ValidationError

from loadgen.replay import ManifestRow
from schemas.dead_letter import DeadLetter
from schemas.routing import Disposition, RoutedTicket

PERCENTILES = (50, 90, 95, 99)
_MAX_LISTED_IDS = 200


class OutputKind(StrEnum):
    """What an output record is."""

    ROUTED = "routed"
    TRIAGE = "triage"
    DEAD_LETTER = "dead_letter"
    UNREADABLE = "unreadable"  # an output record the collector could not parse


@dataclass(frozen=True, slots=True)
class Observation:
    """One output record, parsed.

    Attributes:
        topic, partition, offset: where it was read.
        kind: routed, triage, dead-letter or unreadable.
        ticket_id: the ticket it is about (None when it cannot be told).
        record_ts: the record's Kafka timestamp, Unix seconds (None if absent).
        consumed_at: when the collector read it, Unix seconds.
        predicted: the expert's queue (routed and triage records).
        confidence: the expert's confidence (routed and triage records).
        received_at, decided_at, published_at, enqueued_at: the worker's stage times.
    """

    topic: str
    partition: int
    offset: int
    kind: OutputKind
    ticket_id: str | None
    record_ts: float | None
    consumed_at: float
    predicted: str | None = None
    confidence: float | None = None
    enqueued_at: float | None = None
    received_at: float | None = None
    decided_at: float | None = None
    published_at: float | None = None

    @property
    def done_at(self) -> float:
        """When the output existed: record timestamp, else published_at, else consumed_at."""
        for t in (self.record_ts, self.published_at):
            if t is not None:
                return t
        return self.consumed_at


def _id_from_payload(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for path in (("number",), ("issue", "key"), ("ticket", "id"), ("id",)):
        node: Any = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return str(node)
    return None


def parse_output(
    *,
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    record_ts: float | None,
    consumed_at: float,
    dead_letter_topic: str,
) -> Observation:
    """Parse one output record into an `Observation` (pure)."""
    base = Observation(
        topic=topic,
        partition=partition,
        offset=offset,
        kind=OutputKind.UNREADABLE,
        ticket_id=None,
        record_ts=record_ts,
        consumed_at=consumed_at,
    )
    try:
        if topic == dead_letter_topic:
            dl = DeadLetter.model_validate_json(value or b"")
            key = dl.raw_key.decode("utf-8", "replace") if dl.raw_key else None
            return replace(
                base,
                kind=OutputKind.DEAD_LETTER,
                ticket_id=key or _id_from_payload(dl.raw),
                published_at=dl.failed_at.timestamp(),
            )
        rt = RoutedTicket.model_validate_json(value or b"")
    except ValidationError:
        return base
    return replace(
        base,
        kind=OutputKind.TRIAGE if rt.disposition is Disposition.TRIAGE else OutputKind.ROUTED,
        ticket_id=rt.ticket.id,
        predicted=rt.decision.queue,
        confidence=rt.decision.confidence,
        enqueued_at=rt.enqueued_at.timestamp() if rt.enqueued_at else None,
        received_at=rt.received_at.timestamp(),
        decided_at=rt.decided_at.timestamp(),
        published_at=rt.published_at.timestamp(),
    )


LOST = "lost"  # the router's group committed past it and it has no output
NOT_ROUTED = "not_routed"  # no output, and the router had not committed past it


@dataclass(frozen=True, slots=True)
class TicketOutcome:
    """One sent ticket joined with its first output (the input of `bench.mttr`).

    `kind` is an `OutputKind` value when the ticket has an output; without one it is
    `LOST` (the router's consumer group committed past its inbound record) or `NOT_ROUTED`
    (still in the inbound topic or in flight when the run ended).
    """

    ticket_id: str
    truth: str
    storm: str | None
    sent_at: float
    kind: str
    predicted: str | None
    confidence: float | None
    done_at: float | None
    latency_s: float | None
    queue_wait_s: float | None  # sent -> the worker read it
    inference_s: float | None  # read -> decided
    publish_s: float | None  # decided -> output record timestamp
    backlogged: bool = False  # sent while the router was saturated (see the module doc)


# Inbound partition -> the router group's committed offset (the next record it will read).
Committed = Mapping[int, int]


def is_committed_past(row: ManifestRow, committed: Committed | None) -> bool:
    """True when the router's group committed past this ticket's inbound record."""
    if committed is None or row.partition is None or row.offset is None:
        return False
    return row.offset < committed.get(row.partition, 0)


def owed_ids(manifest: Iterable[ManifestRow], committed: Committed | None) -> set[str]:
    """Tickets whose output must exist: the router committed past them (pure)."""
    return {r.ticket_id for r in manifest if r.delivered and is_committed_past(r, committed)}


def unrouted_count(manifest: Iterable[ManifestRow], committed: Committed | None) -> int:
    """Delivered tickets the router has not committed past yet (pure)."""
    return sum(r.delivered and not is_committed_past(r, committed) for r in manifest)


@dataclass(slots=True)
class TimeSeries:
    """Per-bin figures, bins of `bin_s` seconds from the first send."""

    bin_s: float
    t_s: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    # Sent and not answered yet, LOST tickets excluded (not-routed ones are still waiting).
    queued: list[int] = field(default_factory=list)
    # A ticket waiting at the bin's start was still waiting at its end.
    saturated: list[bool] = field(default_factory=list)
    latency_p50_s: list[float | None] = field(default_factory=list)
    latency_p95_s: list[float | None] = field(default_factory=list)
    latency_p99_s: list[float | None] = field(default_factory=list)

    def bin_of(self, t_s: float) -> int:
        """The bin an offset from the first send falls in."""
        return int(t_s // self.bin_s)


@dataclass(slots=True)
class Accounting:
    """Everything `account` measures. JSON-ready via `to_json`.

    `latency_s` covers every answered ticket; `latency_kept_up_s` only those sent while the
    router kept up, `latency_backlogged_s` those sent while it was saturated.
    """

    sent: int
    send_failed: int
    seen: int
    routed: int
    triaged: int
    dead_lettered: int
    unreadable_outputs: int
    lost: int
    not_routed: int
    duplicated: int
    unexpected: int
    other_seen: int
    backlogged: int
    accuracy_routed: float | None
    accuracy_top1: float | None
    correct_routed_share: float | None
    triage_rate: float | None
    dead_letter_rate: float | None
    throughput_per_s: float | None
    latency_s: dict[str, float]
    latency_kept_up_s: dict[str, float]
    latency_backlogged_s: dict[str, float]
    stage_mean_s: dict[str, float]
    labels: list[str]
    confusion: list[list[int]]
    series: TimeSeries
    router_committed: dict[int, int] | None
    lost_ids: list[str]
    not_routed_ids: list[str]
    duplicated_ids: dict[str, int]
    outcomes: list[TicketOutcome] = field(default_factory=list)

    def to_json(self, *, with_outcomes: bool = False) -> dict[str, Any]:
        """JSON-ready dict; per-ticket outcomes only when asked."""
        data = asdict(self)
        if not with_outcomes:
            data.pop("outcomes")
        return data


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    out = {f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}
    out["mean"] = float(a.mean())
    out["max"] = float(a.max())
    return out


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _outcome(
    row: ManifestRow, first: Observation | None, committed: Committed | None
) -> TicketOutcome:
    if first is None:
        kind = LOST if is_committed_past(row, committed) else NOT_ROUTED
        return TicketOutcome(row.ticket_id, row.queue, row.storm, row.sent_at, kind, *((None,) * 7))
    done = first.done_at
    wait = first.received_at - row.sent_at if first.received_at is not None else None
    infer = (
        first.decided_at - first.received_at
        if first.decided_at is not None and first.received_at is not None
        else None
    )
    publish = done - first.decided_at if first.decided_at is not None else None
    return TicketOutcome(
        ticket_id=row.ticket_id,
        truth=row.queue,
        storm=row.storm,
        sent_at=row.sent_at,
        kind=first.kind.value,
        predicted=first.predicted,
        confidence=first.confidence,
        done_at=done,
        latency_s=done - row.sent_at,
        queue_wait_s=wait,
        inference_s=infer,
        publish_s=publish,
    )


def _series(outcomes: Sequence[TicketOutcome], *, bin_s: float) -> TimeSeries:
    series = TimeSeries(bin_s=bin_s)
    if not outcomes:
        return series
    t0 = min(o.sent_at for o in outcomes)
    done_times = [o.done_at for o in outcomes if o.done_at is not None]
    t_end = max([o.sent_at for o in outcomes] + done_times)
    n_bins = series.bin_of(t_end - t0) + 1
    sent = np.zeros(n_bins, dtype=np.int64)
    sent_waiting = np.zeros(n_bins, dtype=np.int64)
    done = np.zeros(n_bins, dtype=np.int64)
    # waiting_through[i]: tickets waiting from before bin i's start until after its end.
    through = np.zeros(n_bins + 1, dtype=np.int64)
    lat: list[list[float]] = [[] for _ in range(n_bins)]
    for o in outcomes:
        b_sent = series.bin_of(o.sent_at - t0)
        sent[b_sent] += 1
        sent_waiting[b_sent] += o.kind != LOST
        if o.done_at is not None and o.latency_s is not None:
            b = series.bin_of(o.done_at - t0)
            done[b] += 1
            lat[b].append(o.latency_s)
            if b > b_sent + 1:
                through[b_sent + 1] += 1
                through[b] -= 1
        elif o.kind != LOST and b_sent + 1 < n_bins:
            through[b_sent + 1] += 1  # still waiting when the run ended
    backlog = np.cumsum(sent) - np.cumsum(done)
    queued = np.cumsum(sent_waiting) - np.cumsum(done)
    series.t_s = [i * bin_s for i in range(n_bins)]
    series.sent = sent.tolist()
    series.done = done.tolist()
    series.backlog = backlog.tolist()
    series.queued = queued.tolist()
    series.saturated = [bool(n > 0) for n in np.cumsum(through)[:n_bins]]
    for values in lat:
        p = np.percentile(values, [50, 95, 99]) if values else [None] * 3
        series.latency_p50_s.append(None if p[0] is None else float(p[0]))
        series.latency_p95_s.append(None if p[1] is None else float(p[1]))
        series.latency_p99_s.append(None if p[2] is None else float(p[2]))
    return series


def _flag_backlogged(outcomes: list[TicketOutcome], series: TimeSeries) -> list[TicketOutcome]:
    """Flag the tickets sent or waiting in a saturated bin."""
    if not outcomes:
        return outcomes
    t0 = min(o.sent_at for o in outcomes)
    last = len(series.saturated) - 1
    # saturated_before[b]: saturated bins among 0 .. b-1
    saturated_before = np.concatenate([[0], np.cumsum(series.saturated)])
    out = []
    for o in outcomes:
        first = series.bin_of(o.sent_at - t0)
        end = series.bin_of(o.done_at - t0) if o.done_at is not None else last
        waited_in_saturated = saturated_before[end + 1] - saturated_before[first] > 0
        out.append(replace(o, backlogged=True) if waited_in_saturated else o)
    return out


def _confusion(outcomes: Iterable[TicketOutcome], labels: Sequence[str]) -> list[list[int]]:
    index = {name: i for i, name in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for o in outcomes:
        if o.predicted is not None and o.truth in index and o.predicted in index:
            matrix[index[o.truth]][index[o.predicted]] += 1
    return matrix


def account(
    manifest: Sequence[ManifestRow],
    observations: Sequence[Observation],
    *,
    labels: Sequence[str],
    bin_s: float = 60.0,
    committed: Committed | None = None,
    other_ids: Collection[str] = (),
) -> Accounting:
    """Join the manifest with the outputs and measure the run (pure).

    A ticket counts once, by its first output (lowest record time); later outputs of the
    same ticket make it DUPLICATED. A delivered ticket with no output is LOST only when
    `committed` shows the router's group committed past it; otherwise it is NOT ROUTED
    (when the router's progress is unknown, nothing can be called lost). Outputs of
    tickets not in the manifest are `unexpected` (e.g. an earlier run's on the same
    topics), unless listed in `other_ids` (tickets this run sent for another purpose, such
    as the demo's capacity probe), and otherwise ignored.

    Args:
        manifest: what replay sent (undelivered rows count as `send_failed`, not sent).
        observations: the parsed output records.
        labels: the taxonomy's queue names (confusion matrix order).
        bin_s: width of the time-series bins (also of the saturation test).
        committed: the router group's committed offsets on the inbound topic at the end.
        other_ids: ids of tickets sent outside the manifest on purpose.
    """
    sent_rows = [r for r in manifest if r.delivered]
    sent_ids = {r.ticket_id for r in sent_rows}
    others = set(other_ids)
    by_id: dict[str, list[Observation]] = defaultdict(list)
    unexpected_ids: set[str] = set()
    other_seen: set[str] = set()
    for obs in observations:
        if obs.ticket_id is None:
            continue
        if obs.ticket_id in sent_ids:
            by_id[obs.ticket_id].append(obs)
        elif obs.ticket_id in others:
            other_seen.add(obs.ticket_id)
        else:
            unexpected_ids.add(obs.ticket_id)
    first = {tid: min(obs, key=lambda o: (o.done_at, o.offset)) for tid, obs in by_id.items()}
    outcomes = [_outcome(r, first.get(r.ticket_id), committed) for r in sent_rows]
    series = _series(outcomes, bin_s=bin_s)
    outcomes = _flag_backlogged(outcomes, series)
    kinds = Counter(o.kind for o in outcomes)
    duplicated = {tid: len(obs) for tid, obs in by_id.items() if len(obs) > 1}
    lost_ids = sorted(o.ticket_id for o in outcomes if o.kind == LOST)
    not_routed_ids = sorted(o.ticket_id for o in outcomes if o.kind == NOT_ROUTED)

    routed = [o for o in outcomes if o.kind == OutputKind.ROUTED]
    decided = [o for o in outcomes if o.predicted is not None]
    answered = [o for o in outcomes if o.latency_s is not None]
    done_times = [o.done_at for o in outcomes if o.done_at is not None]
    span = (max(done_times) - min(o.sent_at for o in outcomes)) if done_times else 0.0
    stage_mean = {
        name: float(np.mean(vals))
        for name in ("queue_wait_s", "inference_s", "publish_s")
        if (vals := [v for o in outcomes if (v := getattr(o, name)) is not None])
    }
    correct_routed = sum(o.predicted == o.truth for o in routed)
    return Accounting(
        sent=len(sent_rows),
        send_failed=len(manifest) - len(sent_rows),
        seen=len(by_id),
        routed=kinds[OutputKind.ROUTED],
        triaged=kinds[OutputKind.TRIAGE],
        dead_lettered=kinds[OutputKind.DEAD_LETTER],
        unreadable_outputs=sum(o.kind is OutputKind.UNREADABLE for o in observations),
        lost=len(lost_ids),
        not_routed=len(not_routed_ids),
        duplicated=len(duplicated),
        unexpected=len(unexpected_ids),
        other_seen=len(other_seen),
        backlogged=sum(o.backlogged for o in answered),
        accuracy_routed=_ratio(correct_routed, len(routed)),
        accuracy_top1=_ratio(sum(o.predicted == o.truth for o in decided), len(decided)),
        correct_routed_share=_ratio(correct_routed, len(sent_rows)),
        triage_rate=_ratio(kinds[OutputKind.TRIAGE], len(sent_rows)),
        dead_letter_rate=_ratio(kinds[OutputKind.DEAD_LETTER], len(sent_rows)),
        throughput_per_s=(len(done_times) / span) if span > 0 else None,
        latency_s=_percentiles([o.latency_s for o in answered if o.latency_s is not None]),
        latency_kept_up_s=_percentiles(
            [o.latency_s for o in answered if o.latency_s is not None and not o.backlogged]
        ),
        latency_backlogged_s=_percentiles(
            [o.latency_s for o in answered if o.latency_s is not None and o.backlogged]
        ),
        stage_mean_s=stage_mean,
        labels=list(labels),
        confusion=_confusion(outcomes, labels),
        series=series,
        router_committed=dict(committed) if committed is not None else None,
        lost_ids=lost_ids[:_MAX_LISTED_IDS],
        not_routed_ids=not_routed_ids[:_MAX_LISTED_IDS],
        duplicated_ids=dict(sorted(duplicated.items())[:_MAX_LISTED_IDS]),
        outcomes=outcomes,
    )
