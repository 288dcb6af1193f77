"""Open-loop replay: publish labeled tickets to the inbound topic on a traffic schedule.

Owns the replay plan (pure: which ticket goes out when, under which id), pacing against a
monotonic clock compressed by a speed-up factor (or as fast as possible), the send-time
header, and the manifest (ticket id -> expected queue, send time, delivery result). It
never waits for the router: load is open-loop, so a slow router shows up as backlog, not
as a slower load generator.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np

from loadgen.itsm_formats import PayloadFormat, encode, ticket_id
from loadgen.traffic import Schedule
from schemas.ticket import SourceSystem, Ticket

if TYPE_CHECKING:
    from rich.progress import Progress

# Record headers set on every replayed ticket.
HEADER_SENT_AT_NS = "loadgen-sent-at-ns"  # wall clock (Unix ns) when produce() was called
HEADER_RUN = "loadgen-run"
HEADER_FORMAT = "loadgen-format"

_SOURCE = {
    PayloadFormat.CANONICAL: SourceSystem.CANONICAL,
    PayloadFormat.SERVICENOW: SourceSystem.SERVICENOW,
    PayloadFormat.JIRA: SourceSystem.JIRA,
    PayloadFormat.ZENDESK: SourceSystem.ZENDESK,
}
_STORM_POOL = 8  # distinct tickets a storm repeats: many users report the same outage


class Labeled(Protocol):
    """A ticket with its ground-truth queue (`loadgen.corpus.LabeledTicket` fits)."""

    @property
    def ticket(self) -> Ticket: ...

    @property
    def queue(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CorpusItem:
    """One line of a corpus JSONL file: {"text", "label", "priority", "ticket"}."""

    ticket: Ticket
    queue: str
    priority: str


def load_corpus(path: Path) -> list[CorpusItem]:
    """Read a corpus JSONL file.

    Raises:
        ValueError: a line is not a corpus record; the message names the line.
    """
    items: list[CorpusItem] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                items.append(
                    CorpusItem(
                        ticket=Ticket.model_validate(rec["ticket"]),
                        queue=str(rec["label"]),
                        priority=str(rec.get("priority", "")),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a corpus record: {exc}") from exc
    if not items:
        raise ValueError(f"{path}: empty corpus")
    return items


@dataclass(frozen=True, slots=True)
class PlannedSend:
    """One ticket of the plan.

    Attributes:
        seq: position in the plan (also the id sequence number).
        scheduled_s: arrival offset in the traffic schedule (simulated seconds).
        due_s: when to send it, in real seconds after the replay starts.
        corpus_index: which corpus ticket to send.
        storm: the storm's name, or None for normal traffic.
    """

    seq: int
    scheduled_s: float
    due_s: float
    corpus_index: int
    storm: str | None


def plan(
    schedule: Schedule,
    corpus: Sequence[Labeled],
    *,
    seed: int,
    speedup: float | None,
    limit: int | None = None,
) -> list[PlannedSend]:
    """Decide which corpus ticket each arrival sends and when (pure).

    Normal arrivals draw uniformly from the corpus; a storm's arrivals repeat a small pool
    of tickets of the storm's queue (all of the corpus if it has none of that queue).

    Args:
        schedule: the arrivals.
        corpus: the labeled tickets to draw from.
        seed: randomness of the draws.
        speedup: simulated seconds per real second; None sends as fast as possible.
        limit: at most this many sends (the first ones).

    Raises:
        ValueError: empty corpus or a non-positive speed-up.
    """
    if not corpus:
        raise ValueError("corpus is empty")
    if speedup is not None and speedup <= 0:
        raise ValueError("speedup must be > 0")
    rng = np.random.default_rng(seed)
    n = len(schedule) if limit is None else min(limit, len(schedule))
    draws = rng.integers(0, len(corpus), size=n)
    pools: list[np.ndarray[Any, np.dtype[np.int64]]] = []
    for storm in schedule.storms:
        same = np.flatnonzero(np.array([c.queue == storm.queue for c in corpus]))
        candidates = same if same.size else np.arange(len(corpus))
        pools.append(rng.choice(candidates, size=min(_STORM_POOL, candidates.size), replace=False))
    out: list[PlannedSend] = []
    for i in range(n):
        storm_i = int(schedule.storm_index[i])
        scheduled = float(schedule.times_s[i])
        if storm_i >= 0:
            pool = pools[storm_i]
            index = int(pool[rng.integers(0, pool.size)])
            storm_name: str | None = schedule.storms[storm_i].name
        else:
            index, storm_name = int(draws[i]), None
        due = 0.0 if speedup is None else scheduled / speedup
        out.append(PlannedSend(i, scheduled, due, index, storm_name))
    return out


@dataclass(slots=True)
class ManifestRow:
    """What was sent: one JSON line of the manifest."""

    ticket_id: str
    queue: str
    format: str
    storm: str | None
    seq: int
    scheduled_s: float
    due_s: float
    sent_at: float  # Unix seconds, wall clock at produce()
    lag_s: float  # actual send offset minus due offset (real seconds)
    delivered: bool = False
    partition: int | None = None
    offset: int | None = None
    error: str | None = None


def read_manifest(path: Path) -> list[ManifestRow]:
    """Read a manifest JSONL file."""
    with path.open(encoding="utf-8") as f:
        return [ManifestRow(**json.loads(line)) for line in f if line.strip()]


@dataclass(slots=True)
class ReplayResult:
    """Figures of one replay run (written next to the manifest as JSON)."""

    run: int
    topic: str
    format: str
    speedup: float | None
    planned: int
    sent: int
    delivered: int
    failed: int
    wall_s: float
    scheduled_span_s: float
    send_rate_per_s: float
    lag_p50_s: float
    lag_p95_s: float
    lag_p99_s: float
    lag_max_s: float
    started_at: float
    stopped_early: bool
    lag_series: list[tuple[float, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def lag_figures(lags_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max of scheduled-vs-actual send lag (pure)."""
    if not lags_s:
        return {"lag_p50_s": 0.0, "lag_p95_s": 0.0, "lag_p99_s": 0.0, "lag_max_s": 0.0}
    a = np.asarray(lags_s, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "lag_p50_s": float(p50),
        "lag_p95_s": float(p95),
        "lag_p99_s": float(p99),
        "lag_max_s": float(a.max()),
    }


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("lag {task.fields[lag_ms]:>7.1f} ms"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        yield bar


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    """Where and how to publish.

    Attributes:
        bootstrap: Kafka bootstrap servers.
        topic: the inbound topic.
        fmt: payload format.
        run: run number, part of every ticket id (ids stay unique across runs).
        extra: librdkafka settings merged over the defaults.
    """

    bootstrap: str
    topic: str
    fmt: PayloadFormat = PayloadFormat.CANONICAL
    run: int = 0
    extra: dict[str, str] = field(default_factory=dict)


def _producer_config(target: ReplayTarget) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": target.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "client.id": f"ticket-router-loadgen-{target.run}",
    }
    config.update(target.extra)
    return config


