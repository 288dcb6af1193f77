"""The drift scenario's pure parts: the traffic plan, the retrain trigger, the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scenarios.drift_plan import RetrainTrigger, TriggerPolicy, drift_sends
from scenarios.drift_report import Row, Timeline, around_swap, build, phase_figures, series, write


def test_traffic_is_the_older_world_until_the_drift_then_the_new_one() -> None:
    sends = drift_sends(rate_per_s=10, duration_s=120, drift_at_s=40, before=100, after=50, seed=3)
    assert 1000 < len(sends) < 1400  # Poisson arrivals at 10/s for 120 s
    assert all(0 <= s.due_s < 120 for s in sends)
    assert [s.seq for s in sends] == list(range(len(sends)))
    assert all(s.corpus_index < 100 for s in sends if s.due_s < 40)
    assert all(100 <= s.corpus_index < 150 for s in sends if s.due_s >= 40)
    assert sends == drift_sends(
        rate_per_s=10, duration_s=120, drift_at_s=40, before=100, after=50, seed=3
    )


def _feed(trigger: RetrainTrigger, accuracies: list[float], *, per_s: int = 10) -> list[str]:
    """One reading every 5 s; `per_s` decisions judged per second at each accuracy."""
    confirmed = reassigned = 0
    fired = []
    for i, accuracy in enumerate(accuracies):
        judged = per_s * 5
        right = round(judged * accuracy)
        confirmed, reassigned = confirmed + right, reassigned + judged - right
        reason = trigger.observe(i * 5.0, confirmed=confirmed, reassigned=reassigned)
        if reason:
            fired.append(f"{i * 5}:{reason}")
    return fired


def test_the_trigger_fires_once_after_a_drop_and_enough_new_labels() -> None:
    policy = TriggerPolicy(window_s=30, min_judged=60, drop=0.05, labels_after_drop=300)
    fired = _feed(RetrainTrigger(policy), [0.95] * 20 + [0.80] * 30)
    assert len(fired) == 1
    t = int(fired[0].split(":")[0])
    # The drop shows within a window of readings at 100 s; 300 labels take 30 s more.
    assert 100 < t <= 100 + 30 + 35
    assert "fell more than 5 points below the 96.0%" in fired[0]  # 48 of 50 each 5 s


def test_steady_accuracy_with_binomial_noise_never_triggers() -> None:
    """~170 decisions per 30 s window at 96%: windows wobble by about 1.5 points, and the
    best of many windows is no baseline (the rule compares with all decisions before)."""
    rng = np.random.default_rng(0)
    trigger = RetrainTrigger(
        TriggerPolicy(window_s=30, min_judged=60, drop=0.05, labels_after_drop=300)
    )
    confirmed = reassigned = 0
    for i in range(400):
        right = int(rng.binomial(28, 0.96))
        confirmed, reassigned = confirmed + right, reassigned + 28 - right
        assert trigger.observe(i * 5.0, confirmed=confirmed, reassigned=reassigned) is None
    assert trigger.dropped_at is None


def test_too_few_judged_decisions_say_nothing_and_the_deadline_fires() -> None:
    policy = TriggerPolicy(window_s=30, min_judged=500, drop=0.05, max_wait_s=60)
    trigger = RetrainTrigger(policy)
    fired = _feed(trigger, [0.95] * 5 + [0.5] * 20)
    assert trigger.reference is None  # never enough judged in a window to measure
    assert len(fired) == 1 and fired[0].startswith("60:") and "anyway" in fired[0]


def _row(t: float, truth: str, kind: str, predicted: str | None, model: str, lat: float) -> Row:
    return Row(sent_at=t, truth=truth, kind=kind, predicted=predicted, latency_s=lat, model=model)


def test_phase_figures_count_routed_accuracy_top1_and_triage() -> None:
    rows = [
        _row(0, "a", "routed", "a", "m", 0.1),
        _row(1, "a", "routed", "b", "m", 0.2),
        _row(2, "b", "triage", "b", "m", 0.3),
        _row(3, "b", "triage", None, "m", 0.4),
        _row(4, "b", "lost", None, "m", 0.0),
    ]
    rows[-1] = Row(sent_at=4, truth="b", kind="lost", predicted=None, latency_s=None, model=None)
    f = phase_figures(rows)
    assert (f.tickets, f.answered, f.routed) == (5, 4, 2)
    assert f.accuracy_routed == 0.5
    assert f.accuracy_top1 == 0.5  # a, b(triage guess) right out of 4 answered
    assert f.triage_rate == 0.5
    assert f.latency_p50_s == pytest.approx(0.25)


def test_the_minute_around_the_swap_is_compared_with_the_minute_before() -> None:
    switch = 1000.0
    before = [_row(switch - 80 + i, "a", "routed", "a", "old", 0.05) for i in range(40)]
    around = [_row(switch - 25 + i, "a", "routed", "a", "new", 0.05 + i / 100) for i in range(50)]
    s = around_swap([*before, *around], switch)
    assert s["minute_before"]["tickets"] == 40 and s["minute_before"]["p99_s"] == 0.05
    assert s["minute_around_swap"]["tickets"] == 50
    assert s["minute_around_swap"]["p99_s"] == pytest.approx(0.5351, abs=1e-3)
    assert "while_loading" not in s
    loading = around_swap([*before, *around], switch, promoted_at=switch - 20)["while_loading"]
    assert loading["tickets"] == 20 and loading["from_s"] == -20
    assert around_swap(before, None) == {}


def test_the_report_has_phases_series_and_a_plot(tmp_path: Path) -> None:
    t0 = 1_000.0
    rows = [
        _row(
            t0 + i,
            "a",
            "routed",
            "a" if i < 30 or i >= 60 else "b",
            "old" if i < 60 else "new",
            0.1,
        )
        for i in range(90)
    ]
    timeline = Timeline(started_at=t0, drift_at=t0 + 30, switch_at=t0 + 60, promoted_at=t0 + 55)
    report = build(
        rows=rows,
        accounting={"sent": 90, "lost": 0, "duplicated": 0, "not_routed": 0, "dead_lettered": 0},
        timeline=timeline,
        old="old",
        new="new",
        metrics_samples=[{"t": t0 + 80, "verdicts": {"old": {"confirmed": 3, "reassigned": 1}}}],
        retrain={"wall_s": 12.0, "exit_code": 0, "verdict": "promoted v2", "report_md": "x.md"},
        options={},
        hardware={"cpu": "test"},
    )
    p = report["phases"]
    assert p["before_drift"]["accuracy_routed"] == 1.0
    assert p["drifted_old_expert"]["accuracy_routed"] == 0.0
    assert p["after_swap_new_expert"]["accuracy_routed"] == 1.0
    assert report["feedback_verdicts"]["old"]["accuracy"] == 0.75
    assert report["timeline_s"]["switch_at"] == 60.0
    sr = series(rows, t0=t0, old="old", new="new")
    assert sr.t_s[:3] == [0.0, 15.0, 30.0] and sr.accuracy_old[2] == 0.0
    paths = write(report, tmp_path)
    assert paths["png"].stat().st_size > 10_000
    assert "after the swap, retrained expert" in paths["markdown"].read_text()
