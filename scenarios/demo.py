"""`ticket-router demo`: broker, default expert, worker, capacity probe, replay, drain, report.

Owns the demo's phases and their order, its wall-time budget, its progress lines, and what
a user's interrupt means (first Ctrl-C once tickets are flowing: stop sending, account for
what was measured and label the report as interrupted; a second one, or one before anything
was measured, aborts). The work is done elsewhere: the probe (`bench.probe`), the choice
of window and speed-up (`scenarios.demo_plan`), and the replay / collect / MTTR / report steps
(`loadgen.cli`). It never stops the broker while the router is still routing the run's
tickets, unless the user interrupts: the drain waits as long as the router makes progress.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.outputs import StopReason, WaitStatus
    from bench.probe import ProbeResult
    from loadgen.traffic import Schedule, TrafficModel
    from scenarios.demo_plan import ReplayChoice
    from schemas.taxonomy import Taxonomy
    from worker.config import Settings

DAY = "2026-11-25"  # a Wednesday: an ordinary business day
PARTITIONS = 6
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What `ticket-router demo` was asked for.

    Attributes:
        out_dir: run folder (report, JSON, PNGs, worker log, broker state).
        port: the embedded broker's port.
        model: expert folder (None: the default expert, built once and cached).
        fmt: payload format of the replayed tickets.
        volume: tickets on the replayed business day.
        corpus_n: size of the generated corpus tickets are drawn from.
        seed: seed of the day, the corpus and the MTTR simulation.
        budget_s: wall time this process may take (the 20-minute budget of `make demo`
            minus about 2 minutes of set-up before it starts).
        replay_s: fixed replay length in seconds (None: what the budget leaves, 1 to 8 min).
        headroom: the replay's busiest minute offers at most this share of the capacity.
        stall_s: the drain ends when the router made no progress for this long.
        desk: the desk behind the queues for the MTTR headline: a desk file, `toy`, or None
            for the desk shipped with the project (fitted on a real ServiceNow history).
    """

    out_dir: Path = Path(".state/demo")
    port: int = 9092
    model: Path | None = None
    fmt: str = "servicenow"
    volume: float = 100_000
    corpus_n: int = 2000
    seed: int = 0
    budget_s: float = 18 * 60
    replay_s: float | None = None
    headroom: float = 0.8
    stall_s: float = 60.0
    desk: str | None = None


# After the replay: drain, stopping the worker, reading the outputs, the MTTR simulation
# and the report (measured at about 1.5 min on the 2-core machine).
RESERVE_AFTER_REPLAY_S = 150.0
REPLAY_MIN_S, REPLAY_MAX_S = 60.0, 480.0


@dataclass(slots=True)
class _Run:
    """What the demo did, for demo.json and the report."""

    options: DemoOptions
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    phases: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    measuring: bool = False  # tickets are flowing: a first Ctrl-C finishes instead of aborting
    interrupted_in: str | None = None
    doc: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, phase: str, message: str) -> None:
        t = int(self.elapsed())
        print(f"demo [{t // 60:02d}:{t % 60:02d}] {phase}: {message}", flush=True)

    @contextlib.contextmanager
    def phase(self, name: str, what: str) -> Iterator[dict[str, Any]]:
        self.say(name, what)
        record: dict[str, Any] = {"phase": name, "started_s": round(self.elapsed(), 1)}
        t0 = time.monotonic()
        try:
            yield record
        finally:
            record["wall_s"] = round(time.monotonic() - t0, 1)
            self.phases.append(record)
            self.say(name, f"done in {record['wall_s']:.0f} s")

    def on_sigint(self, _signum: int, _frame: object) -> None:
        if not self.measuring or self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        print(
            "demo: interrupted: finishing with what was measured (Ctrl-C again to abort)",
            flush=True,
        )


