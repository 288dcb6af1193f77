"""Chaos: the real worker (real vLLM, real Kafka clients) killed, starved and cut off.

- 3,000 tickets replayed while the worker is SIGKILLed 5 times at seeded random moments
  and restarted each time: at-least-once loses nothing (duplicates are counted and
  printed); exactly-once loses nothing and duplicates nothing among committed outputs
  (aborted outputs, visible on the embedded broker, are counted apart). Kill moments are
  counted in outputs written, committed or not: counted in committed outputs, every
  exactly-once kill would land just after a commit, never inside an open transaction.
  The last at-least-once worker is then stopped as a rolling deploy stops it: SIGTERM
  with a fresh batch in flight; it drains, exits 0 and commits only what it wrote.
- vLLM's engine-core process killed mid-stream: the worker exits non-zero (or recovers) and
  never commits the offset of a ticket it did not route; a restart finishes the job.
- The broker frozen (SIGSTOP) for 10 s, over three times the worker's 3 s session timeout:
  the worker loses its partitions, retries, resumes, loses nothing.

Each scenario is a plain function; a pool of two threads runs the four of them, longest
first, because a worker boot (three processes importing torch and vLLM, one after the
other) keeps only one of the two cores busy: the faults start as soon as a replay ends,
not when both have. Tests then assert on each scenario's result.

Runs against the session's embedded broker, or against any Kafka named by CHAOS_BOOTSTRAP
(topics created with CHAOS_REPLICATION_FACTOR, default 1; outputs are read read_committed,
and there aborted records are filtered by the broker). The broker-freeze scenario always
starts its own embedded broker.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import (
    AtLeastOnceFigures,
    Boot,
    ExactlyOnceFigures,
    Output,
    TxnLog,
    TxnName,
    account_at_least_once,
    account_exactly_once,
    check_snapshot,
    transaction_logs,
    ungrounded,
)
from schemas.routing import RoutedTicket, TriageReason
from schemas.taxonomy import Taxonomy
from tests.worker_process import (
    OutputLog,
    WorkerProcess,
    committed_offsets,
    output_topics,
    partition_ends,
    produce_tracked,
    sources,
    ticket_payload,
    unique_taxonomy,
    wait_for_committed,
    worker_env,
)
from worker.broker import EmbeddedBroker, TopicLayout, create_layout, free_port

PARTITIONS = 4
TICKETS = 3_000
KILLS = 5
DRAIN = 300  # tickets produced for the last worker's SIGTERM drain (at least once)
SEED = 20_261_127
EXTERNAL = os.environ.get("CHAOS_BOOTSTRAP") or None
REPLICATION_FACTOR = int(os.environ.get("CHAOS_REPLICATION_FACTOR", "1"))
BAD = [b"\x00\xff\xfe", b"{not json", b'{"id": "x", "subject": 5}', b"[]", b""]
SCENARIO_TIMEOUT_S = 1_200
# The broker freeze: the worker's group session times out three times over while the broker
# is stopped (librdkafka calls the partitions lost), whatever the session timeout; shorter
# ones make a shorter scenario. Heartbeats stay well inside the session (with librdkafka's
# default of 3 s, a 3 s session times out on its own every few seconds).
FREEZE_SESSION_TIMEOUT_MS = 3_000
FREEZE_HEARTBEAT_MS = 1_000
FREEZE_S = 10.0


def tax_path(tmp_path: Path) -> Path:
    return tmp_path / "taxonomy.yaml"


def _layout(bootstrap: str, tmp: Path, name: str) -> Taxonomy:
    tax = Taxonomy.load(unique_taxonomy(tax_path(tmp), f"{name}.{uuid.uuid4().hex[:10]}"))
    layout = TopicLayout.from_taxonomy(tax, partitions=PARTITIONS)
    create_layout(bootstrap, layout, replication_factor=REPLICATION_FACTOR if EXTERNAL else 1)
    return tax


def _stream(n: int) -> list[bytes]:
    """`n` inbound records: valid tickets with a bad payload every 100th record."""
    return [BAD[i // 100 % len(BAD)] if i % 100 == 99 else ticket_payload(i) for i in range(n)]


def _keys(n: int) -> list[bytes | None]:
    """Record keys, so that the records spread over every partition."""
    return [f"ticket-{i}".encode() for i in range(n)]


def _kill_points(rng: random.Random, n: int, kills: int, *, min_gap: int) -> list[int]:
    """Seeded, distinct progress points (inbound records with an output) to kill at."""
    while True:
        points = sorted(rng.sample(range(n // 10, n * 85 // 100), kills))
        if all(b - a >= min_gap for a, b in zip([0, *points], points, strict=False)):
            return points


def _alive(worker: WorkerProcess) -> Callable[[], None]:
    def check() -> None:
        if not worker.is_alive():
            raise AssertionError(f"worker exited {worker.proc.returncode}:\n{worker.tail()}")

    return check


def _kill_at(out: OutputLog, worker: WorkerProcess, point: int) -> None:
    """SIGKILL the worker once `point` inbound records have an output; reap its group."""
    try:
        out.follow(lambda o: o.distinct() >= point, timeout_s=300, tick=_alive(worker))
        worker.signal(signal.SIGKILL)
        assert worker.wait() == -signal.SIGKILL
    finally:
        worker.kill()


def _finish(
    bootstrap: str, group: str, inbound: str, ends: dict[int, int], w: WorkerProcess
) -> dict[int, int]:
    """Let the worker commit everything, then stop it with SIGTERM (exit code 0)."""
    try:
        final = wait_for_committed(bootstrap, group, inbound, ends, worker=w, timeout_s=300)
        w.signal(signal.SIGTERM)
        assert w.wait(timeout_s=120) == 0, w.tail()
    finally:
        w.kill()
    return final


@dataclass
class Drain:
    """The last worker stopped by SIGTERM with tickets in flight (a rolling deploy)."""

    exit_code: int
    events: list[str]
    written: int  # drain tickets with an output when the worker had exited
    committed_without_output: list[tuple[str, int, int]]


def _drain_on_sigterm(
    bootstrap: str,
    group: str,
    inbound: str,
    ends: dict[int, int],
    out: OutputLog,
    w: WorkerProcess,
) -> tuple[dict[int, int], Drain, set[tuple[str, int, int]]]:
    """Once the worker has committed everything, produce DRAIN more tickets, SIGTERM it once
    some are written, let it drain and exit; every offset it committed must have an output.
    Returns the offsets committed before the drain, the drain, the drain's inbound records."""
    try:
        final = wait_for_committed(bootstrap, group, inbound, ends, worker=w, timeout_s=300)
        fresh = [ticket_payload(TICKETS + i) for i in range(DRAIN)]
        refs = set(produce_tracked(bootstrap, inbound, fresh, keys=_keys(DRAIN)))
        out.follow(lambda o: len(refs & sources(o.records)) >= 10, timeout_s=120, tick=_alive(w))
        w.signal(signal.SIGTERM)
        code = w.wait(timeout_s=120)
    finally:
        w.kill()
    done = sources(out.read_to_end())
    snap = committed_offsets(bootstrap, group, inbound, PARTITIONS)
    missing = ungrounded({(inbound, p): o for p, o in snap.items()}, done)
    drain = Drain(code, [str(e.get("event")) for e in w.events()], len(refs & done), missing)
    return final, drain, refs


