"""The labeled synthetic corpus: deterministic, covers the taxonomy, varied, valid records."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from loadgen.corpus import LabeledTicket, corpus_command, generate, write_jsonl
from schemas.taxonomy import Taxonomy
from schemas.ticket import Ticket


def test_same_seed_gives_the_same_corpus_and_another_seed_does_not() -> None:
    a = [t.model_dump(mode="json") for t in generate(300, seed=11)]
    b = [t.model_dump(mode="json") for t in generate(300, seed=11)]
    c = [t.model_dump(mode="json") for t in generate(300, seed=12)]
    assert a == b
    assert a != c


def test_every_taxonomy_queue_is_covered_and_nothing_else() -> None:
    counts = Counter(t.queue for t in generate(2000, seed=0))
    assert set(counts) == set(Taxonomy.load().labels)
    # Roughly balanced: no queue below half its fair share.
    assert min(counts.values()) > 2000 / 12 / 2


def test_priorities_are_p1_to_p5_and_match_the_ticket() -> None:
    tickets = generate(500, seed=3)
    assert {t.priority for t in tickets} <= {"P1", "P2", "P3", "P4", "P5"}
    assert all(t.ticket.priority == t.priority for t in tickets)
    assert len({t.priority for t in tickets}) >= 4


def test_tickets_are_varied_like_real_ones() -> None:
    tickets = generate(3000, seed=0)
    texts = [t.ticket.text() for t in tickets]
    assert len(set(texts)) > 0.97 * len(texts)
    joined = "\n".join(texts)
    for marker in ("pwd", "VPN", "MFA"):
        assert marker in joined, marker
    # Email noise is in the bodies; the text the expert reads drops it (schemas.email_text).
    bodies = "\n".join(t.ticket.body for t in tickets)
    for marker in ("-----Original Message-----", "Sent from my iPhone"):
        assert marker in bodies, marker
    non_english = [t for t in texts if re.search(r"[äöüéèàñ¿]|bitte|merci|necesito", t, re.I)]
    assert 0.01 * len(texts) < len(non_english) < 0.15 * len(texts)


def test_no_single_keyword_separates_a_queue() -> None:
    """Real tickets overlap: words typical of one queue show up in others' tickets."""
    tickets = generate(3000, seed=0)
    for word in ("password", "vpn", "outlook", "server"):
        queues = {t.queue for t in tickets if word in t.ticket.text().lower()}
        assert len(queues) >= 3, word


def test_jsonl_records_round_trip_to_tickets(tmp_path: Path) -> None:
    tickets = generate(50, seed=5)
    path = tmp_path / "c.jsonl"
    write_jsonl(tickets, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50
    for line, original in zip(lines, tickets, strict=True):
        record = json.loads(line)
        assert set(record) == {"text", "label", "priority", "ticket"}
        ticket = Ticket.model_validate(record["ticket"])
        assert ticket == original.ticket
        assert record["text"] == ticket.text()
        assert LabeledTicket(ticket=ticket, queue=record["label"], priority=record["priority"])


def test_corpus_command_writes_the_file(tmp_path: Path) -> None:
    import typer

    app = typer.Typer()
    app.command()(corpus_command)
    out = tmp_path / "corpus.jsonl"
    result = CliRunner().invoke(app, ["--n", "40", "--seed", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 40
    assert out.read_text() == "".join(
        json.dumps(t.to_record(), ensure_ascii=False) + "\n" for t in generate(40, seed=2)
    )
