"""Benchmark of a zero-downtime expert swap: latency, memory and accounting across it.

Owns one measured run (`python -m bench.swap_bench`): an embedded broker, an expert
registry with v1 (promoted) and v2, a worker process serving the registry, a steady
open-loop stream of tickets; after `--before-s` seconds v2 is promoted, and the stream
goes on for `--after-s` seconds after the old engine is released. It prints the swap's
duration (from the worker's log), end-to-end latency (ticket's Kafka timestamp -> routed
ticket handed to the producer) per window, the RSS of the worker plus its engine
processes, and every ticket's accounting (lost, duplicated, which version decided it).

A measurement only: it asserts nothing and changes no setting of the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import structlog
import yaml
from confluent_kafka import Consumer, Producer

from expert import hardware
from expert.registry import Registry
from schemas.routing import RoutedTicket
from schemas.taxonomy import Taxonomy
from worker.broker import EmbeddedBroker, TopicLayout, create_layout, free_port

SUBJECTS = (
    "cannot connect to vpn from home since this morning",
    "forgot my password and my account is locked",
    "laptop screen flickers and the docking station does not charge",
    "outlook keeps asking for credentials, teams calendar empty",
    "need access to the finance shared drive for new starter",
    "database backup job failed with ORA-01555 on prod",
)


def _taxonomy(tmp: Path, suffix: str) -> tuple[Taxonomy, Path]:
    data = Taxonomy.load().model_dump(mode="json")
    for key in data["topics"]:
        data["topics"][key] = f"{data['topics'][key]}.{suffix}"
    for q in data["queues"]:
        q["topic"] = f"{q['topic']}.{suffix}"
    path = tmp / "taxonomy.yaml"
    path.write_text(yaml.safe_dump(data))
    return Taxonomy.load(path), path


class SteadyStream:
    """Open-loop producer at a fixed rate, from a thread; remembers where each ticket landed."""

    def __init__(self, bootstrap: str, topic: str, rate_per_s: float) -> None:
        self.topic, self.interval_s = topic, 1.0 / rate_per_s
        self.positions: list[tuple[int, int]] = []
        self.errors = 0
        self.sent = 0
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-stream")

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.positions.append((msg.partition(), msg.offset()))
        else:
            self.errors += 1

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            ticket = {
                "id": f"BENCH{self.sent:07d}",
                "source": "canonical",
                "subject": SUBJECTS[self.sent % len(SUBJECTS)],
                "body": f"bench ticket {self.sent}",
                "created_at": datetime.now().astimezone().isoformat(),
            }
            self._producer.produce(
                self.topic, value=json.dumps(ticket).encode(), on_delivery=self._delivered
            )
            self.sent += 1
            self._producer.poll(0)
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._producer.flush(30)


class RssSampler:
    """Sums the RSS of a process and all its descendants every `every_s` seconds."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, bytes, processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.samples.append((time.monotonic(), total, len(procs)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class WorkerLog:
    """The worker's JSON log lines, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path, self.events, self._pos = path, list[dict[str, Any]](), 0

    def read(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._pos += end
        for line in chunk[:end].splitlines():
            if line.startswith(b"{"):
                try:
                    self.events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return self.events

    def wait_for(
        self, name: str, proc: subprocess.Popen[bytes], timeout_s: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for e in self.read():
                if e.get("event") == name:
                    return e
            if proc.poll() is not None:
                tail = self.path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"worker exited {proc.returncode}; its log ends:\n{tail}")
            time.sleep(0.2)
        raise SystemExit(f"no {name} in the worker log after {timeout_s} s: {self.path}")


def _read_outputs(
    bootstrap: str, topics: Sequence[str], wanted: int, timeout_s: float
) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-swap-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(list(topics))
    out: list[Any] = []
    seen: set[tuple[int, int]] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < wanted and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=500, timeout=0.5):
                if m.error() is None:
                    headers = {str(h[0]): h[1] for h in m.headers() or []}
                    partition = headers["router.source.partition"]
                    offset = headers["router.source.offset"]
                    assert isinstance(partition, bytes) and isinstance(offset, bytes)
                    seen.add((int(partition), int(offset)))
                    out.append(m)
    finally:
        consumer.close()
    return out


def _percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    q = (
        statistics.quantiles(ordered, n=100, method="inclusive")
        if len(ordered) > 1
        else ordered * 99
    )
    return {
        "n": len(ordered),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One measured swap; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp_name:
        tmp = Path(tmp_name)
        suffix = uuid.uuid4().hex[:8]
        tax, tax_path = _taxonomy(tmp, suffix)
        broker = EmbeddedBroker(state_dir=tmp / "broker", port=free_port())
        broker.start()
        try:
            create_layout(
                broker.bootstrap, TopicLayout.from_taxonomy(tax, partitions=args.partitions)
            )
            registry = Registry(tmp / "registry")
            registry.add(args.v1, version="v1")
            registry.promote("v1", reason="bench: first version")
            registry.add(args.v2, version="v2")
            return _measure(args, broker.bootstrap, tax, tax_path, registry, tmp)
        finally:
            broker.stop()


def _measure(
    args: argparse.Namespace,
    bootstrap: str,
    tax: Taxonomy,
    tax_path: Path,
    registry: Registry,
    tmp: Path,
) -> dict[str, Any]:
    env = {
        **os.environ,
        "ROUTER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "ROUTER_KAFKA__GROUP_ID": f"bench-swap-{uuid.uuid4().hex[:8]}",
        "ROUTER_TAXONOMY_PATH": str(tax_path),
        "ROUTER_ENGINE__REGISTRY_DIR": str(registry.root),
        "ROUTER_ENGINE__SWAP_MODE": args.swap_mode,
        "ROUTER_METRICS__PORT": "0",
        "ROUTER_LOG_FORMAT": "json",
    }
    log_path = tmp / "worker.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own console entry point
            [sys.executable, "-m", "ticket_router", "worker"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker_log = WorkerLog(log_path)
    stream = SteadyStream(bootstrap, tax.topics.inbound, args.rate)
    sampler = RssSampler(proc.pid)
    try:
        worker_log.wait_for("partitions_assigned", proc, timeout_s=300)
        sampler.start()
        stream.start()
        time.sleep(args.before_s)
        promoted_at = time.time()
        promoted_mono = time.monotonic()
        registry.promote("v2", reason="bench: swap under load")
        swapped = worker_log.wait_for("expert_swapped", proc, timeout_s=600)
        released = worker_log.wait_for("expert_version_released", proc, timeout_s=300)
        released_mono = time.monotonic()
        time.sleep(args.after_s)
        stream.stop()
        outputs = _read_outputs(
            bootstrap,
            [q.topic for q in tax.queues] + [tax.topics.triage, tax.topics.dead_letter],
            wanted=len(stream.positions),
            timeout_s=300,
        )
    finally:
        sampler.stop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    return _figures(
        args,
        stream=stream,
        outputs=outputs,
        sampler=sampler,
        promoted=(promoted_at, promoted_mono),
        swapped=swapped,
        released=released,
        released_mono=released_mono,
    )


def _figures(
    args: argparse.Namespace,
    *,
    stream: SteadyStream,
    outputs: list[Any],
    sampler: RssSampler,
    promoted: tuple[float, float],
    swapped: dict[str, Any],
    released: dict[str, Any],
    released_mono: float,
) -> dict[str, Any]:
    promoted_at, promoted_mono = promoted
    switch_at = datetime.fromisoformat(str(swapped["timestamp"]).replace("Z", "+00:00")).timestamp()
    produced = set(stream.positions)
    by_source: dict[tuple[int, int], list[RoutedTicket]] = {}
    for m in outputs:
        routed = RoutedTicket.model_validate_json(m.value())
        by_source.setdefault((routed.source_partition, routed.source_offset), []).append(routed)
    windows: dict[str, list[float]] = {
        "minute_before": [],
        "minute_from_promote": [],
        "switch_pm_30s": [],
    }
    versions: dict[str, int] = {}
    timeline: dict[int, list[float]] = {}  # 5 s buckets of enqueue time, from the promote
    outcomes: dict[str, int] = {}
    for decisions in by_source.values():
        first = decisions[0]
        versions[first.decision.model_id] = versions.get(first.decision.model_id, 0) + 1
        outcome = first.triage_reason.value if first.triage_reason else first.disposition.value
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if first.enqueued_at is None:
            continue
        at = first.enqueued_at.timestamp()
        latency = (first.published_at - first.enqueued_at).total_seconds()
        if promoted_at - 60 <= at < promoted_at:
            windows["minute_before"].append(latency)
        if promoted_at <= at < promoted_at + 60:
            windows["minute_from_promote"].append(latency)
        if switch_at - 30 <= at < switch_at + 30:
            windows["switch_pm_30s"].append(latency)
        timeline.setdefault(int((at - promoted_at) // 5) * 5, []).append(latency)
    before = [rss for t, rss, _n in sampler.samples if t < promoted_mono]
    overlap = [(rss, n) for t, rss, n in sampler.samples if promoted_mono <= t <= released_mono]
    after = [rss for t, rss, _n in sampler.samples if t > released_mono + 5]
    mib = 2**20
    return {
        "load": {"rate_per_s": args.rate, "partitions": args.partitions, "tickets": stream.sent},
        "swap": {
            "mode": swapped.get("mode"),
            "load_and_warm_up_s": swapped.get("duration_s"),
            "old_released_after_switch_s": released.get("drain_s"),
            "old_drained": released.get("drained"),
        },
        "latency_end_to_end": {k: _percentiles(v) for k, v in windows.items()},
        "switch_s_after_promote": round(switch_at - promoted_at, 1),
        "latency_timeline_5s_from_promote": {
            str(k): _percentiles(timeline[k])
            for k in sorted(timeline)
            if -15 <= k <= switch_at - promoted_at + 20
        },
        "accounting": {
            "produced": len(produced),
            "delivery_errors": stream.errors,
            "lost": len(produced - set(by_source)),
            "duplicated": sum(len(d) - 1 for d in by_source.values()),
            "decided_by": versions,
            "outcomes": outcomes,
        },
        "rss_mib_worker_and_engines": {
            "before_median": round(statistics.median(before) / mib) if before else None,
            "overlap_peak": round(max(r for r, _n in overlap) / mib) if overlap else None,
            "processes_at_peak": max(overlap)[1] if overlap else None,
            "after_release_median": round(statistics.median(after) / mib) if after else None,
        },
        "machine": {
            "cpu": hardware.summary()["cpu"],
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "note": "shared with other jobs while measured",
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v1", type=Path, default=Path(".state/models/default-expert"))
    parser.add_argument("--v2", type=Path, default=Path(".state/models/demo-measure-expert"))
    parser.add_argument("--rate", type=float, default=20.0, help="tickets per second")
    parser.add_argument("--before-s", type=float, default=75.0)
    parser.add_argument("--after-s", type=float, default=60.0)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--swap-mode", choices=["auto", "overlap", "drain_first"], default="auto")
    args = parser.parse_args(argv)
    # Progress lines go to stderr; stdout carries only the figures (JSON).
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    figures = run(args)
    print(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
