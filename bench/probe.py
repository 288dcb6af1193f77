"""A short capacity probe against a router that is already running (the demo's).

Owns the probe's I/O: a paced open-loop producer of fresh tickets on the inbound topic and a
reader of the output topics, one step at a time, with a wait between steps until the last
step's tickets are answered, so that no step inherits the backlog of the one before. Which
rate comes next, a step's figures and its verdict are `bench.capacity_ramp`'s pure functions
(`next_rate`, `step_figures`, `judge`, `summarise`). It starts, stops and tunes nothing: the
router runs with its own settings, and the probe only offers it tickets.

Latency here is the same as `bench.collect`'s: the output record's timestamp (stamped by
the router's producer) minus the wall-clock send time.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.capacity_ramp import (
    CapacitySummary,
    Phase,
    RampPlan,
    Slo,
    StepFigures,
    StepObservation,
    judge,
    next_rate,
    step_figures,
    summarise,
)
from loadgen.itsm_formats import PayloadFormat, encode, ticket_id
from loadgen.replay import Labeled


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Where the probe sends and reads.

    Attributes:
        bootstrap: Kafka bootstrap servers.
        inbound_topic: the topic the router consumes.
        output_kinds: every output topic -> "routed", "triage" or "dead_letter".
        fmt: payload format of the probe's tickets.
        run: run number in the probe's ticket ids (keep it apart from the replay's).
    """

    bootstrap: str
    inbound_topic: str
    output_kinds: Mapping[str, str]
    fmt: PayloadFormat = PayloadFormat.CANONICAL
    run: int = 0


