"""Each ITSM adapter on the shipped sample payloads, the normalisation maps, and detection."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import pytest

from schemas.dead_letter import DeadLetterReason
from schemas.itsm import normalise
from schemas.itsm.detect import detect_source
from schemas.itsm.jira import adf_text
from schemas.parse import TicketParseError, parse_ticket, ticket_from_payload
from schemas.ticket import Level, Priority, SourceSystem, Ticket


def sample(name: str) -> dict[str, Any]:
    text = resources.files("schemas").joinpath("samples", name).read_text("utf-8")
    payload: dict[str, Any] = json.loads(text)
    return payload


def parsed(name: str) -> Ticket:
    return parse_ticket(json.dumps(sample(name)).encode())


def invalid_message(payload: dict[str, Any], source: SourceSystem | None = None) -> str:
    with pytest.raises(TicketParseError) as info:
        ticket_from_payload(payload, source_format=source)
    assert info.value.reason is DeadLetterReason.INVALID
    return info.value.message


# --- ServiceNow ------------------------------------------------------------------------


def test_servicenow_table_api_record_maps_to_ticket() -> None:
    ticket = parsed("servicenow-incident.json")
    assert ticket.id == "INC0012345"
    assert ticket.source is SourceSystem.SERVICENOW
    assert ticket.created_at == datetime(2026, 11, 27, 9, 14, 3, tzinfo=UTC)
    assert ticket.subject == "Cannot connect to VPN from home since this morning"
    assert ticket.body.startswith("GlobalProtect says")
    assert ticket.requester == "5137153cc611227c000bbd1bd8cd2005"  # reference without display
    assert (ticket.priority, ticket.impact, ticket.urgency) == (
        Priority.P2,
        Level.MEDIUM,
        Level.MEDIUM,
    )
    assert ticket.category_hints == ("network", "vpn", "287ebd7da9fe198100f92cc8d1d2154e")
    assert ticket.custom_fields["sys_id"] == "9d385017c611228701d22104cc95c371"
    assert ticket.custom_fields["contact_type"] == "self-service"
    assert "short_description" not in ticket.custom_fields


def test_servicenow_table_api_envelope_is_unwrapped() -> None:
    ticket = parsed("servicenow-table-api-response.json")
    assert ticket.id == "INC0012377"
    assert (ticket.priority, ticket.impact, ticket.urgency) == (Priority.P4, Level.LOW, Level.LOW)
    assert ticket.category_hints == ("software", "email")  # empty assignment group skipped


def test_servicenow_connector_display_values_and_iso_time() -> None:
    ticket = parsed("servicenow-connector.json")
    assert ticket.requester == "Beth Anglin"
    assert ticket.category_hints == ("hardware", "monitor")  # "Hardware" group: same hint
    assert ticket.priority is Priority.P3
    assert ticket.impact is ticket.urgency is Level.MEDIUM
    assert ticket.created_at.utcoffset() == timedelta(hours=1)
    assert ticket.custom_fields["u_asset_tag"] == "ACME-LT-0733"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", Priority.P1),
        ("1 - Critical", Priority.P1),
        ("2-High", Priority.P2),
        (3, Priority.P3),
        ("Low", Priority.P4),
        ("5 - Planning", Priority.P5),
        ("", None),
        (None, None),
    ],
)
def test_servicenow_priority_map(raw: object, expected: Priority | None) -> None:
    assert normalise.servicenow_priority(raw) is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", Level.HIGH), ("2 - Medium", Level.MEDIUM), (3, Level.LOW), ("", None)],
)
def test_servicenow_impact_urgency_map(raw: object, expected: Level | None) -> None:
    assert normalise.servicenow_level(raw) is expected


def test_servicenow_number_and_opened_at_fall_back_to_sys_fields() -> None:
    payload = sample("servicenow-incident.json")
    del payload["number"]
    payload["opened_at"] = ""
    ticket = ticket_from_payload(payload)
    assert ticket.id == payload["sys_id"]
    assert ticket.created_at == datetime(2026, 11, 27, 9, 14, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("opened_at", "2026-13-45", "servicenow.opened_at: invalid datetime '2026-13-45'"),
        ("opened_at", 1795770843, "servicenow.opened_at: invalid datetime 1795770843"),
        ("opened_at", "1989-12-31 23:59:59", "servicenow.opened_at: before 1990"),
        ("short_description", 42, "servicenow.short_description: Input should be a valid string"),
        (
            "short_description",
            "  ",
            "servicenow.short_description: String should have at least 1 character",
        ),
        ("priority", "7", "servicenow.priority: invalid priority '7'"),
        ("impact", "4 - Tiny", "servicenow.impact: invalid level '4 - Tiny'"),
        ("caller_id", 12, "servicenow.caller_id: invalid reference 12"),
        ("caller_id", {"value": 5}, "servicenow.caller_id.value: Input should be a valid string"),
        ("category", ["network"], "servicenow.category: Input should be a valid string"),
    ],
)
def test_servicenow_wrong_values_name_the_field(field: str, value: object, expected: str) -> None:
    payload = sample("servicenow-incident.json")
    payload[field] = value
    assert expected in invalid_message(payload)


def test_servicenow_missing_required_fields_are_named() -> None:
    payload = {"sys_id": "9d38", "short_description": "x"}  # no number of its own, no times
    assert invalid_message(payload) == "servicenow.opened_at: Field required"


# --- Jira ------------------------------------------------------------------------------


def test_jira_cloud_webhook_with_adf_description_maps_to_ticket() -> None:
    ticket = parsed("jira-issue-created.json")
    assert ticket.id == "ITSM-42"
    assert ticket.source is SourceSystem.JIRA
    assert ticket.created_at == datetime(
        2026, 11, 27, 9, 14, 3, tzinfo=timezone(timedelta(hours=1))
    )
    assert ticket.subject == "Need access to the Finance shared drive"
    assert ticket.body == (
        "Hi team, I joined Finance this week and need read/write access to \\\\fs01\\finance.\n"
        "Manager approval: @Owen Fisher\n"
        "Cost centre 4410\n"
        "Thanks!\nMia"
    )
    assert ticket.requester == "mia.krystof@acme.example"
    assert ticket.priority is Priority.P3
    assert ticket.category_hints == ("Incident", "File shares", "onboarding", "finance")
    assert ticket.custom_fields["customfield_10057"] == "Finance"
    assert ticket.custom_fields["webhookEvent"] == "jira:issue_created"
    assert ticket.custom_fields["issue.id"] == "10042"
    assert ticket.custom_fields["webhook.issue_event_type_name"] == "issue_created"


def test_jira_server_webhook_with_plain_description_maps_to_ticket() -> None:
    ticket = parsed("jira-issue-created-server.json")
    assert ticket.id == "HELP-1288"
    assert ticket.created_at == datetime(2026, 11, 27, 10, 14, 3, tzinfo=UTC)
    assert ticket.body.startswith("The HP LaserJet")
    assert ticket.priority is Priority.P1  # Blocker
    assert ticket.category_hints == ("Service Request",)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Highest", Priority.P1),
        ("High", Priority.P2),
        ("medium", Priority.P3),
        ("Minor", Priority.P4),
        ("Lowest", Priority.P5),
        ("P2 - High", Priority.P2),
        ("Sev A", None),
    ],
)
def test_jira_priority_map(name: str, expected: Priority | None) -> None:
    assert normalise.jira_priority(name) is expected


def test_jira_unknown_priority_name_is_kept_not_rejected() -> None:
    payload = sample("jira-issue-created-server.json")
    payload["issue"]["fields"]["priority"] = {"name": "Sev A"}
    ticket = ticket_from_payload(payload)
    assert ticket.priority is None
    assert ticket.custom_fields["priority.name"] == "Sev A"


def test_jira_reporter_without_email_falls_back_to_display_name() -> None:
    payload = sample("jira-issue-created.json")
    del payload["issue"]["fields"]["reporter"]["emailAddress"]
    assert ticket_from_payload(payload).requester == "Mia Krystof"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "created",
            "2026-11-27T09:14:03.000",
            "jira.issue.fields.created: invalid datetime '2026-11-27T09:14:03.000': no UTC offset",
        ),
        ("created", "yesterday", "jira.issue.fields.created: invalid datetime 'yesterday'"),
        ("summary", None, "jira.issue.fields.summary: Input should be a valid string"),
        ("description", 7, "jira.issue.fields.description: invalid description 7"),
        ("priority", "High", "jira.issue.fields.priority: Input should be a valid dictionary"),
        ("labels", "vpn", "jira.issue.fields.labels: Input should be a valid list"),
        ("components", [{"id": "1"}], "jira.issue.fields.components.0.name: Field required"),
    ],
)
def test_jira_wrong_values_name_the_field(field: str, value: object, expected: str) -> None:
    payload = sample("jira-issue-created.json")
    payload["issue"]["fields"][field] = value
    assert expected in invalid_message(payload)


def test_adf_text_survives_deep_nesting_and_malformed_nodes() -> None:
    node: dict[str, Any] = {"type": "text", "text": "deep"}
    for _ in range(50_000):
        node = {"type": "blockquote", "content": [node, 5, {"type": "text", "text": 9}]}
    assert adf_text({"type": "doc", "content": [node]}) == "deep"


# --- Zendesk ---------------------------------------------------------------------------


def test_zendesk_api_ticket_maps_to_ticket() -> None:
    ticket = parsed("zendesk-ticket.json")
    assert ticket.id == "81723"
    assert ticket.source is SourceSystem.ZENDESK
    assert ticket.created_at == datetime(2026, 11, 27, 8, 47, 12, tzinfo=UTC)
    assert ticket.subject == "Account locked after password change"
    assert ticket.requester == "20978392"
    assert ticket.priority is Priority.P2
    assert ticket.category_hints == ("incident", "account", "lockout", "password")
    assert ticket.custom_fields["custom_fields"] == [
        {"id": 360012345678, "value": "emea"},
        {"id": 360012345679, "value": None},
    ]


def test_zendesk_bare_ticket_object_is_accepted_too() -> None:
    ticket = ticket_from_payload(sample("zendesk-ticket.json")["ticket"])
    assert ticket.id == "81723"


def test_zendesk_webhook_placeholders_rendered_as_text_are_accepted() -> None:
    ticket = parsed("zendesk-webhook.json")
    assert ticket.id == "81724"
    assert ticket.requester == "hr.coordinator@acme.example"
    assert ticket.priority is Priority.P3  # "Normal"
    assert ticket.category_hints == ("task", "software", "licence", "new_starter")
    assert ticket.custom_fields["webhook.event"] == "ticket_created"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("urgent", Priority.P1), ("High", Priority.P2), ("normal", Priority.P3), ("low", Priority.P4)],
)
def test_zendesk_priority_map(raw: str, expected: Priority) -> None:
    assert normalise.zendesk_priority(raw) is expected


def test_zendesk_ticket_without_subject_uses_first_description_line() -> None:
    payload = sample("zendesk-ticket.json")
    payload["ticket"]["subject"] = None
    payload["ticket"]["raw_subject"] = None
    payload["ticket"]["description"] = "\n  Printer offline\nsince 9am"
    assert ticket_from_payload(payload).subject == "Printer offline"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("id", True, "zendesk.ticket.id: invalid id True"),
        ("id", -4, "zendesk.ticket.id: invalid id -4"),
        ("id", "81x", "zendesk.ticket.id: invalid id '81x'"),
        ("priority", "critical", "zendesk.ticket.priority: invalid priority 'critical'"),
        ("created_at", "2026-02-30T10:00:00Z", "zendesk.ticket.created_at: invalid datetime"),
        ("tags", [1, 2], "zendesk.ticket.tags.0: Input should be a valid string"),
        ("subject", {"x": 1}, "zendesk.ticket.subject: Input should be a valid string"),
    ],
)
def test_zendesk_wrong_values_name_the_field(field: str, value: object, expected: str) -> None:
    payload = sample("zendesk-ticket.json")
    payload["ticket"][field] = value
    assert expected in invalid_message(payload)


def test_zendesk_ticket_with_no_text_at_all_is_invalid_at_subject() -> None:
    payload = sample("zendesk-webhook.json")
    payload["ticket"].update(subject="", description=None)
    assert invalid_message(payload).startswith(
        "zendesk.ticket.subject: String should have at least 1"
    )


# --- canonical and detection -----------------------------------------------------------


def test_canonical_ticket_is_read_as_is() -> None:
    ticket = parsed("canonical-ticket.json")
    assert ticket == Ticket.model_validate(sample("canonical-ticket.json"))


def test_canonical_ticket_rejects_unknown_fields_by_name() -> None:
    payload = sample("canonical-ticket.json") | {"colour": "blue"}
    assert "canonical.colour: Extra inputs are not permitted" in invalid_message(payload)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("servicenow-incident.json", SourceSystem.SERVICENOW),
        ("servicenow-table-api-response.json", SourceSystem.SERVICENOW),
        ("servicenow-connector.json", SourceSystem.SERVICENOW),
        ("jira-issue-created.json", SourceSystem.JIRA),
        ("jira-issue-created-server.json", SourceSystem.JIRA),
        ("zendesk-ticket.json", SourceSystem.ZENDESK),
        ("zendesk-webhook.json", SourceSystem.ZENDESK),
        ("canonical-ticket.json", SourceSystem.CANONICAL),
    ],
)
def test_every_sample_is_detected_as_its_format(name: str, expected: SourceSystem) -> None:
    assert detect_source(sample(name)) is expected


def test_canonical_ticket_without_source_key_is_still_detected() -> None:
    payload = sample("canonical-ticket.json")
    del payload["source"]
    assert detect_source(payload) is SourceSystem.CANONICAL


def test_forced_format_overrides_detection_and_reports_that_formats_fields() -> None:
    payload = copy.deepcopy(sample("zendesk-ticket.json"))
    message = invalid_message(payload, SourceSystem.JIRA)
    assert message == "jira.issue: Field required"


def test_unknown_extra_fields_do_not_need_valid_types() -> None:
    payload = sample("servicenow-incident.json") | {"u_weird": {"a": [None, 1.5, {"b": []}]}}
    assert ticket_from_payload(payload).custom_fields["u_weird"] == {"a": [None, 1.5, {"b": []}]}


def test_mapped_field_errors_point_into_the_envelope() -> None:
    payload = sample("servicenow-table-api-response.json")
    payload["result"]["opened_at"] = "1985-01-01 00:00:00"
    assert invalid_message(payload).startswith("servicenow.result.opened_at: before 1990")
    bare = payload["result"]
    assert invalid_message(bare).startswith("servicenow.opened_at: before 1990")
