"""`ticket-router loadgen drift`: the feedback loop end to end, on one machine.

Owns the scenario's phases and their order: an expert trained on an older desk's tickets
(built once and cached) becomes the registry's first version; the broker, a worker that
follows the registry and the feedback consumer start; traffic is replayed whose vocabulary
drifts after a while (`loadgen.corpus_drift`: a new product, cloud tickets owned by a new
queue); the simulated desk answers every decision (`loadgen.answering_desk`); when the live
accuracy the feedback consumer measures falls (`scenarios.drift_plan.RetrainTrigger`), the real
`ticket-router expert retrain` runs; if it promotes, the worker swaps by itself; the run ends
a while after the swap, drains, accounts for every ticket (`bench.steps.collect_step`) and
writes the report (`scenarios.drift_report`). The scenario only observes the worker: it never
tells it to swap. The options and the older expert are `scenarios.drift_setup`'s, the
run's state and child processes `scenarios.drift_run`'s, the live phase
`scenarios.drift_loop`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scenarios.drift_loop import LiveState, feedback_verdicts, live_loop
from scenarios.drift_run import DriftRun, spawn, stop_process, wait_until_ready
from scenarios.drift_setup import DriftOptions, ensure_old_expert, seed_registry, write_recipe

if TYPE_CHECKING:
    from schemas.taxonomy import Taxonomy


def run_drift(options: DriftOptions) -> int:
    """Run the scenario; 0 when a retrained expert was promoted and served, 1 otherwise,
    130 when interrupted."""
    run = DriftRun(options)
    previous = signal.signal(signal.SIGINT, run.on_sigint)
    try:
        return _run(run)
    finally:
        signal.signal(signal.SIGINT, previous)
        for name, proc in reversed(list(run.procs.items())):
            if proc.poll() is None:
                run.say("cleanup", f"stopping {name}")
                stop_process(proc)


def _fresh(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("registry", "retrain", "broker"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in (
        "decisions.sqlite3",
        "decisions.sqlite3-wal",
        "decisions.sqlite3-shm",
        "decisions.sqlite3.lock",
    ):
        (out_dir / name).unlink(missing_ok=True)
    for name in ("manifest.jsonl", "collect.json", "outcomes.jsonl", "drift.json", "drift.md"):
        (out_dir / name).unlink(missing_ok=True)
    for name in ("worker.log", "feedback.log", "retrain.log", "replay.json", "drift.png"):
        (out_dir / name).unlink(missing_ok=True)


def _run(run: DriftRun) -> int:  # noqa: C901 - the phases, in order, each a few lines
    from loadgen.corpus import generate
    from loadgen.corpus_drift import OLD_DESK, Drift
    from scenarios.demo import start_broker, stop_broker
    from schemas.taxonomy import Taxonomy
    from worker.broker import free_port
    from worker.config import load_settings

    opts = run.options
    out = opts.out_dir.resolve()
    _fresh(out)
    settings = load_settings()
    tax = Taxonomy.load(settings.taxonomy_path)
    with run.phase("expert", "the expert trained on the older desk's tickets"):
        model_dir = ensure_old_expert(
            opts.model_dir,
            n=opts.old_corpus_n,
            seed=opts.seed,
            taxonomy=tax,
            say=lambda m: run.say("expert", m),
        )
    recipe_file = out / "recipe.yaml"
    write_recipe(recipe_file)
    port = opts.port or free_port()
    with run.phase("broker", f"starting the embedded broker on port {port}"):
        bootstrap = start_broker(state_dir=out / "broker", port=port, taxonomy=tax)
    try:
        old_version = seed_registry(
            out / "registry", model_dir, say=lambda m: run.say("registry", m)
        )
        worker_port, feedback_port = free_port(), free_port()
        with run.phase("worker", "starting a worker that follows the registry"):
            run.procs["worker"] = spawn(
                ["worker", "--bootstrap", bootstrap],
                env={
                    "ROUTER_ENGINE__REGISTRY_DIR": str(out / "registry"),
                    "ROUTER_ENGINE__MODEL_DIR": str(model_dir.resolve()),
                    "ROUTER_METRICS__PORT": str(worker_port),
                },
                log=out / "worker.log",
            )
            wait_until_ready(run, "worker", worker_port, timeout_s=600)
        with run.phase("feedback", "starting the feedback consumer"):
            run.procs["feedback"] = spawn(
                ["feedback", "--bootstrap", bootstrap, "--store", str(out / "decisions.sqlite3")],
                env={"ROUTER_FEEDBACK__METRICS_PORT": str(feedback_port)},
                log=out / "feedback.log",
            )
            wait_until_ready(run, "feedback", feedback_port, timeout_s=120)
        old_world = generate(opts.traffic_n, seed=opts.seed + 1, drift=OLD_DESK)
        new_world = generate(
            opts.traffic_n, seed=opts.seed + 2, drift=Drift(new_product=opts.new_product_share)
        )
        corpus = [*old_world, *new_world]
        result = live_loop(
            run,
            bootstrap=bootstrap,
            taxonomy=tax,
            corpus=corpus,
            split=len(old_world),
            feedback_port=feedback_port,
            recipe_file=recipe_file,
        )
        accounting = _drain(run, bootstrap=bootstrap, taxonomy=tax, group=settings.kafka.group_id)
        with contextlib.suppress(OSError):
            run.samples.append({"t": time.time(), "verdicts": feedback_verdicts(feedback_port)})
        result.desk.stop()
        stop_process(run.procs["feedback"])
    finally:
        with run.phase("broker", "stopping the broker"):
            stop_broker(state_dir=out / "broker", port=port)
    return _report(run, result=result, accounting=accounting, old_version=old_version)


def _drain(run: DriftRun, *, bootstrap: str, taxonomy: Taxonomy, group: str) -> dict[str, Any]:
    from bench import steps as bench_steps
    from bench.outputs import StopReason, WaitPolicy, WaitStatus

    proc = run.procs["worker"]

    def should_stop() -> StopReason | None:
        if run.stop.is_set():
            return StopReason.INTERRUPTED
        return StopReason.ROUTER_EXITED if proc.poll() is not None else None

    def on_status(s: WaitStatus) -> None:
        run.say("drain", f"{s.answered}/{s.expected} answered, {s.unrouted} not yet committed")

    def stop_the_worker() -> None:
        run.say("drain", "stopping the worker (it finishes its in-flight tickets and commits)")
        stop_process(proc)

    with run.phase("drain", "waiting for the router's last outputs, then accounting"):
        return bench_steps.collect_step(
            bootstrap=bootstrap,
            out_dir=run.options.out_dir.resolve(),
            taxonomy=taxonomy,
            router_group=group,
            policy=WaitPolicy(stall_s=60.0, max_wait_s=None),
            should_stop=should_stop,
            on_status=on_status,
            before_snapshot=stop_the_worker,
        )


def _report(
    run: DriftRun, *, result: LiveState, accounting: dict[str, Any], old_version: str
) -> int:
    from expert.registry import Registry
    from expert.serving import engine_placement
    from scenarios import drift_report
    from worker.config import load_settings

    opts = run.options
    out = opts.out_dir.resolve()
    desk = result.desk
    decisions = desk.decisions
    first = {d.ticket_id: d.model_id for d in decisions if d.first}
    per_ticket_models: dict[str, set[str]] = {}
    for d in decisions:
        per_ticket_models.setdefault(d.ticket_id, set()).add(d.model_id)
    accounting["decided_by_both_versions"] = sum(len(m) > 1 for m in per_ticket_models.values())
    old, new = result.old_model or old_version, result.new_model
    last_old_at = max((d.decided_at for d in decisions if d.model_id == old), default=None)
    history = Registry(out / "registry").history()
    promoted_at = (
        datetime.fromisoformat(str(history[-1]["at"])).timestamp() if len(history) > 1 else None
    )
    timeline = drift_report.Timeline(
        started_at=result.started_at,
        drift_at=result.drift_at,
        retrain_started_at=result.retrain_started_at,
        retrain_ended_at=result.retrain_ended_at,
        promoted_at=promoted_at,
        switch_at=result.switch_at,
        last_old_at=last_old_at if new is not None else None,
        ended_at=result.ended_at,
        trigger_reason=result.trigger_reason,
    )
    with (out / "outcomes.jsonl").open(encoding="utf-8") as f:
        outcomes = [json.loads(line) for line in f if line.strip()]
    engine = load_settings().engine
    report = drift_report.build(
        rows=drift_report.join(outcomes, first),
        accounting=accounting,
        timeline=timeline,
        old=old,
        new=new,
        metrics_samples=run.samples,
        retrain=result.retrain_result,
        options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        hardware={
            "engine": engine_placement(engine, streaming=True).as_dict(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
            "shared_machine": "other jobs may run beside the scenario",
        },
    )
    report["phases_wall_s"] = run.phases
    report["wall_s"] = round(time.monotonic() - run.started, 1)
    report["desk"] = {
        "feedback_published": desk.feedback_published,
        "feedback_failed": desk.feedback_failed,
        "answers_not_due_at_the_end": desk.pending,
    }
    paths = drift_report.write(report, out)
    run.say("report", f"{paths['markdown']} and {paths.get('png')}")
    if run.stop.is_set():
        return 130
    return 0 if new is not None else 1


def drift_command(
    out_dir: Annotated[Path, typer.Option("--dir", help="Run folder.")] = Path(".state/drift"),
    port: Annotated[int | None, typer.Option(help="Broker port (default: a free one).")] = None,
    rate: Annotated[float, typer.Option(min=0.5, help="Tickets per second offered.")] = 8.0,
    before_drift_s: Annotated[
        float, typer.Option(min=10, help="Seconds of the older world's traffic first.")
    ] = 90.0,
    after_swap_s: Annotated[
        float, typer.Option(min=10, help="Seconds of traffic after the swap.")
    ] = 120.0,
    max_replay_s: Annotated[
        float, typer.Option(min=60, help="The replay ends by then whatever happened.")
    ] = 660.0,
    new_product_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of drifted tickets about the new product.")
    ] = 0.25,
    speedup: Annotated[
        float, typer.Option(min=1, help="Desk minutes per real minute (answers come sooner).")
    ] = 60.0,
    noise: Annotated[
        float, typer.Option(min=0, max=0.5, help="Share of the desk's answers that are wrong.")
    ] = 0.02,
    drop: Annotated[
        float, typer.Option(min=0.01, help="Retrain when live accuracy falls this far.")
    ] = 0.05,
    labels_after_drop: Annotated[
        int, typer.Option(min=1, help="... and this many decisions were judged since.")
    ] = 600,
    retrain_by_s: Annotated[
        float, typer.Option(min=30, help="Retrain by then anyway (seconds of replay).")
    ] = 330.0,
    feedback_weight: Annotated[
        int, typer.Option(min=1, help="Each feedback row counts N times in the retrain.")
    ] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the corpora, traffic and desk.")] = 0,
) -> None:
    """The feedback loop end to end: an expert of an older desk, traffic that drifts (a new
    product, a queue that took over cloud tickets), a desk that answers, live accuracy, an
    automatic retrain, a promotion and the worker's swap; a report with the plot
    (<dir>/drift.md, drift.png). About 10-15 minutes on two cores."""
    options = DriftOptions(
        out_dir=out_dir,
        port=port,
        rate_per_s=rate,
        before_drift_s=before_drift_s,
        after_swap_s=after_swap_s,
        max_replay_s=max_replay_s,
        new_product_share=new_product_share,
        speedup=speedup,
        noise=noise,
        drop=drop,
        labels_after_drop=labels_after_drop,
        retrain_by_s=retrain_by_s,
        feedback_weight=feedback_weight,
        seed=seed,
    )
    code = run_drift(options)
    if code:
        raise typer.Exit(code)
