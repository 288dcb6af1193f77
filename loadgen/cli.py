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

import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Sequence

    from loadgen.outputs import StopReason, WaitPolicy, WaitStatus
    from loadgen.replay import Labeled, ReplayResult
    from loadgen.traffic import Schedule, TrafficModel
    from schemas.taxonomy import Taxonomy

app = typer.Typer(
    help="Load generation and measurement: corpus, traffic, replay, collect, MTTR, report.",
    no_args_is_help=True,
)

FORMATS = ("canonical", "servicenow", "jira", "zendesk")
CLOUD_TTFT_S = 0.85  # the reference system's time to first token (part of its 2.5 s)
DEFAULT_STORM = "vpn_outage@09:30/2000/30/network_vpn"

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


def _console() -> Any:
    from rich.console import Console

    return Console()


def _taxonomy(path: Path | None) -> Taxonomy:
    from schemas.taxonomy import Taxonomy, TaxonomyError

    try:
        return Taxonomy.load(path)
    except TaxonomyError as exc:
        _console().print(f"[red]taxonomy error:[/] {exc}")
        raise typer.Exit(2) from exc


def _start_of(day: str) -> datetime:
    try:
        return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise typer.BadParameter(f"--start: expected YYYY-MM-DD, got {day!r}") from exc


def traffic_model(
    *, volume: float, peak_to_trough: float, storms: list[str] | None, no_storms: bool
) -> TrafficModel:
    """The traffic model from CLI values; storm times are times of day."""
    from loadgen.traffic import IncidentStorm, TrafficModel, storms_from_specs

    specs = [] if no_storms else (storms or [DEFAULT_STORM])
    try:
        parsed = storms_from_specs(specs, default=IncidentStorm())
        return TrafficModel(daily_volume=volume, peak_to_trough=peak_to_trough, storms=parsed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def day_schedule(
    model: TrafficModel, *, start: datetime, start_hour: float, hours: float, seed: int
) -> Schedule:
    """Sample from midnight (storm times are times of day), keep the requested window."""
    from loadgen.traffic import sample

    end_s = (start_hour + hours) * 3600
    full = sample(model, start=start, duration_s=end_s, seed=seed)
    return full.window(start_hour * 3600, end_s)


def traffic_summary(model: TrafficModel, schedule: Schedule) -> dict[str, Any]:
    """Figures of a schedule, for traffic.json and the report."""
    per_min = schedule.counts_per_bin(60.0)
    per_h = schedule.counts_per_bin(3600.0)
    base_peak = model.base_rate_per_s
    import numpy as np

    t = np.arange(0.0, schedule.duration_s, 60.0, dtype=np.float64)
    return {
        "start": schedule.start.isoformat(),
        "hours": schedule.duration_s / 3600,
        "daily_volume": model.daily_volume,
        "peak_to_trough": model.peak_to_trough,
        "expected": model.expected_arrivals(start=schedule.start, duration_s=schedule.duration_s),
        "sampled": len(schedule),
        "storm_tickets": int((schedule.storm_index >= 0).sum()),
        "storms": [
            f"{s.name}: {s.tickets} x {s.queue} in {s.duration_s / 60:.0f} min"
            for s in model.storms
        ],
        "peak_per_s": float(per_min.max() / 60) if per_min.size else 0.0,
        "base_peak_per_s": float(base_peak(t, start=schedule.start).max()) if t.size else 0.0,
        "per_hour": per_h.tolist(),
    }


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
        model, start=_start_of(start), start_hour=start_hour, hours=hours, seed=seed
    )
    summary = traffic_summary(model, schedule)
    table = Table("hour", "tickets", "per s", title=f"{schedule.start:%a %Y-%m-%d %H:%M} UTC")
    for i, n in enumerate(summary["per_hour"]):
        at = schedule.start + timedelta(hours=i)
        table.add_row(f"{at:%a %H:%M}", str(n), f"{n / 3600:.2f}")
    console = _console()
    console.print(table)
    console.print(
        f"sampled {summary['sampled']} (expected {summary['expected']:.0f}),"
        f" storms {summary['storm_tickets']} ({'; '.join(summary['storms']) or 'none'}),"
        f" peak {summary['peak_per_s']:.2f}/s (1-min bins),"
        f" intraday peak/trough {model.intraday_peak_to_trough():.2f}"
    )
    if plot:
        _plot_schedule(schedule, plot)
        console.print(f"wrote {plot}")


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


