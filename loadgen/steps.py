"""The traffic steps the load generator's commands and the scenarios share: the day's
traffic, the corpus, replay, and how each prints its figures.

`loadgen.cli` parses arguments and lays out run folders; `bench.steps` measures what a run
produced; `scenarios.demo` and `scenarios.drift` chain both. Heavy imports stay inside the
functions (`ticket-router --help` is fast).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from loadgen.replay import Labeled, ReplayResult
    from loadgen.traffic import Schedule, TrafficModel
    from schemas.taxonomy import Taxonomy

DEFAULT_STORM = "vpn_outage@09:30/2000/30/network_vpn"


def console() -> Any:
    from rich.console import Console

    return Console()


def load_taxonomy(path: Path | None) -> Taxonomy:
    from schemas.taxonomy import Taxonomy, TaxonomyError

    try:
        return Taxonomy.load(path)
    except TaxonomyError as exc:
        console().print(f"[red]taxonomy error:[/] {exc}")
        raise typer.Exit(2) from exc


def start_of(day: str) -> datetime:
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


def run_number() -> int:
    return int(datetime.now(UTC).timestamp()) % 10_000


def print_replay(r: ReplayResult) -> None:
    # As fast as possible, every ticket is due at 0: "lag" is then time since the start.
    lag = (
        f"; send lag p50 {r.lag_p50_s * 1000:.1f} ms p99 {r.lag_p99_s * 1000:.1f} ms"
        f" max {r.lag_max_s * 1000:.1f} ms"
        if r.speedup
        else " (as fast as possible: no schedule, no lag)"
    )
    console().print(
        f"replay: sent {r.sent}/{r.planned}, acked {r.delivered}, failed {r.failed},"
        f" {r.wall_s:.1f} s wall, {r.send_rate_per_s:.1f}/s"
        + lag
        + (" (stopped at bound)" if r.stopped_early else "")
    )