def run_demo(options: DemoOptions) -> int:
    """Run every phase; return the exit code (0, or 130 when the user interrupted)."""
    run = _Run(options)
    previous = signal.signal(signal.SIGINT, run.on_sigint)
    try:
        return _run(run)
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(run: _Run) -> int:
    from loadgen import steps
    from worker.config import load_settings

    opts = run.options
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (
        "collect.json",
        "outcomes.jsonl",
        "mttr.json",
        "probe.json",
        "demo.json",
        "tokens.json",
    ):
        (opts.out_dir / stale).unlink(missing_ok=True)
    metrics_port = _free_port()
    # The worker child builds the same settings from the same environment and flags.
    settings = load_settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{opts.port}"},
        engine={"model_dir": opts.model} if opts.model else None,
        metrics={"port": metrics_port},
    )
    tax = steps.load_taxonomy(settings.taxonomy_path)
    model = _expert(run, taxonomy=tax)
    settings = settings.model_copy(
        update={"engine": settings.engine.model_copy(update={"model_dir": model})}
    )
    day = _day(opts)
    run.doc["hardware"] = _hardware(settings)
    run.say("hardware", _hardware_line(run.doc["hardware"]))
    with run.phase("broker", f"starting the embedded broker on port {opts.port}"):
        bootstrap = start_broker(state_dir=opts.out_dir / "broker", port=opts.port, taxonomy=tax)
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = _start_worker(run, bootstrap=bootstrap, model=model, metrics_port=metrics_port)
        run.measuring = True
        probe = _probe(run, bootstrap=bootstrap, taxonomy=tax, day=day)
        if run.stop.is_set():
            run.interrupted_in = "probe"
            run.say("demo", "interrupted before the replay: nothing to report")
            return EXIT_INTERRUPTED
        choice = _plan(run, probe, day=day)
        _replay(run, bootstrap=bootstrap, taxonomy=tax, choice=choice, day=day)
        _drain(run, bootstrap=bootstrap, taxonomy=tax, settings=settings, proc=proc, probe=probe)
        proc = None  # stopped by the drain
    finally:
        if proc is not None:
            stop_worker(proc)
        with run.phase("broker", "stopping the broker"):
            stop_broker(state_dir=opts.out_dir / "broker", port=opts.port)
    _report(run, taxonomy=tax)
    return EXIT_INTERRUPTED if run.interrupted_in else 0


def _expert(run: _Run, *, taxonomy: Taxonomy) -> Path:
    from loadgen.default_expert import DEFAULT_MODEL_DIR, ensure_default_expert, is_current

    if run.options.model is not None:
        run.doc["expert"] = {"model_dir": str(run.options.model), "built": False, "given": True}
        return run.options.model
    cached = is_current(DEFAULT_MODEL_DIR, taxonomy)
    what = "reusing the cached default expert" if cached else "building the default expert"
    with run.phase("expert", f"{what} ({DEFAULT_MODEL_DIR})") as record:
        model = ensure_default_expert(taxonomy=taxonomy)
        record["built"] = not cached
    run.doc["expert"] = {"model_dir": str(model), "built": not cached, "given": False}
    return model


