"""`ticket-router tail QUEUE`: follow one output topic as a downstream consumer sees it.

Owns resolving a queue name (or `triage`, `dead-letter`, `shadow`) to its topic, the "from
the end" rule, and printing each record readably or raw. It reads through `worker.kafka_io.Source`
in a fresh consumer group of its own (`ticket-router-tail-<random>`) that never commits:
auto-commit and the offset store are off and its rebalance listener hands back nothing to
commit, so no group's offsets change, the worker's least of all. It never publishes.

"From the end": the group starts at the partitions' end (`auto.offset.reset=latest`), and
records stamped before `tail` started are skipped until a partition shows a newer one.
Apache Kafka's end offsets are exact, so the check only matters for brokers whose
ListOffsets is not (the embedded Tansu reports a wrong end for batched records).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from schemas.dead_letter import (
    HEADER_EXCEPTION_CLASS,
    HEADER_EXCEPTION_MESSAGE,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_TOPIC,
    DeadLetter,
    DeadLetterReason,
)
from schemas.routing import Disposition, RoutedTicket
from schemas.taxonomy import Taxonomy
from worker.kafka_io import TP, ConsumerThreadOps, InboundRecord
from worker.pipeline import H_DEAD_LETTER_REASON

TRIAGE = "triage"
DEAD_LETTER = "dead-letter"
SHADOW = "shadow"
GROUP_PREFIX = "ticket-router-tail-"
_SUBJECT_SHOWN_CHARS = 60
_RAW_SHOWN_BYTES = 60


class UnknownQueueError(ValueError):
    """The name is neither a taxonomy queue nor `triage` / `dead-letter` / `shadow`."""


def topic_of(name: str, taxonomy: Taxonomy) -> str:
    """The topic `tail NAME` follows: a queue's routed topic, triage, dead-letter or shadow.

    A queue named `triage` or `shadow` wins over that topic (queue names are the users').

    Raises:
        UnknownQueueError: listing the names that are known.
    """
    if name in taxonomy.labels:
        return taxonomy.topic_for(name)
    if name == TRIAGE:
        return taxonomy.topics.triage
    if name == DEAD_LETTER:
        return taxonomy.topics.dead_letter
    if name == SHADOW:
        return taxonomy.topics.shadow
    known = ", ".join([*taxonomy.labels, TRIAGE, DEAD_LETTER, SHADOW])
    raise UnknownQueueError(f"unknown queue {name!r}; known: {known}")


@dataclass
class StartFilter:
    """Admits records stamped at or after `since_ms`, per partition until one is admitted.

    After the first admitted record of a partition every later record of it is newer (a
    partition is an append-only log), so the filter stops looking at that partition.
    `since_ms=None` admits everything (from the beginning).
    """

    since_ms: int | None
    _caught_up: set[TP] = field(default_factory=set)

    def admits(self, record: InboundRecord) -> bool:
        """Whether `record` is printed."""
        if self.since_ms is None or record.tp in self._caught_up:
            return True
        if record.timestamp_ms is not None and record.timestamp_ms < self.since_ms:
            return False
        self._caught_up.add(record.tp)
        return True


def _headers(record: InboundRecord) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in record.headers}


def _when(record: InboundRecord) -> datetime:
    ms = record.timestamp_ms if record.timestamp_ms is not None else time.time() * 1000
    return datetime.fromtimestamp(ms / 1000, UTC)


def dead_letter_of(record: InboundRecord) -> DeadLetter:
    """The dead-letter envelope of a record the worker wrote to the dead-letter topic.

    Raises:
        ValueError: the record lacks the dead-letter headers (not written by the router).
    """
    h = _headers(record)
    try:
        return DeadLetter(
            raw=record.value or b"",
            raw_key=record.key,
            reason=DeadLetterReason(h[H_DEAD_LETTER_REASON]),
            error_type=h[HEADER_EXCEPTION_CLASS],
            error=h[HEADER_EXCEPTION_MESSAGE][:4000],
            source_topic=h[HEADER_TOPIC],
            source_partition=int(h[HEADER_PARTITION]),
            source_offset=int(h[HEADER_OFFSET]),
            failed_at=_when(record),
        )
    except (KeyError, ValueError, ValidationError) as exc:
        raise ValueError(f"not a router dead letter: {exc}") from exc


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _latency(routed: RoutedTicket) -> str:
    if routed.enqueued_at is None:
        return "e2e -"
    seconds = (routed.published_at - routed.enqueued_at).total_seconds()
    return f"e2e {seconds * 1000:.0f} ms" if seconds < 1 else f"e2e {seconds:.2f} s"


def describe(record: InboundRecord, *, dead_letter_topic: str) -> str:
    """One readable line for a record of a queue, triage, dead-letter or shadow topic."""
    where = f"[{record.partition}]@{record.offset}"
    clock = _when(record).astimezone().strftime("%H:%M:%S")
    if record.topic == dead_letter_topic:
        try:
            letter = dead_letter_of(record)
        except ValueError as exc:
            return f"{clock} {where}  unreadable record: {exc}"
        raw = _shorten(letter.raw[:_RAW_SHOWN_BYTES].decode("utf-8", "replace"), 60)
        source = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
        return (
            f"{clock} {where}  dead-letter {letter.reason.value}  from {source}: "
            f"{_shorten(letter.error, 160)}  raw {json.dumps(raw, ensure_ascii=False)}"
        )
    try:
        routed = RoutedTicket.model_validate_json(record.value or b"")
    except ValidationError as exc:
        return (
            f"{clock} {where}  unreadable record: not a routed ticket ({exc.error_count()} errors)"
        )
    decision = routed.decision
    subject = json.dumps(_shorten(routed.ticket.subject, _SUBJECT_SHOWN_CHARS), ensure_ascii=False)
    if routed.disposition is Disposition.SHADOW:
        return f"{clock} {where}  {routed.ticket.id:<16} {_shadow(routed)}  {subject}"
    triage = f"  triage: {routed.triage_reason.value}" if routed.triage_reason else ""
    return (
        f"{clock} {where}  {routed.ticket.id:<16} {decision.queue or '-':<22} "
        f"conf {decision.confidence:.3f}  {_latency(routed)}{triage}  {subject}"
        f"{_help(routed) if routed.triage_reason else ''}"
    )


def _shadow(routed: RoutedTicket) -> str:
    """A shadow decision: what autoroute would have done for a queue in shadow mode, whose
    ticket went to triage ("SHADOW would have routed to vpn  conf 0.912  (...)")."""
    decision = routed.decision
    if routed.triage_reason is None:
        would = f"would have routed to {decision.queue}"
    else:
        would = f"would have sent to triage ({routed.triage_reason.value}), best {decision.queue}"
    return (
        f"SHADOW {would}  conf {decision.confidence:.3f}  "
        "(shadow mode: the ticket itself went to triage)"
    )


def _help(routed: RoutedTicket) -> str:
    """The triage record's help, compactly: the top queues, then the similar tickets'
    queues by count ("top GRP_0 .52 GRP_8 .21  similar GRP_0x3 GRP_8x1")."""
    decision = routed.decision
    parts = []
    if decision.suggestions:
        top = " ".join(f"{s.queue} {s.probability:.2f}" for s in decision.suggestions)
        parts.append(f"top {top}")
    if decision.similar_tickets:
        counts = Counter(t.queue for t in decision.similar_tickets)
        parts.append("similar " + " ".join(f"{q}x{n}" for q, n in counts.most_common()))
    return "  " + "  ".join(parts) if parts else ""


def raw_json(record: InboundRecord, *, dead_letter_topic: str) -> str:
    """The record as JSON on one line: a routed ticket exactly as published, a dead letter
    as its `DeadLetter` envelope (raw bytes in base64)."""
    if record.topic == dead_letter_topic:
        try:
            return dead_letter_of(record).model_dump_json()
        except ValueError as exc:
            return _unreadable(record, str(exc))
    try:
        RoutedTicket.model_validate_json(record.value or b"")
    except ValidationError as exc:
        return _unreadable(record, f"not a routed ticket: {exc.error_count()} errors")
    return (record.value or b"").decode("utf-8")


def _unreadable(record: InboundRecord, error: str) -> str:
    return json.dumps(
        {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "error": error,
        }
    )


class _NeverCommits:
    """Rebalance listener of the tail's group: reports assignments, hands back no offsets."""

    def __init__(self, on_assigned: Callable[[list[TP]], None]) -> None:
        self._on_assigned = on_assigned

    def on_assigned(self, tps: list[TP]) -> None:
        self._on_assigned(tps)

    def on_revoked(self, tps: list[TP], ops: ConsumerThreadOps) -> dict[TP, int]:
        return {}

    def on_lost(self, tps: list[TP], ops: ConsumerThreadOps) -> None:
        return None


def consumer_config(settings: Any, *, group_id: str, from_beginning: bool) -> dict[str, str]:
    """librdkafka settings of the tail's consumer: the worker's connection and security
    settings, a group of its own, and nothing that could commit."""
    k = settings.kafka
    return {
        **k.common_config(),
        **k.extra,
        "group.id": group_id,
        "enable.auto.commit": "false",
        "enable.auto.offset.store": "false",
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "isolation.level": "read_committed",
        "session.timeout.ms": str(k.session_timeout_ms),
        "partition.assignment.strategy": "cooperative-sticky",
    }


async def follow(
    *,
    conf: dict[str, str],
    topic: str,
    since_ms: int | None,
    max_records: int | None,
    emit: Callable[[InboundRecord], None],
    on_assigned: Callable[[list[TP]], None],
) -> int:
    """Read `topic` and `emit` each admitted record until `max_records` (None: forever).

    Returns:
        How many records were emitted.
    """
    from worker.kafka_io import Source

    admit = StartFilter(since_ms)
    source = Source(conf=conf, topics=[topic], listener=_NeverCommits(on_assigned))
    await source.start()
    emitted = 0
    try:
        while max_records is None or emitted < max_records:
            for record in await source.poll(max_records=200, timeout_s=0.5):
                if not admit.admits(record):
                    continue
                emit(record)
                emitted += 1
                if max_records is not None and emitted >= max_records:
                    break
    finally:
        await source.close()
    return emitted


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def tail(
    queue: Annotated[
        str,
        typer.Argument(help="A taxonomy queue name, 'triage', 'dead-letter' or 'shadow'."),
    ],
    from_beginning: Annotated[
        bool,
        typer.Option("--from-beginning", help="Start at the oldest record (default: new ones)."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Each record as JSON on one line (raw record).")
    ] = False,
    max_records: Annotated[
        int | None, typer.Option("--max", min=1, help="Stop after this many records.")
    ] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    taxonomy: Annotated[
        Path | None, typer.Option(help="Taxonomy YAML (default: the worker's).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="The worker's YAML settings file (env and flags win).")
    ] = None,
) -> None:
    """Follow a queue's topic (or triage, dead-letter, shadow) and print each record: ticket
    id, queue, confidence, end-to-end latency, subject; the reason for dead letters; for
    shadow, the queue the router WOULD have routed to (queues in shadow mode). Uses a
    consumer group of its own that never commits."""
    from schemas.taxonomy import TaxonomyError
    from worker import kafka_io
    from worker.config import load_settings
    from worker.errors import BrokerUnreachableError, FatalError
    from worker.logs import configure_logging

    overrides: dict[str, object] = {
        "kafka": {"bootstrap_servers": bootstrap} if bootstrap else None,
        "taxonomy_path": taxonomy,
    }
    try:
        settings = load_settings(config_file=config, **overrides)
        tax = Taxonomy.load(settings.taxonomy_path)
        topic = topic_of(queue, tax)
    except (ValidationError, TaxonomyError, ValueError) as exc:
        raise _fail(f"invalid arguments: {exc}", 2) from exc
    configure_logging(level="WARNING", fmt=settings.log_format)
    servers = settings.kafka.bootstrap_servers
    common = {k: v for k, v in settings.kafka.common_config().items() if k != "bootstrap.servers"}
    try:
        kafka_io.wait_for_broker(servers, timeout_s=10, conf=common)
    except BrokerUnreachableError as exc:
        raise _fail(str(exc), 3) from exc
    if topic not in kafka_io.list_topics(servers, conf=common):
        raise _fail(
            f"topic {topic} does not exist on {servers}: create the layout with "
            "`ticket-router topics create` (or `broker up`)",
            2,
        )
    group = f"{GROUP_PREFIX}{uuid.uuid4().hex[:12]}"
    since_ms = None if from_beginning else int(time.time() * 1000)
    start = "the beginning" if from_beginning else "the end"

    def on_assigned(tps: list[TP]) -> None:
        typer.echo(
            f"following {topic} on {servers} from {start}: {len(tps)} partitions, "
            f"group {group} (never commits)",
            err=True,
        )

    def emit(record: InboundRecord) -> None:
        render = raw_json if as_json else describe
        typer.echo(render(record, dead_letter_topic=tax.topics.dead_letter))

    try:
        asyncio.run(
            follow(
                conf=consumer_config(settings, group_id=group, from_beginning=from_beginning),
                topic=topic,
                since_ms=since_ms,
                max_records=max_records,
                emit=emit,
                on_assigned=on_assigned,
            )
        )
    except KeyboardInterrupt:
        return
    except FatalError as exc:
        raise _fail(f"tail stopped: {exc}", 1) from exc