def _progress(worker: WorkerProcess) -> str:
    """The worker's own view of its progress, from /metrics (for failure messages)."""
    names = (
        "router_assigned_partitions",
        "router_in_flight_tickets",
        "router_messages_consumed_total",
        "router_commits_total",
    )
    return ", ".join(f"{name} {worker.metric(name):.0f}" for name in names)


def _boots_s(workers: list[WorkerProcess]) -> str:
    times = [t for w in workers if (t := w.boot_s()) is not None]
    return f"boots {len(workers)}, to worker_started {min(times):.0f}-{max(times):.0f} s"


# ---------------------------------------------------------------------------- scenarios


@dataclass
class Replay:
    """A replay through KILLS SIGKILLs and a clean finish."""

    points: list[int]
    ends: dict[int, int]
    final: dict[int, int]
    boots: str
    at_least_once: AtLeastOnceFigures | None = None
    exactly_once: ExactlyOnceFigures | None = None
    ungrounded_after_kill: list[str] = field(default_factory=list)
    drain: Drain | None = None


def _boot(worker: WorkerProcess, *, killed: bool) -> Boot | None:
    """The worker's boot id, from its transaction log lines (None: it logged none)."""
    for e in worker.events():
        if str(e.get("event", "")).startswith("transaction_"):
            return Boot(boot=TxnName.parse(str(e["txn"])).boot, killed=killed)
    return None


