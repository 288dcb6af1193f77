"""Capacity mode: ramp an open-loop arrival rate until end-to-end latency or lag breaks.

Owns the ramp (which rate comes next, when to stop, one optional bisection step), the
per-step figures and verdict and the summary; these are pure functions of timestamps and
counts (`step_figures`, `judge`, `next_rate`, `summarise`) and do no I/O. It also owns one
in-process measurement run (`run_capacity`): a worker started with `started_worker`, an
embedded broker unless one is given, an open-loop producer and a downstream reader, like
`bench.worker_bench`. It must not tune the worker: the worker runs with its normal settings, only
the routing deadline is raised so that overload shows as latency, not as triaged tickets.
Heavy imports (Kafka clients, vLLM, rich, matplotlib) stay inside the I/O functions.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas.taxonomy import Taxonomy
    from worker.config import Settings
    from worker.kafka_io import Publisher, Source

DEFAULT_MODEL_DIR = Path(".state/models/default-expert")
EXIT_OK = 0
EXIT_MODEL_MISSING = 4
BACKLOG_SAMPLES = 41


class Phase(StrEnum):
    """Why a step ran: the geometric/additive ramp, or the bisection after the first fail."""

    RAMP = "ramp"
    BISECT = "bisect"


@dataclass(frozen=True)
class RampPlan:
    """Which rates to offer and for how long.

    Attributes:
        start_rate_per_s: the first step's offered rate.
        growth_factor: each next step offers `rate * growth_factor` ...
        growth_add_per_s: ... or `rate + growth_add_per_s` when this is > 0.
        step_s: how long each step sends.
        tail_s: how long after its last send a step's outputs still count as delivered.
        max_rate_per_s: never offer more than this (the last ramp step is clamped to it).
        max_steps: never run more steps than this, bisection included.
        bisect: after the first failing step, try once halfway to the last passing rate.
    """

    start_rate_per_s: float = 25.0
    growth_factor: float = 1.5
    growth_add_per_s: float = 0.0
    step_s: float = 15.0
    tail_s: float = 2.0
    max_rate_per_s: float = 2000.0
    max_steps: int = 12
    bisect: bool = True

    def __post_init__(self) -> None:
        if self.start_rate_per_s <= 0 or self.max_rate_per_s < self.start_rate_per_s:
            raise ValueError("need 0 < start_rate_per_s <= max_rate_per_s")
        if self.growth_add_per_s < 0 or (self.growth_add_per_s == 0 and self.growth_factor <= 1):
            raise ValueError("need growth_factor > 1 or growth_add_per_s > 0")
        if self.step_s <= 0 or self.tail_s < 0 or self.max_steps < 1:
            raise ValueError("need step_s > 0, tail_s >= 0 and max_steps >= 1")

    def grow(self, rate_per_s: float) -> float:
        """The ramp's rate after `rate_per_s`, before clamping to `max_rate_per_s`."""
        if self.growth_add_per_s > 0:
            return rate_per_s + self.growth_add_per_s
        return rate_per_s * self.growth_factor


@dataclass(frozen=True)
class Slo:
    """What a step must achieve to pass.

    Attributes:
        p99_s: p99 end-to-end latency (produce to downstream receipt) of delivered tickets.
        min_delivered_fraction: share of the step's sent tickets delivered within the step
            plus its tail; below it the backlog is not bounded.
        min_send_fraction: achieved send rate / offered rate; below it the load generator
            (which shares the worker's process and cores) could not offer the rate.
    """

    p99_s: float = 1.0
    min_delivered_fraction: float = 0.99
    min_send_fraction: float = 0.95


@dataclass(frozen=True)
class StepObservation:
    """What one step recorded: raw timestamps in seconds since the step's first due send.

    Attributes:
        phase: ramp or bisection step.
        offered_rate_per_s: the open-loop rate the step was asked to offer.
        step_s: planned sending time.
        tail_s: extra time after the last send during which outputs still counted.
        sent_at_s: when each acknowledged ticket was handed to the producer.
        received_at_s: when its output reached the downstream reader (same order as
            `sent_at_s`), None if not within the window.
        send_failures: produce attempts the broker did not acknowledge.
        triaged: outputs that went to the triage topic (a subset of the delivered).
        dead_lettered: outputs that went to the dead-letter topic (ditto; should be 0).
    """

    phase: Phase
    offered_rate_per_s: float
    step_s: float
    tail_s: float
    sent_at_s: tuple[float, ...]
    received_at_s: tuple[float | None, ...]
    send_failures: int = 0
    triaged: int = 0
    dead_lettered: int = 0

    def __post_init__(self) -> None:
        if len(self.sent_at_s) != len(self.received_at_s):
            raise ValueError("sent_at_s and received_at_s must have one entry per ticket")


