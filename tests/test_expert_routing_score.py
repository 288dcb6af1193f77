"""The routing score (`expert.routing_score`) and the thresholds chosen on it
(`expert.calibrate.calibrate_routing`): features with known values, a synthetic desk where
the similar tickets tell right answers from wrong ones and the probability cannot, the
cross-fitting, the card, and the served confidence."""

from __future__ import annotations

import numpy as np
import pytest

from expert.calibrate import ValidationAnswers, calibrate_routing
from expert.card import ExpertCard
from expert.lexical_side import LexicalAnswer, served_confidence
from expert.routing_score import (
    answer_features,
    feature_names,
    fit_routing_score,
    queue_shares,
)
from expert.serving import EngineFailure


def test_features_of_a_hand_made_answer() -> None:
    probs = np.asarray([[0.7, 0.2, 0.1]])
    codes = np.asarray([[0, 1, 0, -1]])
    sims = np.asarray([[0.9, 0.5, 0.3, 0.0]])
    row = answer_features(
        probs,
        queue_shares=np.asarray([0.5, 0.25, 0.25]),
        neighbour_codes=codes,
        neighbour_similarities=sims,
        neighbours=4,
    )[0]
    names = feature_names(4)
    got = dict(zip(names, row, strict=True))
    assert got["top_probability"] == pytest.approx(0.7)
    assert got["margin"] == pytest.approx(0.5)
    assert got["entropy"] == pytest.approx(
        -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    )
    assert got["log_queue_share"] == pytest.approx(np.log(0.5))
    assert got["nearest_similarity"] == pytest.approx(0.9)
    assert got["nearest_agrees"] == 1.0
    # Queue 0 is answered: neighbours 1 and 3 agree (0.9 + 0.3 of 1.7); the empty slot counts
    # in the share's denominator (4), not in the similarity total.
    assert got["weighted_agreement"] == pytest.approx(1.2 / 1.7)
    assert got["share_agreeing"] == pytest.approx(0.5)
    assert answer_features(probs, queue_shares=np.asarray([0.5, 0.25, 0.25])).shape == (1, 4)
    with pytest.raises(ValueError, match="similar tickets"):
        answer_features(probs, queue_shares=np.ones(3) / 3, neighbours=4)


def _desk(n: int, seed: int) -> ValidationAnswers:
    """Answers whose top probability says nothing about being right (uniform 0.5-0.9 either
    way), while right answers' nearest past tickets mostly went to the answered queue."""
    rng = np.random.default_rng(seed)
    labels = ["a", "b", "c"]
    answered = rng.integers(0, 3, n)
    right = rng.random(n) < 0.6
    y = np.where(right, answered, (answered + 1) % 3)
    probs = np.full((n, 3), 0.0)
    top = rng.uniform(0.5, 0.9, n)
    probs[np.arange(n), answered] = top
    probs[np.arange(n), (answered + 1) % 3] = (1 - top) * 0.7
    probs[np.arange(n), (answered + 2) % 3] = (1 - top) * 0.3
    k = 5
    agree_p = np.where(right, 0.9, 0.2)[:, None]
    agrees = rng.random((n, k)) < agree_p
    codes = np.where(agrees, answered[:, None], (answered[:, None] + 1) % 3)
    sims = np.sort(rng.uniform(0.2, 0.9, (n, k)), axis=1)[:, ::-1]
    return ValidationAnswers(
        probabilities=probs,
        y=y,
        labels=labels,
        neighbour_codes=codes,
        neighbour_similarities=sims,
        queue_shares=queue_shares(y, 3),
    )


def test_the_score_routes_more_at_the_target_when_neighbours_tell_right_from_wrong() -> None:
    answers = _desk(1500, seed=1)
    plain, none = calibrate_routing(answers, target=0.9, strength=0.0, with_score=False)
    scored, score = calibrate_routing(answers, target=0.9, strength=0.0)
    assert none is None and score is not None
    assert score.neighbours == 5
    # The probability is noise here: no threshold on it reaches 90% over enough tickets.
    assert plain.validation_coverage < 0.1
    assert scored.validation_coverage > 0.3
    assert scored.validation_precision is not None and scored.validation_precision >= 0.9
    # On fresh tickets of the same desk, the score's threshold keeps its precision.
    fresh = _desk(1500, seed=2)
    conf = score.of(fresh.probabilities, fresh.neighbour_codes, fresh.neighbour_similarities)
    routed = conf >= scored.confidence_threshold
    right = fresh.probabilities.argmax(axis=1) == fresh.y
    assert routed.mean() > 0.25
    assert right[routed].mean() >= 0.85