def replay_with_kills(bootstrap: str, model_dir: Path, tmp: Path, *, exactly_once: bool) -> Replay:
    """Replay TICKETS tickets; SIGKILL the worker KILLS times at seeded moments, restarting
    it each time; let the last worker finish; account for every inbound record. At least
    once, the last worker is then stopped by SIGTERM with DRAIN more tickets in flight.

    At least once, after each kill: every offset below a committed one has an output
    already. Exactly once: the same transactional id for every boot (each restart fences
    the one before); the committed offsets left by each killed boot (taken when the next
    one has started) are checked against the outputs at the end.
    """
    mode = "eos" if exactly_once else "alo"
    tax = _layout(bootstrap, tmp, f"chaos-{mode}")
    group, inbound = f"chaos-{mode}-{uuid.uuid4().hex[:10]}", tax.topics.inbound
    positions = produce_tracked(bootstrap, inbound, _stream(TICKETS), keys=_keys(TICKETS))
    ends = partition_ends(positions)
    eos_env = {
        "ROUTER_KAFKA__EXACTLY_ONCE": "true",
        "ROUTER_KAFKA__TRANSACTIONAL_ID": f"{group}-worker-0",
    }
    env = worker_env(
        bootstrap, tax_path(tmp), model_dir, group, **(eos_env if exactly_once else {})
    )
    points = _kill_points(random.Random(SEED + exactly_once), TICKETS, KILLS, min_gap=300)
    out = OutputLog(bootstrap, output_topics(tax))
    # Where the kill points are counted: in outputs written, committed or not.
    progress = OutputLog(bootstrap, output_topics(tax), committed_only=False)
    workers: list[WorkerProcess] = []
    snapshots: list[dict[tuple[str, int], int]] = []
    problems: list[str] = []

    def snapshot_when_started(worker: WorkerProcess) -> dict[tuple[str, int], int]:
        # Once the restarted worker has started, its producer has fenced the killed one:
        # any transaction left open is aborted, a commit in flight is complete. It commits
        # nothing itself before it has joined the group and finished a transaction.
        worker.wait_for_event("worker_started", timeout_s=300)
        snap = committed_offsets(bootstrap, group, inbound, PARTITIONS)
        return {(inbound, p): o for p, o in snap.items()}

    try:
        for k, point in enumerate(points):
            workers.append(WorkerProcess(env, tmp / f"boot{k}.log"))
            if exactly_once and k > 0:
                snapshots.append(snapshot_when_started(workers[-1]))
            _kill_at(progress, workers[-1], point)
            if not exactly_once:
                # Nothing committed that was not written: every offset below a committed
                # one has an output already (the killed worker cannot add any now).
                snap = committed_offsets(bootstrap, group, inbound, PARTITIONS)
                done = sources(out.read_to_end())
                missing = ungrounded({(inbound, p): o for p, o in snap.items()}, done)
                problems += [f"kill {k + 1}: {s} committed without output" for s in missing[:5]]
        workers.append(WorkerProcess(env, tmp / "final.log"))
        drain: Drain | None = None
        drained: set[tuple[str, int, int]] = set()
        if exactly_once:
            snapshots.append(snapshot_when_started(workers[-1]))
            final = _finish(bootstrap, group, inbound, ends, workers[-1])
        else:
            final, drain, drained = _drain_on_sigterm(
                bootstrap, group, inbound, ends, out, workers[-1]
            )
        out.read_to_end()
        outputs = out.outputs()
    finally:
        out.close()
        progress.close()
    result = Replay(
        points, ends, final, _boots_s(workers), ungrounded_after_kill=problems, drain=drain
    )
    if not exactly_once:
        replayed = [o for o in outputs if o.source not in drained]
        result.at_least_once = account_at_least_once(positions, replayed)
        return result
    logs: dict[str, TxnLog] = {}
    for w in workers:
        logs.update(transaction_logs(w.events()))
    boots = [_boot(w, killed=w is not workers[-1]) for w in workers]
    assert boots[-1] is not None, "the final worker logged no transaction"
    figures = account_exactly_once(
        positions,
        outputs,
        logs,
        [b for b in boots if b is not None],
        broker_filters_aborted=EXTERNAL is not None,
    )
    for snapshot, boot in zip(snapshots, boots[:-1], strict=True):
        if boot is not None:  # (None: killed before its first transaction ended)
            figures.violations += check_snapshot(
                snapshot, boot=boot.boot, outputs=outputs, figures=figures
            )
    result.exactly_once = figures
    return result