@dataclass(frozen=True)
class StepFigures:
    """One step's figures (latencies in seconds, rates per second), then its verdict."""

    phase: Phase
    offered_rate_per_s: float
    sent: int
    achieved_send_rate_per_s: float
    delivered: int
    delivered_fraction: float
    delivered_rate_per_s: float
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None
    backlog_at_step_end: int
    backlog_after_tail: int
    backlog_slope_per_s: float
    backlog_curve: tuple[tuple[float, int], ...]
    send_failures: int
    triaged: int
    dead_lettered: int
    passed: bool = False
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["phase"] = str(self.phase)
        out["backlog_curve"] = [list(p) for p in self.backlog_curve]
        out["reasons"] = list(self.reasons)
        return out


@dataclass(frozen=True)
class CapacitySummary:
    """The ramp's answer.

    Attributes:
        max_sustainable_rate_per_s: highest offered rate that passed (None: none did).
        first_failing_rate_per_s: lowest offered rate that failed (None: none did).
        saturated_delivered_rate_per_s: delivered rate of that failing step, an estimate
            of the worker's throughput when overloaded.
        stopped_because: why the ramp ended.
        steps: how many steps ran.
    """

    max_sustainable_rate_per_s: float | None
    first_failing_rate_per_s: float | None
    saturated_delivered_rate_per_s: float | None
    stopped_because: str
    steps: int


def _percentiles(values: Sequence[float]) -> tuple[float, float, float, float] | None:
    if not values:
        return None
    if len(values) == 1:
        v = values[0]
        return v, v, v, v
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[94], q[98], max(values)


def _backlog_at(t: float, sent: Sequence[float], received: Sequence[float]) -> int:
    return sum(s <= t for s in sent) - sum(r <= t for r in received)


def _slope(points: Sequence[tuple[float, int]]) -> float:
    """Least-squares slope of backlog over time (tickets per second)."""
    if len(points) < 2:
        return 0.0
    ts = [p[0] for p in points]
    ys = [float(p[1]) for p in points]
    t_mean, y_mean = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - t_mean) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - t_mean) * (y - y_mean) for t, y in zip(ts, ys, strict=True)) / var


def step_figures(obs: StepObservation) -> StepFigures:
    """Figures of one step from its timestamps (no verdict yet: see `judge`).

    The send window is the planned `step_s`, longer if the generator fell behind; outputs
    count as delivered up to `tail_s` after it. The backlog (sent minus received so far) is
    sampled over the step; its slope is fitted over the second half of the send window.
    """
    sent_n = len(obs.sent_at_s)
    send_end = max([obs.step_s, *obs.sent_at_s]) if sent_n else obs.step_s
    window_end = send_end + obs.tail_s
    latencies = [
        r - s
        for s, r in zip(obs.sent_at_s, obs.received_at_s, strict=True)
        if r is not None and r <= window_end
    ]
    received = [r for r in obs.received_at_s if r is not None and r <= window_end]
    delivered = len(received)
    pct = _percentiles(latencies)
    if sent_n > 1:
        # n sends are n intervals: the mean interval between them times n.
        spread_s = (max(obs.sent_at_s) - min(obs.sent_at_s)) * sent_n / (sent_n - 1)
        achieved = sent_n / max(obs.step_s, spread_s)
    else:
        achieved = sent_n / obs.step_s
    if delivered > 1:
        # Receipts per second between the first and the last one, as for the sends.
        spread_s = (max(received) - min(received)) * delivered / (delivered - 1)
        delivered_rate = delivered / max(spread_s, 1 / obs.offered_rate_per_s)
    else:
        delivered_rate = delivered / obs.step_s
    curve = tuple(
        (round(t, 3), _backlog_at(t, obs.sent_at_s, received))
        for t in (window_end * i / (BACKLOG_SAMPLES - 1) for i in range(BACKLOG_SAMPLES))
    )
    second_half = [(t, b) for t, b in curve if send_end / 2 <= t <= send_end]
    return StepFigures(
        phase=obs.phase,
        offered_rate_per_s=obs.offered_rate_per_s,
        sent=sent_n,
        achieved_send_rate_per_s=achieved,
        delivered=delivered,
        delivered_fraction=delivered / sent_n if sent_n else 0.0,
        delivered_rate_per_s=delivered_rate,
        p50_s=pct[0] if pct else None,
        p95_s=pct[1] if pct else None,
        p99_s=pct[2] if pct else None,
        max_s=pct[3] if pct else None,
        backlog_at_step_end=_backlog_at(send_end, obs.sent_at_s, received),
        backlog_after_tail=sent_n - delivered,
        backlog_slope_per_s=_slope(second_half),
        backlog_curve=curve,
        send_failures=obs.send_failures,
        triaged=obs.triaged,
        dead_lettered=obs.dead_lettered,
    )


