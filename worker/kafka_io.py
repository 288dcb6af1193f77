"""The only module that imports `confluent_kafka`: admin calls, the Source, the Reader and the
Publisher.

`Source` wraps a consumer whose every call runs on one dedicated thread (librdkafka's
consumer is blocking and not meant to be shared); rebalance callbacks run on that thread too.
`Publisher` wraps an idempotent producer whose delivery reports resolve asyncio futures.
`Reader` reads every partition of some topics outside any group, from positions its caller
stores (the feedback consumer's decision log). None of them decides anything about tickets:
that is `worker.pipeline`'s and `feedback.consumer`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from worker.errors import (
    BrokerUnreachableError,
    FatalError,
    RecordTooLargeError,
    RetryableError,
    TransactionAbortable,
)

log = structlog.get_logger(__name__)

TP = tuple[str, int]  # (topic, partition)
COOPERATIVE = "cooperative-sticky"


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One record read from the inbound topic, with everything needed to trace it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)


class ConsumerThreadOps(Protocol):
    """Consumer calls a rebalance callback may make (it already runs on the consumer thread)."""

    def group_metadata_now(self) -> object: ...

    def rewind_now(self, tps: Sequence[TP]) -> None: ...


class RebalanceListener(Protocol):
    """What the Source tells the pipeline about partition ownership (on the consumer thread)."""

    def on_assigned(self, tps: list[TP]) -> None: ...

    def on_revoked(self, tps: list[TP], ops: ConsumerThreadOps) -> dict[TP, int]:
        """Finish or give up the partitions' in-flight work; return offsets to commit."""
        ...

    def on_lost(self, tps: list[TP], ops: ConsumerThreadOps) -> None: ...


# ---------------------------------------------------------------------------- admin


def wait_for_broker(
    bootstrap: str, *, timeout_s: float = 30.0, conf: Mapping[str, str] | None = None
) -> None:
    """Block until a broker answers a metadata request.

    Raises:
        BrokerUnreachableError: nothing answered within `timeout_s`.
    """
    # Refused connections are expected while a broker starts: keep librdkafka quiet.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, **(conf or {})})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            last = exc
            time.sleep(0.1)
    raise BrokerUnreachableError(
        f"no Kafka broker answered at {bootstrap} within {timeout_s}s: {last}"
    )


def list_topics(bootstrap: str, *, conf: Mapping[str, str] | None = None) -> dict[str, int]:
    """Topic name -> partition count, as the cluster reports them."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(conf or {})})
    md = admin.list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in md.topics.items() if not t.error}


def create_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    topic_configs: Mapping[str, Mapping[str, str]] | None = None,
    conf: Mapping[str, str] | None = None,
) -> list[str]:
    """Create missing topics (with `topic_configs[name]` as topic configs); return them."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(conf or {})})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [t for t in topics if t not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=partitions,
                replication_factor=replication_factor,
                config=dict((topic_configs or {}).get(t, {})),
            )
            for t in wanted
        ],
        operation_timeout=10,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


# ---------------------------------------------------------------------------- consumer


def _to_record(msg: Message) -> InboundRecord:
    ts_type, ts = msg.timestamp()
    return InboundRecord(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value(),
        timestamp_ms=ts if ts_type != 0 and ts > 0 else None,
        headers=tuple((k, v or b"") for k, v in (msg.headers() or [])),
    )