@dataclass
class EngineCoreKill:
    """The engine core killed under one worker, then a second worker finishing the job."""

    exit_code: int | None  # None: the worker recovered and routed everything
    committed_before_restart: dict[int, int]
    committed_without_output: list[tuple[str, int, int]]
    figures: AtLeastOnceFigures
    triaged_for_deadline: int
    boots: str


def engine_core_kill(bootstrap: str, model_dir: Path, tmp: Path) -> EngineCoreKill:
    """Kill vLLM's engine-core process mid-stream; restart the worker if it exited."""
    tax = _layout(bootstrap, tmp, "chaos-core")
    group, inbound, n = f"chaos-core-{uuid.uuid4().hex[:10]}", tax.topics.inbound, 2_000
    positions = produce_tracked(bootstrap, inbound, _stream(n), keys=_keys(n))
    ends = partition_ends(positions)
    # The production layout: the engine core drives a model process of its own.
    env = worker_env(
        bootstrap, tax_path(tmp), model_dir, group, ROUTER_ENGINE__MODEL_IN_ENGINE_CORE="false"
    )
    out = OutputLog(bootstrap, output_topics(tax))
    first = WorkerProcess(env, tmp / "first.log")
    workers = [first]
    code: int | None = None
    try:
        try:
            out.follow(lambda o: o.distinct() >= 300, timeout_s=300, tick=_alive(first))
            core = first.engine_core()
            assert core is not None, f"no EngineCore process among {first.group_members()}"
            assert first.model_process() is not None, "the model runs in the engine core"
            core.kill()
            # Crash loudly (non-zero exit), or recover and route everything: not half alive.
            out.follow(lambda o: not first.is_alive() or o.distinct() >= n, timeout_s=180)
            if not first.is_alive():
                code = first.wait()
        finally:
            first.kill()
        snapshot = committed_offsets(bootstrap, group, inbound, PARTITIONS)
        done = sources(out.read_to_end())
        missing = ungrounded({(inbound, p): o for p, o in snapshot.items()}, done)
        if code is not None:  # the second worker only finishes the job: the suite's layout
            second_env = worker_env(bootstrap, tax_path(tmp), model_dir, group)
            workers.append(WorkerProcess(second_env, tmp / "second.log"))
            _finish(bootstrap, group, inbound, ends, workers[-1])
        out.read_to_end()
        deadline_triage = sum(
            1
            for r in out.records
            if r.topic == tax.topics.triage
            and RoutedTicket.model_validate_json(r.value).triage_reason
            is TriageReason.DEADLINE_EXCEEDED
        )
        figures = account_at_least_once(positions, out.outputs())
    finally:
        out.close()
    return EngineCoreKill(code, snapshot, missing, figures, deadline_triage, _boots_s(workers))


@dataclass
class BrokerFreeze:
    """A worker through a broker freeze of FREEZE_S."""

    figures: AtLeastOnceFigures
    ends: dict[int, int]
    final: dict[int, int]
    events: dict[str, int]


