"""`ticket-router schemas export` and `validate`: the JSON Schemas accept the real samples."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from schemas.cli import app
from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.routing import Disposition, RoutedTicket, RoutingDecision
from schemas.ticket import Ticket

SCHEMA_OF_SAMPLE = {
    "servicenow": "servicenow-incident",
    "jira": "jira-webhook",
    "zendesk": "zendesk-ticket",
    "canonical": "ticket",
}
SAMPLES = sorted(
    entry.name
    for entry in resources.files("schemas").joinpath("samples").iterdir()
    if entry.name.endswith(".json")
)
NOW = datetime(2026, 11, 27, 9, 14, 3, tzinfo=UTC)
runner = CliRunner()


def sample(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(
        resources.files("schemas").joinpath("samples", name).read_text("utf-8")
    )
    return payload


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Draft202012Validator]:
    directory = tmp_path_factory.mktemp("schemas") / "out"
    result = runner.invoke(app, ["export", str(directory)])
    assert result.exit_code == 0, result.output
    validators = {}
    for path in sorted(directory.glob("*.schema.json")):
        document = json.loads(path.read_text("utf-8"))
        Draft202012Validator.check_schema(document)
        validators[path.name.removesuffix(".schema.json")] = Draft202012Validator(document)
    return validators


def test_export_writes_one_valid_schema_per_contract(
    exported: dict[str, Draft202012Validator],
) -> None:
    assert sorted(exported) == [
        "dead-letter",
        "feedback",
        "jira-issue-updated",
        "jira-webhook",
        "labeled-ticket",
        "routed-ticket",
        "servicenow-incident",
        "servicenow-incident-update",
        "ticket",
        "zendesk-ticket",
        "zendesk-ticket-event",
    ]


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_validates_against_its_exported_schema(
    name: str, exported: dict[str, Draft202012Validator]
) -> None:
    validator = exported[SCHEMA_OF_SAMPLE[name.split("-")[0]]]
    assert [error.message for error in validator.iter_errors(sample(name))] == []


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        ("servicenow-incident.json", ("short_description",), 42),
        ("servicenow-incident.json", ("caller_id",), 7),
        ("jira-issue-created.json", ("issue", "fields", "summary"), None),
        ("jira-issue-created.json", ("issue", "fields", "description"), ["not", "adf"]),
        ("zendesk-ticket.json", ("ticket", "id"), True),
        ("zendesk-webhook.json", ("ticket", "priority"), "critical"),
        ("canonical-ticket.json", ("priority",), "P9"),
    ],
)
def test_exported_schema_rejects_a_broken_payload(
    name: str, path: tuple[str, ...], value: object, exported: dict[str, Draft202012Validator]
) -> None:
    payload = sample(name)
    parent: Any = payload
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    assert not exported[SCHEMA_OF_SAMPLE[name.split("-")[0]]].is_valid(payload)


def test_exported_schemas_reject_missing_required_fields(
    exported: dict[str, Draft202012Validator],
) -> None:
    jira = sample("jira-issue-created.json")
    del jira["issue"]["key"]
    canonical = sample("canonical-ticket.json")
    del canonical["created_at"]
    assert not exported["jira-webhook"].is_valid(jira)
    assert not exported["ticket"].is_valid(canonical)


def test_outbound_schemas_describe_what_the_router_writes(
    exported: dict[str, Draft202012Validator],
) -> None:
    ticket = Ticket.model_validate(sample("canonical-ticket.json"))
    routed = RoutedTicket(
        ticket=ticket,
        decision=RoutingDecision(
            queue="email_collaboration",
            confidence=0.8,
            probabilities={"email_collaboration": 0.8, "network_vpn": 0.2},
            model_id="expert-tiny@3f2a",
            engine_latency_s=0.05,
        ),
        disposition=Disposition.ROUTED,
        topic="tickets.routed.email-collaboration",
        source_topic="tickets.inbound",
        source_partition=0,
        source_offset=12,
        received_at=NOW,
        decided_at=NOW,
        published_at=NOW,
    )
    letter = DeadLetter(
        raw=b"\xff",
        reason=DeadLetterReason.UNDECODABLE,
        error_type="TicketParseError",
        error="not UTF-8: invalid byte at offset 0",
        source_topic="tickets.inbound",
        source_partition=0,
        source_offset=13,
        failed_at=NOW,
    )
    assert list(exported["routed-ticket"].iter_errors(json.loads(routed.model_dump_json()))) == []
    assert list(exported["dead-letter"].iter_errors(json.loads(letter.model_dump_json()))) == []


def test_validate_prints_the_ticket_for_a_good_payload() -> None:
    path = resources.files("schemas").joinpath("samples", "jira-issue-created.json")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert Ticket.model_validate_json(result.stdout).id == "ITSM-42"


def test_validate_prints_the_reason_and_field_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "incident.json"
    path.write_text(json.dumps(sample("servicenow-incident.json") | {"opened_at": "2026-13-45"}))
    result = runner.invoke(app, ["validate", str(path), "--format", "servicenow"])
    assert result.exit_code == 1
    assert result.stderr == "invalid: servicenow.opened_at: invalid datetime '2026-13-45'\n"
    assert result.stdout == ""


def test_validate_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
