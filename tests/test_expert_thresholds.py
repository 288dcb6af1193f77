"""Per-queue thresholds (`expert.thresholds`, `expert.calibrate.routing_calibration`):
synthetic confidences whose right thresholds are known, the fallback, the smoothing."""

from __future__ import annotations

import numpy as np
import pytest

from expert.calibrate import routing_calibration
from expert.card import ExpertCard
from expert.thresholds import (
    choose_queue_threshold,
    choose_queue_thresholds,
    routed_figures,
    wilson_lower_bound,
)


def _queue(right_above: int, *, wrong_below: int, start: float) -> tuple[list[float], list[bool]]:
    """`right_above` right tickets at confidences from `start` up, then `wrong_below` wrong
    ones just below `start`: the raw right threshold is `start`."""
    confs = [start + 0.001 * i for i in range(right_above)]
    confs += [start - 0.01 - 0.001 * i for i in range(wrong_below)]
    return confs, [True] * right_above + [False] * wrong_below


def test_raw_choice_routes_every_right_ticket_above_the_first_wrong_one() -> None:
    confs, correct = _queue(40, wrong_below=10, start=0.6)
    chosen = choose_queue_threshold(confs, correct, target=0.99, strength=0.0)
    assert chosen.source == "queue"
    assert chosen.threshold == pytest.approx(0.6)
    assert (chosen.routed, chosen.precision) == (40, 1.0)


def test_raw_choice_accepts_misses_as_long_as_the_target_holds() -> None:
    # 19 right then one wrong at the bottom: 19/20 = 0.95 meets the target exactly.
    confs = [0.9 - 0.01 * i for i in range(20)]
    correct = [True] * 19 + [False]
    chosen = choose_queue_threshold(confs, correct, target=0.95, strength=0.0)
    assert chosen.threshold == pytest.approx(confs[-1])
    assert chosen.routed == 20


def test_the_lower_bound_needs_more_evidence_than_the_raw_precision() -> None:
    confs, correct = _queue(30, wrong_below=5, start=0.5)
    assert wilson_lower_bound(30, 30, z=1.0) < 0.97
    smoothed = choose_queue_threshold(confs, correct, target=0.97, strength=1.0)
    raw = choose_queue_threshold(confs, correct, target=0.97, strength=0.0)
    assert raw.source == "queue" and raw.routed == 30
    assert smoothed.source == "unreachable" and smoothed.routed == 0


def test_wilson_bound_grows_with_evidence_and_is_raw_at_z_zero() -> None:
    assert wilson_lower_bound(9, 10, z=0.0) == pytest.approx(0.9)
    assert wilson_lower_bound(10, 10, z=1.0) < wilson_lower_bound(100, 100, z=1.0) < 1.0
    assert wilson_lower_bound(0, 0, z=1.0) == 0.0


def test_each_queue_gets_its_own_threshold_and_small_queues_fall_back() -> None:
    a_confs, a_right = _queue(40, wrong_below=10, start=0.4)  # right threshold 0.4
    b_confs, b_right = _queue(40, wrong_below=10, start=0.8)  # right threshold 0.8
    c_confs, c_right = [0.99, 0.3, 0.2], [True, False, True]  # 3 tickets: fallback
    confs = a_confs + b_confs + c_confs
    predicted = ["a"] * 50 + ["b"] * 50 + ["c"] * 3
    truth = [
        p if ok else "other" for p, ok in zip(predicted, a_right + b_right + c_right, strict=True)
    ]
    chosen = choose_queue_thresholds(
        confs,
        predicted,
        truth,
        labels=["a", "b", "c", "d"],
        target=0.99,
        global_threshold=0.7,
        min_predicted=20,
        strength=0.0,
    )
    assert chosen["a"].threshold == pytest.approx(0.4) and chosen["a"].source == "queue"
    assert chosen["b"].threshold == pytest.approx(0.8) and chosen["b"].source == "queue"
    assert chosen["c"].threshold == 0.7 and chosen["c"].source == "global"
    assert (chosen["c"].predicted, chosen["c"].routed) == (3, 1)
    assert chosen["d"].source == "global" and chosen["d"].predicted == 0
    own = {q: c.threshold for q, c in chosen.items() if c.source == "queue"}
    coverage, precision = routed_figures(confs, predicted, truth, thresholds=own, default=0.7)
    assert coverage == pytest.approx(81 / 103) and precision == 1.0