def judge(fig: StepFigures, slo: Slo) -> StepFigures:
    """The step's figures with its verdict: passed, or the reasons it failed."""
    reasons = []
    if fig.sent == 0:
        reasons.append("nothing sent")
    if fig.achieved_send_rate_per_s < slo.min_send_fraction * fig.offered_rate_per_s:
        reasons.append(
            f"sent {fig.achieved_send_rate_per_s:.1f}/s < {slo.min_send_fraction:.0%} of offered"
        )
    if fig.send_failures:
        reasons.append(f"{fig.send_failures} sends not acknowledged")
    if fig.sent and fig.delivered_fraction < slo.min_delivered_fraction:
        reasons.append(
            f"delivered {fig.delivered_fraction:.1%} < {slo.min_delivered_fraction:.0%}"
            " (lag unbounded)"
        )
    if fig.p99_s is not None and fig.p99_s > slo.p99_s:
        reasons.append(f"p99 {fig.p99_s:.3f} s > {slo.p99_s:g} s")
    return _with_verdict(fig, reasons)


def _with_verdict(fig: StepFigures, reasons: list[str]) -> StepFigures:
    return replace(fig, passed=not reasons, reasons=tuple(reasons))


def next_rate(plan: RampPlan, steps: Sequence[StepFigures]) -> tuple[float, Phase] | None:
    """The next step's offered rate and phase, or None when the ramp is over.

    Ramps until the first failing step; then, if `plan.bisect` and some step passed, tries
    once halfway between the last passing and the first failing rate (unless they are
    within 2% or 1/s of each other).
    """
    if not steps:
        return plan.start_rate_per_s, Phase.RAMP
    if len(steps) >= plan.max_steps:
        return None
    failed = [s.offered_rate_per_s for s in steps if not s.passed]
    if not failed:
        last = steps[-1].offered_rate_per_s
        if last >= plan.max_rate_per_s:
            return None
        return min(plan.grow(last), plan.max_rate_per_s), Phase.RAMP
    if not plan.bisect or any(s.phase is Phase.BISECT for s in steps):
        return None
    first_fail = min(failed)
    below = [s.offered_rate_per_s for s in steps if s.passed and s.offered_rate_per_s < first_fail]
    if not below:
        return None
    last_pass = max(below)
    if first_fail - last_pass <= max(1.0, 0.02 * first_fail):
        return None
    return (last_pass + first_fail) / 2, Phase.BISECT


def summarise(plan: RampPlan, steps: Sequence[StepFigures]) -> CapacitySummary:
    """The highest passing rate, the lowest failing one, and why the ramp stopped."""
    passed = [s.offered_rate_per_s for s in steps if s.passed]
    failed = sorted((s for s in steps if not s.passed), key=lambda s: s.offered_rate_per_s)
    first_fail = failed[0] if failed else None
    best = max(passed) if passed else None
    if first_fail is not None and best is None:
        why = "the first step already failed: capacity is below the start rate"
    elif first_fail is not None:
        why = "first failing step" + (
            " and one bisection step" if any(s.phase is Phase.BISECT for s in steps) else ""
        )
    elif steps and steps[-1].offered_rate_per_s >= plan.max_rate_per_s:
        why = "max rate reached without a failure: capacity is at least that"
    elif not steps:
        why = "no step ran"
    else:
        why = "max steps reached without a failure"
    return CapacitySummary(
        max_sustainable_rate_per_s=best,
        first_failing_rate_per_s=first_fail.offered_rate_per_s if first_fail else None,
        saturated_delivered_rate_per_s=first_fail.delivered_rate_per_s if first_fail else None,
        stopped_because=why,
        steps=len(steps),
    )