class Source:
    """A consumer-group member reading its topics; all calls on a single thread.

    Args:
        conf: librdkafka consumer settings (group.id, bootstrap.servers, ...).
        topics: the topics to subscribe to (the worker: the inbound topic).
        listener: told of assignments, revocations and losses.
    """

    def __init__(
        self, *, conf: Mapping[str, str], topics: Sequence[str], listener: RebalanceListener
    ) -> None:
        self._conf = dict(conf)
        # The rebalance callbacks assign and revoke incrementally: an eager protocol would
        # make librdkafka refuse incremental_assign() inside the callback.
        strategy = self._conf.setdefault("partition.assignment.strategy", COOPERATIVE)
        if strategy != COOPERATIVE:
            raise ValueError(
                f"partition.assignment.strategy must be {COOPERATIVE!r} for a Source, "
                f"not {strategy!r}"
            )
        self._topics = list(topics)
        self._listener = listener
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consumer")
        self._consumer: Consumer | None = None
        self._fatal: BaseException | None = None
        self._paused = False

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def start(self) -> None:
        """Create the consumer and subscribe (the group join happens in later polls)."""
        await self._call(self._start)

    def _start(self) -> None:
        conf: dict[str, Any] = {**self._conf, "error_cb": self._on_error}
        self._consumer = Consumer(conf)
        self._consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = FatalError(f"consumer fatal error: {err.str()}")
        log.warning("kafka_consumer_error", error=err.str(), code=err.code())

    def _on_assign(self, c: Consumer, parts: list[TopicPartition]) -> None:
        # librdkafka keeps a partition's pause flag across a loss and a later re-assignment:
        # give every newly assigned partition the pause state the pipeline is in now.
        try:
            c.incremental_assign(parts)
            if self._paused:
                c.pause(parts)
            else:
                c.resume(parts)
        except KafkaException as exc:  # raised by the next poll, never lost in this callback
            self._fatal = FatalError(f"could not take the assigned partitions: {exc}")
            return
        self._listener.on_assigned([(p.topic, p.partition) for p in parts])

    def _on_revoke(self, c: Consumer, parts: list[TopicPartition]) -> None:
        offsets = self._listener.on_revoked([(p.topic, p.partition) for p in parts], self)
        if offsets:
            self._commit_now(offsets)

    def _on_lost(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        self._listener.on_lost([(p.topic, p.partition) for p in parts], self)

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("Source.start() was not awaited")
        return self._consumer

    async def poll(self, *, max_records: int, timeout_s: float) -> list[InboundRecord]:
        """Up to `max_records` records (0: only serve callbacks and keep membership alive)."""
        records: list[InboundRecord] = await self._call(self._poll, max_records, timeout_s)
        return records

    def _poll(self, max_records: int, timeout_s: float) -> list[InboundRecord]:
        if self._fatal is not None:
            raise self._fatal
        # poll() returns as soon as one record is there; consume(timeout=0) then takes what
        # is already fetched. consume(n, timeout) alone would wait for n records or timeout.
        first = self.consumer.poll(timeout_s)
        if first is not None and max_records <= 0 and first.error() is None:
            # Not wanted now (paused or at a transaction barrier): read it again later.
            self.consumer.seek(TopicPartition(first.topic(), first.partition(), first.offset()))
            return []
        msgs = [] if first is None else [first]
        if first is not None and max_records > 1:
            msgs += self.consumer.consume(num_messages=max_records - 1, timeout=0)
        out = []
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(_to_record(m))
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise FatalError(f"consumer fatal error: {err.str()}")
            else:
                log.warning("kafka_consume_error", error=err.str(), code=err.code())
        return out

    async def pause(self, tps: Sequence[TP]) -> None:
        await self._call(self._pause, list(tps))

    def _pause(self, tps: list[TP]) -> None:
        self._paused = True
        self.consumer.pause([TopicPartition(t, p) for t, p in tps])

    async def resume(self, positions: Mapping[TP, int]) -> None:
        """Resume partitions, first seeking each to `positions[tp]` when given.

        Seeking makes sure records that were prefetched while paused are not skipped.
        """
        await self._call(self._resume, dict(positions))

    def _resume(self, positions: dict[TP, int]) -> None:
        self._paused = False
        assigned = {(p.topic, p.partition) for p in self.consumer.assignment()}
        for (t, p), offset in positions.items():
            if (t, p) in assigned:
                try:
                    self.consumer.seek(TopicPartition(t, p, offset))
                except KafkaException as exc:  # not yet fetching: the position already holds
                    log.debug("seek_skipped", topic=t, partition=p, offset=offset, error=str(exc))
        self.consumer.resume([TopicPartition(t, p) for t, p in assigned])

    def group_metadata_now(self) -> object:
        """The group metadata a transaction commits offsets with (consumer thread only)."""
        return self.consumer.consumer_group_metadata()

    async def group_metadata(self) -> object:
        return await self._call(self.group_metadata_now)

    def rewind_now(self, tps: Sequence[TP]) -> None:
        """Seek partitions back to their committed offsets (consumer thread only).

        After an aborted transaction, records whose outputs were discarded are read again.
        """
        if not tps:
            return
        assigned = {(p.topic, p.partition) for p in self.consumer.assignment()}
        parts = self.consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
        for part in parts:
            if (part.topic, part.partition) not in assigned:
                continue
            offset = part.offset if part.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(part.topic, part.partition, offset))
        log.info("partitions_rewound", partitions=[f"{t}[{p}]" for t, p in tps])

    async def rewind(self, tps: Sequence[TP]) -> None:
        await self._call(self.rewind_now, list(tps))

    async def assignment(self) -> list[TP]:
        parts = await self._call(self.consumer.assignment)
        return [(p.topic, p.partition) for p in parts]

    async def commit(self, offsets: Mapping[TP, int]) -> None:
        """Commit `offsets` (next offset to read, per partition) synchronously.

        Raises:
            RetryableError: the commit failed in a way that may clear.
        """
        await self._call(self._commit_now, dict(offsets))

    def _commit_now(self, offsets: Mapping[TP, int]) -> None:
        if not offsets:
            return
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError._NO_OFFSET:
                return
            raise RetryableError(f"offset commit failed: {err.str()}") from exc

    async def committed(self, tps: Sequence[TP]) -> dict[TP, int]:
        parts = await self._call(
            lambda: self.consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
        )
        return {(p.topic, p.partition): p.offset for p in parts if p.offset != OFFSET_INVALID}

    async def lag(self) -> dict[TP, int]:
        """Per assigned partition: high watermark minus the consumer's position."""
        return dict(await self._call(self._lag))

    def _lag(self) -> dict[TP, int]:
        parts = self.consumer.assignment()
        if not parts:
            return {}
        positions = self.consumer.position(parts)
        out = {}
        for part in positions:
            try:
                low, high = self.consumer.get_watermark_offsets(part, timeout=2, cached=False)
            except KafkaException as exc:  # broker unreachable: skip this sample, not fatal
                log.debug(
                    "lag_unavailable", topic=part.topic, partition=part.partition, error=str(exc)
                )
                continue
            pos = part.offset if part.offset >= 0 else low
            out[(part.topic, part.partition)] = max(0, high - pos)
        return out

    async def close(self) -> None:
        """Leave the group (triggers a final revoke) and stop the thread."""
        if self._consumer is not None:
            await self._call(self._consumer.close)
        self._thread.shutdown(wait=True)


