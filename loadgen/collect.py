"""Measure a run: read the router's outputs and join them with the replay manifest.

Owns two things, kept apart: `read_outputs` (the Kafka edge: a unique consumer group reads
the routed, triage and dead-letter topics from the beginning, read_committed) and
`account` (pure: throughput, latency, backlog, accuracy, triage/dead-letter rates, LOST
and DUPLICATED tickets). `account` has no I/O and is what the unit tests exercise.

Latency: a ticket's end-to-end latency is its first output record's Kafka timestamp minus
the send time in the manifest. The record timestamp is stamped on the output path (the
worker's producer, or the broker with LogAppendTime), so it includes the publish, which the
worker's own `published_at` (hand-off to the producer) does not; `published_at` is the
fallback when a record has no timestamp.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
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


@dataclass(frozen=True, slots=True)
class TicketOutcome:
    """One sent ticket joined with its first output (the input of `loadgen.mttr`)."""

    ticket_id: str
    truth: str
    storm: str | None
    sent_at: float
    kind: str  # an OutputKind value, or "lost"
    predicted: str | None
    confidence: float | None
    done_at: float | None
    latency_s: float | None
    queue_wait_s: float | None  # sent -> the worker read it
    inference_s: float | None  # read -> decided
    publish_s: float | None  # decided -> output record timestamp


@dataclass(slots=True)
class TimeSeries:
    """Per-bin figures, bins of `bin_s` seconds from the first send."""

    bin_s: float
    t_s: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)  # backlog without the LOST tickets
    latency_p50_s: list[float | None] = field(default_factory=list)
    latency_p95_s: list[float | None] = field(default_factory=list)
    latency_p99_s: list[float | None] = field(default_factory=list)


@dataclass(slots=True)
class Accounting:
    """Everything `account` measures. JSON-ready via `to_json`."""

    sent: int
    send_failed: int
    seen: int
    routed: int
    triaged: int
    dead_lettered: int
    unreadable_outputs: int
    lost: int
    duplicated: int
    unexpected: int
    accuracy_routed: float | None
    accuracy_top1: float | None
    correct_routed_share: float | None
    triage_rate: float | None
    dead_letter_rate: float | None
    throughput_per_s: float | None
    latency_s: dict[str, float]
    stage_mean_s: dict[str, float]
    labels: list[str]
    confusion: list[list[int]]
    series: TimeSeries
    lost_ids: list[str]
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


def _outcome(row: ManifestRow, first: Observation | None) -> TicketOutcome:
    if first is None:
        return TicketOutcome(
            row.ticket_id, row.queue, row.storm, row.sent_at, "lost", *([None] * 7)
        )
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
    n_bins = int((t_end - t0) // bin_s) + 1
    sent = np.zeros(n_bins, dtype=np.int64)
    sent_answered = np.zeros(n_bins, dtype=np.int64)
    done = np.zeros(n_bins, dtype=np.int64)
    lat: list[list[float]] = [[] for _ in range(n_bins)]
    for o in outcomes:
        sent[int((o.sent_at - t0) // bin_s)] += 1
        if o.done_at is not None and o.latency_s is not None:
            b = int((o.done_at - t0) // bin_s)
            done[b] += 1
            sent_answered[int((o.sent_at - t0) // bin_s)] += 1
            lat[b].append(o.latency_s)
    backlog = np.cumsum(sent) - np.cumsum(done)
    series.t_s = [i * bin_s for i in range(n_bins)]
    series.sent = sent.tolist()
    series.done = done.tolist()
    series.backlog = backlog.tolist()
    series.queued = (np.cumsum(sent_answered) - np.cumsum(done)).tolist()
    for values in lat:
        p = np.percentile(values, [50, 95, 99]) if values else [None] * 3
        series.latency_p50_s.append(None if p[0] is None else float(p[0]))
        series.latency_p95_s.append(None if p[1] is None else float(p[1]))
        series.latency_p99_s.append(None if p[2] is None else float(p[2]))
    return series


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
) -> Accounting:
    """Join the manifest with the outputs and measure the run (pure).

    A ticket counts once, by its first output (lowest record time); later outputs of the
    same ticket make it DUPLICATED. A delivered ticket with no output is LOST. Outputs of
    tickets not in the manifest (e.g. from earlier runs on the same topics) are
    `unexpected` and otherwise ignored.

    Args:
        manifest: what replay sent (undelivered rows count as `send_failed`, not sent).
        observations: the parsed output records.
        labels: the taxonomy's queue names (confusion matrix order).
        bin_s: width of the time-series bins.
    """
    sent_rows = [r for r in manifest if r.delivered]
    sent_ids = {r.ticket_id for r in sent_rows}
    by_id: dict[str, list[Observation]] = defaultdict(list)
    unexpected_ids: set[str] = set()
    for obs in observations:
        if obs.ticket_id is None:
            continue
        if obs.ticket_id in sent_ids:
            by_id[obs.ticket_id].append(obs)
        else:
            unexpected_ids.add(obs.ticket_id)
    first = {tid: min(obs, key=lambda o: (o.done_at, o.offset)) for tid, obs in by_id.items()}
    outcomes = [_outcome(r, first.get(r.ticket_id)) for r in sent_rows]
    kinds = Counter(o.kind for o in outcomes)
    duplicated = {tid: len(obs) for tid, obs in by_id.items() if len(obs) > 1}
    lost_ids = sorted(o.ticket_id for o in outcomes if o.kind == "lost")

    routed = [o for o in outcomes if o.kind == OutputKind.ROUTED]
    decided = [o for o in outcomes if o.predicted is not None]
    latencies = [o.latency_s for o in outcomes if o.latency_s is not None]
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
        duplicated=len(duplicated),
        unexpected=len(unexpected_ids),
        accuracy_routed=_ratio(correct_routed, len(routed)),
        accuracy_top1=_ratio(sum(o.predicted == o.truth for o in decided), len(decided)),
        correct_routed_share=_ratio(correct_routed, len(sent_rows)),
        triage_rate=_ratio(kinds[OutputKind.TRIAGE], len(sent_rows)),
        dead_letter_rate=_ratio(kinds[OutputKind.DEAD_LETTER], len(sent_rows)),
        throughput_per_s=(len(done_times) / span) if span > 0 else None,
        latency_s=_percentiles(latencies),
        stage_mean_s=stage_mean,
        labels=list(labels),
        confusion=_confusion(outcomes, labels),
        series=_series(outcomes, bin_s=bin_s),
        lost_ids=lost_ids[:_MAX_LISTED_IDS],
        duplicated_ids=dict(sorted(duplicated.items())[:_MAX_LISTED_IDS]),
        outcomes=outcomes,
    )


@dataclass(frozen=True, slots=True)
class OutputTopics:
    """The topics the collector reads."""

    routed: tuple[str, ...]
    triage: str
    dead_letter: str

    @property
    def all(self) -> list[str]:
        """Every topic, routed first."""
        return [*self.routed, self.triage, self.dead_letter]


def _consumer_config(bootstrap: str, group_id: str, extra: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "session.timeout.ms": 6000,
    }
    config.update(extra)
    return config


def read_outputs(
    bootstrap: str,
    topics: OutputTopics,
    *,
    group_id: str,
    expected_ids: set[str] | None = None,
    idle_timeout_s: float = 10.0,
    deadline_s: float = 300.0,
    extra: dict[str, str] | None = None,
) -> list[Observation]:
    """Read every output record from the beginning with a fresh consumer group.

    Stops at the first of: every expected id seen and every assigned partition at its end;
    `idle_timeout_s` with no record after all partitions reached their end; `deadline_s`.

    Args:
        bootstrap: Kafka bootstrap servers.
        topics: the routed, triage and dead-letter topics.
        group_id: a group id no one else uses (offsets are never committed).
        expected_ids: the manifest's ticket ids; None to read until idle.
        idle_timeout_s: quiet period that ends the read once caught up.
        deadline_s: upper bound on the whole read.
        extra: librdkafka settings merged over the defaults.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException

    consumer = Consumer(_consumer_config(bootstrap, group_id, extra or {}))
    consumer.subscribe(topics.all)
    observations: list[Observation] = []
    pending = set(expected_ids) if expected_ids is not None else None
    at_eof: set[tuple[str, int]] = set()
    start = time.monotonic()
    last_record = start
    try:
        while (now := time.monotonic()) - start < deadline_s:
            assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            caught_up = bool(assigned) and assigned <= at_eof
            if caught_up and (pending is not None and not pending):
                break
            if caught_up and now - last_record > idle_timeout_s:
                break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            assert topic is not None and partition is not None and offset is not None
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_eof.add((topic, partition))
                    continue
                if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue  # a topic the router has not created yet
                raise KafkaException(err)
            at_eof.discard((topic, partition))
            last_record = time.monotonic()
            ts_type, ts_ms = msg.timestamp()
            obs = parse_output(
                topic=topic,
                partition=partition,
                offset=offset,
                value=msg.value(),
                record_ts=ts_ms / 1000 if ts_type != 0 and ts_ms >= 0 else None,
                consumed_at=time.time(),
                dead_letter_topic=topics.dead_letter,
            )
            observations.append(obs)
            if pending is not None and obs.ticket_id is not None:
                pending.discard(obs.ticket_id)
    finally:
        consumer.close()
    return observations
