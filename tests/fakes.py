"""In-memory stand-ins for the pipeline's Protocols: fast unit tests beside the real ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from expert.serving import EngineFailure, Prediction
from schemas.ticket import Ticket
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
        queue_thresholds: dict[str, float] | None = None,
    ) -> None:
        self.labels = list(labels)
        self.decide = decide
        self.queue_thresholds = dict(queue_thresholds or {})
        self.delay_s = delay_s
        self.fail = fail
        self.calls = 0

    @property
    def model_id(self) -> str:
        return "fake-expert"

    @property
    def adapter_id(self) -> str | None:
        return None

    @property
    def recommended_threshold(self) -> float | None:
        return None

    @property
    def recommended_queue_thresholds(self) -> dict[str, float]:
        return self.queue_thresholds

    async def classify(self, ticket: Ticket | str, *, request_id: str) -> Prediction:
        # A fake text expert: it reads what a real one without fields reads.
        text = ticket if isinstance(ticket, str) else ticket.text()
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
    max_value_bytes: int | None = None

    async def publish(
        self, *, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[int, int]:
        if topic in self.failing_topics:
            raise RetryableError(f"broker down for {topic}")
        if self.max_value_bytes is not None and len(value) > self.max_value_bytes:
            from worker.errors import RecordTooLargeError

            raise RecordTooLargeError(f"record too large for {topic}")
        self.sent.append((topic, key, value, dict(headers)))
        return (0, len(self.sent) - 1)

    async def flush(self, *, timeout_s: float) -> int:
        return 0

    def topics(self) -> list[str]:
        return [t for t, *_ in self.sent]


@dataclass
class TransactionalInMemoryPublisher(InMemoryPublisher):
    """Keeps records in the open transaction until commit; abort discards them."""

    open_txn: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] | None = None
    committed_offsets: list[dict[TP, int]] = field(default_factory=list)
    aborted: int = 0
    fail_next_commit: bool = False

    def begin_transaction(self) -> None:
        assert self.open_txn is None, "transaction already open"
        self.open_txn = []

    async def publish(
        self, *, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[int, int]:
        assert self.open_txn is not None, "produce outside a transaction"
        self.open_txn.append((topic, key, value, dict(headers)))
        return (0, len(self.open_txn) - 1)

    def commit_transaction_now(self, offsets: Mapping[TP, int], group_metadata: object) -> None:
        from worker.errors import TransactionAbortable

        assert self.open_txn is not None
        if self.fail_next_commit:
            self.fail_next_commit = False
            raise TransactionAbortable("broker said abort")
        self.sent.extend(self.open_txn)
        self.committed_offsets.append(dict(offsets))
        self.open_txn = None

    async def commit_transaction(self, offsets: Mapping[TP, int], group_metadata: object) -> None:
        self.commit_transaction_now(offsets, group_metadata)

    def abort_transaction_now(self) -> None:
        self.open_txn = None
        self.aborted += 1

    async def abort_transaction(self) -> None:
        self.abort_transaction_now()


@dataclass
class RewindableInMemorySource(InMemorySource):
    """An InMemorySource that can seek back to the last committed offsets (one partition)."""

    publisher: TransactionalInMemoryPublisher | None = None
    log: list[InboundRecord] = field(default_factory=list)
    rewinds: int = 0

    def __post_init__(self) -> None:
        self.log = list(self.records)

    async def group_metadata(self) -> object:
        return "group-metadata"

    async def rewind(self, tps: Sequence[TP]) -> None:
        self.rewinds += 1
        committed_next = 0
        for offsets in self.publisher.committed_offsets if self.publisher else []:
            committed_next = max([committed_next, *offsets.values()])
        self.records = [r for r in self.log if r.offset >= committed_next]
