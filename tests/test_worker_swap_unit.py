"""Expert versions with fakes: the version that answered labels the output; the watcher's
polling and refusal rules; the swap's order of engine starts and stops (overlap, drain
first, refusals). The same behaviours run on real vLLM in test_worker_swap.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from expert.card import CARD_FILENAME, CLASSIFIER_TEMPLATE, ExpertCard
from expert.registry import Registry
from expert.serving import EngineConfig, ExpertLoadError, Prediction, load_card
from schemas.routing import RoutedTicket
from schemas.taxonomy import Taxonomy
from tests.fakes import InMemoryPublisher, InMemorySource
from worker.config import EngineSettings
from worker.kafka_io import InboundRecord
from worker.metrics import Metrics
from worker.pipeline import H_MODEL, Pipeline, PipelineConfig
from worker.seams import VersionedPrediction
from worker.swap import SwappableExpert
from worker.version_watch import VersionWatcher

TAX = Taxonomy.load()
TOPIC = TAX.topics.inbound


class TwoVersionEngine:
    """Serves "old@v1" until `switch()`, then "new@v2"; the first ticket is answered only
    after the switch (it was in flight on the old version when the switch happened)."""

    def __init__(self) -> None:
        self.serving = ("old@v1", 0.95)  # (model id, recommended threshold)
        self.first_submitted = asyncio.Event()
        self.release_first = asyncio.Event()
        self.calls = 0

    @property
    def model_id(self) -> str:
        return self.serving[0]

    @property
    def adapter_id(self) -> str | None:
        return None

    @property
    def recommended_threshold(self) -> float | None:
        return self.serving[1]

    @property
    def recommended_queue_thresholds(self) -> dict[str, float]:
        return {}

    def switch(self) -> None:
        self.serving = ("new@v2", 0.5)

    async def classify(self, text: str, *, request_id: str) -> Prediction:
        model_id, threshold = self.serving
        self.calls += 1
        if self.calls == 1:
            self.first_submitted.set()
            await self.release_first.wait()
        probs = {label: 0.2 / (len(TAX.labels) - 1) for label in TAX.labels}
        probs["network_vpn"] = 0.8
        return VersionedPrediction(
            label="network_vpn",
            confidence=0.8,
            probabilities=probs,
            latency_s=0.01,
            model_id=model_id,
            recommended_threshold=threshold,
        )

    def load(self) -> tuple[int, int]:
        return (0, 0)


def _record(i: int) -> InboundRecord:
    value = json.dumps(
        {
            "id": f"T{i}",
            "source": "canonical",
            "subject": "vpn down",
            "body": "",
            "created_at": datetime.now(UTC).isoformat(),
        }
    ).encode()
    return InboundRecord(
        topic=TOPIC, partition=0, offset=i, key=None, value=value, timestamp_ms=None, headers=()
    )


async def test_a_ticket_answered_by_the_old_version_is_labelled_and_thresholded_by_it() -> None:
    engine = TwoVersionEngine()
    publisher = InMemoryPublisher()
    pipeline = Pipeline(
        config=PipelineConfig(commit_interval_s=0.01, poll_timeout_s=0.001),
        taxonomy=TAX,
        engine=engine,
        publisher=publisher,
        metrics=Metrics(CollectorRegistry()),
    )
    pipeline.on_assigned([(TOPIC, 0)])
    source = InMemorySource(records=[_record(0)])
    run = asyncio.create_task(pipeline.run(source, stop_after=2))
    await asyncio.wait_for(engine.first_submitted.wait(), timeout=5)
    engine.switch()  # ticket 0 is still in flight on the old version
    source.records.append(_record(1))
    engine.release_first.set()
    await asyncio.wait_for(run, timeout=5)
    by_offset = {}
    for topic, _key, value, headers in publisher.sent:
        routed = RoutedTicket.model_validate_json(value)
        by_offset[routed.source_offset] = (topic, routed.decision.model_id, headers[H_MODEL])
    # 0.8 is below the old version's threshold (0.95) and above the new one's (0.5).
    assert by_offset == {
        0: (TAX.topics.triage, "old@v1", b"old@v1"),
        1: (TAX.topic_for("network_vpn"), "new@v2", b"new@v2"),
    }


class FakeSwappable:
    """What the watcher needs of a SwappableExpert: the version serving, and swap_to."""

    def __init__(self, refuse: set[str]) -> None:
        self.version: str | None = "v1"
        self.refuse = refuse
        self.attempts: list[str] = []

    async def swap_to(self, version: str) -> bool:
        self.attempts.append(version)
        if version in self.refuse:
            return False
        self.version = version
        return True


def _version(reg: Registry, tmp: Path, name: str) -> None:
    folder = tmp / f"src-{name}"
    folder.mkdir()
    card = ExpertCard(
        kind="classifier",
        model_id=name,
        labels=tuple(TAX.labels),
        prompt_template=CLASSIFIER_TEMPLATE,
        max_prompt_tokens=64,
    )
    (folder / CARD_FILENAME).write_text(card.to_json())
    reg.add(folder, version=name)


async def test_the_watcher_swaps_to_a_new_pointer_and_retries_a_refused_one_only_when_asked(
    tmp_path: Path,
) -> None:
    reg = Registry(tmp_path / "registry")
    for name in ("v1", "bad", "v2"):
        _version(reg, tmp_path, name)
    reg.promote("v1", reason="start")
    engine = FakeSwappable(refuse={"bad"})
    watcher = VersionWatcher(registry=reg, engine=engine, poll_s=0.01)  # type: ignore[arg-type]
    await watcher.start()

    async def until(predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 5
        while not predicate():
            assert time.monotonic() < deadline, "gave up waiting"
            await asyncio.sleep(0.01)

    try:
        reg.promote("bad", reason="a broken build")
        await until(lambda: engine.attempts == ["bad"])
        seen = watcher.checks
        await until(lambda: watcher.checks >= seen + 20)  # a refused version is not retried
        assert engine.attempts == ["bad"] and engine.version == "v1"
        assert reg.current_name() == "bad"  # the worker never moves the pointer
        watcher.wake()  # SIGHUP: try it again
        await until(lambda: engine.attempts == ["bad", "bad"])
        reg.promote("v2", reason="fixed build")
        await until(lambda: engine.version == "v2")
        assert engine.attempts == ["bad", "bad", "v2"]
    finally:
        await watcher.stop()


# ---------------------------------------------------------------------- SwappableExpert


class FakeExpert:
    """The identity a StreamingExpert exposes, read from the version's card."""

    def __init__(self, model_dir: Path) -> None:
        self.card = load_card(model_dir)
        self.model_id = self.card.model_id
        self.adapter_id: str | None = None
        self.recommended_threshold: float | None = None
        self.recommended_queue_thresholds: dict[str, float] = {}


