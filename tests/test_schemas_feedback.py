"""Feedback contract: the ITSM update adapters on realistic and hostile payloads, the group map."""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from schemas.cli import app, json_schemas
from schemas.dead_letter import DeadLetterReason
from schemas.feedback import Feedback, FeedbackOutcome, LabeledTicket
from schemas.feedback_parse import (
    FeedbackParseError,
    NotFeedback,
    SkipReason,
    feedback_from_payload,
    parse_feedback,
)
from schemas.group_map import GroupMap, GroupMapError
from schemas.taxonomy import Taxonomy
from schemas.ticket import SourceSystem

TAX = Taxonomy.load()
GROUPS = GroupMap.load(None, labels=TAX.labels)
SCHEMA_OF_SAMPLE = {
    "servicenow-incident-update.json": "servicenow-incident-update",
    "jira-issue-updated.json": "jira-issue-updated",
    "zendesk-group-assignment-changed.json": "zendesk-ticket-event",
    "feedback.json": "feedback",
}
runner = CliRunner()


def sample(name: str) -> dict[str, Any]:
    text = resources.files("schemas").joinpath("samples", "feedback", name).read_text("utf-8")
    payload: dict[str, Any] = json.loads(text)
    return payload


def read(payload: dict[str, Any] | bytes) -> Feedback | NotFeedback:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_feedback(raw, group_map=GROUPS, labels=TAX.labels)


def feedback(payload: dict[str, Any]) -> Feedback:
    result = read(payload)
    assert isinstance(result, Feedback), result
    return result


def rejected(payload: dict[str, Any] | bytes) -> FeedbackParseError:
    with pytest.raises(FeedbackParseError) as info:
        read(payload)
    assert len(info.value.message) <= 1000
    return info.value


# --- the samples ------------------------------------------------------------------------


def test_servicenow_incident_update_whose_group_changed_is_a_reassignment() -> None:
    fb = feedback(sample("servicenow-incident-update.json"))
    assert fb == Feedback(
        ticket_id="INC0012345",
        final_queue="network_vpn",
        previous_queue="access_request",
        outcome=FeedbackOutcome.REASSIGNED,
        actor="beth.anglin",
        occurred_at=datetime(2026, 11, 27, 9, 41, 17, tzinfo=UTC),
        source=SourceSystem.SERVICENOW,
        final_group="Network Operations",
        previous_group="Identity and Access Management",
        event_id="9d385017c611228701d22104cc95c371:5",
    )


def test_jira_issue_updated_whose_changelog_moves_the_team_is_a_reassignment() -> None:
    fb = feedback(sample("jira-issue-updated.json"))
    assert (fb.ticket_id, fb.source, fb.outcome) == (
        "ITSM-42",
        SourceSystem.JIRA,
        FeedbackOutcome.REASSIGNED,
    )
    assert (fb.previous_queue, fb.final_queue) == ("password_account", "access_request")
    assert fb.occurred_at == datetime(2026, 11, 27, 9, 38, 17, tzinfo=UTC)
    assert (fb.actor, fb.event_id) == ("Owen Fisher", "10391")


def test_zendesk_group_assignment_changed_is_a_reassignment() -> None:
    fb = feedback(sample("zendesk-group-assignment-changed.json"))
    assert (fb.ticket_id, fb.previous_queue, fb.final_queue) == ("81724", "hardware", "software")
    assert (fb.outcome, fb.actor) == (FeedbackOutcome.REASSIGNED, "20978392")
    assert (fb.final_group, fb.previous_group) == ("360004077404", "360004077403")


def test_canonical_feedback_is_read_as_is() -> None:
    fb = feedback(sample("feedback.json"))
    assert fb == Feedback.model_validate(sample("feedback.json"))
    assert fb.source is SourceSystem.SERVICENOW


