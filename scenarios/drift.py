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
tells it to swap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from expert.recipe import RecipeConfig
    from loadgen.answering_desk import AnsweringDesk
    from loadgen.corpus import LabeledTicket
    from scenarios.drift_plan import RetrainTrigger
    from schemas.taxonomy import Taxonomy

DRIFT_MODEL_ID = "drift-expert"


def drift_recipe() -> RecipeConfig:
    """The preset-fast recipe with a small from-scratch model: the scenario builds the older
    expert with it once, and retrains with it while the worker routes, so both must take
    minutes on two shared cores (imported late: `ticket-router --help` stays fast)."""
    from expert.build import BuildConfig
    from expert.recipe import Preset, RecipeConfig

    return RecipeConfig(
        model_id=DRIFT_MODEL_ID,
        preset=Preset.FAST,
        budget_minutes=6,
        scratch=BuildConfig(
            model_id=DRIFT_MODEL_ID,
            vocab_size=1024,
            hidden_size=128,
            num_layers=2,
            num_heads=2,
            intermediate_size=256,
            max_prompt_tokens=96,
            epochs=2,
            batch_size=32,
            learning_rate=3e-3,
        ),
    )


DEFAULT_MODEL_DIR = Path(".state/models/drift-old-expert")


@dataclass(frozen=True, slots=True)
class DriftOptions:
    """What `ticket-router loadgen drift` was asked for.

    Attributes:
        out_dir: the run folder (registry, decision log, retrain runs, logs, report).
        port: the embedded broker's port (None: a free one).
        model_dir: where the older desk's expert is cached.
        old_corpus_n: tickets the older expert is trained on.
        traffic_n: tickets of each world the replay draws from.
        seed: seed of the corpora, the traffic and the desk.
        rate_per_s: tickets per second offered (Poisson arrivals).
        before_drift_s: seconds of the older world's traffic before the drift.
        new_product_share: share of drifted tickets about the new product.
        after_swap_s: seconds of traffic after the swap before the run ends.
        max_replay_s: the replay ends by then whatever happened.
        speedup: desk minutes per real minute (the desk's answers arrive that much sooner).
        noise: share of the desk's answers that are human mistakes.
        drop: retrain when the live accuracy of the last `window_s` of feedback is this far
            below the best it was (`scenarios.drift_plan.TriggerPolicy`) ...
        labels_after_drop: ... once this many more decisions were judged since.
        window_s: the live-accuracy window.
        retrain_by_s: retrain at this many seconds of replay whatever the accuracy does.
        holdout_share: the newest share of feedback the challenger is judged on.
        feedback_weight: each feedback row counts this many times in the challenger's data
            (the older desk filed ~230 cloud tickets under servers; a few hundred drifted
            tickets outweigh them only when they count more: `expert retrain
            --feedback-weight`).
        min_eval_rows: the retrain needs at least this many slice rows.
        fmt: payload format of the replayed tickets.
    """

    out_dir: Path = Path(".state/drift")
    port: int | None = None
    model_dir: Path = DEFAULT_MODEL_DIR
    old_corpus_n: int = 3000
    traffic_n: int = 3000
    seed: int = 0
    rate_per_s: float = 8.0
    before_drift_s: float = 90.0
    new_product_share: float = 0.25
    after_swap_s: float = 120.0
    max_replay_s: float = 660.0
    speedup: float = 60.0
    noise: float = 0.02
    drop: float = 0.05
    labels_after_drop: int = 600
    window_s: float = 30.0
    retrain_by_s: float = 330.0
    holdout_share: float = 0.2
    feedback_weight: int = 3
    min_eval_rows: int = 100
    fmt: str = "servicenow"


@dataclass(slots=True)
class _Run:
    options: DriftOptions
    started: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)

    def say(self, phase: str, message: str) -> None:
        t = int(time.monotonic() - self.started)
        print(f"drift [{t // 60:02d}:{t % 60:02d}] {phase}: {message}", flush=True)

    @contextlib.contextmanager
    def phase(self, name: str, what: str) -> Any:
        self.say(name, what)
        t0 = time.monotonic()
        try:
            yield
        finally:
            wall = round(time.monotonic() - t0, 1)
            self.phases.append({"phase": name, "wall_s": wall})
            self.say(name, f"done in {wall:.0f} s")

    def on_sigint(self, _signum: int, _frame: object) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        print("drift: interrupted: finishing with what was measured (Ctrl-C again to abort)")


@dataclass(slots=True)
class _Live:
    """What the replay loop learns as it goes (Unix seconds; None: not yet)."""

    desk: AnsweringDesk
    trigger: RetrainTrigger
    started_at: float
    drift_at: float
    ended_at: float | None = None
    trigger_reason: str | None = None
    retrain: subprocess.Popen[bytes] | None = None
    retrain_started_at: float | None = None
    retrain_ended_at: float | None = None
    retrain_result: dict[str, Any] | None = None
    old_model: str | None = None
    new_model: str | None = None
    switch_at: float | None = None


