"""What routing does to a calibrated desk's resolution times, with intervals.

Owns the simulation of a desk fitted on a real history (`loadgen.desk_file`): a delay
model, vectorised with numpy. Every ticket gets a group and priority from the desk's mix and
the path the desk's own dispatch would have given it (first group right or wrong, its further
hops, its time in the final group); a routing method then decides only whether the *first*
group is right. A wrong first group costs the first-hop time (drawn per ticket, the same for
every method); everything after it belongs to the ticket (see the desk file's confounding
statement). A ticket a router sends to triage is dispatched by the desk's people: their
delay, and the desk's own right-or-wrong for that ticket.

Why no agents and queues here (the toy desk of `bench.mttr` has them): a real desk's days
of resolution time are mostly waiting (backlog, business hours, pending customers), which the
fitted times already hold at the desk's own staffing. The model assumes the desk keeps that
service level at the simulated volume.

Uncertainty: the point figures use the fit on the whole history; the intervals come from
replicates, each with the parameters refitted on a bootstrap resample of the history's
incidents, a bootstrap resample of the simulated day's tickets and its own seed. Pure: no
I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.mttr import Comparison, Scenario, ScenarioResult
from loadgen.desk_file import QUANTILE_LEVELS, DeskFile, DeskParameters, DurationModel

Rng = np.random.Generator
Array = NDArray[np.float64]
Bools = NDArray[np.bool_]

DESK_DISPATCH = "desk's own dispatch (observed)"
REPLICATE_TICKETS = 20_000
INTERVAL = (2.5, 97.5)


@dataclass(frozen=True, slots=True)
class Tickets:
    """The simulated tickets: group, priority and the desk's own path for each.

    Attributes:
        groups, priorities: each ticket's final group and priority.
        desk_right: the desk's own dispatch sends it to the right group first.
        first_hop_h: hours it would spend in a wrong first group (used only if sent wrong).
        rest_h: hours from reaching its path after the first group (further hops and the
            final group's time) for its class.
        rest_hops: handoffs in `rest_h`.
        dispatch_h: the desk's dispatch delay for it.
    """

    groups: NDArray[np.str_]
    priorities: NDArray[np.str_]
    desk_right: Bools
    first_hop_h: Array
    rest_h: Array
    rest_hops: NDArray[np.int64]
    dispatch_h: Array

    def __len__(self) -> int:
        return int(self.desk_right.size)


@dataclass(frozen=True, slots=True)
class Routed:
    """A routing method's outcome for every ticket.

    Attributes:
        delay_h: hours until the first assignment (a triaged ticket adds the desk's
            dispatch delay to the router's).
        right: the first assignment is the right group.
        triaged: the router sent it to the desk's people.
        decision_h: the router's (or the desk's dispatch) own time, triage not included.
    """

    delay_h: Array
    right: Bools
    triaged: Bools
    decision_h: Array


def _residual(q: Sequence[float] | None, sigma: float, n: int, rng: Rng) -> Array:
    if q is None:
        return sigma * rng.standard_normal(n)
    return np.interp(rng.random(n), QUANTILE_LEVELS, q)


def draw_durations(
    model: DurationModel,
    *,
    priorities: NDArray[np.str_],
    groups: NDArray[np.str_] | None,
    rng: Rng,
    shift: float = 0.0,
    shape: DurationModel | None = None,
) -> Array:
    """Hours for each ticket: located by its group and priority (`model`), shaped by the
    residual quantiles of `shape` (default `model`), a group's own where it has them."""
    shape = shape or model
    n = priorities.size
    mu = np.full(n, model.intercept + shift)
    for name, effect in model.priorities.items():
        mu[priorities == name] += effect
    residual = _residual(shape.residual_quantiles, shape.sigma, n, rng)
    if groups is not None:
        for name, effect in model.groups.items():
            mu[groups == name] += effect
        for name, q in shape.group_residual_quantiles.items():
            mask = groups == name
            residual[mask] = _residual(q, shape.sigma, int(mask.sum()), rng)
    hours = np.exp(mu + residual)
    cap = shape.max_h or model.max_h
    return np.minimum(hours, cap) if cap else hours


def draw_pmf(pmf: Mapping[int, float], n: int, rng: Rng) -> NDArray[np.int64]:
    """`n` draws of a count from its pmf."""
    values = np.asarray(list(pmf), dtype=np.int64)
    p = np.asarray(list(pmf.values()), dtype=np.float64)
    return values[rng.choice(values.size, size=n, p=p / p.sum())]


def draw_quantiles(quantiles: Sequence[float], n: int, rng: Rng) -> Array:
    """`n` draws from a distribution given by its quantiles at `QUANTILE_LEVELS`."""
    return np.interp(rng.random(n), QUANTILE_LEVELS, quantiles)


def _hops_time(
    model: DurationModel, hops: NDArray[np.int64], pr: NDArray[np.str_], rng: Rng
) -> Array:
    """Sum of `hops` later-hop times per ticket."""
    total = np.zeros(hops.size)
    for h in range(1, int(hops.max(initial=0)) + 1):
        mask = hops >= h
        total[mask] += draw_durations(model, priorities=pr[mask], groups=None, rng=rng)
    return total


def draw_tickets(
    params: DeskParameters,
    *,
    groups: NDArray[np.str_],
    priorities: NDArray[np.str_],
    rng: Rng,
    desk_right: Bools | None = None,
) -> Tickets:
    """Each ticket's path under the desk's own dispatch (right first with the desk's
    accuracy, unless `desk_right` gives it, as when replaying a history's own routing)."""
    n = groups.size
    if desk_right is None:
        desk_right = rng.random(n) < params.first_assignment_accuracy
    bounces = draw_pmf(params.hops_if_right, n, rng)
    further = draw_pmf(params.further_hops_if_wrong, n, rng)
    hops = np.where(desk_right, bounces, further)
    res = params.resolution
    plain = draw_durations(res, priorities=priorities, groups=groups, rng=rng)
    handed = draw_durations(
        res,
        priorities=priorities,
        groups=groups,
        rng=rng,
        shift=res.after_handoff_shift,
        shape=res.after_handoff,
    )
    # A ticket reaches its final group by a handoff when it was sent wrong, or bounced.
    final_h = np.where(desk_right & (hops == 0), plain, handed)
    return Tickets(
        groups=groups,
        priorities=priorities,
        desk_right=desk_right,
        first_hop_h=draw_durations(params.first_hop, priorities=priorities, groups=None, rng=rng),
        rest_h=final_h + _hops_time(params.later_hop, hops, priorities, rng),
        rest_hops=hops,
        dispatch_h=draw_quantiles(params.dispatch_delay_h, n, rng),
    )


def desk_routing(tickets: Tickets) -> Routed:
    """The desk's own dispatch: its delay, its right-or-wrong."""
    return Routed(
        delay_h=tickets.dispatch_h,
        right=tickets.desk_right,
        triaged=np.zeros(len(tickets), dtype=bool),
        decision_h=tickets.dispatch_h,
    )


def scenario_routing(
    scenario: Scenario, *, truths: Sequence[str], tickets: Tickets, rng: Rng
) -> Routed:
    """A router's outcome per ticket from its `decide`; triage goes to the desk's people.

    A manual-dispatch scenario (one with a dispatch desk) is the desk's own routing.
    """
    if scenario.dispatch is not None:
        return desk_routing(tickets)
    n = len(tickets)
    delay_h = np.empty(n)
    right = np.empty(n, dtype=bool)
    triaged = np.empty(n, dtype=bool)
    for i, truth in enumerate(truths):
        r = scenario.decide(truth, rng)
        delay_h[i] = r.delay_s / 3600
        triaged[i] = r.to_triage or r.queue is None
        right[i] = r.queue == truth
    right = np.where(triaged, tickets.desk_right, right)
    return Routed(
        delay_h=np.where(triaged, delay_h + tickets.dispatch_h, delay_h),
        right=right,
        triaged=triaged,
        decision_h=delay_h,
    )


def resolution_h(tickets: Tickets, routed: Routed) -> tuple[Array, NDArray[np.int64]]:
    """Hours from opening to resolution, and handoffs, for each ticket under a routing."""
    wrong = ~routed.right
    hours = routed.delay_h + np.where(wrong, tickets.first_hop_h, 0.0) + tickets.rest_h
    return hours, tickets.rest_hops + wrong


def stats(hours: Array) -> dict[str, float]:
    """Mean, median and p90 of resolution hours."""
    return {
        "mean_h": float(hours.mean()),
        "median_h": float(np.median(hours)),
        "p90_h": float(np.percentile(hours, 90)),
    }


@dataclass(slots=True)
class _Replicate:
    """One replicate's figures: per method stats, per pair the difference of each stat."""

    by_method: dict[str, dict[str, float]] = field(default_factory=dict)


def _mix_draw(desk: DeskFile, n: int, rng: Rng) -> tuple[NDArray[np.str_], NDArray[np.str_]]:
    shares = np.asarray([m.share for m in desk.mix], dtype=np.float64)
    pick = rng.choice(len(desk.mix), size=n, p=shares / shares.sum())
    groups = np.asarray([m.group for m in desk.mix])[pick]
    priorities = np.asarray([m.priority for m in desk.mix])[pick]
    return groups, priorities


def _run_methods(
    params: DeskParameters,
    desk: DeskFile,
    scenarios: Sequence[Scenario],
    *,
    truths: Sequence[str],
    rng: Rng,
) -> tuple[Tickets, dict[str, tuple[Routed, Array, NDArray[np.int64]]]]:
    groups, priorities = _mix_draw(desk, len(truths), rng)
    tickets = draw_tickets(params, groups=groups, priorities=priorities, rng=rng)
    out: dict[str, tuple[Routed, Array, NDArray[np.int64]]] = {}
    for s in scenarios:
        routed = scenario_routing(s, truths=truths, tickets=tickets, rng=rng)
        hours, hops = resolution_h(tickets, routed)
        out[s.name] = (routed, hours, hops)
    return tickets, out


def _interval(values: Sequence[float]) -> list[float]:
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), INTERVAL)
    return [float(lo), float(hi)]


