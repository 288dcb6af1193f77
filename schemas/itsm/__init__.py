"""ITSM adapters: one module per source system, each turning its payload into a `Ticket`.

Owns the registry of formats (`ADAPTERS`). Decoding bytes and classifying errors belong to
`schemas.parse`; detection rules to `schemas.itsm.detect`. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from schemas.itsm import jira, servicenow, zendesk
from schemas.ticket import SourceSystem, Ticket


@dataclass(frozen=True, slots=True)
class Adapter:
    """How one payload format becomes a `Ticket`.

    Attributes:
        source: the source system.
        schema_name: base name of the exported JSON Schema file.
        to_ticket: validates a decoded payload and maps it; raises `ValidationError`.
        ticket_field_origins: the payload field each `Ticket` field comes from, so that a
            `Ticket` rule broken by a mapped value is reported at the payload's field.
        payload_json_schema: the JSON Schema of the accepted payloads.
        envelope_key: the key of the format's envelope (`result`, `ticket`), if it has one.
        is_enveloped: whether a payload comes in that envelope.
    """

    source: SourceSystem
    schema_name: str
    to_ticket: Callable[[dict[str, Any]], Ticket]
    ticket_field_origins: Mapping[str, str]
    payload_json_schema: Callable[[], dict[str, Any]]
    envelope_key: str | None = None
    is_enveloped: Callable[[dict[str, Any]], bool] = lambda _payload: False

    def origin_of(self, field: str, payload: dict[str, Any]) -> str:
        """The payload path a `Ticket` field was mapped from (`ticket.<field>` if unmapped)."""
        origin = self.ticket_field_origins.get(field)
        if origin is None:
            return f"ticket.{field}"
        if self.envelope_key is not None and self.is_enveloped(payload):
            return f"{self.envelope_key}.{origin}"
        return origin


def _canonical(payload: dict[str, Any]) -> Ticket:
    return Ticket.model_validate(payload)


def _canonical_schema() -> dict[str, Any]:
    return Ticket.model_json_schema()


ADAPTERS: Mapping[SourceSystem, Adapter] = MappingProxyType(
    {
        SourceSystem.SERVICENOW: Adapter(
            source=SourceSystem.SERVICENOW,
            schema_name="servicenow-incident",
            to_ticket=servicenow.ticket_from_servicenow,
            ticket_field_origins=servicenow.TICKET_FIELD_ORIGINS,
            payload_json_schema=servicenow.payload_json_schema,
            envelope_key="result",
            is_enveloped=servicenow.is_envelope,
        ),
        SourceSystem.JIRA: Adapter(
            source=SourceSystem.JIRA,
            schema_name="jira-webhook",
            to_ticket=jira.ticket_from_jira,
            ticket_field_origins=jira.TICKET_FIELD_ORIGINS,
            payload_json_schema=jira.payload_json_schema,
        ),
        SourceSystem.ZENDESK: Adapter(
            source=SourceSystem.ZENDESK,
            schema_name="zendesk-ticket",
            to_ticket=zendesk.ticket_from_zendesk,
            ticket_field_origins=zendesk.TICKET_FIELD_ORIGINS,
            payload_json_schema=zendesk.payload_json_schema,
            envelope_key="ticket",
            is_enveloped=zendesk.is_envelope,
        ),
        SourceSystem.CANONICAL: Adapter(
            source=SourceSystem.CANONICAL,
            schema_name="ticket",
            to_ticket=_canonical,
            ticket_field_origins={},
            payload_json_schema=_canonical_schema,
        ),
    }
)

__all__ = ["ADAPTERS", "Adapter"]
