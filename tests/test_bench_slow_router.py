"""Lost means lost: a deliberately slow router on the real broker, and the run's accounting.

A real `Pipeline` with the real Kafka clients routes replayed tickets through a slow engine
(tests/fakes.py `FakeEngine` with a delay: a few tickets per second). The collector
(`bench.steps.collect_step`, as the demo uses it) must keep reading while the router makes
progress, and at the end tell apart the routed tickets, the tickets still waiting in the
inbound topic ("not routed when the run ended") and the tickets the router's group
committed past without any output (LOST).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from bench.outputs import StopReason, WaitPolicy
from bench.steps import collect_step
from loadgen.corpus import generate
from loadgen.replay import read_manifest
from loadgen.steps import replay_step
from loadgen.traffic import Schedule
from schemas.taxonomy import Taxonomy
from tests.fakes import FakeEngine
from worker.broker import TopicLayout, create_layout
from worker.config import Settings
from worker.kafka_io import Publisher, Source
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.runner import consumer_config, pipeline_config, producer_config

PARTITIONS = 2
DELAY_S = 0.25  # per ticket, at most two in flight: a few tickets per second
CORPUS = generate(40, seed=5)


@dataclass
class SlowRouter:
    pipeline: Pipeline
    source: Source
    task: asyncio.Task[None]
    group: str
    taxonomy: Taxonomy
    stopped: bool = False

    async def stop(self) -> None:
        """Drain (in-flight tickets finish, offsets are committed), then leave the group."""
        if self.stopped:
            return
        self.stopped = True
        self.pipeline.stop()
        try:
            await self.task
        finally:
            await self.source.close()


@pytest.fixture
async def slow_router(
    bootstrap: str, taxonomy_file: Path, unique: str, tmp_path: Path
) -> AsyncIterator[SlowRouter]:
    tax = Taxonomy.load(taxonomy_file)
    create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=PARTITIONS))
    group = f"slow-router-{unique}"
    settings = Settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": group, "commit_interval_s": 0.2},
        engine={"model_dir": tmp_path},  # never loaded: the engine is the fake
        taxonomy_path=taxonomy_file,
        metrics={"enabled": False},
        max_in_flight=2,
        shutdown_grace_s=10,
    )
    engine = FakeEngine(tax.labels, lambda _text: (tax.labels[0], 0.95), delay_s=DELAY_S)
    publisher = Publisher(conf=producer_config(settings))
    await publisher.start()
    pipeline = Pipeline(
        config=pipeline_config(settings),
        taxonomy=tax,
        engine=engine,
        publisher=publisher,
        metrics=Metrics(CollectorRegistry()),
    )
    source = Source(conf=consumer_config(settings), topics=[tax.topics.inbound], listener=pipeline)
    await source.start()
    task = asyncio.create_task(pipeline.run(source))
    deadline = time.monotonic() + 60
    while not pipeline.is_ready:
        assert time.monotonic() < deadline, "the router never got its partitions"
        assert not task.done(), task
        await asyncio.sleep(0.1)
    router = SlowRouter(pipeline, source, task, group, tax)
    try:
        yield router
    finally:
        await router.stop()
        await publisher.close()


def _replay(bootstrap: str, tax: Taxonomy, out_dir: Path, n: int, *, run: int) -> list[str]:
    schedule = Schedule(
        start=CORPUS[0].ticket.created_at,
        duration_s=float(n),
        times_s=np.arange(n, dtype=np.float64),
        storm_index=np.full(n, -1, dtype=np.int64),
        storms=(),
    )
    result = replay_step(
        bootstrap=bootstrap,
        topic=tax.topics.inbound,
        out_dir=out_dir,
        corpus=list(CORPUS),
        schedule=schedule,
        fmt="canonical",
        speedup=None,  # all at once: the slow router builds a backlog
        seed=run,
        run=run,
        progress=False,
    )
    assert result.delivered == n
    return [r.ticket_id for r in read_manifest(out_dir / "manifest.jsonl")]


def _collect(bootstrap: str, router: SlowRouter, out_dir: Path, **kw: Any) -> dict[str, Any]:
    return collect_step(
        bootstrap=bootstrap,
        out_dir=out_dir,
        taxonomy=router.taxonomy,
        router_group=router.group,
        bin_s=1.0,
        **kw,
    )


async def test_collector_waits_for_a_slow_router_that_makes_progress(
    bootstrap: str, slow_router: SlowRouter, tmp_path: Path
) -> None:
    n = 30  # several seconds of routing: a few stall windows
    stall_s = 2.0
    _replay(bootstrap, slow_router.taxonomy, tmp_path, n, run=11)
    data = await asyncio.to_thread(
        _collect, bootstrap, slow_router, tmp_path, policy=WaitPolicy(stall_s=stall_s)
    )
    assert data["stop_reason"] == StopReason.COMPLETE
    assert (data["sent"], data["routed"], data["not_routed"], data["lost"]) == (n, n, 0, 0)
    assert data["duplicated"] == 0
    outcomes = [json.loads(line) for line in (tmp_path / "outcomes.jsonl").open()]
    assert {o["kind"] for o in outcomes} == {"routed"}
    # The router took much longer than one stall window to answer them all.
    span_s = max(o["done_at"] for o in outcomes) - min(o["sent_at"] for o in outcomes)
    assert span_s > 2 * stall_s


async def test_interrupted_run_counts_waiting_tickets_as_not_routed_and_only_real_losses_as_lost(
    bootstrap: str, slow_router: SlowRouter, tmp_path: Path
) -> None:
    n = 40
    _replay(bootstrap, slow_router.taxonomy, tmp_path, n, run=12)
    manifest = read_manifest(tmp_path / "manifest.jsonl")
    loop = asyncio.get_running_loop()
    faked_loss: list[str] = []

    def interrupt_after_ten() -> StopReason | None:
        # The user's Ctrl-C while the router is still working through the backlog.
        return StopReason.INTERRUPTED if slow_router.pipeline.processed >= 10 else None

    def stop_router_then_skip_two() -> None:
        # The demo stops its worker here (it drains and commits). Then play a router that
        # commits past two tickets it never wrote: the only tickets that may count as LOST.
        asyncio.run_coroutine_threadsafe(slow_router.stop(), loop).result(timeout=60)
        faked_loss.extend(_commit_past_two(bootstrap, slow_router, manifest))

    data = await asyncio.to_thread(
        _collect,
        bootstrap,
        slow_router,
        tmp_path,
        policy=WaitPolicy(stall_s=30.0, settle_s=3.0, check_every_s=0.5),
        should_stop=interrupt_after_ten,
        before_snapshot=stop_router_then_skip_two,
    )
    assert data["stop_reason"] == StopReason.INTERRUPTED
    routed = data["routed"]
    assert 10 <= routed < n - 2, "the slow router should still have had a backlog"
    assert data["lost"] == 2 and sorted(data["lost_ids"]) == sorted(faked_loss)
    assert data["not_routed"] == n - routed - 2
    assert data["duplicated"] == 0
    outcomes = {o["ticket_id"]: o for o in map(json.loads, (tmp_path / "outcomes.jsonl").open())}
    committed = {int(p): o for p, o in data["router_committed"].items()}
    for row in manifest:
        o = outcomes[row.ticket_id]
        past = row.partition in committed and row.offset < committed[row.partition]
        if o["kind"] == "routed":
            assert o["latency_s"] > 0
        elif past:  # committed past without output
            assert o["kind"] == "lost"
        else:
            assert o["kind"] == "not_routed"
    # The collector keeps the old meaning only with evidence: without the router's group,
    # nothing is lost.
    blind = await asyncio.to_thread(
        _collect_blind, bootstrap, slow_router, tmp_path / "blind", tmp_path
    )
    assert blind["lost"] == 0 and blind["not_routed"] == n - routed


def _commit_past_two(bootstrap: str, router: SlowRouter, manifest: list[Any]) -> list[str]:
    topic = router.taxonomy.topics.inbound
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": router.group})
    try:
        parts = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        committed = {p.partition: max(p.offset, 0) for p in parts}
        for p, at in committed.items():
            waiting = sorted(r.offset for r in manifest if r.partition == p and r.offset >= at)
            if len(waiting) >= 2 and waiting[:2] == [at, at + 1]:
                c.commit(offsets=[TopicPartition(topic, p, at + 2)], asynchronous=False)
                return [
                    r.ticket_id for r in manifest if r.partition == p and r.offset in waiting[:2]
                ]
    finally:
        c.close()
    raise AssertionError("no partition had two tickets left to skip")


def _collect_blind(
    bootstrap: str, router: SlowRouter, out_dir: Path, run_dir: Path
) -> dict[str, Any]:
    out_dir.mkdir()
    for name in ("manifest.jsonl", "replay.json"):
        (out_dir / name).write_bytes((run_dir / name).read_bytes())
    return collect_step(
        bootstrap=bootstrap,
        out_dir=out_dir,
        taxonomy=router.taxonomy,
        router_group=None,
        policy=WaitPolicy(stall_s=1.0, settle_s=1.0),
    )


async def test_probe_finds_the_slow_routers_capacity_between_its_steps(
    bootstrap: str, slow_router: SlowRouter
) -> None:
    from bench.capacity_ramp import RampPlan, Slo
    from bench.probe import ProbeTarget, run_probe

    tax = slow_router.taxonomy
    kinds = {q.topic: "routed" for q in tax.queues}
    kinds |= {tax.topics.triage: "triage", tax.topics.dead_letter: "dead_letter"}
    plan = RampPlan(
        start_rate_per_s=2.0, growth_factor=4.0, step_s=2.0, tail_s=1.0, max_steps=2, bisect=False
    )
    result = await asyncio.to_thread(
        run_probe,
        ProbeTarget(bootstrap=bootstrap, inbound_topic=tax.topics.inbound, output_kinds=kinds),
        list(CORPUS),
        plan=plan,
        slo=Slo(p99_s=2.0),
        warmup_tickets=2,
    )
    first, second = result.steps
    # 2/s is under the router's few tickets per second; 8/s is over it.
    assert first.passed and first.sent == 4 and first.delivered == 4
    assert not second.passed and second.delivered < second.sent == 16
    assert result.summary.max_sustainable_rate_per_s == 2.0
    assert result.undrained == 0 and not result.interrupted
    assert len(result.ticket_ids) == 2 + 4 + 16 == len(set(result.ticket_ids))