def compare_calibrated(
    desk: DeskFile,
    scenarios: Sequence[Scenario],
    *,
    truths: Sequence[str],
    seed: int,
    days: float,
    baseline: str,
    assumptions: Mapping[str, float],
    replicates: int | None = None,
    replicate_tickets: int = REPLICATE_TICKETS,
) -> tuple[Comparison, dict[str, Any]]:
    """Every method on the same simulated tickets of the calibrated desk, with intervals.

    Args:
        desk: the fitted desk.
        scenarios: routing methods (one with a dispatch desk stands for the desk's own).
        truths: each ticket's true queue in the router's taxonomy (the day's tickets).
        seed: seed of the point run; replicate b uses (seed, b).
        days: how many days the tickets stand for.
        baseline: the method differences are taken against.
        assumptions: agent minutes the export cannot give: `reassignment_effort_min`,
            `triage_min`, `dispatch_min_per_ticket`.
        replicates: how many bootstrap replicates (None: all the desk file holds).
        replicate_tickets: tickets per replicate (a bootstrap resample of the day's).

    Returns:
        The comparison (point figures) and the intervals: per method and statistic, and per
        method the difference against `baseline` with its verdict.
    """
    rng = np.random.default_rng(seed)
    tickets, runs = _run_methods(desk.parameters, desk, scenarios, truths=truths, rng=rng)
    n = len(truths)
    results = [_result(s, runs[s.name], n=n, assumptions=assumptions) for s in scenarios]
    reps = desk.replicates[: replicates if replicates is not None else len(desk.replicates)]
    figures: list[_Replicate] = []
    truths_arr = np.asarray(truths)
    for b, params in enumerate(reps):
        rrng = np.random.default_rng([seed, b + 1])
        sample = truths_arr[rrng.integers(0, n, size=min(n, replicate_tickets))].tolist()
        _, rruns = _run_methods(params, desk, scenarios, truths=sample, rng=rrng)
        figures.append(_Replicate({name: stats(r[1]) for name, r in rruns.items()}))
    intervals = _intervals(results, figures, baseline=baseline)
    for r in results:
        r.extras["intervals"] = intervals["methods"].get(r.name, {})
    comparison = Comparison(results=results, tickets_per_day=n / days, days=days)
    intervals["replicates"] = len(figures)
    intervals["replicate_tickets"] = min(n, replicate_tickets)
    del tickets
    return comparison, intervals


