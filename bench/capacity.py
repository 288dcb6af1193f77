"""Capacity mode: ramp an open-loop arrival rate until end-to-end latency or lag breaks.

Owns one in-process measurement run (`run_capacity`): a worker started with
`started_worker`, an embedded broker unless one is given, an open-loop producer and a
downstream reader, like `bench.worker_bench`; it writes capacity.json and capacity.png.
Which rate comes next and whether a step passed is `bench.capacity_ramp`'s (pure); the
table and the plot are `bench.capacity_report`'s. It must not tune the worker: the worker
runs with its normal settings, only the routing deadline is raised so that overload shows
as latency, not as triaged tickets. Heavy imports (Kafka clients, vLLM) stay inside the
I/O functions.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.capacity_ramp import (
    Phase,
    RampPlan,
    Slo,
    StepFigures,
    StepObservation,
    judge,
    next_rate,
    step_figures,
    to_json,
)
from bench.capacity_report import plot

if TYPE_CHECKING:
    from schemas.taxonomy import Taxonomy
    from worker.config import Settings
    from worker.kafka_io import Publisher, Source

DEFAULT_MODEL_DIR = Path(".state/models/default-expert")
EXIT_OK = 0
EXIT_MODEL_MISSING = 4


@dataclass
class CapacityRun:
    """Where and what to run.

    Attributes:
        model_dir: the expert to serve (None: the default expert).
        bootstrap: an existing Kafka (None: start an embedded broker on a free port).
        out_dir: where capacity.json and capacity.png go.
        partitions: partitions of each topic this run creates.
        seed: corpus seed of the tickets sent.
        warmup_tickets: sent and awaited before the ramp, not measured.
        vllm_cache_dir: vLLM's compile cache and sockets.
        extra_meta: copied into capacity.json as is.
    """

    model_dir: Path | None
    bootstrap: str | None
    out_dir: Path
    partitions: int = 6
    seed: int = 0
    warmup_tickets: int = 30
    vllm_cache_dir: Path = Path(".state/vllm-cache")
    extra_meta: dict[str, Any] = field(default_factory=dict)


class _NoRebalance:
    def on_assigned(self, tps: list[tuple[str, int]]) -> None: ...

    def on_revoked(self, tps: list[tuple[str, int]], ops: object) -> dict[tuple[str, int], int]:
        return {}

    def on_lost(self, tps: list[tuple[str, int]], ops: object) -> None: ...


class _Receiver:
    """Reads the output topics in the background: ticket id -> (monotonic receipt, kind)."""

    def __init__(self, reader: Source, kinds: dict[str, str]) -> None:
        self.reader = reader
        self.kinds = kinds
        self.received: dict[str, tuple[float, str]] = {}

    async def run(self) -> None:
        while True:
            records = await self.reader.poll(max_records=2000, timeout_s=0.05)
            now = time.monotonic()
            for rec in records:
                key = (rec.key or b"").decode(errors="replace")
                self.received.setdefault(key, (now, self.kinds.get(rec.topic, "routed")))


class _Sender:
    """Open-loop producer of fresh tickets drawn from a corpus pool."""

    def __init__(self, publisher: Publisher, topic: str, pool: list[dict[str, Any]], run: str):
        self.publisher = publisher
        self.topic = topic
        self.pool = pool
        self.run = run

    def payloads(self, step: int, n: int) -> list[tuple[str, bytes]]:
        from datetime import UTC, datetime

        now = datetime.now(UTC).isoformat()
        out = []
        for k in range(n):
            tid = f"cap-{self.run}-{step:02d}-{k:06d}"
            body = {**self.pool[(step * 7919 + k) % len(self.pool)], "id": tid, "created_at": now}
            out.append((tid, json.dumps(body).encode()))
        return out

    async def send_paced(
        self, items: list[tuple[str, bytes]], rate_per_s: float, t0: float
    ) -> tuple[list[tuple[str, float]], int]:
        """Send `items` at `rate_per_s` from monotonic `t0` on, not waiting for acks between
        sends (open loop); return (ticket id, send time since t0) of the acknowledged ones
        and the number of failed sends."""
        tasks = []
        sent_at = []
        for k, (tid, value) in enumerate(items):
            delay = t0 + k / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at.append((tid, time.monotonic() - t0))
            tasks.append(
                asyncio.create_task(
                    self.publisher.publish(
                        topic=self.topic, key=tid.encode(), value=value, headers=()
                    )
                )
            )
        results = await asyncio.gather(*tasks, return_exceptions=True)
        acked = [s for s, r in zip(sent_at, results, strict=True) if not isinstance(r, Exception)]
        return acked, len(items) - len(acked)


async def _measure_step(
    *,
    sender: _Sender,
    receiver: _Receiver,
    plan: RampPlan,
    index: int,
    rate_per_s: float,
    phase: Phase,
    check_worker: Callable[[], None],
) -> StepObservation:
    n = max(1, round(rate_per_s * plan.step_s))
    items = sender.payloads(index, n)
    t0 = time.monotonic() + 0.05
    sending = asyncio.create_task(sender.send_paced(items, rate_per_s, t0))
    ids = [tid for tid, _ in items]
    while not sending.done():
        await asyncio.wait({sending}, timeout=0.1)
        check_worker()
        if time.monotonic() - t0 > 10 * plan.step_s + 60:
            sending.cancel()
            raise RuntimeError("the producer could not send one step in 10x its length")
    acked, failures = sending.result()
    window_end_s = max([plan.step_s, *(s for _, s in acked)]) + plan.tail_s
    while time.monotonic() - t0 < window_end_s and not all(i in receiver.received for i in ids):
        check_worker()
        await asyncio.sleep(0.05)
    # A step's window ends `tail_s` after its last send; receipts later than that are judged
    # by `step_figures`, which drops them.
    received_at: list[float | None] = []
    triaged = dead = 0
    for tid, _ in acked:
        got = receiver.received.get(tid)
        received_at.append(None if got is None else got[0] - t0)
        if got is not None:
            triaged += got[1] == "triage"
            dead += got[1] == "dead_letter"
    return StepObservation(
        phase=phase,
        offered_rate_per_s=rate_per_s,
        step_s=plan.step_s,
        tail_s=plan.tail_s,
        sent_at_s=tuple(s for _, s in acked),
        received_at_s=tuple(received_at),
        send_failures=failures,
        triaged=triaged,
        dead_lettered=dead,
    )


async def _ramp(
    settings: Settings,
    tax: Taxonomy,
    plan: RampPlan,
    slo: Slo,
    *,
    run: CapacityRun,
    run_id: str,
    on_step: Callable[[StepFigures], None],
) -> list[StepFigures]:
    from loadgen.corpus import generate
    from worker.kafka_io import Publisher, Source
    from worker.runner import started_worker

    pool = [lt.ticket.model_dump(mode="json") for lt in generate(500, seed=run.seed)]
    kinds = {q.topic: "routed" for q in tax.queues}
    kinds |= {tax.topics.triage: "triage", tax.topics.dead_letter: "dead_letter"}
    steps: list[StepFigures] = []
    async with started_worker(settings) as worker:
        pipeline = asyncio.create_task(worker.pipeline.run(worker.source))

        def check_worker() -> None:
            if pipeline.done():
                pipeline.result()
                raise RuntimeError("the worker stopped during the ramp")

        publisher = Publisher(
            conf={"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": "1"}
        )
        reader = Source(
            conf={
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"capacity-reader-{run_id}",
                # The topics are this run's own: reading from the start misses nothing.
                "auto.offset.reset": "earliest",
                "enable.auto.commit": "false",
                "session.timeout.ms": "6000",
                "fetch.wait.max.ms": "5",
            },
            topics=list(kinds),
            listener=_NoRebalance(),
        )
        receiving: asyncio.Task[None] | None = None
        try:
            await publisher.start()
            await reader.start()
            while not worker.pipeline.is_ready or not await reader.assignment():
                check_worker()
                await reader.poll(max_records=0, timeout_s=0.1)
            receiver = _Receiver(reader, kinds)
            receiving = asyncio.create_task(receiver.run(), name="capacity-receiver")
            sender = _Sender(publisher, tax.topics.inbound, pool, run_id)
            await _warm_up(sender, receiver, run.warmup_tickets, check_worker)
            while (nxt := next_rate(plan, steps)) is not None:
                rate, phase = nxt
                obs = await _measure_step(
                    sender=sender,
                    receiver=receiver,
                    plan=plan,
                    index=len(steps) + 1,
                    rate_per_s=rate,
                    phase=phase,
                    check_worker=check_worker,
                )
                steps.append(judge(step_figures(obs), slo))
                on_step(steps[-1])
                if receiving.done():
                    receiving.result()
        finally:
            if receiving is not None:
                receiving.cancel()
                await asyncio.gather(receiving, return_exceptions=True)
            await reader.close()
            await publisher.close()
            worker.stop()
            await pipeline
    return steps


async def _warm_up(
    sender: _Sender, receiver: _Receiver, n: int, check_worker: Callable[[], None]
) -> None:
    """Send `n` tickets at 10/s and wait for their outputs: the engine's first batches are
    slow, and the reader must own its partitions before anything is measured."""
    if n <= 0:
        return
    items = sender.payloads(0, n)
    await sender.send_paced(items, 10.0, time.monotonic())
    deadline = time.monotonic() + 300
    while not all(tid in receiver.received for tid, _ in items):
        check_worker()
        if time.monotonic() > deadline:
            raise RuntimeError("warm-up tickets were not routed within 300 s")
        await asyncio.sleep(0.1)


def model_problem(model_dir: Path) -> str | None:
    """Why `model_dir` cannot be served for the packaged taxonomy, or None if it can."""
    from expert.serving import ExpertLoadError, check_labels, load_card
    from schemas.taxonomy import Taxonomy

    try:
        check_labels(load_card(model_dir), Taxonomy.load().labels)
    except ExpertLoadError as exc:
        return str(exc)
    return None


def _run_taxonomy(run_id: str) -> Taxonomy:
    from schemas.taxonomy import Taxonomy

    return Taxonomy.load().with_topic_suffix(f".capacity-{run_id}")


def run_capacity(
    run: CapacityRun,
    plan: RampPlan,
    slo: Slo,
    *,
    on_step: Callable[[StepFigures], None] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run the ramp and write capacity.json and capacity.png into `run.out_dir`.

    Returns:
        (exit code, the JSON document); exit code 4 and `{"error", "model_dir"}` when the
        expert is missing, answers other labels than the taxonomy's queues, or fails to load.
    """
    import os
    import tempfile
    import uuid
    from datetime import UTC, datetime

    import yaml

    from expert.serving import engine_placement
    from worker.broker import EmbeddedBroker, TopicLayout, create_layout, free_port
    from worker.config import (
        EngineSettings,
        KafkaSettings,
        MetricsSettings,
        RoutingSettings,
        Settings,
    )
    from worker.errors import EngineUnavailableError

    model_dir = run.model_dir or DEFAULT_MODEL_DIR
    problem = model_problem(model_dir)
    if problem is not None:
        return EXIT_MODEL_MISSING, {"error": problem, "model_dir": str(model_dir)}
    run_id = uuid.uuid4().hex[:8]
    tax = _run_taxonomy(run_id)
    started_at = datetime.now(UTC).isoformat()
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        tax_path = Path(tmp) / "taxonomy.yaml"
        tax_path.write_text(yaml.safe_dump(tax.model_dump(mode="json")))
        broker = None
        bootstrap = run.bootstrap
        if bootstrap is None:
            broker = EmbeddedBroker(state_dir=Path(tmp) / "broker", port=free_port())
            broker.start()
            bootstrap = broker.bootstrap
        try:
            create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=run.partitions))
            settings = Settings(
                kafka=KafkaSettings(bootstrap_servers=bootstrap, group_id=f"capacity-{run_id}"),
                engine=EngineSettings(model_dir=model_dir, cache_dir=run.vllm_cache_dir),
                taxonomy_path=tax_path,
                metrics=MetricsSettings(enabled=False),
                # Overload must show as latency: a short deadline would triage it instead.
                routing=RoutingSettings(deadline_s=300),
                shutdown_grace_s=5,
            )
            try:
                steps = asyncio.run(
                    _ramp(
                        settings,
                        tax,
                        plan,
                        slo,
                        run=run,
                        run_id=run_id,
                        on_step=on_step or (lambda _s: None),
                    )
                )
            except EngineUnavailableError as exc:
                return EXIT_MODEL_MISSING, {"error": str(exc), "model_dir": str(model_dir)}
        finally:
            if broker is not None:
                broker.stop()
    doc = to_json(
        plan=plan,
        slo=slo,
        steps=steps,
        meta={
            "started_at": started_at,
            "model_dir": str(model_dir),
            "broker": "embedded" if run.bootstrap is None else run.bootstrap,
            "inbound_topic": tax.topics.inbound,
            "partitions": run.partitions,
            "cpu_count": os.cpu_count(),
            # Number format, model threads and processor kind: compare figures only with
            # figures from the same kind of processor.
            "hardware": engine_placement(settings.engine, streaming=True).as_dict(),
            "note": "the load generator and reader share the worker's process and cores",
            **run.extra_meta,
        },
    )
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / "capacity.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(steps, slo=slo, path=run.out_dir / "capacity.png")
    return EXIT_OK, doc
