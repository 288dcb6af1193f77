"""Fitting a desk to a ticket history: the parameters of `loadgen.desk_file` from incidents.

Owns the fit. From each incident (`bench.itsm_exports.Incident`) it takes the dispatch delay
(opening to first assignment), whether the first group was the final one, the time spent in
each group that passed the ticket on (the first, wrong group's time is the first hop), and
the time from reaching the final group to resolution. Then:
- time to resolve in the final group: a lognormal regression on group (groups with fewer
  than `min_group_incidents` pooled as "other groups") and priority, with a shift and its
  own spread for tickets that arrived by a handoff; ridge-shrunk effects; incidents still
  open at the export's end enter as censored (at least their age), never dropped;
- first hop and later hops: lognormal regressions on priority;
- further hops after a wrong first group, and bounces of a right one: counts of resolved
  incidents;
- the confounding: within the same group and priority, how much longer reassigned tickets
  take (a censored lognormal regression), and how much of that the first hop explains.
The export's days and hours are kept as they are: nights, weekends and pending states are
inside the fitted times. Bootstrap replicates refit everything on resampled incidents.

Exports without handoff times (one row per incident) cannot separate hop time from the
final group's time: their hop parameters and confounding are borrowed from a reference desk
(the shipped one), and the desk file says so. Pure apart from nothing: no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from bench.itsm_exports import History, Incident
from bench.survival import fit_lognormal, km_quantile, km_quantiles, one_hot
from loadgen.desk_file import (
    QUANTILE_LEVELS,
    Arrivals,
    Confounding,
    DeskFile,
    DeskParameters,
    DurationModel,
    MixEntry,
    ResolutionModel,
)

OTHER_GROUPS = "other groups"
MAX_HOPS = 8
FLOOR_H = 1 / 60  # the exports' clock resolution: one minute


@dataclass(frozen=True, slots=True)
class FitOptions:
    """How the fit pools and shrinks.

    Attributes:
        min_group_incidents: groups with fewer incidents share the "other groups" effect.
        min_group_residuals: a group with fewer resolved incidents in a class (assigned right
            first, or by a handoff) takes that class's pooled residual shape.
        ridge: L2 penalty on group and priority effects (a normal prior of sd
            1/sqrt(ridge) on log hours).
        bootstrap: replicates refitted on resampled incidents (intervals).
        seed: the resampling's seed.
    """

    min_group_incidents: int = 10
    min_group_residuals: int = 8
    ridge: float = 1.0
    bootstrap: int = 25
    seed: int = 0


def _hours(a: datetime, b: datetime) -> float:
    return max(0.0, (b - a).total_seconds() / 3600)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the fit uses of one incident (hours).

    Attributes:
        dispatch_h: opening to first assignment.
        first_hop_h: time in the wrong first group (None: first group right, or unknown).
        later_hops_h: time in every other group that passed it on.
        final_h: reaching the final (or current) group to resolution (or to the export's
            end when open).
        handed: it reached that group by a handoff.
    """

    incident: Incident
    dispatch_h: float
    first_hop_h: float | None
    later_hops_h: tuple[float, ...]
    final_h: float | None
    handed: bool


def facts(incident: Incident) -> Facts:
    """Split an incident's time into dispatch, hops and the final group's time."""
    i = incident
    assigned = max(i.first_assigned_at or i.opened_at, i.opened_at)
    dispatch = _hours(i.opened_at, assigned)
    if i.handoffs_at is None:
        # No history: only the whole time of a never-reassigned ticket is the final group's.
        final = _hours(assigned, i.end) if i.reassignments == 0 else None
        return Facts(i, dispatch, None, (), final, i.reassignments > 0)
    marks = [assigned, *i.handoffs_at]
    dwell = [_hours(a, b) for a, b in zip(marks, marks[1:], strict=False)]
    wrong_first = bool(dwell) and not i.first_right
    return Facts(
        incident=i,
        dispatch_h=dispatch,
        first_hop_h=dwell[0] if wrong_first else None,
        later_hops_h=tuple(dwell[1:] if wrong_first else dwell),
        final_h=_hours(marks[-1], i.end),
        handed=len(marks) > 1,
    )


