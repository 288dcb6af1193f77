"""`ticket-router bench feedback`: what the feedback consumer sustains, and its memory.

Owns the benchmark only (measurement, not generation of traffic for other commands): it
fills the routed and triage topics with N decisions built from the synthetic corpus, runs
the real consumer (`python -m ticket_router feedback`, its own process) until its decision
log holds them, samples that process's RSS, stops it, publishes M feedback events about
those tickets, restarts it and times how fast it joins them. Figures come from the
consumer's own /metrics. It starts the embedded broker unless `--bootstrap` is given.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from feedback.decision_log import DecisionLog
from loadgen.corpus import generate
from schemas.feedback import Feedback, FeedbackOutcome
from schemas.routing import Disposition, RoutedTicket, RoutingDecision, TriageReason
from schemas.taxonomy import Taxonomy
from worker.broker import EmbeddedBroker, TopicLayout, create_layout, free_port
from worker.kafka_io import Publisher

console = Console(stderr=True)
FEEDBACK_COMMAND = [sys.executable, "-m", "ticket_router", "feedback"]
_PLACEHOLDER = "@@TICKET-ID@@"
_POOL = 2000
_T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


@dataclass
class FeedbackBenchResult:
    """The benchmark's figures (also written as JSON with --out)."""

    decisions: int
    feedback: int
    partitions: int
    decisions_per_s: float = 0.0
    rss_after_decisions_mib: float = 0.0
    peak_rss_ingest_mib: float = 0.0
    rss_while_logging_mib: dict[str, float] = field(default_factory=dict)
    store_mib: float = 0.0
    feedback_per_s: float = 0.0
    rss_after_feedback_mib: float = 0.0
    lookup_us: float = 0.0
    verdicts: dict[str, float] = field(default_factory=dict)
    produce_s: float = 0.0
    hardware: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Plan:
    """The synthetic decisions: per ticket index, its decided and true queue."""

    templates: list[tuple[str, bytes]]  # (topic, routed-ticket JSON with a placeholder id)
    decided: list[str | None]
    truth: list[str]

    def ticket_id(self, index: int) -> str:
        return f"BENCH{index:08d}"

    def record(self, index: int) -> tuple[str, bytes, bytes]:
        topic, template = self.templates[index % len(self.templates)]
        ticket_id = self.ticket_id(index)
        return (
            topic,
            ticket_id.encode(),
            template.replace(_PLACEHOLDER.encode(), ticket_id.encode()),
        )


def _plan(tax: Taxonomy, *, seed: int) -> _Plan:
    """Routed tickets from the corpus: 90% right, 7% a wrong queue, 3% to triage."""
    rng = random.Random(seed)  # noqa: S311 - seeded benchmark data
    templates: list[tuple[str, bytes]] = []
    decided: list[str | None] = []
    truth: list[str] = []
    for item in generate(_POOL, seed=seed):
        roll = rng.random()
        queue = item.queue if roll < 0.90 else rng.choice(tax.labels)
        triage = roll >= 0.97
        probabilities = {label: 0.0 for label in tax.labels}
        probabilities[queue] = 1.0
        routed = RoutedTicket(
            ticket=item.ticket.model_copy(update={"id": _PLACEHOLDER}),
            decision=RoutingDecision(
                queue=queue,
                confidence=0.42 if triage else 0.93,
                probabilities=probabilities,
                model_id="bench-expert@v1",
                engine_latency_s=0.02,
            ),
            disposition=Disposition.TRIAGE if triage else Disposition.ROUTED,
            triage_reason=TriageReason.LOW_CONFIDENCE if triage else None,
            topic=tax.topics.triage if triage else tax.topic_for(queue),
            source_topic=tax.topics.inbound,
            source_partition=0,
            source_offset=0,
            received_at=_T0,
            decided_at=_T0,
            published_at=_T0,
        )
        templates.append((routed.topic, routed.model_dump_json().encode()))
        decided.append(queue)
        truth.append(item.queue)
    return _Plan(templates, decided, truth)


