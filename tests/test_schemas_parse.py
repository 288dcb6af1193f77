"""`parse_ticket`: reasons, field-naming messages, and that no input bytes escape its error."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.parse import MAX_MESSAGE_CHARS, TicketParseError, parse_ticket
from schemas.ticket import MAX_BODY_CHARS, MAX_SUBJECT_CHARS, TRUNCATION_MARKER, Ticket

SAMPLES = sorted(
    entry.name
    for entry in resources.files("schemas").joinpath("samples").iterdir()
    if entry.name.endswith(".json")
)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def sample(name: str) -> dict[str, Any]:
    text = resources.files("schemas").joinpath("samples", name).read_text("utf-8")
    payload: dict[str, Any] = json.loads(text)
    return payload


def encode(payload: object) -> bytes:
    return json.dumps(payload).encode()


def parse_error(raw: bytes) -> TicketParseError:
    with pytest.raises(TicketParseError) as info:
        parse_ticket(raw)
    return info.value


def outcome(raw: bytes) -> Ticket | TicketParseError:
    """What `parse_ticket` makes of `raw`; any other exception fails the test."""
    try:
        ticket = parse_ticket(raw)
    except TicketParseError as exc:
        assert isinstance(exc.reason, DeadLetterReason)
        assert exc.message
        assert len(exc.message) <= MAX_MESSAGE_CHARS
        return exc
    # Whatever parses must be publishable: it serialises and reads back unchanged.
    assert Ticket.model_validate_json(ticket.model_dump_json()) == ticket
    return ticket


# --- reasons ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8: invalid byte at offset 0"),
        (b'{"subject": "caf\xe9"}', "not UTF-8: invalid byte at offset 16"),
        (b"", "not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b'{"id": 1,}', "not JSON: Expecting property name enclosed in double quotes"),
        (b'{"x": NaN}', "not JSON: NaN is not valid JSON"),
        (b'{"x": -Infinity}', "not JSON: -Infinity is not valid JSON"),
        (b"[" * 100_000, "not JSON: nested too deeply"),
        (b"[1, 2]", "not a JSON object: got an array"),
        (b'"INC001"', "not a JSON object: got a string"),
        (b"null", "not a JSON object: got null"),
        (b"42", "not a JSON object: got a number"),
    ],
)
def test_unreadable_bytes_are_undecodable(raw: bytes, message: str) -> None:
    error = parse_error(raw)
    assert error.reason is DeadLetterReason.UNDECODABLE
    assert error.message.startswith(message)


def test_json_nobody_recognises_is_unknown_format_and_lists_its_keys() -> None:
    error = parse_error(b'{"title": "printer", "when": "today"}')
    assert error.reason is DeadLetterReason.UNKNOWN_FORMAT
    assert "top-level keys: ['title', 'when']" in error.message


def test_recognised_but_broken_payload_is_invalid_and_names_the_field() -> None:
    payload = sample("servicenow-incident.json") | {"opened_at": "2026-13-45"}
    error = parse_error(encode(payload))
    assert error.reason is DeadLetterReason.INVALID
    assert error.message == "servicenow.opened_at: invalid datetime '2026-13-45'"
    assert str(error) == error.message


def test_parse_error_fits_the_dead_letter_envelope_and_pickles() -> None:
    payload = {"issue": {"key": 1, "fields": {f"x{i}": i for i in range(5_000)}}}
    error = parse_error(encode(payload))
    letter = DeadLetter(
        raw=encode(payload),
        reason=error.reason,
        error_type=type(error).__name__,
        error=error.message,
        source_topic="tickets.inbound",
        source_partition=0,
        source_offset=0,
        failed_at=datetime.now(UTC),
    )
    assert letter.error == error.message
    again = pickle.loads(pickle.dumps(error))  # noqa: S301  # our own object, just pickled
    assert (again.reason, again.message) == (error.reason, error.message)


def test_many_errors_are_summarised() -> None:
    fields = {"summary": 1, "created": 2, "labels": 3, "components": 4, "issuetype": 5}
    error = parse_error(encode({"issue": {"key": 6, "fields": fields}}))
    assert error.message.count("jira.issue") == 3
    assert error.message.endswith("and 3 more")


# --- awkward but readable inputs -------------------------------------------------------


def test_utf8_bom_is_accepted() -> None:
    raw = b"\xef\xbb\xbf" + encode(sample("zendesk-webhook.json"))
    assert parse_ticket(raw).id == "81724"


def test_lone_surrogate_escapes_become_replacement_characters() -> None:
    payload = sample("zendesk-webhook.json")
    raw = encode(payload).replace(b"New starter", b"New \\ud800starter\\udfff", 1)
    raw = raw.replace(b'"event"', b'"ev\\udc00ent"', 1)
    ticket = parse_ticket(raw)
    assert ticket.subject.startswith("New \ufffdstarter\ufffd")
    assert "ev\ufffdent" in "".join(ticket.custom_fields)
    ticket.model_dump_json().encode("utf-8")


def test_valid_surrogate_pairs_are_kept() -> None:
    raw = encode(sample("zendesk-webhook.json") | {"note": "\U0001f600"})  # ensure_ascii pair
    assert parse_ticket(raw).custom_fields["webhook.note"] == "\U0001f600"


def test_huge_description_is_truncated_with_marker_not_rejected() -> None:
    payload = sample("servicenow-incident.json")
    payload["short_description"] = "VPN " * 1_000_000
    payload["description"] = "x" * 5_000_000
    ticket = parse_ticket(encode(payload))
    assert ticket.truncated
    assert len(ticket.subject) == MAX_SUBJECT_CHARS
    assert ticket.subject.endswith(TRUNCATION_MARKER)
    assert len(ticket.body) == MAX_BODY_CHARS
    assert ticket.body.endswith(TRUNCATION_MARKER)


def test_huge_payload_of_unknown_fields_is_fine() -> None:
    payload = sample("jira-issue-created.json")
    payload["issue"]["fields"].update({f"customfield_{i}": "v" * 100 for i in range(20_000)})
    ticket = parse_ticket(encode(payload))
    assert len(ticket.custom_fields) > 20_000


@pytest.mark.parametrize("depth", [50, 300, 900])
def test_deeply_nested_unknown_field_never_escapes(depth: int) -> None:
    payload = sample("zendesk-ticket.json")
    payload["ticket"]["via"] = json.loads("[" * depth + "]" * depth)
    result = outcome(encode(payload))
    if isinstance(result, TicketParseError):
        assert result.reason is DeadLetterReason.INVALID
        assert result.message.startswith("zendesk.")


def test_huge_integers_are_undecodable_not_a_crash() -> None:
    error = parse_error(b'{"id": ' + b"9" * 5_000 + b"}")
    assert error.reason is DeadLetterReason.UNDECODABLE


# --- properties ------------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_ticket_parse_error(raw: bytes) -> None:
    outcome(raw)


@FUZZ
@given(value=json_values)
def test_arbitrary_json_only_ever_raises_ticket_parse_error(value: object) -> None:
    outcome(encode(value))


def _paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    stack = [(prefix, node)]
    while stack:
        path, current = stack.pop()
        children = (
            current.items()
            if isinstance(current, dict)
            else enumerate(current)
            if isinstance(current, list)
            else ()
        )
        for key, child in children:
            found.append((*path, key))
            stack.append(((*path, key), child))
    return found


SAMPLE_PATHS = [(name, path) for name in SAMPLES for path in _paths(sample(name))]


@FUZZ
@given(target=st.sampled_from(SAMPLE_PATHS), replacement=json_values, delete=st.booleans())
def test_mutated_samples_only_ever_raise_ticket_parse_error(
    target: tuple[str, tuple[Any, ...]], replacement: object, delete: bool
) -> None:
    name, path = target
    payload = sample(name)
    parent: Any = payload
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    result = outcome(encode(payload))
    if isinstance(result, TicketParseError):
        assert result.reason in (DeadLetterReason.INVALID, DeadLetterReason.UNKNOWN_FORMAT)


USED_STRING_FIELDS = [
    ("servicenow-incident.json", ("short_description",), "servicenow.short_description"),
    ("servicenow-incident.json", ("description",), "servicenow.description"),
    ("servicenow-incident.json", ("category",), "servicenow.category"),
    ("servicenow-table-api-response.json", ("result", "number"), "servicenow.result.number"),
    ("jira-issue-created.json", ("issue", "key"), "jira.issue.key"),
    ("jira-issue-created.json", ("issue", "fields", "summary"), "jira.issue.fields.summary"),
    (
        "jira-issue-created.json",
        ("issue", "fields", "priority", "name"),
        "jira.issue.fields.priority.name",
    ),
    ("zendesk-ticket.json", ("ticket", "subject"), "zendesk.ticket.subject"),
    ("zendesk-ticket.json", ("ticket", "description"), "zendesk.ticket.description"),
    ("canonical-ticket.json", ("requester",), "canonical.requester"),
]


@FUZZ
@given(
    target=st.sampled_from(USED_STRING_FIELDS),
    wrong=st.integers()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(st.text(), min_size=1)
    | st.dictionaries(st.text(), st.integers(), min_size=1),
)
def test_wrong_type_in_a_used_field_is_invalid_and_names_it(
    target: tuple[str, tuple[str, ...], str], wrong: object
) -> None:
    name, path, shown_as = target
    payload = sample(name)
    parent: Any = payload
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = wrong
    error = parse_error(encode(payload))
    assert error.reason is DeadLetterReason.INVALID
    assert error.message.startswith(shown_as + ":") or f"; {shown_as}:" in error.message


TIME_FIELDS = [
    ("servicenow-incident.json", ("opened_at",), "servicenow.opened_at"),
    ("jira-issue-created.json", ("issue", "fields", "created"), "jira.issue.fields.created"),
    ("zendesk-ticket.json", ("ticket", "created_at"), "zendesk.ticket.created_at"),
    ("canonical-ticket.json", ("created_at",), "canonical.created_at"),
]


@FUZZ
@given(target=st.sampled_from(TIME_FIELDS), text=st.text(max_size=40))
def test_invalid_timestamp_is_named_or_parses_to_an_aware_time(
    target: tuple[str, tuple[str, ...], str], text: str
) -> None:
    name, path, shown_as = target
    payload = sample(name)
    parent: Any = payload
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = text
    result = outcome(encode(payload))
    if isinstance(result, Ticket):
        assert result.created_at.utcoffset() is not None
        assert result.created_at.year >= 1990
    else:
        assert result.reason is DeadLetterReason.INVALID
        assert result.message.startswith(shown_as + ":")


@FUZZ
@given(
    name=st.sampled_from(["servicenow-incident.json", "jira-issue-created.json"]),
    subject=st.text(min_size=1, max_size=50).map(lambda s: s * 20),
    body=st.text(max_size=100).map(lambda s: s * 200),
)
def test_any_subject_and_body_parse_within_the_oversize_rule(
    name: str, subject: str, body: str
) -> None:
    payload = sample(name)
    if name.startswith("servicenow"):
        payload.update(short_description=subject, description=body)
    else:
        payload["issue"]["fields"].update(summary=subject, description=body)
    result = outcome(encode(payload))
    if isinstance(result, Ticket):
        assert len(result.subject) <= MAX_SUBJECT_CHARS
        assert len(result.body) <= MAX_BODY_CHARS
        visible = [text.replace("\x00", "").strip() for text in (subject, body)]
        assert result.truncated == (
            len(visible[0]) > MAX_SUBJECT_CHARS or len(visible[1]) > MAX_BODY_CHARS
        )
    else:  # only a subject with no visible text is refused
        assert "summary" in result.message or "short_description" in result.message