@dataclass(slots=True)
class ProbeResult:
    """The probe's steps and answer, and the ids of every ticket it sent."""

    plan: RampPlan
    slo: Slo
    steps: list[StepFigures]
    summary: CapacitySummary
    ticket_ids: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False
    undrained: int = 0  # tickets of the last step still unanswered when the probe gave up

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (without the ticket ids)."""
        return {
            "plan": asdict(self.plan),
            "slo": asdict(self.slo),
            "summary": asdict(self.summary),
            "steps": [s.to_json() for s in self.steps],
            "tickets": len(self.ticket_ids),
            "wall_s": self.wall_s,
            "interrupted": self.interrupted,
            "undrained": self.undrained,
        }


class _Probe:
    """One producer and one reader; the reader is only read between and during sends."""

    def __init__(self, target: ProbeTarget, corpus: Sequence[Labeled]) -> None:
        self.target = target
        self.corpus = corpus
        self.ids: list[str] = []
        self.received: dict[str, tuple[float, str]] = {}
        self._producer: Any = None
        self._consumer: Any = None

    def open(self) -> None:
        from confluent_kafka import Consumer, Producer

        t = self.target
        self._producer = Producer(
            {"bootstrap.servers": t.bootstrap, "linger.ms": 2, "enable.idempotence": True}
        )
        self._consumer = Consumer(
            {
                "bootstrap.servers": t.bootstrap,
                "group.id": f"demo-probe-{t.run}-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.subscribe(list(t.output_kinds))

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
        if self._consumer is not None:
            self._consumer.close()

    def read(self, timeout_s: float) -> None:
        for msg in self._consumer.consume(num_messages=1000, timeout=max(timeout_s, 0.0)):
            if msg.error() is not None or msg.key() is None:
                continue
            ts_type, ts_ms = msg.timestamp()
            at = ts_ms / 1000 if ts_type != 0 and ts_ms >= 0 else time.time()
            tid = msg.key().decode("utf-8", "replace")
            self.received.setdefault(tid, (at, self.target.output_kinds.get(msg.topic(), "")))

    def wait_assigned(self, timeout_s: float, stop: threading.Event | None) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._consumer.assignment():
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                raise TimeoutError("the probe's reader got no partitions")
            self.read(0.2)

    def payloads(self, n: int) -> list[tuple[str, bytes]]:
        out = []
        now = datetime.now(UTC)
        for _ in range(n):
            seq = len(self.ids)
            tid = ticket_id(self.target.fmt, run=self.target.run, seq=seq)
            item = self.corpus[(seq * 7919) % len(self.corpus)]
            ticket = item.ticket.model_copy(update={"id": tid, "created_at": now})
            out.append((tid, encode(ticket, self.target.fmt)))
            self.ids.append(tid)
        return out

    def send_paced(
        self, items: list[tuple[str, bytes]], rate_per_s: float, stop: threading.Event | None
    ) -> tuple[float, dict[str, float], int]:
        """Send at `rate_per_s`, reading outputs in the gaps; (t0, acked send times, fails)."""
        sent_at: dict[str, float] = {}
        failed: list[str] = []

        def on_delivery(err: object, msg: Any) -> None:
            if err is not None:
                failed.append(msg.key().decode())

        t0 = time.time() + 0.05
        for k, (tid, value) in enumerate(items):
            due = t0 + k / rate_per_s
            while (now := time.time()) < due:
                self.read(min(due - now, 0.01))
            if stop is not None and stop.is_set():
                break
            self._produce(tid, value, on_delivery)
            sent_at[tid] = time.time()
        self._producer.flush(30)
        for tid in failed:
            sent_at.pop(tid, None)
        return t0, sent_at, len(failed)

    def _produce(self, tid: str, value: bytes, on_delivery: Callable[..., None]) -> None:
        while True:
            try:
                self._producer.produce(
                    self.target.inbound_topic,
                    value=value,
                    key=tid.encode(),
                    on_delivery=on_delivery,
                )
                self._producer.poll(0)
                return
            except BufferError:
                self._producer.poll(0.05)

    def wait_answered(
        self, ids: Sequence[str], *, until: float, stop: threading.Event | None
    ) -> list[str]:
        """Read until every id is answered or `until` (wall clock); return the unanswered."""
        missing = [i for i in ids if i not in self.received]
        while missing and time.time() < until and not (stop is not None and stop.is_set()):
            self.read(0.05)
            missing = [i for i in missing if i not in self.received]
        return missing


def _step(
    probe: _Probe,
    *,
    plan: RampPlan,
    rate_per_s: float,
    phase: Phase,
    stop: threading.Event | None,
) -> StepObservation:
    items = probe.payloads(max(1, round(rate_per_s * plan.step_s)))
    t0, sent_at, failures = probe.send_paced(items, rate_per_s, stop)
    window_end = t0 + max([plan.step_s, *(t - t0 for t in sent_at.values())]) + plan.tail_s
    probe.wait_answered(list(sent_at), until=window_end, stop=stop)
    received = [probe.received.get(tid) for tid in sent_at]
    return StepObservation(
        phase=phase,
        offered_rate_per_s=rate_per_s,
        step_s=plan.step_s,
        tail_s=plan.tail_s,
        sent_at_s=tuple(t - t0 for t in sent_at.values()),
        received_at_s=tuple(None if r is None else r[0] - t0 for r in received),
        send_failures=failures,
        triaged=sum(r is not None and r[1] == "triage" for r in received),
        dead_lettered=sum(r is not None and r[1] == "dead_letter" for r in received),
    )


def run_probe(
    target: ProbeTarget,
    corpus: Sequence[Labeled],
    *,
    plan: RampPlan,
    slo: Slo,
    warmup_tickets: int = 20,
    drain_timeout_s: float = 60.0,
    on_step: Callable[[StepFigures], None] | None = None,
    stop: threading.Event | None = None,
) -> ProbeResult:
    """Ramp the offered rate against the running router until a step fails the SLO.

    Before the ramp, `warmup_tickets` are sent at 10/s and awaited (not measured). After
    each step the probe waits up to `drain_timeout_s` for that step's tickets; if they are
    not all answered by then the router cannot drain its backlog and the probe ends.

    Args:
        target: broker, topics, payload format and run number.
        corpus: tickets to draw the probe's payloads from.
        plan: rates and step lengths (`bench.capacity_ramp.RampPlan`).
        slo: what a step must achieve to pass.
        warmup_tickets: tickets sent and awaited before the first step.
        drain_timeout_s: longest wait for a step's tickets after its window.
        on_step: called with each judged step.
        stop: when set, the probe ends after the current send (`interrupted`).
    """
    started = time.monotonic()
    probe = _Probe(target, corpus)
    steps: list[StepFigures] = []
    undrained: list[str] = []
    probe.open()
    try:
        probe.wait_assigned(60.0, stop)
        warm = [tid for tid, _ in _send_warmup(probe, warmup_tickets, stop)]
        undrained = probe.wait_answered(warm, until=time.time() + 300, stop=stop)
        while not undrained and not _is_set(stop) and (nxt := next_rate(plan, steps)):
            rate, phase = nxt
            first = len(probe.ids)
            obs = _step(probe, plan=plan, rate_per_s=rate, phase=phase, stop=stop)
            if _is_set(stop):
                break
            steps.append(judge(step_figures(obs), slo))
            if on_step is not None:
                on_step(steps[-1])
            undrained = probe.wait_answered(
                probe.ids[first:], until=time.time() + drain_timeout_s, stop=stop
            )
    finally:
        probe.close()
    return ProbeResult(
        plan=plan,
        slo=slo,
        steps=steps,
        summary=summarise(plan, steps),
        ticket_ids=probe.ids,
        wall_s=time.monotonic() - started,
        interrupted=_is_set(stop),
        undrained=len(undrained),
    )


def _send_warmup(probe: _Probe, n: int, stop: threading.Event | None) -> list[tuple[str, bytes]]:
    if n <= 0:
        return []
    items = probe.payloads(n)
    probe.send_paced(items, 10.0, stop)
    return items


def _is_set(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()