class FakeEngineThread:
    """An engine per version: records starts and stops; a call waits for `answer` to be set."""

    events: list[str]

    def __init__(self, config: EngineConfig, name: str, *, events: list[str], fail: set[str]):
        self.version = config.model_dir.name
        self.events, self.fail = events, fail
        self.expert = FakeExpert(config.model_dir)
        self.answer = asyncio.Event()
        self.answer.set()
        self.running = False
        self.calls = 0

    async def start(self) -> None:
        self.events.append(f"start {self.version}")
        if self.version in self.fail:
            raise ExpertLoadError(f"{self.version}: vLLM could not load it")
        self.running = True

    async def classify(self, text: str, *, request_id: str) -> Prediction:
        assert self.running, f"{self.version} called after its shutdown"
        self.calls += 1
        await self.answer.wait()
        probs = {label: 1 / len(TAX.labels) for label in TAX.labels}
        return Prediction(
            label=TAX.labels[0], confidence=probs[TAX.labels[0]], probabilities=probs, latency_s=0.0
        )

    def load(self) -> tuple[int, int]:
        return (0, 0)

    async def shutdown(self) -> None:
        if self.running:
            self.events.append(f"stop {self.version}")
        self.running = False


def _swappable(
    tmp: Path,
    *,
    mode: str,
    fail: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[SwappableExpert, Registry, list[str], list[FakeEngineThread], CollectorRegistry]:
    reg = Registry(tmp / "registry")
    for name in ("v1", "v2"):
        _version(reg, tmp, name)
    reg.promote("v1", reason="start")
    events: list[str] = []
    engines: list[FakeEngineThread] = []

    def factory(config: EngineConfig, name: str) -> FakeEngineThread:
        engines.append(FakeEngineThread(config, name, events=events, fail=set(fail)))
        return engines[-1]

    prometheus = CollectorRegistry()
    swappable = SwappableExpert(
        settings=EngineSettings(registry_dir=reg.root, swap_mode=mode),  # type: ignore[arg-type]
        registry=reg,
        labels=TAX.labels,
        metrics=Metrics(prometheus),
        release_timeout_s=5,
        engine_factory=factory,  # type: ignore[arg-type]
    )
    return swappable, reg, events, engines, prometheus


async def _eventually(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.005)


async def test_overlap_switches_new_tickets_at_once_and_stops_the_old_engine_after_its_last(
    tmp_path: Path,
) -> None:
    swappable, _reg, events, engines, prometheus = _swappable(tmp_path, mode="overlap")
    await swappable.start()
    engines[0].answer.clear()
    old_ticket = asyncio.create_task(swappable.classify("vpn", request_id="a"))
    await _eventually(lambda: engines[0].calls == 1)
    swap = asyncio.create_task(swappable.swap_to("v2"))
    await _eventually(lambda: swappable.version == "v2")
    new = await swappable.classify("vpn", request_id="b")  # served while v1 still answers
    assert new.model_id == "v2@v2"
    assert events == ["start v1", "start v2"] and not swap.done()
    engines[0].answer.set()
    assert (await old_ticket).model_id == "v1@v1"
    assert await swap is True
    assert events == ["start v1", "start v2", "stop v1"]
    get = prometheus.get_sample_value
    assert get("router_expert_swaps_total", {"result": "succeeded"}) == 1
    assert get("router_expert_engines") == 1
    assert get("router_expert_version_info", {"version": "v2", "model": "v2@v2"}) == 1
    await swappable.shutdown()
    assert events[-1] == "stop v2"


async def test_drain_first_holds_new_tickets_until_the_old_engine_is_gone_and_the_new_serves(
    tmp_path: Path,
) -> None:
    swappable, _reg, events, engines, _prom = _swappable(tmp_path, mode="drain_first")
    await swappable.start()
    engines[0].answer.clear()
    old_ticket = asyncio.create_task(swappable.classify("vpn", request_id="a"))
    await _eventually(lambda: engines[0].calls == 1)
    swap = asyncio.create_task(swappable.swap_to("v2"))
    await _eventually(lambda: swappable.routing_paused)
    waiting = asyncio.create_task(swappable.classify("vpn", request_id="b"))
    for _ in range(20):  # give the held ticket every chance to run
        await asyncio.sleep(0)
    assert not waiting.done() and events == ["start v1"]  # held, nothing started yet
    engines[0].answer.set()
    assert (await old_ticket).model_id == "v1@v1"
    assert (await waiting).model_id == "v2@v2"
    assert await swap is True
    assert events == ["start v1", "stop v1", "start v2"]  # never two engines at once
    await swappable.shutdown()


async def test_drain_first_loads_the_old_version_again_when_the_new_one_fails(
    tmp_path: Path,
) -> None:
    swappable, reg, events, _engines, prometheus = _swappable(
        tmp_path, mode="drain_first", fail={"v2"}
    )
    await swappable.start()
    reg.promote("v2", reason="a build vLLM cannot load")
    assert await swappable.swap_to("v2") is False
    assert events == ["start v1", "stop v1", "start v2", "start v1"]
    assert (await swappable.classify("vpn", request_id="c")).model_id == "v1@v1"
    assert prometheus.get_sample_value("router_expert_swaps_total", {"result": "refused"}) == 1
    assert reg.current_name() == "v2"  # the pointer is the promoter's, never the worker's
    await swappable.shutdown()


async def test_a_version_answering_other_queues_is_refused_before_any_engine_starts(
    tmp_path: Path,
) -> None:
    swappable, reg, events, _engines, prometheus = _swappable(tmp_path, mode="overlap")
    folder = tmp_path / "src-narrow"
    folder.mkdir()
    narrow = ExpertCard(
        kind="classifier",
        model_id="narrow",
        labels=tuple(TAX.labels[:-1]),
        prompt_template=CLASSIFIER_TEMPLATE,
        max_prompt_tokens=64,
    )
    (folder / CARD_FILENAME).write_text(narrow.to_json())
    reg.add(folder, version="narrow")
    await swappable.start()
    with structlog.testing.capture_logs() as logs:
        assert await swappable.swap_to("narrow") is False
    assert events == ["start v1"] and swappable.version == "v1"
    refused = next(e for e in logs if e["event"] == "expert_swap_refused")
    assert (refused["version"], refused["reason"]) == ("narrow", "label_mismatch")
    assert prometheus.get_sample_value("router_expert_swaps_total", {"result": "refused"}) == 1
    await swappable.shutdown()