async def _produce(
    bootstrap: str, records: Callable[[int], tuple[str, bytes, bytes]], n: int, label: str
) -> float:
    publisher = Publisher(
        conf={
            "bootstrap.servers": bootstrap,
            "linger.ms": "20",
            "compression.type": "lz4",
            "enable.idempotence": "true",
            "acks": "all",
            "queue.buffering.max.messages": "500000",
        }
    )
    await publisher.start()
    started = time.monotonic()
    try:
        chunk = 20_000
        for start in range(0, n, chunk):
            batch = [records(i) for i in range(start, min(n, start + chunk))]
            await asyncio.gather(
                *(publisher.publish(topic=t, key=k, value=v, headers=()) for t, k, v in batch)
            )
            if (start // chunk) % 10 == 9:
                console.print(f"{label}: {start + len(batch):,} / {n:,} published")
    finally:
        await publisher.close()
    return time.monotonic() - started


def _scrape(port: int) -> dict[str, float]:
    """Sample name -> value summed over label sets; empty while the endpoint is down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310 - loopback
            text = resp.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
            if s.name == "router_feedback_verdicts_total":
                key = f"verdict={s.labels.get('verdict')}"
                totals[key] = totals.get(key, 0.0) + s.value
    return totals


class _Consumer:
    """The feedback consumer process, its metrics port and its RSS."""

    def __init__(self, env: dict[str, str], port: int, log_file: Path) -> None:
        self.port = port
        self._log = log_file.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own console script, fixed arguments
            FEEDBACK_COMMAND, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.peak_rss = 0
        self.rss_at: dict[str, float] = {}  # RSS (MiB) at each quarter of the target

    def rss(self) -> int:
        value = int(psutil.Process(self.proc.pid).memory_info().rss)
        self.peak_rss = max(self.peak_rss, value)
        return value

    def wait_for(self, name: str, target: float, *, timeout_s: float) -> tuple[float, float, float]:
        """Poll `name` until it reaches `target`.

        Returns:
            (first value seen above 0, monotonic time of that sample, time target reached).
        """
        deadline = time.monotonic() + timeout_s
        first_value, first_t = 0.0, 0.0
        next_report = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"feedback consumer exited with {self.proc.returncode}")
            value = _scrape(self.port).get(name, 0.0)
            now = time.monotonic()
            rss_mib = self.rss() / 2**20
            for quarter in (0.25, 0.5, 0.75, 1.0):
                mark = f"{int(target * quarter):,}"
                if value >= target * quarter and mark not in self.rss_at:
                    self.rss_at[mark] = rss_mib
            if value > 0 and first_t == 0.0:
                first_value, first_t = value, now
            if value >= target:
                return first_value, first_t, now
            if now > next_report:
                console.print(f"{name}: {value:,.0f} / {target:,.0f}")
                next_report = now + 15
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not reach {target} within {timeout_s}s")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self._log.close()
        return code


def _rate(first_value: float, first_t: float, target: float, done_t: float) -> float:
    elapsed = done_t - first_t
    return (target - first_value) / elapsed if elapsed > 0 else float("nan")


def run_feedback_bench(
    *,
    decisions: int,
    feedback: int,
    partitions: int,
    bootstrap: str | None,
    work_dir: Path,
    keep: bool = False,
) -> FeedbackBenchResult:
    """Run the benchmark (see the module docstring) and return its figures.

    The decision log and the taxonomy copy are deleted at the end unless `keep`; the
    consumer's log stays in `work_dir`.
    """
    from expert.hardware import summary

    result = FeedbackBenchResult(decisions=decisions, feedback=feedback, partitions=partitions)
    result.hardware = summary()
    unique = uuid.uuid4().hex[:8]
    work_dir.mkdir(parents=True, exist_ok=True)
    tax = Taxonomy.load().with_topic_suffix(f".fbbench-{unique}")
    tax_path = work_dir / f"taxonomy-{unique}.yaml"
    tax_path.write_text(yaml.safe_dump(tax.model_dump(mode="json")))
    store = work_dir / f"decisions-{unique}.sqlite3"
    broker = None
    if bootstrap is None:
        broker = EmbeddedBroker(state_dir=work_dir / f"broker-{unique}", port=free_port())
        broker.start()
        bootstrap = broker.bootstrap
    port = free_port()
    env = {
        **os.environ,
        "ROUTER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "ROUTER_TAXONOMY_PATH": str(tax_path),
        "ROUTER_FEEDBACK__STORE_PATH": str(store),
        "ROUTER_FEEDBACK__GROUP_ID": f"bench-feedback-{unique}",
        "ROUTER_FEEDBACK__METRICS_PORT": str(port),
        "ROUTER_METRICS__HOST": "127.0.0.1",
        "ROUTER_LOG_LEVEL": "WARNING",
        "ROUTER_LOG_FORMAT": "json",
    }
    log_file = work_dir / f"consumer-{unique}.log"
    consumer: _Consumer | None = None
    try:
        create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=partitions))
        plan = _plan(tax, seed=11)
        console.print(f"publishing {decisions:,} decisions to {len(tax.decision_topics())} topics")
        result.produce_s = asyncio.run(_produce(bootstrap, plan.record, decisions, "decisions"))

        consumer = _Consumer(env, port, log_file)
        first, first_t, done_t = consumer.wait_for(
            "router_decisions_logged_total", decisions, timeout_s=3600
        )
        result.decisions_per_s = _rate(first, first_t, decisions, done_t)
        time.sleep(2)  # let the consumer settle after its last batch
        result.rss_after_decisions_mib = consumer.rss() / 2**20
        result.peak_rss_ingest_mib = consumer.peak_rss / 2**20
        result.rss_while_logging_mib = dict(consumer.rss_at)
        if consumer.stop() != 0:
            raise RuntimeError(f"feedback consumer did not stop cleanly; see {log_file}")
        consumer = None
        result.store_mib = (
            sum(p.stat().st_size for p in work_dir.glob(f"{store.name}*") if p.is_file()) / 2**20
        )
        result.lookup_us = _lookup_us(store, plan, decisions)

        rng = random.Random(5)  # noqa: S311 - seeded benchmark data
        chosen = rng.sample(range(decisions), feedback)

        def feedback_record(j: int) -> tuple[str, bytes, bytes]:
            i = chosen[j]
            truth = plan.truth[i % _POOL]
            decided = plan.decided[i % _POOL]
            event = Feedback(
                ticket_id=plan.ticket_id(i),
                final_queue=truth,
                previous_queue=decided if decided != truth else None,
                outcome=(
                    FeedbackOutcome.REASSIGNED if decided != truth else FeedbackOutcome.RESOLVED
                ),
                actor=f"agent{j % 40}",
                occurred_at=_T0 + timedelta(seconds=j),
            )
            key = event.ticket_id.encode()
            return tax.topics.feedback, key, event.model_dump_json().encode()

        console.print(f"publishing {feedback:,} feedback events")
        asyncio.run(_produce(bootstrap, feedback_record, feedback, "feedback"))
        consumer = _Consumer(env, port, log_file)
        first, first_t, done_t = consumer.wait_for(
            "router_feedback_consumed_total", feedback, timeout_s=3600
        )
        result.feedback_per_s = _rate(first, first_t, feedback, done_t)
        time.sleep(2)
        result.rss_after_feedback_mib = consumer.rss() / 2**20
        metrics = _scrape(port)
        result.verdicts = {k: v for k, v in metrics.items() if k.startswith("verdict=")} | {
            "triage": metrics.get("router_feedback_triage_outcomes_total", 0.0),
            "held": metrics.get("router_feedback_held", 0.0),
        }
        if consumer.stop() != 0:
            raise RuntimeError(f"feedback consumer did not stop cleanly; see {log_file}")
        consumer = None
    finally:
        if consumer is not None:
            consumer.stop()
        if broker is not None:
            broker.stop()
        if not keep:
            for path in (tax_path, *work_dir.glob(f"{store.name}*")):
                path.unlink(missing_ok=True)
    return result


def _lookup_us(store: Path, plan: _Plan, decisions: int) -> float:
    """Mean time of a lookup by ticket id on the filled log (read-only, beside the file)."""
    log = DecisionLog(store, read_only=True)
    log.open()
    try:
        rng = random.Random(3)  # noqa: S311 - seeded benchmark data
        ids = [plan.ticket_id(rng.randrange(decisions)) for _ in range(10_000)]
        started = time.perf_counter()
        found = sum(log.lookup(ticket_id) is not None for ticket_id in ids)
        elapsed = time.perf_counter() - started
    finally:
        log.close()
    if found != len(ids):
        raise RuntimeError(f"only {found} of {len(ids)} looked-up tickets were in the log")
    return elapsed / len(ids) * 1e6


def _print(result: FeedbackBenchResult) -> None:
    t = Table(
        title=f"feedback consumer: {result.decisions:,} decisions, {result.feedback:,} feedback"
    )
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row(
        "decisions logged, per second (rebuild from the topics)", f"{result.decisions_per_s:,.0f}"
    )
    t.add_row(
        f"RSS after {result.decisions:,} decisions, MiB", f"{result.rss_after_decisions_mib:.1f}"
    )
    t.add_row("peak RSS while logging them, MiB", f"{result.peak_rss_ingest_mib:.1f}")
    for mark, mib in result.rss_while_logging_mib.items():
        t.add_row(f"  RSS when {mark} were logged, MiB", f"{mib:.1f}")
    t.add_row("decision log on disk, MiB", f"{result.store_mib:.1f}")
    t.add_row("lookup by ticket id, microseconds", f"{result.lookup_us:.1f}")
    t.add_row("feedback events joined, per second (sustained)", f"{result.feedback_per_s:,.0f}")
    t.add_row("RSS after the feedback, MiB", f"{result.rss_after_feedback_mib:.1f}")
    for name, value in sorted(result.verdicts.items()):
        t.add_row(name, f"{value:,.0f}")
    cpu = result.hardware.get("cpu")
    kind = cpu.get("kind") if isinstance(cpu, dict) else "?"
    t.caption = (
        f"{kind}; broker, consumer and this bench share the cores "
        "(durable commits: SQLite synchronous=FULL)"
    )
    Console().print(t)


def bench_feedback(
    decisions: int = 1_000_000,
    feedback: int = 200_000,
    partitions: int = 6,
    bootstrap: str | None = None,
    work_dir: Path = Path(".state/bench-feedback"),
    out: Path | None = None,
    keep: bool = False,
) -> None:
    """Feedback events/s the consumer joins, and its RSS with N decisions in its log.

    --keep leaves the filled decision log in --work-dir (try `decisions lookup` on it).
    """
    from worker.logs import configure_logging

    configure_logging(level="WARNING", fmt="console")
    result = run_feedback_bench(
        decisions=decisions,
        feedback=feedback,
        partitions=partitions,
        bootstrap=bootstrap,
        work_dir=work_dir,
        keep=keep,
    )
    _print(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(asdict(result), indent=2, default=str))
