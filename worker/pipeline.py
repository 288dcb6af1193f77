"""The routing pipeline: consume -> parse -> infer -> publish -> mark done -> commit.

Owns the order of those steps, the in-flight bound, the commit watermark, rebalance and
shutdown behaviour. It talks to Kafka and the engine only through the small Protocols
below, so a unit test can drive it with in-memory fakes and an integration test with the
real broker and real vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from expert.serving import EngineFailure, Prediction
from schemas.dead_letter import DeadLetter
from schemas.parse import TicketParseError, parse_ticket
from schemas.routing import Disposition, RoutedTicket, RoutingDecision, TriageReason
from schemas.taxonomy import QueueMode, Taxonomy
from schemas.ticket import SourceSystem, Ticket
from worker.decide import effective_threshold
from worker.errors import FatalError, RecordTooLargeError, RetryableError, TransactionAbortable
from worker.kafka_io import TP, ConsumerThreadOps, InboundRecord
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.policy import Plan, Thresholds, modes_in_force, plan, thresholds_in_force
from worker.retrying import commit_retrying, publish_retrying
from worker.seams import Engine, Publisher, Source, VersionedPrediction
from worker.suggest import with_help

log = structlog.get_logger(__name__)

# Output headers: the model that decided, and the inbound record each output came from, so
# any consumer (and the chaos suite) can account for every inbound ticket.
H_MODEL = "router.model"
H_ADAPTER = "router.adapter"
H_TRACE = "router.trace-id"
H_SOURCE_TOPIC = "router.source.topic"
H_SOURCE_PARTITION = "router.source.partition"
H_SOURCE_OFFSET = "router.source.offset"
H_DISPOSITION = "router.disposition"
H_TRIAGE_REASON = "router.triage-reason"
H_DEAD_LETTER_REASON = "router.dead-letter.reason"
H_DEAD_LETTER_ORIGINAL_BYTES = "router.dead-letter.truncated-from-bytes"
H_DEAD_LETTER_SHA256 = "router.dead-letter.sha256"
H_TXN = "router.txn"  # exactly-once mode: the transaction that wrote the record


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The knobs the pipeline reads (a projection of `worker.config.Settings`)."""

    max_in_flight: int = 256
    # None: the expert card's threshold (chosen on validation data for a target precision),
    # else DEFAULT_CONFIDENCE_THRESHOLD. A value here (ROUTER_ROUTING__CONFIDENCE_THRESHOLD)
    # overrides the card.
    confidence_threshold: float | None = None
    # Per-queue modes over the taxonomy's (ROUTER_ROUTING__MODES).
    mode_overrides: Mapping[str, QueueMode] = field(default_factory=dict)
    deadline_s: float = 30.0
    commit_interval_s: float = 1.0
    shutdown_grace_s: float = 25.0
    revoke_grace_s: float = 10.0
    source_format: SourceSystem | None = None
    poll_timeout_s: float = 0.05
    max_poll_records: int = 500
    engine_attempts: int = 2
    publish_retry_max_s: float = 60.0
    exactly_once: bool = False
    transactional_id: str = ""
    transaction_max_s: float = 0.5
    transaction_max_tickets: int = 500


def _now() -> datetime:
    return datetime.now(UTC)


