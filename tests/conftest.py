"""Shared fixtures: the real Kafka-protocol broker (Tansu) and unique names per test.

Expert fixtures (a tiny expert built in seconds) live in tests/expert_fixtures.py.

Every test that uses a real part is marked `integration`: the tests asking for the broker
or a vLLM engine fixture are marked here, and those that start a broker, a worker or another
child process themselves carry the mark. Tests asking for a tiny expert trained with torch
are marked `slow` here. `make test-fast` runs the rest, and tests/unit_only.py makes a real
part started there anyway fail the run.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from worker import logs
from worker.broker import EmbeddedBroker, free_port

logs.CACHE_LOGGERS = False
# Every worker the suite starts (in-process, or a child: the benches' and scenarios' workers
# inherit this) runs its model inside vLLM's engine-core process: one torch + vLLM import
# fewer per boot (~13 s of one core here). The test of the production layout says "false"
# itself (the engine-core kill in tests/test_bench_chaos.py).
os.environ.setdefault("ROUTER_ENGINE__MODEL_IN_ENGINE_CORE", "true")

pytest_plugins = ["tests.unit_only"]
if importlib.util.find_spec("tests.expert_fixtures") is not None:
    pytest_plugins.append("tests.expert_fixtures")

# Fixtures that bring up a real part (their dependants, `bootstrap` included, inherit them;
# the fused recipe scores its candidates in vLLM).
REAL_PART_FIXTURES = frozenset(
    {
        "broker",
        "batch_expert",
        "streaming_expert",
        "batch_classifier",
        "streaming_classifier",
        "tiny_fused_dir",
    }
)
# Fixtures that train a tiny model with torch: seconds to a minute each.
TRAINED_MODEL_FIXTURES = frozenset(
    {"tiny_expert_dir", "tiny_lora_dir", "tiny_encoder_base", "tiny_classifier_dir"}
)


# The files that take longest, longest first (measured with `--durations=0`). `make test`
# hands whole files to two pytest-xdist workers in collection order: starting the longest
# first keeps one worker from being left with a long file at the end. Order only; a file
# missing here runs after these, in its usual place.
LONGEST_FIRST = (
    "test_bench_chaos.py",
    "test_expert_classifier.py",
    "test_bench_capacity.py",
    "test_worker_e2e.py",
    "test_expert_llm.py",
    "test_expert_calibrate.py",
    "test_expert_engine.py",
    "test_worker_route.py",
    "test_hostile_input.py",
    "test_feedback_retrain.py",
    "test_worker_swap.py",
    "test_feedback_consumer.py",
    "test_worker_tail.py",
    "test_bench_slow_router.py",
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if REAL_PART_FIXTURES & fixtures:
            item.add_marker(pytest.mark.integration)
        if TRAINED_MODEL_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)


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