@pytest.mark.parametrize("name", sorted(SCHEMA_OF_SAMPLE))
def test_every_feedback_sample_validates_against_its_exported_schema(name: str) -> None:
    document = json_schemas()[SCHEMA_OF_SAMPLE[name]]
    Draft202012Validator.check_schema(document)
    errors = [e.message for e in Draft202012Validator(document).iter_errors(sample(name))]
    assert errors == []


def test_labeled_ticket_is_a_data_file_row_expert_build_reads() -> None:
    row = LabeledTicket(
        ticket_id="INC1",
        text="VPN down\nsince 9",
        label="network_vpn",
        labeled_at=datetime(2026, 11, 27, tzinfo=UTC),
    )
    decoded = json.loads(row.model_dump_json())
    assert (decoded["text"], decoded["label"]) == ("VPN down\nsince 9", "network_vpn")
    schema = json_schemas()["labeled-ticket"]
    assert list(Draft202012Validator(schema).iter_errors(decoded)) == []


# --- what each update means ------------------------------------------------------------


def servicenow(**changes: Any) -> dict[str, Any]:
    payload = sample("servicenow-incident-update.json")
    record = payload["result"]
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return payload


def test_servicenow_resolution_in_the_same_group_is_resolved() -> None:
    fb = feedback(servicenow(state="6", previous={"state": "2"}))
    assert (fb.outcome, fb.final_queue, fb.previous_queue) == (
        FeedbackOutcome.RESOLVED,
        "network_vpn",
        None,
    )


def test_servicenow_work_started_by_an_assignee_is_a_confirmation() -> None:
    fb = feedback(
        servicenow(
            state="2",
            assigned_to={"value": "46d44a23a9fe19810012d100cca80666"},
            previous={"state": "1"},
        )
    )
    assert fb.outcome is FeedbackOutcome.CONFIRMED


def test_servicenow_display_values_are_understood() -> None:
    payload = servicenow(state="Resolved", previous={"state": "In Progress"})
    payload["result"]["assignment_group"] = {"display_value": "Network Operations", "value": ""}
    assert feedback(payload).outcome is FeedbackOutcome.RESOLVED


@pytest.mark.parametrize(
    "changes",
    [
        {"previous": None},  # a comment: nothing says the group or the state moved
        {"previous": {"state": "2"}},  # state unchanged, group not reported
        {"previous": {"assignment_group": ""}, "assignment_group": ""},  # group cleared
    ],
)
def test_servicenow_update_without_a_routing_signal_is_skipped(changes: dict[str, Any]) -> None:
    result = read(servicenow(**changes))
    assert result == NotFeedback(SourceSystem.SERVICENOW, "INC0012345", SkipReason.NO_SIGNAL)


def test_servicenow_write_back_by_the_integration_user_is_not_feedback() -> None:
    result = read(servicenow(sys_updated_by="svc.ticket-router"))
    assert isinstance(result, NotFeedback) and result.reason is SkipReason.IGNORED_ACTOR


def jira(items: list[dict[str, Any]], *, category: str = "new") -> dict[str, Any]:
    payload = sample("jira-issue-updated.json")
    payload["changelog"]["items"] = items
    payload["issue"]["fields"]["status"]["statusCategory"]["key"] = category
    return payload


STATUS_ITEM = {
    "field": "status",
    "fieldtype": "jira",
    "fieldId": "status",
    "from": "10018",
    "fromString": "Waiting for support",
    "to": "10021",
    "toString": "Done",
}


def test_jira_transition_to_done_is_resolved_in_the_issues_team() -> None:
    fb = feedback(jira([STATUS_ITEM], category="done"))
    assert (fb.outcome, fb.final_queue) == (FeedbackOutcome.RESOLVED, "access_request")


def test_jira_transition_to_in_progress_is_a_confirmation() -> None:
    fb = feedback(jira([STATUS_ITEM], category="indeterminate"))
    assert fb.outcome is FeedbackOutcome.CONFIRMED