def to_json(
    *, plan: RampPlan, slo: Slo, steps: Sequence[StepFigures], meta: dict[str, Any]
) -> dict[str, Any]:
    """The run as one JSON document: settings, the curve and the answer."""
    return {
        **meta,
        "plan": asdict(plan),
        "slo": asdict(slo),
        "summary": asdict(summarise(plan, steps)),
        "steps": [s.to_json() for s in steps],
    }


# --- I/O: one measured run ---------------------------------------------------------------


@dataclass
class CapacityRun:
    """Where and what to run.

    Attributes:
        model_dir: the expert to serve (None: the default expert).
        bootstrap: an existing Kafka (None: start an embedded broker on a free port).
        out_dir: where capacity.json and capacity.png go.
        partitions: partitions of each topic this run creates.
        seed: corpus seed of the tickets sent.
        warmup_tickets: sent and awaited before the ramp, not measured.
        vllm_cache_dir: vLLM's compile cache and sockets.
        extra_meta: copied into capacity.json as is.
    """

    model_dir: Path | None
    bootstrap: str | None
    out_dir: Path
    partitions: int = 6
    seed: int = 0
    warmup_tickets: int = 30
    vllm_cache_dir: Path = Path(".state/vllm-cache")
    extra_meta: dict[str, Any] = field(default_factory=dict)


class _NoRebalance:
    def on_assigned(self, tps: list[tuple[str, int]]) -> None: ...

    def on_revoked(self, tps: list[tuple[str, int]], ops: object) -> dict[tuple[str, int], int]:
        return {}

    def on_lost(self, tps: list[tuple[str, int]], ops: object) -> None: ...


class _Receiver:
    """Reads the output topics in the background: ticket id -> (monotonic receipt, kind)."""

    def __init__(self, reader: Source, kinds: dict[str, str]) -> None:
        self.reader = reader
        self.kinds = kinds
        self.received: dict[str, tuple[float, str]] = {}

    async def run(self) -> None:
        while True:
            records = await self.reader.poll(max_records=2000, timeout_s=0.05)
            now = time.monotonic()
            for rec in records:
                key = (rec.key or b"").decode(errors="replace")
                self.received.setdefault(key, (now, self.kinds.get(rec.topic, "routed")))


class _Sender:
    """Open-loop producer of fresh tickets drawn from a corpus pool."""

    def __init__(self, publisher: Publisher, topic: str, pool: list[dict[str, Any]], run: str):
        self.publisher = publisher
        self.topic = topic
        self.pool = pool
        self.run = run

    def payloads(self, step: int, n: int) -> list[tuple[str, bytes]]:
        from datetime import UTC, datetime

        now = datetime.now(UTC).isoformat()
        out = []
        for k in range(n):
            tid = f"cap-{self.run}-{step:02d}-{k:06d}"
            body = {**self.pool[(step * 7919 + k) % len(self.pool)], "id": tid, "created_at": now}
            out.append((tid, json.dumps(body).encode()))
        return out

    async def send_paced(
        self, items: list[tuple[str, bytes]], rate_per_s: float, t0: float
    ) -> tuple[list[tuple[str, float]], int]:
        """Send `items` at `rate_per_s` from monotonic `t0` on, not waiting for acks between
        sends (open loop); return (ticket id, send time since t0) of the acknowledged ones
        and the number of failed sends."""
        tasks = []
        sent_at = []
        for k, (tid, value) in enumerate(items):
            delay = t0 + k / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at.append((tid, time.monotonic() - t0))
            tasks.append(
                asyncio.create_task(
                    self.publisher.publish(
                        topic=self.topic, key=tid.encode(), value=value, headers=()
                    )
                )
            )
        results = await asyncio.gather(*tasks, return_exceptions=True)
        acked = [s for s, r in zip(sent_at, results, strict=True) if not isinstance(r, Exception)]
        return acked, len(items) - len(acked)