def group_levels(incidents: Sequence[Incident], *, min_incidents: int) -> list[str]:
    """Groups with enough incidents to keep their own effect, largest first."""
    counts = Counter(i.final_group for i in incidents)
    return [g for g, n in counts.most_common() if n >= min_incidents]


def _bucket(group: str, levels: Sequence[str]) -> str:
    return group if group in levels else OTHER_GROUPS


def _priority_levels(incidents: Sequence[Incident]) -> list[str]:
    return [p for p, _ in Counter(i.priority for i in incidents).most_common()]


def _residuals(
    fit_residuals: np.ndarray,
    observed: np.ndarray,
    groups: np.ndarray,
    *,
    sigma: float,
    levels: Sequence[str],
    min_residuals: int,
) -> tuple[list[float], dict[str, list[float]]]:
    """Pooled and per-group residual quantiles (groups with enough observed residuals)."""
    pooled = km_quantiles(fit_residuals, observed, QUANTILE_LEVELS, tail_sigma=sigma)
    per_group = {}
    for g in levels:
        mask = groups == g
        if int((mask & observed).sum()) >= min_residuals:
            per_group[g] = km_quantiles(
                fit_residuals[mask], observed[mask], QUANTILE_LEVELS, tail_sigma=sigma
            )
    return pooled, per_group


def fit_resolution(
    rows: Sequence[Facts],
    *,
    groups: Sequence[str],
    priorities: Sequence[str],
    options: FitOptions,
) -> ResolutionModel:
    """The final group's time: lognormal regression for the location (censored where
    still open), Kaplan-Meier quantiles of the residuals for the shape, per class (assigned
    right first, or arrived by a handoff) and per group where a group has enough."""
    used = [f for f in rows if f.final_h is not None]
    g = np.asarray([f.incident.final_group for f in used])
    p = [f.incident.priority for f in used]
    handed = np.asarray([f.handed for f in used], dtype=bool)
    design = np.column_stack(
        [np.ones(len(used)), one_hot(list(g), groups), one_hot(p, priorities[1:]), handed]
    )
    penalty = np.r_[0.0, np.full(len(groups) + len(priorities) - 1, options.ridge), 0.0]
    hours = np.asarray([f.final_h for f in used], dtype=np.float64)
    observed = np.asarray([f.incident.is_resolved for f in used], dtype=bool)
    fit = fit_lognormal(
        hours,
        observed,
        design=design,
        sigma_group=handed.astype(np.int64) if handed.any() else None,
        ridge=penalty,
    )
    b = fit.beta
    residual = np.log(np.maximum(hours, FLOOR_H)) - design @ b
    sigma_plain = float(fit.sigma[0])
    sigma_after = float(fit.sigma[1]) if fit.sigma.size > 1 else sigma_plain
    classes: dict[bool, tuple[list[float], dict[str, list[float]]]] = {}
    for is_handed, sigma in ((False, sigma_plain), (True, sigma_after)):
        mask = handed == is_handed
        if (mask & observed).any():
            classes[is_handed] = _residuals(
                residual[mask],
                observed[mask],
                g[mask],
                sigma=sigma,
                levels=groups,
                min_residuals=options.min_group_residuals,
            )
    none: tuple[list[float] | None, dict[str, list[float]]] = (None, {})
    plain = classes.get(False, none)
    after = classes.get(True, none)
    return ResolutionModel(
        intercept=float(b[0]),
        sigma=sigma_plain,
        groups={name: float(b[1 + j]) for j, name in enumerate(groups)},
        priorities={priorities[0]: 0.0}
        | {name: float(b[1 + len(groups) + j]) for j, name in enumerate(priorities[1:])},
        residual_quantiles=plain[0],
        group_residual_quantiles=plain[1],
        max_h=_longest(hours[~handed]),
        after_handoff=DurationModel(
            intercept=0.0,
            sigma=sigma_after,
            residual_quantiles=after[0],
            group_residual_quantiles=after[1],
            max_h=_longest(hours[handed]),
        ),
        after_handoff_shift=float(b[-1]) if handed.any() else 0.0,
    )


