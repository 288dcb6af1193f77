"""Zendesk ticket events: the webhook Zendesk sends when a ticket's group, status or agent changes.

Accepts the body of an event-subscribed webhook (`zendesk_event_version` 2022-11-06):
`{"type": "zen:event-type:ticket.group_assignment_changed", "id", "time", "subject":
"zen:ticket:<id>", "detail": {"id", "group_id", "status", "actor_id", ...}, "event":
{"current", "previous"}}`. Ids arrive as numeric strings (or numbers); an event's
`current` / `previous` may be an id or an object with `id` and `name`. No I/O.

Reading:

- `ticket.group_assignment_changed` to a group -> reassigned (group = `event.current`,
  previous = `event.previous`);
- `ticket.status_changed` to solved or closed -> resolved, in `detail.group_id`;
- `ticket.agent_assignment_changed` to an agent -> confirmed, in `detail.group_id`;
- any other ticket event says nothing about the queue.

Actor = `detail.actor_id`; occurred_at = `time`; ticket id = `detail.id`; event id = `id`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from schemas.feedback import FeedbackOutcome
from schemas.itsm.desk_event import DeskEvent, GroupRef, actor_ids
from schemas.itsm.zendesk import ZendeskId, ZendeskTime
from schemas.ticket import SourceSystem

EVENT_PREFIX = "zen:event-type:ticket."
GROUP_CHANGED = EVENT_PREFIX + "group_assignment_changed"
STATUS_CHANGED = EVENT_PREFIX + "status_changed"
AGENT_CHANGED = EVENT_PREFIX + "agent_assignment_changed"
_DONE_STATUSES = frozenset({"solved", "closed"})


def _ref(value: JsonValue) -> GroupRef | None:
    if isinstance(value, dict):
        return GroupRef.of(value.get("id"), value.get("name"))
    return GroupRef.of(value, None)


class ZendeskEventDetail(BaseModel):
    """The ticket as it is after the event (only the fields read here are declared)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: ZendeskId = Field(examples=["35436"])
    group_id: str | int | None = None
    status: str | None = None
    actor_id: str | int | None = None


class ZendeskEventChange(BaseModel):
    """The event's `current` and `previous` values."""

    model_config = ConfigDict(frozen=True, extra="allow")

    current: JsonValue = None
    previous: JsonValue = None


class ZendeskTicketEvent(BaseModel):
    """A Zendesk ticket event webhook body."""

    model_config = ConfigDict(frozen=True, extra="allow", title="ZendeskTicketEvent")

    type: str = Field(pattern=r"^zen:event-type:ticket\.", examples=[GROUP_CHANGED])
    id: str | None = Field(default=None, max_length=128)
    time: ZendeskTime
    subject: str | None = None
    detail: ZendeskEventDetail
    event: ZendeskEventChange = ZendeskEventChange()

    def _outcome(self) -> tuple[FeedbackOutcome | None, GroupRef | None, GroupRef | None]:
        current_group = GroupRef.of(self.detail.group_id)
        if self.type == GROUP_CHANGED:
            group = _ref(self.event.current)
            if group is None:
                return None, None, None
            return FeedbackOutcome.REASSIGNED, group, _ref(self.event.previous)
        if current_group is None:
            return None, None, None
        status = self.event.current if isinstance(self.event.current, str) else ""
        if self.type == STATUS_CHANGED and status.casefold() in _DONE_STATUSES:
            return FeedbackOutcome.RESOLVED, current_group, None
        if self.type == AGENT_CHANGED and _ref(self.event.current) is not None:
            return FeedbackOutcome.CONFIRMED, current_group, None
        return None, current_group, None

    def to_event(self) -> DeskEvent:
        """What this event says about the ticket's group."""
        outcome, group, previous = self._outcome()
        return DeskEvent(
            ticket_id=self.detail.id,
            source=SourceSystem.ZENDESK,
            outcome=outcome,
            group=group,
            previous_group=previous,
            actors=actor_ids(self.detail.actor_id),
            occurred_at=self.time,
            event_id=self.id,
        )


def is_update(payload: dict[str, Any]) -> bool:
    """True for a ticket event webhook body."""
    kind = payload.get("type")
    return isinstance(kind, str) and kind.startswith(EVENT_PREFIX) and "detail" in payload


def event_from_zendesk(payload: dict[str, Any]) -> DeskEvent:
    """Validate a ticket event body and reduce it to a `DeskEvent`.

    Raises:
        pydantic.ValidationError: wrong type or value in a field the router uses.
    """
    return ZendeskTicketEvent.model_validate(payload).to_event()


def payload_json_schema() -> dict[str, Any]:
    """JSON Schema of what `event_from_zendesk` accepts."""
    return ZendeskTicketEvent.model_json_schema()
