"""Reading a run's outputs from Kafka, and how long to keep reading.

Owns the Kafka edge of measuring a run: `OutputCollector` (a consumer group of its own reads
the routed, triage and dead-letter topics from the beginning, read_committed, and never
commits), `RouterOffsets` (where the router's consumer group has committed on the inbound
topic: read-only, it never joins that group), and the stop rule (`WaitPolicy`,
`ProgressWatch`, pure): keep reading while the router makes progress (new outputs, or its
committed offsets passing more of the manifest), never for a fixed time. It decides nothing
about the tickets: `bench.collect.account` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bench.collect import Observation, parse_output, unrouted_count
from loadgen.replay import ManifestRow

# --- when to stop reading (pure) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WaitPolicy:
    """When the collector stops reading.

    Attributes:
        stall_s: stop once, for this long, no new output arrived AND the router's group did
            not commit past more of the manifest. The default is twice the router's default
            routing deadline (30 s): a live router with tickets in flight publishes at least
            a triage record within its deadline, so a longer silence means it stopped.
        max_wait_s: overall cap on the wait; None waits as long as the router progresses.
        settle_s: after the final snapshot of the router's committed offsets, how long to
            keep reading for outputs of tickets below it (they exist: the router commits
            only after an output is acknowledged; reading them may lag).
        check_every_s: how often the router's committed offsets are read.
    """

    stall_s: float = 60.0
    max_wait_s: float | None = None
    settle_s: float = 30.0
    check_every_s: float = 2.0


class StopReason(StrEnum):
    """Why the collector stopped waiting for the router."""

    COMPLETE = "complete"  # every sent ticket has an output
    STALLED = "stalled"  # no new output and no commit progress for `stall_s`
    CAPPED = "capped"  # `max_wait_s` reached while the router was still progressing
    INTERRUPTED = "interrupted"  # the user asked to stop
    ROUTER_EXITED = "router_exited"  # the router process ended


@dataclass(slots=True)
class ProgressWatch:
    """Tracks the router's progress and says when to stop waiting (pure: the caller's clock).

    Progress is a new answered ticket, or fewer tickets the router has not committed past
    (its consumer-group lag on the manifest shrinking).
    """

    policy: WaitPolicy
    started_at: float
    last_progress_at: float = 0.0
    answered: int = 0
    unrouted: int | None = None

    def __post_init__(self) -> None:
        self.last_progress_at = self.started_at

    def observe(self, now: float, *, answered: int, unrouted: int | None) -> bool:
        """Record a reading; True when it shows progress since the last one."""
        progressed = answered > self.answered or (
            unrouted is not None and self.unrouted is not None and unrouted < self.unrouted
        )
        self.answered = max(self.answered, answered)
        if unrouted is not None:
            self.unrouted = unrouted if self.unrouted is None else min(self.unrouted, unrouted)
        if progressed:
            self.last_progress_at = now
        return progressed

    def verdict(self, now: float, *, complete: bool) -> StopReason | None:
        """Why to stop now, or None to keep reading."""
        if complete:
            return StopReason.COMPLETE
        cap = self.policy.max_wait_s
        if cap is not None and now - self.started_at >= cap:
            return StopReason.CAPPED
        if now - self.last_progress_at >= self.policy.stall_s:
            return StopReason.STALLED
        return None


@dataclass(frozen=True, slots=True)
class WaitStatus:
    """What `wait_for_router` reports while it waits (for progress lines)."""

    waited_s: float
    answered: int
    expected: int | None
    unrouted: int | None
    since_progress_s: float


# --- the Kafka edge ----------------------------------------------------------------------


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


def _consumer_config(bootstrap: str, group_id: str, extra: Mapping[str, str]) -> dict[str, Any]:
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


class OutputCollector:
    """Reads every output record from the beginning with its own consumer group.

    The group never commits; its id must be used by no one else. Constructing does no I/O:
    use it as a context manager (or `open()` / `close()`).

    Args:
        bootstrap: Kafka bootstrap servers.
        topics: the routed, triage and dead-letter topics.
        group_id: a group id no one else uses.
        expected_ids: the manifest's ticket ids; None when unknown.
        extra: librdkafka settings merged over the defaults.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: OutputTopics,
        *,
        group_id: str,
        expected_ids: Collection[str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self._config = _consumer_config(bootstrap, group_id, extra or {})
        self.topics = topics
        self.expected = len(expected_ids) if expected_ids is not None else None
        self.pending: set[str] | None = set(expected_ids) if expected_ids is not None else None
        self.seen: set[str] = set()
        self.observations: list[Observation] = []
        self.last_record_at = time.monotonic()
        self._at_eof: set[tuple[str, int]] = set()
        self._consumer: Any = None

    def open(self) -> None:
        """Create the consumer and subscribe."""
        from confluent_kafka import Consumer

        self._consumer = Consumer(self._config)
        self._consumer.subscribe(self.topics.all)

    def close(self) -> None:
        """Close the consumer (idempotent)."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> OutputCollector:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def answered(self) -> int:
        """Expected tickets seen so far (0 when none are expected)."""
        if self.expected is None or self.pending is None:
            return len(self.seen)
        return self.expected - len(self.pending)

    def is_assigned(self) -> bool:
        """The consumer owns partitions (its group join is done)."""
        return bool(self._consumer.assignment())

    def caught_up(self) -> bool:
        """Every assigned partition has reached its end since its last record."""
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        return bool(assigned) and assigned <= self._at_eof

    def read(self, duration_s: float) -> int:
        """Read for up to `duration_s`; return how many output records were read."""
        from confluent_kafka import KafkaError, KafkaException

        deadline = time.monotonic() + duration_s
        n = 0
        while (remaining := deadline - time.monotonic()) > 0:
            for msg in self._consumer.consume(num_messages=1000, timeout=min(remaining, 0.2)):
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        self._at_eof.add((topic, partition))
                        continue
                    if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        continue  # a topic the router has not created yet
                    raise KafkaException(err)
                self._at_eof.discard((topic, partition))
                self.last_record_at = time.monotonic()
                ts_type, ts_ms = msg.timestamp()
                obs = parse_output(
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    value=msg.value(),
                    record_ts=ts_ms / 1000 if ts_type != 0 and ts_ms >= 0 else None,
                    consumed_at=time.time(),
                    dead_letter_topic=self.topics.dead_letter,
                )
                self.observations.append(obs)
                n += 1
                if obs.ticket_id is not None:
                    self.seen.add(obs.ticket_id)
                    if self.pending is not None:
                        self.pending.discard(obs.ticket_id)
        return n

    def is_complete(self, *, quiet_s: float = 5.0) -> bool:
        """Every expected ticket seen, and the partitions read to their end (or quiet)."""
        if self.pending is None or self.pending:
            return False
        return self.caught_up() or time.monotonic() - self.last_record_at >= quiet_s


class RouterOffsets:
    """Reads a router group's committed offsets on the inbound topic, read-only.

    Asks the group coordinator (OffsetFetch) without joining the group, with
    read_uncommitted so that an open transaction does not hold the answer back (KIP-447).
    Constructing does no I/O: use it as a context manager.

    Args:
        bootstrap: Kafka bootstrap servers.
        group_id: the router's consumer group.
        topic: the inbound topic.
        partitions: the inbound partitions of interest.
        extra: librdkafka settings merged over the defaults.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        group_id: str,
        topic: str,
        partitions: Iterable[int],
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
            **(extra or {}),
        }
        self.topic = topic
        self.partitions = sorted(set(partitions))
        self._consumer: Any = None

    def __enter__(self) -> RouterOffsets:
        from confluent_kafka import Consumer

        self._consumer = Consumer(self._config)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def read(self, *, timeout_s: float = 10.0) -> dict[int, int]:
        """Partition -> committed offset, for the partitions that have one."""
        from confluent_kafka import TopicPartition

        if not self.partitions:
            return {}
        parts = self._consumer.committed(
            [TopicPartition(self.topic, p) for p in self.partitions], timeout=timeout_s
        )
        return {p.partition: p.offset for p in parts if p.offset >= 0}


