"""A fields-reading expert built by the default recipe and served by real vLLM on the CPU:
the engine reads each `Ticket` as the card says, the same as the build read its rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from expert.fields import expert_input
from expert.serving import load_card
from schemas.ticket import Priority, Ticket
from tests.expert_fixtures import (
    FIELDS_INPUTS,
    FIELDS_QUEUES,
    InProcessEngine,
    fields_rows,
    tiny_engine_config,
)

pytestmark = pytest.mark.slow


def _ticket(number: int, row: dict[str, str]) -> Ticket:
    """A served ticket carrying the row's fields where an ITSM adapter would put them."""
    return Ticket(
        id=f"T-{number}",
        created_at=datetime(2026, 11, 27, tzinfo=UTC),
        subject=row["text"],
        priority=Priority(f"P{row['priority'][0]}"),
        custom_fields={"site": {"display_value": row["site"], "value": f"sys-{number}"}},
    )


def test_a_fields_expert_served_by_vllm_routes_on_the_field(tiny_fields_dir: Path) -> None:
    card = load_card(tiny_fields_dir)
    assert card.inputs == FIELDS_INPUTS
    rows = fields_rows(60, seed=99)
    tickets = [_ticket(i, row) for i, row in enumerate(rows)]
    engine = InProcessEngine(tiny_engine_config(tiny_fields_dir))
    try:
        expert = engine.get()
        served = expert.classify_batch(tickets)
        given = expert.classify_batch([expert_input(t, card.inputs) for t in tickets])
    finally:
        engine.close()
    assert all(p.label in FIELDS_QUEUES for p in served)
    correct = sum(p.label == row["label"] for p, row in zip(served, rows, strict=True))
    assert correct / len(rows) >= 0.9  # the texts alone say nothing (1/3 by chance)
    assert [p.label for p in served] == [p.label for p in given]
    for mine, theirs in zip(served, given, strict=True):
        assert mine.probabilities == pytest.approx(theirs.probabilities, abs=1e-5)