def run_drift(options: DriftOptions) -> int:
    """Run the scenario; 0 when a retrained expert was promoted and served, 1 otherwise,
    130 when interrupted."""
    run = _Run(options)
    previous = signal.signal(signal.SIGINT, run.on_sigint)
    try:
        return _run(run)
    finally:
        signal.signal(signal.SIGINT, previous)
        for name, proc in reversed(list(run.procs.items())):
            if proc.poll() is None:
                run.say("cleanup", f"stopping {name}")
                _stop_process(proc)


# --- the older desk's expert --------------------------------------------------------------


def ensure_old_expert(
    model_dir: Path, *, n: int, seed: int, taxonomy: Taxonomy, say: Any = print
) -> Path:
    """The expert trained on the older desk's tickets (cloud filed under servers, no new
    product), built with `drift_recipe()` once and reused while its card and data match."""
    from expert.dataset import file_sha256
    from expert.recipe import build
    from expert.serving import ExpertLoadError, check_labels, load_card
    from loadgen.corpus import generate, write_jsonl
    from loadgen.corpus_drift import OLD_DESK

    data = (model_dir.parent / f"drift-old-corpus-{n}-{seed}.jsonl").resolve()
    with contextlib.suppress(ExpertLoadError, OSError):
        card = load_card(model_dir)
        check_labels(card, taxonomy.labels)
        training = card.training
        if (
            card.model_id == DRIFT_MODEL_ID
            and training is not None
            and Path(training.data_path) == data
            and file_sha256(data) == training.data_sha256
        ):
            say(f"reusing the older desk's expert in {model_dir}")
            return model_dir
    write_jsonl(generate(n, seed=seed, drift=OLD_DESK), data)
    say(f"building the older desk's expert from {n} tickets (preset fast, small model)")
    build(data, model_dir, config=drift_recipe(), taxonomy_labels=taxonomy.labels, on_event=say)
    return model_dir


# --- processes ----------------------------------------------------------------------------