def fit_hops(
    hours: Sequence[float], priorities_of: Sequence[str], *, priorities: Sequence[str], ridge: float
) -> DurationModel:
    """Hop times: lognormal regression on priority for the location (every hop ended: no
    censoring), the residuals' quantiles for the shape."""
    design = np.column_stack([np.ones(len(hours)), one_hot(priorities_of, priorities[1:])])
    penalty = np.r_[0.0, np.full(len(priorities) - 1, ridge)]
    observed = np.ones(len(hours), dtype=bool)
    fit = fit_lognormal(hours, observed, design=design, ridge=penalty)
    b = fit.beta
    residual = np.log(np.maximum(np.asarray(hours, dtype=np.float64), FLOOR_H)) - design @ b
    return DurationModel(
        intercept=float(b[0]),
        sigma=float(fit.sigma[0]),
        priorities={priorities[0]: 0.0}
        | {name: float(b[1 + j]) for j, name in enumerate(priorities[1:])},
        residual_quantiles=km_quantiles(
            residual, observed, QUANTILE_LEVELS, tail_sigma=float(fit.sigma[0])
        ),
        max_h=_longest(np.asarray(hours, dtype=np.float64)),
    )


def _longest(hours: np.ndarray) -> float | None:
    return float(hours.max()) if hours.size else None


def pmf(counts: Sequence[int]) -> dict[int, float]:
    """The pmf of counts (capped at MAX_HOPS)."""
    c = Counter(min(int(x), MAX_HOPS) for x in counts)
    total = sum(c.values())
    return {k: c[k] / total for k in sorted(c)} if total else {0: 1.0}


@dataclass(frozen=True, slots=True)
class Reference:
    """Parameters borrowed when an export has no handoff times."""

    first_hop: DurationModel
    later_hop: DurationModel
    after_handoff_shift: float
    after_handoff: DurationModel
    further_hops_if_wrong: dict[int, float]
    hops_if_right: dict[int, float]
    confounding: Confounding
    name: str


def reference_from(desk: DeskFile) -> Reference:
    """What a desk file lends to a history without handoff times."""
    p = desk.parameters
    return Reference(
        first_hop=p.first_hop,
        later_hop=p.later_hop,
        after_handoff_shift=p.resolution.after_handoff_shift,
        after_handoff=p.resolution.after_handoff,
        further_hops_if_wrong=p.further_hops_if_wrong,
        hops_if_right=p.hops_if_right,
        confounding=desk.confounding,
        name=desk.name,
    )


