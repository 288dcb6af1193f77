"""Does the fitted desk reproduce the desk? Time-blocked hold-out checks, and their report.

Owns the validation of a calibration. The history is cut by opening time into `blocks`
contiguous blocks; each block in turn is held back, the desk is fitted on the other blocks
and simulates the held-back incidents (their own groups and priorities, `sims` times each).
The check pools every block's simulation against all the incidents: no incident is ever
simulated by a desk fitted on it. The last block is also reported on its own: fitted only on
what came before it, it is the strict forward check, and it shows drift (a surge of a slow
group in the last days) that no desk fitted on the earlier days can know.

Figures: median and p90 of opening-to-resolution hours, the first-assignment accuracy, the
median by number of reassignments. Two simulations: the desk's dispatch as fitted (right
first with the fitted accuracy: the baseline row of the MTTR headline) and the incidents'
own observed first assignments. Both sides are censored alike: a simulated time runs into
the same export end as its incident, and every figure is a Kaplan-Meier estimate. Pure: no
I/O (the caller writes calibration.json / .md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from bench.desk_calibration import FitOptions, Reference, fit_parameters, group_levels
from bench.desk_sim import desk_routing, draw_tickets, resolution_h
from bench.itsm_exports import History, Incident
from bench.survival import km_quantile
from loadgen.desk_file import DeskParameters

TOLERANCE = 0.20
HOP_CLASSES = (("0", 0, 0), ("1", 1, 1), ("2", 2, 2), ("3+", 3, 10**9))
VARIANTS = ("simulated", "simulated_with_observed_routing")


@dataclass(frozen=True, slots=True)
class Sample:
    """Durations (censored where `observed` is False), handoffs and first-right flags."""

    hours: np.ndarray
    observed: np.ndarray
    hops: np.ndarray
    right: np.ndarray

    @staticmethod
    def concat(parts: Sequence[Sample]) -> Sample:
        return Sample(*(np.concatenate([getattr(p, k) for p in parts]) for k in Sample.__slots__))

    def figures(self) -> dict[str, Any]:
        """Median, p90, first-assignment accuracy and medians by handoffs (Kaplan-Meier)."""
        by_hops: dict[str, float | None] = {}
        for label, lo, hi in HOP_CLASSES:
            m = (self.hops >= lo) & (self.hops <= hi)
            by_hops[label] = km_quantile(self.hours[m], self.observed[m], 0.5) if m.any() else None
        return {
            "median_h": km_quantile(self.hours, self.observed, 0.5),
            # Restricted to the export's end on both sides (an open ticket counts its age).
            "mean_h": float(self.hours.mean()) if self.hours.size else None,
            "p90_h": km_quantile(self.hours, self.observed, 0.9),
            "first_assignment_accuracy": float(self.right.mean()) if self.right.size else None,
            "median_h_by_reassignments": by_hops,
            "tickets": int(self.hours.size),
            "censored": int((~self.observed).sum()),
        }


def blocks_of(incidents: Sequence[Incident], *, blocks: int) -> list[list[Incident]]:
    """`blocks` contiguous blocks of incidents by opening time."""
    ordered = sorted(incidents, key=lambda i: (i.opened_at, i.number))
    if blocks < 2 or len(ordered) < 2 * blocks:
        raise ValueError("too few incidents for that many blocks")
    n = len(ordered)
    return [ordered[n * b // blocks : n * (b + 1) // blocks] for b in range(blocks)]


def observed_sample(held: Sequence[Incident]) -> Sample:
    """The incidents as they happened (open ones censored at the export's end); the
    first-right flags of resolved ones only (an open ticket's final group is not known)."""
    return Sample(
        hours=np.asarray([i.duration_h for i in held]),
        observed=np.asarray([i.is_resolved for i in held], dtype=bool),
        hops=np.asarray([i.reassignments for i in held]),
        right=np.asarray([i.first_right for i in held if i.is_resolved], dtype=bool),
    )


def simulated_sample(
    params: DeskParameters,
    held: Sequence[Incident],
    *,
    export_end: datetime,
    sims: int,
    rng: np.random.Generator,
    own_routing: bool,
) -> Sample:
    """The desk's simulation of `held`, `sims` times each, censored at the export's end.

    Args:
        own_routing: each incident's observed first assignment instead of the desk's
            fitted accuracy.
    """
    groups = np.asarray([i.final_group for i in held] * sims)
    priorities = np.asarray([i.priority for i in held] * sims)
    horizon = np.asarray([(export_end - i.opened_at).total_seconds() / 3600 for i in held] * sims)
    right = np.asarray([i.first_right for i in held] * sims) if own_routing else None
    tickets = draw_tickets(params, groups=groups, priorities=priorities, rng=rng, desk_right=right)
    hours, hops = resolution_h(tickets, desk_routing(tickets))
    return Sample(np.minimum(hours, horizon), hours <= horizon, hops, tickets.desk_right)


def _close(observed: float | None, simulated: float | None) -> dict[str, Any]:
    if observed is None or simulated is None or observed <= 0:
        return {"relative_error": None, "within_20pct": False}
    rel = (simulated - observed) / observed
    return {"relative_error": rel, "within_20pct": abs(rel) <= TOLERANCE}


def _checks(observed: dict[str, Any], simulated: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        v: {k: _close(observed[k], simulated[v][k]) for k in ("median_h", "p90_h")}
        for v in VARIANTS
    }


def _observed_interval(sample: Sample, *, seed: int, n: int = 200) -> dict[str, Any]:
    """Bootstrap 95% intervals of the observed median and p90 (their sampling noise)."""
    rng = np.random.default_rng(seed)
    med: list[float] = []
    p90: list[float] = []
    for _ in range(n):
        j = rng.integers(0, sample.hours.size, size=sample.hours.size)
        for out, q in ((med, 0.5), (p90, 0.9)):
            x = km_quantile(sample.hours[j], sample.observed[j], q)
            if x is not None:
                out.append(x)

    def interval(v: list[float]) -> list[float] | None:
        return [float(x) for x in np.percentile(v, [2.5, 97.5])] if len(v) >= n // 2 else None

    return {"median_h": interval(med), "p90_h": interval(p90)}


def validate(
    history: History,
    *,
    options: FitOptions,
    reference: Reference | None,
    blocks: int = 5,
    sims: int = 20,
) -> dict[str, Any]:
    """Hold back each time block in turn, fit on the rest, simulate it, compare.

    Returns:
        calibration.json's content: `observed` (every incident), `simulated` (the desk's
        dispatch as fitted) and `simulated_with_observed_routing`, pooled over the blocks;
        `within_20pct` for each; `blocks` (each block's figures, the last one being the
        forward check) and `forward`.
    """
    rng = np.random.default_rng(options.seed)
    parts = blocks_of(history.incidents, blocks=blocks)
    pooled: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
    per_block: list[dict[str, Any]] = []
    for b, held in enumerate(parts):
        fit_set = [i for j, part in enumerate(parts) if j != b for i in part]
        levels = group_levels(fit_set, min_incidents=options.min_group_incidents)
        params = fit_parameters(fit_set, options=options, groups=levels, reference=reference)
        obs = observed_sample(held).figures()
        sim = {}
        for v in VARIANTS:
            s = simulated_sample(
                params,
                held,
                export_end=history.export_end,
                sims=sims,
                rng=rng,
                own_routing=v != "simulated",
            )
            pooled[v].append(s)
            sim[v] = s.figures()
        per_block.append(
            {
                "block": b + 1,
                "opened_from": held[0].opened_at.isoformat(),
                "opened_to": held[-1].opened_at.isoformat(),
                "fitted_on": "every other block" if b < len(parts) - 1 else "the blocks before it",
                "observed": obs,
                **sim,
                "within_20pct": _checks(obs, sim),
            }
        )
    every = observed_sample(history.incidents)
    observed = every.figures()
    simulated = {v: Sample.concat(pooled[v]).figures() for v in VARIANTS}
    checks = _checks(observed, simulated)
    return {
        "split": {
            "method": f"time blocks: the history cut by opening time into {blocks} contiguous"
            " blocks; each held back in turn and simulated by the desk fitted on the others;"
            " the figures pool every block's simulation",
            "blocks": blocks,
            "simulations_per_incident": sims,
            "estimator": "Kaplan-Meier (open incidents and simulated times past the export's"
            " end censored alike)",
        },
        "observed": observed,
        "observed_interval_95": _observed_interval(every, seed=options.seed),
        **simulated,
        "within_20pct": checks,
        "reproduces_the_desk": all(c["within_20pct"] for v in checks.values() for c in v.values()),
        "forward": per_block[-1],
        "blocks": per_block,
    }


def _h(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} h"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _table(o: dict[str, Any], s: dict[str, Any], r: dict[str, Any]) -> list[str]:
    lines = [
        "| figure | observed | simulated (desk's dispatch as fitted)"
        " | simulated (their own first assignments) |",
        "|---|---|---|---|",
        f"| median open-to-resolve | {_h(o['median_h'])} | {_h(s['median_h'])}"
        f" | {_h(r['median_h'])} |",
        f"| p90 open-to-resolve | {_h(o['p90_h'])} | {_h(s['p90_h'])} | {_h(r['p90_h'])} |",
        f"| mean (times cut at the export's end) | {_h(o['mean_h'])} | {_h(s['mean_h'])}"
        f" | {_h(r['mean_h'])} |",
        f"| first assignment right | {_pct(o['first_assignment_accuracy'])}"
        f" | {_pct(s['first_assignment_accuracy'])} | {_pct(r['first_assignment_accuracy'])} |",
    ]
    for label in o["median_h_by_reassignments"]:
        lines.append(
            f"| median, reassigned {label} times | {_h(o['median_h_by_reassignments'][label])}"
            f" | {_h(s['median_h_by_reassignments'][label])}"
            f" | {_h(r['median_h_by_reassignments'][label])} |"
        )
    return lines


def markdown(calibration: dict[str, Any], *, desk_name: str, source: str) -> str:
    """calibration.md: the check in a few lines a desk manager can read."""
    sp = calibration["split"]
    verdict = "within" if calibration["reproduces_the_desk"] else "NOT within"
    lines = [
        f"# Desk calibration: {desk_name}",
        "",
        f"Fitted on `{source}`. Validation by {sp['method']}; {sp['simulations_per_incident']}"
        f" simulations per incident; {sp['estimator']}.",
        "",
        *_table(
            calibration["observed"],
            calibration["simulated"],
            calibration["simulated_with_observed_routing"],
        ),
        "",
        f"Simulated median and p90 {verdict} 20% of the observed ones"
        f" ({_errors(calibration['within_20pct'])}).",
        "",
        "Each block held back (observed / simulated with the desk's dispatch as fitted):",
        "",
        "| block | opened | incidents | median h | p90 h |",
        "|---|---|---|---|---|",
    ]
    for b in calibration["blocks"]:
        o, s = b["observed"], b["simulated"]
        lines.append(
            f"| {b['block']} ({b['fitted_on']}) | {b['opened_from'][:16]} to"
            f" {b['opened_to'][:16]} | {o['tickets']} | {_h(o['median_h'])} / {_h(s['median_h'])}"
            f" | {_h(o['p90_h'])} / {_h(s['p90_h'])} |"
        )
    forward = calibration["forward"]["within_20pct"]["simulated"]
    lines += [
        "",
        "The last block, fitted only on what came before it, is the forward check: "
        + (
            "within 20%."
            if all(c["within_20pct"] for c in forward.values())
            else "NOT within 20% (" + _errors({"forward": forward}) + "): its incidents were"
            " slower than anything before them, which a desk fitted on the earlier days"
            " cannot know."
        ),
        "",
    ]
    return "\n".join(lines)


def _errors(checks: dict[str, dict[str, dict[str, Any]]]) -> str:
    parts = []
    for name, figs in checks.items():
        for key, c in figs.items():
            rel = c["relative_error"]
            parts.append(f"{name} {key} {'n/a' if rel is None else f'{100 * rel:+.0f}%'}")
    return "; ".join(parts)