def broker_freeze(model_dir: Path, tmp: Path, *, freeze_s: float = FREEZE_S) -> BrokerFreeze:
    """SIGSTOP a dedicated embedded broker for `freeze_s` while the worker routes, SIGCONT."""
    broker = EmbeddedBroker(state_dir=tmp / "broker", port=free_port())
    broker.start()
    try:
        bootstrap = broker.bootstrap
        tax = _layout(bootstrap, tmp, "chaos-freeze")
        group, n = f"chaos-freeze-{uuid.uuid4().hex[:10]}", 1_000
        positions = produce_tracked(bootstrap, tax.topics.inbound, _stream(n), keys=_keys(n))
        ends = partition_ends(positions)
        out = OutputLog(bootstrap, output_topics(tax))
        # A small in-flight bound: backpressure (paused partitions) is certain to be on
        # when the partitions are lost during the freeze.
        env = worker_env(
            bootstrap,
            tax_path(tmp),
            model_dir,
            group,
            ROUTER_MAX_IN_FLIGHT="32",
            ROUTER_KAFKA__SESSION_TIMEOUT_MS=str(FREEZE_SESSION_TIMEOUT_MS),
            ROUTER_KAFKA__EXTRA=json.dumps({"heartbeat.interval.ms": str(FREEZE_HEARTBEAT_MS)}),
        )
        worker = WorkerProcess(env, tmp / "w.log")
        try:
            out.follow(lambda o: o.distinct() >= 300, timeout_s=300, tick=_alive(worker))
            pid = broker.running_pid()
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                thaw_at = time.monotonic() + freeze_s  # the fault's duration, not a wait
                while time.monotonic() < thaw_at:
                    _alive(worker)()
                    time.sleep(0.5)
            finally:
                os.kill(pid, signal.SIGCONT)
            # The same process all along: it rode the outage out instead of crashing.
            try:
                out.follow(lambda o: o.distinct() >= n, timeout_s=150, tick=_alive(worker))
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the worker says: {_progress(worker)}") from exc
            final = _finish(bootstrap, group, tax.topics.inbound, ends, worker)
            out.read_to_end()
            figures = account_at_least_once(positions, out.outputs())
        finally:
            worker.kill()
            out.close()
    finally:
        broker.stop()
    counts: dict[str, int] = {}
    for e in worker.events():
        name = str(e.get("event"))
        if name.startswith(("kafka_", "retry_", "partitions_")):
            counts[name] = counts.get(name, 0) + 1
    return BrokerFreeze(figures, ends, final, counts)


# ---------------------------------------------------------------------------- fixtures


