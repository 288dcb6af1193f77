"""The measuring commands: the `bench` group (worker, feedback, thresholds) and the
`loadgen` group's collect, mttr, report and capacity.

Owns their argument parsing; the work is done by `bench.steps`, `bench.capacity` and the
benches. `ticket_router.py` mounts collect/mttr/report/capacity beside the traffic
commands, so the CLI reads `ticket-router loadgen collect ...` as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bench.cost import Prices
from bench.feedback_bench import bench_feedback
from bench.similar_bench import bench_similar
from bench.steps import collect_step, mttr_step, print_collect, print_mttr, report_step
from bench.thresholds_bench import bench_thresholds
from bench.worker_bench import bench_worker
from loadgen.cli import Bootstrap, Dir, Seed, TaxonomyOpt, Volume
from loadgen.steps import console, load_taxonomy

DEFAULT_PRICES = Prices()
DeskOpt = Annotated[
    str | None,
    typer.Option(
        "--desk",
        help="The desk behind the queues: a desk file (from --calibrate), or `toy` for the"
        " old assumed desk (default: the desk shipped with the project, fitted on a public"
        " ServiceNow event log).",
    ),
]

# `ticket-router bench ...`: benchmarks that print figures.
app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.command("worker")(bench_worker)
app.command("feedback")(bench_feedback)
app.command("thresholds")(bench_thresholds)
app.command("similar")(bench_similar)


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
    router_triage_share: Annotated[
        float,
        typer.Option(min=0, max=1, help="This router's triage share if nothing was measured."),
    ] = 0.05,
    desk: DeskOpt = None,
    replicates: Annotated[
        int | None,
        typer.Option(min=0, help="Bootstrap replicates of a calibrated desk to use (all)."),
    ] = None,
    calibrate: Annotated[
        Path | None,
        typer.Option(
            help="Fit a desk to this ticket-history export (ServiceNow event log or list, Zendesk"
            " or Jira JSON) and write --out/desk.yaml, calibration.json, calibration.md"
            " instead of simulating.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where --calibrate writes (default: --dir).")
    ] = None,
    export_format: Annotated[
        str | None,
        typer.Option(
            "--export-format",
            help="The export's format: servicenow-events, servicenow, zendesk, jira"
            " (default: detected).",
        ),
    ] = None,
    export_end: Annotated[
        str | None,
        typer.Option(help="When the export was taken, ISO (default: its last timestamp)."),
    ] = None,
    group_field: Annotated[
        str | None, typer.Option(help="Jira: the field holding the assignment group.")
    ] = None,
    desk_name: Annotated[str | None, typer.Option(help="Name of the fitted desk.")] = None,
    citation: Annotated[
        str | None, typer.Option(help="The export's citation/licence, for the provenance.")
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Bootstrap replicates the calibration fits.")
    ] = 20,
    min_group: Annotated[
        int, typer.Option(min=1, help="Groups with fewer incidents are pooled.")
    ] = 10,
    blocks: Annotated[
        int, typer.Option(min=2, help="Time blocks the validation holds back in turn.")
    ] = 5,
) -> None:
    """MTTR (mean, median, p90 with intervals) per routing method on a service desk, and
    hours/day saved; or, with --calibrate, fit a desk to your own ticket export.

    Uses the run folder's outcomes.jsonl (from `collect`) as this router's measured
    decisions and latencies when it exists. The desk (--desk) is the one shipped with the
    project (fitted on a public ServiceNow event log) unless given; `--desk toy` is the old
    assumed desk (agents staffed for the busiest hour, handling times in minutes).
    """
    from loadgen.desk_model import DeskAssumptions

    if calibrate is not None:
        _calibrate(
            calibrate,
            out or out_dir,
            export_format=export_format,
            export_end=export_end,
            group_field=group_field,
            desk_name=desk_name,
            citation=citation,
            bootstrap=bootstrap,
            min_group=min_group,
            blocks=blocks,
            seed=seed,
        )
        return

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
        router_triage_share=router_triage_share,
        desk=load_desk(desk),
        replicates=replicates,
    )
    print_mttr(data)


def load_desk(spec: str | None) -> object:
    """The desk a --desk value names (None: the toy desk), or exit 2 with the reason."""
    from loadgen.desk_file import DeskFileError, resolve_desk

    try:
        return resolve_desk(spec)
    except DeskFileError as exc:
        console().print(f"[red]desk error:[/] {exc}")
        raise typer.Exit(2) from exc


def _calibrate(
    export: Path,
    out_dir: Path,
    *,
    export_format: str | None,
    export_end: str | None,
    group_field: str | None,
    desk_name: str | None,
    citation: str | None,
    bootstrap: int,
    min_group: int,
    blocks: int,
    seed: int,
) -> None:
    import shlex
    from datetime import UTC, datetime

    from bench.desk_calibration import FitOptions
    from bench.desk_steps import calibrate_step, print_calibration
    from bench.itsm_exports import ExportError, ExportFormat

    if export_format is not None and export_format not in {f.value for f in ExportFormat}:
        raise typer.BadParameter(f"--export-format: one of {[f.value for f in ExportFormat]}")
    end = None
    if export_end:
        end = datetime.fromisoformat(export_end)
        end = end.replace(tzinfo=UTC) if end.tzinfo is None else end
    try:
        data = calibrate_step(
            export=export,
            out_dir=out_dir,
            options=FitOptions(min_group_incidents=min_group, bootstrap=bootstrap, seed=seed),
            fmt=export_format,
            name=desk_name,
            export_end=end,
            group_field=group_field,
            citation=citation,
            command=shlex.join(
                [
                    "ticket-router",
                    "loadgen",
                    "mttr",
                    "--calibrate",
                    export.name,
                    "--out",
                    str(out_dir),
                    "--bootstrap",
                    str(bootstrap),
                    "--min-group",
                    str(min_group),
                    "--blocks",
                    str(blocks),
                    "--seed",
                    str(seed),
                    *(["--export-format", export_format] if export_format else []),
                    *(["--export-end", export_end] if export_end else []),
                    *(["--group-field", group_field] if group_field else []),
                ]
            ),  # fmt: skip
            blocks=blocks,
        )
    except (ExportError, ValueError) as exc:
        console().print(f"[red]calibration failed:[/] {exc}")
        raise typer.Exit(2) from exc
    print_calibration(data)


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
    desk: DeskOpt = None,
    price_input_per_mtok: Annotated[
        float, typer.Option(help="Cloud LLM US$ per million input tokens (README: source).")
    ] = DEFAULT_PRICES.input_per_mtok,
    price_output_per_mtok: Annotated[
        float, typer.Option(help="Cloud LLM US$ per million output tokens (README: source).")
    ] = DEFAULT_PRICES.output_per_mtok,
    machine_price_per_month: Annotated[
        float, typer.Option(help="US$ per CPU machine-month (README: source).")
    ] = DEFAULT_PRICES.machine_per_month,
    gpu_price_per_month: Annotated[
        float, typer.Option(help="US$ per GPU machine-month (README: source).")
    ] = DEFAULT_PRICES.gpu_machine_per_month,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="Expert folder whose tokenizer counts a cloud router's tokens per ticket"
            " (default: .state/models/default-expert when built)."
        ),
    ] = None,
    input_tokens_per_ticket: Annotated[
        float | None, typer.Option(help="Use this many input tokens per ticket instead.")
    ] = None,
    output_tokens_per_ticket: Annotated[
        float | None, typer.Option(help="Use this many output tokens per ticket instead.")
    ] = None,
) -> None:
    """Write report.md, report.json and PNG figures for a run folder, with the cost model.

    With --desk, the MTTR comparison is simulated again on that desk first (mttr.json).
    """
    if desk is not None:
        data = mttr_step(
            out_dir=out_dir,
            taxonomy=load_taxonomy(None),
            volume=volume or 100_000,
            hours=24.0,
            seed=0,
            assumptions=_toy_assumptions(),
            cloud_accuracy=0.911,
            cloud_latency_s=2.5,
            router_accuracy=0.9,
            router_latency_s=0.2,
            desk=load_desk(desk),
        )
        print_mttr(data)
    paths = report_step(
        out_dir=out_dir,
        cores=cores,
        tickets_per_s=tickets_per_s,
        gpu_tickets_per_s=gpu_tickets_per_s,
        cores_per_machine=cores_per_machine,
        volume=volume,
        peak_per_s=peak_per_s,
        prices=Prices(
            input_per_mtok=price_input_per_mtok,
            output_per_mtok=price_output_per_mtok,
            machine_per_month=machine_price_per_month,
            gpu_machine_per_month=gpu_price_per_month,
        ),
        tokenizer=tokenizer,
        tokens_override=(input_tokens_per_ticket, output_tokens_per_ticket),
    )
    data = json.loads(paths["json"].read_text())
    print_costs(data)
    console().print("wrote " + ", ".join(str(p) for p in paths.values()))


def print_costs(data: dict[str, object]) -> None:
    """The capacity line and the monthly cost rows of a report."""
    cap = data.get("capacity")
    out = console()
    if isinstance(cap, dict):
        out.print(
            f"capacity: {cap['tickets_per_s_per_core']:.2f} tickets/s per core"
            f" ({cap['throughput_source']}); peak {cap['peak_per_s']:.2f}/s needs"
            f" {cap['cpu_cores_for_peak']} cores = {cap['cpu_machines']} machine(s)"
            + (f", or {cap['gpus_for_peak']} GPU(s)" if "gpus_for_peak" in cap else "")
        )
    costs = data.get("costs")
    if isinstance(costs, dict):
        for row in costs["rows"]:
            out.print(f"cost: {row['option']}: ${row['usd_per_month']:,.0f}/month ({row['how']})")


def _toy_assumptions() -> object:
    from loadgen.desk_model import DeskAssumptions

    return DeskAssumptions()


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
