"""The seams of the pipeline: what it needs from the engine, the consumer and the producer.

Small Protocols, so the pipeline runs on real vLLM and Kafka in production and on in-memory
fakes in unit tests, and `VersionedPrediction`, the answer of an engine that can change
expert version while running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from expert.serving import Prediction
from schemas.ticket import Ticket
from worker.kafka_io import TP, InboundRecord


class Engine(Protocol):
    """What the pipeline needs from the inference engine."""

    @property
    def model_id(self) -> str: ...

    @property
    def adapter_id(self) -> str | None: ...

    @property
    def recommended_threshold(self) -> float | None:
        """The confidence threshold the expert's card recommends (None: none recorded)."""
        ...

    @property
    def recommended_queue_thresholds(self) -> Mapping[str, float]:
        """The card's per-queue thresholds (empty: the recommended one for every queue)."""
        ...

    async def classify(self, ticket: Ticket | str, *, request_id: str) -> Prediction:
        """The expert's answer for a ticket (read as its card says) or an expert input."""
        ...

    def load(self) -> tuple[int, int]: ...


@dataclass(frozen=True, slots=True)
class VersionedPrediction(Prediction):
    """A prediction that names the expert version that made it.

    An engine that can change version while running (`worker.swap.SwappableExpert`) answers
    with it, so a ticket answered by the old version just before a swap is labelled and
    thresholded by that version, not by the one serving when the ticket is published.
    """

    model_id: str = ""
    adapter_id: str | None = None
    recommended_threshold: float | None = None
    recommended_queue_thresholds: Mapping[str, float] | None = None


class Source(Protocol):
    """What the pipeline needs from the inbound consumer."""

    async def poll(self, *, max_records: int, timeout_s: float) -> list[InboundRecord]: ...

    async def pause(self, tps: Sequence[TP]) -> None: ...

    async def resume(self, positions: Mapping[TP, int]) -> None: ...

    async def commit(self, offsets: Mapping[TP, int]) -> None: ...

    async def lag(self) -> dict[TP, int]: ...

    async def group_metadata(self) -> object: ...

    async def rewind(self, tps: Sequence[TP]) -> None: ...


class Publisher(Protocol):
    """What the pipeline needs from the producer."""

    async def publish(
        self, *, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[int, int]: ...

    async def flush(self, *, timeout_s: float) -> int: ...

    # Exactly-once mode only.
    def begin_transaction(self) -> None: ...

    async def commit_transaction(
        self, offsets: Mapping[TP, int], group_metadata: object
    ) -> None: ...

    def commit_transaction_now(self, offsets: Mapping[TP, int], group_metadata: object) -> None: ...

    async def abort_transaction(self) -> None: ...

    def abort_transaction_now(self) -> None: ...
