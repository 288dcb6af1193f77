"""The lexical model (fit, store as data, reload) and the fusion rule (fit, combine, calibrate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expert.fusion import (
    ConfidenceMap,
    FusionWeights,
    combine,
    fit_confidence_map,
    fit_weights,
    negative_log_likelihood,
    recalibrate,
)
from expert.lexical import (
    LEXICAL_JSON,
    LEXICAL_WEIGHTS,
    LexicalError,
    LexicalModel,
)
from expert.metrics import expected_calibration_error, threshold_at_precision
from loadgen.corpus import generate

LABELS = ("vpn", "password", "printer", "never_seen")


def _toy() -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for i in range(30):
        texts += [
            f"vpn tunnel down at site {i}",
            f"please reset my password for account u{i}",
            f"printer jam on floor {i % 5}",
        ]
        labels += ["vpn", "password", "printer"]
    return texts, labels


def test_lexical_model_scores_in_label_order_and_marks_unseen_labels() -> None:
    texts, labels = _toy()
    model = LexicalModel.fit(texts, labels, labels=LABELS)
    scores = model.scores(["the vpn is down again", "printer on floor 2 jams"])
    assert scores.shape == (2, len(LABELS))
    assert [LABELS[i] for i in scores.argmax(axis=1)] == ["vpn", "printer"]
    unseen = scores[:, LABELS.index("never_seen")]
    seen = np.delete(scores, LABELS.index("never_seen"), axis=1)
    assert (unseen < seen.max(axis=1)).all()  # never the answer
    assert (unseen > -10).all()  # but on the same scale as the others


def test_lexical_model_reloads_from_data_files_with_identical_scores(tmp_path: Path) -> None:
    texts, labels = _toy()
    model = LexicalModel.fit(texts, labels, labels=LABELS)
    model.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {LEXICAL_JSON, LEXICAL_WEIGHTS}
    json.loads((tmp_path / LEXICAL_JSON).read_text())  # plain data, no pickle
    again = LexicalModel.load(tmp_path)
    probe = ["vpn and password both broken", "", "ünïcödé printer ✓"]
    np.testing.assert_allclose(again.scores(probe), model.scores(probe), rtol=1e-6)
    assert again.labels == LABELS
    assert again.features == model.features


def test_a_damaged_lexical_folder_is_a_clear_error(tmp_path: Path) -> None:
    texts, labels = _toy()
    LexicalModel.fit(texts, labels, labels=LABELS).save(tmp_path)
    (tmp_path / LEXICAL_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(LexicalError, match="cannot read the lexical model"):
        LexicalModel.load(tmp_path)


def test_lexical_fit_refuses_labels_outside_the_list() -> None:
    with pytest.raises(LexicalError, match="not in the label list"):
        LexicalModel.fit(["a b", "c d"], ["x", "y"], labels=("x", "z"))


def test_lexical_model_learns_the_synthetic_queues() -> None:
    tickets = generate(1200, seed=3)
    texts = [t.ticket.text() for t in tickets]
    queues = [t.queue for t in tickets]
    labels = sorted(set(queues))
    model = LexicalModel.fit(texts[:1000], queues[:1000], labels=labels)
    predicted = [labels[i] for i in model.scores(texts[1000:]).argmax(axis=1)]
    accuracy = np.mean([p == q for p, q in zip(predicted, queues[1000:], strict=True)])
    assert accuracy > 0.8


def _synthetic_components(seed: int = 0, n: int = 600, k: int = 5):
    """A neural and a lexical 'model', each right about 60% of the time on independent
    tickets and surer when right (as real models are): the pool of both should beat either."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    neural = np.full((n, k), 0.1)
    lexical = rng.normal(0, 0.3, size=(n, k))
    for i in range(n):
        wrong = [c for c in range(k) if c != y[i]]
        right_n, right_l = rng.random() < 0.6, rng.random() < 0.6
        neural[i, y[i] if right_n else rng.choice(wrong)] = 2.0 if right_n else 0.3
        lexical[i, y[i] if right_l else rng.choice(wrong)] += 2.0 if right_l else 0.6
    neural /= neural.sum(axis=1, keepdims=True)
    return y, neural, lexical


def test_fitted_fusion_beats_each_component_on_held_out_rows() -> None:
    y, neural, lexical = _synthetic_components()
    fit, held = slice(0, 300), slice(300, 600)
    fused_w = fit_weights(y[fit], neural_probabilities=neural[fit], lexical_scores=lexical[fit])
    assert fused_w.uses_neural and fused_w.uses_lexical

    def accuracy(w: FusionWeights) -> float:
        p = combine(w, neural_probabilities=neural[held], lexical_scores=lexical[held])
        return float((p.argmax(axis=1) == y[held]).mean())

    neural_alone = fit_weights(y[fit], neural_probabilities=neural[fit])
    lexical_alone = fit_weights(y[fit], lexical_scores=lexical[fit])
    assert neural_alone.lexical_weight == 0 and lexical_alone.neural_weight == 0
    assert accuracy(fused_w) > max(accuracy(neural_alone), accuracy(lexical_alone))