def _spawn(args: Sequence[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own console script, fixed arguments
            [sys.executable, "-m", "ticket_router", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )


def _stop_process(proc: subprocess.Popen[bytes], grace_s: float = 60.0) -> int:
    from scenarios.demo import stop_worker

    return stop_worker(proc, grace_s=grace_s)


def _ready(run: _Run, name: str, port: int, *, timeout_s: float) -> None:
    from scenarios.demo import wait_ready

    proc = run.procs[name]
    if not wait_ready(proc, url=f"http://127.0.0.1:{port}/readyz", timeout_s=timeout_s):
        raise RuntimeError(f"{name} did not become ready; see {run.options.out_dir}/{name}.log")


def feedback_verdicts(port: int) -> dict[str, dict[str, int]]:
    """model -> {"confirmed": n, "reassigned": n} from the feedback consumer's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - local URL
        text = resp.read().decode()
    out: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "router_feedback_verdicts_total":
                continue
            counts = out.setdefault(sample.labels["model"], {"confirmed": 0, "reassigned": 0})
            counts[sample.labels["verdict"]] += int(sample.value)
    return out


# --- the scenario -------------------------------------------------------------------------


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


def _run(run: _Run) -> int:  # noqa: C901 - the phases, in order, each a few lines
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
    _write_recipe(recipe_file)
    port = opts.port or free_port()
    with run.phase("broker", f"starting the embedded broker on port {port}"):
        bootstrap = start_broker(state_dir=out / "broker", port=port, taxonomy=tax)
    try:
        old_version = _seed_registry(run, out / "registry", model_dir)
        worker_port, feedback_port = free_port(), free_port()
        with run.phase("worker", "starting a worker that follows the registry"):
            run.procs["worker"] = _spawn(
                ["worker", "--bootstrap", bootstrap],
                env={
                    "ROUTER_ENGINE__REGISTRY_DIR": str(out / "registry"),
                    "ROUTER_ENGINE__MODEL_DIR": str(model_dir.resolve()),
                    "ROUTER_METRICS__PORT": str(worker_port),
                },
                log=out / "worker.log",
            )
            _ready(run, "worker", worker_port, timeout_s=600)
        with run.phase("feedback", "starting the feedback consumer"):
            run.procs["feedback"] = _spawn(
                ["feedback", "--bootstrap", bootstrap, "--store", str(out / "decisions.sqlite3")],
                env={"ROUTER_FEEDBACK__METRICS_PORT": str(feedback_port)},
                log=out / "feedback.log",
            )
            _ready(run, "feedback", feedback_port, timeout_s=120)
        old_world = generate(opts.traffic_n, seed=opts.seed + 1, drift=OLD_DESK)
        new_world = generate(
            opts.traffic_n, seed=opts.seed + 2, drift=Drift(new_product=opts.new_product_share)
        )
        corpus = [*old_world, *new_world]
        result = _loop(
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
        _stop_process(run.procs["feedback"])
    finally:
        with run.phase("broker", "stopping the broker"):
            stop_broker(state_dir=out / "broker", port=port)
    return _report(run, result=result, accounting=accounting, old_version=old_version)


def _write_recipe(path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(drift_recipe().model_dump(mode="json")), "utf-8")


def _seed_registry(run: _Run, root: Path, model_dir: Path) -> str:
    from expert.registry import Registry

    registry = Registry(root)
    info = registry.add(model_dir)
    registry.promote(info.version, reason="drift scenario: the expert of the older desk")
    run.say("registry", f"{root}: current version {info.version}")
    return info.version


def _loop(
    run: _Run,
    *,
    bootstrap: str,
    taxonomy: Taxonomy,
    corpus: list[LabeledTicket],
    split: int,
    feedback_port: int,
    recipe_file: Path,
) -> _Live:
    from loadgen.answering_desk import AnsweringDesk, DeskTarget
    from loadgen.desk import DeskResponse
    from loadgen.itsm_formats import PayloadFormat, ticket_id
    from scenarios.drift_plan import RetrainTrigger, TriggerPolicy, drift_sends

    opts = run.options
    out = opts.out_dir.resolve()
    fmt = PayloadFormat(opts.fmt)
    number = int(datetime.now(UTC).timestamp()) % 10_000
    sends = drift_sends(
        rate_per_s=opts.rate_per_s,
        duration_s=opts.max_replay_s,
        drift_at_s=opts.before_drift_s,
        before=split,
        after=len(corpus) - split,
        seed=opts.seed,
    )
    truths = {ticket_id(fmt, run=number, seq=s.seq): corpus[s.corpus_index].queue for s in sends}
    desk = AnsweringDesk(
        DeskTarget(
            bootstrap=bootstrap,
            decision_topics=(*(q.topic for q in taxonomy.queues), taxonomy.topics.triage),
            feedback_topic=taxonomy.topics.feedback,
        ),
        truths=truths,
        tiers={q.name: q.tier for q in taxonomy.queues},
        desk=DeskResponse(noise=opts.noise),
        speedup=opts.speedup,
        seed=opts.seed,
    )
    desk.start()
    replay_stop = threading.Event()
    replayed: dict[str, Any] = {}
    replayer = threading.Thread(
        target=_replay,
        args=(sends, corpus, bootstrap, taxonomy, fmt, number, out, replay_stop, replayed),
        name="drift-replay",
        daemon=True,
    )
    run.say(
        "replay",
        f"{opts.rate_per_s:g} tickets/s: the older desk's world for {opts.before_drift_s:.0f} s,"
        f" then the drifted one (new product {opts.new_product_share:.0%}, cloud tickets owned"
        f" by cloud_devops); the desk answers at {opts.speedup:g}x",
    )
    replayer.start()
    t0 = time.time()
    state = _Live(
        desk=desk,
        trigger=RetrainTrigger(
            TriggerPolicy(
                window_s=opts.window_s,
                drop=opts.drop,
                labels_after_drop=opts.labels_after_drop,
                max_wait_s=opts.retrain_by_s,
            )
        ),
        started_at=t0,
        drift_at=t0 + opts.before_drift_s,
    )
    next_sample = next_line = 0.0
    while not run.stop.is_set():
        time.sleep(1.0)
        now = time.time()
        if run.procs["worker"].poll() is not None:
            run.say("worker", f"exited with {run.procs['worker'].returncode}: stopping the run")
            break
        if now >= next_sample:
            next_sample = now + 5.0
            _sample(run, state, feedback_port, recipe_file)
        _watch_retrain(run, state)
        _watch_swap(state, desk)
        if now >= next_line:
            next_line = now + 20.0
            _status(run, state, desk, now)
        if _done(opts, state, now, replayer):
            break
    replay_stop.set()
    replayer.join()
    state.ended_at = replayed.get("ended_at", time.time())
    if state.retrain is not None and state.retrain.poll() is None:
        run.say("retrain", "still running at the end of the replay: waiting for it")
        state.retrain.wait()
        _watch_retrain(run, state)
    return state


def _replay(
    sends: Any,
    corpus: Any,
    bootstrap: str,
    taxonomy: Taxonomy,
    fmt: Any,
    number: int,
    out: Path,
    stop: threading.Event,
    replayed: dict[str, Any],
) -> None:
    from loadgen.replay import ReplayTarget, replay

    with (out / "manifest.jsonl").open("w", encoding="utf-8") as manifest:
        result = replay(
            sends,
            corpus,
            target=ReplayTarget(
                bootstrap=bootstrap, topic=taxonomy.topics.inbound, fmt=fmt, run=number
            ),
            manifest=manifest,
            progress=False,
            stop=stop,
        )
    replayed["ended_at"] = time.time()
    (out / "replay.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")


def _sample(run: _Run, state: _Live, feedback_port: int, recipe_file: Path) -> None:
    try:
        verdicts = feedback_verdicts(feedback_port)
    except OSError:
        return
    now = time.time()
    run.samples.append({"t": now, "verdicts": verdicts})
    confirmed = sum(v["confirmed"] for v in verdicts.values())
    reassigned = sum(v["reassigned"] for v in verdicts.values())
    reason = state.trigger.observe(now, confirmed=confirmed, reassigned=reassigned)
    if reason is not None and state.retrain is None:
        _start_retrain(run, state, reason, recipe_file)


def _start_retrain(run: _Run, state: _Live, reason: str, recipe_file: Path) -> None:
    opts = run.options
    out = opts.out_dir.resolve()
    run.say("retrain", f"{reason}: `ticket-router expert retrain` (log {out / 'retrain.log'})")
    state.trigger_reason = reason
    state.retrain_started_at = time.time()
    state.retrain = _spawn(
        [
            "expert",
            "retrain",
            "--registry",
            str(out / "registry"),
            "--store",
            str(out / "decisions.sqlite3"),
            "--work-dir",
            str(out / "retrain"),
            "--config",
            str(recipe_file),
            "--holdout-share",
            str(opts.holdout_share),
            "--min-eval-rows",
            str(opts.min_eval_rows),
            "--feedback-weight",
            str(opts.feedback_weight),
        ],
        env={},
        log=out / "retrain.log",
    )
    run.procs["retrain"] = state.retrain


def _watch_retrain(run: _Run, state: _Live) -> None:
    proc = state.retrain
    if proc is None or proc.poll() is None or state.retrain_ended_at is not None:
        return
    assert state.retrain_started_at is not None
    state.retrain_ended_at = time.time()
    wall = state.retrain_ended_at - state.retrain_started_at
    history = run.options.out_dir.resolve() / "retrain" / "history.jsonl"
    last = json.loads(history.read_text().splitlines()[-1]) if history.exists() else {}
    phases = json.loads(Path(last["report"]).read_text())["wall_s"] if last else {}
    state.retrain_result = {
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "phases_s": phases,
        "promoted_version": last.get("promoted_version"),
        "verdict": (
            f"promoted {last['promoted_version']}"
            if last.get("promoted_version")
            else ("refused" if last else "failed (see retrain.log)")
        ),
        "report_md": str(Path(last["report"]).with_suffix(".md")) if last else None,
        "figures": last.get("figures"),
    }
    run.say("retrain", f"{state.retrain_result['verdict']} after {wall:.0f} s")


def _watch_swap(state: _Live, desk: AnsweringDesk) -> None:
    decisions = desk.decisions
    if not decisions:
        return
    if state.old_model is None:
        state.old_model = decisions[0].model_id
    new = [d for d in decisions if d.model_id != state.old_model]
    if new and state.switch_at is None:
        state.new_model = new[0].model_id
        state.switch_at = min(d.decided_at for d in new)


def _status(run: _Run, state: _Live, desk: AnsweringDesk, now: float) -> None:
    accuracy, judged = state.trigger.window_accuracy()
    window = "-" if accuracy is None else f"{accuracy:.1%}"
    served = {d.model_id for d in desk.decisions[-200:]}
    run.say(
        "live",
        f"t={now - state.started_at:.0f} s: {len(desk.decisions)} decisions read,"
        f" {desk.feedback_published} feedback published, live accuracy (last"
        f" {run.options.window_s:.0f} s of feedback) {window} over {judged};"
        f" serving {sorted(served)}",
    )


def _done(opts: DriftOptions, state: _Live, now: float, replayer: threading.Thread) -> bool:
    if not replayer.is_alive():
        return True
    if state.switch_at is not None:
        return now >= state.switch_at + opts.after_swap_s
    if state.retrain_ended_at is not None and state.retrain_result is not None:
        refused = not state.retrain_result["promoted_version"]
        return refused and now >= state.retrain_ended_at + opts.after_swap_s
    return False


def _drain(run: _Run, *, bootstrap: str, taxonomy: Taxonomy, group: str) -> dict[str, Any]:
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
        _stop_process(proc)

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


def _report(run: _Run, *, result: _Live, accounting: dict[str, Any], old_version: str) -> int:
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