def fit_parameters(
    incidents: Sequence[Incident],
    *,
    options: FitOptions,
    groups: Sequence[str] | None = None,
    reference: Reference | None = None,
) -> DeskParameters:
    """Fit every parameter on `incidents`.

    Args:
        incidents: the history (open ones included: censored).
        options: pooling and shrinkage.
        groups: the groups kept apart (None: from these incidents).
        reference: what to borrow when the incidents have no handoff times.

    Raises:
        ValueError: nothing to fit (no resolved incident, or no hop and no reference).
    """
    rows = [facts(i) for i in incidents]
    resolved = [f for f in rows if f.incident.is_resolved]
    if not resolved:
        raise ValueError("no resolved incident to fit")
    levels = (
        list(groups)
        if groups is not None
        else group_levels(incidents, min_incidents=options.min_group_incidents)
    )
    priorities = _priority_levels(incidents)
    has_times = all(f.incident.handoffs_at is not None for f in rows)
    resolution = fit_resolution(rows, groups=levels, priorities=priorities, options=options)
    dispatch = np.quantile([f.dispatch_h for f in rows], QUANTILE_LEVELS)
    accuracy = float(np.mean([f.incident.first_right for f in resolved]))
    if not has_times:
        if reference is None:
            raise ValueError("this export has no handoff times: a reference desk is needed")
        return _borrowed(resolution, reference, dispatch=dispatch, accuracy=accuracy)
    first = [(f.first_hop_h, f.incident.priority) for f in rows if f.first_hop_h is not None]
    later = [(h, f.incident.priority) for f in rows for h in f.later_hops_h]
    if not first:
        raise ValueError("no ticket was ever passed on from a wrong first group")
    first_hop = fit_hops(
        [h for h, _ in first], [p for _, p in first], priorities=priorities, ridge=options.ridge
    )
    later_hop = (
        fit_hops(
            [h for h, _ in later], [p for _, p in later], priorities=priorities, ridge=options.ridge
        )
        if len(later) >= 2
        else first_hop
    )
    return DeskParameters(
        first_assignment_accuracy=accuracy,
        dispatch_delay_h=[float(x) for x in np.maximum.accumulate(dispatch)],
        first_hop=first_hop,
        later_hop=later_hop,
        further_hops_if_wrong=pmf(
            [f.incident.reassignments - 1 for f in resolved if not f.incident.first_right]
        ),
        hops_if_right=pmf([f.incident.reassignments for f in resolved if f.incident.first_right]),
        resolution=resolution,
    )


def _borrowed(
    resolution: ResolutionModel, ref: Reference, *, dispatch: np.ndarray, accuracy: float
) -> DeskParameters:
    return DeskParameters(
        first_assignment_accuracy=accuracy,
        dispatch_delay_h=[float(x) for x in np.maximum.accumulate(dispatch)],
        first_hop=ref.first_hop,
        later_hop=ref.later_hop,
        further_hops_if_wrong=ref.further_hops_if_wrong,
        hops_if_right=ref.hops_if_right,
        resolution=resolution.model_copy(
            update={
                "after_handoff_shift": ref.after_handoff_shift,
                "after_handoff": ref.after_handoff,
            }
        ),
    )


def confounding(
    incidents: Sequence[Incident], *, groups: Sequence[str], ridge: float
) -> Confounding:
    """How much of the reassigned tickets' extra time the model blames on misrouting.

    Within the same group and priority (a censored lognormal regression of opening to
    resolution on group, priority and "reassigned"), reassigned tickets take exp(g) times as
    long. The same regression with each wrong first group's time taken out gives exp(g1);
    with every hop's time taken out, exp(g_all). The model blames the first hop only:
    (g - g1) / g of the gap on the log scale; the rest is the tickets' own (harder tickets,
    several teams needed), which better first routing would not remove.
    """
    rows = [facts(i) for i in incidents]
    priorities = _priority_levels(incidents)
    reassigned = np.asarray([f.incident.reassignments > 0 for f in rows], dtype=np.float64)
    design = np.column_stack(
        [
            np.ones(len(rows)),
            one_hot([f.incident.final_group for f in rows], groups),
            one_hot([f.incident.priority for f in rows], priorities[1:]),
            reassigned,
        ]
    )
    penalty = np.r_[0.0, np.full(len(groups) + len(priorities) - 1, ridge), 0.0]
    observed = [f.incident.is_resolved for f in rows]
    total = np.asarray([f.incident.duration_h for f in rows])
    first = np.asarray([f.first_hop_h or 0.0 for f in rows])
    hops = np.asarray([(f.first_hop_h or 0.0) + sum(f.later_hops_h) for f in rows])

    def gap(hours: np.ndarray) -> float:
        fit = fit_lognormal(np.maximum(hours, 0.0), observed, design=design, ridge=penalty)
        return float(fit.beta[-1])

    g, g1, g_all = gap(total), gap(total - first), gap(total - hops)
    share = (g - g1) / g if g > 0 else 0.0
    share_all = (g - g_all) / g if g > 0 else 0.0
    moved = [f.first_hop_h for f in rows if f.first_hop_h is not None]
    med = _km_median
    return Confounding(
        attributed_share=float(min(max(share, 0.0), 1.0)),
        all_hops_share=float(min(max(share_all, 0.0), 1.0)),
        reassigned_median_h=med([f.incident for f in rows if f.incident.reassignments > 0]),
        not_reassigned_median_h=med([f.incident for f in rows if f.incident.reassignments == 0]),
        first_hop_median_h=float(np.median(moved)) if moved else math.nan,
        explanation=(
            f"Within the same group and priority, reassigned tickets took {math.exp(g):.2f}x"
            f" as long as never-reassigned ones; without the time in a wrong first group,"
            f" {math.exp(g1):.2f}x; without the time of every hop, {math.exp(g_all):.2f}x. A"
            " right first assignment saves the first hop, so the model attributes"
            f" {100 * share:.0f}% of the gap (log scale) to misrouting. The rest stays with"
            " the ticket: later hops (it needed several teams) and a longer or shorter time"
            " in its final group are the ticket's difficulty, or work the wrong group already"
            " did, which better routing does not remove. Were every hop a misroute,"
            f" {100 * share_all:.0f}% would be."
        ),
    )