def test_no_global_threshold_means_fallback_queues_route_nothing() -> None:
    chosen = choose_queue_thresholds(
        [0.9], ["a"], ["a"], labels=["a", "b"], target=0.95, global_threshold=None
    )
    assert chosen["a"].threshold == 1.0 and chosen["a"].routed == 0


def test_routing_calibration_beats_one_global_threshold_on_uneven_queues() -> None:
    # Queue a is right from 0.4 up; queue b only from 0.8 up: one threshold must be 0.8.
    a_confs, a_right = _queue(60, wrong_below=20, start=0.4)
    b_confs, b_right = _queue(60, wrong_below=20, start=0.8)
    rows = []
    for conf, ok, label in [
        *((c, r, 0) for c, r in zip(a_confs, a_right, strict=True)),
        *((c, r, 1) for c, r in zip(b_confs, b_right, strict=True)),
    ]:
        row = np.full(3, (1 - conf) / 2)
        row[label] = conf
        rows.append((row, label if ok else 2))
    probs = np.asarray([r for r, _ in rows])
    y = np.asarray([t for _, t in rows])
    routing = routing_calibration(
        probs, y, labels=["a", "b", "c"], target=0.99, min_predicted=20, strength=0.0
    )
    assert routing.confidence_threshold == pytest.approx(0.8)
    # c is never predicted: it falls back to the global threshold (raw at strength 0).
    assert routing.queue_thresholds == pytest.approx({"a": 0.4, "b": 0.8, "c": 0.8})
    assert routing.queue_calibration["c"].source == "global"
    assert routing.queue_validation_precision == 1.0
    assert routing.queue_validation_coverage is not None
    assert routing.queue_validation_coverage > routing.validation_coverage


def test_cards_without_queue_thresholds_still_load_and_unknown_queues_are_refused() -> None:
    old = {
        "kind": "classifier",
        "model_id": "old",
        "labels": ["a", "b"],
        "prompt_template": "{ticket}",
        "max_prompt_tokens": 64,
        "routing": {"target_precision": 0.95, "confidence_threshold": 0.7},
    }
    card = ExpertCard.model_validate(old)
    assert card.routing is not None and card.routing.queue_thresholds == {}
    with pytest.raises(ValueError, match="unknown labels"):
        ExpertCard.model_validate(
            {**old, "routing": {"target_precision": 0.95, "queue_thresholds": {"nope": 0.5}}}
        )


def test_the_fallback_is_the_global_threshold_chosen_by_the_same_lower_bound() -> None:
    # One queue with 200 tickets right from 0.5 up and 1 wrong ticket in every 20 above.
    confs = [0.5 + 0.0024 * i for i in range(200)]
    correct = [i % 20 != 0 for i in range(200)]
    probs = np.asarray([[c, 1 - c] for c in confs])
    y = np.asarray([0 if ok else 1 for ok in correct])
    raw = routing_calibration(
        probs, y, labels=["a", "b"], target=0.94, min_predicted=1000, strength=0.0
    )
    smooth = routing_calibration(
        probs, y, labels=["a", "b"], target=0.94, min_predicted=1000, strength=1.0
    )
    assert raw.queue_calibration["a"].source == smooth.queue_calibration["a"].source == "global"
    assert raw.confidence_threshold == smooth.confidence_threshold  # the card's raw global
    assert raw.queue_thresholds["a"] == raw.confidence_threshold
    assert smooth.queue_thresholds["a"] > raw.confidence_threshold  # the fallback is stricter
