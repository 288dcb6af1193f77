"""What the router decided and what it publishes: `RoutingDecision` and `RoutedTicket`.

Owns the outbound contracts for queue and triage topics. No I/O.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas.taxonomy import QueueMode
from schemas.ticket import Ticket


class Disposition(StrEnum):
    """Where a decided ticket went."""

    ROUTED = "routed"
    TRIAGE = "triage"
    # A shadow decision (shadow topic only): what the router would have done for a queue in
    # shadow mode; the ticket itself went to triage.
    SHADOW = "shadow"


class TriageReason(StrEnum):
    """Why a ticket went to human triage instead of its queue."""

    LOW_CONFIDENCE = "low_confidence"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    # Confident, but its queue is in recommend mode: the decision is a suggestion.
    RECOMMEND_MODE = "recommend_mode"
    # Its queue is in shadow mode: the desk dispatches it; the decision is on the shadow topic.
    SHADOW_MODE = "shadow_mode"


SNIPPET_MAX_CHARS = 160


class QueueSuggestion(BaseModel):
    """One of the expert's best guesses for a ticket.

    Attributes:
        queue: a taxonomy queue name.
        probability: the expert's probability of it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue: str
    probability: float = Field(ge=0.0, le=1.0)


class SimilarTicket(BaseModel):
    """A past ticket like this one, from the expert's index: its training rows and the
    tickets the desk settled before the version was built.

    Attributes:
        ticket_id: the past ticket's id (its row number, "row-N", when its data had none).
        snippet: the start of its text (at most `SNIPPET_MAX_CHARS` characters).
        queue: the queue it finally went to.
        similarity: cosine similarity of the two tickets' vectors (1: the same words).
        settled_at: when the desk settled it (None: an original training row).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ticket_id: str
    snippet: str = Field(max_length=SNIPPET_MAX_CHARS)
    queue: str
    similarity: float = Field(ge=0.0, le=1.0)
    settled_at: AwareDatetime | None = None


def top_suggestions(probabilities: dict[str, float], *, n: int = 3) -> tuple[QueueSuggestion, ...]:
    """The `n` most probable queues of a distribution, most probable first (ties by name)."""
    ranked = sorted(probabilities.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return tuple(
        QueueSuggestion(queue=queue, probability=min(1.0, max(0.0, p))) for queue, p in ranked
    )


class RoutingDecision(BaseModel):
    """The expert's answer for one ticket.

    Attributes:
        queue: the most probable queue (always a taxonomy queue name); for a ticket that
            missed its deadline, None.
        confidence: what the triage thresholds read: the probability that `queue` is
            right, from the expert's routing score when its card has one (it weighs the
            similar past tickets too, so it can differ from `probabilities[queue]`), else
            the probability of `queue`.
        probabilities: probability of every queue; sums to 1.
        model_id: the expert's identifier (model card name + hash).
        adapter_id: the LoRA adapter that answered, if any.
        engine_latency_s: time from submission to the engine until its answer.
        suggestions: the most probable queues (up to three), most probable first; empty
            when the engine did not answer.
        similar_tickets: the past tickets most like this one, most similar first; filled on
            triage records when the expert has a similar-ticket index, else empty.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue: str | None
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: dict[str, float] = Field(default_factory=dict)
    model_id: str
    adapter_id: str | None = None
    engine_latency_s: float = Field(ge=0.0)
    suggestions: tuple[QueueSuggestion, ...] = ()
    similar_tickets: tuple[SimilarTicket, ...] = ()

    @model_validator(mode="after")
    def _probabilities_are_a_distribution(self) -> Self:
        if self.probabilities:
            total = math.fsum(self.probabilities.values())
            if not math.isclose(total, 1.0, abs_tol=1e-3):
                raise ValueError(f"probabilities: must sum to 1, got {total:.6f}")
            if self.queue is not None and self.queue not in self.probabilities:
                raise ValueError(f"queue: {self.queue!r} has no probability")
        return self


class RoutedTicket(BaseModel):
    """A ticket with its decision, as published to a queue topic or the triage topic.

    Attributes:
        ticket: the canonical ticket.
        decision: the expert's decision.
        disposition: routed to its queue, or sent to triage; "shadow" on the shadow topic.
        triage_reason: why it went to triage (None when routed). On a shadow record:
            low_confidence when autoroute would have triaged it, None when it would have
            routed it.
        mode: the mode of the predicted queue that applied (None: records written before
            modes, or a deadline's triage).
        topic: the topic it was published to.
        source_topic, source_partition, source_offset: the inbound record it came from.
        received_at: when the worker read it from Kafka.
        decided_at: when the engine answered.
        published_at: when the worker handed it to the producer.
        enqueued_at: the inbound record's Kafka timestamp, when the broker gave one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ticket: Ticket
    decision: RoutingDecision
    disposition: Disposition
    triage_reason: TriageReason | None = None
    mode: QueueMode | None = None
    topic: str
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    enqueued_at: AwareDatetime | None = None
    received_at: AwareDatetime
    decided_at: AwareDatetime
    published_at: AwareDatetime

    @model_validator(mode="after")
    def _triage_has_reason(self) -> Self:
        if self.disposition is Disposition.SHADOW:
            if self.triage_reason not in (None, TriageReason.LOW_CONFIDENCE):
                raise ValueError("triage_reason: a shadow record's is low_confidence or none")
            return self
        if (self.disposition is Disposition.TRIAGE) != (self.triage_reason is not None):
            raise ValueError("triage_reason: required exactly when disposition is 'triage'")
        return self