def test_jira_team_field_is_found_by_its_field_id_too() -> None:
    item = dict(sample("jira-issue-updated.json")["changelog"]["items"][0], field="Équipe")
    assert feedback(jira([item])).final_queue == "access_request"


def test_jira_changelog_of_other_fields_is_skipped() -> None:
    priority = {
        "field": "priority",
        "fieldtype": "jira",
        "from": "3",
        "fromString": "Medium",
        "to": "2",
        "toString": "High",
    }
    result = read(jira([priority]))
    assert isinstance(result, NotFeedback) and result.reason is SkipReason.NO_SIGNAL


def test_jira_resolution_without_a_known_team_is_skipped() -> None:
    payload = jira([STATUS_ITEM], category="done")
    del payload["issue"]["fields"]["customfield_10001"]
    assert isinstance(read(payload), NotFeedback)


def zendesk(kind: str, current: Any, *, group_id: str = "360004077406") -> dict[str, Any]:
    payload = sample("zendesk-group-assignment-changed.json")
    payload["type"] = f"zen:event-type:ticket.{kind}"
    payload["event"] = {"current": current, "previous": None}
    payload["detail"]["group_id"] = group_id
    return payload


def test_zendesk_status_changed_to_solved_is_resolved_in_the_tickets_group() -> None:
    fb = feedback(zendesk("status_changed", "SOLVED"))
    assert (fb.outcome, fb.final_queue) == (FeedbackOutcome.RESOLVED, "network_vpn")


def test_zendesk_agent_assignment_is_a_confirmation() -> None:
    assert (
        feedback(zendesk("agent_assignment_changed", "235324")).outcome is FeedbackOutcome.CONFIRMED
    )


def test_zendesk_group_event_may_carry_objects_with_id_and_name() -> None:
    payload = sample("zendesk-group-assignment-changed.json")
    payload["event"] = {
        "current": {"id": 360004077410, "name": "SOC"},
        "previous": {"id": 1, "name": "x"},
    }
    fb = feedback(payload)
    assert (fb.final_queue, fb.previous_queue) == ("security_incident", None)


@pytest.mark.parametrize(
    ("kind", "current"),
    [("comment_added", None), ("status_changed", "PENDING"), ("priority_changed", "HIGH")],
)
def test_zendesk_events_without_a_routing_signal_are_skipped(kind: str, current: Any) -> None:
    assert isinstance(read(zendesk(kind, current)), NotFeedback)


def test_move_between_two_groups_of_one_queue_is_a_confirmation() -> None:
    payload = sample("zendesk-group-assignment-changed.json")
    groups = GroupMap.model_validate(
        {"zendesk": {"groups": {"360004077404": "software", "360004077403": "software"}}}
    )
    result = feedback_from_payload(payload, group_map=groups, labels=TAX.labels)
    assert isinstance(result, Feedback)
    assert (result.outcome, result.previous_queue) == (FeedbackOutcome.CONFIRMED, "software")


# --- unknown groups and hostile payloads -------------------------------------------------


def test_unknown_group_is_never_guessed() -> None:
    payload = servicenow()
    payload["result"]["assignment_group"] = {
        "value": "0123456789abcdef0123456789abcdef",
        "display_value": "Vendor - Citrix",
    }
    error = rejected(payload)
    assert error.reason is DeadLetterReason.UNKNOWN_GROUP
    assert error.source is SourceSystem.SERVICENOW
    assert "'Vendor - Citrix'" in error.message and "INC0012345" in error.message


@pytest.mark.parametrize(
    ("payload", "reason", "fragment"),
    [
        (b"\xff\xfe not utf-8", DeadLetterReason.UNDECODABLE, "not UTF-8"),
        (b"{not json", DeadLetterReason.UNDECODABLE, "not JSON"),
        (b"[1, 2]", DeadLetterReason.UNDECODABLE, "not a JSON object"),
        (b'{"a": NaN}', DeadLetterReason.UNDECODABLE, "NaN"),
        (b"[" * 100_000 + b"]" * 100_000, DeadLetterReason.UNDECODABLE, "not"),
        (b'{"hello": "world"}', DeadLetterReason.UNKNOWN_FORMAT, "'hello'"),
    ],
)
def test_unreadable_bytes_are_rejected_with_their_reason(
    payload: bytes, reason: DeadLetterReason, fragment: str
) -> None:
    error = rejected(payload)
    assert error.reason is reason
    assert fragment in error.message