def _hardware(settings: Settings) -> dict[str, Any]:
    from expert.serving import engine_placement

    # The worker's engine: processor kind, number format and model threads. The load
    # average says whether other jobs shared the machine when the run started.
    return {
        "engine": engine_placement(settings.engine, streaming=True).as_dict(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
    }


def _hardware_line(hw: dict[str, Any]) -> str:
    e = hw["engine"]
    cpu = e["cpu"]
    return (
        f"{cpu.get('kind')} ({cpu.get('model_name')}), {hw['cpu_count']} cores; engine number"
        f" format {e['dtype']} ({e['reason']}), {e['threads']} model thread(s); load average"
        f" {hw['load_average_at_start'][0]:.2f}"
    )


def _free_port() -> int:
    from worker.broker import free_port

    return free_port()


# --- the broker and the worker -----------------------------------------------------------


def start_broker(*, state_dir: Path, port: int, taxonomy: Taxonomy) -> str:
    """Start the embedded broker (or reuse it) and create the topic layout; return bootstrap."""
    from worker.broker import EmbeddedBroker, TopicLayout, create_layout

    broker = EmbeddedBroker(state_dir=state_dir, port=port)
    broker.start()
    create_layout(broker.bootstrap, TopicLayout.from_taxonomy(taxonomy, partitions=PARTITIONS))
    return broker.bootstrap


def stop_broker(*, state_dir: Path, port: int) -> None:
    """Stop the broker `start_broker` started."""
    from worker.broker import EmbeddedBroker

    EmbeddedBroker(state_dir=state_dir, port=port).stop()


def start_worker(
    *, bootstrap: str, model: Path, log: Path, metrics_port: int
) -> subprocess.Popen[bytes]:
    """Run `ticket-router worker` as a child in its own session (Ctrl-C reaches only the demo,
    which stops the worker in order), its output to `log`."""
    cmd = [sys.executable, "-m", "ticket_router", "worker", "--bootstrap", bootstrap]
    cmd += ["--model", str(model)]
    env = {**os.environ, "ROUTER_METRICS__PORT": str(metrics_port)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own console script, fixed arguments
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def wait_ready(proc: subprocess.Popen[bytes], *, url: str, timeout_s: float) -> bool:
    """Poll the worker's /readyz until 200, its exit, or the deadline."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - local URL
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def stop_worker(proc: subprocess.Popen[bytes], *, grace_s: float = 60.0) -> int:
    """SIGTERM the worker (it drains and commits); SIGKILL its whole session after `grace_s`."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def _start_worker(
    run: _Run, *, bootstrap: str, model: Path, metrics_port: int
) -> subprocess.Popen[bytes]:
    log = run.options.out_dir / "worker.log"
    with run.phase("worker", f"starting the worker (log {log}); the engine loads first"):
        proc = start_worker(bootstrap=bootstrap, model=model, log=log, metrics_port=metrics_port)
        url = f"http://127.0.0.1:{metrics_port}/readyz"
        if not wait_ready(proc, url=url, timeout_s=600):
            stop_worker(proc)
            raise RuntimeError(f"the worker did not become ready; see {log}")
    run.say("worker", f"ready; metrics at http://127.0.0.1:{metrics_port}/metrics")
    return proc


# --- probe, plan, replay, drain ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Day:
    model: TrafficModel
    schedule: Schedule


def _day(opts: DemoOptions) -> _Day:
    """The replayed business day, sampled from midnight (its storm is timed from midnight)."""
    from loadgen import steps

    model = steps.traffic_model(
        volume=opts.volume, peak_to_trough=12.0, storms=None, no_storms=False
    )
    schedule = steps.day_schedule(
        model, start=steps.start_of(DAY), start_hour=0, hours=24.0, seed=opts.seed
    )
    return _Day(model, schedule)


def _probe(run: _Run, *, bootstrap: str, taxonomy: Taxonomy, day: _Day) -> ProbeResult:
    from bench.capacity_ramp import RampPlan, Slo
    from bench.capacity_report import step_line
    from bench.probe import ProbeTarget, run_probe
    from loadgen import steps
    from loadgen.itsm_formats import PayloadFormat

    opts = run.options
    peak = float(day.schedule.counts_per_bin(60.0).max()) / 60
    # The first step offers the day's real busiest minute: the router at the real peak rate.
    plan = RampPlan(
        start_rate_per_s=max(1.0, peak), growth_factor=2.0, step_s=8.0, tail_s=2.0, max_steps=8
    )
    kinds = {q.topic: "routed" for q in taxonomy.queues}
    kinds |= {taxonomy.topics.triage: "triage", taxonomy.topics.dead_letter: "dead_letter"}
    target = ProbeTarget(
        bootstrap=bootstrap,
        inbound_topic=taxonomy.topics.inbound,
        output_kinds=kinds,
        fmt=PayloadFormat(opts.fmt),
        run=(_run_number(run) + 5000) % 10_000,
    )
    corpus = steps.load_or_make_corpus(None, n=opts.corpus_n, seed=opts.seed + 1)
    with run.phase(
        "probe",
        f"measuring capacity: open-loop steps of 8 s from {plan.start_rate_per_s:.1f}/s"
        " (the day's busiest minute), doubling, p99 <= 1 s",
    ) as record:
        result = run_probe(
            target,
            corpus,
            plan=plan,
            slo=Slo(),
            on_step=lambda s: run.say("probe", step_line(s)),
            stop=run.stop,
        )
        record["tickets"] = len(result.ticket_ids)
    best = result.summary.max_sustainable_rate_per_s
    run.say(
        "probe",
        f"capacity {best:.1f} tickets/s (p99 <= 1 s)" if best else "no step met the SLO",
    )
    run.doc["probe"] = result.to_json()
    (opts.out_dir / "probe.json").write_text(json.dumps(run.doc["probe"], indent=2) + "\n")
    run.doc["day"] = {"peak_per_s": peak, "tickets": len(day.schedule), "date": DAY}
    run.doc["_probe_ids"] = result.ticket_ids
    return result


def _run_number(run: _Run) -> int:
    if "run" not in run.doc:
        run.doc["run"] = int(datetime.now(UTC).timestamp()) % 10_000
    return int(run.doc["run"])


def _plan(run: _Run, probe: ProbeResult, *, day: _Day) -> ReplayChoice:
    from scenarios.demo_plan import choose_replay, replay_wall_s

    opts = run.options
    wall = opts.replay_s or replay_wall_s(
        budget_s=opts.budget_s,
        elapsed_s=run.elapsed(),
        reserve_s=RESERVE_AFTER_REPLAY_S,
        min_s=REPLAY_MIN_S,
        max_s=REPLAY_MAX_S,
    )
    choice = choose_replay(
        day.schedule,
        capacity_per_s=probe.summary.max_sustainable_rate_per_s,
        wall_s=wall,
        headroom=opts.headroom,
    )
    run.doc["plan"] = choice.to_json()
    run.say(
        "plan",
        f"replay {_hhmm(choice.from_s)}-{_hhmm(choice.to_s)} of {DAY} ({choice.tickets} tickets)"
        f" at {choice.speedup:.1f}x in {choice.wall_s / 60:.1f} min: busiest minute offered at"
        f" {choice.offered_peak_per_s:.1f}/s ({choice.why})",
    )
    return choice


def _hhmm(offset_s: float) -> str:
    m = int(round(offset_s / 60))
    return f"{m // 60:02d}:{m % 60:02d}"


def _replay(
    run: _Run, *, bootstrap: str, taxonomy: Taxonomy, choice: ReplayChoice, day: _Day
) -> None:
    from expert.progress import progress
    from loadgen import steps

    opts = run.options
    window = day.schedule.window(choice.from_s, choice.to_s)
    traffic = steps.traffic_summary(day.model, window)
    traffic["day"] = {
        k: v for k, v in steps.traffic_summary(day.model, day.schedule).items() if k != "per_hour"
    }
    (opts.out_dir / "traffic.json").write_text(json.dumps(traffic, indent=2) + "\n")
    with (
        run.phase("replay", f"{len(window)} tickets at {choice.speedup:.1f}x") as record,
        progress("demo replay", unit="tickets", stream=sys.stdout) as on_progress,
    ):
        result = steps.replay_step(
            bootstrap=bootstrap,
            topic=taxonomy.topics.inbound,
            out_dir=opts.out_dir,
            corpus=steps.load_or_make_corpus(None, n=opts.corpus_n, seed=opts.seed),
            schedule=window,
            fmt=opts.fmt,
            speedup=choice.speedup,
            seed=opts.seed,
            run=_run_number(run),
            progress=False,
            stop=run.stop,
            on_progress=on_progress,
        )
        record["sent"] = result.sent
    if run.stop.is_set():
        run.interrupted_in = "replay"
    run.say(
        "replay",
        f"sent {result.sent}/{result.planned} ({result.delivered} acknowledged),"
        f" send lag p99 {result.lag_p99_s * 1000:.0f} ms"
        + (" (interrupted)" if result.stopped_early else ""),
    )


def _drain(
    run: _Run,
    *,
    bootstrap: str,
    taxonomy: Taxonomy,
    settings: Settings,
    proc: subprocess.Popen[bytes],
    probe: ProbeResult,
) -> None:
    from bench import steps as bench_steps
    from bench.outputs import StopReason, WaitPolicy

    def should_stop() -> StopReason | None:
        if run.stop.is_set():
            return StopReason.INTERRUPTED
        return StopReason.ROUTER_EXITED if proc.poll() is not None else None

    def on_status(s: WaitStatus) -> None:
        run.say(
            "drain",
            f"{s.answered}/{s.expected} answered, {s.unrouted} not yet committed by the"
            f" router, last progress {s.since_progress_s:.0f} s ago",
        )

    def stop_the_worker() -> None:
        run.say("drain", "stopping the worker (it finishes its in-flight tickets and commits)")
        code = stop_worker(proc)
        run.doc["worker_exit_code"] = code

    with run.phase(
        "drain",
        f"waiting for the router while it makes progress (ends after {run.options.stall_s:.0f} s"
        " without progress, or Ctrl-C)",
    ) as record:
        data = bench_steps.collect_step(
            bootstrap=bootstrap,
            out_dir=run.options.out_dir,
            taxonomy=taxonomy,
            router_group=settings.kafka.group_id,
            policy=WaitPolicy(stall_s=run.options.stall_s, max_wait_s=None),
            should_stop=should_stop,
            on_status=on_status,
            before_snapshot=stop_the_worker,
            other_ids=probe.ticket_ids,
        )
        record["stop_reason"] = data["stop_reason"]
    if data["stop_reason"] == "interrupted" and run.interrupted_in is None:
        run.interrupted_in = "drain"
    bench_steps.print_collect(data)


# --- MTTR and the report -----------------------------------------------------------------


def _report(run: _Run, *, taxonomy: Taxonomy) -> None:
    from bench import steps as bench_steps
    from loadgen.desk_file import resolve_desk
    from loadgen.desk_model import DeskAssumptions

    opts = run.options
    desk = resolve_desk(opts.desk)
    what = f"the desk {desk.name!r} (fitted on a real history)" if desk else "the toy desk"
    with run.phase("mttr", f"simulating {what} for a whole day of tickets"):
        bench_steps.print_mttr(
            bench_steps.mttr_step(
                out_dir=opts.out_dir,
                taxonomy=taxonomy,
                volume=opts.volume,
                hours=24.0,
                seed=opts.seed,
                assumptions=DeskAssumptions(),
                cloud_accuracy=0.911,
                cloud_latency_s=2.5,
                router_accuracy=0.9,
                router_latency_s=0.2,
                desk=desk,
            )
        )
    run.doc.pop("_probe_ids", None)
    run.doc |= {
        "started_at": run.started_at,
        "phases": run.phases,
        "interrupted_in": run.interrupted_in,
        "budget_s": opts.budget_s,
        "wall_s_before_report": round(run.elapsed(), 1),
    }
    (opts.out_dir / "demo.json").write_text(json.dumps(run.doc, indent=2) + "\n")
    with run.phase("report", "writing the report"):
        paths = bench_steps.report_step(
            out_dir=opts.out_dir,
            cores=os.cpu_count() or 1,
            tokenizer=Path(run.doc["expert"]["model_dir"]),
            taxonomy=taxonomy,
        )
    run.say("demo", f"report at {paths['markdown']} ({run.elapsed() / 60:.1f} min in all)")
