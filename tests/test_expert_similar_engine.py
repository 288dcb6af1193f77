"""The similar-ticket index as built by `expert build` and served through real vLLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from expert.build import write_card
from expert.dataset import Examples, read_examples, split
from expert.engine import BatchExpert
from expert.lexical import LexicalModel, lexical_dir
from expert.routing_score import fit_routing_score
from expert.serving import load_card
from expert.similar import SimilarTicketIndex, has_similar, similar_dir
from loadgen.corpus import generate
from tests.expert_fixtures import tiny_engine_config


def _positions(n: int, *, seed: int, fraction: float) -> tuple[list[int], list[int]]:
    """The training and test positions of an n-row file under the recorded split."""
    parts = split(
        Examples([str(i) for i in range(n)], ["x"] * n), seed=seed, test_fraction=fraction
    )
    return [int(i) for i in parts.train.texts], [int(i) for i in parts.test.texts]


def _training_and_test_ids(
    corpus: Path, *, seed: int, fraction: float
) -> tuple[set[str], set[str]]:
    records = [json.loads(line) for line in corpus.read_text("utf-8").splitlines() if line]
    ids = [r["ticket"]["id"] for r in records]
    train, test = _positions(len(ids), seed=seed, fraction=fraction)
    return {ids[i] for i in train}, {ids[i] for i in test}


def test_the_build_indexes_every_training_row_and_no_test_row(
    tiny_fused_dir: Path, tiny_corpus_path: Path
) -> None:
    card = load_card(tiny_fused_dir)
    assert card.similar is not None and card.training is not None
    assert has_similar(tiny_fused_dir)
    doc = json.loads((similar_dir(tiny_fused_dir) / "similar.json").read_text("utf-8"))
    train_ids, test_ids = _training_and_test_ids(
        tiny_corpus_path, seed=card.training.split_seed, fraction=card.training.test_fraction
    )
    assert set(doc["ticket_ids"]) == train_ids
    assert not set(doc["ticket_ids"]) & test_ids
    assert card.similar.rows == len(train_ids)
    assert card.similar.validation_hit_rate is not None
    assert 0.0 < card.similar.validation_hit_rate <= 1.0
    assert (
        card.similar.memory_bytes
        == SimilarTicketIndex.load(similar_dir(tiny_fused_dir)).memory_bytes
    )


def test_served_predictions_carry_similar_tickets_and_top_queues(
    tiny_fused_dir: Path, tiny_corpus_path: Path
) -> None:
    card = load_card(tiny_fused_dir)
    assert card.similar is not None and card.training is not None
    examples = read_examples(tiny_corpus_path)
    train, _ = _positions(
        len(examples), seed=card.training.split_seed, fraction=card.training.test_fraction
    )
    train_text = examples.texts[train[0]]
    texts = [train_text, *(t.ticket.text() for t in generate(20, seed=99))]
    expert = BatchExpert(tiny_engine_config(tiny_fused_dir))
    expert.start()
    try:
        predictions = expert.classify_batch(texts)
    finally:
        expert.close()
    for prediction in predictions:
        assert 0 < len(prediction.similar) <= card.similar.k
        assert all(t.queue in card.labels for t in prediction.similar)
        sims = [t.similarity for t in prediction.similar]
        assert sims == sorted(sims, reverse=True)
        top = prediction.top()
        assert [s.queue for s in top][0] == prediction.label
        assert len(top) == 3 and top[0].probability >= top[1].probability >= top[2].probability
    first = predictions[0].similar[0]
    assert first.similarity > 0.99
    assert first.snippet == " ".join(train_text.split())[: len(first.snippet)]


def test_an_expert_without_an_index_serves_no_similar_tickets(
    tiny_expert_dir: Path, batch_expert: BatchExpert
) -> None:
    assert load_card(tiny_expert_dir).similar is None
    (prediction,) = batch_expert.classify_batch(["printer jammed on floor 3"])
    assert prediction.similar == ()
    assert len(prediction.top()) == 3


def _with_routing_score(expert_dir: Path, out: Path) -> Path:
    """A copy of `expert_dir` whose card carries a routing score reading 10 neighbours
    (fitted on made-up answers: what matters here is that serving applies it)."""
    shutil.copytree(expert_dir, out)
    card = load_card(out)
    rng = np.random.default_rng(0)
    n, labels = 200, len(card.labels)
    probs = rng.dirichlet(np.ones(labels), n)
    answered = probs.argmax(axis=1)
    right = rng.random(n) < 0.6
    codes = np.where(
        rng.random((n, 10)) < np.where(right, 0.9, 0.2)[:, None], answered[:, None], -1
    )
    fitted = fit_routing_score(
        probs,
        np.where(right, answered, (answered + 1) % labels),
        queue_shares=np.full(labels, 1 / labels),
        neighbour_codes=codes,
        neighbour_similarities=rng.uniform(0.1, 0.9, (n, 10)),
        neighbours=10,
    )
    assert fitted is not None
    write_card(out, card.model_copy(update={"routing_score": fitted.score}))
    return out


def test_the_routing_score_is_served_even_with_similar_tickets_switched_off(
    tiny_fused_dir: Path, tmp_path: Path
) -> None:
    scored = _with_routing_score(tiny_fused_dir, tmp_path / "scored")
    card = load_card(scored)
    assert card.routing_score is not None and card.routing_score.neighbours == 10
    config = tiny_engine_config(scored).model_copy(update={"similar_tickets": 0})
    texts = ["printer jammed on floor 3", "vpn drops every ten minutes"]
    expert = BatchExpert(config)
    expert.start()
    try:
        predictions = expert.classify_batch(texts)
    finally:
        expert.close()
    # The index answers the score's neighbours, computed here on their own.
    index = SimilarTicketIndex.load(similar_dir(scored))
    rows, sims = index.neighbours(LexicalModel.load(lexical_dir(scored)).vectors(texts), k=10)
    for i, prediction in enumerate(predictions):
        assert prediction.similar == ()
        probs = np.asarray([[prediction.probabilities[label] for label in card.labels]])
        expected = card.routing_score.of(probs, index.queue_codes(rows[i : i + 1]), sims[i : i + 1])
        assert prediction.confidence == pytest.approx(float(expected[0]), abs=1e-9)
        assert prediction.confidence != pytest.approx(prediction.probabilities[prediction.label])
