"""JSON round-trips of every wire contract, and the Ticket's oversize and cleaning rules."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.dead_letter import HEADER_EXCEPTION_MESSAGE, DeadLetter, DeadLetterReason
from schemas.routing import Disposition, RoutedTicket, RoutingDecision, TriageReason
from schemas.ticket import (
    MAX_BODY_CHARS,
    MAX_CATEGORY_HINTS,
    MAX_HINT_CHARS,
    MAX_SUBJECT_CHARS,
    TRUNCATION_MARKER,
    Level,
    Priority,
    SourceSystem,
    Ticket,
)

NOW = datetime(2026, 11, 27, 9, 14, 3, tzinfo=UTC)


def _ticket(**overrides: object) -> Ticket:
    fields: dict[str, object] = {
        "id": "INC0012345",
        "source": SourceSystem.SERVICENOW,
        "created_at": NOW,
        "subject": "VPN drops every ten minutes",
        "body": "Since Monday the GlobalProtect client disconnects.",
        "requester": "abel.tuter@acme.example",
        "priority": Priority.P2,
        "impact": Level.MEDIUM,
        "urgency": Level.HIGH,
        "category_hints": ("network", "vpn"),
        "custom_fields": {"sys_id": "9d38", "nested": {"a": [1, 2.5, None, True]}},
    }
    fields.update(overrides)
    return Ticket.model_validate(fields)


def _decision() -> RoutingDecision:
    return RoutingDecision(
        queue="network_vpn",
        confidence=0.91,
        probabilities={"network_vpn": 0.91, "hardware": 0.09},
        model_id="expert-tiny@3f2a",
        engine_latency_s=0.043,
    )


def test_ticket_json_round_trip_is_lossless() -> None:
    ticket = _ticket()
    assert Ticket.model_validate_json(ticket.model_dump_json()) == ticket


def test_routing_decision_json_round_trip_is_lossless() -> None:
    decision = _decision()
    assert RoutingDecision.model_validate_json(decision.model_dump_json()) == decision


@pytest.mark.parametrize("disposition", list(Disposition))
def test_routed_ticket_json_round_trip_is_lossless(disposition: Disposition) -> None:
    routed = RoutedTicket(
        ticket=_ticket(),
        decision=_decision(),
        disposition=disposition,
        triage_reason=TriageReason.LOW_CONFIDENCE if disposition is Disposition.TRIAGE else None,
        topic="tickets.routed.network-vpn",
        source_topic="tickets.inbound",
        source_partition=3,
        source_offset=1042,
        enqueued_at=NOW,
        received_at=NOW + timedelta(milliseconds=2),
        decided_at=NOW + timedelta(milliseconds=45),
        published_at=NOW + timedelta(milliseconds=46),
    )
    assert RoutedTicket.model_validate_json(routed.model_dump_json()) == routed


def test_dead_letter_round_trips_raw_bytes_as_base64() -> None:
    raw = b"\xff\xfe not utf-8 \x00"
    letter = DeadLetter(
        raw=raw,
        raw_key=b"key-1",
        reason=DeadLetterReason.UNDECODABLE,
        error_type="TicketParseError",
        error="not UTF-8: invalid byte at offset 0",
        source_topic="tickets.inbound",
        source_partition=0,
        source_offset=7,
        failed_at=NOW,
    )
    wire = json.loads(letter.model_dump_json())
    assert base64.b64decode(wire["raw"]) == raw
    assert DeadLetter.model_validate_json(letter.model_dump_json()) == letter
    assert (HEADER_EXCEPTION_MESSAGE, letter.error.encode()) in letter.headers()


def test_ticket_with_timezone_offset_keeps_it_through_json() -> None:
    created = datetime(2026, 11, 27, 10, 14, 3, tzinfo=timezone(timedelta(hours=1)))
    again = Ticket.model_validate_json(_ticket(created_at=created).model_dump_json())
    assert again.created_at == created
    assert again.created_at.utcoffset() == timedelta(hours=1)


def test_oversize_subject_and_body_are_cut_with_marker_and_flagged() -> None:
    ticket = _ticket(subject="s" * (MAX_SUBJECT_CHARS + 1), body="b" * (MAX_BODY_CHARS * 3))
    assert ticket.truncated
    assert len(ticket.subject) == MAX_SUBJECT_CHARS
    assert len(ticket.body) == MAX_BODY_CHARS
    assert ticket.subject.endswith(TRUNCATION_MARKER)
    assert ticket.body.endswith(TRUNCATION_MARKER)
    assert Ticket.model_validate_json(ticket.model_dump_json()) == ticket


def test_text_at_the_limit_is_kept_whole_and_not_flagged() -> None:
    ticket = _ticket(subject="s" * MAX_SUBJECT_CHARS, body="b" * MAX_BODY_CHARS)
    assert not ticket.truncated
    assert TRUNCATION_MARKER not in ticket.subject + ticket.body


def test_nul_padding_does_not_count_towards_the_oversize_rule() -> None:
    ticket = _ticket(subject="a" + "\x00" * (MAX_SUBJECT_CHARS * 2))
    assert ticket.subject == "a"
    assert not ticket.truncated


def test_long_and_many_hints_are_capped_silently() -> None:
    ticket = _ticket(category_hints=("h" * (MAX_HINT_CHARS + 50),))
    assert len(ticket.category_hints[0]) == MAX_HINT_CHARS
    assert not ticket.truncated
    with pytest.raises(ValidationError, match="category_hints"):
        _ticket(category_hints=tuple(f"h{i}" for i in range(MAX_CATEGORY_HINTS + 1)))


@pytest.mark.parametrize("subject", ["", "   ", "\x00", " \x00 \n"])
def test_blank_subject_is_rejected_at_subject(subject: str) -> None:
    with pytest.raises(ValidationError) as info:
        _ticket(subject=subject)
    assert info.value.errors()[0]["loc"] == ("subject",)


def test_naive_or_implausible_created_at_is_rejected_at_created_at() -> None:
    for bad in (datetime(2026, 11, 27, 9, 14, 3), datetime(1970, 1, 1, tzinfo=UTC)):
        with pytest.raises(ValidationError) as info:
            _ticket(created_at=bad)
        assert info.value.errors()[0]["loc"] == ("created_at",)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.text(min_size=1, max_size=MAX_SUBJECT_CHARS + 40),
    body=st.text(max_size=600)
    | st.builds(lambda chunk, n: chunk * n, st.text(min_size=1, max_size=40), st.integers(1, 900)),
    hints=st.lists(st.text(max_size=MAX_HINT_CHARS + 20), max_size=5),
    custom=st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=10,
        ),
        max_size=4,
    ),
)
def test_any_valid_ticket_round_trips_through_json_unchanged(
    subject: str, body: str, hints: list[str], custom: dict[str, object]
) -> None:
    try:
        ticket = _ticket(subject=subject, body=body, category_hints=hints, custom_fields=custom)
    except ValidationError as exc:
        assert [e["loc"][0] for e in exc.errors()] == ["subject"]  # blank subject only
        return
    again = Ticket.model_validate_json(ticket.model_dump_json())
    assert again == ticket
    assert len(again.subject) <= MAX_SUBJECT_CHARS
    assert len(again.body) <= MAX_BODY_CHARS
