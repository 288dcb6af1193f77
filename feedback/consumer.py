"""The feedback consumer: decisions and feedback in, the decision log and live-quality metrics out.

Owns one loop that (1) reads every routed, triage and shadow partition into the decision log,
(2) reads the feedback topic in its own consumer group, parses each record, dead-letters
the unreadable ones, and joins the rest with their decisions (feedback that arrives before
its decision is held in the log and joined when the decision is read, or given up on
after `join_wait_s`), and (3) commits feedback offsets only once their outcome is stored
(a committed SQLite transaction, or an acknowledged dead letter). It talks to Kafka, the
store and the producer only through the Protocols below; assembly lives in
`feedback.runner`.

Reliability rules, the same as the pipeline's: at least once (a crash re-reads the
uncommitted tail; storing a label is idempotent, so a re-read changes nothing); poison is
dead-lettered with its reason; a store or broker failure crashes the consumer without
committing past it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import structlog

from feedback.decision_log import (
    DecisionLog,
    FeedbackStored,
    Judgement,
    LoggedDecision,
    decode_decision,
)
from feedback.metrics import LIVE_WINDOWS_S, FeedbackMetrics
from schemas.dead_letter import DeadLetter
from schemas.feedback import Feedback
from schemas.feedback_parse import FeedbackParseError, NotFeedback, parse_feedback
from schemas.group_map import GroupMap
from schemas.routing import Disposition, TriageReason
from schemas.taxonomy import Taxonomy
from worker.errors import FatalError, RecordTooLargeError, RetryableError
from worker.kafka_io import TP, ConsumerThreadOps, InboundRecord
from worker.offsets import OffsetTracker
from worker.pipeline import (
    H_DEAD_LETTER_ORIGINAL_BYTES,
    H_DEAD_LETTER_REASON,
    H_DEAD_LETTER_SHA256,
    H_SOURCE_OFFSET,
    H_SOURCE_PARTITION,
    H_SOURCE_TOPIC,
)
from worker.retrying import commit_retrying, publish_retrying

log = structlog.get_logger(__name__)
T = TypeVar("T")


class FeedbackSource(Protocol):
    """The feedback topic's consumer-group member (`worker.kafka_io.Source`)."""

    async def poll(self, *, max_records: int, timeout_s: float) -> list[InboundRecord]: ...

    async def commit(self, offsets: Mapping[TP, int]) -> None: ...


class DecisionSource(Protocol):
    """The reader of every routed and triage partition (`worker.kafka_io.Reader`)."""

    @property
    def caught_up(self) -> bool: ...

    async def poll(self, *, max_records: int, timeout_s: float) -> list[InboundRecord]: ...

    async def refresh(self) -> list[TP]: ...