def load_or_make_corpus(corpus: Path | None, *, n: int, seed: int) -> list[Labeled]:
    """The corpus file, or `n` generated tickets (loadgen.corpus) when no file is given."""
    if corpus is not None:
        from loadgen.replay import load_corpus

        return list(load_corpus(corpus))
    from loadgen.corpus import generate

    return list(generate(n, seed=seed))


def replay_step(
    *,
    bootstrap: str,
    topic: str,
    out_dir: Path,
    corpus: list[Labeled],
    schedule: Schedule,
    fmt: str,
    speedup: float | None,
    seed: int,
    run: int,
    limit: int | None = None,
    max_wall_s: float | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> ReplayResult:
    """Publish the schedule; write manifest.jsonl and replay.json into `out_dir`."""
    from loadgen.itsm_formats import PayloadFormat
    from loadgen.replay import ReplayTarget, plan, replay

    planned = plan(schedule, corpus, seed=seed, speedup=speedup, limit=limit)
    target = ReplayTarget(bootstrap=bootstrap, topic=topic, fmt=PayloadFormat(fmt), run=run)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "manifest.jsonl").open("w", encoding="utf-8") as manifest:
        result = replay(
            planned,
            corpus,
            target=target,
            manifest=manifest,
            progress=progress,
            max_wall_s=max_wall_s,
            speedup=speedup,
            stop=stop,
            on_progress=on_progress,
        )
    (out_dir / "replay.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


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
        model, start=_start_of(start), start_hour=start_hour, hours=hours, seed=seed
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "traffic.json").write_text(
        json.dumps(traffic_summary(model, schedule), indent=2) + "\n"
    )
    result = replay_step(
        bootstrap=bootstrap,
        topic=topic or _taxonomy(taxonomy).topics.inbound,
        out_dir=out_dir,
        corpus=load_or_make_corpus(corpus, n=corpus_n, seed=seed),
        schedule=schedule,
        fmt=fmt,
        speedup=None if asap else speedup,
        seed=seed,
        run=_run_number() if run is None else run,
        limit=limit,
        max_wall_s=max_wall_s,
    )
    _print_replay(result)


def _run_number() -> int:
    return int(datetime.now(UTC).timestamp()) % 10_000


def _print_replay(r: ReplayResult) -> None:
    # As fast as possible, every ticket is due at 0: "lag" is then time since the start.
    lag = (
        f"; send lag p50 {r.lag_p50_s * 1000:.1f} ms p99 {r.lag_p99_s * 1000:.1f} ms"
        f" max {r.lag_max_s * 1000:.1f} ms"
        if r.speedup
        else " (as fast as possible: no schedule, no lag)"
    )
    _console().print(
        f"replay: sent {r.sent}/{r.planned}, acked {r.delivered}, failed {r.failed},"
        f" {r.wall_s:.1f} s wall, {r.send_rate_per_s:.1f}/s"
        + lag
        + (" (stopped at bound)" if r.stopped_early else "")
    )


