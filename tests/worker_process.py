"""The worker as a child process, and the helpers the end-to-end and chaos tests share.

`WorkerProcess` runs `python -m ticket_router worker` in its own session (so the engine-core
subprocess can be found and taken down with it), captures its JSON log and reads it
incrementally. Around it: the worker's environment, test tickets, a producer that reports
where each record landed, the output topics read with a read-to-end barrier
(tests/kafka_helpers.py) and committed-offset snapshots that do not wait for open
transactions.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.chaos import Output
from schemas.taxonomy import Taxonomy
from tests.kafka_helpers import OutputReader, OutRecord

REPO = Path(__file__).resolve().parents[1]
WORKER_COMMAND = [sys.executable, "-m", "ticket_router", "worker"]
H_SOURCE = ("router.source.topic", "router.source.partition", "router.source.offset")
H_TXN = "router.txn"

SUBJECTS = [
    "cannot connect to vpn from home since this morning",
    "forgot my password and my account is locked",
    "laptop screen flickers and the docking station does not charge",
    "outlook keeps asking for credentials, teams calendar empty",
    "need access to the finance shared drive for new starter",
    "suspicious email asking me to confirm my bank details, clicked the link",
    "database backup job failed with ORA-01555 on prod",
    "server disk /var at 95 percent, monitoring alert",
    "SAP transaction ME21N gives authorisation error",
    "please install visio on my pc",
    "kubernetes deployment stuck in CrashLoopBackOff after pipeline run",
    "the coffee machine on floor 3 is broken",
]


def ticket_payload(i: int, *, subject: str | None = None, body: str | None = None) -> bytes:
    """A valid canonical ticket (JSON bytes) numbered `i`."""
    return json.dumps(
        {
            "id": f"INC{i:07d}",
            "source": "canonical",
            "subject": subject if subject is not None else SUBJECTS[i % len(SUBJECTS)],
            "body": body if body is not None else f"ticket number {i}",
            "created_at": datetime.now(UTC).isoformat(),
        }
    ).encode()


def output_topics(tax: Taxonomy) -> list[str]:
    """Every topic the worker writes to: one per queue, triage and dead-letter."""
    return [q.topic for q in tax.queues] + [tax.topics.triage, tax.topics.dead_letter]


def sources(records: Iterable[OutRecord]) -> set[tuple[str, int, int]]:
    """The inbound records (topic, partition, offset) the output records name."""
    return {r.source for r in records}


def unique_taxonomy(path: Path, suffix: str) -> Path:
    """Write the default taxonomy with every topic name suffixed (own topics per test)."""
    import yaml

    data = Taxonomy.load().model_dump(mode="json")
    for key in data["topics"]:
        data["topics"][key] = f"{data['topics'][key]}.{suffix}"
    for q in data["queues"]:
        q["topic"] = f"{q['topic']}.{suffix}"
    path.write_text(yaml.safe_dump(data))
    return path


def worker_env(
    bootstrap: str,
    taxonomy_file: Path,
    model_dir: Path,
    group: str,
    tmp: Path | None = None,
    **overrides: str,
) -> dict[str, str]:
    """The environment of a worker child: settings as `ROUTER_*` variables, JSON logs.

    The model runs in vLLM's engine-core process (tests/conftest.py sets it for the whole
    suite); tests of the production layout pass `ROUTER_ENGINE__MODEL_IN_ENGINE_CORE="false"`.
    """
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ROUTER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "ROUTER_KAFKA__GROUP_ID": group,
        "ROUTER_TAXONOMY_PATH": str(taxonomy_file),
        "ROUTER_ENGINE__MODEL_DIR": str(model_dir),
        "ROUTER_ENGINE__CACHE_DIR": str(REPO / ".state" / "vllm-cache"),
        "ROUTER_METRICS__PORT": "0",
        "ROUTER_LOG_FORMAT": "json",
        "ROUTER_SHUTDOWN_GRACE_S": "20",
        **overrides,
    }


class WorkerProcess:
    """`ticket-router worker` as a child process, with its JSON log captured to a file.

    The child leads its own process group; `kill()` takes the whole group down (the engine
    core included), as a container runtime would.
    """

    def __init__(self, env: dict[str, str], log_path: Path, *, args: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self._events: list[dict[str, Any]] = []
        self._read_pos = 0
        self.started_at = datetime.now(UTC)
        self.proc = subprocess.Popen(
            [*WORKER_COMMAND, *args],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log event so far (read incrementally; a partial last line waits)."""
        with self.log_path.open("rb") as f:
            f.seek(self._read_pos)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._read_pos += end
        for line in chunk[:end].splitlines():
            if line.startswith(b"{"):
                try:
                    self._events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return self._events

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_for_event(self, name: str, timeout_s: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            events = self.events()
            for e in events[seen:]:
                if e.get("event") == name:
                    return e
            seen = len(events)
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"no {name} event:\n{self.tail()}")

    def boot_s(self) -> float | None:
        """Seconds from process start to `worker_started` (None: it never got there)."""
        for e in self.events():
            if e.get("event") == "worker_started":
                at = datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00"))
                return (at - self.started_at).total_seconds()
        return None

    def metrics_text(self, host: str = "127.0.0.1") -> str:
        port = self.wait_for_event("worker_started")["metrics_port"]
        url = f"http://{host}:{port}/metrics"
        return str(urllib.request.urlopen(url, timeout=5).read().decode())  # noqa: S310

    def metric(self, name: str) -> float:
        total = 0.0
        for m in re.finditer(
            rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", self.metrics_text(), re.M
        ):
            total += float(m.group(1))
        return total

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 90) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def group_members(self) -> list[psutil.Process]:
        """Live processes of the worker's process group (itself, the engine core, ...)."""
        members = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid:
                    members.append(p)
            except (ProcessLookupError, psutil.Error):
                continue
        return members

    def _child(self, is_it: Callable[[psutil.Process], bool]) -> psutil.Process | None:
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if is_it(p):
                    return p
            except psutil.Error:
                continue
        return None

    def engine_core(self) -> psutil.Process | None:
        """vLLM's engine-core child process, found by its process title."""
        return self._child(
            lambda p: "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())
        )

    def model_process(self) -> psutil.Process | None:
        """vLLM's model process (`VLLM::Worker`), which the production layout starts beside
        the engine core; None when the model runs inside the engine core."""
        return self._child(lambda p: p.name().startswith("VLLM::Worker"))

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def kill(self) -> None:
        """SIGKILL the worker, then whatever is left of its process group; reap them."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        left = self.group_members()
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(left, timeout=30)
        self._log.close()


# ---------------------------------------------------------------------------- Kafka helpers


def produce_tracked(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    *,
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[list[tuple[str, bytes]] | None] | None = None,
) -> list[tuple[str, int, int]]:
    """Produce `values` (idempotent, acks=all); return (topic, partition, offset) of each.

    Raises:
        AssertionError: a record was not acknowledged.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "enable.idempotence": True,
            "message.max.bytes": 2_000_000,
        }
    )
    positions: list[tuple[str, int, int] | None] = [None] * len(values)
    errors: list[str] = []

    def on_delivery(i: int) -> Callable[[Any, Any], None]:
        def done(err: Any, msg: Any) -> None:
            if err is None:
                positions[i] = (msg.topic(), msg.partition(), msg.offset())
            else:
                errors.append(str(err))

        return done

    for i, v in enumerate(values):
        while True:
            try:
                producer.produce(
                    topic,
                    value=v,
                    key=keys[i] if keys is not None else None,
                    headers=headers[i] if headers is not None and headers[i] else None,
                    on_delivery=on_delivery(i),
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, "records still undelivered after 60 s"
    assert not errors, f"{len(errors)} records not delivered: {errors[:3]}"
    assert all(p is not None for p in positions)
    return [p for p in positions if p is not None]


def partition_ends(positions: Iterable[tuple[str, int, int]]) -> dict[int, int]:
    """Partition -> next offset after the last record produced there."""
    ends: dict[int, int] = {}
    for _t, p, o in positions:
        ends[p] = max(ends.get(p, 0), o + 1)
    return ends


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (partition -> next offset), where one exists.

    read_uncommitted: the broker answers with the stable offsets at once instead of waiting
    for an open transaction to end (KIP-447 require_stable).
    """
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        parts = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {p.partition: p.offset for p in parts if p.offset >= 0}
    finally:
        c.close()


def wait_for_committed(
    bootstrap: str,
    group: str,
    topic: str,
    ends: dict[int, int],
    *,
    worker: WorkerProcess,
    timeout_s: float,
) -> dict[int, int]:
    """Poll the group's committed offsets until they reach `ends` (or the deadline passes)."""
    deadline = time.monotonic() + timeout_s
    current: dict[int, int] = {}
    while time.monotonic() < deadline:
        current = committed_offsets(bootstrap, group, topic, max(ends) + 1)
        if current == ends:
            return current
        if not worker.is_alive():
            raise AssertionError(f"worker exited {worker.proc.returncode}:\n{worker.tail()}")
        time.sleep(0.5)
    raise AssertionError(f"committed offsets {current} never reached {ends}:\n{worker.tail()}")


@dataclass
class OutputLog:
    """Output records read so far (read_committed unless told), minus the barrier markers."""

    bootstrap: str
    topics: list[str]
    committed_only: bool = True
    reader: OutputReader = field(init=False)

    def __post_init__(self) -> None:
        self.reader = OutputReader(self.bootstrap, self.topics, committed_only=self.committed_only)

    @property
    def records(self) -> list[OutRecord]:
        return self.reader.records

    def outputs(self) -> list[Output]:
        """The records as accounting inputs (source headers, transaction header)."""
        out = []
        for r in self.records:
            txn = r.headers.get(H_TXN)
            out.append(
                Output(
                    topic=r.topic,
                    partition=r.partition,
                    offset=r.offset,
                    source=r.source,
                    txn=txn.decode() if txn is not None else None,
                )
            )
        return out

    def distinct(self) -> int:
        return len(sources(self.records))

    def follow(
        self,
        done: Callable[[OutputLog], bool],
        *,
        timeout_s: float,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Read until `done(self)` (checked about every 0.2 s, `tick()` called each time)."""
        deadline = time.monotonic() + timeout_s
        while not done(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {timeout_s}s with {self.distinct()} sources")
            if tick is not None:
                tick()
            self.reader.read_until(lambda _rs: False, timeout_s=0.2)

    def read_to_end(self, *, timeout_s: float = 120) -> list[OutRecord]:
        """Everything written so far (the reader's read-to-end barrier)."""
        return self.reader.read_to_end(timeout_s=timeout_s)

    def close(self) -> None:
        self.reader.close()


@dataclass
class RssSampler:
    """RSS samples (seconds since start, bytes) of one process."""

    worker: WorkerProcess
    samples: list[tuple[float, int]] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic)

    def sample(self) -> None:
        if self.worker.is_alive():
            self.samples.append((time.monotonic() - self._t0, self.worker.rss_bytes()))

    def second_half_growth(self) -> int:
        """Peak RSS in the second half of the samples minus the RSS where that half starts."""
        half = self.samples[len(self.samples) // 2 :]
        return max(rss for _t, rss in half) - half[0][1]