class Publisher(Protocol):
    """Where dead letters go (`worker.kafka_io.Publisher`)."""

    async def publish(
        self, *, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[int, int]: ...


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    """The consumer's knobs (a projection of `worker.config.FeedbackSettings`).

    Attributes:
        join_wait_s: how long feedback waits for its decision once the decision log has
            caught up with the routed topics, before it counts as without a decision.
        max_held: most feedback held at once; beyond it the oldest is given up on.
        decision_retention_s: decisions older than this are pruned (None: kept).
    """

    join_wait_s: float = 600.0
    max_held: int = 100_000
    decision_retention_s: float | None = 90 * 86400.0
    commit_interval_s: float = 1.0
    poll_timeout_s: float = 0.05
    max_poll_records: int = 500
    max_decision_records: int = 2000
    gauge_interval_s: float = 5.0
    size_interval_s: float = 30.0
    refresh_interval_s: float = 60.0
    prune_interval_s: float = 3600.0
    publish_retry_max_s: float = 60.0


class _Every:
    """True at most once per `interval_s` (monotonic), the first time at once."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        return True


class FeedbackConsumer:
    """Joins feedback with decisions, at least once.

    Args:
        config: knobs.
        taxonomy: queues and topics.
        group_map: the tools' groups -> queues.
        store: the opened decision log (used from this consumer's own thread only).
        publisher: the started producer (dead letters).
        metrics: where the figures go.
        clock: wall-clock seconds (tests move it to expire held feedback).
    """

    def __init__(
        self,
        *,
        config: FeedbackConfig,
        taxonomy: Taxonomy,
        group_map: GroupMap,
        store: DecisionLog,
        publisher: Publisher,
        metrics: FeedbackMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.taxonomy = taxonomy
        self.group_map = group_map
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self.tracker = OffsetTracker()
        self._labels = taxonomy.labels
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decision-log")
        self._assigned: set[TP] = set()
        self._stopping = asyncio.Event()
        self._crashed = False
        self.heartbeat = time.monotonic()
        self.feedback_processed = 0
        self.decisions_processed = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def is_ready(self) -> bool:
        return bool(self._assigned) and not self._stopping.is_set()

    def stop(self) -> None:
        """Ask the consumer to commit what is stored and stop (safe from a signal handler)."""
        self._stopping.set()

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, lambda: fn(*args, **kwargs))

    async def positions(self) -> dict[TP, int]:
        """Where the decision log ends: the reader starts there."""
        return await self._db(self.store.positions)

    async def run(
        self,
        source: FeedbackSource,
        decisions: DecisionSource,
        *,
        stop_after: int | None = None,
    ) -> None:
        """Consume until `stop()` (or `stop_after` feedback records), then commit.

        Raises:
            FatalError: the store, the dead-letter topic or the broker failed; nothing was
                committed past the failure.
        """
        timers = {
            name: _Every(seconds)
            for name, seconds in (
                ("commit", self.config.commit_interval_s),
                ("gauges", self.config.gauge_interval_s),
                ("size", self.config.size_interval_s),
                ("refresh", self.config.refresh_interval_s),
                ("prune", self.config.prune_interval_s),
            )
        }
        try:
            while not self._stopping.is_set():
                self.heartbeat = time.monotonic()
                busy = await self._read_decisions(decisions)
                busy = await self._read_feedback(source, wait=not busy) or busy
                await self._housekeeping(source, decisions, timers)
                if stop_after is not None and self.feedback_processed >= stop_after:
                    self.stop()
        except BaseException:
            self._crashed = True
            raise
        finally:
            if not self._crashed:
                await self._commit(source)
            self._db_thread.shutdown(wait=True)
            log.info(
                "feedback_consumer_stopped",
                crashed=self._crashed,
                feedback=self.feedback_processed,
                decisions=self.decisions_processed,
            )

    async def _housekeeping(
        self, source: FeedbackSource, decisions: DecisionSource, timers: dict[str, _Every]
    ) -> None:
        if timers["commit"].due():
            await self._commit(source)
            if decisions.caught_up:
                await self._expire_held()
        if timers["gauges"].due():
            await self._update_gauges(decisions)
        if timers["size"].due():
            self.metrics.decision_log_size.set(await self._db(self.store.count_decisions))
        if timers["refresh"].due():
            await decisions.refresh()
        retention = self.config.decision_retention_s
        if retention is not None and timers["prune"].due():
            pruned = await self._db(
                self.store.prune_decisions, decided_before=self.clock() - retention
            )
            if pruned:
                log.info("decisions_pruned", decisions=pruned, retention_s=retention)

    # ------------------------------------------------------------------ decisions

    async def _read_decisions(self, decisions: DecisionSource) -> bool:
        """Store one batch of routed/triage records; True when a full batch was read."""
        cap = self.config.max_decision_records
        records = await decisions.poll(max_records=cap, timeout_s=0.0)
        if not records:
            return False
        judgements = await self._db(self._store_decisions, records)
        self.decisions_processed += len(records)
        for judgement in judgements:
            self.metrics.held_duration.observe(judgement.held_s)
            self._count_judgement(judgement)
        return len(records) >= cap

    def _store_decisions(self, records: list[InboundRecord]) -> list[Judgement]:
        logged: list[LoggedDecision] = []
        positions: dict[TP, int] = {}
        for record in records:
            positions[record.tp] = record.offset + 1
            try:
                decision = decode_decision(
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    value=record.value or b"",
                )
            except ValueError as exc:
                # Not the router's output (someone else wrote to a routed topic): skip it.
                self.metrics.decisions_unreadable.inc()
                log.warning(
                    "decision_unreadable",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    error=str(exc)[:300],
                )
                continue
            # A shadowed ticket's triage record repeats the decision its shadow record
            # carries (with what autoroute would have done): the log keeps the shadow one.
            if decision.triage_reason is not TriageReason.SHADOW_MODE:
                logged.append(decision)
        judgements = self.store.add_decisions(logged, positions, now=self.clock())
        self.metrics.decisions_logged.inc(len(logged))
        return judgements

    # ------------------------------------------------------------------ feedback

    async def _read_feedback(self, source: FeedbackSource, *, wait: bool) -> bool:
        timeout_s = self.config.poll_timeout_s if wait else 0.0
        records = await source.poll(max_records=self.config.max_poll_records, timeout_s=timeout_s)
        if not records:
            return False
        for record in records:
            self.tracker.started(record.tp, record.offset)
        parsed, poison = await self._db(self._parse, records)
        if poison:
            await asyncio.gather(*(self._dead_letter(record, exc) for record, exc in poison))
        stored = await self._db(self.store.add_feedback, parsed, now=self.clock())
        for outcome in stored:
            self._count_stored(outcome)
        for record in records:
            self.tracker.done(record.tp, record.offset)
        self.feedback_processed += len(records)
        return True

    def _parse(
        self, records: list[InboundRecord]
    ) -> tuple[list[Feedback], list[tuple[InboundRecord, FeedbackParseError]]]:
        parsed: list[Feedback] = []
        poison: list[tuple[InboundRecord, FeedbackParseError]] = []
        for record in records:
            try:
                result = parse_feedback(
                    record.value or b"", group_map=self.group_map, labels=self._labels
                )
            except FeedbackParseError as exc:
                source = exc.source.value if exc.source else "unknown"
                self.metrics.feedback_consumed.labels(source=source).inc()
                poison.append((record, exc))
                continue
            self.metrics.feedback_consumed.labels(source=result.source.value).inc()
            if isinstance(result, NotFeedback):
                self.metrics.feedback_skipped.labels(
                    source=result.source.value, reason=result.reason.value
                ).inc()
            else:
                parsed.append(result)
        return parsed, poison

    def _count_stored(self, stored: FeedbackStored) -> None:
        fb = stored.feedback
        self.metrics.feedback_events.labels(source=fb.source.value, outcome=fb.outcome.value).inc()
        if stored.judgement is not None:
            self._count_judgement(stored.judgement)

    def _count_judgement(self, judgement: Judgement) -> None:
        if not judgement.first:
            return  # a later event revises the stored label; counters judge once per ticket
        decision, feedback = judgement.decision, judgement.feedback
        delay_s = (feedback.occurred_at - decision.decided_at).total_seconds()
        self.metrics.feedback_delay.observe(max(0.0, delay_s))
        verdict = "confirmed" if judgement.correct else "reassigned"
        if decision.disposition is Disposition.ROUTED:
            self.metrics.verdicts.labels(
                queue=decision.queue or "none", model=decision.model_id, verdict=verdict
            ).inc()
        else:
            mode = _mode_judged(decision)
            if mode is not None:
                self.metrics.mode_verdicts.labels(
                    mode=mode,
                    queue=decision.queue or "none",
                    model=decision.model_id,
                    verdict=verdict,
                ).inc()
            guess = (
                "none" if judgement.correct is None else ("right" if judgement.correct else "wrong")
            )
            self.metrics.triage_outcomes.labels(queue=feedback.final_queue, guess=guess).inc()
        log.debug(
            "feedback_joined",
            ticket_id=feedback.ticket_id,
            queue=decision.queue,
            final_queue=feedback.final_queue,
            disposition=decision.disposition.value,
        )

    async def _expire_held(self) -> None:
        now = self.clock()
        expired = await self._db(
            self.store.expire_held,
            received_before=now - self.config.join_wait_s,
            max_held=self.config.max_held,
            now=now,
        )
        for feedback in expired:
            self.metrics.without_decision.labels(source=feedback.source.value).inc()
        if expired:
            log.info("feedback_without_decision", feedback=len(expired))

    async def _update_gauges(self, decisions: DecisionSource) -> None:
        now = self.clock()
        for window, seconds in LIVE_WINDOWS_S.items():
            stats = await self._db(self.store.window, judged_since=now - seconds)
            self.metrics.live_judged.labels(window=window).set(stats.routed)
            self.metrics.live_correct.labels(window=window).set(stats.routed_correct)
            ratio = stats.routed_correct / stats.routed if stats.routed else float("nan")
            self.metrics.live_accuracy.labels(window=window).set(ratio)
        self.metrics.held.set(await self._db(self.store.pending_count))
        self.metrics.decision_log_caught_up.set(1.0 if decisions.caught_up else 0.0)

    async def _dead_letter(self, record: InboundRecord, exc: FeedbackParseError) -> None:
        raw = record.value or b""
        letter = DeadLetter(
            raw=raw,
            raw_key=record.key,
            reason=exc.reason,
            error_type=type(exc).__name__,
            error=exc.message[:4000],
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            failed_at=datetime.now(UTC),
        )
        headers = [
            (H_SOURCE_TOPIC, record.topic.encode()),
            (H_SOURCE_PARTITION, str(record.partition).encode()),
            (H_SOURCE_OFFSET, str(record.offset).encode()),
            *letter.headers(),
            (H_DEAD_LETTER_REASON, exc.reason.value.encode()),
        ]
        topic = self.taxonomy.topics.feedback_dead_letter
        try:
            try:
                await self._publish(topic=topic, key=record.key, value=raw, headers=headers)
            except RecordTooLargeError:
                headers += [
                    (H_DEAD_LETTER_ORIGINAL_BYTES, str(len(raw)).encode()),
                    (H_DEAD_LETTER_SHA256, hashlib.sha256(raw).hexdigest().encode()),
                ]
                cut = raw[: len(raw) // 2]
                await self._publish(topic=topic, key=record.key, value=cut, headers=headers)
        except RetryableError as err:
            raise FatalError(f"feedback dead-letter publish failed: {err}") from err
        self.metrics.feedback_dead_lettered.labels(reason=exc.reason.value).inc()
        log.warning(
            "feedback_dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=exc.reason.value,
            error=exc.message[:500],
        )

    async def _publish(
        self, *, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        async for attempt in publish_retrying(
            self.metrics, max_delay_s=self.config.publish_retry_max_s
        ):
            with attempt:
                await self.publisher.publish(topic=topic, key=key, value=value, headers=headers)

    # ------------------------------------------------------------------ offsets

    async def _commit(self, source: FeedbackSource) -> None:
        offsets = self.tracker.committable(self._assigned)
        if not offsets:
            return
        self.tracker.check(offsets)
        try:
            async for attempt in commit_retrying(self.metrics):
                with attempt:
                    await source.commit(offsets)
        except RetryableError:
            self.metrics.commits.labels(result="failed").inc()
            log.error("offsets_commit_failed", partitions=len(offsets))
            return
        self.tracker.mark_committed(offsets)
        self.metrics.commits.labels(result="ok").inc()

    # ------------------------------------------------------------------ rebalance (consumer thread)

    def on_assigned(self, tps: list[TP]) -> None:
        self._assigned.update(tps)
        log.info("partitions_assigned", partitions=[f"{t}[{p}]" for t, p in tps])

    def on_revoked(self, tps: list[TP], ops: ConsumerThreadOps) -> dict[TP, int]:
        """Hand back the revoked partitions' committable offsets.

        Callbacks run inside `poll`, between batches: every record read so far is either
        stored or was part of a batch that crashed (then nothing is committed).
        """
        self._assigned.difference_update(tps)
        offsets = {} if self._crashed else self.tracker.committable(tps)
        if offsets:
            self.tracker.check(offsets)
        self.tracker.forget(tps)
        log.info(
            "partitions_revoked", partitions=[f"{t}[{p}]" for t, p in tps], committing=len(offsets)
        )
        return offsets

    def on_lost(self, tps: list[TP], ops: ConsumerThreadOps) -> None:
        self._assigned.difference_update(tps)
        self.tracker.forget(tps)
        log.warning("partitions_lost", partitions=[f"{t}[{p}]" for t, p in tps])


def _mode_judged(decision: LoggedDecision) -> str | None:
    """The mode whose decision a triaged ticket's feedback judges: "shadow" for a shadow
    decision autoroute would have routed, "recommend" for a suggestion; else None."""
    if decision.disposition is Disposition.SHADOW and decision.triage_reason is None:
        return "shadow"
    if decision.triage_reason is TriageReason.RECOMMEND_MODE:
        return "recommend"
    return None
