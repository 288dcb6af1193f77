"""`demo_plan`: the demo compresses the day only as far as the measured capacity allows."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from loadgen.traffic import IncidentStorm, Schedule, TrafficModel, sample
from scenarios.demo_plan import choose_replay, replay_wall_s

DAY = sample(
    TrafficModel(daily_volume=100_000, storms=(IncidentStorm(at_s=9.5 * 3600),)),
    start=datetime(2026, 11, 25, tzinfo=UTC),
    duration_s=86_400,
    seed=0,
)


def _peak_in(schedule: Schedule, from_s: float, to_s: float) -> float:
    window = schedule.window(from_s, to_s)
    return float(window.counts_per_bin(60.0).max()) / 60


def test_the_busiest_replayed_minute_stays_under_the_headroom_of_capacity() -> None:
    choice = choose_replay(DAY, capacity_per_s=100.0, wall_s=480.0, headroom=0.8)
    assert choice.speedup == pytest.approx(0.8 * 100.0 / choice.day_peak_per_s)
    assert choice.offered_peak_per_s == pytest.approx(80.0)
    assert _peak_in(DAY, choice.from_s, choice.to_s) * choice.speedup <= 80.0 + 1e-9
    assert choice.wall_s == pytest.approx(480.0)
    assert choice.to_s - choice.from_s == pytest.approx(480.0 * choice.speedup)


def test_the_window_is_the_busiest_part_of_the_day_and_holds_the_storm() -> None:
    choice = choose_replay(DAY, capacity_per_s=60.0, wall_s=300.0)
    span = choice.to_s - choice.from_s
    assert choice.from_s <= 9.5 * 3600 and choice.to_s >= 9.5 * 3600 + 600  # storm's peak
    in_window = int(((DAY.times_s >= choice.from_s) & (DAY.times_s < choice.to_s)).sum())
    assert choice.tickets == in_window
    for start in np.arange(0.0, 86_400 - span, 1800.0):  # no other window of that span is busier
        other = int(((DAY.times_s >= start) & (DAY.times_s < start + span)).sum())
        assert other <= in_window


def test_without_a_capacity_or_below_the_peak_the_day_is_replayed_in_real_time() -> None:
    unknown = choose_replay(DAY, capacity_per_s=None, wall_s=120.0)
    slow = choose_replay(DAY, capacity_per_s=5.0, wall_s=120.0)
    for choice in (unknown, slow):
        assert choice.speedup == 1.0
        assert choice.to_s - choice.from_s == pytest.approx(120.0)
    assert "real time" in unknown.why and "no compression" in slow.why


def test_a_fast_router_gets_the_whole_day_in_less_wall_time() -> None:
    choice = choose_replay(DAY, capacity_per_s=10_000.0, wall_s=480.0)
    assert (choice.from_s, choice.to_s, choice.tickets) == (0.0, 86_400.0, len(DAY))
    assert choice.wall_s == pytest.approx(86_400 / choice.speedup) and choice.wall_s < 480.0


def test_replay_wall_time_is_what_the_budget_leaves_within_bounds() -> None:
    kw = {"budget_s": 1080.0, "reserve_s": 150.0, "min_s": 60.0, "max_s": 480.0}
    assert replay_wall_s(elapsed_s=100.0, **kw) == 480.0
    assert replay_wall_s(elapsed_s=600.0, **kw) == pytest.approx(330.0)
    assert replay_wall_s(elapsed_s=1000.0, **kw) == 60.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        choose_replay(DAY, capacity_per_s=10.0, wall_s=0.0)
    with pytest.raises(ValueError):
        choose_replay(DAY, capacity_per_s=10.0, wall_s=10.0, headroom=1.5)
