"""Fitting a desk: censored durations, the fit on histories whose true desk is known, the
confounding statement, the held-back validation, and routing on the fitted desk."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bench.desk_calibration import (
    FitOptions,
    build_desk_file,
    confounding,
    fit_parameters,
    group_levels,
)
from bench.desk_sim import compare_calibrated, draw_tickets
from bench.desk_steps import desk_dispatch_scenario
from bench.desk_validation import blocks_of, validate
from bench.itsm_exports import ExportFormat, History
from bench.mttr import parametric_scenario
from bench.survival import fit_lognormal, kaplan_meier, km_quantile, km_quantiles
from tests.desk_histories import TrueDesk, synthetic_incidents

FAST = FitOptions(min_group_incidents=5, bootstrap=0)


def test_kaplan_meier_matches_the_hand_computed_curve() -> None:
    # times 1, 2+, 3, 4, 5+ (+ censored): S(1) = 4/5; at 3, 3 at risk: 4/5 * 2/3; at 4:
    # 2 at risk: 4/5 * 2/3 * 1/2.
    times, surv = kaplan_meier([1, 2, 3, 4, 5], [True, False, True, True, False])
    assert times.tolist() == [1, 3, 4]
    assert surv == pytest.approx([0.8, 0.8 * 2 / 3, 0.8 * 2 / 3 / 2])
    assert km_quantile([1, 2, 3, 4, 5], [True, False, True, True, False], 0.5) == 4
    # the curve never falls to 0.1: the p90 is unknown, not the last time seen
    assert km_quantile([1, 2, 3, 4, 5], [True, False, True, True, False], 0.9) is None


def test_censored_lognormal_fit_recovers_the_truth_that_dropping_open_tickets_misses() -> None:
    rng = np.random.default_rng(3)
    t = rng.lognormal(math.log(50.0), 1.2, 3000)
    cutoff = rng.uniform(0, 200, 3000)  # each ticket's age when the export was taken
    observed = t <= cutoff
    seen = np.minimum(t, cutoff)
    assert 0.25 < 1 - observed.mean() < 0.6  # a real share of open tickets
    fit = fit_lognormal(seen, observed)
    assert math.exp(fit.beta[0]) == pytest.approx(50.0, rel=0.08)
    assert fit.sigma[0] == pytest.approx(1.2, rel=0.08)
    dropped = fit_lognormal(seen[observed], observed[observed])
    assert math.exp(dropped.beta[0]) < 0.7 * 50.0  # what a fit that ignores them would say
    assert km_quantile(seen, observed, 0.5) == pytest.approx(50.0, rel=0.1)


def test_km_quantiles_extrapolate_a_censored_tail_without_going_down() -> None:
    values = np.linspace(-2, 2, 200)
    observed = values < 1.0  # everything above 1 is censored
    q = km_quantiles(values, observed, (0.0, 0.5, 0.9, 0.99, 1.0), tail_sigma=1.0)
    assert q == sorted(q)
    assert q[1] == pytest.approx(0.0, abs=0.05)
    assert q[-1] >= 1.0


def test_fit_recovers_a_known_desk_with_open_incidents_censored() -> None:
    truth = TrueDesk(span_days=6.0)
    incidents, end = synthetic_incidents(1500, seed=1, desk=truth, export_after_h=24.0)
    open_share = sum(not i.is_resolved for i in incidents) / len(incidents)
    assert open_share > 0.2
    p = fit_parameters(incidents, options=FAST, groups=["Group A", "Group B"])
    for group, median in truth.resolution_median_h.items():
        assert p.resolution.median_h(group=group, priority="3 - Moderate") == pytest.approx(
            median, rel=0.15
        )
    assert p.first_hop.median_h(priority="3 - Moderate") == pytest.approx(10.0, rel=0.15)
    assert p.first_assignment_accuracy == pytest.approx(truth.accuracy, abs=0.05)
    assert p.further_hops_if_wrong == {0: 1.0}
    # the same history with its open incidents dropped: Group B's slow tickets look fast
    resolved = [i for i in incidents if i.is_resolved]
    naive = fit_parameters(resolved, options=FAST, groups=["Group A", "Group B"])
    assert naive.resolution.median_h(group="Group B") < 0.8 * truth.resolution_median_h["Group B"]


def test_simulated_desk_reproduces_its_history() -> None:
    incidents, _ = synthetic_incidents(1200, seed=2)
    p = fit_parameters(incidents, options=FAST)
    rng = np.random.default_rng(0)
    groups = np.asarray([i.final_group for i in incidents] * 10)
    priorities = np.asarray([i.priority for i in incidents] * 10)
    tickets = draw_tickets(p, groups=groups, priorities=priorities, rng=rng)
    simulated = tickets.dispatch_h + np.where(tickets.desk_right, 0, tickets.first_hop_h)
    simulated = simulated + tickets.rest_h
    observed = np.asarray([i.duration_h for i in incidents])
    assert np.median(simulated) == pytest.approx(np.median(observed), rel=0.1)
    assert np.percentile(simulated, 90) == pytest.approx(np.percentile(observed, 90), rel=0.15)


def test_confounding_blames_misrouting_for_the_first_hop_only() -> None:
    # Misrouted tickets only add the first hop here: removing it explains the whole gap.
    incidents, _ = synthetic_incidents(1500, seed=4)
    c = confounding(incidents, groups=["Group A", "Group B"], ridge=1.0)
    assert c.attributed_share == pytest.approx(1.0, abs=0.12)
    # Now the reassigned tickets are also harder: 3x longer in their final group.
    harder = [
        replace(i, resolved_at=i.handoffs_at[0] + 3 * (i.resolved_at - i.handoffs_at[0]))
        if i.reassignments
        else i
        for i in incidents
    ]
    c2 = confounding(harder, groups=["Group A", "Group B"], ridge=1.0)
    assert 0.1 < c2.attributed_share < 0.8
    assert c2.attributed_share < c.attributed_share - 0.2


def test_validation_holds_back_time_blocks_and_finds_a_stationary_desk_reproduced() -> None:
    incidents, end = synthetic_incidents(900, seed=5, export_after_h=200.0)
    history = History(tuple(incidents), end, ExportFormat.SERVICENOW_EVENTS, True, {})
    blocks = blocks_of(incidents, blocks=3)
    assert all(b[-1].opened_at <= blocks[k + 1][0].opened_at for k, b in enumerate(blocks[:-1]))
    assert sum(len(b) for b in blocks) == 900
    cal = validate(history, options=FAST, reference=None, blocks=3, sims=5)
    assert cal["observed"]["tickets"] == 900
    assert cal["observed"]["censored"] == sum(not i.is_resolved for i in incidents)
    assert cal["reproduces_the_desk"], cal["within_20pct"]
    assert cal["forward"]["fitted_on"] == "the blocks before it"
    assert set(cal["observed"]["median_h_by_reassignments"]) == {"0", "1", "2", "3+"}


def test_routing_on_a_fitted_desk_saves_the_first_hop_with_intervals() -> None:
    incidents, end = synthetic_incidents(800, seed=6)
    history = History(tuple(incidents), end, ExportFormat.SERVICENOW_EVENTS, True, {})
    desk = build_desk_file(
        history,
        name="synthetic",
        provenance={"source": "synthetic", "sha256": "0", "command": "test", "fitted_at": "x"},
        options=replace(FAST, bootstrap=8),
        reference=None,
        validation={},
    )
    queues = ["q1", "q2"]
    perfect = parametric_scenario(name="perfect", queues=queues, latency_s=1.0, accuracy=1.0)
    same = parametric_scenario(
        name="as good as the desk",
        queues=queues,
        latency_s=1.0,
        accuracy=desk.parameters.first_assignment_accuracy,
    )
    manual = desk_dispatch_scenario(desk, queues=queues)
    truths = ["q1", "q2"] * 3000
    comparison, iv = compare_calibrated(
        desk,
        [perfect, same, manual],
        truths=truths,
        seed=0,
        days=1.0,
        baseline=manual.name,
        assumptions=desk.assumptions,
    )
    by = {r.name: r for r in comparison.results}
    assert by["perfect"].misrouted == 0
    saving = by[manual.name].mttr_mean_h - by["perfect"].mttr_mean_h
    wrong = 1 - desk.parameters.first_assignment_accuracy
    first_hop_mean = np.mean(
        [
            (i.handoffs_at[0] - i.opened_at).total_seconds() / 3600
            for i in incidents
            if i.handoffs_at
        ]
    )
    assert saving == pytest.approx(wrong * first_hop_mean, rel=0.25)
    diffs = iv["differences"]
    assert diffs[f"perfect vs {manual.name}"]["mean_h"]["verdict"] == "shorter"
    assert diffs[f"as good as the desk vs {manual.name}"]["median_h"]["verdict"] == "no difference"
    assert iv["replicates"] == 8


def test_group_levels_pool_small_groups() -> None:
    incidents, _ = synthetic_incidents(60, seed=7)
    assert group_levels(incidents, min_incidents=1000) == []
    assert set(group_levels(incidents, min_incidents=5)) <= {"Group A", "Group B", "Group W"}
