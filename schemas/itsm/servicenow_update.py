"""ServiceNow incident updates: the payload a connector forwards when an incident changes.

Accepts the incident record as the Table API returns it after the update (bare or in its
`{"result": {...}}` envelope; reference fields as a sys_id or a `{"value",
"display_value", "link"}` object), as an after-update business rule or a Table API poller
forwards it. The Table API record holds no previous values, so the connector adds the
previous values of the fields it watches in `previous` (the business rule's `previous`
GlideRecord): `{"previous": {"assignment_group": ..., "state": ...}}`. No I/O.

Reading (the group is `assignment_group`; a reference's sys_id and display name are both
tried against the group map):

- `previous.assignment_group` given and different from `assignment_group` -> reassigned
  (a cleared group says nothing);
- else `state` (or `incident_state`) moved to 6 Resolved / 7 Closed -> resolved;
- else `state` moved to 2 In Progress with `assigned_to` set -> confirmed;
- anything else (a comment, a priority change) says nothing about the queue.

Actor = `sys_updated_by`; occurred_at = `sys_updated_on` (UTC); ticket id = `number`
(else `sys_id`), as for inbound incidents; event id = `sys_id:sys_mod_count`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from schemas.feedback import FeedbackOutcome
from schemas.itsm.desk_event import DeskEvent, GroupRef, actor_ids
from schemas.itsm.servicenow import Reference, ServiceNowReference, ServiceNowTime
from schemas.ticket import SourceSystem

# Choice values of incident.state, as numbers (default) or display values.
_RESOLVED_STATES = frozenset({"6", "7", "resolved", "closed"})
_IN_PROGRESS_STATES = frozenset({"2", "in progress", "work in progress"})


def _state(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip().casefold()
    return None


def _group(ref: ServiceNowReference | None) -> GroupRef | None:
    if ref is None:
        return None
    return GroupRef.of(ref.value, ref.display_value)


class ServiceNowPrevious(BaseModel):
    """Previous values of the watched fields (only those the update changed, or all)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    assignment_group: Reference = None
    state: str | int | None = None
    assigned_to: Reference = None


class ServiceNowIncidentUpdate(BaseModel):
    """An updated incident record; unknown fields are allowed and ignored."""

    model_config = ConfigDict(frozen=True, extra="allow", title="ServiceNowIncidentUpdate")

    number: str = Field(min_length=1, examples=["INC0012345"])
    sys_id: str | None = None
    assignment_group: Reference = None
    assigned_to: Reference = None
    state: str | int | None = None
    incident_state: str | int | None = None
    sys_updated_on: ServiceNowTime
    sys_updated_by: str | None = None
    sys_mod_count: str | int | None = None
    previous: ServiceNowPrevious | None = None

    @model_validator(mode="before")
    @classmethod
    def _number_falls_back_to_sys_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("number") in (None, ""):
            sys_id = data.get("sys_id")
            if isinstance(sys_id, str) and sys_id.strip():
                data = {**data, "number": sys_id}
        return data

    def _outcome(self) -> FeedbackOutcome | None:
        group = _group(self.assignment_group)
        previous = self.previous
        if previous is not None and "assignment_group" in previous.model_fields_set:
            before = _group(previous.assignment_group)
            if group is not None and not group.same_as(before):
                return FeedbackOutcome.REASSIGNED
        state = _state(self.state) or _state(self.incident_state)
        before_state = _state(previous.state) if previous is not None else None
        if state is None or state == before_state:
            return None
        if state in _RESOLVED_STATES:
            return FeedbackOutcome.RESOLVED
        if state in _IN_PROGRESS_STATES and self.assigned_to is not None:
            return FeedbackOutcome.CONFIRMED
        return None

    def to_event(self) -> DeskEvent:
        """What this update says about the incident's group."""
        outcome = self._outcome()
        previous = self.previous
        event_id = (
            f"{self.sys_id}:{self.sys_mod_count}"
            if self.sys_id and self.sys_mod_count not in (None, "")
            else None
        )
        return DeskEvent(
            ticket_id=self.number.strip(),
            source=SourceSystem.SERVICENOW,
            outcome=outcome,
            group=_group(self.assignment_group),
            previous_group=_group(previous.assignment_group) if previous is not None else None,
            actors=actor_ids(self.sys_updated_by),
            occurred_at=self.sys_updated_on,
            event_id=event_id,
        )


class ServiceNowUpdateResponse(BaseModel):
    """The Table API envelope `{"result": {...updated incident...}}`."""

    model_config = ConfigDict(frozen=True, extra="allow", title="ServiceNowUpdateResponse")

    result: ServiceNowIncidentUpdate

    def to_event(self) -> DeskEvent:
        """What the enveloped update says about the incident's group."""
        return self.result.to_event()


def is_update(payload: dict[str, Any]) -> bool:
    """True for an updated incident record (bare or enveloped): it has `sys_updated_on`."""
    record = payload.get("result") if isinstance(payload.get("result"), dict) else payload
    return (
        isinstance(record, dict)
        and "sys_updated_on" in record
        and ("number" in record or "sys_id" in record)
    )


def event_from_servicenow(payload: dict[str, Any]) -> DeskEvent:
    """Validate an incident update and reduce it to a `DeskEvent`.

    Raises:
        pydantic.ValidationError: wrong type or value in a field the router uses.
    """
    enveloped = isinstance(payload.get("result"), dict) and "number" not in payload
    model = ServiceNowUpdateResponse if enveloped else ServiceNowIncidentUpdate
    return model.model_validate(payload).to_event()


def payload_json_schema() -> dict[str, Any]:
    """JSON Schema of what `event_from_servicenow` accepts."""
    adapter: TypeAdapter[ServiceNowIncidentUpdate | ServiceNowUpdateResponse] = TypeAdapter(
        ServiceNowIncidentUpdate | ServiceNowUpdateResponse
    )
    return adapter.json_schema()
