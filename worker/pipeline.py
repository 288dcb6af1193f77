"""The routing pipeline: consume -> parse -> infer -> publish -> mark done -> commit.

Owns the order of those steps, the in-flight bound, the commit watermark, rebalance and
shutdown behaviour. It talks to Kafka and the engine only through the small Protocols
below, so a unit test can drive it with in-memory fakes and an integration test with the
real broker and real vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import structlog

from expert.engine import EngineFailure, Prediction
from schemas.dead_letter import DeadLetter
from schemas.parse import TicketParseError, parse_ticket
from schemas.routing import Disposition, RoutedTicket, RoutingDecision, TriageReason
from schemas.taxonomy import Taxonomy
from schemas.ticket import SourceSystem, Ticket
from worker.errors import FatalError, RetryableError
from worker.kafka_io import TP, InboundRecord
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.retrying import commit_retrying, publish_retrying

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


class Engine(Protocol):
    """What the pipeline needs from the inference engine."""

    @property
    def model_id(self) -> str: ...

    @property
    def adapter_id(self) -> str | None: ...

    async def classify(self, text: str, *, request_id: str) -> Prediction: ...

    def load(self) -> tuple[int, int]: ...


class Source(Protocol):
    """What the pipeline needs from the inbound consumer."""

    async def poll(self, *, max_records: int, timeout_s: float) -> list[InboundRecord]: ...

    async def pause(self, tps: Sequence[TP]) -> None: ...

    async def resume(self, positions: Mapping[TP, int]) -> None: ...

    async def commit(self, offsets: Mapping[TP, int]) -> None: ...

    async def lag(self) -> dict[TP, int]: ...


class Publisher(Protocol):
    """What the pipeline needs from the producer."""

    async def publish(
        self, *, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[int, int]: ...

    async def flush(self, *, timeout_s: float) -> int: ...


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The knobs the pipeline reads (a projection of `worker.config.Settings`)."""

    max_in_flight: int = 256
    confidence_threshold: float = 0.5
    deadline_s: float = 30.0
    commit_interval_s: float = 1.0
    shutdown_grace_s: float = 25.0
    revoke_grace_s: float = 10.0
    source_format: SourceSystem | None = None
    poll_timeout_s: float = 0.05
    max_poll_records: int = 500
    engine_attempts: int = 2
    publish_retry_max_s: float = 60.0


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
        self._assigned: set[TP] = set()
        self._tasks: dict[asyncio.Task[None], TP] = {}
        self._stopping = asyncio.Event()
        self._crash: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused = False
        self.heartbeat = time.monotonic()
        self.processed = 0

    # ------------------------------------------------------------------ lifecycle

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
            if not self._paused and in_flight >= cfg.max_in_flight:
                await source.pause(sorted(self._assigned))
                self._paused = True
            elif self._paused and in_flight <= cfg.max_in_flight // 2:
                await source.resume(self.tracker.next_positions())
                self._paused = False
            capacity = (
                0 if self._paused else min(cfg.max_poll_records, cfg.max_in_flight - in_flight)
            )
            records = await source.poll(max_records=capacity, timeout_s=cfg.poll_timeout_s)
            for record in records:
                self._start(record)
            if stop_after is not None and self.processed >= stop_after:
                self.stop()

    def _start(self, record: InboundRecord) -> None:
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
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        undelivered = await self.publisher.flush(timeout_s=max(1.0, cfg.shutdown_grace_s))
        if self._crash is None:
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
        prediction = await self._infer(ticket)
        decided_at = _now()
        if prediction is None:
            decision = RoutingDecision(
                queue=None,
                confidence=0.0,
                model_id=self.engine.model_id,
                adapter_id=self.engine.adapter_id,
                engine_latency_s=self.config.deadline_s,
            )
            topic, disposition, reason = (
                self.taxonomy.topics.triage,
                Disposition.TRIAGE,
                TriageReason.DEADLINE_EXCEEDED,
            )
        else:
            decision = RoutingDecision(
                queue=prediction.label,
                confidence=prediction.confidence,
                probabilities=prediction.probabilities,
                model_id=self.engine.model_id,
                adapter_id=self.engine.adapter_id,
                engine_latency_s=prediction.latency_s,
            )
            self.metrics.inference_duration.observe(prediction.latency_s)
            self.metrics.confidence.observe(prediction.confidence)
            if prediction.confidence < self.config.confidence_threshold:
                topic, disposition, reason = (
                    self.taxonomy.topics.triage,
                    Disposition.TRIAGE,
                    TriageReason.LOW_CONFIDENCE,
                )
            else:
                topic, disposition, reason = (
                    self.taxonomy.topic_for(prediction.label),
                    Disposition.ROUTED,
                    None,
                )
        routed = RoutedTicket(
            ticket=ticket,
            decision=decision,
            disposition=disposition,
            triage_reason=reason,
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
        headers = self._headers(record) + [(H_DISPOSITION, disposition.value.encode())]
        if reason is not None:
            headers.append((H_TRIAGE_REASON, reason.value.encode()))
        await self._publish(
            topic=topic,
            key=ticket.id.encode(),
            value=routed.model_dump_json().encode(),
            headers=headers,
        )
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

    async def _infer(self, ticket: Ticket) -> Prediction | None:
        """The engine's answer, or None when the deadline passed first.

        Raises:
            FatalError: the engine failed `engine_attempts` times in a row.
        """
        for attempt in range(1, self.config.engine_attempts + 1):
            try:
                async with asyncio.timeout(self.config.deadline_s):
                    return await self.engine.classify(ticket.text(), request_id=uuid.uuid4().hex)
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
        # The value is the raw payload, byte-exact, as Kafka Connect's dead-letter queue does;
        # the reason travels in headers (and the JSON envelope is one header for tooling).
        headers = (
            self._headers(record)
            + letter.headers()
            + [
                ("router.dead-letter.reason", exc.reason.value.encode()),
            ]
        )
        try:
            await self._publish(
                topic=self.taxonomy.topics.dead_letter,
                key=record.key,
                value=record.value or b"",
                headers=headers,
            )
        except RetryableError as err:
            raise FatalError(f"dead-letter publish failed: {err}") from err
        self.metrics.tickets_dead_lettered.labels(reason=exc.reason.value).inc()
        self._observe_latency(record, "dead_letter")
        log.warning("ticket_dead_lettered", reason=exc.reason.value, error=str(exc)[:500])

    def _headers(self, record: InboundRecord) -> list[tuple[str, bytes]]:
        trace = next((v for k, v in record.headers if k in ("traceparent", H_TRACE)), None)
        return [
            (H_MODEL, self.engine.model_id.encode()),
            (H_ADAPTER, (self.engine.adapter_id or "").encode()),
            (H_TRACE, trace or uuid.uuid4().hex.encode()),
            (H_SOURCE_TOPIC, record.topic.encode()),
            (H_SOURCE_PARTITION, str(record.partition).encode()),
            (H_SOURCE_OFFSET, str(record.offset).encode()),
        ]

    async def _publish(
        self, *, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
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
            if self._crash is None:
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

    # ------------------------------------------------------------------ rebalance (consumer thread)

    def on_assigned(self, tps: list[TP]) -> None:
        self._assigned.update(tps)
        self.metrics.assigned_partitions.set(len(self._assigned))
        log.info("partitions_assigned", partitions=[f"{t}[{p}]" for t, p in tps])

    def on_revoked(self, tps: list[TP]) -> dict[TP, int]:
        """Wait (bounded) for the partitions' in-flight tickets, then hand back their offsets."""
        self._assigned.difference_update(tps)
        self.metrics.assigned_partitions.set(len(self._assigned))
        offsets: dict[TP, int] = {}
        if self._crash is None and self._loop is not None:
            fut = asyncio.run_coroutine_threadsafe(self._wait_idle(set(tps)), self._loop)
            try:
                fut.result(timeout=self.config.revoke_grace_s + 1)
            except TimeoutError:
                log.warning("revoke_wait_timed_out", partitions=len(tps))
            offsets = self.tracker.committable(tps)
            self.tracker.check(offsets)
        self.tracker.forget(tps)
        log.info(
            "partitions_revoked", partitions=[f"{t}[{p}]" for t, p in tps], committing=len(offsets)
        )
        return offsets

    def on_lost(self, tps: list[TP]) -> None:
        self._assigned.difference_update(tps)
        self.metrics.assigned_partitions.set(len(self._assigned))
        self.tracker.forget(tps)
        log.warning("partitions_lost", partitions=[f"{t}[{p}]" for t, p in tps])

    async def _wait_idle(self, tps: set[TP]) -> None:
        pending = [task for task, tp in self._tasks.items() if tp in tps]
        if pending:
            await asyncio.wait(pending, timeout=self.config.revoke_grace_s)
