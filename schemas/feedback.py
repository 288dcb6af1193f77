"""What the service desk did with a routed ticket: the `Feedback` contract, and `LabeledTicket`.

Owns the canonical feedback event published on the feedback topic (`tickets.feedback`) and
the labeled example the feedback loop hands to retraining. The per-tool adapters live in
`schemas.itsm.*_update`, the bytes-to-feedback entry point in `schemas.feedback_parse`;
no I/O here, and nothing here knows the taxonomy (queue names are checked against it by
the parse entry point).

Outcomes, as the source system reports them (the router's own verdict, right or wrong, is
computed later by joining with its decision):

| outcome      | the event                                                          |
|--------------|--------------------------------------------------------------------|
| `confirmed`  | an agent of the ticket's current group took it (assignee set,      |
|              | work started) without moving it                                    |
| `reassigned` | the ticket moved to another group                                  |
| `resolved`   | the ticket was resolved or closed in its current group            |
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Self

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas.ticket import SourceSystem

# The same rule as `schemas.taxonomy.Queue.name`: a queue label.
QUEUE_NAME_PATTERN = r"^[a-z][a-z0-9_]{1,63}$"
MAX_ID_CHARS = 128
MAX_ACTOR_CHARS = 256
MAX_GROUP_CHARS = 256


class FeedbackOutcome(StrEnum):
    """What the service desk did (see the module's table)."""

    CONFIRMED = "confirmed"
    REASSIGNED = "reassigned"
    RESOLVED = "resolved"


def _plausible_time(value: datetime) -> datetime:
    if value.year < 1990:
        raise ValueError("before 1990, not a real feedback time")
    return value


FeedbackTime = Annotated[AwareDatetime, AfterValidator(_plausible_time)]


class Feedback(BaseModel):
    """One service-desk action on a ticket that says which queue it belongs to.

    Publish it on the feedback topic keyed by `ticket_id` (so one ticket's events stay in
    order); the ITSM adapters build it from what each tool sends.

    Attributes:
        ticket_id: the ticket's id as the router saw it (`Ticket.id`: INC0012345, ITSM-42,
            81723); the key the router published its decision under.
        final_queue: the taxonomy queue the ticket is in after this event.
        previous_queue: the queue it was in before (reassignments), when its group maps
            to a queue; None otherwise.
        outcome: confirmed, reassigned or resolved.
        actor: who acted (user name, email or id as the source gives it).
        occurred_at: when the source system recorded the action, timezone-aware.
        source: the ITSM tool that reported it.
        final_group: the source's own group (id or name) behind `final_queue`, for audit.
        previous_group: the source's own previous group, when the event carries it.
        event_id: the source's id of this event (changelog id, audit id), when it has one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    ticket_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    final_queue: str = Field(pattern=QUEUE_NAME_PATTERN)
    previous_queue: str | None = Field(default=None, pattern=QUEUE_NAME_PATTERN)
    outcome: FeedbackOutcome
    actor: str | None = Field(default=None, max_length=MAX_ACTOR_CHARS)
    occurred_at: FeedbackTime
    source: SourceSystem = SourceSystem.CANONICAL
    final_group: str | None = Field(default=None, max_length=MAX_GROUP_CHARS)
    previous_group: str | None = Field(default=None, max_length=MAX_GROUP_CHARS)
    event_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)

    @model_validator(mode="after")
    def _reassignment_moves(self) -> Self:
        if self.outcome is FeedbackOutcome.REASSIGNED and self.previous_queue == self.final_queue:
            raise ValueError("previous_queue: a reassignment must move the ticket to another queue")
        return self


class LabeledTicket(BaseModel):
    """A ticket whose queue a human settled: one training example gathered from feedback.

    Serialised one per line (JSONL), it is a data file `ticket-router expert build --data`
    reads as is (`text` and `label` fields).

    Attributes:
        ticket_id: the ticket's id; one example per ticket (the latest feedback wins).
        text: the text the router classified (subject, then body).
        label: the human's final queue.
        labeled_at: when the latest feedback on the ticket occurred.
        decided_by: the expert version whose decision the feedback was joined with.
        fields: the ticket's structured field values as the expert reads them, by field
            address (`priority`, `category_hints`, `custom_fields.cmdb_ci`: see
            `expert.fields`; a field the ticket lacked is absent); None when the decision
            was logged before the log kept fields (a field expert cannot learn from it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ticket_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    text: str
    label: str = Field(pattern=QUEUE_NAME_PATTERN)
    labeled_at: AwareDatetime
    decided_by: str | None = None
    fields: dict[str, tuple[str, ...]] | None = None
