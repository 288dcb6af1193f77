"""Chaos: the real worker (real vLLM, real Kafka clients) killed, starved and cut off.

- 5,000+ tickets replayed while the worker is SIGKILLed 5 times at seeded random moments
  and restarted: at-least-once loses nothing (duplicates are counted and printed);
  exactly-once loses nothing and duplicates nothing among committed outputs (aborted
  outputs, visible on the embedded broker, are counted apart).
- vLLM's engine-core process killed mid-stream: the worker exits non-zero (or recovers) and
  never commits the offset of a ticket it did not route; a restart finishes the job.
- The broker frozen (SIGSTOP) for 20 s: the worker retries, resumes, loses nothing.

Runs against the session's embedded broker, or against any Kafka named by CHAOS_BOOTSTRAP
(outputs are read read_committed; there aborted records are filtered by the broker).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from loadgen.chaos import (
    Boot,
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
TICKETS = 5_000
KILLS = 5
SEED = 20_261_127
EXTERNAL = os.environ.get("CHAOS_BOOTSTRAP") or None
BAD = [b"\x00\xff\xfe", b"{not json", b'{"id": "x", "subject": 5}', b"[]", b""]

chaos = [pytest.mark.chaos, pytest.mark.slow]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def chaos_bootstrap(request: pytest.FixtureRequest) -> str:
    """CHAOS_BOOTSTRAP when set (any Kafka), else the session's embedded broker."""
    if EXTERNAL:
        return EXTERNAL
    return str(request.getfixturevalue("broker").bootstrap)


def tax_path(tmp_path: Path) -> Path:
    return tmp_path / "taxonomy.yaml"


@pytest.fixture
def chaos_layout(chaos_bootstrap: str, tmp_path: Path, unique: str) -> Taxonomy:
    tax = Taxonomy.load(unique_taxonomy(tax_path(tmp_path), f"chaos.{unique}"))
    create_layout(chaos_bootstrap, TopicLayout.from_taxonomy(tax, partitions=PARTITIONS))
    return tax


