"""The load generator's commands (`ticket-router loadgen ...`) and `ticket-router demo`.

Owns argument parsing, file layout of a run folder and printing figures; the work is done
by traffic / replay / collect / mttr / report. Imports stay light at module level (typer
only) so that `ticket-router --help` is fast; everything heavy is imported inside the
command that needs it.

A run folder holds: traffic.json, manifest.jsonl, replay.json (replay); collect.json,
outcomes.jsonl (collect); mttr.json (mttr); report.md, report.json, *.png (report); and for
the demo (`loadgen.demo`) probe.json, demo.json and worker.log.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from loadgen.steps import (
    DEFAULT_STORM,
    collect_step,
    console,
    day_schedule,
    load_or_make_corpus,
    load_taxonomy,
    mttr_step,
    print_collect,
    print_mttr,
    print_replay,
    replay_step,
    report_step,
    run_number,
    start_of,
    traffic_model,
    traffic_summary,
)

if TYPE_CHECKING:
    from loadgen.traffic import Schedule

app = typer.Typer(
    help="Load generation and measurement: corpus, traffic, replay, collect, MTTR, report.",
    no_args_is_help=True,
)

FORMATS = ("canonical", "servicenow", "jira", "zendesk")

Dir = Annotated[Path, typer.Option("--dir", help="Run folder (inputs and outputs).")]
Bootstrap = Annotated[str, typer.Option(help="Kafka bootstrap servers (HOST:PORT).")]
TaxonomyOpt = Annotated[
    Path | None, typer.Option("--taxonomy", help="Taxonomy YAML (default: packaged).")
]
Volume = Annotated[
    float, typer.Option("--volume", min=0, help="Tickets on an average business day.")
]
PeakToTrough = Annotated[
    float, typer.Option("--peak-to-trough", min=1.01, help="Intraday max/min rate ratio.")
]
StartDay = Annotated[
    str, typer.Option("--start", help="Day of the schedule, YYYY-MM-DD (UTC); sets the weekday.")
]
Hours = Annotated[float, typer.Option("--hours", min=0.01, help="Length of the schedule.")]
StartHour = Annotated[float, typer.Option("--start-hour", min=0, help="Hour of day it starts.")]
Storms = Annotated[
    list[str] | None,
    typer.Option(
        "--storm",
        help="Incident storm NAME@HH:MM[/TICKETS[/MINUTES[/QUEUE]]], time of day; repeatable."
        f" Default: {DEFAULT_STORM}. Use --no-storms for none.",
    ),
]
NoStorms = Annotated[bool, typer.Option("--no-storms", help="No incident storms.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]


@app.command("traffic")
def traffic_command(
    volume: Volume = 100_000,
    peak_to_trough: PeakToTrough = 12.0,
    start: StartDay = "2026-11-25",
    start_hour: StartHour = 0.0,
    hours: Hours = 24.0,
    storm: Storms = None,
    no_storms: NoStorms = False,
    seed: Seed = 0,
    plot: Annotated[Path | None, typer.Option(help="Write the schedule as a PNG.")] = None,
) -> None:
    """Print (and optionally plot) a day's arrival schedule: per hour, totals, peak rate."""
    from rich.table import Table

    model = traffic_model(
        volume=volume, peak_to_trough=peak_to_trough, storms=storm, no_storms=no_storms
    )
    schedule = day_schedule(
        model, start=start_of(start), start_hour=start_hour, hours=hours, seed=seed
    )
    summary = traffic_summary(model, schedule)
    table = Table("hour", "tickets", "per s", title=f"{schedule.start:%a %Y-%m-%d %H:%M} UTC")
    for i, n in enumerate(summary["per_hour"]):
        at = schedule.start + timedelta(hours=i)
        table.add_row(f"{at:%a %H:%M}", str(n), f"{n / 3600:.2f}")
    out = console()
    out.print(table)
    out.print(
        f"sampled {summary['sampled']} (expected {summary['expected']:.0f}),"
        f" storms {summary['storm_tickets']} ({'; '.join(summary['storms']) or 'none'}),"
        f" peak {summary['peak_per_s']:.2f}/s (1-min bins),"
        f" intraday peak/trough {model.intraday_peak_to_trough():.2f}"
    )
    if plot:
        _plot_schedule(schedule, plot)
        out.print(f"wrote {plot}")


