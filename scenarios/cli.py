"""The scenario commands (`ticket-router demo`, `ticket-router loadgen drift`) and the whole
`loadgen` command group.

Owns the demo's argument parsing (the work is done by `scenarios.demo`; the drift scenario
owns its options in `scenarios.drift`) and `loadgen_app`: the traffic commands of
`loadgen.cli`, the measuring ones of `bench.cli` and the drift scenario under one group, as
users have always typed them. It sits on top, so it may import both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bench import cli as bench_cli
from expert import quiet
from loadgen.cli import FORMATS, Dir, Seed, Volume
from loadgen.cli import app as loadgen_app
from scenarios.drift import drift_command

__all__ = ["demo", "loadgen_app"]

loadgen_app.command("collect")(bench_cli.collect_command)
loadgen_app.command("mttr")(bench_cli.mttr_command)
loadgen_app.command("report")(bench_cli.report_command)
loadgen_app.command("capacity")(bench_cli.capacity_command)
loadgen_app.command("drift")(drift_command)


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
    desk: bench_cli.DeskOpt = None,
    seed: Seed = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=quiet.VERBOSE_HELP)] = False,
) -> None:
    """Broker + expert + worker, a capacity probe, the busiest hours of a 100k-ticket day
    compressed only as far as the router keeps up, then collect + MTTR + report.

    Ctrl-C once tickets flow: stop, report what was measured (labelled); twice: abort.
    """
    from scenarios.demo import DemoOptions, run_demo

    bench_cli.load_desk(desk)  # a bad desk file fails now, not after the replay
    if fmt not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {FORMATS}")
    options = DemoOptions(
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
        desk=desk,
        stall_s=stall_s,
    )
    # The worker child writes its own log (<dir>/worker.log); this is the demo's process.
    with quiet.library_output("demo", verbose=verbose):
        code = run_demo(options)
    if code:
        raise typer.Exit(code)
