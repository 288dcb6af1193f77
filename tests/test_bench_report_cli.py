"""The cost model, the report files, and the `ticket-router loadgen ...` commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.collect import Observation, OutputKind, account
from bench.report import (
    CapacityInputs,
    _headline_md,
    build,
    capacity,
    measured_capacity,
    write,
)
from loadgen.replay import ManifestRow
from scenarios.cli import loadgen_app as app

runner = CliRunner()


def test_capacity_sizes_the_fleet_for_the_peak_with_headroom() -> None:
    cap = capacity(
        CapacityInputs(
            tickets_per_s=20.0,
            cpu_cores=2,
            gpu_tickets_per_s=400.0,
            cores_per_machine=16,
            target_utilisation=0.5,
        ),
        volume_per_day=864_000,  # 10/s on average
        peak_per_s=70.0,
    )
    assert cap["tickets_per_s_per_core"] == 10.0
    assert cap["average_per_s"] == pytest.approx(10.0)
    assert cap["cpu_cores_for_peak"] == 14  # 70 / (10 x 0.5)
    assert cap["cpu_cores_for_average"] == 1
    assert cap["cpu_machines"] == 1
    assert cap["gpus_for_peak"] == 1  # 70 / (400 x 0.5)
    assert cap["peak_to_average"] == pytest.approx(7.0)


def test_measured_capacity_uses_only_bins_the_router_was_saturated_in() -> None:
    # arrivals 250, 50, 10, 0, 0 per bin, 40 of the first bin's never answered (LOST): the
    # router drains the burst at 100 per bin.
    series = {
        "bin_s": 10.0,
        "done": [50, 100, 100, 20, 0],
        "backlog": [200, 150, 60, 40, 40],
        "queued": [160, 110, 20, 0, 0],
    }
    # bins 1 and 2 started with >= 100 queued; bin 3 started with 20 queued and did 20, so it
    # counts; bin 4 did nothing and the last bin never counts
    assert measured_capacity(series) == (pytest.approx((10 + 10 + 2) / 3), True)
    idle = {"bin_s": 10.0, "done": [5, 8, 6], "backlog": [1, 0, 1]}
    assert measured_capacity(idle) == (pytest.approx(0.8), False)


def sample_collect() -> dict[str, object]:
    t0 = 1_800_000_000.0
    rows = [
        ManifestRow(
            f"T{i}",
            "hardware" if i % 2 else "software",
            "canonical",
            None,
            i,
            float(i),
            float(i),
            t0 + i,
            0.0,
            True,
        )
        for i in range(40)
    ]
    outs = [
        Observation(
            "q",
            0,
            i,
            OutputKind.ROUTED,
            f"T{i}",
            t0 + i + 0.2,
            t0 + 99,
            predicted="hardware" if i % 3 else "software",
            confidence=0.8,
        )
        for i in range(39)
    ]
    return account(rows, outs, labels=["hardware", "software"], bin_s=10.0).to_json()


def test_report_writes_markdown_json_and_figures(tmp_path: Path) -> None:
    mttr = {
        "tickets": 10,
        "days": 1.0,
        "baseline": "manual dispatch",
        "assumptions": {},
        "results": [
            {
                "name": n,
                "routing_latency_s": 1.0,
                "mttr_mean_h": 1.0,
                "mttr_p90_h": 2.0,
                "misrouted": 1,
                "triaged": 0,
            }
            for n in ("this router", "manual dispatch")
        ],
        "saved_vs_baseline": {
            "this router": {
                "reference_hours_per_day": 5.0,
                "ticket_hours_per_day": 6.0,
                "agent_hours_per_day": 7.0,
            }
        },
    }
    cap = capacity(
        CapacityInputs(tickets_per_s=30, cpu_cores=2), volume_per_day=100_000, peak_per_s=7.2
    )
    report = build(collect=sample_collect(), mttr=mttr, capacity_figures=cap)
    paths = write(report, tmp_path)
    md = paths["markdown"].read_text()
    # sent routed triage DL not-routed LOST DUP unexpected: T39 was never committed past
    assert "| 40 | 39 | 0 | 0 | 1 | 0 | 0 | 0 |" in md
    assert "Headline: time to resolve a ticket (MTTR)" in md and "Capacity and cost" in md
    for png in ("rates.png", "latency.png", "confusion.png", "mttr.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"]({png})" in md
    headline = json.loads(paths["json"].read_text())["headline"]
    assert (headline["lost"], headline["not_routed_when_run_ended"]) == (0, 1)
    assert [r["name"] for r in headline["mttr"]] == ["this router", "manual dispatch"]


@pytest.mark.integration  # a fresh interpreter
def test_cli_module_imports_no_heavy_library() -> None:
    code = (
        "import sys, loadgen.cli; "
        "print(sorted(m for m in ('confluent_kafka', 'matplotlib', 'simpy', 'numpy', 'rich')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_traffic_command_prints_the_day(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["traffic", "--volume", "5000", "--no-storms", "--plot", str(tmp_path / "t.png")]
    )
    assert result.exit_code == 0, result.output
    assert "sampled" in result.output and "peak/trough 12.00" in result.output
    assert (tmp_path / "t.png").exists()


def test_mttr_command_compares_three_methods_on_the_shipped_desk(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["mttr", "--dir", str(tmp_path), "--volume", "3000", "--replicates", "4"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "mttr.json").read_text())
    names = [r["name"] for r in data["results"]]
    assert names == ["this router (assumed)", "cloud LLM router", "desk's own dispatch (observed)"]
    assert set(data["saved_vs_baseline"]) == {"this router (assumed)", "cloud LLM router"}
    assert data["desk"]["name"] == "servicenow-sample" and data["intervals"]["replicates"] == 4
    pair = "this router (assumed) vs desk's own dispatch (observed)"
    assert data["intervals"]["differences"][pair]["mean_h"]["verdict"] in {
        "shorter",
        "longer",
        "no difference",
    }
    md = "\n".join(_headline_md(data, figure=None))
    assert "[95%]" in md and "no difference" in md


def test_replay_then_collect_commands_without_a_router_report_everything_not_routed(
    bootstrap: str, taxonomy_file: Path, tmp_path: Path
) -> None:
    from schemas.taxonomy import Taxonomy
    from worker.broker import TopicLayout, create_layout

    create_layout(bootstrap, TopicLayout.from_taxonomy(Taxonomy.load(taxonomy_file), partitions=2))
    run_dir = str(tmp_path / "run")
    replayed = runner.invoke(
        app,
        [
            "replay",
            "--bootstrap",
            bootstrap,
            "--taxonomy",
            str(taxonomy_file),
            "--dir",
            run_dir,
            "--asap",
            "--limit",
            "25",
            "--hours",
            "1",
            "--start-hour",
            "9",
            "--corpus-n",
            "50",
            "--format",
            "zendesk",
            "--run",
            "12",
        ],
    )
    assert replayed.exit_code == 0, replayed.output
    assert "sent 25/25, acked 25" in replayed.output
    collected = runner.invoke(
        app,
        [
            "collect",
            "--bootstrap",
            bootstrap,
            "--taxonomy",
            str(taxonomy_file),
            "--dir",
            run_dir,
            "--idle-s",
            "1",
            "--deadline-s",
            "60",
        ],
    )
    assert collected.exit_code == 0, collected.output
    data = json.loads((tmp_path / "run" / "collect.json").read_text())
    # No router ever committed: the tickets are waiting in the inbound topic, not lost.
    assert (data["sent"], data["lost"], data["not_routed"], data["routed"]) == (25, 0, 25, 0)
    assert data["stop_reason"] == "stalled" and data["router_committed"] == {}
    reported = runner.invoke(app, ["report", "--dir", run_dir])
    assert reported.exit_code == 0, reported.output
    assert (tmp_path / "run" / "report.md").exists()


def _outcome_row(i: int, *, latency_s: float, backlogged: bool) -> dict[str, object]:
    return {
        "ticket_id": f"T{i}",
        "truth": "hardware" if i % 2 else "software",
        "storm": None,
        "sent_at": 1_800_000_000.0 + i,
        "kind": "routed",
        "predicted": "hardware" if i % 2 else "software",
        "confidence": 0.9,
        "done_at": 1_800_000_000.0 + i + latency_s,
        "latency_s": latency_s,
        "queue_wait_s": None,
        "inference_s": None,
        "publish_s": None,
        "backlogged": backlogged,
    }


def test_a_demo_backlog_never_reaches_the_routers_mttr_row(tmp_path: Path) -> None:
    # 200 tickets answered in 0.1 s while the router kept up, 800 sent into a backlog that
    # made them wait 300 s (more than a dispatcher's 240 s): the backlog must not count.
    rows = [_outcome_row(i, latency_s=0.1, backlogged=False) for i in range(200)]
    rows += [_outcome_row(i, latency_s=300.0, backlogged=True) for i in range(200, 1000)]
    (tmp_path / "outcomes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["mttr", "--dir", str(tmp_path), "--volume", "3000"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "mttr.json").read_text())
    router = next(r for r in data["results"] if r["name"] == "this router (measured)")
    assert router["routing_latency_s"] == pytest.approx(0.1)
    assert data["assumptions"]["measured_decisions"] == 200
    assert data["assumptions"]["backlogged_decisions_left_out"] == 800
    saved = data["saved_vs_baseline"]["this router (measured)"]
    assert saved["reference_hours_per_day"] > 0
    md = "\n".join(_headline_md(data, figure=None))
    assert "800 tickets sent while it was saturated are left out" in md


def test_only_backlogged_measurements_leave_the_router_row_assumed(tmp_path: Path) -> None:
    rows = [_outcome_row(i, latency_s=300.0, backlogged=True) for i in range(100)]
    (tmp_path / "outcomes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["mttr", "--dir", str(tmp_path), "--volume", "3000"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "mttr.json").read_text())
    assert data["results"][0]["name"] == "this router (assumed)"
    assert data["results"][0]["routing_latency_s"] == pytest.approx(0.2)