async def _measure_step(
    *,
    sender: _Sender,
    receiver: _Receiver,
    plan: RampPlan,
    index: int,
    rate_per_s: float,
    phase: Phase,
    check_worker: Callable[[], None],
) -> StepObservation:
    n = max(1, round(rate_per_s * plan.step_s))
    items = sender.payloads(index, n)
    t0 = time.monotonic() + 0.05
    sending = asyncio.create_task(sender.send_paced(items, rate_per_s, t0))
    ids = [tid for tid, _ in items]
    while not sending.done():
        await asyncio.wait({sending}, timeout=0.1)
        check_worker()
        if time.monotonic() - t0 > 10 * plan.step_s + 60:
            sending.cancel()
            raise RuntimeError("the producer could not send one step in 10x its length")
    acked, failures = sending.result()
    window_end_s = max([plan.step_s, *(s for _, s in acked)]) + plan.tail_s
    while time.monotonic() - t0 < window_end_s and not all(i in receiver.received for i in ids):
        check_worker()
        await asyncio.sleep(0.05)
    # A step's window ends `tail_s` after its last send; receipts later than that are judged
    # by `step_figures`, which drops them.
    received_at: list[float | None] = []
    triaged = dead = 0
    for tid, _ in acked:
        got = receiver.received.get(tid)
        received_at.append(None if got is None else got[0] - t0)
        if got is not None:
            triaged += got[1] == "triage"
            dead += got[1] == "dead_letter"
    return StepObservation(
        phase=phase,
        offered_rate_per_s=rate_per_s,
        step_s=plan.step_s,
        tail_s=plan.tail_s,
        sent_at_s=tuple(s for _, s in acked),
        received_at_s=tuple(received_at),
        send_failures=failures,
        triaged=triaged,
        dead_lettered=dead,
    )


async def _ramp(
    settings: Settings,
    tax: Taxonomy,
    plan: RampPlan,
    slo: Slo,
    *,
    run: CapacityRun,
    run_id: str,
    on_step: Callable[[StepFigures], None],
) -> list[StepFigures]:
    from loadgen.corpus import generate
    from worker.kafka_io import Publisher, Source
    from worker.runner import started_worker

    pool = [lt.ticket.model_dump(mode="json") for lt in generate(500, seed=run.seed)]
    kinds = {q.topic: "routed" for q in tax.queues}
    kinds |= {tax.topics.triage: "triage", tax.topics.dead_letter: "dead_letter"}
    steps: list[StepFigures] = []
    async with started_worker(settings) as worker:
        pipeline = asyncio.create_task(worker.pipeline.run(worker.source))

        def check_worker() -> None:
            if pipeline.done():
                pipeline.result()
                raise RuntimeError("the worker stopped during the ramp")

        publisher = Publisher(
            conf={"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": "1"}
        )
        reader = Source(
            conf={
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"capacity-reader-{run_id}",
                # The topics are this run's own: reading from the start misses nothing.
                "auto.offset.reset": "earliest",
                "enable.auto.commit": "false",
                "session.timeout.ms": "6000",
                "fetch.wait.max.ms": "5",
            },
            topics=list(kinds),
            listener=_NoRebalance(),
        )
        receiving: asyncio.Task[None] | None = None
        try:
            await publisher.start()
            await reader.start()
            while not worker.pipeline.is_ready or not await reader.assignment():
                check_worker()
                await reader.poll(max_records=0, timeout_s=0.1)
            receiver = _Receiver(reader, kinds)
            receiving = asyncio.create_task(receiver.run(), name="capacity-receiver")
            sender = _Sender(publisher, tax.topics.inbound, pool, run_id)
            await _warm_up(sender, receiver, run.warmup_tickets, check_worker)
            while (nxt := next_rate(plan, steps)) is not None:
                rate, phase = nxt
                obs = await _measure_step(
                    sender=sender,
                    receiver=receiver,
                    plan=plan,
                    index=len(steps) + 1,
                    rate_per_s=rate,
                    phase=phase,
                    check_worker=check_worker,
                )
                steps.append(judge(step_figures(obs), slo))
                on_step(steps[-1])
                if receiving.done():
                    receiving.result()
        finally:
            if receiving is not None:
                receiving.cancel()
                await asyncio.gather(receiving, return_exceptions=True)
            await reader.close()
            await publisher.close()
            worker.stop()
            await pipeline
    return steps


async def _warm_up(
    sender: _Sender, receiver: _Receiver, n: int, check_worker: Callable[[], None]
) -> None:
    """Send `n` tickets at 10/s and wait for their outputs: the engine's first batches are
    slow, and the reader must own its partitions before anything is measured."""
    if n <= 0:
        return
    items = sender.payloads(0, n)
    await sender.send_paced(items, 10.0, time.monotonic())
    deadline = time.monotonic() + 300
    while not all(tid in receiver.received for tid, _ in items):
        check_worker()
        if time.monotonic() > deadline:
            raise RuntimeError("warm-up tickets were not routed within 300 s")
        await asyncio.sleep(0.1)


