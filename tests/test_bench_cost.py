"""Money next to time: monthly cost rows, and tokens per ticket counted with an expert's
tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cost import (
    DAYS_PER_MONTH,
    PRICE_SOURCES,
    CapacityInputs,
    Prices,
    capacity,
    cloud_prompt,
    measure_tokens,
    monthly_costs,
)
from expert.encoder import packaged_encoder_dir
from schemas.taxonomy import Taxonomy


def test_monthly_costs_turn_throughput_and_tokens_into_dollars() -> None:
    cap = capacity(
        CapacityInputs(tickets_per_s=40.0, cpu_cores=2, gpu_tickets_per_s=500.0),
        volume_per_day=100_000,
        peak_per_s=300.0,
    )
    assert cap["cpu_machines"] == 2  # 300 / (20 per core x 0.7) = 22 cores > 16
    tokens = {"input_tokens_per_ticket": 1000.0, "output_tokens_per_ticket": 10.0}
    prices = Prices(
        input_per_mtok=2.0,
        output_per_mtok=8.0,
        machine_per_month=500.0,
        gpu_machine_per_month=900.0,
    )
    costs = monthly_costs(cap, tokens=tokens, prices=prices, volume_per_day=100_000)
    rows = {r["option"]: r for r in costs["rows"]}
    assert rows["this router, CPU machines"]["usd_per_month"] == 1000.0
    assert rows["this router, GPU machines"]["usd_per_month"] == 900.0  # 1 GPU (input)
    per_ticket = (1000 * 2.0 + 10 * 8.0) / 1e6
    assert rows["cloud LLM API"]["usd_per_ticket"] == pytest.approx(per_ticket)
    assert rows["cloud LLM API"]["usd_per_month"] == pytest.approx(
        per_ticket * 100_000 * DAYS_PER_MONTH
    )
    assert set(costs["price_sources"]) == set(costs["prices"]) == set(PRICE_SOURCES)


def test_tokens_per_ticket_are_counted_with_the_experts_tokenizer() -> None:
    tax = Taxonomy.load()
    queues = [(q.name, q.description) for q in tax.queues]
    short = ("VPN down", "network_vpn")
    long = ("VPN down " * 50, "network_vpn")
    t_short = measure_tokens([short], tokenizer_dir=packaged_encoder_dir(), queues=queues)
    t_both = measure_tokens([short, long], tokenizer_dir=packaged_encoder_dir(), queues=queues)
    assert t_short["instruction_tokens"] > 100  # twelve queues with their descriptions
    assert t_short["input_tokens_per_ticket"] > t_short["instruction_tokens"]
    assert t_both["input_tokens_per_ticket"] > t_short["input_tokens_per_ticket"] + 40
    assert t_short["output_tokens_per_ticket"] >= 2  # the queue's name and an end token
    assert "network_vpn" in cloud_prompt("x", queues=queues)


def test_report_command_prints_and_writes_the_cost_rows(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from scenarios.cli import loadgen_app as app
    from tests.test_bench_report_cli import sample_collect

    (tmp_path / "collect.json").write_text(json.dumps(sample_collect()))
    result = CliRunner().invoke(
        app,
        ["report", "--dir", str(tmp_path), "--tickets-per-s", "100", "--peak-per-s", "10",
         "--input-tokens-per-ticket", "1500", "--output-tokens-per-ticket", "5",
         "--price-input-per-mtok", "2.5", "--price-output-per-mtok", "10",
         "--machine-price-per-month", "600"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    cost = report["headline"]["monthly_cost_usd"]
    assert cost["this router, CPU machines"] == 600.0
    assert cost["cloud LLM API"] == pytest.approx((1500 * 2.5 + 5 * 10) / 1e6 * 100_000 * 365 / 12)
    md = (tmp_path / "report.md").read_text()
    assert "| cloud LLM API |" in md and "list price as of" in md
