"""Render a canonical `Ticket` as the payload an ITSM tool would send: the adapters' inverse.

Owns the outbound shapes of ServiceNow (table record), Jira (`jira:issue_created` webhook)
and Zendesk (ticket JSON), the ticket-id style of each tool, and the canonical form. Pure:
no I/O. The inbound direction (payload -> Ticket) belongs to `schemas.itsm`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from schemas.ticket import Level, Priority, Ticket

_SYS_ID_NAMESPACE = uuid.UUID("6f1c2a8e-7d0b-4c1e-9a53-2b8f6e4d9c10")


class PayloadFormat(StrEnum):
    """The wire formats replay can publish."""

    CANONICAL = "canonical"
    SERVICENOW = "servicenow"
    JIRA = "jira"
    ZENDESK = "zendesk"


_SN_PRIORITY = {p: str(i) for i, p in enumerate(Priority, start=1)}  # P1 -> "1"
_SN_LEVEL = {Level.HIGH: "1", Level.MEDIUM: "2", Level.LOW: "3"}
_JIRA_PRIORITY = {
    Priority.P1: "Highest",
    Priority.P2: "High",
    Priority.P3: "Medium",
    Priority.P4: "Low",
    Priority.P5: "Lowest",
}
_ZENDESK_PRIORITY = {
    Priority.P1: "urgent",
    Priority.P2: "high",
    Priority.P3: "normal",
    Priority.P4: "low",
    Priority.P5: "low",
}


def ticket_id(fmt: PayloadFormat, *, run: int, seq: int) -> str:
    """The id a ticket gets in `fmt`, unique per (`run`, `seq`), as its adapter reads it back.

    ServiceNow numbers are `INC` + digits, Jira keys `PROJECT-N`, Zendesk ids integers.
    """
    if not (0 <= run < 10_000 and 0 <= seq < 10_000_000):
        raise ValueError("run must be < 10^4 and seq < 10^7")
    match fmt:
        case PayloadFormat.SERVICENOW:
            return f"INC{run:04d}{seq:07d}"
        case PayloadFormat.JIRA:
            return f"ITSM-{run * 10_000_000 + seq}"
        case PayloadFormat.ZENDESK:
            return str(run * 10_000_000 + seq + 1)  # Zendesk ids start at 1
        case PayloadFormat.CANONICAL:
            return f"T{run:04d}-{seq:07d}"


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC)


def _stable_int(text: str) -> int:
    return uuid.uuid5(_SYS_ID_NAMESPACE, text).int % 10**12


def to_canonical(ticket: Ticket) -> dict[str, Any]:
    """The canonical JSON object (what `Ticket.model_validate` reads).

    `id`, `source`, `subject` and `created_at` are always present: the router's format
    detection recognises a canonical ticket by them.
    """
    data: dict[str, Any] = ticket.model_dump(mode="json", exclude_defaults=True)
    data["id"] = ticket.id
    data["source"] = ticket.source.value
    data["created_at"] = ticket.created_at.isoformat()
    data["subject"] = ticket.subject
    return data


def to_servicenow(ticket: Ticket) -> dict[str, Any]:
    """A ServiceNow incident record (Table API field names, display-free values)."""
    hints = ticket.category_hints
    return {
        "number": ticket.id,
        "sys_id": uuid.uuid5(_SYS_ID_NAMESPACE, ticket.id).hex,
        "short_description": ticket.subject,
        "description": ticket.body,
        "caller_id": ticket.requester or "",
        "assignment_group": hints[1] if len(hints) > 1 else "",
        "priority": _SN_PRIORITY[ticket.priority] if ticket.priority else "",
        "impact": _SN_LEVEL[ticket.impact] if ticket.impact else "",
        "urgency": _SN_LEVEL[ticket.urgency] if ticket.urgency else "",
        "category": hints[0] if hints else "",
        "opened_at": _utc(ticket.created_at).strftime("%Y-%m-%d %H:%M:%S"),
    }


def _jira_time(ts: datetime) -> str:
    t = _utc(ts)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}" + "+0000"


def to_jira(ticket: Ticket) -> dict[str, Any]:
    """A Jira `jira:issue_created` webhook body."""
    requester = ticket.requester or ""
    email = requester if "@" in requester else ""
    display = requester.split("@", 1)[0] if email else requester
    fields: dict[str, Any] = {
        "summary": ticket.subject,
        "description": ticket.body,
        "priority": {"name": _JIRA_PRIORITY[ticket.priority]} if ticket.priority else None,
        "reporter": {"displayName": display, "emailAddress": email},
        "created": _jira_time(ticket.created_at),
        "labels": list(ticket.category_hints),
    }
    return {"webhookEvent": "jira:issue_created", "issue": {"key": ticket.id, "fields": fields}}


def to_zendesk(ticket: Ticket) -> dict[str, Any]:
    """A Zendesk ticket object, wrapped as the API and webhooks send it."""
    try:
        zendesk_id: int | str = int(ticket.id)
    except ValueError:
        zendesk_id = ticket.id
    return {
        "ticket": {
            "id": zendesk_id,
            "subject": ticket.subject,
            "description": ticket.body,
            "priority": _ZENDESK_PRIORITY[ticket.priority] if ticket.priority else None,
            "requester_id": _stable_int(ticket.requester) if ticket.requester else None,
            "tags": list(ticket.category_hints),
            "created_at": _utc(ticket.created_at).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    }


_RENDERERS: dict[PayloadFormat, Callable[[Ticket], dict[str, Any]]] = {
    PayloadFormat.CANONICAL: to_canonical,
    PayloadFormat.SERVICENOW: to_servicenow,
    PayloadFormat.JIRA: to_jira,
    PayloadFormat.ZENDESK: to_zendesk,
}


def render(ticket: Ticket, fmt: PayloadFormat) -> dict[str, Any]:
    """The payload of `ticket` in `fmt`."""
    return _RENDERERS[fmt](ticket)


def encode(ticket: Ticket, fmt: PayloadFormat) -> bytes:
    """The record value replay publishes: compact UTF-8 JSON of `render(ticket, fmt)`."""
    return json.dumps(render(ticket, fmt), ensure_ascii=False, separators=(",", ":")).encode()