def test_the_fitted_temperature_is_the_likeliest_scale_of_the_chosen_mix() -> None:
    y, neural, lexical = _synthetic_components(seed=1)
    fitted = fit_weights(y, neural_probabilities=neural, lexical_scores=lexical)

    def nll(scale: float) -> float:
        z = scale * (fitted.neural_weight * np.log(neural) + fitted.lexical_weight * lexical)
        return negative_log_likelihood(z, y)

    assert nll(1.0) <= min(nll(0.5), nll(0.8), nll(1.25), nll(2.0)) + 1e-9


def test_combine_refuses_a_missing_component() -> None:
    with pytest.raises(ValueError, match="no lexical scores"):
        combine(
            FusionWeights(neural_weight=1.0, lexical_weight=1.0),
            neural_probabilities=np.full((1, 2), 0.5),
            lexical_scores=None,
        )


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1, allow_nan=False), st.booleans()), min_size=1, max_size=60),
    st.floats(0.5, 1.0),
)
def test_the_chosen_threshold_reaches_the_target_on_the_rows_it_was_chosen_on(
    rows: list[tuple[float, bool]], target: float
) -> None:
    confidences = [c for c, _ in rows]
    correct = [ok for _, ok in rows]
    threshold, coverage, precision = threshold_at_precision(confidences, correct, target=target)
    if threshold is None:
        assert coverage == 0.0
        return
    routed = [ok for c, ok in rows if c >= threshold]
    assert len(routed) / len(rows) == pytest.approx(coverage)
    assert sum(routed) / len(routed) == pytest.approx(precision)
    assert precision >= target


def test_the_confidence_map_repairs_an_over_and_under_confident_model() -> None:
    """Right 90% of the time at confidence 0.99 and 70% at confidence 0.45: no temperature
    fixes both; the fitted map brings the calibration error down on fresh rows."""
    rng = np.random.default_rng(4)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        sure = rng.random(n) < 0.5
        top = np.where(sure, 0.99, 0.45)
        right = np.where(sure, rng.random(n) < 0.9, rng.random(n) < 0.7)
        return top, right

    fit_top, fit_right = rows(2000)
    cmap = fit_confidence_map(fit_top.tolist(), fit_right.tolist())
    test_top, test_right = rows(2000)
    probs = np.stack([test_top, (1 - test_top) / 2, (1 - test_top) / 2], axis=1)
    fixed = recalibrate(probs, cmap)
    before, _ = expected_calibration_error(test_top.tolist(), test_right.tolist())
    after, _ = expected_calibration_error(fixed.max(axis=1).tolist(), test_right.tolist())
    assert after < before / 3
    np.testing.assert_allclose(fixed.sum(axis=1), 1.0)
    assert (fixed.argmax(axis=1) == 0).all()


def test_the_identity_map_changes_nothing() -> None:
    probs = np.asarray([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_array_equal(recalibrate(probs, ConfidenceMap()), probs)
    assert fit_confidence_map([0.9, 0.8], [True, True]) == ConfidenceMap()


class _CountingLoaded:
    """Stands in for the engine's loaded expert: records each lexical scoring call."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def lexical_answers(self, texts: list[str]) -> list[np.ndarray]:
        self.calls.append(list(texts))
        if self.fail:
            raise ValueError("broken lexical model")
        return [np.asarray([float(len(t))]) for t in texts]


async def test_requests_of_one_event_loop_turn_are_lexically_scored_in_one_call() -> None:
    import asyncio

    from expert.lexical_side import LexicalBatch

    loaded = _CountingLoaded()
    batch = LexicalBatch(loaded.lexical_answers)  # type: ignore[arg-type]
    futures = [batch.submit(text) for text in ("a", "bb", "ccc")]
    futures[1].cancel()  # a request cancelled before its turn is not scored
    rows = [await futures[0], await futures[2]]
    assert loaded.calls == [["a", "ccc"]]
    assert [row[0] for row in rows] == [1.0, 3.0]
    later = await batch.submit("dddd")  # the next turn is a new call
    assert later[0] == 4.0 and loaded.calls[-1] == ["dddd"]
    failing = LexicalBatch(_CountingLoaded(fail=True).lexical_answers)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="broken lexical model"):
        await asyncio.gather(failing.submit("x"), failing.submit("y"))