def test_thresholds_are_chosen_on_scores_of_rows_the_score_was_not_fitted_on() -> None:
    answers = _desk(400, seed=3)
    fitted = fit_routing_score(
        answers.probabilities,
        answers.y,
        queue_shares=answers.queue_shares,
        neighbour_codes=answers.neighbour_codes,
        neighbour_similarities=answers.neighbour_similarities,
        neighbours=5,
    )
    assert fitted is not None
    in_sample = fitted.score.of(
        answers.probabilities, answers.neighbour_codes, answers.neighbour_similarities
    )
    assert fitted.cross_fitted.shape == in_sample.shape
    assert not np.allclose(fitted.cross_fitted, in_sample)
    assert np.corrcoef(fitted.cross_fitted, in_sample)[0, 1] > 0.9
    assert fitted.score.validation_examples == 400 and fitted.score.folds == 5


def test_no_score_when_the_rows_cannot_teach_one() -> None:
    probs = np.asarray([[0.8, 0.2]] * 50)
    fitted = fit_routing_score(probs, np.zeros(50, dtype=int), queue_shares=np.asarray([1.0, 0.0]))
    assert fitted is None  # every answer right: nothing to tell apart


def _card(**extra: object) -> ExpertCard:
    return ExpertCard.model_validate(
        {
            "kind": "classifier",
            "model_id": "scored",
            "labels": ["a", "b", "c"],
            "prompt_template": "{ticket}",
            "max_prompt_tokens": 64,
            **extra,
        }
    )


def _fitted_score(neighbours: int) -> dict[str, object]:
    answers = _desk(300, seed=4)
    fitted = fit_routing_score(
        answers.probabilities,
        answers.y,
        queue_shares=answers.queue_shares,
        neighbour_codes=answers.neighbour_codes if neighbours else None,
        neighbour_similarities=answers.neighbour_similarities if neighbours else None,
        neighbours=neighbours,
    )
    assert fitted is not None
    return fitted.score.model_dump()


_INDEX = {"rows": 10, "k": 5, "build_time_s": 0.1, "memory_bytes": 100}


def test_the_card_keeps_the_score_and_refuses_one_it_cannot_serve() -> None:
    card = _card(routing_score=_fitted_score(5), similar=_INDEX)
    again = ExpertCard.from_json(card.to_json())
    assert again.routing_score == card.routing_score
    with pytest.raises(ValueError, match="no index"):
        _card(routing_score=_fitted_score(5))
    wrong_shares = {**_fitted_score(0), "queue_shares": [0.5, 0.5]}
    with pytest.raises(ValueError, match="one share per label"):
        _card(routing_score=wrong_shares)
    with pytest.raises(ValueError, match="features must be"):
        _card(routing_score={**_fitted_score(0), "neighbours": 5}, similar=_INDEX)


def test_the_served_confidence_is_the_score_when_the_card_has_one() -> None:
    probabilities = {"a": 0.6, "b": 0.3, "c": 0.1}
    assert served_confidence(_card(), probabilities, "a", None) == 0.6
    card = _card(routing_score=_fitted_score(5), similar=_INDEX)
    assert card.routing_score is not None
    codes, sims = np.asarray([[0, 0, 1, 0, 2]]), np.asarray([[0.9, 0.8, 0.5, 0.4, 0.2]])
    answer = LexicalAnswer(None, (), codes, sims)
    served = served_confidence(card, probabilities, "a", answer)
    expected = card.routing_score.of(np.asarray([[0.6, 0.3, 0.1]]), codes, sims)[0]
    assert served == pytest.approx(expected)
    disagreeing = LexicalAnswer(None, (), np.asarray([[1, 1, 1, 2, 2]]), sims)
    assert served_confidence(card, probabilities, "a", disagreeing) < served
    with pytest.raises(EngineFailure, match="none were looked up"):
        served_confidence(card, probabilities, "a", None)
