"""The load generator's commands (`ticket-router loadgen traffic/replay/corpus`) and the
options the bench and scenario commands share with them.

Owns argument parsing of the traffic commands; the work is done by `loadgen.steps`.
`bench.cli` (collect, mttr, report, capacity) and `scenarios.cli` (demo, drift) add their
commands to the same `loadgen` group in `ticket_router.py`. Imports stay light at module
level (typer only) so that `ticket-router --help` is fast; everything heavy is imported
inside the command that needs it.

A run folder holds: traffic.json, manifest.jsonl, replay.json (replay); collect.json,
outcomes.jsonl (collect); mttr.json (mttr); report.md, report.json, *.png (report); and for
the demo (`scenarios.demo`) probe.json, demo.json and worker.log.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from loadgen.corpus import corpus_command
from loadgen.steps import (
    DEFAULT_STORM,
    console,
    day_schedule,
    load_or_make_corpus,
    load_taxonomy,
    print_replay,
    replay_step,
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


# The corpus command lives with the corpus generator.
app.command("corpus")(corpus_command)