# ---------------------------------------------------------------------------- reader


class Reader:
    """A consumer of every partition of some topics, outside any consumer group.

    It commits nothing: the caller stores the position it reached with its own data (the
    feedback consumer's decision log) and starts from there. All calls run on one thread.

    Args:
        conf: librdkafka consumer settings (bootstrap.servers, security, ...).
        topics: the topics to read, every partition of each.
    """

    def __init__(self, *, conf: Mapping[str, str], topics: Sequence[str]) -> None:
        self._conf = {
            **conf,
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "enable.partition.eof": "true",
        }
        self._conf.setdefault("group.id", "ticket-router-reader")  # required, never joined
        self._topics = list(topics)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-reader")
        self._consumer: Consumer | None = None
        self._assigned: set[TP] = set()
        self._at_end: set[TP] = set()
        self._positions: dict[TP, int] = {}

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def start(self, positions: Mapping[TP, int]) -> list[TP]:
        """Assign every partition of the topics, each at `positions[tp]` (else the beginning).

        Returns:
            The partitions assigned (a topic that does not exist yet is picked up by
            `refresh`).
        """
        self._positions = dict(positions)
        await self._call(self._start)
        return await self.refresh()

    def _start(self) -> None:
        self._consumer = Consumer({**self._conf, "error_cb": self._on_error})

    def _on_error(self, err: KafkaError) -> None:
        log.warning("kafka_reader_error", error=err.str(), code=err.code())

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("Reader.start() was not awaited")
        return self._consumer

    async def refresh(self) -> list[TP]:
        """Assign partitions that appeared since the last call (new topics, added partitions)."""
        added: list[TP] = await self._call(self._refresh)
        return added

    def _refresh(self) -> list[TP]:
        found: list[TP] = []
        for topic in self._topics:
            md = self.consumer.list_topics(topic, timeout=10).topics.get(topic)
            if md is None or md.error is not None:
                continue
            found += [(topic, p) for p in md.partitions if (topic, p) not in self._assigned]
        if found:
            self.consumer.incremental_assign(
                [
                    TopicPartition(t, p, self._positions.get((t, p), OFFSET_BEGINNING))
                    for t, p in found
                ]
            )
            self._assigned.update(found)
            log.info("reader_partitions_assigned", partitions=len(found))
        return found

    @property
    def caught_up(self) -> bool:
        """True once every assigned partition has been read to its end at least once."""
        return bool(self._assigned) and self._at_end >= self._assigned

    async def poll(self, *, max_records: int, timeout_s: float) -> list[InboundRecord]:
        """Up to `max_records` records, as soon as one is there or after `timeout_s`."""
        records: list[InboundRecord] = await self._call(self._poll, max_records, timeout_s)
        return records

    def _poll(self, max_records: int, timeout_s: float) -> list[InboundRecord]:
        msgs = self.consumer.consume(num_messages=max_records, timeout=timeout_s)
        out = []
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(_to_record(m))
            elif err.code() == KafkaError._PARTITION_EOF:
                self._at_end.add((m.topic(), m.partition()))
            elif err.fatal():
                raise FatalError(f"reader fatal error: {err.str()}")
            else:
                log.warning("kafka_read_error", error=err.str(), code=err.code())
        return out

    async def close(self) -> None:
        """Close the consumer and stop the thread."""
        if self._consumer is not None:
            await self._call(self._consumer.close)
        self._thread.shutdown(wait=True)