def _run_all(scenarios: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run the scenarios two at a time, in the given order (each one as soon as a thread is
    free); each result is its value or the exception it raised."""

    def captured(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BaseException as exc:  # handed to the test that owns the scenario
            return exc

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="scenario") as pool:
        futures = {name: pool.submit(captured, fn) for name, fn in scenarios.items()}
        return {name: future.result() for name, future in futures.items()}


def _result(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


@pytest.fixture(scope="module")
def chaos_bootstrap(request: pytest.FixtureRequest) -> str:
    """CHAOS_BOOTSTRAP when set (any Kafka), else the session's embedded broker."""
    if EXTERNAL:
        return EXTERNAL
    return str(request.getfixturevalue("broker").bootstrap)


@pytest.fixture(scope="module")
def scenarios(
    chaos_bootstrap: str, tiny_expert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The four scenarios, longest first: the replays (six worker boots each), then the
    engine-core kill (two) and the broker freeze (one)."""
    alo, eos = tmp_path_factory.mktemp("alo"), tmp_path_factory.mktemp("eos")
    core, freeze = tmp_path_factory.mktemp("core"), tmp_path_factory.mktemp("freeze")
    return _run_all(
        {
            "alo": lambda: replay_with_kills(
                chaos_bootstrap, tiny_expert_dir, alo, exactly_once=False
            ),
            "eos": lambda: replay_with_kills(
                chaos_bootstrap, tiny_expert_dir, eos, exactly_once=True
            ),
            "core": lambda: engine_core_kill(chaos_bootstrap, tiny_expert_dir, core),
            "freeze": lambda: broker_freeze(tiny_expert_dir, freeze),
        }
    )


# ---------------------------------------------------------------------------- tests


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_five_sigkills_during_replay_lose_nothing_at_least_once_then_sigterm_drains(
    scenarios: dict[str, Any],
) -> None:
    run: Replay = _result(scenarios["alo"])
    figures, drain = run.at_least_once, run.drain
    assert figures is not None and drain is not None
    print(
        figures.summary(kills=KILLS),
        f"kill points {run.points}; {run.boots}; SIGTERM drain: exit {drain.exit_code}, "
        f"{drain.written} of {DRAIN} fresh tickets written",
    )
    assert run.ungrounded_after_kill == []
    assert figures.sent == TICKETS
    assert figures.lost == 0, f"lost {figures.lost_examples}"
    assert figures.unexpected == 0
    assert run.final == run.ends
    # The drain: a clean exit, through the shutdown path, committing nothing unwritten.
    assert drain.exit_code == 0
    assert "shutdown_started" in drain.events and "shutdown_completed" in drain.events
    assert drain.written >= 10
    assert drain.committed_without_output == [], "offsets committed for tickets never routed"


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_five_sigkills_during_replay_neither_lose_nor_duplicate_exactly_once(
    scenarios: dict[str, Any],
) -> None:
    run: Replay = _result(scenarios["eos"])
    figures = run.exactly_once
    assert figures is not None
    print(figures.summary(kills=KILLS), f"kill points {run.points}; {run.boots}")
    assert figures.sent == TICKETS
    assert figures.violations == [], "\n".join(figures.violations[:20])
    assert (figures.lost, figures.duplicated, figures.unexpected) == (0, 0, 0)
    assert figures.committed_outputs == TICKETS
    assert figures.committed_txns > KILLS  # real work was committed in transactions
    assert run.final == run.ends


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_killed_engine_core_crashes_worker_without_committing_unrouted_tickets(
    scenarios: dict[str, Any],
) -> None:
    run: EngineCoreKill = _result(scenarios["core"])
    outcome = "recovered" if run.exit_code is None else f"worker exited {run.exit_code}"
    print(
        f"engine core killed: {outcome}; committed before restart "
        f"{run.committed_before_restart}; {run.figures.summary(kills=1)}; {run.boots}"
    )
    assert run.exit_code not in (0, -signal.SIGKILL)
    assert run.committed_without_output == [], "offsets committed for tickets never routed"
    assert run.figures.lost == 0, f"lost {run.figures.lost_examples}"
    assert run.figures.unexpected == 0
    # A dead engine is fatal, not "unsure": no ticket went to triage for a missed deadline.
    assert run.triaged_for_deadline == 0


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_broker_frozen_past_the_session_timeout_worker_retries_resumes_and_loses_nothing(
    scenarios: dict[str, Any],
) -> None:
    run: BrokerFreeze = _result(scenarios["freeze"])
    print(
        f"broker frozen {FREEZE_S:.0f} s (session timeout {FREEZE_SESSION_TIMEOUT_MS} ms): "
        f"{run.figures.summary(kills=0)}; worker events {run.events}; "
        "one worker process throughout"
    )
    # The freeze outlasted the session: the partitions were lost, then assigned again.
    assert run.events.get("partitions_lost", 0) >= 1, run.events
    assert run.events.get("partitions_assigned", 0) >= 2, run.events
    assert run.figures.lost == 0, f"lost {run.figures.lost_examples}"
    assert run.figures.unexpected == 0
    assert run.final == run.ends


# ---------------------------------------------------------------------------- pause + loss


class _Listener:
    """Records the Source's rebalance callbacks (no pipeline behind it)."""

    def __init__(self) -> None:
        self.assigned: list[list[tuple[str, int]]] = []
        self.lost: list[list[tuple[str, int]]] = []

    def on_assigned(self, tps: list[tuple[str, int]]) -> None:
        self.assigned.append(tps)

    def on_revoked(self, tps: list[tuple[str, int]], ops: object) -> dict[tuple[str, int], int]:
        return {}

    def on_lost(self, tps: list[tuple[str, int]], ops: object) -> None:
        self.lost.append(tps)


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_partitions_lost_while_paused_fetch_again_once_reassigned(tmp_path: Path) -> None:
    """The worker's backpressure through a broker outage, at the Source: partitions are
    paused (in-flight bound reached), lost (session timeout), resumed while nothing is
    assigned (in-flight drained), then assigned again: they must be fetched again.

    librdkafka keeps a partition's pause flag across a loss and re-assignment, so a Source
    that resumes only what is assigned at that moment leaves the worker alive, ready and
    idle for good (seen in the broker-freeze scenario).
    """
    from worker.config import Settings
    from worker.kafka_io import Source
    from worker.runner import consumer_config

    broker = EmbeddedBroker(state_dir=tmp_path / "broker", port=free_port())
    broker.start()
    try:
        topic = f"paused-{uuid.uuid4().hex[:10]}"
        create_layout(broker.bootstrap, TopicLayout(topics=(topic,), partitions=2))
        settings = Settings(
            kafka={
                "bootstrap_servers": broker.bootstrap,
                "group_id": f"g-{topic}",
                "session_timeout_ms": FREEZE_SESSION_TIMEOUT_MS,
                # lost by the freeze only, not by heartbeats as slow as the session
                "extra": {"heartbeat.interval.ms": str(FREEZE_HEARTBEAT_MS)},
            }
        )
        listener = _Listener()
        source = Source(conf=consumer_config(settings), topics=[topic], listener=listener)
        await source.start()

        async def poll_until(done: Callable[[], bool], what: str, *, timeout_s: float) -> int:
            records, deadline = 0, time.monotonic() + timeout_s
            while not done():
                assert time.monotonic() < deadline, f"no {what} within {timeout_s}s"
                records += len(await source.poll(max_records=100, timeout_s=0.2))
            return records

        try:
            await poll_until(lambda: bool(listener.assigned), "assignment", timeout_s=30)
            await source.pause(await source.assignment())
            pid = broker.running_pid()
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                await poll_until(lambda: bool(listener.lost), "loss", timeout_s=30)
                await source.resume({})  # the pipeline, once its in-flight tickets drained
            finally:
                os.kill(pid, signal.SIGCONT)
            await poll_until(lambda: len(listener.assigned) > 1, "re-assignment", timeout_s=30)
            produce_tracked(broker.bootstrap, topic, [b"a", b"b", b"c", b"d"], keys=_keys(4))
            got, deadline = 0, time.monotonic() + 15
            while got < 4 and time.monotonic() < deadline:
                got += len(await source.poll(max_records=100, timeout_s=0.2))
            assert got == 4, f"{got} of 4 records fetched after the re-assignment"
        finally:
            await source.close()
    finally:
        broker.stop()


# ---------------------------------------------------------------------------- accounting


def _o(p: int, o: int, txn: str | None = None, *, at: int = 0) -> Output:
    return Output(topic="out", partition=0, offset=at, source=("in", p, o), txn=txn)


def test_at_least_once_accounting_counts_lost_duplicated_and_unexpected() -> None:
    sent = [("in", 0, 0), ("in", 0, 1), ("in", 1, 0)]
    figures = account_at_least_once(sent, [_o(0, 0), _o(0, 0), _o(1, 0), _o(1, 7)])
    assert (figures.lost, figures.duplicated, figures.unexpected) == (1, 1, 1)
    assert figures.lost_examples == (("in", 0, 1),)
    assert ungrounded({("in", 0): 2}, {("in", 0, 0)}) == [("in", 0, 1)]


def _committed(name: str, tickets: int, offsets: dict[tuple[str, int], int]) -> TxnLog:
    return TxnLog(name=name, committed=True, tickets=tickets, offsets=offsets)


def test_exactly_once_accounting_resolves_the_unlogged_last_transaction_of_a_killed_boot() -> None:
    sent = [("in", 0, o) for o in range(4)]
    boots = [Boot("b1", killed=True), Boot("b2", killed=False)]
    logs = {
        "t:b1:1": _committed("t:b1:1", 2, {("in", 0): 2}),
        "t:b2:1": _committed("t:b2:1", 2, {("in", 0): 4}),
    }
    # b1's second transaction was cut by the kill; b2 re-did its records: it was aborted.
    outputs = [_o(0, 0, "t:b1:1"), _o(0, 1, "t:b1:1"), _o(0, 2, "t:b1:2"), _o(0, 3, "t:b1:2")]
    outputs += [_o(0, 2, "t:b2:1"), _o(0, 3, "t:b2:1")]
    figures = account_exactly_once(sent, outputs, logs, boots, broker_filters_aborted=False)
    assert figures.violations == []
    assert (figures.lost, figures.duplicated, figures.aborted_outputs) == (0, 0, 2)
    assert figures.unknown_txns_aborted == ["t:b1:2"]
    assert check_snapshot({("in", 0): 2}, boot="b1", outputs=outputs, figures=figures) == []
    # The same cut transaction had committed when b2 started after it: committed, not lost.
    logs["t:b2:1"] = _committed("t:b2:1", 0, {("in", 0): 4})
    figures = account_exactly_once(sent, outputs[:4], logs, boots, broker_filters_aborted=False)
    assert (figures.lost, figures.duplicated, figures.violations) == (0, 0, [])
    assert figures.unknown_txns_committed == ["t:b1:2"]
    # ... which a snapshot still at 2 after the kill would contradict.
    assert check_snapshot({("in", 0): 2}, boot="b1", outputs=outputs[:4], figures=figures)


def test_exactly_once_accounting_flags_outputs_committed_ahead_of_their_offsets() -> None:
    sent = [("in", 0, o) for o in range(3)]
    logs = {
        "t:b1:1": _committed("t:b1:1", 3, {("in", 0): 2}),  # output 2 without its offset
        "t:b2:1": _committed("t:b2:1", 1, {("in", 0): 3}),
    }
    outputs = [_o(0, 0, "t:b1:1"), _o(0, 1, "t:b1:1"), _o(0, 2, "t:b1:1"), _o(0, 2, "t:b2:1")]
    boots = [Boot("b1", killed=True), Boot("b2", killed=False)]
    figures = account_exactly_once(sent, outputs, logs, boots, broker_filters_aborted=False)
    assert figures.duplicated == 1
    assert any("without its offset" in v for v in figures.violations)


def test_exactly_once_accounting_on_a_filtering_broker_counts_every_visible_output() -> None:
    sent = [("in", 0, 0)]
    logs = {"t:b1:1": TxnLog(name="t:b1:1", committed=False, reason="revoked")}
    outputs = [_o(0, 0, "t:b1:1"), _o(0, 0, "t:b2:1")]
    boots = [Boot("b1", killed=False), Boot("b2", killed=True)]
    figures = account_exactly_once(sent, outputs, logs, boots, broker_filters_aborted=True)
    assert figures.duplicated == 1
    assert any("logged aborted" in v for v in figures.violations)


def test_chaos_command_prints_the_figures_of_a_run(
    bootstrap: str, tmp_path: Path, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m bench.chaos` on a stand-in router's outputs: one lost, one duplicated."""
    from confluent_kafka import Producer

    from bench.chaos import main

    tax = Taxonomy.load(unique_taxonomy(tax_path(tmp_path), f"cli.{unique}"))
    create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=2))
    positions = produce_tracked(
        bootstrap, tax.topics.inbound, [ticket_payload(i) for i in range(4)]
    )
    manifest = tmp_path / "manifest.jsonl"
    rows = [
        {
            "ticket_id": f"INC{i:07d}",
            "queue": "hardware",
            "format": "canonical",
            "storm": None,
            "seq": i,
            "scheduled_s": 0.0,
            "due_s": 0.0,
            "sent_at": 0.0,
            "lag_s": 0.0,
            "delivered": True,
            "partition": p,
            "offset": o,
        }
        for i, (_t, p, o) in enumerate(positions)
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    producer = Producer({"bootstrap.servers": bootstrap})
    for t, p, o in [*positions[:3], positions[0]]:  # the last one lost, the first twice
        headers = [
            ("router.source.topic", t.encode()),
            ("router.source.partition", b"%d" % p),
            ("router.source.offset", b"%d" % o),
        ]
        producer.produce(tax.queues[0].topic, value=b"{}", headers=headers)
    assert producer.flush(30) == 0
    code = main(
        [
            "--bootstrap",
            bootstrap,
            "--taxonomy",
            str(tax_path(tmp_path)),
            "--manifest",
            str(manifest),
            "--idle-s",
            "1",
        ]
    )
    figures = json.loads(capsys.readouterr().out)
    assert (code, figures["sent"], figures["lost"], figures["duplicated"]) == (1, 4, 1, 1)