def _km_median(incidents: Sequence[Incident]) -> float:
    if not incidents:
        return math.nan
    q = km_quantile([i.duration_h for i in incidents], [i.is_resolved for i in incidents], 0.5)
    return math.nan if q is None else q


def mix(incidents: Sequence[Incident], *, groups: Sequence[str]) -> list[MixEntry]:
    """Shares of (group, priority) among the incidents; small groups pooled."""
    c = Counter((_bucket(i.final_group, groups), i.priority) for i in incidents)
    total = sum(c.values())
    return [MixEntry(group=g, priority=p, share=n / total) for (g, p), n in c.most_common()]


def arrivals(incidents: Sequence[Incident]) -> Arrivals:
    """Arrivals by hour of week, and tickets per day over the span covered."""
    opened = sorted(i.opened_at for i in incidents)
    span_h = max(_hours(opened[0], opened[-1]), 1.0)
    counts = np.zeros(168)
    for t in opened:
        counts[t.weekday() * 24 + t.hour] += 1
    # An hour of the week is covered when the span contains it at least once.
    covered = np.zeros(168, dtype=bool)
    start = opened[0].replace(minute=0, second=0, microsecond=0)
    for h in range(min(int(math.ceil(span_h)) + 1, 168)):
        at = datetime.fromtimestamp(start.timestamp() + h * 3600, tz=start.tzinfo)
        covered[at.weekday() * 24 + at.hour] = True
    total = counts.sum()
    return Arrivals(
        tickets_per_day=len(opened) / (span_h / 24),
        per_hour_of_week=[
            round(float(c / total), 6) if ok else None
            for c, ok in zip(counts, covered, strict=True)
        ],
        days_covered=span_h / 24,
    )


def bootstrap(
    incidents: Sequence[Incident],
    *,
    options: FitOptions,
    groups: Sequence[str],
    reference: Reference | None,
) -> list[DeskParameters]:
    """Parameters refitted on `options.bootstrap` resamples of the incidents."""
    rng = np.random.default_rng(options.seed)
    out: list[DeskParameters] = []
    n = len(incidents)
    for _ in range(options.bootstrap):
        sample = [incidents[int(j)] for j in rng.integers(0, n, size=n)]
        out.append(fit_parameters(sample, options=options, groups=groups, reference=reference))
    return out


def history_counts(history: History) -> dict[str, int]:
    """Incidents, resolved and censored (open at the export's end)."""
    resolved = sum(i.is_resolved for i in history.incidents)
    return {
        "incidents": len(history.incidents),
        "resolved": resolved,
        "censored": len(history.incidents) - resolved,
    }


