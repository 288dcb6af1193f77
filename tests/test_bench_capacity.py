"""Capacity mode: per-step figures and verdicts, the ramp, the summary (no Kafka), then one
very short real ramp against the real broker and the tiny expert served by vLLM."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.capacity import CapacityRun, run_capacity
from bench.capacity_ramp import (
    Phase,
    RampPlan,
    Slo,
    StepFigures,
    StepObservation,
    judge,
    next_rate,
    step_figures,
    summarise,
    to_json,
)
from bench.capacity_report import plot
from scenarios.cli import loadgen_app as app

REPO = Path(__file__).resolve().parents[1]
SLO = Slo(p99_s=1.0, min_delivered_fraction=0.99, min_send_fraction=0.95)


def _steady(
    rate: float, step_s: float, latency_s: float, *, tail_s: float = 2.0
) -> StepObservation:
    n = round(rate * step_s)
    sent = tuple(k / rate for k in range(n))
    return StepObservation(
        phase=Phase.RAMP,
        offered_rate_per_s=rate,
        step_s=step_s,
        tail_s=tail_s,
        sent_at_s=sent,
        received_at_s=tuple(s + latency_s for s in sent),
    )


def _overloaded(rate: float, capacity: float, step_s: float) -> StepObservation:
    """Arrivals at `rate`, served one by one at `capacity` (a FIFO single server)."""
    n = round(rate * step_s)
    sent = [k / rate for k in range(n)]
    done, received = 0.0, []
    for s in sent:
        done = max(done, s) + 1 / capacity
        received.append(done)
    return StepObservation(
        phase=Phase.RAMP,
        offered_rate_per_s=rate,
        step_s=step_s,
        tail_s=2.0,
        sent_at_s=tuple(sent),
        received_at_s=tuple(received),
    )


def _verdict(rate: float, passed: bool, *, phase: Phase = Phase.RAMP) -> StepFigures:
    fig = step_figures(_steady(rate, 2.0, 0.1))
    fig = judge(fig, SLO)
    assert fig.passed
    return replace(fig, phase=phase, passed=passed, reasons=() if passed else ("p99",))


# --- per-step figures and verdicts ----------------------------------------------------------


def test_step_served_on_time_passes_with_flat_backlog() -> None:
    fig = judge(step_figures(_steady(10.0, 3.0, 0.1)), SLO)
    assert fig.passed and fig.reasons == ()
    assert fig.sent == fig.delivered == 30
    assert fig.achieved_send_rate_per_s == pytest.approx(10.0)
    assert fig.delivered_rate_per_s == pytest.approx(10.0, rel=0.05)
    assert fig.p50_s == fig.p99_s == pytest.approx(0.1)
    assert fig.backlog_after_tail == 0
    assert fig.backlog_at_step_end <= 1
    assert abs(fig.backlog_slope_per_s) < 1.0


def test_overloaded_step_fails_on_lag_and_latency_and_shows_its_throughput() -> None:
    fig = judge(step_figures(_overloaded(20.0, 10.0, 10.0)), SLO)
    assert not fig.passed
    assert any("lag unbounded" in r for r in fig.reasons)
    assert any(r.startswith("p99") for r in fig.reasons)
    # Served at 10/s for the 12 s window: 120 of 200 delivered, 80 still waiting.
    assert fig.delivered == pytest.approx(120, abs=1)
    assert fig.backlog_after_tail == pytest.approx(80, abs=1)
    assert fig.delivered_rate_per_s == pytest.approx(10.0, rel=0.05)
    assert fig.backlog_slope_per_s == pytest.approx(10.0, rel=0.15)
    assert fig.backlog_at_step_end == pytest.approx(100, abs=2)


def test_step_with_slow_tail_fails_on_p99_only() -> None:
    obs = _steady(10.0, 10.0, 0.1)
    received = list(obs.received_at_s)
    for k in range(0, 100, 25):  # 4% of tickets take 1.5 s
        received[k] = obs.sent_at_s[k] + 1.5
    fig = judge(step_figures(_replace_received(obs, received)), SLO)
    assert not fig.passed
    assert len(fig.reasons) == 1 and fig.reasons[0].startswith("p99 1.5")


def test_outputs_after_the_tail_count_as_undelivered() -> None:
    obs = _steady(10.0, 10.0, 0.1, tail_s=1.0)
    received = list(obs.received_at_s)
    received[-1] = obs.sent_at_s[-1] + 5.0  # after step + tail
    received[-2] = None  # never seen
    fig = judge(step_figures(_replace_received(obs, received)), SLO)
    assert fig.delivered == 98 and fig.backlog_after_tail == 2
    assert fig.max_s == pytest.approx(0.1)  # the late one is not a measured latency
    assert not fig.passed and "lag unbounded" in fig.reasons[0]


def test_generator_that_falls_behind_fails_the_step() -> None:
    obs = _steady(10.0, 10.0, 0.1)
    slow = StepObservation(
        phase=Phase.RAMP,
        offered_rate_per_s=20.0,  # asked for 20/s, managed 10/s
        step_s=5.0,
        tail_s=2.0,
        sent_at_s=obs.sent_at_s,
        received_at_s=obs.received_at_s,
    )
    fig = judge(step_figures(slow), SLO)
    assert fig.achieved_send_rate_per_s == pytest.approx(10.0)
    assert not fig.passed and fig.reasons[0].startswith("sent 10.0/s")


def test_unacknowledged_sends_fail_the_step() -> None:
    obs = _steady(10.0, 3.0, 0.1)
    failing = StepObservation(**{**obs.__dict__, "send_failures": 2})
    fig = judge(step_figures(failing), SLO)
    assert not fig.passed and fig.reasons == ("2 sends not acknowledged",)


def test_observation_needs_one_receipt_slot_per_send() -> None:
    with pytest.raises(ValueError):
        StepObservation(
            phase=Phase.RAMP,
            offered_rate_per_s=1.0,
            step_s=1.0,
            tail_s=1.0,
            sent_at_s=(0.0, 0.5),
            received_at_s=(0.1,),
        )


def _replace_received(obs: StepObservation, received: list[float | None]) -> StepObservation:
    return StepObservation(**{**obs.__dict__, "received_at_s": tuple(received)})


# --- the ramp -------------------------------------------------------------------------------


def test_ramp_grows_by_factor_and_clamps_to_the_max_rate() -> None:
    plan = RampPlan(start_rate_per_s=25, growth_factor=1.5, max_rate_per_s=50, bisect=False)
    assert next_rate(plan, []) == (25, Phase.RAMP)
    assert next_rate(plan, [_verdict(25, True)]) == (37.5, Phase.RAMP)
    assert next_rate(plan, [_verdict(25, True), _verdict(37.5, True)]) == (50, Phase.RAMP)
    assert next_rate(plan, [_verdict(37.5, True), _verdict(50, True)]) is None


def test_ramp_grows_additively_when_asked() -> None:
    plan = RampPlan(start_rate_per_s=25, growth_add_per_s=25)
    assert next_rate(plan, [_verdict(25, True), _verdict(50, True)]) == (75, Phase.RAMP)


def test_first_failure_triggers_one_bisection_then_stops() -> None:
    plan = RampPlan(start_rate_per_s=25, growth_factor=2)
    steps = [_verdict(25, True), _verdict(50, True), _verdict(100, False)]
    assert next_rate(plan, steps) == (75, Phase.BISECT)
    assert next_rate(plan, [*steps, _verdict(75, True, phase=Phase.BISECT)]) is None
    assert next_rate(plan, [*steps, _verdict(75, False, phase=Phase.BISECT)]) is None
    assert next_rate(RampPlan(bisect=False), steps) is None


def test_no_bisection_when_nothing_passed_or_the_gap_is_tiny() -> None:
    plan = RampPlan(start_rate_per_s=25)
    assert next_rate(plan, [_verdict(25, False)]) is None
    plan = RampPlan(start_rate_per_s=100, growth_add_per_s=1)
    assert next_rate(plan, [_verdict(100, True), _verdict(101, False)]) is None


def test_ramp_stops_at_max_steps() -> None:
    plan = RampPlan(start_rate_per_s=1, growth_factor=2, max_steps=2)
    assert next_rate(plan, [_verdict(1, True), _verdict(2, True)]) is None


def test_plan_rejects_a_ramp_that_does_not_grow() -> None:
    with pytest.raises(ValueError):
        RampPlan(growth_factor=1.0)
    with pytest.raises(ValueError):
        RampPlan(start_rate_per_s=100, max_rate_per_s=10)


# --- the answer -----------------------------------------------------------------------------


def test_summary_is_the_highest_passing_rate_below_the_first_failure() -> None:
    plan = RampPlan(start_rate_per_s=25, growth_factor=2)
    steps = [
        _verdict(25, True),
        _verdict(50, True),
        _verdict(100, False),
        _verdict(75, True, phase=Phase.BISECT),
    ]
    s = summarise(plan, steps)
    assert s.max_sustainable_rate_per_s == 75
    assert s.first_failing_rate_per_s == 100
    assert s.saturated_delivered_rate_per_s == steps[2].delivered_rate_per_s
    assert "bisection" in s.stopped_because and s.steps == 4


def test_summary_when_the_first_step_fails_or_nothing_fails() -> None:
    plan = RampPlan(start_rate_per_s=25, max_rate_per_s=50, growth_factor=2)
    s = summarise(plan, [_verdict(25, False)])
    assert s.max_sustainable_rate_per_s is None and "below the start rate" in s.stopped_because
    s = summarise(plan, [_verdict(25, True), _verdict(50, True)])
    assert s.max_sustainable_rate_per_s == 50 and s.first_failing_rate_per_s is None
    assert "at least" in s.stopped_because


def test_json_and_plot_of_a_curve(tmp_path: Path) -> None:
    plan = RampPlan(start_rate_per_s=10, growth_factor=2)
    steps = [
        judge(step_figures(_steady(10, 5, 0.1)), SLO),
        judge(step_figures(_overloaded(20, 12, 5)), SLO),
    ]
    doc = json.loads(json.dumps(to_json(plan=plan, slo=SLO, steps=steps, meta={"x": 1})))
    assert doc["x"] == 1 and doc["summary"]["max_sustainable_rate_per_s"] == 10
    assert [s["phase"] for s in doc["steps"]] == ["ramp", "ramp"]
    assert [s["passed"] for s in doc["steps"]] == [True, False]
    plot(steps, slo=SLO, path=tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_capacity_command_exits_4_without_an_expert(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["capacity", "--model", str(tmp_path / "none"), "--dir", str(tmp_path / "out")]
    )
    assert result.exit_code == 4, result.output
    assert "expert build" in result.output
    assert not (tmp_path / "out").exists()


# --- a real, very short ramp ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)  # includes building the session's tiny expert on a busy machine
def test_short_real_ramp_measures_each_step(
    bootstrap: str, tiny_expert_dir: Path, tmp_path: Path
) -> None:
    plan = RampPlan(start_rate_per_s=5, growth_add_per_s=5, step_s=3, tail_s=3, max_rate_per_s=10)
    # A generous SLO: this checks the measurement, not how fast a shared CI machine is.
    slo = Slo(p99_s=10.0)
    seen: list[StepFigures] = []
    code, doc = run_capacity(
        CapacityRun(
            model_dir=tiny_expert_dir,
            bootstrap=bootstrap,
            out_dir=tmp_path,
            partitions=3,
            warmup_tickets=10,
            vllm_cache_dir=REPO / ".state" / "vllm-cache",
        ),
        plan,
        slo,
        on_step=seen.append,
    )
    assert code == 0
    assert [(s.offered_rate_per_s, s.phase) for s in seen] == [(5, "ramp"), (10, "ramp")]
    for s in seen:
        assert s.sent == round(s.offered_rate_per_s * 3)
        assert s.achieved_send_rate_per_s == pytest.approx(s.offered_rate_per_s, rel=0.1)
        assert s.delivered == s.sent and s.backlog_after_tail == 0
        assert s.dead_lettered == 0 and s.send_failures == 0
        assert s.p50_s is not None and s.p99_s is not None and s.max_s is not None
        assert 0 < s.p50_s <= s.p99_s <= s.max_s < 10
        assert 0 < s.delivered_rate_per_s <= 2 * s.offered_rate_per_s
        assert s.passed, s.reasons
    assert doc["summary"]["max_sustainable_rate_per_s"] == 10
    written = json.loads((tmp_path / "capacity.json").read_text())
    assert [s["offered_rate_per_s"] for s in written["steps"]] == [5, 10]
    assert (tmp_path / "capacity.png").stat().st_size > 0
