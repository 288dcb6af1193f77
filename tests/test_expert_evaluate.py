"""`expert eval`: the report's fields, the shared split, and the metric helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expert.dataset import read_examples, split
from expert.engine import BatchExpert
from expert.evaluate import evaluate, expected_calibration_error, precision_coverage
from expert.serving import load_card


@pytest.mark.slow
def test_eval_report_has_its_fields_and_scores_only_held_out_tickets(
    batch_expert: BatchExpert, tiny_expert_dir: Path, tiny_corpus_path: Path, tmp_path: Path
) -> None:
    report = evaluate(tiny_expert_dir, tiny_corpus_path, out_dir=tmp_path, expert=batch_expert)
    card = load_card(tiny_expert_dir)
    assert card.training is not None
    parts = split(
        read_examples(tiny_corpus_path),
        seed=card.training.split_seed,
        test_fraction=card.training.test_fraction,
    )
    # Eval scores exactly the part the build held out.
    assert report.test_examples == len(parts.test) == card.training.test_examples
    assert report.train_examples == card.training.train_examples
    assert report.data_matches_build is True
    for scores in (report.expert, report.baseline):
        assert 0 <= scores.accuracy <= 1 and 0 <= scores.macro_f1 <= 1
        assert 0 <= scores.ece <= 1
        assert set(scores.per_queue) == set(card.labels)
        assert sum(map(sum, scores.confusion)) == report.test_examples
        assert sum(q.support for q in scores.per_queue.values()) == report.test_examples
        assert scores.curve and scores.curve[-1].coverage == 1.0
        assert abs(scores.curve[-1].precision - scores.accuracy) < 1e-9
    assert report.expert.tickets_per_s is not None and report.expert.tickets_per_s > 0
    assert report.expert.build_time_s == card.training.build_time_s
    # Synthetic tickets are learnable: the baseline is far above chance (1/12).
    assert report.baseline.accuracy > 0.5
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["expert"]["accuracy"] == report.expert.accuracy
    markdown = (tmp_path / "report.md").read_text()
    assert "TF-IDF + LinearSVC" in markdown and "coverage at >= 95% precision" in markdown
    for png in ("reliability.png", "coverage.png", "confusion-tfidf_linearsvc.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_eval_of_a_fused_expert_scores_each_part_alone_and_the_cards_threshold(
    tiny_fused_dir: Path, tiny_corpus_path: Path, tmp_path: Path
) -> None:
    report = evaluate(tiny_fused_dir, tiny_corpus_path, out_dir=tmp_path)
    card = load_card(tiny_fused_dir)
    assert card.routing is not None
    neural, lexical = report.components
    assert (neural.name, lexical.name) == ("neural alone", "lexical alone")
    for part in (neural, lexical):
        assert sum(map(sum, part.confusion)) == report.test_examples
    # The lexical half's CPU cost per ticket is measured, not assumed.
    assert lexical.tickets_per_s is not None and lexical.tickets_per_s > 0
    assert "ms of CPU per ticket" in lexical.notes
    assert report.card_threshold == card.routing.confidence_threshold
    assert report.card_threshold_coverage is not None
    assert 0 < report.card_threshold_coverage <= 1
    markdown = (tmp_path / "report.md").read_text()
    assert "| lexical alone |" in markdown and "Lexical alone: calibrated" in markdown
    assert "At the card's triage threshold" in markdown
    # The card's per-queue thresholds beside the global one, on the same test answers.
    comparison = report.thresholds
    assert comparison is not None and comparison.global_threshold == report.card_threshold
    assert comparison.global_.coverage == pytest.approx(report.card_threshold_coverage)
    assert sum(q.predicted for q in comparison.queues.values()) == report.test_examples
    assert comparison.per_queue.routed == sum(
        q.per_queue.routed for q in comparison.queues.values()
    )
    assert "Global vs per-queue thresholds" in markdown


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    ece, points = expected_calibration_error(
        [0.5] * 4 + [1.0] * 2, [True, False, True, False, True, True]
    )
    assert ece == pytest.approx(0.0)
    assert [p[2] for p in points] == [4, 2]


def test_ece_of_overconfident_model() -> None:
    ece, _ = expected_calibration_error([0.9] * 10, [True] * 5 + [False] * 5)
    assert ece == pytest.approx(0.4)


def test_coverage_at_target_precision_stops_before_the_first_costly_mistake() -> None:
    confidences = [0.99, 0.98, 0.97, 0.96, 0.5, 0.4]
    correct = [True, True, True, True, False, True]
    curve, coverage, threshold = precision_coverage(confidences, correct, target=0.95)
    assert coverage == pytest.approx(4 / 6)
    assert threshold == 0.96
    assert curve[-1].coverage == 1.0 and curve[-1].precision == pytest.approx(5 / 6)


def test_tied_confidences_are_one_threshold() -> None:
    curve, coverage, _ = precision_coverage([0.7, 0.7, 0.7], [True, False, True], target=0.95)
    assert len(curve) == 1
    assert coverage == 0.0