def _result(
    scenario: Scenario,
    run: tuple[Routed, Array, NDArray[np.int64]],
    *,
    n: int,
    assumptions: Mapping[str, float],
) -> ScenarioResult:
    routed, hours, hops = run
    s = stats(hours)
    misrouted = int((~routed.right).sum())
    triaged = int(routed.triaged.sum())
    is_desk = scenario.dispatch is not None
    # A router's own time per ticket, as on the toy desk: triage is counted in MTTR, not here.
    latency_s = float(routed.decision_h.mean() * 3600) if is_desk else scenario.routing_latency_s
    return ScenarioResult(
        name=scenario.name,
        tickets=n,
        resolved=n,
        mttr_mean_h=s["mean_h"],
        mttr_p50_h=s["median_h"],
        mttr_p90_h=s["p90_h"],
        wait_any_share=0.0,  # a delay model: the waiting is inside the fitted times
        misrouted=misrouted,
        triaged=triaged,
        routing_latency_s=latency_s,
        routing_hours=latency_s * n / 3600,
        penalty_agent_hours=misrouted * assumptions.get("reassignment_effort_min", 0.0) / 60,
        triage_agent_hours=triaged * assumptions.get("triage_min", 0.0) / 60,
        dispatch_agent_hours=(n * assumptions.get("dispatch_min_per_ticket", 0.0) / 60)
        if is_desk
        else 0.0,
        extras={
            "routing_median_s": float(np.median(routed.decision_h) * 3600),
            "first_assignment_right": float(routed.right.mean()),
            "median_h_by_reassignments": _medians_by_hops(hours, hops),
        },
    )


