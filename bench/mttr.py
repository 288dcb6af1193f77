"""What routing does to resolution time: a SimPy model of the service desk behind the queues.

Owns the discrete-event model (agents per queue, handling-time distributions, a
reassignment penalty per misroute, a human triage desk, an optional manual dispatch desk)
and the routing scenarios fed into it: this router (measured decisions and latencies), a
cloud-LLM router and manual dispatch. Pure: no I/O; seeded.

A ticket's life: arrives -> is routed (router delay, or waits for a dispatcher) -> if sent
to triage, waits for a triage agent -> if misrouted, waits in the wrong queue until an
agent there spends the reassignment penalty on it -> waits for an agent of its own queue ->
is resolved. MTTR is resolution minus arrival.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import simpy

from loadgen.desk_model import DeskAssumptions, HandlingTime

Rng = np.random.Generator


@dataclass(frozen=True, slots=True)
class Desk:
    """Agents working one queue (or the triage / dispatch desk)."""

    agents: int
    handling: HandlingTime


@dataclass(frozen=True, slots=True)
class ServiceDesk:
    """The people behind the queues.

    Attributes:
        queues: one desk per resolver queue.
        triage: the human triage desk (assigns correctly, after `triage.handling`).
        reassignment_penalty: agent time a misrouted ticket costs in the wrong queue before
            it is passed on.
    """

    queues: Mapping[str, Desk]
    triage: Desk
    reassignment_penalty: HandlingTime


@dataclass(frozen=True, slots=True)
class Routing:
    """One routing decision: delay in seconds, then triage or a queue."""

    delay_s: float
    to_triage: bool
    queue: str | None


class Scenario:
    """A way of routing tickets.

    Args:
        name: shown in reports.
        decide: (truth queue, rng) -> Routing; the router's delay and answer.
        dispatch: when set, a human dispatch desk routes every ticket (manual dispatch):
            the ticket waits for a dispatcher, who spends `dispatch.handling` on it; the
            router delay of `decide` is then ignored.
        routing_latency_s: per-ticket routing time used for the reference's
            "latency x tickets" figure.
    """

    def __init__(
        self,
        *,
        name: str,
        decide: Callable[[str, Rng], Routing],
        routing_latency_s: float,
        dispatch: Desk | None = None,
    ) -> None:
        self.name = name
        self.decide = decide
        self.routing_latency_s = routing_latency_s
        self.dispatch = dispatch


def _misroute_target(truth: str, queues: Sequence[str], rng: Rng) -> str:
    others = [q for q in queues if q != truth]
    return others[int(rng.integers(0, len(others)))] if others else truth


def parametric_scenario(
    *,
    name: str,
    queues: Sequence[str],
    latency_s: float,
    accuracy: float,
    triage_share: float = 0.0,
    dispatch: Desk | None = None,
) -> Scenario:
    """A router described by a constant latency, an accuracy and a triage share.

    Misroutes go to a uniformly chosen other queue.
    """
    if not 0.0 <= accuracy <= 1.0 or not 0.0 <= triage_share <= 1.0:
        raise ValueError("accuracy and triage_share must be in [0, 1]")

    def decide(truth: str, rng: Rng) -> Routing:
        if rng.random() < triage_share:
            return Routing(latency_s, True, None)
        if rng.random() < accuracy:
            return Routing(latency_s, False, truth)
        return Routing(latency_s, False, _misroute_target(truth, queues, rng))

    return Scenario(name=name, decide=decide, routing_latency_s=latency_s, dispatch=dispatch)


def cloud_llm_scenario(
    *,
    queues: Sequence[str],
    ttft_s: float = 0.85,
    per_ticket_s: float = 2.5,
    accuracy: float = 0.911,
) -> Scenario:
    """A hosted LLM classifying each ticket (defaults: 850 ms TTFT, 2.5 s, 91.1%).

    `per_ticket_s` is the whole request; `ttft_s` is part of it and only reported.
    """
    del ttft_s
    return parametric_scenario(
        name="cloud LLM router", queues=queues, latency_s=per_ticket_s, accuracy=accuracy
    )


def manual_scenario(
    *,
    queues: Sequence[str],
    dispatchers: int,
    minutes_per_ticket: float,
    accuracy: float = 0.85,
) -> Scenario:
    """Human dispatchers reading every ticket and assigning a queue."""
    dispatch = Desk(dispatchers, HandlingTime(minutes_per_ticket))
    scenario = parametric_scenario(
        name="manual dispatch", queues=queues, latency_s=0.0, accuracy=accuracy, dispatch=dispatch
    )
    scenario.routing_latency_s = minutes_per_ticket * 60
    return scenario


@dataclass(frozen=True, slots=True)
class MeasuredDecision:
    """One measured router outcome (from `bench.collect.TicketOutcome`)."""

    truth: str
    kind: str  # routed | triage | dead_letter
    predicted: str | None
    latency_s: float


ANSWERED_KINDS = ("routed", "triage", "dead_letter")


def decisions_from_outcomes(
    outcomes: Iterable[Mapping[str, Any]],
) -> tuple[list[MeasuredDecision], int]:
    """The measured decisions the model may use, and how many backlogged ones it left out.

    `outcomes` are `bench.collect.TicketOutcome` rows (as in outcomes.jsonl). Only answered
    tickets sent while the router kept up count: one sent while it was saturated
    (`backlogged`) waited behind a backlog the load generator built by compressing time, so
    its latency is not the router's and must never drive the router's routing time, nor
    its cost against manual dispatch.
    """
    kept: list[MeasuredDecision] = []
    backlogged = 0
    for o in outcomes:
        if o["kind"] not in ANSWERED_KINDS or o["latency_s"] is None:
            continue
        if o.get("backlogged"):
            backlogged += 1
            continue
        kept.append(MeasuredDecision(o["truth"], o["kind"], o["predicted"], o["latency_s"]))
    return kept, backlogged


def measured_scenario(
    decisions: Sequence[MeasuredDecision], *, name: str, queues: Sequence[str]
) -> Scenario:
    """This router as measured: each ticket replays a measured decision of its true queue.

    Dead-lettered tickets go to the triage desk (a human reads them); tickets of a queue
    never measured draw from all measurements.

    Raises:
        ValueError: no decisions.
    """
    if not decisions:
        raise ValueError("no measured decisions")
    by_truth: dict[str, list[MeasuredDecision]] = {}
    for d in decisions:
        by_truth.setdefault(d.truth, []).append(d)
    everything = list(decisions)

    def decide(truth: str, rng: Rng) -> Routing:
        pool = by_truth.get(truth, everything)
        d = pool[int(rng.integers(0, len(pool)))]
        if d.kind != "routed" or d.predicted is None:
            return Routing(d.latency_s, True, None)
        if d.truth == truth:
            return Routing(d.latency_s, False, d.predicted)
        # Borrowed from another queue: keep its correctness, not its label.
        correct = d.predicted == d.truth
        queue = truth if correct else _misroute_target(truth, queues, rng)
        return Routing(d.latency_s, False, queue)

    mean_latency = float(np.mean([d.latency_s for d in decisions]))
    return Scenario(name=name, decide=decide, routing_latency_s=mean_latency)


@dataclass(slots=True)
class ScenarioResult:
    """What one scenario did to resolution time and agent effort."""

    name: str
    tickets: int
    resolved: int
    mttr_mean_h: float
    mttr_p50_h: float
    mttr_p90_h: float
    wait_any_share: float  # tickets that waited for an agent of their own queue
    misrouted: int
    triaged: int
    routing_latency_s: float
    routing_hours: float  # reference method: routing latency x tickets
    penalty_agent_hours: float
    triage_agent_hours: float
    dispatch_agent_hours: float
    extras: dict[str, Any] = field(default_factory=dict)


class _Run:
    """One simulation: the environment, desks and per-ticket records."""

    def __init__(self, desk: ServiceDesk, scenario: Scenario, *, seed: int) -> None:
        self.env = simpy.Environment()
        self.desk = desk
        self.scenario = scenario
        self.rng = np.random.default_rng(seed)
        self.agents = {q: simpy.Resource(self.env, d.agents) for q, d in desk.queues.items()}
        self.triage = simpy.Resource(self.env, desk.triage.agents)
        self.dispatch = (
            simpy.Resource(self.env, scenario.dispatch.agents) if scenario.dispatch else None
        )
        self.resolution_min: list[float] = []
        self.waited = 0
        self.misrouted = 0
        self.triaged = 0
        self.minutes = {"penalty": 0.0, "triage": 0.0, "dispatch": 0.0}

    def _serve(self, resource: simpy.Resource, minutes: float) -> Any:
        with resource.request() as req:
            yield req
            yield self.env.timeout(minutes)

    def ticket(self, truth: str) -> Any:
        env, rng = self.env, self.rng
        born = env.now
        routing = self.scenario.decide(truth, rng)
        if self.dispatch is not None and self.scenario.dispatch is not None:
            minutes = self.scenario.dispatch.handling.draw_min(rng)
            self.minutes["dispatch"] += minutes
            yield from self._serve(self.dispatch, minutes)
        else:
            yield env.timeout(routing.delay_s / 60)
        if routing.to_triage or routing.queue not in self.agents:
            self.triaged += 1
            minutes = self.desk.triage.handling.draw_min(rng)
            self.minutes["triage"] += minutes
            yield from self._serve(self.triage, minutes)
        elif routing.queue != truth:
            self.misrouted += 1
            minutes = self.desk.reassignment_penalty.draw_min(rng)
            self.minutes["penalty"] += minutes
            yield from self._serve(self.agents[routing.queue], minutes)
        with self.agents[truth].request() as req:
            asked = env.now
            yield req
            self.waited += env.now > asked
            yield env.timeout(self.desk.queues[truth].handling.draw_min(rng))
        self.resolution_min.append(env.now - born)

    def arrivals(self, times_min: Sequence[float], truths: Sequence[str]) -> Any:
        for t, truth in zip(times_min, truths, strict=True):
            yield self.env.timeout(max(0.0, t - self.env.now))
            self.env.process(self.ticket(truth))


def simulate(
    desk: ServiceDesk,
    scenario: Scenario,
    *,
    arrivals_s: Sequence[float],
    truths: Sequence[str],
    seed: int,
    warmup: int = 0,
) -> ScenarioResult:
    """Run one scenario over the given arrivals until every ticket is resolved.

    Args:
        desk: agents and handling times.
        scenario: how tickets are routed.
        arrivals_s: arrival times in seconds, ascending.
        truths: each ticket's true queue (must be a queue of `desk`).
        seed: randomness of decisions and handling times.
        warmup: resolutions dropped from the statistics (steady-state tests).

    Raises:
        ValueError: a true queue has no desk, or lengths differ.
    """
    unknown = set(truths) - set(desk.queues)
    if unknown:
        raise ValueError(f"no desk for queues {sorted(unknown)}")
    run = _Run(desk, scenario, seed=seed)
    times_min = [t / 60 for t in arrivals_s]
    run.env.process(run.arrivals(times_min, truths))
    run.env.run()
    res = np.asarray(run.resolution_min[warmup:], dtype=np.float64) / 60
    n = len(truths)
    return ScenarioResult(
        name=scenario.name,
        tickets=n,
        resolved=len(run.resolution_min),
        mttr_mean_h=float(res.mean()) if res.size else math.nan,
        mttr_p50_h=float(np.percentile(res, 50)) if res.size else math.nan,
        mttr_p90_h=float(np.percentile(res, 90)) if res.size else math.nan,
        wait_any_share=run.waited / n if n else 0.0,
        misrouted=run.misrouted,
        triaged=run.triaged,
        routing_latency_s=scenario.routing_latency_s,
        routing_hours=scenario.routing_latency_s * n / 3600,
        penalty_agent_hours=run.minutes["penalty"] / 60,
        triage_agent_hours=run.minutes["triage"] / 60,
        dispatch_agent_hours=run.minutes["dispatch"] / 60,
    )


def erlang_c(*, agents: int, offered_load: float) -> float:
    """Probability an arrival waits in M/M/c (Erlang C); `offered_load` = lambda / mu."""
    c, a = agents, offered_load
    if a >= c:
        return 1.0
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def staff(
    *,
    peak_per_h: Mapping[str, float],
    handling: Mapping[str, HandlingTime],
    utilisation: float = 0.85,
) -> dict[str, int]:
    """Agents per queue so the busiest hour runs at `utilisation` at most."""
    return {
        q: max(1, math.ceil(rate * handling[q].mean_min / 60 / utilisation))
        for q, rate in peak_per_h.items()
    }


@dataclass(frozen=True, slots=True)
class Comparison:
    """All scenarios over the same arrivals, and the savings versus manual dispatch."""

    results: list[ScenarioResult]
    tickets_per_day: float
    days: float

    def saved_vs(self, baseline: str) -> dict[str, dict[str, float]]:
        """Hours per day each scenario saves against `baseline`, both ways of counting.

        `reference_hours_per_day`: (baseline routing latency - routing latency) x tickets,
        the reference's method. `ticket_hours_per_day`: (baseline MTTR - MTTR) x tickets,
        from the simulation. `agent_hours_per_day`: dispatch, triage and reassignment time
        people no longer spend.
        """
        base = next(r for r in self.results if r.name == baseline)
        out: dict[str, dict[str, float]] = {}
        for r in self.results:
            if r.name == baseline:
                continue

            def effort(x: ScenarioResult) -> float:
                return x.penalty_agent_hours + x.triage_agent_hours + x.dispatch_agent_hours

            out[r.name] = {
                "reference_hours_per_day": (base.routing_latency_s - r.routing_latency_s)
                * self.tickets_per_day
                / 3600,
                "ticket_hours_per_day": (base.mttr_mean_h - r.mttr_mean_h) * self.tickets_per_day,
                "agent_hours_per_day": (effort(base) - effort(r)) / self.days,
            }
        return out


def compare(
    desk: ServiceDesk,
    scenarios: Sequence[Scenario],
    *,
    arrivals_s: Sequence[float],
    truths: Sequence[str],
    seed: int,
    days: float | None = None,
) -> Comparison:
    """Simulate every scenario on the same arrivals and seed.

    Args:
        days: how many days the arrivals stand for; by default their span.
    """
    results = [
        simulate(desk, s, arrivals_s=arrivals_s, truths=truths, seed=seed) for s in scenarios
    ]
    if days is None:
        span_s = max(arrivals_s[-1] - arrivals_s[0], 1.0) if len(arrivals_s) else 1.0
        days = span_s / 86_400
    return Comparison(results=results, tickets_per_day=len(arrivals_s) / days, days=days)


def build_desk(
    assumptions: DeskAssumptions,
    *,
    tiers: Mapping[str, str],
    peak_per_h: Mapping[str, float],
    triage_share: float,
) -> ServiceDesk:
    """Staff every queue and the triage desk for the busiest hour at the target utilisation.

    Args:
        assumptions: handling times and staffing target.
        tiers: queue -> tier name (L1/L2/L3).
        peak_per_h: queue -> tickets in the busiest hour of normal traffic.
        triage_share: expected share of tickets sent to triage (sizes the triage desk).
    """
    handling = {
        q: HandlingTime(assumptions.handling_min_by_tier[tiers[q]], assumptions.handling_cv)
        for q in tiers
    }
    agents = staff(peak_per_h=peak_per_h, handling=handling, utilisation=assumptions.utilisation)
    triage_time = HandlingTime(assumptions.triage_min, assumptions.handling_cv)
    triage_agents = staff(
        peak_per_h={"triage": sum(peak_per_h.values()) * max(triage_share, 0.01)},
        handling={"triage": triage_time},
        utilisation=assumptions.utilisation,
    )["triage"]
    return ServiceDesk(
        queues={q: Desk(agents[q], handling[q]) for q in tiers},
        triage=Desk(triage_agents, triage_time),
        reassignment_penalty=HandlingTime(assumptions.reassignment_penalty_min),
    )


def dispatchers_for(assumptions: DeskAssumptions, *, peak_total_per_h: float) -> int:
    """Dispatchers a manual desk needs for the busiest hour at the target utilisation."""
    return max(
        1,
        math.ceil(
            peak_total_per_h * assumptions.manual_min_per_ticket / 60 / assumptions.utilisation
        ),
    )


def assign_truths(
    storm_queues: Sequence[str | None], *, shares: Mapping[str, float], seed: int
) -> list[str]:
    """Each arrival's true queue: its storm's queue, else drawn from `shares` (pure)."""
    names = list(shares)
    p = np.asarray([shares[q] for q in names], dtype=np.float64)
    draws = np.random.default_rng(seed).choice(len(names), size=len(storm_queues), p=p / p.sum())
    return [
        sq if sq is not None else names[int(d)] for sq, d in zip(storm_queues, draws, strict=True)
    ]


def comparison_json(
    comparison: Comparison, *, baseline: str, assumptions: Mapping[str, Any]
) -> dict[str, Any]:
    """JSON-ready form of a comparison, as `bench.report` reads it."""
    return {
        "tickets": comparison.results[0].tickets if comparison.results else 0,
        "days": comparison.days,
        "tickets_per_day": comparison.tickets_per_day,
        "baseline": baseline,
        "results": [asdict(r) for r in comparison.results],
        "saved_vs_baseline": comparison.saved_vs(baseline),
        "assumptions": dict(assumptions),
    }