def collect_step(
    *,
    bootstrap: str,
    out_dir: Path,
    taxonomy: Taxonomy,
    group: str | None = None,
    router_group: str | None = "ticket-router",
    policy: WaitPolicy | None = None,
    bin_s: float = 10.0,
    should_stop: Callable[[], StopReason | None] | None = None,
    on_status: Callable[[WaitStatus], None] | None = None,
    before_snapshot: Callable[[], None] | None = None,
    other_ids: Sequence[str] = (),
) -> dict[str, Any]:
    """Read outputs while the router progresses, join with manifest.jsonl; write collect.json
    and outcomes.jsonl.

    After the wait, `before_snapshot` runs (the demo stops its worker there, which finishes
    its in-flight tickets and commits), then the router group's committed offsets are read
    once more and the outputs of every ticket below them are awaited (`policy.settle_s`): a
    ticket with no output is LOST only if the router committed past it, else NOT ROUTED.
    """
    import uuid
    from dataclasses import asdict

    from loadgen.collect import account, owed_ids
    from loadgen.outputs import (
        OutputCollector,
        OutputTopics,
        RouterOffsets,
        WaitPolicy,
        settle,
        wait_for_router,
    )
    from loadgen.replay import read_manifest

    policy = policy or WaitPolicy()
    manifest = read_manifest(out_dir / "manifest.jsonl")
    replay_doc = out_dir / "replay.json"
    inbound = (
        json.loads(replay_doc.read_text())["topic"]
        if replay_doc.exists()
        else taxonomy.topics.inbound
    )
    topics = OutputTopics(
        routed=tuple(q.topic for q in taxonomy.queues),
        triage=taxonomy.topics.triage,
        dead_letter=taxonomy.topics.dead_letter,
    )
    collector = OutputCollector(
        bootstrap,
        topics,
        group_id=group or f"loadgen-collect-{uuid.uuid4().hex}",
        expected_ids={r.ticket_id for r in manifest if r.delivered},
    )
    partitions = {r.partition for r in manifest if r.partition is not None}
    committed: dict[int, int] | None = None
    with collector, contextlib.ExitStack() as stack:
        offsets = None
        if router_group:
            offsets = stack.enter_context(
                RouterOffsets(
                    bootstrap, group_id=router_group, topic=inbound, partitions=partitions
                )
            )
        reason = wait_for_router(
            collector,
            policy=policy,
            manifest=manifest,
            offsets=offsets,
            should_stop=should_stop,
            on_status=on_status,
        )
        if before_snapshot is not None:
            before_snapshot()
        if offsets is not None:
            committed = offsets.read()
        missing = settle(collector, owed=owed_ids(manifest, committed), settle_s=policy.settle_s)
    acc = account(
        manifest,
        collector.observations,
        labels=taxonomy.labels,
        bin_s=bin_s,
        committed=committed,
        other_ids=other_ids,
    )
    data = acc.to_json()
    data |= {
        "stop_reason": reason.value,
        "router_group": router_group,
        "wait_policy": asdict(policy),
        "owed_outputs_missing_after_settle": len(missing),
    }
    (out_dir / "collect.json").write_text(json.dumps(data, indent=2) + "\n")
    with (out_dir / "outcomes.jsonl").open("w", encoding="utf-8") as f:
        for o in acc.outcomes:
            f.write(json.dumps(asdict(o)) + "\n")
    return data


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
        taxonomy=_taxonomy(taxonomy),
        group=group,
        router_group=router_group or None,
        policy=WaitPolicy(stall_s=idle_s, max_wait_s=deadline_s),
        bin_s=bin_s,
    )
    _print_collect(data)


def _print_collect(c: dict[str, Any]) -> None:
    lat = c.get("latency_s") or {}

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    _console().print(
        f"collect: sent {c['sent']}, routed {c['routed']}, triage {c['triaged']},"
        f" dead-letter {c['dead_lettered']}, not routed when the run ended {c['not_routed']},"
        f" LOST {c['lost']}, DUPLICATED {c['duplicated']}, unexpected {c['unexpected']}"
        f" (stopped: {c.get('stop_reason')}); accuracy routed {pct(c['accuracy_routed'])},"
        f" top-1 {pct(c['accuracy_top1'])}; latency p50 {lat.get('p50', float('nan')):.3f} s"
        f" p99 {lat.get('p99', float('nan')):.3f} s max {lat.get('max', float('nan')):.3f} s;"
        f" sent while the router was saturated (backlog) {c['backlogged']}"
    )