# ---------------------------------------------------------------------------- producer


_RETRIABLE_PRODUCE = {
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError._TIMED_OUT,
}


def _delivery_error(topic: str, err: KafkaError) -> Exception:
    if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        return RecordTooLargeError(f"record too large for {topic}: {err.str()}")
    if err.retriable() or err.code() in _RETRIABLE_PRODUCE:
        return RetryableError(f"delivery to {topic} failed: {err.str()}")
    return FatalError(f"delivery to {topic} failed: {err.str()}")


class Publisher:
    """An idempotent producer whose `publish` returns when the broker acknowledged."""

    def __init__(self, *, conf: Mapping[str, str], poll_interval_s: float = 0.01) -> None:
        self._conf = dict(conf)
        self._poll_interval_s = poll_interval_s
        self._producer: Producer | None = None
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._producer = Producer({**self._conf, "error_cb": self._on_error})
        self._poller = asyncio.create_task(self._poll_forever(), name="producer-poll")

    def _on_error(self, err: KafkaError) -> None:
        log.warning("kafka_producer_error", error=err.str(), code=err.code())

    async def _poll_forever(self) -> None:
        assert self._producer is not None
        while True:
            self._producer.poll(0)  # serves delivery reports on this (the loop's) thread
            await asyncio.sleep(self._poll_interval_s)

    async def publish(
        self, *, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[int, int]:
        """Produce one record and wait for its delivery report.

        Returns:
            (partition, offset) the broker assigned.

        Raises:
            RetryableError: local queue full, or a retriable delivery error.
            FatalError: a delivery error that retrying cannot fix.
        """
        if self._producer is None:
            raise RuntimeError("Publisher.start() was not awaited")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, int]] = loop.create_future()

        def settle(result: tuple[int, int] | None, exc: Exception | None) -> None:
            if fut.done():
                return
            if exc is None:
                fut.set_result(result)  # type: ignore[arg-type]
            else:
                fut.set_exception(exc)

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            # Usually called on the loop's thread (poll), but commit_transaction/flush run
            # elsewhere and serve delivery reports there too.
            if err is None:
                loop.call_soon_threadsafe(settle, (msg.partition(), msg.offset()), None)
            else:
                loop.call_soon_threadsafe(settle, None, _delivery_error(topic, err))

        try:
            self._producer.produce(
                topic, value=value, key=key, headers=list(headers), on_delivery=on_delivery
            )
        except BufferError as exc:
            raise RetryableError("producer queue full", retry_after_s=0.05) from exc
        except KafkaException as exc:
            raise _delivery_error(topic, exc.args[0]) from exc
        return await fut

    # -- transactions (only with a `transactional.id` in the configuration) -------------

    async def init_transactions(self, *, timeout_s: float = 30.0) -> None:
        """Register the transactional id; fences any older producer that used it."""
        await asyncio.to_thread(self._txn_call, "init_transactions", timeout_s)

    def begin_transaction(self) -> None:
        self._txn_call("begin_transaction")

    def commit_transaction_now(
        self, offsets: Mapping[TP, int], group_metadata: object, *, timeout_s: float = 30.0
    ) -> None:
        """Commit the open transaction with `offsets` as the group's new positions (blocking).

        Raises:
            TransactionAbortable: the transaction must be aborted (then re-read its inputs).
            FatalError: this producer was fenced or the error cannot be recovered from.
        """
        if offsets:
            parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            self._txn_call("send_offsets_to_transaction", parts, group_metadata, timeout_s)
        self._txn_call("commit_transaction", timeout_s)

    async def commit_transaction(
        self, offsets: Mapping[TP, int], group_metadata: object, *, timeout_s: float = 30.0
    ) -> None:
        await asyncio.to_thread(
            self.commit_transaction_now, dict(offsets), group_metadata, timeout_s=timeout_s
        )

    def abort_transaction_now(self, *, timeout_s: float = 30.0) -> None:
        self._txn_call("abort_transaction", timeout_s)

    async def abort_transaction(self, *, timeout_s: float = 30.0) -> None:
        await asyncio.to_thread(self.abort_transaction_now, timeout_s=timeout_s)

    def _txn_call(self, name: str, *args: Any) -> None:
        if self._producer is None:
            raise RuntimeError("Publisher.start() was not awaited")
        deadline = time.monotonic() + 60
        while True:
            try:
                getattr(self._producer, name)(*args)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    raise FatalError(f"{name} failed (fenced or fatal): {err.str()}") from exc
                if err.txn_requires_abort():
                    raise TransactionAbortable(f"{name} failed: {err.str()}") from exc
                if err.retriable() and time.monotonic() < deadline:
                    log.warning("transaction_call_retried", call=name, error=err.str())
                    continue
                raise FatalError(f"{name} failed: {err.str()}") from exc

    async def flush(self, *, timeout_s: float) -> int:
        """Wait for outstanding deliveries; return how many are still undelivered."""
        if self._producer is None:
            return 0
        deadline = time.monotonic() + timeout_s
        while (remaining := len(self._producer)) and time.monotonic() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(0.01)
        return remaining

    async def close(self, *, timeout_s: float = 10.0) -> None:
        await self.flush(timeout_s=timeout_s)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        self._producer = None
