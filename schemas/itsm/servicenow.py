"""ServiceNow incidents: the payload model and its mapping to `Ticket`.

Accepts an incident record as the Table API returns it (`GET /api/now/table/incident`,
default `sysparm_display_value=false`), either bare or in its `{"result": {...}}` envelope,
or the same record forwarded by a connector. Reference fields (`caller_id`,
`assignment_group`) may be a sys_id string or a `{"value", "display_value"}` /
`{"link", "value"}` object. Owns nothing but this mapping; no I/O.

Mapping: id = `number` (or `sys_id` when a connector drops the number), subject =
`short_description`, body = `description`, requester = caller's display value (else its
sys_id), created_at = `opened_at` (else `sys_created_on`), category_hints = `category`,
`subcategory`, assignment group; priority/impact/urgency per `schemas.itsm.normalise`.
Every other field, and `sys_id`, goes to `custom_fields` unchanged; `category` and
`subcategory` are also kept there by name, so that an expert can read them as fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.itsm import normalise
from schemas.ticket import Level, Priority, SourceSystem, Ticket


class ServiceNowReference(BaseModel):
    """A reference field: the target's sys_id (`value`), its display name, its API link."""

    model_config = ConfigDict(frozen=True, extra="allow")

    value: str = ""
    display_value: str | None = None
    link: str | None = None

    def label(self) -> str | None:
        """The display name when the record carries one, else the sys_id; None if empty."""
        return (self.display_value or "").strip() or self.value.strip() or None


def _as_reference(value: object) -> object:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return {"value": value}
    if isinstance(value, dict):
        return value
    raise PydanticCustomError(
        "invalid_reference",
        "invalid reference {value}: expected a sys_id string or a {{value, display_value}} object",
        {"value": normalise.shown(value)},
    )


def _servicenow_time(value: object) -> datetime:
    return normalise.timestamp(value, naive_is_utc=True)


_REFERENCE_SCHEMA: dict[str, JsonValue] = {
    "anyOf": [
        {"type": "string", "description": "sys_id of the referenced record"},
        {
            "type": "object",
            "properties": {
                "value": {"type": "string"},
                "display_value": {"type": ["string", "null"]},
                "link": {"type": ["string", "null"]},
            },
        },
        {"type": "null"},
    ]
}

Reference = Annotated[
    ServiceNowReference | None, BeforeValidator(_as_reference), WithJsonSchema(_REFERENCE_SCHEMA)
]
ServiceNowPriority = Annotated[
    Priority | None,
    BeforeValidator(normalise.servicenow_priority),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "examples": ["1", "1 - Critical"]},
                {"type": "integer", "minimum": 1, "maximum": 5},
                {"type": "null"},
            ],
            "description": "1 (Critical) .. 5 (Planning), mapped to P1..P5",
        }
    ),
]
ServiceNowLevel = Annotated[
    Level | None,
    BeforeValidator(normalise.servicenow_level),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "examples": ["1", "2 - Medium"]},
                {"type": "integer", "minimum": 1, "maximum": 3},
                {"type": "null"},
            ],
            "description": "1 (High) .. 3 (Low), mapped to high/medium/low",
        }
    ),
]
ServiceNowTime = Annotated[
    AwareDatetime,
    BeforeValidator(_servicenow_time),
    WithJsonSchema(
        {
            "type": "string",
            "examples": ["2026-11-27 09:14:03", "2026-11-27T09:14:03Z"],
            "description": "'YYYY-MM-DD HH:MM:SS' in UTC (Table API), or ISO 8601",
        }
    ),
]


class ServiceNowIncident(BaseModel):
    """One incident record; unknown fields are kept and passed on as custom fields."""

    model_config = ConfigDict(frozen=True, extra="allow", title="ServiceNowIncident")

    number: str = Field(examples=["INC0012345"])
    sys_id: str | None = None
    short_description: str
    description: str | None = None
    caller_id: Reference = None
    assignment_group: Reference = None
    priority: ServiceNowPriority = None
    impact: ServiceNowLevel = None
    urgency: ServiceNowLevel = None
    category: str | None = None
    subcategory: str | None = None
    opened_at: ServiceNowTime
    sys_created_on: ServiceNowTime | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_fallbacks(cls, data: Any) -> Any:
        # Some connectors drop `number` or `opened_at`; the record's own key and creation
        # time stand in for them. Missing both still fails on `number` / `opened_at`.
        if not isinstance(data, dict):
            return data
        for field, fallback in (("number", "sys_id"), ("opened_at", "sys_created_on")):
            substitute = data.get(fallback)
            if data.get(field) in (None, "") and isinstance(substitute, str) and substitute.strip():
                data = {**data, field: substitute}
        return data

    def to_ticket(self) -> Ticket:
        """Map this incident to the canonical ticket.

        Raises:
            pydantic.ValidationError: the mapped values break a `Ticket` rule.
        """
        custom: dict[str, JsonValue] = dict(self.model_extra or {})
        if self.sys_id:
            custom["sys_id"] = self.sys_id
        for name, value in (("category", self.category), ("subcategory", self.subcategory)):
            if value is not None:
                custom.setdefault(name, value)
        group = self.assignment_group.label() if self.assignment_group else None
        return Ticket(
            id=self.number,
            source=SourceSystem.SERVICENOW,
            created_at=self.opened_at,
            subject=self.short_description,
            body=self.description or "",
            requester=self.caller_id.label() if self.caller_id else None,
            priority=self.priority,
            impact=self.impact,
            urgency=self.urgency,
            category_hints=normalise.category_hints([self.category, self.subcategory, group]),
            custom_fields=custom,
        )


class ServiceNowTableResponse(BaseModel):
    """The Table API's single-record envelope: `{"result": {...incident...}}`."""

    model_config = ConfigDict(frozen=True, extra="allow", title="ServiceNowTableResponse")

    result: ServiceNowIncident

    def to_ticket(self) -> Ticket:
        """Map the enveloped incident to the canonical ticket."""
        return self.result.to_ticket()


# Where each Ticket field comes from, so that errors name the payload's field.
TICKET_FIELD_ORIGINS: dict[str, str] = {
    "id": "number",
    "created_at": "opened_at",
    "subject": "short_description",
    "body": "description",
    "requester": "caller_id",
    "category_hints": "category",
}


def is_envelope(payload: dict[str, Any]) -> bool:
    """True for the Table API's `{"result": {...}}` envelope rather than a bare record."""
    return isinstance(payload.get("result"), dict) and "short_description" not in payload


def ticket_from_servicenow(payload: dict[str, Any]) -> Ticket:
    """Validate a ServiceNow incident payload (bare or enveloped) and map it.

    Raises:
        pydantic.ValidationError: wrong type or value in a field the router uses.
    """
    model = ServiceNowTableResponse if is_envelope(payload) else ServiceNowIncident
    return model.model_validate(payload).to_ticket()


def payload_json_schema() -> dict[str, Any]:
    """JSON Schema of what `ticket_from_servicenow` accepts."""
    adapter: TypeAdapter[ServiceNowIncident | ServiceNowTableResponse] = TypeAdapter(
        ServiceNowIncident | ServiceNowTableResponse
    )
    return adapter.json_schema()
