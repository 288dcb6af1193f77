"""The service-desk simulation against queueing theory, and the routing scenarios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.mttr import (
    Desk,
    HandlingTime,
    MeasuredDecision,
    ServiceDesk,
    cloud_llm_scenario,
    compare,
    erlang_c,
    manual_scenario,
    measured_scenario,
    parametric_scenario,
    simulate,
)


def poisson_arrivals_s(rate_per_min: float, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(60.0 / rate_per_min, size=n)).tolist()


def test_erlang_c_matches_the_hand_computed_value() -> None:
    # c = 4, a = lambda/mu = 3: a^4/4! * 4/(4-3) = 13.5; sum_{k<4} 3^k/k! = 13;
    # C = 13.5 / 26.5.
    assert erlang_c(agents=4, offered_load=3.0) == pytest.approx(13.5 / 26.5)


def test_one_queue_with_perfect_instant_routing_is_m_m_c() -> None:
    # lambda = 1/min, 3 min mean handling (mu = 1/3), 4 agents: rho = 0.75.
    # Wq = C / (c mu - lambda) = 0.50943 / (1/3) = 1.5283 min; W = Wq + 3 = 4.5283 min.
    n = 150_000
    desk = ServiceDesk(
        queues={"q": Desk(4, HandlingTime(3.0))},
        triage=Desk(1, HandlingTime(1.0)),
        reassignment_penalty=HandlingTime(1.0),
    )
    perfect = parametric_scenario(name="perfect", queues=["q"], latency_s=0.0, accuracy=1.0)
    result = simulate(
        desk, perfect, arrivals_s=poisson_arrivals_s(1.0, n, seed=11), truths=["q"] * n, seed=5
    )
    expected_w_min = (13.5 / 26.5) / (4 / 3 - 1) + 3.0
    assert result.resolved == n
    assert result.mttr_mean_h * 60 == pytest.approx(expected_w_min, rel=0.04)
    assert result.wait_any_share == pytest.approx(13.5 / 26.5, abs=0.02)
    assert (result.misrouted, result.triaged) == (0, 0)


def desk_of_two() -> ServiceDesk:
    return ServiceDesk(
        queues={"a": Desk(3, HandlingTime(10.0, cv=0.5)), "b": Desk(3, HandlingTime(10.0, 0.5))},
        triage=Desk(1, HandlingTime(5.0)),
        reassignment_penalty=HandlingTime(8.0),
    )


def test_misroutes_and_dispatch_add_agent_hours_and_resolution_time() -> None:
    n = 3000
    arrivals = poisson_arrivals_s(0.3, n, seed=1)
    truths = ["a" if i % 2 else "b" for i in range(n)]
    scenarios = [
        parametric_scenario(name="perfect", queues=["a", "b"], latency_s=0.1, accuracy=1.0),
        cloud_llm_scenario(queues=["a", "b"], accuracy=0.8),
        manual_scenario(queues=["a", "b"], dispatchers=1, minutes_per_ticket=2.0, accuracy=0.8),
    ]
    cmp = compare(desk_of_two(), scenarios, arrivals_s=arrivals, truths=truths, seed=2, days=1.0)
    perfect, cloud, manual = cmp.results
    assert perfect.misrouted == 0 and perfect.penalty_agent_hours == 0
    assert cloud.misrouted == pytest.approx(0.2 * n, rel=0.15)
    assert cloud.penalty_agent_hours == pytest.approx(cloud.misrouted * 8.0 / 60, rel=0.1)
    assert manual.dispatch_agent_hours == pytest.approx(n * 2.0 / 60, rel=0.1)
    assert perfect.mttr_mean_h < cloud.mttr_mean_h < manual.mttr_mean_h
    saved = cmp.saved_vs("manual dispatch")
    # reference method: (120 s - 0.1 s) x 3000 tickets per day
    assert saved["perfect"]["reference_hours_per_day"] == pytest.approx(119.9 * n / 3600)
    assert saved["perfect"]["ticket_hours_per_day"] > 0
    assert saved["perfect"]["agent_hours_per_day"] == pytest.approx(
        manual.dispatch_agent_hours + manual.penalty_agent_hours
    )


def test_triage_share_sends_tickets_through_the_triage_desk() -> None:
    n = 2000
    sc = parametric_scenario(
        name="unsure", queues=["a", "b"], latency_s=0.0, accuracy=1.0, triage_share=0.25
    )
    r = simulate(
        desk_of_two(), sc, arrivals_s=poisson_arrivals_s(0.2, n, 3), truths=["a"] * n, seed=4
    )
    assert r.triaged == pytest.approx(0.25 * n, rel=0.15)
    assert r.triage_agent_hours == pytest.approx(r.triaged * 5.0 / 60, rel=0.15)


def test_measured_scenario_replays_measured_decisions_per_true_queue() -> None:
    decisions = [
        MeasuredDecision("a", "routed", "a", 0.2),
        MeasuredDecision("a", "routed", "b", 0.2),
        MeasuredDecision("b", "triage", "b", 0.5),
    ]
    sc = measured_scenario(decisions, name="this router", queues=["a", "b"])
    n = 2000
    r = simulate(
        desk_of_two(),
        sc,
        arrivals_s=poisson_arrivals_s(0.2, n, 5),
        truths=["a"] * (n // 2) + ["b"] * (n // 2),
        seed=6,
    )
    assert r.misrouted == pytest.approx(n / 4, rel=0.15)  # half of the a's
    assert r.triaged == n // 2  # every b
    assert sc.routing_latency_s == pytest.approx(0.3)
    assert math.isfinite(r.mttr_p90_h) and r.mttr_p90_h >= r.mttr_p50_h


def test_unknown_queue_is_refused() -> None:
    sc = parametric_scenario(name="x", queues=["a"], latency_s=0.0, accuracy=1.0)
    with pytest.raises(ValueError, match="no desk"):
        simulate(desk_of_two(), sc, arrivals_s=[0.0], truths=["zzz"], seed=0)