def wait_for_router(
    collector: OutputCollector,
    *,
    policy: WaitPolicy,
    manifest: Sequence[ManifestRow] = (),
    offsets: RouterOffsets | None = None,
    should_stop: Callable[[], StopReason | None] | None = None,
    on_status: Callable[[WaitStatus], None] | None = None,
    status_every_s: float = 15.0,
) -> StopReason:
    """Read outputs for as long as the router makes progress (see `WaitPolicy`).

    Args:
        collector: an open collector.
        policy: stall window, cap and check interval.
        manifest: what was sent (for the router's lag on it).
        offsets: the router group's committed offsets; None: progress is new outputs only.
        should_stop: checked every half second; a reason ends the wait (user interrupt,
            router process gone).
        on_status: called every `status_every_s` and once at the end.
        status_every_s: interval of `on_status`.
    """
    started = time.monotonic()
    watch = ProgressWatch(policy, started_at=started)
    next_check = next_status = started
    unrouted: int | None = None
    while True:
        read = collector.read(0.5)
        now = time.monotonic()
        if offsets is not None and now >= next_check:
            unrouted = unrouted_count(manifest, offsets.read())
            next_check = now + policy.check_every_s
        watch.observe(now, answered=collector.answered, unrouted=unrouted)
        if read or not collector.is_assigned():
            # Still joining its group or reading what is already there: the silence the
            # stall rule measures has not begun.
            watch.last_progress_at = now
        reason = (should_stop() if should_stop is not None else None) or watch.verdict(
            now, complete=collector.is_complete()
        )
        if on_status is not None and (reason is not None or now >= next_status):
            on_status(
                WaitStatus(
                    waited_s=now - started,
                    answered=collector.answered,
                    expected=collector.expected,
                    unrouted=unrouted,
                    since_progress_s=now - watch.last_progress_at,
                )
            )
            next_status = now + status_every_s
        if reason is not None:
            return reason


def settle(collector: OutputCollector, *, owed: Collection[str], settle_s: float) -> set[str]:
    """Read until every `owed` ticket's output is in (or `settle_s`); return those missing."""
    deadline = time.monotonic() + settle_s
    missing = set(owed) - collector.seen
    while missing and time.monotonic() < deadline:
        collector.read(0.5)
        missing -= collector.seen
    quiet_until = min(deadline, time.monotonic() + 5.0)
    while not collector.caught_up() and time.monotonic() < quiet_until:
        collector.read(0.2)  # late duplicates of answered tickets
    return missing


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

    Without the router's offsets, progress is new outputs only: stops when every expected
    id is seen and the partitions are read, after `idle_timeout_s` without a new expected
    output, or at `deadline_s`.

    Args:
        bootstrap: Kafka bootstrap servers.
        topics: the routed, triage and dead-letter topics.
        group_id: a group id no one else uses (offsets are never committed).
        expected_ids: the manifest's ticket ids; None to read until idle.
        idle_timeout_s: quiet period that ends the read.
        deadline_s: upper bound on the whole read.
        extra: librdkafka settings merged over the defaults.
    """
    policy = WaitPolicy(stall_s=idle_timeout_s, max_wait_s=deadline_s)
    with OutputCollector(
        bootstrap, topics, group_id=group_id, expected_ids=expected_ids, extra=extra
    ) as collector:
        wait_for_router(collector, policy=policy)
        return collector.observations
