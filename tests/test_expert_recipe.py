"""The default build: candidates within a budget, fused with the lexical model, chosen and
calibrated on validation rows, served fused by real vLLM."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from expert.build import BuildError
from expert.dataset import Examples, read_examples, split, validation_split
from expert.engine import BatchExpert
from expert.fusion import ConfidenceMap, FusionWeights, combine, recalibrate
from expert.lexical import LexicalModel, has_lexical, lexical_dir
from expert.recipe import RecipeConfig, build
from expert.serving import load_card
from loadgen.corpus import generate
from schemas.taxonomy import Taxonomy
from tests.expert_fixtures import TINY_RECIPE_CONFIG, tiny_engine_config


def test_validation_rows_are_stratified_and_disjoint_from_fitting_rows() -> None:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 3 + ["d"]
    rows = Examples([f"t{i}" for i in range(len(labels))], labels)
    fit, val = validation_split(rows, fraction=0.2, seed=0)
    assert set(fit.texts).isdisjoint(val.texts)
    assert len(fit) + len(val) == len(rows)
    counts = Counter(val.labels)
    assert counts["a"] == 10 and counts["b"] == 6 and counts["c"] == 1
    assert "d" not in counts  # a single row stays with the fitting rows


def test_the_recipe_writes_a_fused_calibrated_expert(tiny_fused_dir: Path) -> None:
    card = load_card(tiny_fused_dir)
    assert card.fusion is not None and card.routing is not None and card.training is not None
    names = {c.name for c in card.fusion.candidates}
    assert names == {"lexical", "scratch", "scratch+lexical"}
    assert card.fusion.chosen in {"scratch", "scratch+lexical"}
    assert card.fusion.validation_examples == card.training.validation_examples > 0
    assert card.training.train_examples + card.training.validation_examples == 960
    assert card.training.test_examples == 240
    assert has_lexical(tiny_fused_dir) == (
        card.fusion.lexical_weight > 0 or card.similar is not None
    )
    assert not list(tiny_fused_dir.glob("lexical*.safetensors"))  # vLLM would load it
    chosen = next(c for c in card.fusion.candidates if c.name == card.fusion.chosen)
    best = max(
        card.fusion.candidates, key=lambda c: c.accuracy + c.macro_f1 if c.name != "lexical" else -1
    )
    assert chosen == best
    assert chosen.tickets_per_s is not None and chosen.tickets_per_s > 0
    routing = card.routing
    assert routing.target_precision == TINY_RECIPE_CONFIG.target_precision
    if routing.confidence_threshold is not None:
        assert routing.validation_precision is not None
        assert routing.validation_precision >= routing.target_precision


def test_served_answers_are_the_fusion_of_the_neural_and_lexical_parts(
    tiny_fused_dir: Path,
) -> None:
    card = load_card(tiny_fused_dir)
    assert card.fusion is not None
    texts = [t.ticket.text() for t in generate(40, seed=99)]
    expert = BatchExpert(tiny_engine_config(tiny_fused_dir))
    expert.start()
    try:
        predictions = expert.classify_batch(texts)
    finally:
        expert.close()
    assert all(p.neural_probabilities is not None for p in predictions)
    neural = np.asarray([[p.neural_probabilities[x] for x in card.labels] for p in predictions])  # type: ignore[index]
    lexical = (
        LexicalModel.load(lexical_dir(tiny_fused_dir)).scores(texts)
        if card.fusion.lexical_weight > 0
        else None
    )
    expected = recalibrate(
        combine(
            FusionWeights(
                neural_weight=card.fusion.neural_weight, lexical_weight=card.fusion.lexical_weight
            ),
            neural_probabilities=neural,
            lexical_scores=lexical,
        ),
        ConfidenceMap(slope=card.fusion.confidence_slope, bias=card.fusion.confidence_bias),
    )
    served = np.asarray([[p.probabilities[x] for x in card.labels] for p in predictions])
    np.testing.assert_allclose(served, expected, atol=1e-6)
    assert [p.label for p in predictions] == [card.labels[i] for i in expected.argmax(axis=1)]


def test_the_recipe_never_sees_the_held_out_test_rows(
    tiny_fused_dir: Path, tiny_corpus_path: Path
) -> None:
    card = load_card(tiny_fused_dir)
    assert card.training is not None
    examples = read_examples(tiny_corpus_path)
    parts = split(
        examples, seed=card.training.split_seed, test_fraction=card.training.test_fraction
    )
    fit, val = validation_split(parts.train, fraction=card.training.validation_fraction, seed=0)
    assert (
        len(fit) == card.training.train_examples and len(val) == card.training.validation_examples
    )
    lexical = (
        LexicalModel.load(lexical_dir(tiny_fused_dir)) if has_lexical(tiny_fused_dir) else None
    )
    if lexical is not None:  # refitted on every training row once the fusion is fitted
        assert lexical.train_examples == len(fit) + len(val) == len(parts.train)


def test_a_budget_too_small_for_any_candidate_is_a_clear_error(
    tmp_path: Path, tiny_corpus_path: Path
) -> None:
    config = TINY_RECIPE_CONFIG.model_copy(update={"budget_minutes": 0.5})
    with pytest.raises(BuildError, match="no neural candidate could be trained: scratch: no time"):
        build(
            tiny_corpus_path, tmp_path / "x", config=config, taxonomy_labels=Taxonomy.load().labels
        )


def test_presets_name_real_candidates() -> None:
    from expert.recipe import CANDIDATES, PRESETS

    for plan in PRESETS.values():
        assert set(plan.candidates) <= set(CANDIDATES)
        assert plan.budget_minutes > 0
    assert RecipeConfig().plan().budget_minutes == 45