def replay(
    planned: Sequence[PlannedSend],
    corpus: Sequence[Labeled],
    *,
    target: ReplayTarget,
    manifest: IO[str],
    progress: bool = True,
    max_wall_s: float | None = None,
    flush_timeout_s: float = 60.0,
    speedup: float | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> ReplayResult:
    """Publish `planned` to the inbound topic and write one manifest line per delivery.

    Each ticket gets a fresh id in the format's style (see `itsm_formats.ticket_id`) and
    `created_at` = the moment it is sent. The record key is the ticket id; the header
    `loadgen-sent-at-ns` carries the send time.

    Args:
        planned: the plan, in due order.
        corpus: what `PlannedSend.corpus_index` refers to.
        target: broker, topic, format and run number.
        manifest: text stream the JSONL manifest is written to.
        progress: show a rich progress bar.
        max_wall_s: stop sending after this many real seconds (bounded run).
        flush_timeout_s: how long to wait for outstanding deliveries at the end.
        speedup: the factor `planned` was made with, recorded in the result.
        stop: when set, stop sending (the result says `stopped_early`); what was sent is
            still flushed and in the manifest.
        on_progress: called after each send with (sent, planned, NaN), the signature of
            `expert.progress.progress`'s reporter.

    Returns:
        The run's figures, including scheduled-vs-actual send lag.
    """
    from confluent_kafka import KafkaError, Message, Producer

    producer = Producer(_producer_config(target))
    lags: list[float] = []
    series: list[tuple[float, float]] = []
    counts = {"delivered": 0, "failed": 0}

    def on_delivery(row: ManifestRow) -> Any:
        def done(err: KafkaError | None, msg: Message) -> None:
            row.delivered = err is None
            if err is None:
                row.partition, row.offset = msg.partition(), msg.offset()
                counts["delivered"] += 1
            else:
                row.error = str(err)
                counts["failed"] += 1
            manifest.write(json.dumps(asdict(row)) + "\n")

        return done

    t0 = time.monotonic()
    started_at = time.time()
    stopped_early = False
    sent = 0
    with _progress(progress, len(planned)) as bar:
        task = bar.add_task("replay", total=len(planned), lag_ms=0.0) if bar else None
        for p in planned:
            if max_wall_s is not None and p.due_s > max_wall_s:
                stopped_early = True
                break
            while (now := time.monotonic() - t0) < p.due_s and not _is_set(stop):
                producer.poll(min(p.due_s - now, 0.05))
            if _is_set(stop) or (max_wall_s is not None and now > max_wall_s):
                stopped_early = True
                break
            item = corpus[p.corpus_index]
            sent_ns = time.time_ns()
            tid = ticket_id(target.fmt, run=target.run, seq=p.seq)
            ticket = item.ticket.model_copy(
                update={
                    "id": tid,
                    "source": _SOURCE[target.fmt],
                    "created_at": _utc_from_ns(sent_ns),
                }
            )
            lag = (time.monotonic() - t0) - p.due_s
            row = ManifestRow(
                ticket_id=tid,
                queue=item.queue,
                format=target.fmt.value,
                storm=p.storm,
                seq=p.seq,
                scheduled_s=p.scheduled_s,
                due_s=p.due_s,
                sent_at=sent_ns / 1e9,
                lag_s=lag,
            )
            _produce(producer, target, tid, encode(ticket, target.fmt), sent_ns, on_delivery(row))
            sent += 1
            lags.append(lag)
            if sent % 50 == 1:
                series.append((p.due_s, lag))
            _report(bar, task, on_progress, sent=sent, total=len(planned), lag_s=lag)
        remaining = producer.flush(flush_timeout_s)
    wall_s = time.monotonic() - t0
    return ReplayResult(
        run=target.run,
        topic=target.topic,
        format=target.fmt.value,
        speedup=speedup,
        planned=len(planned),
        sent=sent,
        delivered=counts["delivered"],
        failed=counts["failed"] + remaining,
        wall_s=wall_s,
        scheduled_span_s=planned[sent - 1].scheduled_s if sent else 0.0,
        send_rate_per_s=sent / wall_s if wall_s > 0 else 0.0,
        started_at=started_at,
        stopped_early=stopped_early,
        lag_series=series,
        **lag_figures(lags),
    )


def _report(
    bar: Progress | None,
    task: Any,
    on_progress: Callable[[int, int, float], None] | None,
    *,
    sent: int,
    total: int,
    lag_s: float,
) -> None:
    if bar is not None and task is not None:
        bar.update(task, advance=1, lag_ms=lag_s * 1000)
    if on_progress is not None:
        on_progress(sent, total, float("nan"))


def _is_set(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _utc_from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def _produce(
    producer: Any,
    target: ReplayTarget,
    key: str,
    value: bytes,
    sent_ns: int,
    on_delivery: Any,
) -> None:
    headers = [
        (HEADER_SENT_AT_NS, str(sent_ns).encode()),
        (HEADER_RUN, str(target.run).encode()),
        (HEADER_FORMAT, target.fmt.value.encode()),
    ]
    while True:
        try:
            producer.produce(
                target.topic,
                value=value,
                key=key.encode(),
                headers=headers,
                on_delivery=on_delivery,
            )
            return
        except BufferError:
            producer.poll(0.1)  # local queue full: serve deliveries, then retry