def _plot_schedule(schedule: Schedule, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_min = schedule.counts_per_bin(60.0)
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot([i / 60 for i in range(per_min.size)], per_min / 60)
    ax.set(xlabel="hours since start", ylabel="arrivals per second (1-min bins)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@app.command("replay")
def replay_command(
    bootstrap: Bootstrap,
    out_dir: Dir = Path(".state/loadgen/run"),
    topic: Annotated[str | None, typer.Option(help="Inbound topic (default: taxonomy).")] = None,
    taxonomy: TaxonomyOpt = None,
    corpus: Annotated[Path | None, typer.Option(help="Corpus JSONL to draw from.")] = None,
    corpus_n: Annotated[int, typer.Option(help="Generated corpus size if no file.")] = 2000,
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = (
        "servicenow"
    ),
    speedup: Annotated[float, typer.Option(min=0.001, help="Simulated s per real s.")] = 96.0,
    asap: Annotated[bool, typer.Option("--asap", help="Ignore the schedule's pace.")] = False,
    volume: Volume = 100_000,
    peak_to_trough: PeakToTrough = 12.0,
    start: StartDay = "2026-11-25",
    start_hour: StartHour = 0.0,
    hours: Hours = 24.0,
    storm: Storms = None,
    no_storms: NoStorms = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Send at most N tickets.")] = None,
    max_wall_s: Annotated[float | None, typer.Option(help="Stop after N real seconds.")] = None,
    seed: Seed = 0,
    run: Annotated[int | None, typer.Option(help="Run number in ticket ids (0-9999).")] = None,
) -> None:
    """Publish tickets to the inbound topic on a day's schedule (96x: a day in 15 min)."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {FORMATS}")
    model = traffic_model(
        volume=volume, peak_to_trough=peak_to_trough, storms=storm, no_storms=no_storms
    )
    schedule = day_schedule(
        model, start=start_of(start), start_hour=start_hour, hours=hours, seed=seed
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "traffic.json").write_text(
        json.dumps(traffic_summary(model, schedule), indent=2) + "\n"
    )
    result = replay_step(
        bootstrap=bootstrap,
        topic=topic or load_taxonomy(taxonomy).topics.inbound,
        out_dir=out_dir,
        corpus=load_or_make_corpus(corpus, n=corpus_n, seed=seed),
        schedule=schedule,
        fmt=fmt,
        speedup=None if asap else speedup,
        seed=seed,
        run=run_number() if run is None else run,
        limit=limit,
        max_wall_s=max_wall_s,
    )
    print_replay(result)


@app.command("collect")
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
    from loadgen.outputs import WaitPolicy

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


@app.command("mttr")
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
    from loadgen.mttr import DeskAssumptions

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


@app.command("report")
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


def _mount_corpus() -> None:
    # The corpus command lives with the corpus generator; mount it when that module exists.
    try:
        from loadgen.corpus import corpus_command
    except ImportError:  # TODO: drop this guard once loadgen/corpus.py is always present
        return
    app.command("corpus")(corpus_command)


_mount_corpus()


def _mount_drift() -> None:
    # The drift scenario owns its options (loadgen.drift), as the corpus command does.
    from loadgen.drift import drift_command

    app.command("drift")(drift_command)


_mount_drift()


# --- ticket-router demo: broker + worker + probe + replay + collect + mttr + report ---------


def demo(
    out_dir: Dir = Path(".state/demo"),
    port: Annotated[int, typer.Option(help="Embedded broker port.")] = 9092,
    model: Annotated[
        Path | None, typer.Option(help="Expert folder (default: the default expert, cached).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = (
        "servicenow"
    ),
    volume: Volume = 100_000,
    budget_min: Annotated[
        float,
        typer.Option(
            min=3,
            help="Minutes this command may take (make demo's 20 minutes minus ~2 of set-up);"
            " the replay gets what the build, the worker start and the probe leave (1-8 min).",
        ),
    ] = 18.0,
    replay_min: Annotated[
        float | None, typer.Option(min=0.5, help="Replay this many minutes (overrides budget).")
    ] = None,
    headroom: Annotated[
        float,
        typer.Option(
            min=0.05,
            max=1.0,
            help="Busiest replayed minute <= this share of the measured capacity.",
        ),
    ] = 0.8,
    stall_s: Annotated[
        float, typer.Option(min=1, help="Drain ends after this long without router progress.")
    ] = 60.0,
    corpus_n: Annotated[int, typer.Option(help="Generated corpus size.")] = 2000,
    seed: Seed = 0,
) -> None:
    """Broker + expert + worker, a capacity probe, the busiest hours of a 100k-ticket day
    compressed only as far as the router keeps up, then collect + MTTR + report.

    Ctrl-C once tickets flow: stop, report what was measured (labelled); twice: abort.
    """
    from loadgen.demo import DemoOptions, run_demo

    if fmt not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {FORMATS}")
    code = run_demo(
        DemoOptions(
            out_dir=out_dir,
            port=port,
            model=model,
            fmt=fmt,
            volume=volume,
            corpus_n=corpus_n,
            seed=seed,
            budget_s=budget_min * 60,
            replay_s=replay_min * 60 if replay_min else None,
            headroom=headroom,
            stall_s=stall_s,
        )
    )
    if code:
        raise typer.Exit(code)


# --- ticket-router loadgen capacity: the highest rate meeting the latency SLO ------------


@app.command("capacity")
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
    from loadgen import capacity
    from worker.logs import configure_logging

    configure_logging(level="WARNING", fmt="console")
    try:
        plan = capacity.RampPlan(
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
    slo = capacity.Slo(p99_s=slo_p99_s, min_delivered_fraction=min_delivered)
    run = capacity.CapacityRun(
        model_dir=model, bootstrap=bootstrap, out_dir=out_dir, partitions=partitions, seed=seed
    )
    out = console()
    code, doc = capacity.run_capacity(
        run, plan, slo, on_step=lambda s: out.print(capacity.step_line(s))
    )
    if code == capacity.EXIT_MODEL_MISSING:
        out.print(
            f"[red]no usable expert at {doc['model_dir']}[/]: {doc['error']}\n"
            "build it with `ticket-router expert build` (or pass --model)"
        )
        raise typer.Exit(code)
    capacity.print_curve(doc)
    out.print(f"wrote {out_dir / 'capacity.json'}, {out_dir / 'capacity.png'}")