def mttr_step(
    *,
    out_dir: Path,
    taxonomy: Taxonomy,
    volume: float,
    hours: float,
    seed: int,
    assumptions: Any,
    cloud_accuracy: float,
    cloud_latency_s: float,
    router_accuracy: float,
    router_latency_s: float,
) -> dict[str, Any]:
    """Simulate the desk for each scenario on one day of traffic; write mttr.json."""
    from collections import Counter

    from loadgen import mttr
    from loadgen.traffic import IncidentStorm, TrafficModel, sample

    queues = taxonomy.labels
    measured, backlogged = _measured_decisions(out_dir / "outcomes.jsonl")
    truths_seen = Counter(d.truth for d in measured)
    shares = {q: float(truths_seen.get(q, 0)) or (1.0 if not measured else 0.0) for q in queues}
    if not any(shares.values()):
        shares = dict.fromkeys(queues, 1.0)
    storm = IncidentStorm(at_s=9.5 * 3600)
    model = TrafficModel(daily_volume=volume, storms=(storm,))
    start = datetime(2026, 11, 25, tzinfo=UTC)
    schedule = sample(model, start=start, duration_s=hours * 3600, seed=seed)
    storm_queues = [
        schedule.storms[i].queue if i >= 0 else None for i in schedule.storm_index.tolist()
    ]
    truths = mttr.assign_truths(storm_queues, shares=shares, seed=seed)
    total = sum(shares.values())
    base_peak_h = max(
        TrafficModel(daily_volume=volume).expected_arrivals(
            start=start + timedelta(hours=h), duration_s=3600
        )
        for h in range(24)
    )
    peak_per_h = {q: base_peak_h * shares[q] / total for q in queues}
    triage_share = sum(d.kind != "routed" for d in measured) / len(measured) if measured else 0.05
    desk = mttr.build_desk(
        assumptions,
        tiers={q.name: q.tier.value for q in taxonomy.queues},
        peak_per_h=peak_per_h,
        triage_share=triage_share,
    )
    if measured:
        router = mttr.measured_scenario(measured, name="this router (measured)", queues=queues)
    else:
        # Never the backlogged tickets' latencies: without clean ones the row is an assumption.
        router = mttr.parametric_scenario(
            name="this router (assumed)",
            queues=queues,
            latency_s=router_latency_s,
            accuracy=router_accuracy,
            triage_share=triage_share,
        )
    manual = mttr.manual_scenario(
        queues=queues,
        dispatchers=mttr.dispatchers_for(assumptions, peak_total_per_h=base_peak_h),
        minutes_per_ticket=assumptions.manual_min_per_ticket,
        accuracy=assumptions.manual_accuracy,
    )
    cloud = mttr.cloud_llm_scenario(
        queues=queues, ttft_s=CLOUD_TTFT_S, per_ticket_s=cloud_latency_s, accuracy=cloud_accuracy
    )
    comparison = mttr.compare(
        desk,
        [router, cloud, manual],
        arrivals_s=schedule.times_s.tolist(),
        truths=truths,
        seed=seed,
        days=hours / 24,
    )
    from dataclasses import asdict

    data = mttr.comparison_json(
        comparison,
        baseline=manual.name,
        assumptions={
            **asdict(assumptions),
            "cloud_accuracy": cloud_accuracy,
            "cloud_ttft_s": CLOUD_TTFT_S,
            "cloud_latency_s": cloud_latency_s,
            "measured_decisions": len(measured),
            "backlogged_decisions_left_out": backlogged,
            "agents": {q: d.agents for q, d in desk.queues.items()},
            "triage_agents": desk.triage.agents,
            "dispatchers": manual.dispatch.agents if manual.dispatch else 0,
        },
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mttr.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def _measured_decisions(path: Path) -> tuple[list[Any], int]:
    """Decisions the MTTR model may use, and how many backlogged ones were left out."""
    from loadgen.mttr import decisions_from_outcomes

    if not path.exists():
        return [], 0
    with path.open(encoding="utf-8") as f:
        return decisions_from_outcomes(json.loads(line) for line in f if line.strip())


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
        taxonomy=_taxonomy(taxonomy),
        volume=volume,
        hours=hours,
        seed=seed,
        assumptions=assumptions,
        cloud_accuracy=cloud_accuracy,
        cloud_latency_s=cloud_latency_s,
        router_accuracy=router_accuracy,
        router_latency_s=router_latency_s,
    )
    _print_mttr(data)


