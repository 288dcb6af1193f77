"""The simulated desk's Kafka edge: read the router's decisions, publish the desk's feedback.

Owns one background thread that reads every routed and triage record from the beginning (its
own consumer group, which never commits), asks `loadgen.desk` what the agents do with the
ticket and after how long (desk minutes, compressed by `speedup` into real seconds), and
publishes each answer when it is due as a canonical `Feedback` on the feedback topic (key =
ticket id, idempotent producer), the way an ITSM connector would. It answers a ticket once,
from its first decision; a ticket it has no true queue for (not from this replay) is left
alone. It records every decision it read (ticket, expert version, queue, triage, times) so
a scenario can tell which version decided what. It never touches the router's offsets.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from feedback.decision_log import decode_decision
from loadgen.desk import DeskAnswer, DeskResponse, answer, to_feedback
from schemas.routing import Disposition


@dataclass(frozen=True, slots=True)
class SeenDecision:
    """One decision record the desk read.

    Attributes:
        ticket_id: the ticket.
        model_id: the expert (and registry version) that decided (`router.model`).
        queue: the queue it chose (None: no answer within the deadline).
        triage: it went to triage.
        decided_at: when the engine answered, Unix seconds.
        read_at: when the desk read it, Unix seconds.
        first: the ticket's first decision (a later one is a duplicate output).
    """

    ticket_id: str
    model_id: str
    queue: str | None
    triage: bool
    decided_at: float
    read_at: float
    first: bool


@dataclass(frozen=True, slots=True)
class DeskTarget:
    """Where the desk reads and writes.

    Attributes:
        bootstrap: Kafka bootstrap servers.
        decision_topics: the routed topics and the triage topic.
        feedback_topic: where the feedback goes.
    """

    bootstrap: str
    decision_topics: tuple[str, ...]
    feedback_topic: str


class AnsweringDesk:
    """The desk's thread. Constructing does no I/O; `start()` connects, `stop()` joins.

    Args:
        target: topics and broker.
        truths: ticket id -> true queue (the replay's manifest, known before sending).
        tiers: queue -> tier, for the pickup delays.
        desk: delays and human noise.
        speedup: desk minutes per real minute (60: a desk hour passes in a real minute).
        seed: randomness of the answers.
    """

    def __init__(
        self,
        target: DeskTarget,
        *,
        truths: Mapping[str, str],
        tiers: Mapping[str, str],
        desk: DeskResponse,
        speedup: float,
        seed: int,
    ) -> None:
        if speedup <= 0:
            raise ValueError("speedup must be > 0")
        self.target = target
        self.truths = truths
        self.tiers = tiers
        self.desk = desk
        self.speedup = speedup
        self._rng = np.random.default_rng(seed)
        # (due, sequence, ticket id, answer): the unique sequence settles equal due times.
        self._due: list[tuple[float, int, str, DeskAnswer]] = []
        self._answered: set[str] = set()
        self._lock = threading.Lock()
        self._decisions: list[SeenDecision] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.feedback_published = 0
        self.feedback_failed = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (consumer and producer are created on it)."""
        self._thread = threading.Thread(target=self._run, name="answering-desk", daemon=True)
        self._thread.start()

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop reading and answering, flush what was published, join the thread.

        Raises:
            RuntimeError: the thread failed (its error is the cause).
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._error is not None:
            raise RuntimeError("the answering desk failed") from self._error

    @property
    def decisions(self) -> list[SeenDecision]:
        """Every decision read so far (a copy)."""
        with self._lock:
            return list(self._decisions)

    @property
    def pending(self) -> int:
        """Answers decided but not yet due."""
        with self._lock:
            return len(self._due)

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        from confluent_kafka import Consumer, Producer

        try:
            consumer = Consumer(
                {
                    "bootstrap.servers": self.target.bootstrap,
                    "group.id": f"answering-desk-{uuid.uuid4().hex[:12]}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "session.timeout.ms": 6000,
                    "fetch.wait.max.ms": 50,
                }
            )
            producer = Producer(
                {
                    "bootstrap.servers": self.target.bootstrap,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                }
            )
            consumer.subscribe(list(self.target.decision_topics))
            try:
                while not self._stop.is_set():
                    for msg in consumer.consume(num_messages=500, timeout=0.1):
                        if msg.error() is None and msg.value() is not None:
                            self._read(msg)
                    self._publish_due(producer)
                    producer.poll(0)
            finally:
                producer.flush(10)
                consumer.close()
        except Exception as exc:  # kept, and raised again by stop() in the caller's thread
            self._error = exc

    def _read(self, msg: Any) -> None:
        try:
            d = decode_decision(
                topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), value=msg.value()
            )
        except ValueError:
            return  # not a routed ticket: the collector accounts for unreadable outputs
        now = time.time()
        first = d.ticket_id not in self._answered
        seen = SeenDecision(
            ticket_id=d.ticket_id,
            model_id=d.model_id,
            queue=d.queue,
            triage=d.disposition is Disposition.TRIAGE,
            decided_at=d.decided_at.timestamp(),
            read_at=now,
            first=first,
        )
        truth = self.truths.get(d.ticket_id)
        with self._lock:
            self._decisions.append(seen)
            if not first or truth is None:
                return
            self._answered.add(d.ticket_id)
            landed = None if seen.triage else d.queue
            reply = answer(
                truth=truth, landed=landed, tiers=self.tiers, desk=self.desk, rng=self._rng
            )
            due = time.monotonic() + reply.delay_min * 60 / self.speedup
            heapq.heappush(self._due, (due, len(self._answered), d.ticket_id, reply))

    def _publish_due(self, producer: Any) -> None:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._due or self._due[0][0] > now:
                    return
                _, _, ticket_id, reply = heapq.heappop(self._due)
            event = to_feedback(ticket_id, reply, occurred_at=datetime.now(UTC))
            self._produce(producer, ticket_id, event.model_dump_json().encode())

    def _produce(self, producer: Any, key: str, value: bytes) -> None:
        def delivered(err: object, _msg: object) -> None:
            if err is None:
                self.feedback_published += 1
            else:
                self.feedback_failed += 1

        while True:
            try:
                producer.produce(
                    self.target.feedback_topic, value=value, key=key.encode(), on_delivery=delivered
                )
                return
            except BufferError:
                producer.poll(0.05)
