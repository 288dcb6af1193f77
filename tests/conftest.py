"""Shared fixtures: the real Kafka-protocol broker (Tansu) and unique names per test.

Expert fixtures (a tiny expert built in seconds) live in tests/expert_fixtures.py.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from worker import logs
from worker.broker import EmbeddedBroker, free_port

logs.CACHE_LOGGERS = False

if importlib.util.find_spec("tests.expert_fixtures") is not None:
    pytest_plugins = ["tests.expert_fixtures"]


@pytest.fixture(autouse=True)
def _structlog_configuration_per_test() -> Iterator[None]:
    """Each test starts with the logging configuration the previous one started with.

    Commands run in-process (`route`, `tail`, the benches) configure structlog at WARNING;
    without this, a later test's `capture_logs` would never see an info event.
    """
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real broker on a free loopback port, for the whole session."""
    b = EmbeddedBroker(state_dir=tmp_path_factory.mktemp("broker"), port=free_port())
    b.start()
    yield b
    b.stop()


@pytest.fixture
def bootstrap(broker: EmbeddedBroker) -> str:
    return broker.bootstrap


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names (tests never share them)."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def taxonomy_file(tmp_path: Path, unique: str) -> Path:
    """The default taxonomy with every topic name suffixed, so each test has its own topics."""
    import yaml

    from schemas.taxonomy import Taxonomy

    data = Taxonomy.load().model_dump(mode="json")
    for key in data["topics"]:
        data["topics"][key] = f"{data['topics'][key]}.{unique}"
    for q in data["queues"]:
        q["topic"] = f"{q['topic']}.{unique}"
    path = tmp_path / "taxonomy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