def _print_mttr(m: dict[str, Any]) -> None:
    console = _console()
    for r in m["results"]:
        console.print(
            f"mttr: {r['name']}: mean {r['mttr_mean_h']:.2f} h, p90 {r['mttr_p90_h']:.2f} h,"
            f" misrouted {r['misrouted']}, triaged {r['triaged']},"
            f" routing {r['routing_latency_s']:.3g} s/ticket"
        )
    for name, s in m["saved_vs_baseline"].items():
        console.print(
            f"saved vs {m['baseline']}: {name}: {s['reference_hours_per_day']:.0f} h/day"
            f" (latency x tickets), {s['ticket_hours_per_day']:.0f} ticket-h/day (simulated"
            f" MTTR), {s['agent_hours_per_day']:.0f} agent-h/day"
        )


def report_step(
    *,
    out_dir: Path,
    cores: int,
    tickets_per_s: float | None = None,
    gpu_tickets_per_s: float | None = None,
    cores_per_machine: int = 16,
    volume: float | None = None,
    peak_per_s: float | None = None,
    figures: bool = True,
) -> dict[str, Path]:
    """Assemble report.md / report.json / PNGs from the run folder's JSON files."""
    from loadgen import report

    def load(name: str) -> dict[str, Any] | None:
        path = out_dir / name
        return json.loads(path.read_text()) if path.exists() else None

    collect = load("collect.json")
    if collect is None:
        raise typer.BadParameter(f"{out_dir / 'collect.json'} missing: run `collect` first")
    traffic = load("traffic.json") or {}
    demo = load("demo.json")
    probe = load("probe.json")
    probed = (probe or {}).get("summary", {}).get("max_sustainable_rate_per_s")
    measured_tps, saturated = report.measured_capacity(collect["series"])
    tps = tickets_per_s or probed or measured_tps
    cap = None
    if tps:
        cap = report.capacity(
            report.CapacityInputs(
                tickets_per_s=tps,
                cpu_cores=cores,
                gpu_tickets_per_s=gpu_tickets_per_s,
                cores_per_machine=cores_per_machine,
            ),
            volume_per_day=volume or traffic.get("daily_volume", 100_000),
            peak_per_s=peak_per_s or traffic.get("peak_per_s") or 0.0,
        )
        cap["throughput_source"] = (
            "given"
            if tickets_per_s
            else "capacity probe: highest rate with p99 <= 1 s"
            if probed
            else ("saturated bins" if saturated else "lower bound: never saturated")
        )
    data = report.build(
        collect=collect,
        replay=load("replay.json"),
        mttr=load("mttr.json"),
        capacity_figures=cap,
        traffic={k: v for k, v in traffic.items() if k != "per_hour"} or None,
        demo=demo,
        probe=probe,
    )
    return report.write(data, out_dir, figures=figures)


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
        _console().print(
            f"capacity: {cap['tickets_per_s_per_core']:.2f} tickets/s per core"
            f" ({cap['throughput_source']}); peak {cap['peak_per_s']:.2f}/s needs"
            f" {cap['cpu_cores_for_peak']} cores = {cap['cpu_machines']} machine(s)"
            + (f", or {cap['gpus_for_peak']} GPU(s)" if "gpus_for_peak" in cap else "")
        )
    _console().print("wrote " + ", ".join(str(p) for p in paths.values()))


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
    console = _console()
    code, doc = capacity.run_capacity(
        run, plan, slo, on_step=lambda s: console.print(capacity.step_line(s))
    )
    if code == capacity.EXIT_MODEL_MISSING:
        console.print(
            f"[red]no usable expert at {doc['model_dir']}[/]: {doc['error']}\n"
            "build it with `ticket-router expert build` (or pass --model)"
        )
        raise typer.Exit(code)
    capacity.print_curve(doc)
    console.print(f"wrote {out_dir / 'capacity.json'}, {out_dir / 'capacity.png'}")
