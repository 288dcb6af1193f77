"""The embedded broker and the topic layout, against the real broker binary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from schemas.taxonomy import Taxonomy
from worker.broker import EmbeddedBroker, TopicLayout, create_layout, free_port


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ticket_router", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


@pytest.mark.integration
def test_broker_up_creates_the_whole_layout_and_down_stops_it(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    up = _cli(
        "broker",
        "up",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        "--partitions",
        "3",
        cwd=tmp_path,
    )
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.strip().splitlines()[-1]
    assert bootstrap == f"127.0.0.1:{port}"
    try:
        # A plain confluent-kafka client sees every topic of the layout.
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        expected = Taxonomy.load().all_topics()
        assert set(expected) <= set(md.topics)
        assert all(len(md.topics[t].partitions) == 3 for t in expected)
        status = _cli("broker", "status", "--state-dir", str(state), cwd=tmp_path)
        assert status.returncode == 0 and status.stdout.strip() == bootstrap
        again = _cli("broker", "up", "--port", str(port), "--state-dir", str(state), cwd=tmp_path)
        assert again.returncode == 0, again.stderr  # idempotent: finds the running broker
    finally:
        down = _cli("broker", "down", "--state-dir", str(state), cwd=tmp_path)
    assert down.returncode == 0
    assert "broker stopped" in down.stderr
    assert _cli("broker", "status", "--state-dir", str(state), cwd=tmp_path).returncode == 1
    assert not (state / "broker.pid").exists()


def test_topics_create_on_any_kafka_is_idempotent(
    bootstrap: str, taxonomy_file: Path, tmp_path: Path
) -> None:
    args = (
        "topics",
        "create",
        "--bootstrap",
        bootstrap,
        "--taxonomy",
        str(taxonomy_file),
        "--partitions",
        "2",
    )
    first = _cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    tax = Taxonomy.load(taxonomy_file)
    assert first.stdout.split() == tax.all_topics()
    assert f"{len(tax.all_topics())} created" in first.stderr
    second = _cli(*args, cwd=tmp_path)
    assert "0 created" in second.stderr


def test_create_layout_reports_only_new_topics(bootstrap: str, taxonomy_file: Path) -> None:
    layout = TopicLayout.from_taxonomy(Taxonomy.load(taxonomy_file), partitions=1)
    assert sorted(create_layout(bootstrap, layout)) == sorted(layout.topics)
    assert create_layout(bootstrap, layout) == []


def test_broker_on_a_taken_port_fails_clearly(tmp_path: Path, broker: EmbeddedBroker) -> None:
    from worker.errors import BrokerUnreachableError

    clash = EmbeddedBroker(state_dir=tmp_path, port=broker.port)
    # Another broker answers on that port, so only the process's own exit tells the truth.
    with pytest.raises(BrokerUnreachableError, match="exited"):
        clash.start(ready_timeout_s=5)
    assert not clash.pid_file.exists()
