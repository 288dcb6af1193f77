"""The corpus's drift option: a new product's tickets and an older desk's labels, while the
default corpus stays byte for byte what it was."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from loadgen.corpus import QUEUES, LabeledTicket, corpus_command, generate
from loadgen.corpus_drift import NEW_PRODUCT_QUEUE, OLD_DESK, Drift

# Digests of the default corpus's JSONL as written before the drift option existed: models,
# benchmarks and cached experts depend on these exact tickets.
DEFAULT_DIGESTS = {
    (500, 0): "3220b9bcb7e41c7d98ebb8df1f9fc34cb608528ed218ead4f31968064f1b3b20",
    (1200, 7): "63ad602206c6cb26aac992dd5e1bc5b8369b952655c62bc365a571221ed289f0",
}


def _digest(tickets: list[LabeledTicket]) -> str:
    h = hashlib.sha256()
    for t in tickets:
        h.update((json.dumps(t.to_record(), ensure_ascii=False) + "\n").encode())
    return h.hexdigest()


@pytest.mark.parametrize(("n", "seed"), sorted(DEFAULT_DIGESTS))
def test_the_default_corpus_is_unchanged(n: int, seed: int) -> None:
    assert _digest(generate(n, seed=seed)) == DEFAULT_DIGESTS[(n, seed)]
    assert _digest(generate(n, seed=seed, drift=None)) == DEFAULT_DIGESTS[(n, seed)]


def _mentions_product(text: str) -> bool:
    return any(word in text for word in ("Zscaler", "ZCC", "ZPA"))


def test_a_new_product_takes_its_share_of_tickets_and_its_queue() -> None:
    default = generate(2000, seed=4)
    drifted = generate(2000, seed=4, drift=Drift(new_product=0.3))
    assert not any(_mentions_product(t.ticket.text()) for t in default)
    product = [t for t in drifted if _mentions_product(t.ticket.text())]
    # About 30%, a few names lost to the corpus's typos.
    assert 0.22 * 2000 < len(product) < 0.34 * 2000
    assert Counter(t.queue for t in product).most_common(1)[0][0] == NEW_PRODUCT_QUEUE
    assert {t.queue for t in drifted} == set(QUEUES)
    assert drifted == generate(2000, seed=4, drift=Drift(new_product=0.3))


def test_an_older_desk_files_cloud_tickets_under_servers() -> None:
    old = generate(1500, seed=5, drift=OLD_DESK)
    new = generate(1500, seed=5)
    counts = Counter(t.queue for t in old)
    assert "cloud_devops" not in counts
    # Same tickets, only the labels differ, and only cloud's.
    for a, b in zip(old, new, strict=True):
        assert a.ticket == b.ticket
        assert a.queue == b.queue or (b.queue, a.queue) == ("cloud_devops", "servers_storage")
    assert sum(b.queue == "cloud_devops" for b in new) > 80


def test_a_drift_share_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        Drift(new_product=1.5)


def test_the_corpus_command_writes_a_drifted_corpus(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(corpus_command)
    out = tmp_path / "c.jsonl"
    result = CliRunner().invoke(app, ["--n", "60", "--out", str(out), "--drift", "old-desk"])
    assert result.exit_code == 0, result.output
    labels = {json.loads(line)["label"] for line in out.read_text().splitlines()}
    assert "cloud_devops" not in labels
    bad = CliRunner().invoke(app, ["--n", "5", "--out", str(out), "--drift", "sideways"])
    assert bad.exit_code == 2
