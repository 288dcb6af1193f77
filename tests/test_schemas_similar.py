"""The triage record's help for the human on the wire: top queues and similar tickets."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from schemas.cli import json_schemas
from schemas.routing import (
    SNIPPET_MAX_CHARS,
    Disposition,
    RoutedTicket,
    RoutingDecision,
    SimilarTicket,
    TriageReason,
    top_suggestions,
)
from schemas.ticket import Ticket

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
PROBABILITIES = {"hardware": 0.41, "network_vpn": 0.35, "software": 0.2, "database": 0.04}


def _triage_record() -> RoutedTicket:
    return RoutedTicket(
        ticket=Ticket(id="INC0000042", subject="printer jammed", created_at=NOW),
        decision=RoutingDecision(
            queue="hardware",
            confidence=0.41,
            probabilities=PROBABILITIES,
            model_id="expert@v3",
            engine_latency_s=0.05,
            suggestions=top_suggestions(PROBABILITIES),
            similar_tickets=(
                SimilarTicket(
                    ticket_id="INC0000007",
                    snippet="printer on floor 3 jammed again",
                    queue="hardware",
                    similarity=0.81,
                    settled_at=NOW,
                ),
                SimilarTicket(
                    ticket_id="row-12", snippet="vpn drops", queue="network_vpn", similarity=0.3
                ),
            ),
        ),
        disposition=Disposition.TRIAGE,
        triage_reason=TriageReason.LOW_CONFIDENCE,
        topic="tickets.triage",
        source_topic="tickets.inbound",
        source_partition=0,
        source_offset=3,
        received_at=NOW,
        decided_at=NOW,
        published_at=NOW,
    )


def test_a_triage_record_with_help_validates_against_the_exported_schema() -> None:
    validator = Draft202012Validator(json_schemas()["routed-ticket"])
    record = json.loads(_triage_record().model_dump_json())
    assert list(validator.iter_errors(record)) == []
    assert [s["queue"] for s in record["decision"]["suggestions"]] == [
        "hardware",
        "network_vpn",
        "software",
    ]
    assert RoutedTicket.model_validate(record) == _triage_record()
    record["decision"]["similar_tickets"][0]["similarity"] = 1.5
    assert list(validator.iter_errors(record))


def test_a_record_without_help_still_validates() -> None:
    """Records written before the help existed, and deadline triage, carry none."""
    record = json.loads(_triage_record().model_dump_json())
    del record["decision"]["suggestions"], record["decision"]["similar_tickets"]
    parsed = RoutedTicket.model_validate(record)
    assert parsed.decision.suggestions == () and parsed.decision.similar_tickets == ()


def test_snippets_are_bounded() -> None:
    with pytest.raises(ValidationError, match="snippet"):
        SimilarTicket(
            ticket_id="x", snippet="y" * (SNIPPET_MAX_CHARS + 1), queue="q", similarity=0.5
        )


def test_top_suggestions_are_most_probable_first_ties_by_name() -> None:
    ranked = top_suggestions({"b": 0.25, "a": 0.25, "c": 0.5}, n=2)
    assert [(s.queue, s.probability) for s in ranked] == [("c", 0.5), ("a", 0.25)]
