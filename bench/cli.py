"""The measuring commands: the `bench` group (worker, feedback) and the `loadgen` group's
collect, mttr, report and capacity.

Owns their argument parsing; the work is done by `bench.steps`, `bench.capacity` and the
benches. `ticket_router.py` mounts collect/mttr/report/capacity beside the traffic
commands, so the CLI reads `ticket-router loadgen collect ...` as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bench.feedback_bench import bench_feedback
from bench.steps import collect_step, mttr_step, print_collect, print_mttr, report_step
from bench.worker_bench import bench_worker
from loadgen.cli import Bootstrap, Dir, Seed, TaxonomyOpt, Volume
from loadgen.steps import console, load_taxonomy

# `ticket-router bench ...`: benchmarks that print figures.
app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.command("worker")(bench_worker)
app.command("feedback")(bench_feedback)


def collect_command(
    bootstrap: Bootstrap,
    out_dir: Dir = Path(".state/loadgen/run"),
    taxonomy: TaxonomyOpt = None,
    group: Annotated[str | None, typer.Option(help="Consumer group (default: unique).")] = None,
    router_group: Annotated[
        str,
        typer.Option(
            help="The router's consumer group: its committed offsets tell a ticket still waiting"
            " (not routed) from one the router committed past without output (LOST)."
            " Empty: unknown, nothing is called lost."
        ),
    ] = "ticket-router",
    idle_s: Annotated[
        float,
        typer.Option(help="Stop after this long without a new output or router progress."),
    ] = 10.0,
    deadline_s: Annotated[float, typer.Option(help="Stop after this long at most.")] = 3600.0,
    bin_s: Annotated[float, typer.Option(help="Time-series bin width (s).")] = 10.0,
) -> None:
    """Read the routed/triage/dead-letter topics and measure the run against its manifest."""
    from bench.outputs import WaitPolicy

    data = collect_step(
        bootstrap=bootstrap,
        out_dir=out_dir,
        taxonomy=load_taxonomy(taxonomy),
        group=group,
        router_group=router_group or None,
        policy=WaitPolicy(stall_s=idle_s, max_wait_s=deadline_s),
        bin_s=bin_s,
    )
    print_collect(data)


def mttr_command(
    out_dir: Dir = Path(".state/loadgen/run"),
    taxonomy: TaxonomyOpt = None,
    volume: Volume = 100_000,
    hours: Annotated[float, typer.Option(min=0.1, help="Simulated span from midnight.")] = 24.0,
    seed: Seed = 0,
    l1_min: Annotated[float, typer.Option(help="L1 mean handling minutes.")] = 25.0,
    l2_min: Annotated[float, typer.Option(help="L2 mean handling minutes.")] = 60.0,
    l3_min: Annotated[float, typer.Option(help="L3 mean handling minutes.")] = 120.0,
    handling_cv: Annotated[float, typer.Option(help="Handling-time CV (1 = exponential).")] = 1.0,
    penalty_min: Annotated[float, typer.Option(help="Agent minutes lost per misroute.")] = 15.0,
    triage_min: Annotated[float, typer.Option(help="Human triage minutes per ticket.")] = 5.0,
    utilisation: Annotated[float, typer.Option(help="Staffing target at the peak hour.")] = 0.85,
    manual_min: Annotated[float, typer.Option(help="Dispatcher minutes per ticket.")] = 4.0,
    manual_accuracy: Annotated[float, typer.Option(help="Dispatcher accuracy.")] = 0.85,
    cloud_accuracy: Annotated[float, typer.Option(help="Cloud-LLM router accuracy.")] = 0.911,
    cloud_latency_s: Annotated[float, typer.Option(help="Cloud-LLM s per ticket.")] = 2.5,
    router_accuracy: Annotated[
        float, typer.Option(help="This router's accuracy if nothing was measured.")
    ] = 0.9,
    router_latency_s: Annotated[
        float, typer.Option(help="This router's latency if nothing was measured.")
    ] = 0.2,
) -> None:
    """MTTR (mean, p90) per scenario from a service-desk simulation, and hours/day saved.

    Uses the run folder's outcomes.jsonl (from `collect`) as this router's measured
    decisions and latencies when it exists.
    """
    from loadgen.desk_model import DeskAssumptions

    assumptions = DeskAssumptions(
        handling_min_by_tier={"L1": l1_min, "L2": l2_min, "L3": l3_min},
        handling_cv=handling_cv,
        reassignment_penalty_min=penalty_min,
        triage_min=triage_min,
        utilisation=utilisation,
        manual_min_per_ticket=manual_min,
        manual_accuracy=manual_accuracy,
    )
    data = mttr_step(
        out_dir=out_dir,
        taxonomy=load_taxonomy(taxonomy),
        volume=volume,
        hours=hours,
        seed=seed,
        assumptions=assumptions,
        cloud_accuracy=cloud_accuracy,
        cloud_latency_s=cloud_latency_s,
        router_accuracy=router_accuracy,
        router_latency_s=router_latency_s,
    )
    print_mttr(data)


def report_command(
    out_dir: Dir = Path(".state/loadgen/run"),
    cores: Annotated[int, typer.Option(min=1, help="CPU cores the worker(s) used.")] = 2,
    tickets_per_s: Annotated[
        float | None, typer.Option(help="Override the measured throughput.")
    ] = None,
    gpu_tickets_per_s: Annotated[
        float | None, typer.Option(help="Throughput of one GPU (input, not measured).")
    ] = None,
    cores_per_machine: Annotated[int, typer.Option(min=1)] = 16,
    volume: Annotated[float | None, typer.Option(help="Daily volume to size for.")] = None,
    peak_per_s: Annotated[float | None, typer.Option(help="Peak rate to size for.")] = None,
) -> None:
    """Write report.md, report.json and PNG figures for a run folder, with the cost model."""
    paths = report_step(
        out_dir=out_dir,
        cores=cores,
        tickets_per_s=tickets_per_s,
        gpu_tickets_per_s=gpu_tickets_per_s,
        cores_per_machine=cores_per_machine,
        volume=volume,
        peak_per_s=peak_per_s,
    )
    data = json.loads(paths["json"].read_text())
    cap = data.get("capacity")
    if cap:
        console().print(
            f"capacity: {cap['tickets_per_s_per_core']:.2f} tickets/s per core"
            f" ({cap['throughput_source']}); peak {cap['peak_per_s']:.2f}/s needs"
            f" {cap['cpu_cores_for_peak']} cores = {cap['cpu_machines']} machine(s)"
            + (f", or {cap['gpus_for_peak']} GPU(s)" if "gpus_for_peak" in cap else "")
        )
    console().print("wrote " + ", ".join(str(p) for p in paths.values()))


def capacity_command(
    out_dir: Dir = Path(".state/loadgen/capacity"),
    model: Annotated[
        Path | None, typer.Option(help="Expert folder (default: .state/models/default-expert).")
    ] = None,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka to use (default: an embedded broker, free port).")
    ] = None,
    start_rate: Annotated[float, typer.Option(min=0.01, help="First offered rate, /s.")] = 25.0,
    factor: Annotated[float, typer.Option(min=1.01, help="Next rate = rate x factor.")] = 1.5,
    step_add: Annotated[
        float, typer.Option(min=0, help="Next rate = rate + this, /s (overrides --factor).")
    ] = 0.0,
    step_s: Annotated[float, typer.Option(min=0.5, help="Seconds per step.")] = 15.0,
    tail_s: Annotated[float, typer.Option(min=0, help="Grace after a step's sends, s.")] = 2.0,
    slo_p99_s: Annotated[float, typer.Option(min=0.001, help="p99 latency SLO, s.")] = 1.0,
    min_delivered: Annotated[
        float, typer.Option(min=0, max=1, help="Share delivered within step + tail.")
    ] = 0.99,
    max_rate: Annotated[float, typer.Option(min=0.01, help="Highest rate to offer, /s.")] = 2000.0,
    max_steps: Annotated[int, typer.Option(min=1, help="Most steps, bisection included.")] = 12,
    bisect: Annotated[bool, typer.Option(help="One step between last pass and first fail.")] = (
        True
    ),
    partitions: Annotated[int, typer.Option(min=1, help="Partitions per topic.")] = 6,
    seed: Seed = 0,
) -> None:
    """Ramp the open-loop rate to the highest one with p99 under the SLO and bounded lag.

    Writes capacity.json and capacity.png to --dir.
    """
    from bench import capacity, capacity_ramp, capacity_report
    from worker.logs import configure_logging

    configure_logging(level="WARNING", fmt="console")
    try:
        plan = capacity_ramp.RampPlan(
            start_rate_per_s=start_rate,
            growth_factor=factor,
            growth_add_per_s=step_add,
            step_s=step_s,
            tail_s=tail_s,
            max_rate_per_s=max_rate,
            max_steps=max_steps,
            bisect=bisect,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    slo = capacity_ramp.Slo(p99_s=slo_p99_s, min_delivered_fraction=min_delivered)
    run = capacity.CapacityRun(
        model_dir=model, bootstrap=bootstrap, out_dir=out_dir, partitions=partitions, seed=seed
    )
    out = console()
    code, doc = capacity.run_capacity(
        run, plan, slo, on_step=lambda s: out.print(capacity_report.step_line(s))
    )
    if code == capacity.EXIT_MODEL_MISSING:
        out.print(
            f"[red]no usable expert at {doc['model_dir']}[/]: {doc['error']}\n"
            "build it with `ticket-router expert build` (or pass --model)"
        )
        raise typer.Exit(code)
    capacity_report.print_curve(doc)
    out.print(f"wrote {out_dir / 'capacity.json'}, {out_dir / 'capacity.png'}")
