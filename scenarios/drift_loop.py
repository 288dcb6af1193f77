"""The drift scenario's live phase: replay drifting traffic, answer it, retrain when it falls.

Owns the loop that runs while tickets flow: the replay thread, the simulated desk that
answers every decision, sampling the feedback consumer's verdicts into the retrain trigger
(`scenarios.drift_plan.RetrainTrigger`), starting the real `ticket-router expert retrain`
once, and watching for the worker's swap (seen in the decisions, never commanded). It
returns what it learned (`LiveState`); draining and the report are `scenarios.drift`'s.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenarios.drift_run import DriftRun, spawn
from scenarios.drift_setup import DriftOptions

if TYPE_CHECKING:
    import subprocess

    from loadgen.answering_desk import AnsweringDesk
    from loadgen.corpus import LabeledTicket
    from scenarios.drift_plan import RetrainTrigger
    from schemas.taxonomy import Taxonomy


@dataclass(slots=True)
class LiveState:
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


def live_loop(
    run: DriftRun,
    *,
    bootstrap: str,
    taxonomy: Taxonomy,
    corpus: list[LabeledTicket],
    split: int,
    feedback_port: int,
    recipe_file: Path,
) -> LiveState:
    """Replay `corpus` (the older world's `split` tickets first, then the drifted ones) while
    the desk answers, retrain once when the trigger fires, and return when the run is over:
    a while after the swap or a refused retrain, at the replay's end, or on Ctrl-C."""
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
    state = LiveState(
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


def _sample(run: DriftRun, state: LiveState, feedback_port: int, recipe_file: Path) -> None:
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


def _start_retrain(run: DriftRun, state: LiveState, reason: str, recipe_file: Path) -> None:
    opts = run.options
    out = opts.out_dir.resolve()
    run.say("retrain", f"{reason}: `ticket-router expert retrain` (log {out / 'retrain.log'})")
    state.trigger_reason = reason
    state.retrain_started_at = time.time()
    state.retrain = spawn(
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


def _watch_retrain(run: DriftRun, state: LiveState) -> None:
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


def _watch_swap(state: LiveState, desk: AnsweringDesk) -> None:
    decisions = desk.decisions
    if not decisions:
        return
    if state.old_model is None:
        state.old_model = decisions[0].model_id
    new = [d for d in decisions if d.model_id != state.old_model]
    if new and state.switch_at is None:
        state.new_model = new[0].model_id
        state.switch_at = min(d.decided_at for d in new)


def _status(run: DriftRun, state: LiveState, desk: AnsweringDesk, now: float) -> None:
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


def _done(opts: DriftOptions, state: LiveState, now: float, replayer: threading.Thread) -> bool:
    if not replayer.is_alive():
        return True
    if state.switch_at is not None:
        return now >= state.switch_at + opts.after_swap_s
    if state.retrain_ended_at is not None and state.retrain_result is not None:
        refused = not state.retrain_result["promoted_version"]
        return refused and now >= state.retrain_ended_at + opts.after_swap_s
    return False