def _set(payload: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is _DROP:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DROP = object()
HUGE = "x" * 200_000


@pytest.mark.parametrize(
    ("name", "path", "value", "reason", "fragment"),
    [
        (
            "servicenow-incident-update.json",
            ("result", "sys_updated_on"),
            "yesterday",
            DeadLetterReason.INVALID,
            "servicenow.result.sys_updated_on",
        ),
        (
            "servicenow-incident-update.json",
            ("result", "assignment_group"),
            7,
            DeadLetterReason.INVALID,
            "servicenow.result.assignment_group",
        ),
        (
            "servicenow-incident-update.json",
            ("result", "number"),
            HUGE,
            DeadLetterReason.INVALID,
            "servicenow.ticket_id",
        ),
        (
            "servicenow-incident-update.json",
            ("result", "previous"),
            "the old group",
            DeadLetterReason.INVALID,
            "servicenow.result.previous",
        ),
        (
            "jira-issue-updated.json",
            ("timestamp"),
            "2026-11-27",
            DeadLetterReason.INVALID,
            "jira.timestamp",
        ),
        ("jira-issue-updated.json", ("timestamp",), 17, DeadLetterReason.INVALID, "jira.timestamp"),
        (
            "jira-issue-updated.json",
            ("webhookEvent",),
            "jira:issue_deleted",
            DeadLetterReason.INVALID,
            "jira.webhookEvent",
        ),
        (
            "jira-issue-updated.json",
            ("changelog", "items"),
            {"field": "Team"},
            DeadLetterReason.INVALID,
            "jira.changelog.items",
        ),
        (
            "jira-issue-updated.json",
            ("changelog", "items", 0, "toString"),
            HUGE,
            DeadLetterReason.UNKNOWN_GROUP,
            "maps to no queue",
        ),
        (
            "zendesk-group-assignment-changed.json",
            ("detail", "id"),
            "not-a-number",
            DeadLetterReason.INVALID,
            "zendesk.detail.id",
        ),
        (
            "zendesk-group-assignment-changed.json",
            ("time",),
            "2026-11-27T09:52:10",
            DeadLetterReason.INVALID,
            "zendesk.time",
        ),
        (
            "zendesk-group-assignment-changed.json",
            ("event", "current"),
            "999",
            DeadLetterReason.UNKNOWN_GROUP,
            "'999'",
        ),
        (
            "feedback.json",
            ("final_queue",),
            "printers",
            DeadLetterReason.INVALID,
            "canonical.final_queue",
        ),
        (
            "feedback.json",
            ("final_queue",),
            "Printers!",
            DeadLetterReason.INVALID,
            "canonical.final_queue",
        ),
        ("feedback.json", ("outcome",), "escalated", DeadLetterReason.INVALID, "canonical.outcome"),
        (
            "feedback.json",
            ("occurred_at",),
            _DROP,
            DeadLetterReason.INVALID,
            "canonical.occurred_at: Field required",
        ),
        ("feedback.json", ("actor",), HUGE, DeadLetterReason.INVALID, "canonical.actor"),
        (
            "feedback.json",
            ("previous_queue",),
            "database",
            DeadLetterReason.INVALID,
            "previous_queue",
        ),
    ],
)
def test_hostile_payload_is_rejected_naming_the_field(
    name: str,
    path: tuple[str | int, ...] | str,
    value: Any,
    reason: DeadLetterReason,
    fragment: str,
) -> None:
    keys = (path,) if isinstance(path, str) else path
    error = rejected(_set(sample(name), keys, value))  # type: ignore[arg-type]
    assert error.reason is reason
    assert fragment in error.message, error.message


def test_missing_ticket_number_falls_back_to_sys_id_like_inbound_incidents() -> None:
    payload = servicenow(number=None)
    assert feedback(payload).ticket_id == "9d385017c611228701d22104cc95c371"
    error = rejected(servicenow(number=None, sys_id=None, previous={"assignment_group": ""}))
    assert error.reason is DeadLetterReason.UNKNOWN_FORMAT


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_leaves,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_only_ever_raise_feedback_parse_error(raw: bytes) -> None:
    with contextlib.suppress(FeedbackParseError):
        read(raw)


@FUZZ
@given(
    name=st.sampled_from(sorted(SCHEMA_OF_SAMPLE)),
    key=st.sampled_from(
        [
            "result",
            "issue",
            "changelog",
            "detail",
            "event",
            "final_queue",
            "occurred_at",
            "type",
            "timestamp",
            "user",
            "outcome",
        ]
    ),
    value=json_values,
)
def test_mutated_samples_only_ever_raise_feedback_parse_error(
    name: str, key: str, value: Any
) -> None:
    payload = sample(name)
    payload[key] = value
    try:
        result = read(payload)
    except FeedbackParseError as exc:
        assert exc.reason in set(DeadLetterReason)
        return
    if isinstance(result, Feedback):
        assert result.final_queue in TAX.labels


# --- the group map ------------------------------------------------------------------------


def test_group_map_names_every_mapping_to_a_queue_the_taxonomy_lacks(tmp_path: Path) -> None:
    path = tmp_path / "groups.yaml"
    path.write_text("servicenow:\n  groups:\n    Printers: printing\n    Net: network_vpn\n")
    with pytest.raises(GroupMapError, match=r"servicenow.groups\['Printers'\]: 'printing'"):
        GroupMap.load(path, labels=TAX.labels)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("jira:\n  groups:\n    Net: network_vpn\n    NET: database\n", "listed twice"),
        ("zendesk: [1, 2]\n", "zendesk"),
        ("servicenow:\n  group: {}\n", "servicenow.group"),
        ("- a\n", "expected a mapping"),
        ("a: [", "not valid YAML"),
    ],
)
def test_invalid_group_map_is_refused_with_the_field(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    with pytest.raises(GroupMapError, match=fragment.replace("[", r"\[")):
        GroupMap.load(path, labels=TAX.labels)


def test_group_names_match_ignoring_case_and_spaces() -> None:
    assert GROUPS.servicenow.queue_of(None, "  network OPERATIONS ") == "network_vpn"
    assert GROUPS.servicenow.queue_of("nope", "Network Operations") == "network_vpn"
    assert GROUPS.servicenow.queue_of("nope", None) is None


# --- topics and the CLI --------------------------------------------------------------------


def test_taxonomy_declares_the_feedback_topics() -> None:
    assert TAX.topics.feedback == "tickets.feedback"
    assert TAX.all_topics()[-3:-1] == ["tickets.feedback", "tickets.feedback.dead-letter"]
    assert TAX.decision_topics() == [
        *(q.topic for q in TAX.queues),
        "tickets.triage",
        "tickets.shadow",
    ]
    assert TAX.with_topic_suffix(".x").topics.feedback == "tickets.feedback.x"


def test_cli_validate_feedback_prints_it_or_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "fb.json"
    path.write_text(json.dumps(sample("zendesk-group-assignment-changed.json")))
    ok = runner.invoke(app, ["validate-feedback", str(path)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["final_queue"] == "software"
    path.write_text(
        json.dumps(
            _set(sample("zendesk-group-assignment-changed.json"), ("event", "current"), "42")
        )
    )
    bad = runner.invoke(app, ["validate-feedback", str(path)])
    assert bad.exit_code == 1
    assert "unknown_group" in bad.stderr