# Agent minutes the export cannot give (it records when, not how long people worked): the
# toy desk's assumptions, carried so the agent-hours columns stay labelled assumptions.
AGENT_MINUTES = {"reassignment_effort_min": 15.0, "triage_min": 5.0, "dispatch_min_per_ticket": 4.0}


def sources(*, has_times: bool, reference: Reference | None) -> dict[str, str]:
    """How each parameter was measured, in words (the desk file's `sources`)."""
    borrowed = f"borrowed from the reference desk {reference.name!r}" if reference else ""
    no_times = " (this export has no handoff times)"
    hop = (
        "lognormal regression on priority of the time each ticket spent in a wrong first group"
        " before its first handoff (first assignment to first handoff)"
        if has_times
        else borrowed + no_times
    )
    return {
        "first_assignment_accuracy": "share of resolved incidents whose first assignment group"
        " was their final one"
        + ("" if has_times else " (no history: share never reassigned, a lower bound)"),
        "dispatch_delay_h": "quantiles of opening to first assignment, all incidents",
        "first_hop": hop,
        "later_hop": "lognormal regression on priority of the time in every other group that"
        " passed the ticket on"
        if has_times
        else borrowed + no_times,
        "further_hops_if_wrong": "handoffs after the first, resolved incidents whose first"
        " group was wrong"
        if has_times
        else borrowed + no_times,
        "hops_if_right": "handoffs of resolved incidents whose first group was right (they"
        " left it and came back)"
        if has_times
        else borrowed + no_times,
        "resolution": "censored lognormal regression (ridge-shrunk group and priority effects)"
        " of the time from reaching the final group to resolution; open incidents enter as"
        " censored at the export's end; a shift and spread of its own for tickets that"
        " arrived by a handoff" + ("" if has_times else f"; that shift {borrowed}{no_times}"),
        "mix": "shares of (final group, priority), groups under the pooling threshold as"
        f" {OTHER_GROUPS!r}",
        "arrivals": "openings per hour of the week over the span the history covers",
        "confounding": "see confounding.explanation"
        + ("" if has_times else f"; {borrowed}{no_times}"),
        "assumptions": "not in any export: agent minutes per misroute, triage and dispatch"
        " (the toy desk's assumptions; only the agent-hours columns use them)",
        "replicates": "every parameter refitted on bootstrap resamples of the incidents",
    }


def build_desk_file(
    history: History,
    *,
    name: str,
    provenance: dict[str, object],
    options: FitOptions,
    reference: Reference | None,
    validation: dict[str, object],
) -> DeskFile:
    """The desk file: the fit on the whole history, its replicates, provenance, validation."""
    from loadgen.desk_file import Provenance

    incidents = list(history.incidents)
    levels = group_levels(incidents, min_incidents=options.min_group_incidents)
    params = fit_parameters(incidents, options=options, groups=levels, reference=reference)
    conf = (
        confounding(incidents, groups=levels, ridge=options.ridge)
        if history.has_handoff_times or reference is None
        else reference.confounding
    )
    opened = [i.opened_at for i in incidents]
    return DeskFile(
        name=name,
        provenance=Provenance.model_validate(
            {
                **provenance,
                **history_counts(history),
                "format": history.source_format.value,
                "opened_from": min(opened).isoformat(),
                "opened_to": max(opened).isoformat(),
                "export_end": history.export_end.isoformat(),
                "skipped": dict(history.skipped),
            }
        ),
        sources=sources(has_times=history.has_handoff_times, reference=reference),
        parameters=params,
        mix=mix(incidents, groups=levels),
        arrivals=arrivals(incidents),
        confounding=conf,
        validation=validation,
        assumptions=dict(AGENT_MINUTES),
        replicates=bootstrap(incidents, options=options, groups=levels, reference=reference),
    )
