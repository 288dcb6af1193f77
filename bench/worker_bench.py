"""`ticket-router bench worker`: the bare engine against the worker, on the same tickets and model.

Prints figures, asserts nothing. In one process it measures
  1. the bare engine: `StreamingExpert` (AsyncLLM) answering N tickets submitted at once,
  2. the worker: the same N tickets produced to Kafka, routed by a worker (the same engine
     class, the same model), until every output is acknowledged; timed from the first send
     after the worker owns its partitions, so the group join is not measured,
  3. end-to-end latency at fixed open-loop arrival rates: produce time of the inbound record
     to the moment a downstream consumer of the output topics receives the routed ticket.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import psutil
import structlog
import typer
from rich.console import Console
from rich.table import Table

from expert import quiet
from schemas.taxonomy import Taxonomy
from schemas.ticket import Ticket
from worker.broker import EmbeddedBroker, TopicLayout, create_layout, free_port
from worker.config import Settings
from worker.kafka_io import TP, ConsumerThreadOps, Publisher, Source

log = structlog.get_logger(__name__)
console = Console()


@dataclass
class BenchResult:
    tickets: int
    engine_tickets_per_s: float
    worker_tickets_per_s: float
    ratio: float
    latency_s: dict[str, dict[str, float]] = field(default_factory=dict)
    # Phase ("bare engine", "worker") -> process group -> CPU milliseconds per ticket.
    cpu_ms_per_ticket: dict[str, dict[str, float]] = field(default_factory=dict)
    exactly_once: bool = False
    # The engine's number format, threads and the processor kind: figures compare only
    # with figures from the same kind of processor.
    hardware: dict[str, object] = field(default_factory=dict)
    # Seconds from creating the bare engine to its first answer (imports included), and
    # where its model ran (`EngineConfig.model_in_engine_core`).
    engine_start_s: float = 0.0
    model_in_engine_core: bool = False


class CpuMeter:
    """CPU seconds used by this process and its children (the vLLM engine processes, the
    embedded broker) between `start()` and `stop()`, grouped by what each process is.

    On a machine whose cores are all busy, the throughput ratio is a CPU budget: this says
    where each ticket's CPU went.
    """

    def __init__(self) -> None:
        self._start: dict[int, tuple[str, float]] = {}
        self.used_s: dict[str, float] = {}

    @staticmethod
    def _group(proc: psutil.Process) -> str:
        name = proc.name().lower()
        if "tansu" in name:
            return "broker"
        if "engine" in name or "worker" in name:  # VLLM::EngineCore, VLLM::Worker
            return "engine processes"
        return "router process" if proc.pid == os.getpid() else "other children"

    def _sample(self) -> dict[int, tuple[str, float]]:
        me = psutil.Process()
        out = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                out[proc.pid] = (self._group(proc), t.user + t.system)
            except psutil.Error:  # a process that ended meanwhile is not counted
                continue
        return out

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> None:
        used: dict[str, float] = {}
        for pid, (group, end) in self._sample().items():
            begin = self._start.get(pid, (group, 0.0))[1]
            used[group] = used.get(group, 0.0) + max(0.0, end - begin)
        self.used_s = used

    def per_ticket_ms(self, tickets: int) -> dict[str, float]:
        out = {g: 1000 * s / max(1, tickets) for g, s in sorted(self.used_s.items())}
        out["total"] = sum(out.values())
        return out


class _NoRebalance:
    def on_assigned(self, tps: list[TP]) -> None: ...

    def on_revoked(self, tps: list[TP], ops: ConsumerThreadOps) -> dict[TP, int]:
        return {}

    def on_lost(self, tps: list[TP], ops: ConsumerThreadOps) -> None: ...


def _payloads(n: int, *, seed: int) -> list[bytes]:
    from loadgen.corpus import generate

    out = []
    for lt in generate(n, seed=seed):
        t = lt.ticket.model_copy(
            update={"id": f"{lt.ticket.id}-{uuid.uuid4().hex[:6]}", "created_at": datetime.now(UTC)}
        )
        out.append(t.model_dump_json().encode())
    return out


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"n": len(values), "p50": q[49], "p95": q[94], "p99": q[98], "max": max(values)}


async def _bare_engine(
    settings: Settings, texts: list[str], meter: CpuMeter, hardware: dict[str, object]
) -> tuple[float, float]:
    """Tickets/s of the bare engine, and the seconds its start took."""
    started = time.perf_counter()
    from expert.engine import StreamingExpert

    engine = StreamingExpert(settings.engine)
    await engine.start()
    start_s = time.perf_counter() - started
    hardware.update(engine.placement.as_dict())
    try:
        sem = asyncio.Semaphore(settings.max_in_flight)

        async def one(text: str) -> None:
            async with sem:
                await engine.classify(text, request_id=uuid.uuid4().hex)

        await asyncio.gather(*(one(t) for t in texts[:64]))  # warm-up, not timed
        meter.start()
        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in texts))
        elapsed = time.perf_counter() - start
        meter.stop()
        return len(texts) / elapsed, start_s
    finally:
        await engine.shutdown()


async def _read_outputs(
    reader: Source,
    arrivals: dict[str, float],
    want: int,
    timeout_s: float,
    stages: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """Ticket id -> seconds from its produce time to a downstream consumer receiving it.

    With `stages`, also collects where that time went, from the routed ticket's own
    timestamps: waiting in Kafka to be read, in the worker before and during inference,
    and from publishing to being read downstream.
    """
    latencies: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(latencies) < want and time.monotonic() < deadline:
        for rec in await reader.poll(max_records=1000, timeout_s=0.05):
            now = time.time()
            key = (rec.key or b"").decode()
            if key in arrivals and key not in latencies:
                latencies[key] = now - arrivals[key]
                if stages is not None:
                    _add_stages(stages, rec.value or b"", arrivals[key], now)
    return latencies


STAGES = ("to worker", "inference", "to reader")


def _add_stages(stages: dict[str, list[float]], value: bytes, sent: float, read: float) -> None:
    try:
        doc = json.loads(value)
        received = datetime.fromisoformat(doc["received_at"]).timestamp()
        decided = datetime.fromisoformat(doc["decided_at"]).timestamp()
        published = datetime.fromisoformat(doc["published_at"]).timestamp()
    except (ValueError, KeyError, TypeError):  # not a routed ticket (a dead letter)
        return
    for name, seconds in zip(
        STAGES, (received - sent, decided - received, read - published), strict=True
    ):
        stages.setdefault(name, []).append(seconds)


async def _worker_runs(
    settings: Settings,
    tax: Taxonomy,
    payloads: list[bytes],
    rates: list[float],
    seconds_per_rate: float,
    meter: CpuMeter,
) -> tuple[float, dict[str, dict[str, float]]]:
    from worker.runner import started_worker

    outputs = [q.topic for q in tax.queues] + [tax.topics.triage, tax.topics.dead_letter]
    async with started_worker(settings) as worker:
        run = asyncio.create_task(worker.pipeline.run(worker.source))
        # The group join is not part of the measurement: wait for the assignment first.
        while not worker.pipeline.is_ready:  # noqa: ASYNC110 - state set by the consumer thread
            await asyncio.sleep(0.05)
        publisher = Publisher(
            conf={
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "linger.ms": "1",
                "enable.idempotence": "true",
            }
        )
        await publisher.start()
        reader = Source(
            conf={
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"bench-reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": "false",
                "session.timeout.ms": "6000",
                "fetch.wait.max.ms": "50",
            },
            topics=outputs,
            listener=_NoRebalance(),
        )
        await reader.start()
        while not await reader.assignment():
            await reader.poll(max_records=0, timeout_s=0.1)
        try:
            # Throughput: everything at once.
            ids = [json.loads(p)["id"] for p in payloads]
            arrivals = {i: time.time() for i in ids}
            done_before = worker.pipeline.processed
            meter.start()
            start = time.perf_counter()
            await asyncio.gather(
                *(
                    publisher.publish(topic=tax.topics.inbound, key=i.encode(), value=p, headers=())
                    for i, p in zip(ids, payloads, strict=True)
                )
            )
            while worker.pipeline.processed - done_before < len(payloads):
                if run.done():
                    run.result()
                await asyncio.sleep(0.002)
            throughput = len(payloads) / (time.perf_counter() - start)
            meter.stop()
            await _read_outputs(reader, arrivals, len(payloads), timeout_s=30)  # drain the reader
            # Latency at fixed open-loop arrival rates.
            table: dict[str, dict[str, float]] = {}
            for rate in rates:
                n = max(1, int(rate * seconds_per_rate))
                batch = _payloads(n, seed=int(rate))
                arrivals = {}
                stages: dict[str, list[float]] = {}
                reading = asyncio.create_task(
                    _read_outputs(
                        reader, arrivals, n, timeout_s=seconds_per_rate + 60, stages=stages
                    )
                )
                t0 = time.perf_counter()
                sends = []
                for k, p in enumerate(batch):
                    delay = t0 + k / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tid = json.loads(p)["id"]
                    arrivals[tid] = time.time()
                    sends.append(
                        asyncio.create_task(
                            publisher.publish(
                                topic=tax.topics.inbound, key=tid.encode(), value=p, headers=()
                            )
                        )
                    )
                await asyncio.gather(*sends)
                latencies = await reading
                table[f"{rate:g}/s"] = _percentiles(list(latencies.values()))
                table[f"{rate:g}/s"]["achieved_rate"] = n / max(1e-9, time.perf_counter() - t0)
                for name in STAGES:
                    values = stages.get(name, [])
                    table[f"{rate:g}/s"][f"p50 {name}"] = (
                        statistics.median(values) if values else float("nan")
                    )
        finally:
            await reader.close()
            await publisher.close()
            worker.stop()
            await run
    return throughput, table


async def _bench(
    settings: Settings, tax: Taxonomy, n: int, rates: list[float], seconds_per_rate: float
) -> BenchResult:
    payloads = _payloads(n, seed=7)
    texts = [Ticket.model_validate_json(p).text() for p in payloads]
    engine_cpu, worker_cpu = CpuMeter(), CpuMeter()
    hardware: dict[str, object] = {}
    engine_tps, engine_start_s = await _bare_engine(settings, texts, engine_cpu, hardware)
    cpu = hardware.get("cpu")
    console.print(
        f"engine: dtype {hardware.get('dtype')}, {hardware.get('threads')} model thread(s), "
        f"cpu {cpu.get('kind') if isinstance(cpu, dict) else '?'}"
    )
    console.print(f"bare engine: {engine_tps:.0f} tickets/s on {n} tickets")
    worker_tps, table = await _worker_runs(
        settings, tax, payloads, rates, seconds_per_rate, worker_cpu
    )
    console.print(f"worker (Kafka in -> Kafka out): {worker_tps:.0f} tickets/s")
    return BenchResult(
        tickets=n,
        engine_tickets_per_s=engine_tps,
        worker_tickets_per_s=worker_tps,
        ratio=worker_tps / engine_tps,
        latency_s=table,
        exactly_once=settings.kafka.exactly_once,
        cpu_ms_per_ticket={
            "bare engine": engine_cpu.per_ticket_ms(n),
            "worker": worker_cpu.per_ticket_ms(n),
        },
        hardware=hardware,
        engine_start_s=engine_start_s,
        model_in_engine_core=settings.engine.model_in_engine_core,
    )


def run_bench(
    *,
    model: Path | None,
    tickets: int,
    rates: list[float],
    seconds_per_rate: float,
    out_file: Path | None,
    bootstrap: str | None = None,
    exactly_once: bool = False,
    dtype: str = "auto",
    model_in_engine_core: bool = False,
) -> int:
    """Run the benchmark and print its figures; returns the process exit code."""
    from worker.logs import configure_logging

    configure_logging(level="WARNING", fmt="console")
    if model is None:
        from loadgen.default_expert import ensure_default_expert

        model = ensure_default_expert()
    model_dir = model
    unique = uuid.uuid4().hex[:8]
    tax = Taxonomy.load().with_topic_suffix(f".bench-{unique}")
    tax_path = Path(".state") / f"bench-taxonomy-{unique}.yaml"
    tax_path.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    tax_path.write_text(yaml.safe_dump(tax.model_dump(mode="json")))
    broker = None
    if bootstrap is None:
        broker = EmbeddedBroker(
            state_dir=Path(".state") / f"bench-broker-{unique}", port=free_port()
        )
        broker.start()
        bootstrap = broker.bootstrap
    try:
        create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=6))
        settings = Settings(
            kafka={
                "bootstrap_servers": bootstrap,
                "group_id": f"bench-{unique}",
                "exactly_once": exactly_once,
                "transactional_id": f"bench-{unique}",
            },
            engine={
                "model_dir": model_dir,
                "dtype": dtype,
                "model_in_engine_core": model_in_engine_core,
            },
            taxonomy_path=tax_path,
            metrics={"enabled": False},
            routing={"deadline_s": 120},
        )
        result = asyncio.run(_bench(settings, tax, tickets, rates, seconds_per_rate))
    finally:
        if broker is not None:
            broker.stop()
        tax_path.unlink(missing_ok=True)
    _print(result)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(asdict(result), indent=2))
    return 0


def _print(result: BenchResult) -> None:
    mode = "exactly-once" if result.exactly_once else "at-least-once"
    t = Table(title=f"worker ({mode}) vs bare engine, {result.tickets} tickets")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("bare engine, tickets/s", f"{result.engine_tickets_per_s:.1f}")
    t.add_row("worker end to end, tickets/s", f"{result.worker_tickets_per_s:.1f}")
    t.add_row("ratio worker / engine", f"{result.ratio:.2f}")
    cpu = result.hardware.get("cpu")
    t.add_row(
        "engine dtype / model threads",
        f"{result.hardware.get('dtype')} / {result.hardware.get('threads')}",
    )
    t.add_row("processor", str(cpu.get("kind") if isinstance(cpu, dict) else "?"))
    where = "in the engine core" if result.model_in_engine_core else "a process of its own"
    t.add_row("the engine's model runs", where)
    t.add_row("bare engine start (imports to first answer), s", f"{result.engine_start_s:.1f}")
    console.print(t)
    ct = Table(title="CPU milliseconds per ticket, by process (throughput runs)")
    ct.add_column("process")
    phases = list(result.cpu_ms_per_ticket)
    for phase in phases:
        ct.add_column(phase, justify="right")
    groups = sorted({g for v in result.cpu_ms_per_ticket.values() for g in v} - {"total"})
    for g in [*groups, "total"]:
        ct.add_row(g, *(f"{result.cpu_ms_per_ticket[p].get(g, 0.0):.2f}" for p in phases))
    ct.caption = (
        f"{os.cpu_count()} cores; the router process also runs the bench's producer and reader"
    )
    console.print(ct)
    lt = Table(title="end-to-end latency at fixed arrival rates (seconds)")
    stage_cols = [f"p50 {name}" for name in STAGES]
    for col in ("rate", "achieved/s", "n", "p50", "p95", "p99", "max", *stage_cols):
        lt.add_column(col, justify="right")
    for rate, f in result.latency_s.items():
        lt.add_row(
            rate,
            f"{f.get('achieved_rate', 0):.1f}",
            str(int(f.get("n", 0))),
            *(f"{f[k]:.3f}" if k in f else "-" for k in ("p50", "p95", "p99", "max", *stage_cols)),
        )
    lt.caption = (
        "p50 of each stage: produced -> read by the worker; read -> engine answer; "
        "published -> read downstream"
    )
    console.print(lt)


def bench_worker(
    model: Path | None = None,
    tickets: int = 2000,
    rates: str = "10,50,200",
    seconds_per_rate: float = 20.0,
    bootstrap: str | None = None,
    out: Path | None = None,
    exactly_once: bool = False,
    dtype: str = "auto",
    model_in_engine_core: bool = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=quiet.VERBOSE_HELP)] = False,
) -> None:
    """Bare-engine vs worker throughput, and end-to-end latency at fixed arrival rates.

    --dtype forces the engine's number format (auto, bfloat16, float32) to compare both;
    --model-in-engine-core runs the model inside vLLM's engine-core process (one process
    fewer) to compare with the default layout. vLLM's own output goes to a log file under
    .state/logs/ (the terminal with --verbose).
    """
    if dtype not in ("auto", "bfloat16", "float32"):
        raise typer.BadParameter("--dtype must be auto, bfloat16 or float32")
    rate_list = [float(r) for r in rates.split(",") if r.strip()]
    with quiet.library_output("bench-worker", verbose=verbose):
        code = run_bench(
            model=model,
            tickets=tickets,
            rates=rate_list,
            seconds_per_rate=seconds_per_rate,
            out_file=out,
            exactly_once=exactly_once,
            bootstrap=bootstrap,
            dtype=dtype,
            model_in_engine_core=model_in_engine_core,
        )
    raise typer.Exit(code)
