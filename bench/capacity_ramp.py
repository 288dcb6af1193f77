"""Capacity ramp logic: which rate comes next, what a step measured, whether it passed.

Owns the ramp (which rate comes next, when to stop, one optional bisection step), the
per-step figures and verdict and the summary: pure functions of timestamps and counts
(`step_figures`, `judge`, `next_rate`, `summarise`, `to_json`). No I/O, no clock, no
Kafka: `bench.capacity` runs a ramp against an in-process worker and `bench.probe` against
a deployed one, and both hand their observations here.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

# Points of a step's backlog curve, evenly spread over its window.
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
