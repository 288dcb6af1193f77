"""The similar-ticket index: build, save and load as data, query order, near-duplicates."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from expert.lexical import LexicalModel, LexicalSettings
from expert.similar import (
    SIMILAR_ARRAYS,
    SIMILAR_JSON,
    IndexedTicket,
    SimilarIndexError,
    SimilarTicketIndex,
    snippet,
)
from schemas.routing import SNIPPET_MAX_CHARS

LABELS = ("access", "hardware", "network")
TICKETS = [
    IndexedTicket("T-1", "password reset for the sap account please", "access"),
    IndexedTicket("T-2", "printer on floor 3 is jammed again", "hardware"),
    IndexedTicket("T-3", "vpn drops every ten minutes from home", "network"),
    IndexedTicket("T-4", "cannot log in to outlook, password expired", "access"),
    IndexedTicket("T-5", "laptop screen flickers and goes black", "hardware"),
    IndexedTicket(
        "T-6",
        "wifi in meeting room b is very slow",
        "network",
        settled_at=datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
    ),
]


@pytest.fixture(scope="module")
def lexical() -> LexicalModel:
    texts = [t.text for t in TICKETS]
    return LexicalModel.fit(
        texts, [t.queue for t in TICKETS], labels=LABELS, settings=LexicalSettings(min_df=1)
    )


def _index(lexical: LexicalModel, tickets: list[IndexedTicket] = TICKETS) -> SimilarTicketIndex:
    return SimilarTicketIndex.build(
        tickets, lexical.vectors([t.text for t in tickets]), labels=LABELS
    )


def test_a_ticket_finds_its_near_duplicate_first(lexical: LexicalModel) -> None:
    index = _index(lexical)
    (found,) = index.query(lexical.vectors(["the vpn drops every 10 minutes at home"]), k=3)
    assert found[0].ticket_id == "T-3"
    assert found[0].queue == "network"
    assert found[0].snippet == TICKETS[2].text


def test_results_come_most_similar_first_with_similarities_in_range(
    lexical: LexicalModel,
) -> None:
    index = _index(lexical)
    results = index.query(lexical.vectors(["password expired, cannot log in to sap"]), k=5)
    similarities = [t.similarity for t in results[0]]
    assert similarities == sorted(similarities, reverse=True)
    assert all(0.0 < s <= 1.0 for s in similarities)
    assert {t.ticket_id for t in results[0][:2]} == {"T-1", "T-4"}


def test_an_identical_text_has_similarity_one(lexical: LexicalModel) -> None:
    index = _index(lexical)
    (found,) = index.query(lexical.vectors([TICKETS[4].text]), k=1)
    assert found[0].ticket_id == "T-5"
    assert found[0].similarity == pytest.approx(1.0, abs=1e-3)


def test_save_and_load_round_trip_without_pickle(lexical: LexicalModel, tmp_path: Path) -> None:
    index = _index(lexical)
    index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SIMILAR_JSON, SIMILAR_ARRAYS])
    json.loads((tmp_path / SIMILAR_JSON).read_text("utf-8"))  # plain JSON
    loaded = SimilarTicketIndex.load(tmp_path)
    queries = lexical.vectors(["wifi is slow in the meeting room", "printer jammed"])
    assert loaded.query(queries, k=4) == index.query(queries, k=4)
    settled = next(t for t in loaded.query(queries, k=1)[0])
    assert settled.ticket_id == "T-6"
    assert settled.settled_at == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def test_loading_a_damaged_index_fails_with_the_folder_named(
    lexical: LexicalModel, tmp_path: Path
) -> None:
    _index(lexical).save(tmp_path)
    (tmp_path / SIMILAR_ARRAYS).write_bytes(b"not safetensors")
    with pytest.raises(SimilarIndexError, match=str(tmp_path)):
        SimilarTicketIndex.load(tmp_path)


def test_an_empty_index_answers_nothing(lexical: LexicalModel, tmp_path: Path) -> None:
    index = SimilarTicketIndex.build([], lexical.vectors([]), labels=LABELS)
    assert len(index) == 0
    assert index.query(lexical.vectors(["printer jammed"]), k=5) == [()]
    assert index.vote(lexical.vectors(["printer jammed"]), k=5).sum() == 0
    index.save(tmp_path)
    assert SimilarTicketIndex.load(tmp_path).query(lexical.vectors(["x y"]), k=5) == [()]


def test_a_query_sharing_no_term_finds_nothing(lexical: LexicalModel) -> None:
    (found,) = _index(lexical).query(lexical.vectors(["zzzz qqqq"]), k=3)
    assert found == ()


def test_a_ticket_listed_twice_is_indexed_once_with_its_last_queue(
    lexical: LexicalModel,
) -> None:
    relabeled = IndexedTicket("T-2", TICKETS[1].text, "network")
    index = _index(lexical, [*TICKETS, relabeled])
    assert len(index) == len(TICKETS)
    (found,) = index.query(lexical.vectors([TICKETS[1].text]), k=1)
    assert (found[0].ticket_id, found[0].queue) == ("T-2", "network")


def test_vote_weighs_neighbours_and_can_exclude_a_row(lexical: LexicalModel) -> None:
    index = _index(lexical)
    own = lexical.vectors([TICKETS[0].text])
    with_self = index.vote(own, k=2)
    assert with_self.shape == (1, len(LABELS))
    assert with_self.sum() == pytest.approx(1.0)
    assert with_self[0].argmax() == LABELS.index("access")
    rows, _ = index.neighbours(own, k=6, exclude=[0])
    assert 0 not in rows[0].tolist()


def test_snippets_are_short_and_single_line() -> None:
    text = "line one\n\n  line two " + "x" * 500
    cut = snippet(text)
    assert len(cut) == SNIPPET_MAX_CHARS
    assert cut.startswith("line one line two x")


def test_unknown_queue_is_refused(lexical: LexicalModel) -> None:
    bad = [IndexedTicket("T-9", "printer jammed", "kitchen")]
    with pytest.raises(SimilarIndexError, match="kitchen"):
        SimilarTicketIndex.build(bad, lexical.vectors(["printer jammed"]), labels=LABELS)


def test_pruned_rows_keep_their_heaviest_terms(lexical: LexicalModel) -> None:
    vectors = lexical.vectors([t.text for t in TICKETS])
    index = SimilarTicketIndex.build(TICKETS, vectors, labels=LABELS, max_terms=5)
    (found,) = index.query(lexical.vectors([TICKETS[2].text]), k=1)
    # Queries are pruned the same way: a ticket asked about again is still identical.
    assert found[0].ticket_id == "T-3"
    assert found[0].similarity == pytest.approx(1.0, abs=1e-3)
    assert index.memory_bytes < _index(lexical).memory_bytes
