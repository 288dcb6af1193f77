"""`expert calibrate` on a real recipe-built expert through real vLLM: the validation rows
and their probabilities are re-created exactly, so the thresholds come out as the build
chose them; a new target re-chooses them without retraining."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from expert.calibrate import recalibrate_card
from expert.queue_report import compare_thresholds, markdown_lines
from expert.serving import load_card


def test_recalibrating_reproduces_the_builds_thresholds_and_follows_a_new_target(
    tiny_fused_dir: Path, tmp_path: Path
) -> None:
    built = load_card(tiny_fused_dir)
    assert built.routing is not None
    assert set(built.routing.queue_calibration) == set(built.labels)
    copy = tmp_path / "expert"
    shutil.copytree(tiny_fused_dir, copy)
    again = recalibrate_card(
        copy,
        min_predicted=built.routing.queue_min_predicted or 20,
        strength=built.routing.queue_strength or 0.0,
    ).routing
    assert again is not None
    if built.routing.confidence_threshold is None:
        assert again.confidence_threshold is None
    else:
        assert again.confidence_threshold == pytest.approx(
            built.routing.confidence_threshold, abs=1e-4
        )
    assert again.validation_coverage == pytest.approx(built.routing.validation_coverage)
    assert {q: c.source for q, c in again.queue_calibration.items()} == {
        q: c.source for q, c in built.routing.queue_calibration.items()
    }
    lower = recalibrate_card(copy, target=0.5, min_predicted=1, strength=0.0).routing
    assert lower is not None and lower.target_precision == 0.5
    assert load_card(copy).routing == lower  # written to the card
    assert lower.queue_validation_coverage is not None
    assert lower.queue_validation_coverage >= lower.validation_coverage
    assert lower.queue_thresholds  # every predicted queue has its own at min 1


def test_the_comparison_scores_both_ways_on_the_same_answers() -> None:
    from expert.card import RoutingCalibration
    from expert.thresholds import QueueCalibration

    routing = RoutingCalibration(
        target_precision=0.9,
        confidence_threshold=0.8,
        queue_thresholds={"a": 0.5},
        queue_calibration={
            "a": QueueCalibration(threshold=0.5, source="queue", predicted=9, routed=9),
            "b": QueueCalibration(threshold=0.8, source="global", predicted=2, routed=1),
        },
    )
    comparison = compare_thresholds(
        confidences=[0.9, 0.6, 0.55, 0.9, 0.6],
        predicted=["a", "a", "a", "b", "b"],
        truth=["a", "a", "x", "b", "x"],
        routing=routing,
    )
    assert comparison is not None
    assert (comparison.global_.routed, comparison.global_.correct) == (2, 2)
    assert (comparison.per_queue.routed, comparison.per_queue.correct) == (4, 3)
    assert comparison.per_queue.coverage == pytest.approx(0.8)
    assert comparison.queues["b"].per_queue.routed == 1
    assert any("per queue" in line for line in markdown_lines(comparison))
    assert compare_thresholds(confidences=[], predicted=[], truth=[], routing=None) is None