def _stream(n: int) -> list[bytes]:
    """`n` inbound records: valid tickets with a bad payload every 100th record."""
    return [BAD[i // 100 % len(BAD)] if i % 100 == 99 else ticket_payload(i) for i in range(n)]


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


# ---------------------------------------------------------------------------- at least once


@pytest.mark.timeout(900)
@pytest.mark.chaos
@pytest.mark.slow
def test_five_sigkills_during_replay_lose_nothing_at_least_once(
    chaos_bootstrap: str, chaos_layout: Taxonomy, tiny_expert_dir: Path, unique: str, tmp_path: Path
) -> None:
    tax, group = chaos_layout, f"chaos-alo-{unique}"
    inbound = tax.topics.inbound
    positions = produce_tracked(chaos_bootstrap, inbound, _stream(TICKETS))
    ends = partition_ends(positions)
    env = worker_env(chaos_bootstrap, tax_path(tmp_path), tiny_expert_dir, group)
    points = _kill_points(random.Random(SEED), TICKETS, KILLS, min_gap=300)
    out = OutputLog(chaos_bootstrap, output_topics(tax))
    try:
        for k, point in enumerate(points):
            _kill_at(out, WorkerProcess(env, tmp_path / f"boot{k}.log"), point)
            # Nothing committed that was not written: every offset below a committed one
            # has an output already (the killed worker cannot add any now).
            snapshot = committed_offsets(chaos_bootstrap, group, inbound, PARTITIONS)
            done = sources(out.read_to_end(PARTITIONS))
            missing = ungrounded({(inbound, p): o for p, o in snapshot.items()}, done)
            assert not missing, f"kill {k + 1}: committed without output: {missing[:5]}"
        last = WorkerProcess(env, tmp_path / "final.log")
        try:
            final = wait_for_committed(
                chaos_bootstrap, group, inbound, ends, worker=last, timeout_s=300
            )
            last.signal(signal.SIGTERM)
            assert last.wait(timeout_s=120) == 0, last.tail()
        finally:
            last.kill()
        out.read_to_end(PARTITIONS)
        figures = account_at_least_once(positions, out.outputs())
    finally:
        out.close()
    print(figures.summary(kills=KILLS), f"kill points {points}")
    assert figures.sent == TICKETS
    assert figures.lost == 0, f"lost {figures.lost_examples}"
    assert figures.unexpected == 0
    assert final == ends


# ---------------------------------------------------------------------------- exactly once


def _boot(worker: WorkerProcess, *, killed: bool) -> Boot | None:
    """The worker's boot id, from its transaction log lines (None: it logged none)."""
    for e in worker.events():
        if str(e.get("event", "")).startswith("transaction_"):
            return Boot(boot=TxnName.parse(str(e["txn"])).boot, killed=killed)
    return None


@pytest.mark.timeout(900)
@pytest.mark.chaos
@pytest.mark.slow
def test_five_sigkills_during_replay_neither_lose_nor_duplicate_exactly_once(
    chaos_bootstrap: str, chaos_layout: Taxonomy, tiny_expert_dir: Path, unique: str, tmp_path: Path
) -> None:
    tax, group = chaos_layout, f"chaos-eos-{unique}"
    inbound = tax.topics.inbound
    positions = produce_tracked(chaos_bootstrap, inbound, _stream(TICKETS))
    ends = partition_ends(positions)
    env = worker_env(
        chaos_bootstrap,
        tax_path(tmp_path),
        tiny_expert_dir,
        group,
        # The same transactional id for every boot: each restart fences the one before.
        ROUTER_KAFKA__EXACTLY_ONCE="true",
        ROUTER_KAFKA__TRANSACTIONAL_ID=f"chaos-{unique}",
    )
    points = _kill_points(random.Random(SEED + 1), TICKETS, KILLS, min_gap=300)
    out = OutputLog(chaos_bootstrap, output_topics(tax))
    workers: list[WorkerProcess] = []
    snapshots: list[dict[tuple[str, int], int]] = []
    try:
        for k, point in enumerate(points):
            workers.append(WorkerProcess(env, tmp_path / f"boot{k}.log"))
            _kill_at(out, workers[-1], point)
            # Stable committed offsets right after the kill (an open transaction's offsets
            # are not among them); checked against the outputs at the end.
            snap = committed_offsets(chaos_bootstrap, group, inbound, PARTITIONS)
            snapshots.append({(inbound, p): o for p, o in snap.items()})
        workers.append(WorkerProcess(env, tmp_path / "final.log"))
        try:
            final = wait_for_committed(
                chaos_bootstrap, group, inbound, ends, worker=workers[-1], timeout_s=300
            )
            workers[-1].signal(signal.SIGTERM)
            assert workers[-1].wait(timeout_s=120) == 0, workers[-1].tail()
        finally:
            workers[-1].kill()
        out.read_to_end(PARTITIONS)
        outputs = out.outputs()
    finally:
        out.close()
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
    for i, boot in enumerate(boots[:-1]):
        if boot is None:  # killed before its first transaction ended: nothing to cross-check
            continue
        figures.violations += check_snapshot(
            snapshots[i],
            boot=boot.boot,
            outputs=outputs,
            figures=figures,
            check_unknown=EXTERNAL is None,
        )
    print(figures.summary(kills=KILLS), f"kill points {points}")
    assert figures.sent == TICKETS
    assert figures.violations == [], "\n".join(figures.violations[:20])
    assert (figures.lost, figures.duplicated, figures.unexpected) == (0, 0, 0)
    assert final == ends
    # The run committed real work in transactions, and every boot fenced the one before.
    assert figures.committed_txns > KILLS and figures.committed_outputs == TICKETS


# ---------------------------------------------------------------------------- engine core


@pytest.mark.timeout(600)
@pytest.mark.chaos
@pytest.mark.slow
def test_killed_engine_core_crashes_worker_without_committing_unrouted_tickets(
    chaos_bootstrap: str, chaos_layout: Taxonomy, tiny_expert_dir: Path, unique: str, tmp_path: Path
) -> None:
    tax, group = chaos_layout, f"chaos-core-{unique}"
    inbound, n = tax.topics.inbound, 2_000
    positions = produce_tracked(chaos_bootstrap, inbound, _stream(n))
    ends = partition_ends(positions)
    env = worker_env(chaos_bootstrap, tax_path(tmp_path), tiny_expert_dir, group)
    out = OutputLog(chaos_bootstrap, output_topics(tax))
    first = WorkerProcess(env, tmp_path / "first.log")
    code: int | None = None
    try:
        out.follow(lambda o: o.distinct() >= 300, timeout_s=300, tick=_alive(first))
        core = first.engine_core()
        assert core is not None, f"no EngineCore process among {first.group_members()}"
        core.kill()
        # Crash loudly (non-zero exit), or recover and route everything: not half alive.
        out.follow(lambda o: not first.is_alive() or o.distinct() >= n, timeout_s=180)
        recovered = first.is_alive()
        if not recovered:
            code = first.wait()
            assert code not in (0, -signal.SIGKILL), f"exit code {code}:\n{first.tail()}"
    finally:
        first.kill()
    snapshot = committed_offsets(chaos_bootstrap, group, inbound, PARTITIONS)
    done = sources(out.read_to_end(PARTITIONS))
    missing = ungrounded({(inbound, p): o for p, o in snapshot.items()}, done)
    assert not missing, f"offsets committed for tickets never routed: {missing[:5]}"
    second = WorkerProcess(env, tmp_path / "second.log")
    try:
        wait_for_committed(chaos_bootstrap, group, inbound, ends, worker=second, timeout_s=300)
        second.signal(signal.SIGTERM)
        assert second.wait(timeout_s=120) == 0, second.tail()
    finally:
        second.kill()
    out.read_to_end(PARTITIONS)
    figures = account_at_least_once(positions, out.outputs())
    # A dead engine is fatal, not "unsure": no ticket went to triage for a missed deadline.
    timed_out = [
        r
        for r in out.records
        if r.topic == tax.topics.triage
        and RoutedTicket.model_validate_json(r.value).triage_reason
        is TriageReason.DEADLINE_EXCEEDED
    ]
    out.close()
    print(
        f"engine core killed: {'recovered' if recovered else f'worker exited {code}'}; "
        f"committed before restart {snapshot}; {figures.summary(kills=1)}"
    )
    assert figures.lost == 0, f"lost {figures.lost_examples}"
    assert figures.unexpected == 0
    assert timed_out == []


# ---------------------------------------------------------------------------- broker outage


@pytest.mark.timeout(600)
@pytest.mark.chaos
@pytest.mark.slow
def test_broker_frozen_for_20s_worker_retries_resumes_and_loses_nothing(
    tiny_expert_dir: Path, unique: str, tmp_path: Path
) -> None:
    broker = EmbeddedBroker(state_dir=tmp_path / "broker", port=free_port())
    broker.start()
    bootstrap, group, n = broker.bootstrap, f"chaos-outage-{unique}", 2_000
    tax = Taxonomy.load(unique_taxonomy(tax_path(tmp_path), f"outage.{unique}"))
    create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=PARTITIONS))
    positions = produce_tracked(bootstrap, tax.topics.inbound, _stream(n))
    ends = partition_ends(positions)
    out = OutputLog(bootstrap, output_topics(tax))
    worker = WorkerProcess(
        worker_env(bootstrap, tax_path(tmp_path), tiny_expert_dir, group), tmp_path / "w.log"
    )
    try:
        out.follow(lambda o: o.distinct() >= 300, timeout_s=300, tick=_alive(worker))
        pid = broker.running_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            outage_end = time.monotonic() + 20  # the fault's duration, not a wait for a state
            while time.monotonic() < outage_end:
                _alive(worker)()
                time.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        out.follow(lambda o: o.distinct() >= n, timeout_s=300, tick=_alive(worker))
        final = wait_for_committed(
            bootstrap, group, tax.topics.inbound, ends, worker=worker, timeout_s=120
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout_s=120) == 0, worker.tail()
        out.read_to_end(PARTITIONS)
        figures = account_at_least_once(positions, out.outputs())
    finally:
        worker.kill()
        out.close()
        broker.stop()
    retries = [e for e in worker.events() if e.get("event") == "retry_scheduled"]
    kafka_errors = [e for e in worker.events() if str(e.get("event", "")).startswith("kafka_")]
    print(
        f"broker frozen 20 s: {figures.summary(kills=0)}; worker logged {len(retries)} retries, "
        f"{len(kafka_errors)} Kafka client errors, and kept running (one process throughout)"
    )
    assert figures.lost == 0, f"lost {figures.lost_examples}"
    assert figures.unexpected == 0
    assert final == ends


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
    """`python -m loadgen.chaos` on a stand-in router's outputs: one lost, one duplicated."""
    import json

    from confluent_kafka import Producer

    from loadgen.chaos import main

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
