"""In-memory stand-ins for the pipeline's Protocols: fast unit tests beside the real ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from expert.engine import EngineFailure, Prediction
from worker.errors import RetryableError
from worker.kafka_io import TP, InboundRecord


class FakeEngine:
    """Answers with `decide(text) -> (label, confidence)`; spreads the rest over other labels."""

    def __init__(
        self,
        labels: Sequence[str],
        decide: Callable[[str], tuple[str, float]],
        *,
        delay_s: float = 0.0,
        fail: bool = False,
    ) -> None:
        self.labels = list(labels)
        self.decide = decide
        self.delay_s = delay_s
        self.fail = fail
        self.calls = 0

    @property
    def model_id(self) -> str:
        return "fake-expert"

    @property
    def adapter_id(self) -> str | None:
        return None

    async def classify(self, text: str, *, request_id: str) -> Prediction:
        self.calls += 1
        if self.fail:
            raise EngineFailure("engine core died")
        await asyncio.sleep(self.delay_s)
        label, conf = self.decide(text)
        rest = (1.0 - conf) / (len(self.labels) - 1)
        probs = {lab: (conf if lab == label else rest) for lab in self.labels}
        return Prediction(label=label, confidence=conf, probabilities=probs, latency_s=self.delay_s)

    def load(self) -> tuple[int, int]:
        return (0, 0)


@dataclass
class InMemorySource:
    """Hands out queued records; records commits."""

    records: list[InboundRecord]
    commits: list[dict[TP, int]] = field(default_factory=list)
    paused: bool = False
    pauses: int = 0

    async def poll(self, *, max_records: int, timeout_s: float) -> list[InboundRecord]:
        await asyncio.sleep(0)
        if self.paused or max_records <= 0 or not self.records:
            await asyncio.sleep(0.001)
            return []
        batch, self.records = self.records[:max_records], self.records[max_records:]
        return batch

    async def pause(self, tps: Sequence[TP]) -> None:
        self.paused = True
        self.pauses += 1

    async def resume(self, positions: Mapping[TP, int]) -> None:
        self.paused = False

    async def commit(self, offsets: Mapping[TP, int]) -> None:
        self.commits.append(dict(offsets))

    async def lag(self) -> dict[TP, int]:
        return {}

    def last_committed(self) -> dict[TP, int]:
        out: dict[TP, int] = {}
        for c in self.commits:
            out.update(c)
        return out


@dataclass
class InMemoryPublisher:
    """Stores published records; can fail a topic's deliveries."""

    sent: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = field(default_factory=list)
    failing_topics: set[str] = field(default_factory=set)

    async def publish(
        self, *, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[int, int]:
        if topic in self.failing_topics:
            raise RetryableError(f"broker down for {topic}")
        self.sent.append((topic, key, value, dict(headers)))
        return (0, len(self.sent) - 1)

    async def flush(self, *, timeout_s: float) -> int:
        return 0

    def topics(self) -> list[str]:
        return [t for t, *_ in self.sent]