class Pipeline:
    """Routes every inbound record to exactly one output, at least once.

    Args:
        config: pipeline knobs.
        taxonomy: queues and topics.
        engine: the started inference engine.
        publisher: the started producer.
        metrics: where counters go.
    """

    def __init__(
        self,
        *,
        config: PipelineConfig,
        taxonomy: Taxonomy,
        engine: Engine,
        publisher: Publisher,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.taxonomy = taxonomy
        self.engine = engine
        self.publisher = publisher
        self.metrics = metrics
        self.tracker = OffsetTracker()
        self.modes = modes_in_force(taxonomy, config.mode_overrides)
        for queue, mode in self.modes.items():
            metrics.queue_mode.labels(queue=queue, mode=mode.value).set(1)
        self._assigned: set[TP] = set()
        self._tasks: dict[asyncio.Task[None], TP] = {}
        self._stopping = asyncio.Event()
        self._crash: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused = False
        self.heartbeat = time.monotonic()
        self.processed = 0
        # Exactly-once mode: the open transaction, named "<transactional id>:<boot>:<seq>".
        self._boot = uuid.uuid4().hex[:8]
        self._txn_seq = 0
        self._txn_open = False
        self._txn_started = 0.0
        self._txn_tickets = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def confidence_threshold(self) -> float:
        """Below it a ticket goes to triage (configured, else the expert card's, else 0.5)."""
        return effective_threshold(
            self.config.confidence_threshold, self.engine.recommended_threshold
        )

    @property
    def thresholds(self) -> Thresholds:
        """Each queue's triage threshold (configured: one for all; else the card's)."""
        return thresholds_in_force(
            self.config.confidence_threshold,
            self.engine.recommended_threshold,
            self.engine.recommended_queue_thresholds,
        )

    @property
    def is_ready(self) -> bool:
        return bool(self._assigned) and not self._stopping.is_set()

    def stop(self) -> None:
        """Ask the pipeline to drain and stop (safe to call from a signal handler)."""
        self._stopping.set()

    async def run(self, source: Source, *, stop_after: int | None = None) -> None:
        """Consume until `stop()` (or `stop_after` records finished), then drain.

        Raises:
            FatalError: or whatever unclassified error crashed a ticket; nothing more was
                committed after it.
        """
        self._loop = asyncio.get_running_loop()
        background = [
            asyncio.create_task(self._commit_loop(source), name="commit-loop"),
            asyncio.create_task(self._stats_loop(source), name="stats-loop"),
        ]
        try:
            await self._consume_loop(source, stop_after=stop_after)
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._drain(source)
        if self._crash is not None:
            raise self._crash

    async def _consume_loop(self, source: Source, *, stop_after: int | None) -> None:
        cfg = self.config
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            in_flight = len(self._tasks)
            barrier = self._transaction_due()
            if barrier and in_flight == 0:
                await self._end_transaction(source)
                barrier = False
            if not self._paused and (in_flight >= cfg.max_in_flight or barrier):
                await source.pause(sorted(self._assigned))
                self._paused = True
            elif self._paused and in_flight <= cfg.max_in_flight // 2 and not barrier:
                await source.resume(self.tracker.next_positions())
                self._paused = False
            capacity = (
                0 if self._paused else min(cfg.max_poll_records, cfg.max_in_flight - in_flight)
            )
            if cfg.exactly_once:  # a transaction holds at most transaction_max_tickets
                capacity = min(capacity, cfg.transaction_max_tickets - self._txn_tickets)
            records = await source.poll(max_records=capacity, timeout_s=cfg.poll_timeout_s)
            for record in records:
                self._start(record)
            if stop_after is not None and self.processed >= stop_after:
                self.stop()

    def _start(self, record: InboundRecord) -> None:
        if self.config.exactly_once and not self._txn_open:
            self.publisher.begin_transaction()
            self._txn_open, self._txn_started = True, time.monotonic()
            self._txn_seq += 1
        self._txn_tickets += 1
        self.metrics.messages_consumed.labels(topic=record.topic).inc()
        self.tracker.started(record.tp, record.offset)
        task = asyncio.create_task(
            self._handle(record), name=f"ticket-{record.partition}-{record.offset}"
        )
        self._tasks[task] = record.tp
        self.metrics.in_flight.set(len(self._tasks))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self.metrics.in_flight.set(len(self._tasks))
        if task.cancelled():
            return
        if (exc := task.exception()) is not None and self._crash is None:
            self._crash = exc
            self._stopping.set()

    async def _drain(self, source: Source) -> None:
        cfg = self.config
        log.info("shutdown_started", in_flight=len(self._tasks), crashed=self._crash is not None)
        if self._crash is None and self._tasks:
            await asyncio.wait(list(self._tasks), timeout=cfg.shutdown_grace_s)
        gave_up = bool(self._tasks)
        await self._cancel_all()
        undelivered = await self.publisher.flush(timeout_s=max(1.0, cfg.shutdown_grace_s))
        if self._crash is None and cfg.exactly_once and self._txn_open:
            if gave_up:  # a cancelled ticket may have produced: its offset is not committed
                await self.publisher.abort_transaction()
                self._transaction_closed(reason="shutdown grace expired")
            else:
                await self._end_transaction(source)
        elif self._crash is None and not cfg.exactly_once:
            await self._commit(source)
        log.info(
            "shutdown_completed",
            undelivered=undelivered,
            uncommitted_in_flight=self.tracker.in_flight(),
            processed=self.processed,
        )

    # ------------------------------------------------------------------ one ticket

    async def _handle(self, record: InboundRecord) -> None:
        with structlog.contextvars.bound_contextvars(
            topic=record.topic, partition=record.partition, offset=record.offset
        ):
            try:
                await self._route(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the one broad catch: unclassified means fatal
                log.critical(
                    "ticket_failed", error_type=type(exc).__name__, error=str(exc), exc_info=True
                )
                raise
        self.tracker.done(record.tp, record.offset)
        self.processed += 1

    async def _route(self, record: InboundRecord) -> None:
        received_at = _now()
        try:
            ticket = parse_ticket(record.value or b"", source_format=self.config.source_format)
        except TicketParseError as exc:
            await self._dead_letter(record, exc)
            return
        structlog.contextvars.bind_contextvars(ticket_id=ticket.id)
        # The version serving when the ticket is submitted (a deadline's triage names it).
        model_id, adapter_id = self.engine.model_id, self.engine.adapter_id
        prediction = await self._infer(ticket)
        decided_at = _now()
        reason: TriageReason | None
        chosen: Plan | None = None
        if prediction is None:
            decision = RoutingDecision(
                queue=None,
                confidence=0.0,
                model_id=model_id,
                adapter_id=adapter_id,
                engine_latency_s=self.config.deadline_s,
            )
            topic, disposition, reason = (
                self.taxonomy.topics.triage,
                Disposition.TRIAGE,
                TriageReason.DEADLINE_EXCEEDED,
            )
        else:
            thresholds = self.thresholds
            if isinstance(prediction, VersionedPrediction):
                model_id, adapter_id = prediction.model_id, prediction.adapter_id
                thresholds = thresholds_in_force(
                    self.config.confidence_threshold,
                    prediction.recommended_threshold,
                    prediction.recommended_queue_thresholds,
                )
            decision = RoutingDecision(
                queue=prediction.label,
                confidence=prediction.confidence,
                probabilities=prediction.probabilities,
                model_id=model_id,
                adapter_id=adapter_id,
                engine_latency_s=prediction.latency_s,
            )
            self.metrics.inference_duration.observe(prediction.latency_s)
            self.metrics.confidence.observe(prediction.confidence)
            chosen = plan(self.taxonomy, prediction, thresholds=thresholds, modes=self.modes)
            topic, disposition, reason = chosen.topic, chosen.disposition, chosen.reason
            decision = with_help(decision, prediction, disposition=disposition)
        routed = RoutedTicket(
            ticket=ticket,
            decision=decision,
            disposition=disposition,
            triage_reason=reason,
            mode=chosen.mode if chosen else None,
            topic=topic,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            enqueued_at=(
                datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
                if record.timestamp_ms
                else None
            ),
            received_at=received_at,
            decided_at=decided_at,
            published_at=_now(),
        )
        headers = self._headers(record, model_id=model_id, adapter_id=adapter_id) + [
            (H_DISPOSITION, disposition.value.encode())
        ]
        if reason is not None:
            headers.append((H_TRIAGE_REASON, reason.value.encode()))
        await self._publish(
            topic=topic,
            key=ticket.id.encode(),
            value=routed.model_dump_json().encode(),
            headers=headers,
        )
        if chosen is not None:
            await self._publish_shadow(routed, chosen, headers)
        self._observe_latency(record, disposition.value)
        if disposition is Disposition.ROUTED:
            self.metrics.tickets_routed.labels(queue=decision.queue).inc()
        else:
            assert reason is not None
            self.metrics.tickets_triaged.labels(reason=reason.value).inc()
        log.debug(
            "ticket_routed",
            queue=decision.queue,
            confidence=round(decision.confidence, 4),
            disposition=disposition.value,
            latency_s=round(decision.engine_latency_s, 4),
        )

    async def _publish_shadow(
        self, routed: RoutedTicket, chosen: Plan, headers: list[tuple[str, bytes]]
    ) -> None:
        """Count the decision by queue and mode; for a queue in shadow mode, publish what
        autoroute would have done to the shadow topic (after the desk's triage record)."""
        queue = routed.decision.queue or "none"
        outcome = chosen.reason.value if chosen.reason else "routed"
        self.metrics.queue_decisions.labels(
            queue=queue, mode=chosen.mode.value, outcome=outcome
        ).inc()
        if not chosen.shadow:
            return
        topic = self.taxonomy.topics.shadow
        shadow = routed.model_copy(
            update={
                "topic": topic,
                "disposition": Disposition.SHADOW,
                "triage_reason": chosen.shadow_reason,
            }
        )
        headers = [(k, v) for k, v in headers if k not in (H_DISPOSITION, H_TRIAGE_REASON)]
        headers.append((H_DISPOSITION, Disposition.SHADOW.value.encode()))
        await self._publish(
            topic=topic,
            key=routed.ticket.id.encode(),
            value=shadow.model_dump_json().encode(),
            headers=headers,
        )

    async def _infer(self, ticket: Ticket) -> Prediction | None:
        """The engine's answer, or None when the deadline passed first.

        Raises:
            FatalError: the engine failed `engine_attempts` times in a row.
        """
        for attempt in range(1, self.config.engine_attempts + 1):
            try:
                async with asyncio.timeout(self.config.deadline_s):
                    return await self.engine.classify(ticket, request_id=uuid.uuid4().hex)
            except TimeoutError:
                log.warning("ticket_deadline_exceeded", deadline_s=self.config.deadline_s)
                return None
            except EngineFailure as exc:
                self.metrics.retries.labels(operation="infer").inc()
                log.error("engine_failed", attempt=attempt, error=str(exc))
                last = exc
        raise FatalError(
            f"inference engine failed {self.config.engine_attempts} times: {last}"
        ) from last

    async def _dead_letter(self, record: InboundRecord, exc: TicketParseError) -> None:
        letter = DeadLetter(
            raw=record.value or b"",
            raw_key=record.key,
            reason=exc.reason,
            error_type=type(exc).__name__,
            error=str(exc)[:4000],
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            failed_at=_now(),
        )
        # The value is the raw payload, byte-exact, as Kafka Connect's dead-letter queue
        # does; the reason travels in headers.
        headers = [
            *self._headers(record),
            *letter.headers(),
            (H_DEAD_LETTER_REASON, exc.reason.value.encode()),
        ]
        raw = record.value or b""
        topic = self.taxonomy.topics.dead_letter
        try:
            try:
                await self._publish(topic=topic, key=record.key, value=raw, headers=headers)
            except RecordTooLargeError:
                # The cluster refuses the copy (the inbound limit was larger than the
                # dead-letter topic's): keep the head, its size and digest, never crash-loop.
                cut = raw[: len(raw) // 2]
                headers += [
                    (H_DEAD_LETTER_ORIGINAL_BYTES, str(len(raw)).encode()),
                    (H_DEAD_LETTER_SHA256, hashlib.sha256(raw).hexdigest().encode()),
                ]
                await self._publish(topic=topic, key=record.key, value=cut, headers=headers)
        except RetryableError as err:
            raise FatalError(f"dead-letter publish failed: {err}") from err
        self.metrics.tickets_dead_lettered.labels(reason=exc.reason.value).inc()
        self._observe_latency(record, "dead_letter")
        log.warning("ticket_dead_lettered", reason=exc.reason.value, error=str(exc)[:500])

    def _headers(
        self, record: InboundRecord, *, model_id: str | None = None, adapter_id: str | None = None
    ) -> list[tuple[str, bytes]]:
        """Output headers; the model that decided (default: the one serving now)."""
        trace = next((v for k, v in record.headers if k in ("traceparent", H_TRACE)), None)
        txn = [(H_TXN, self._txn_name.encode())] if self.config.exactly_once else []
        if model_id is None:
            model_id, adapter_id = self.engine.model_id, self.engine.adapter_id
        return txn + [
            (H_MODEL, model_id.encode()),
            (H_ADAPTER, (adapter_id or "").encode()),
            (H_TRACE, trace or uuid.uuid4().hex.encode()),
            (H_SOURCE_TOPIC, record.topic.encode()),
            (H_SOURCE_PARTITION, str(record.partition).encode()),
            (H_SOURCE_OFFSET, str(record.offset).encode()),
        ]

    async def _publish(
        self, *, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        if self.config.exactly_once:
            # Inside a transaction a failed delivery dooms the transaction: crash, and the
            # restart's fencing aborts it; publishing again would not help.
            await self.publisher.publish(topic=topic, key=key, value=value, headers=headers)
            return
        async for attempt in publish_retrying(
            self.metrics, max_delay_s=self.config.publish_retry_max_s
        ):
            with attempt:
                await self.publisher.publish(topic=topic, key=key, value=value, headers=headers)

    def _observe_latency(self, record: InboundRecord, disposition: str) -> None:
        if record.timestamp_ms:
            latency_s = max(0.0, time.time() - record.timestamp_ms / 1000)
            self.metrics.end_to_end_latency.labels(disposition=disposition).observe(latency_s)

    # ------------------------------------------------------------------ offsets

    async def _commit(self, source: Source, tps: Sequence[TP] | None = None) -> None:
        offsets = self.tracker.committable(self._assigned if tps is None else tps)
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
        for (t, p), offset in offsets.items():
            self.metrics.committed_offset.labels(topic=t, partition=str(p)).set(offset)

    async def _commit_loop(self, source: Source) -> None:
        while True:
            await asyncio.sleep(self.config.commit_interval_s)
            if self._crash is None and not self.config.exactly_once:
                await self._commit(source)

    async def _stats_loop(self, source: Source) -> None:
        tick = 0
        while True:
            running, waiting = self.engine.load()
            self.metrics.engine_running.set(running)
            self.metrics.engine_waiting.set(waiting)
            if tick % 5 == 0 and self._assigned:
                for (t, p), lag in (await source.lag()).items():
                    self.metrics.consumer_lag.labels(topic=t, partition=str(p)).set(lag)
            tick += 1
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ transactions

    @property
    def _txn_name(self) -> str:
        return f"{self.config.transactional_id}:{self._boot}:{self._txn_seq}"

    def _transaction_due(self) -> bool:
        cfg = self.config
        if not (cfg.exactly_once and self._txn_open and self._txn_tickets):
            return False
        return (
            self._txn_tickets >= cfg.transaction_max_tickets
            or time.monotonic() - self._txn_started >= cfg.transaction_max_s
        )

    async def _end_transaction(self, source: Source) -> None:
        """Commit the open transaction with the inputs' offsets (every ticket is done)."""
        offsets = self.tracker.committable(self._assigned)
        self.tracker.check(offsets)
        try:
            await self.publisher.commit_transaction(offsets, await source.group_metadata())
        except TransactionAbortable as exc:
            await self.publisher.abort_transaction()
            retained = sorted(self._assigned)
            await source.rewind(retained)
            self.tracker.forget(retained)
            self._transaction_closed(reason=str(exc))
            return
        self._transaction_committed(offsets)

    def _transaction_committed(self, offsets: dict[TP, int]) -> None:
        self.tracker.mark_committed(offsets)
        self.metrics.commits.labels(result="ok").inc()
        for (t, p), offset in offsets.items():
            self.metrics.committed_offset.labels(topic=t, partition=str(p)).set(offset)
        log.info(
            "transaction_committed",
            txn=self._txn_name,
            tickets=self._txn_tickets,
            offsets={f"{t}[{p}]": o for (t, p), o in offsets.items()},
        )
        self._txn_open, self._txn_tickets = False, 0

    def _transaction_closed(self, *, reason: str) -> None:
        log.warning(
            "transaction_aborted",
            txn=self._txn_name,
            tickets=self._txn_tickets,
            reason=reason[:300],
        )
        self.metrics.commits.labels(result="aborted").inc()
        self._txn_open, self._txn_tickets = False, 0

    def _revoke_in_transaction(self, tps: list[TP], ops: ConsumerThreadOps, idle: bool) -> None:
        """Exactly-once revoke: commit the open transaction, or abort it and rewind the rest."""
        if not self._txn_open:
            return
        retained = sorted(self._assigned)
        if idle:
            offsets = self.tracker.committable([*self._assigned, *tps])
            self.tracker.check(offsets)
            try:
                self.publisher.commit_transaction_now(offsets, ops.group_metadata_now())
                self._transaction_committed(offsets)
                return
            except TransactionAbortable as exc:
                reason = str(exc)
        else:
            reason = "in-flight tickets did not finish before the revoke"
            self._cancel_all_from_thread()
        self.publisher.abort_transaction_now()
        ops.rewind_now(retained)
        self.tracker.forget(retained)
        self._transaction_closed(reason=reason)

    async def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def _cancel_all_from_thread(self) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop).result(timeout=30)

    # ------------------------------------------------------------------ rebalance (consumer thread)

    def on_assigned(self, tps: list[TP]) -> None:
        self._assigned.update(tps)
        self.metrics.assigned_partitions.set(len(self._assigned))
        log.info("partitions_assigned", partitions=[f"{t}[{p}]" for t, p in tps])

    def on_revoked(self, tps: list[TP], ops: ConsumerThreadOps) -> dict[TP, int]:
        """Wait (bounded) for the partitions' in-flight tickets, then hand back their offsets.

        In exactly-once mode the open transaction spans every partition: wait for all
        in-flight tickets, then commit it (offsets included), or abort it and rewind the rest.
        """
        self._assigned.difference_update(tps)
        self.metrics.assigned_partitions.set(len(self._assigned))
        offsets: dict[TP, int] = {}
        if self._crash is None and self._loop is not None:
            eos = self.config.exactly_once
            fut = asyncio.run_coroutine_threadsafe(
                self._wait_idle(None if eos else set(tps)), self._loop
            )
            try:
                idle = fut.result(timeout=self.config.revoke_grace_s + 1)
            except TimeoutError:
                idle = False
                log.warning("revoke_wait_timed_out", partitions=len(tps))
            if eos:
                self._revoke_in_transaction(tps, ops, idle)
            else:
                offsets = self.tracker.committable(tps)
                self.tracker.check(offsets)
        self.tracker.forget(tps)
        log.info(
            "partitions_revoked", partitions=[f"{t}[{p}]" for t, p in tps], committing=len(offsets)
        )
        return offsets

    def on_lost(self, tps: list[TP], ops: ConsumerThreadOps) -> None:
        self._assigned.difference_update(tps)
        self.metrics.assigned_partitions.set(len(self._assigned))
        if self.config.exactly_once and self._txn_open:
            # Outputs of lost partitions must not commit: abort, re-read what remains ours.
            self._cancel_all_from_thread()
            self.publisher.abort_transaction_now()
            retained = sorted(self._assigned)
            ops.rewind_now(retained)
            self.tracker.forget(retained)
            self._transaction_closed(reason="partitions lost")
        self.tracker.forget(tps)
        log.warning("partitions_lost", partitions=[f"{t}[{p}]" for t, p in tps])

    async def _wait_idle(self, tps: set[TP] | None) -> bool:
        """Wait for the in-flight tickets of `tps` (all when None); True when none is left."""
        pending = [task for task, tp in self._tasks.items() if tps is None or tp in tps]
        if pending:
            _done, left = await asyncio.wait(pending, timeout=self.config.revoke_grace_s)
            return not left
        return True
