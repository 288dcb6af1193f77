"""The arrival model: volumes, curve shape, weekly pattern, storms, determinism."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from loadgen.traffic import IncidentStorm, TrafficModel, sample, storms_from_specs

WEDNESDAY = datetime(2026, 11, 25, tzinfo=UTC)
SATURDAY = datetime(2026, 11, 28, tzinfo=UTC)
DAY_S = 86_400.0


def test_expected_volume_of_a_factor_one_day_is_the_daily_volume() -> None:
    model = TrafficModel(daily_volume=100_000)
    assert model.expected_arrivals(start=WEDNESDAY, duration_s=DAY_S) == pytest.approx(
        100_000, rel=1e-6
    )


def test_sampled_daily_total_is_within_one_percent_of_target_for_every_seed() -> None:
    # Poisson(100k) has sd 316 (0.32%): 1% is ~3 sd, so each of 8 seeds must land inside,
    # and their mean (sd ~0.11%) must be within 0.35%.
    model = TrafficModel(daily_volume=100_000)
    totals = [len(sample(model, start=WEDNESDAY, duration_s=DAY_S, seed=s)) for s in range(8)]
    assert all(abs(t - 100_000) < 1_000 for t in totals), totals
    assert np.mean(totals) == pytest.approx(100_000, rel=0.0035)


@pytest.mark.parametrize("ratio", [4.0, 12.0])
def test_intraday_peak_to_trough_is_as_configured(ratio: float) -> None:
    model = TrafficModel(daily_volume=200_000, peak_to_trough=ratio)
    assert model.intraday_peak_to_trough() == pytest.approx(ratio)
    t = np.arange(0.0, DAY_S, 60.0)
    rate = model.base_rate_per_s(t, start=WEDNESDAY)
    assert rate.max() / rate.min() == pytest.approx(ratio, rel=1e-6)
    # Sampled: busiest vs quietest 15-minute window, over pooled seeds.
    counts = sum(
        sample(model, start=WEDNESDAY, duration_s=DAY_S, seed=s).counts_per_bin(900)[:96]
        for s in range(4)
    )
    expected = np.array(
        [
            model.expected_arrivals(
                start=WEDNESDAY.replace(hour=int(i // 4), minute=int(i % 4) * 15), duration_s=900
            )
            * 4
            for i in range(96)
        ]
    )
    assert counts.max() / counts.min() == pytest.approx(expected.max() / expected.min(), rel=0.08)


def test_curve_has_night_trough_morning_peak_and_lunch_dip() -> None:
    model = TrafficModel()
    rate = model.base_rate_per_s(np.arange(24) * 3600.0 + 1800.0, start=WEDNESDAY)
    assert int(np.argmax(rate)) in (9, 10)
    assert rate[3] < rate[9] / 5
    assert rate[12] < rate[11] and rate[12] < rate[14]


def test_weekend_days_are_quieter_than_weekdays() -> None:
    model = TrafficModel()
    weekday = model.expected_arrivals(start=WEDNESDAY, duration_s=DAY_S)
    saturday = model.expected_arrivals(start=SATURDAY, duration_s=DAY_S)
    week = model.expected_arrivals(start=datetime(2026, 11, 23, tzinfo=UTC), duration_s=7 * DAY_S)
    assert saturday == pytest.approx(0.22 * weekday, rel=1e-6)
    assert week == pytest.approx(sum(model.weekday_factors) * 100_000, rel=1e-6)


def test_vpn_storm_adds_its_tickets_inside_its_window() -> None:
    storm = IncidentStorm(at_s=3 * 3600, duration_s=1800, tickets=2000, queue="network_vpn")
    model = TrafficModel(daily_volume=10_000, storms=(storm,))
    schedule = sample(model, start=WEDNESDAY, duration_s=6 * 3600, seed=7)
    in_storm = schedule.times_s[schedule.storm_index == 0]
    assert in_storm.min() >= storm.at_s and in_storm.max() < storm.at_s + storm.duration_s
    assert abs(in_storm.size - 2000) < 4 * np.sqrt(2000)
    assert model.expected_arrivals(start=WEDNESDAY, duration_s=6 * 3600) == pytest.approx(
        TrafficModel(daily_volume=10_000).expected_arrivals(start=WEDNESDAY, duration_s=6 * 3600)
        + 2000,
        rel=1e-3,
    )


def test_same_seed_same_schedule_and_times_are_sorted() -> None:
    model = TrafficModel(daily_volume=5_000, storms=(IncidentStorm(tickets=300),))
    a = sample(model, start=WEDNESDAY, duration_s=DAY_S, seed=3)
    b = sample(model, start=WEDNESDAY, duration_s=DAY_S, seed=3)
    c = sample(model, start=WEDNESDAY, duration_s=DAY_S, seed=4)
    assert np.array_equal(a.times_s, b.times_s) and np.array_equal(a.storm_index, b.storm_index)
    assert not np.array_equal(a.times_s[:100], c.times_s[:100])
    assert np.all(np.diff(a.times_s) >= 0)


def test_storm_specs_parse_time_size_length_and_queue() -> None:
    (storm,) = storms_from_specs(["dns@14:30/500/10/servers_storage"], default=IncidentStorm())
    assert (storm.name, storm.at_s, storm.tickets) == ("dns", 14.5 * 3600, 500)
    assert (storm.duration_s, storm.queue) == (600.0, "servers_storage")


def test_invalid_models_are_refused() -> None:
    with pytest.raises(ValueError, match="peak_to_trough"):
        TrafficModel(peak_to_trough=1.0)
    with pytest.raises(ValueError, match="weekday_factors"):
        TrafficModel(weekday_factors=(1.0,) * 5)


def test_window_rebases_arrivals_to_its_start() -> None:
    model = TrafficModel(daily_volume=20_000)
    day = sample(model, start=WEDNESDAY, duration_s=DAY_S, seed=5)
    morning = day.window(8 * 3600, 12 * 3600)
    inside = day.times_s[(day.times_s >= 8 * 3600) & (day.times_s < 12 * 3600)]
    assert np.array_equal(morning.times_s, inside - 8 * 3600)
    assert morning.start == WEDNESDAY.replace(hour=8) and morning.duration_s == 4 * 3600
