"""Rendering a canonical Ticket as ServiceNow, Jira and Zendesk payloads."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from loadgen.itsm_formats import PayloadFormat, encode, render, ticket_id
from schemas.ticket import Level, Priority, Ticket

CET = timezone(timedelta(hours=1))
TICKET = Ticket(
    id="INC00010000042",
    created_at=datetime(2026, 11, 27, 10, 14, 3, 250_000, tzinfo=CET),
    subject="VPN drops every 5 minutes",
    body="Since this morning the GlobalProtect client disconnects.",
    requester="ana.silva@example.com",
    priority=Priority.P2,
    impact=Level.MEDIUM,
    urgency=Level.HIGH,
    category_hints=("network", "Service Desk"),
)


def test_servicenow_record_has_table_api_fields() -> None:
    p = render(TICKET, PayloadFormat.SERVICENOW)
    assert p["number"] == TICKET.id
    assert re.fullmatch(r"[0-9a-f]{32}", p["sys_id"])
    assert p["short_description"] == TICKET.subject and p["description"] == TICKET.body
    assert p["caller_id"] == "ana.silva@example.com"
    assert (p["priority"], p["impact"], p["urgency"]) == ("2", "2", "1")
    assert (p["category"], p["assignment_group"]) == ("network", "Service Desk")
    assert p["opened_at"] == "2026-11-27 09:14:03"  # UTC, no offset, as the Table API writes


def test_jira_webhook_has_issue_created_shape() -> None:
    p = render(TICKET, PayloadFormat.JIRA)
    assert p["webhookEvent"] == "jira:issue_created"
    fields = p["issue"]["fields"]
    assert p["issue"]["key"] == TICKET.id
    assert fields["summary"] == TICKET.subject and fields["description"] == TICKET.body
    assert fields["priority"] == {"name": "High"}
    assert fields["reporter"] == {"displayName": "ana.silva", "emailAddress": TICKET.requester}
    assert fields["created"] == "2026-11-27T09:14:03.250+0000"
    assert fields["labels"] == ["network", "Service Desk"]


def test_zendesk_ticket_has_integer_id_and_lowercase_priority() -> None:
    t = TICKET.model_copy(update={"id": "10000043"})
    p = render(t, PayloadFormat.ZENDESK)["ticket"]
    assert p["id"] == 10000043
    assert (p["subject"], p["description"]) == (t.subject, t.body)
    assert p["priority"] == "high"
    assert isinstance(p["requester_id"], int)
    assert p["tags"] == ["network", "Service Desk"]
    assert p["created_at"] == "2026-11-27T09:14:03Z"


def test_canonical_round_trips_through_ticket_validation() -> None:
    data = json.loads(encode(TICKET, PayloadFormat.CANONICAL))
    assert Ticket.model_validate(data) == TICKET


def test_missing_optional_fields_render_empty() -> None:
    bare = Ticket(id="ITSM-7", created_at=datetime(2026, 1, 1, tzinfo=UTC), subject="help")
    sn = render(bare, PayloadFormat.SERVICENOW)
    assert (sn["priority"], sn["caller_id"], sn["category"]) == ("", "", "")
    assert render(bare, PayloadFormat.JIRA)["issue"]["fields"]["priority"] is None
    assert render(bare, PayloadFormat.ZENDESK)["ticket"]["requester_id"] is None


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (PayloadFormat.SERVICENOW, "INC00030000012"),
        (PayloadFormat.JIRA, "ITSM-30000012"),
        (PayloadFormat.ZENDESK, "30000013"),
        (PayloadFormat.CANONICAL, "T0003-0000012"),
    ],
)
def test_ticket_ids_follow_each_tools_style_and_are_unique_per_run(
    fmt: PayloadFormat, expected: str
) -> None:
    assert ticket_id(fmt, run=3, seq=12) == expected
    ids = {ticket_id(fmt, run=r, seq=s) for r in (0, 1, 2) for s in range(200)}
    assert len(ids) == 600


@pytest.mark.parametrize(
    ("fmt", "tid"),
    [
        (PayloadFormat.SERVICENOW, "INC00010000042"),
        (PayloadFormat.JIRA, "ITSM-10000042"),
        (PayloadFormat.ZENDESK, "10000043"),
        (PayloadFormat.CANONICAL, "T0001-0000042"),
    ],
)
def test_the_routers_adapters_read_back_what_replay_renders(fmt: PayloadFormat, tid: str) -> None:
    from schemas.parse import parse_ticket

    original = TICKET.model_copy(update={"id": tid})
    back = parse_ticket(encode(original, fmt))
    assert back.id == tid
    assert (back.subject, back.body) == (original.subject, original.body)
    assert back.created_at.replace(microsecond=0) == original.created_at.replace(microsecond=0)
    assert back.priority == original.priority
    assert "network" in back.category_hints