def model_problem(model_dir: Path) -> str | None:
    """Why `model_dir` cannot be served for the packaged taxonomy, or None if it can."""
    from expert.serving import ExpertLoadError, check_labels, load_card
    from schemas.taxonomy import Taxonomy

    try:
        check_labels(load_card(model_dir), Taxonomy.load().labels)
    except ExpertLoadError as exc:
        return str(exc)
    return None


def _run_taxonomy(run_id: str) -> Taxonomy:
    from schemas.taxonomy import Taxonomy

    return Taxonomy.load().with_topic_suffix(f".capacity-{run_id}")


def run_capacity(
    run: CapacityRun,
    plan: RampPlan,
    slo: Slo,
    *,
    on_step: Callable[[StepFigures], None] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run the ramp and write capacity.json and capacity.png into `run.out_dir`.

    Returns:
        (exit code, the JSON document); exit code 4 and `{"error", "model_dir"}` when the
        expert is missing, answers other labels than the taxonomy's queues, or fails to load.
    """
    import os
    import tempfile
    import uuid
    from datetime import UTC, datetime

    import yaml

    from expert.serving import engine_placement
    from worker.broker import EmbeddedBroker, TopicLayout, create_layout, free_port
    from worker.config import (
        EngineSettings,
        KafkaSettings,
        MetricsSettings,
        RoutingSettings,
        Settings,
    )
    from worker.errors import EngineUnavailableError

    model_dir = run.model_dir or DEFAULT_MODEL_DIR
    problem = model_problem(model_dir)
    if problem is not None:
        return EXIT_MODEL_MISSING, {"error": problem, "model_dir": str(model_dir)}
    run_id = uuid.uuid4().hex[:8]
    tax = _run_taxonomy(run_id)
    started_at = datetime.now(UTC).isoformat()
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        tax_path = Path(tmp) / "taxonomy.yaml"
        tax_path.write_text(yaml.safe_dump(tax.model_dump(mode="json")))
        broker = None
        bootstrap = run.bootstrap
        if bootstrap is None:
            broker = EmbeddedBroker(state_dir=Path(tmp) / "broker", port=free_port())
            broker.start()
            bootstrap = broker.bootstrap
        try:
            create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=run.partitions))
            settings = Settings(
                kafka=KafkaSettings(bootstrap_servers=bootstrap, group_id=f"capacity-{run_id}"),
                engine=EngineSettings(model_dir=model_dir, cache_dir=run.vllm_cache_dir),
                taxonomy_path=tax_path,
                metrics=MetricsSettings(enabled=False),
                # Overload must show as latency: a short deadline would triage it instead.
                routing=RoutingSettings(deadline_s=300),
                shutdown_grace_s=5,
            )
            try:
                steps = asyncio.run(
                    _ramp(
                        settings,
                        tax,
                        plan,
                        slo,
                        run=run,
                        run_id=run_id,
                        on_step=on_step or (lambda _s: None),
                    )
                )
            except EngineUnavailableError as exc:
                return EXIT_MODEL_MISSING, {"error": str(exc), "model_dir": str(model_dir)}
        finally:
            if broker is not None:
                broker.stop()
    doc = to_json(
        plan=plan,
        slo=slo,
        steps=steps,
        meta={
            "started_at": started_at,
            "model_dir": str(model_dir),
            "broker": "embedded" if run.bootstrap is None else run.bootstrap,
            "inbound_topic": tax.topics.inbound,
            "partitions": run.partitions,
            "cpu_count": os.cpu_count(),
            # Number format, model threads and processor kind: compare figures only with
            # figures from the same kind of processor.
            "hardware": engine_placement(settings.engine, streaming=True).as_dict(),
            "note": "the load generator and reader share the worker's process and cores",
            **run.extra_meta,
        },
    )
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / "capacity.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(steps, slo=slo, path=run.out_dir / "capacity.png")
    return EXIT_OK, doc


def plot(steps: Sequence[StepFigures], *, slo: Slo, path: Path) -> None:
    """p99 (and p50) latency, and delivered vs achieved send rate, against offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(steps, key=lambda s: s.offered_rate_per_s)
    x = [s.offered_rate_per_s for s in ordered]
    fig, (lat, rate) = plt.subplots(1, 2, figsize=(11, 4))
    for name, values in (("p99", [s.p99_s for s in ordered]), ("p50", [s.p50_s for s in ordered])):
        lat.plot(x, [math.nan if v is None else v for v in values], marker="o", label=name)
    lat.axhline(slo.p99_s, color="red", linestyle="--", label=f"SLO p99 {slo.p99_s:g} s")
    for s in ordered:
        if not s.passed and s.p99_s is not None:
            lat.plot([s.offered_rate_per_s], [s.p99_s], "x", color="red", markersize=10)
    lat.set(xlabel="offered rate (tickets/s)", ylabel="end-to-end latency (s)", yscale="log")
    lat.legend()
    rate.plot(x, [s.delivered_rate_per_s for s in ordered], marker="o", label="delivered")
    rate.plot(x, [s.achieved_send_rate_per_s for s in ordered], marker=".", label="sent")
    top = max(x, default=1.0)
    rate.plot([0, top], [0, top], color="grey", linestyle=":", label="delivered = offered")
    passed = [s.offered_rate_per_s for s in ordered if s.passed]
    if passed:
        rate.axvline(max(passed), color="green", linestyle="--", label="max sustainable")
    rate.set(xlabel="offered rate (tickets/s)", ylabel="tickets/s")
    rate.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def step_line(s: StepFigures) -> str:
    """One line per finished step, printed while the ramp runs."""
    verdict = "pass" if s.passed else "FAIL: " + "; ".join(s.reasons)
    return (
        f"{s.phase} {s.offered_rate_per_s:.1f}/s: sent {s.sent} at"
        f" {s.achieved_send_rate_per_s:.1f}/s, delivered {s.delivered}"
        f" ({s.delivered_rate_per_s:.1f}/s), p99 {_fmt(s.p99_s)} s,"
        f" backlog {s.backlog_at_step_end} -> {s.backlog_after_tail}: {verdict}"
    )


def print_curve(doc: dict[str, Any]) -> None:
    """The curve as a rich table, and the answer."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    slo = doc["slo"]
    t = Table(
        title=f"capacity ramp (rates per s, latencies in s): p99 <= {slo['p99_s']:g} s and"
        f" >= {slo['min_delivered_fraction']:.0%} delivered within step + tail"
    )
    for col in ("offered", "sent", "delivered", "p50", "p95", "p99", "backlog", "left", "slope"):
        t.add_column(col, justify="right")
    t.add_column("verdict")
    failures = []
    for s in sorted(doc["steps"], key=lambda s: s["offered_rate_per_s"]):
        offered = f"{s['offered_rate_per_s']:.1f}" + ("b" if s["phase"] == Phase.BISECT else "")
        if not s["passed"]:
            failures.append(f"{offered}/s: " + "; ".join(s["reasons"]))
        t.add_row(
            offered,
            f"{s['achieved_send_rate_per_s']:.1f}",
            f"{s['delivered_rate_per_s']:.1f}",
            _fmt(s["p50_s"]),
            _fmt(s["p95_s"]),
            _fmt(s["p99_s"]),
            str(s["backlog_at_step_end"]),
            str(s["backlog_after_tail"]),
            f"{s['backlog_slope_per_s']:+.1f}",
            "pass" if s["passed"] else "[red]FAIL[/]",
        )
    console.print(t)
    console.print(
        "backlog: sent but not received at the step's end; left: after the tail;"
        " slope: backlog growth over the step's second half; b: bisection step"
    )
    for line in failures:
        console.print(f"failed {line}")
    hw = doc.get("hardware")
    if isinstance(hw, dict):
        console.print(
            f"engine: dtype {hw.get('dtype')}, {hw.get('threads')} model thread(s), "
            f"cpu {hw.get('cpu', {}).get('kind')}"
        )
    summary = doc["summary"]
    best = summary["max_sustainable_rate_per_s"]
    console.print(
        "max sustainable rate: "
        + ("none" if best is None else f"[bold]{best:.1f} tickets/s[/]")
        + (
            f"; first failing {summary['first_failing_rate_per_s']:.1f}/s"
            f" (delivered {summary['saturated_delivered_rate_per_s']:.1f}/s there)"
            if summary["first_failing_rate_per_s"] is not None
            else ""
        )
        + f"; stopped: {summary['stopped_because']}"
    )
