"""Zendesk tickets: the payload model and its mapping to `Ticket`.

Accepts a ticket object as the Tickets API returns it (bare, or in its `{"ticket": {...}}`
envelope), and the `{"ticket": {...}}` bodies that Zendesk webhooks commonly send. Webhook
bodies are built from placeholders, which render every value as text, so ids may be
numeric strings, tags a space-separated string and priorities capitalised. No I/O.

Mapping: id = `id`, subject = `subject` (else `raw_subject`, else the description's first
line), body = `description`, requester = `requester.email`/`requester.name` when a webhook
sends them, else `requester_id`, created_at = `created_at`, category_hints = `type`, then
`tags`; priority per `schemas.itsm.normalise`. Other keys of the ticket go to
`custom_fields` unchanged (including Zendesk's own `custom_fields` list); other keys of the
envelope go there as `webhook.<key>`. `type` is also kept there by name, so that an expert
can read it as a field.
"""

from __future__ import annotations

import re
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
)
from pydantic_core import PydanticCustomError

from schemas.itsm import normalise
from schemas.ticket import Priority, SourceSystem, Ticket

_DIGITS = re.compile(r"[0-9]{1,20}")


def _zendesk_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        text = ""
    if not _DIGITS.fullmatch(text):
        raise PydanticCustomError(
            "invalid_id",
            "invalid id {value}: expected a positive integer",
            {"value": normalise.shown(value)},
        )
    return text


def _tags(value: object) -> object:
    if value is None:
        return ()
    if isinstance(value, str):  # a webhook's {{ticket.tags}} placeholder
        return tuple(value.split())
    return value


def _zendesk_time(value: object) -> datetime:
    return normalise.timestamp(value, naive_is_utc=False)


ZendeskId = Annotated[
    str,
    BeforeValidator(_zendesk_id),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^[0-9]+$"}]}
    ),
]
ZendeskTags = Annotated[
    tuple[str, ...],
    BeforeValidator(_tags),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "string"}},
                {"type": "string", "description": "space-separated, as webhooks render it"},
                {"type": "null"},
            ]
        }
    ),
]
ZendeskPriority = Annotated[
    Priority | None,
    BeforeValidator(normalise.zendesk_priority),
    WithJsonSchema(
        {
            "anyOf": [
                {"enum": ["urgent", "high", "normal", "low", "Urgent", "High", "Normal", "Low"]},
                {"const": ""},
                {"type": "null"},
            ],
            "description": "urgent/high/normal/low, mapped to P1..P4",
        }
    ),
]
ZendeskTime = Annotated[
    AwareDatetime,
    BeforeValidator(_zendesk_time),
    WithJsonSchema(
        {
            "type": "string",
            "examples": ["2026-11-27T09:14:03Z"],
            "description": "ISO 8601 with a UTC offset",
        }
    ),
]


class ZendeskUser(BaseModel):
    """The requester object some webhook bodies carry."""

    model_config = ConfigDict(frozen=True, extra="allow")

    email: str | None = None
    name: str | None = None


class ZendeskTicket(BaseModel):
    """A Zendesk ticket object; unknown fields are kept and passed on as custom fields."""

    model_config = ConfigDict(frozen=True, extra="allow", title="ZendeskTicket")

    id: ZendeskId = Field(examples=[35436])
    subject: str | None = None
    raw_subject: str | None = None
    description: str | None = None
    priority: ZendeskPriority = None
    ticket_type: str | None = Field(default=None, alias="type")
    requester_id: ZendeskId | None = None
    requester: ZendeskUser | None = None
    tags: ZendeskTags = ()
    created_at: ZendeskTime

    def _subject(self) -> str:
        for candidate in (self.subject, self.raw_subject):
            if candidate and candidate.strip():
                return candidate
        lines = (self.description or "").strip().splitlines()
        return lines[0] if lines else ""

    def _requester(self) -> str | None:
        if self.requester is not None:
            for value in (self.requester.email, self.requester.name):
                if value and value.strip():
                    return value.strip()
        return self.requester_id

    def to_ticket(self, *, envelope_extra: dict[str, Any] | None = None) -> Ticket:
        """Map this ticket to the canonical ticket.

        Args:
            envelope_extra: unknown keys of the `{"ticket": ...}` envelope, if any.

        Raises:
            pydantic.ValidationError: the mapped values break a `Ticket` rule.
        """
        custom: dict[str, JsonValue] = {
            f"webhook.{key}": value for key, value in (envelope_extra or {}).items()
        }
        custom.update(self.model_extra or {})
        if self.ticket_type is not None:  # also kept by name: an expert may read it as a field
            custom.setdefault("type", self.ticket_type)
        return Ticket(
            id=self.id,
            source=SourceSystem.ZENDESK,
            created_at=self.created_at,
            subject=self._subject(),
            body=self.description or "",
            requester=self._requester(),
            priority=self.priority,
            category_hints=normalise.category_hints([self.ticket_type, *self.tags]),
            custom_fields=custom,
        )


class ZendeskEnvelope(BaseModel):
    """`{"ticket": {...}}`: the Tickets API's show response, and the usual webhook body."""

    model_config = ConfigDict(frozen=True, extra="allow", title="ZendeskEnvelope")

    ticket: ZendeskTicket

    def to_ticket(self) -> Ticket:
        """Map the enveloped ticket to the canonical ticket."""
        return self.ticket.to_ticket(envelope_extra=self.model_extra)


# Where each Ticket field comes from, so that errors name the payload's field.
TICKET_FIELD_ORIGINS: dict[str, str] = {
    "id": "id",
    "created_at": "created_at",
    "subject": "subject",
    "body": "description",
    "requester": "requester_id",
    "category_hints": "tags",
}


def is_envelope(payload: dict[str, Any]) -> bool:
    """True for a `{"ticket": {...}}` envelope rather than a bare ticket object."""
    return isinstance(payload.get("ticket"), dict)


def ticket_from_zendesk(payload: dict[str, Any]) -> Ticket:
    """Validate a Zendesk ticket payload (bare or enveloped) and map it.

    Raises:
        pydantic.ValidationError: wrong type or value in a field the router uses.
    """
    model = ZendeskEnvelope if is_envelope(payload) else ZendeskTicket
    return model.model_validate(payload).to_ticket()


def payload_json_schema() -> dict[str, Any]:
    """JSON Schema of what `ticket_from_zendesk` accepts."""
    adapter: TypeAdapter[ZendeskTicket | ZendeskEnvelope] = TypeAdapter(
        ZendeskTicket | ZendeskEnvelope
    )
    return adapter.json_schema()