def _medians_by_hops(hours: Array, hops: NDArray[np.int64]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for label, mask in (
        ("0", hops == 0),
        ("1", hops == 1),
        ("2", hops == 2),
        ("3+", hops >= 3),
    ):
        out[label] = float(np.median(hours[mask])) if mask.any() else None
    return out


def _intervals(
    results: Sequence[ScenarioResult], figures: Sequence[_Replicate], *, baseline: str
) -> dict[str, Any]:
    keys = ("mean_h", "median_h", "p90_h")
    point = {
        r.name: {"mean_h": r.mttr_mean_h, "median_h": r.mttr_p50_h, "p90_h": r.mttr_p90_h}
        for r in results
    }
    methods: dict[str, dict[str, list[float]]] = {}
    differences: dict[str, dict[str, Any]] = {}
    if not figures:
        return {"methods": methods, "differences": differences, "interval": list(INTERVAL)}
    for name in point:
        methods[name] = {k: _interval([f.by_method[name][k] for f in figures]) for k in keys}
    pairs = [(r.name, baseline) for r in results if r.name != baseline]
    others = [r.name for r in results if r.name != baseline]
    pairs += [(a, b) for i, a in enumerate(others) for b in others[i + 1 :]]
    for a, b in pairs:
        diff: dict[str, Any] = {}
        for k in keys:
            lo, hi = _interval([f.by_method[a][k] - f.by_method[b][k] for f in figures])
            diff[k] = {
                "point": point[a][k] - point[b][k],
                "interval": [lo, hi],
                "verdict": "no difference"
                if lo <= 0.0 <= hi
                else ("shorter" if hi < 0 else "longer"),
            }
        differences[f"{a} vs {b}"] = diff
    return {"methods": methods, "differences": differences, "interval": list(INTERVAL)}


def desk_summary(desk: DeskFile) -> dict[str, Any]:
    """What mttr.json and the report say about the desk."""
    p = desk.parameters
    return {
        "name": desk.name,
        "citation": desk.provenance.citation,
        "kind": "calibrated",
        "source": desk.provenance.source,
        "format": desk.provenance.format,
        "incidents": desk.provenance.incidents,
        "censored": desk.provenance.censored,
        "fitted_at": desk.provenance.fitted_at,
        "first_assignment_accuracy": p.first_assignment_accuracy,
        "first_hop_median_h": desk.confounding.first_hop_median_h,
        "confounding": desk.confounding.model_dump(),
        "validation": desk.validation,
        "assumptions": dict(desk.assumptions),
    }


def scenario_result_json(result: ScenarioResult) -> dict[str, Any]:
    """A result as JSON (the comparison's rows)."""
    return asdict(result)
