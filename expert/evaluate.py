"""Evaluating an expert against a TF-IDF + LinearSVC baseline on the build's held-out split.

Owns the metrics (accuracy, macro-F1, per-queue precision/recall, confusion matrix), the
calibration figures (ECE, reliability diagram), the triage-threshold precision/coverage
curve, vLLM throughput, and the JSON / Markdown / PNG report. It serves the expert through
`expert.engine.BatchExpert` (never imports vllm itself) and never prints.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict

from expert.card import ExpertCard
from expert.dataset import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    file_sha256,
    read_examples,
    split,
)
from expert.engine import BatchExpert
from expert.lexical import LexicalModel, has_lexical, lexical_dir
from expert.metrics import (
    TARGET_PRECISION,
    CurvePoint,
    expected_calibration_error,
    precision_coverage,
)
from expert.queue_report import ThresholdComparison, compare_thresholds, markdown_lines
from expert.serving import EngineConfig, Prediction, load_card

log = structlog.get_logger(__name__)

BASELINE_NAME = "tfidf_linearsvc"


class QueueScores(BaseModel):
    """Per-label precision, recall, F1 and support on the test part."""

    model_config = ConfigDict(frozen=True)

    precision: float
    recall: float
    f1: float
    support: int


class ModelScores(BaseModel):
    """Everything measured for one model on the test part."""

    model_config = ConfigDict(frozen=True)

    name: str
    accuracy: float
    macro_f1: float
    ece: float
    coverage_at_target_precision: float
    threshold_at_target_precision: float | None
    per_queue: dict[str, QueueScores]
    confusion: list[list[int]]
    reliability: list[tuple[float, float, int]]  # (mean confidence, accuracy, count) per bin
    curve: list[CurvePoint]
    tickets_per_s: float | None = None
    build_time_s: float | None = None
    notes: str = ""


class EvalReport(BaseModel):
    """The evaluation report written as report.json (and rendered as report.md)."""

    model_config = ConfigDict(frozen=True)

    model_dir: str
    model_id: str
    data_path: str
    data_matches_build: bool | None
    split_seed: int
    test_fraction: float
    train_examples: int
    test_examples: int
    labels: list[str]
    target_precision: float
    expert: ModelScores
    baseline: ModelScores
    engine: dict[str, object] | None = None  # EnginePlacement: dtype, threads, CPU kind
    # The served expert's parts scored alone on the same rows (a fused expert only).
    components: list[ModelScores] = []
    # Precision and coverage on the test rows at the threshold the card chose on validation.
    card_threshold: float | None = None
    card_threshold_precision: float | None = None
    card_threshold_coverage: float | None = None
    # The card's global threshold vs its per-queue ones (None: the card has no per-queue).
    thresholds: ThresholdComparison | None = None
    # Help for the human on the test rows: the truth among the top-3 queues, and among the
    # queues of the similar tickets the index found (None: the expert has no index).
    top3_accuracy: float | None = None
    similar_hit_rate: float | None = None
    similar_k: int | None = None


def score(
    name: str,
    *,
    labels: Sequence[str],
    truth: Sequence[str],
    predicted: Sequence[str],
    confidences: Sequence[float],
) -> ModelScores:
    """All metrics of one model's answers on the test part."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    label_list = list(labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=label_list, zero_division=0
    )
    present = [i for i, s in enumerate(support) if s > 0]
    correct = [t == p for t, p in zip(truth, predicted, strict=True)]
    ece, reliability = expected_calibration_error(confidences, correct)
    curve, coverage, threshold = precision_coverage(confidences, correct)
    return ModelScores(
        name=name,
        accuracy=sum(correct) / max(1, len(correct)),
        # Macro over labels present in the test part (sklearn's default behaviour).
        macro_f1=float(sum(f1[i] for i in present) / max(1, len(present))),
        ece=ece,
        coverage_at_target_precision=coverage,
        threshold_at_target_precision=threshold,
        per_queue={
            label: QueueScores(
                precision=float(precision[i]),
                recall=float(recall[i]),
                f1=float(f1[i]),
                support=int(support[i]),
            )
            for i, label in enumerate(label_list)
        },
        confusion=confusion_matrix(truth, predicted, labels=label_list).tolist(),
        reliability=reliability,
        curve=curve,
    )


def _softmax_rows(scores: list[list[float]], temperature: float) -> list[list[float]]:
    out = []
    for row in scores:
        top = max(row)
        weights = [math.exp((v - top) * temperature) for v in row]
        total = sum(weights)
        out.append([w / total for w in weights])
    return out


def baseline_predictions(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    test_texts: Sequence[str],
    *,
    seed: int = 0,
) -> tuple[list[str], list[float], float]:
    """TF-IDF (word 1-2 grams, min_df 2, sublinear tf) + LinearSVC(C=1).

    Confidences are softmaxed decision scores; the softmax temperature is fitted (lowest
    log-loss) on a 10% slice of the training part, then the SVM is refitted on all of it.

    Returns:
        (predicted labels, confidences, fitted temperature)
    """
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    def fit(texts: Sequence[str], labels: Sequence[str]):  # type: ignore[no-untyped-def]
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
            LinearSVC(C=1.0),
        )
        return model.fit(list(texts), list(labels))

    order = np.random.RandomState(seed).permutation(len(train_texts))
    n_cal = max(1, len(order) // 10)
    cal_idx, fit_idx = order[:n_cal], order[n_cal:]
    temperature = 1.0
    fit_labels = [train_labels[i] for i in fit_idx]
    if len(set(fit_labels)) > 1:
        partial = fit([train_texts[i] for i in fit_idx], fit_labels)
        classes = list(partial.classes_)
        scores = partial.decision_function([train_texts[i] for i in cal_idx]).tolist()
        scores = [s if isinstance(s, list) else [-s, s] for s in scores]
        targets = [train_labels[i] for i in cal_idx]

        def nll(t: float) -> float:
            probs = _softmax_rows(scores, t)
            return -sum(
                math.log(max(1e-12, p[classes.index(y)] if y in classes else 1e-12))
                for p, y in zip(probs, targets, strict=True)
            )

        temperature = min((0.5 * 1.25**k for k in range(30)), key=nll)
    model = fit(train_texts, train_labels)
    raw = model.decision_function(list(test_texts)).tolist()
    raw = [s if isinstance(s, list) else [-s, s] for s in raw]
    classes = list(model.classes_)
    probs = _softmax_rows(raw, temperature)
    predicted = [classes[max(range(len(p)), key=p.__getitem__)] for p in probs]
    return predicted, [max(p) for p in probs], temperature


def resolve_engine_config(model_dir: Path, card: ExpertCard, **overrides: object) -> EngineConfig:
    """Engine settings for `model_dir` (an adapter expert is served on the base its card
    names: the engine resolves it)."""
    return EngineConfig(model_dir=model_dir, **overrides)  # type: ignore[arg-type]


def evaluate(
    model_dir: Path,
    data_path: Path,
    *,
    out_dir: Path,
    text_col: str | None = None,
    label_col: str | None = None,
    expert: BatchExpert | None = None,
    engine_config: EngineConfig | None = None,
) -> EvalReport:
    """Score the expert and the baseline on the held-out part; write the report files.

    The split (seed, test fraction) and the default text/label fields come from the card's
    training record, so the expert is never scored on tickets it was trained on.

    Args:
        model_dir: the expert (or adapter) directory.
        data_path: the labeled data the expert was built from.
        out_dir: where report.json, report.md and the PNGs go.
        text_col: text field (default: the one the build used).
        label_col: label field (default: the one the build used).
        expert: an already started BatchExpert serving `model_dir` (else one is started).
        engine_config: engine settings when this function starts the engine.

    Returns:
        The report (also written to `out_dir/report.json`).
    """
    card = load_card(model_dir)
    training = card.training
    # "" in the card: the expert was built without a text column (it reads fields only).
    text_col = text_col or (training.text_col if training else "text") or None
    label_col = label_col or (training.label_col if training else "label")
    seed = training.split_seed if training else DEFAULT_SPLIT_SEED
    fraction = training.test_fraction if training else DEFAULT_TEST_FRACTION
    if fraction <= 0:
        raise ValueError("the expert was built on all of the data: nothing is held out")
    matches = file_sha256(data_path) == training.data_sha256 if training else None
    if matches is False:
        log.warning("eval_data_differs_from_build", data_path=str(data_path))
    examples = read_examples(data_path, text_col=text_col, label_col=label_col, inputs=card.inputs)
    parts = split(examples, seed=seed, test_fraction=fraction)
    truth = parts.test.labels

    owned = expert is None
    if expert is None:
        expert = BatchExpert(engine_config or resolve_engine_config(Path(model_dir), card))
        expert.start()
    try:
        started = time.perf_counter()
        predictions = expert.classify_batch(parts.test.texts)
        elapsed = time.perf_counter() - started
        placement = expert.placement.as_dict()
    finally:
        if owned:
            expert.close()
    expert_scores = score(
        card.model_id,
        labels=card.labels,
        truth=truth,
        predicted=[p.label for p in predictions],
        confidences=[p.confidence for p in predictions],
    ).model_copy(
        update={
            "tickets_per_s": len(predictions) / elapsed if elapsed > 0 else None,
            "build_time_s": training.build_time_s if training else None,
            "notes": _confidence_note(card),
        }
    )
    started = time.perf_counter()
    predicted, confidences, temperature = baseline_predictions(
        parts.train.texts, parts.train.labels, parts.test.texts
    )
    baseline_time = time.perf_counter() - started
    baseline_scores = score(
        BASELINE_NAME,
        labels=card.labels,
        truth=truth,
        predicted=predicted,
        confidences=confidences,
    ).model_copy(
        update={
            "build_time_s": round(baseline_time, 2),
            "notes": f"confidence: softmax(decision scores x {temperature:.3g}), "
            "temperature fitted on 10% of train",
        }
    )
    components = component_scores(
        Path(model_dir), card, truth=truth, texts=parts.test.texts, predictions=predictions
    )
    threshold = card.routing.confidence_threshold if card.routing is not None else None
    at_threshold = _at_threshold(predictions, truth, threshold)
    report = EvalReport(
        model_dir=str(model_dir),
        model_id=card.model_id,
        data_path=str(data_path),
        data_matches_build=matches,
        split_seed=seed,
        test_fraction=fraction,
        train_examples=len(parts.train),
        test_examples=len(parts.test),
        labels=list(card.labels),
        target_precision=TARGET_PRECISION,
        expert=expert_scores,
        baseline=baseline_scores,
        engine=placement,
        components=components,
        card_threshold=threshold,
        card_threshold_precision=at_threshold[0],
        card_threshold_coverage=at_threshold[1],
        thresholds=compare_thresholds(
            confidences=[p.confidence for p in predictions],
            predicted=[p.label for p in predictions],
            truth=truth,
            routing=card.routing,
        ),
        **help_scores(predictions, truth),
    )
    write_report(report, Path(out_dir))
    log.info(
        "expert_evaluated",
        model_id=card.model_id,
        accuracy=round(expert_scores.accuracy, 4),
        baseline_accuracy=round(baseline_scores.accuracy, 4),
        out_dir=str(out_dir),
    )
    return report


def help_scores(predictions: Sequence[Prediction], truth: Sequence[str]) -> dict[str, Any]:
    """Top-3 accuracy, and the share of tickets whose queue is among their similar tickets'
    queues (None when no prediction carries similar tickets)."""
    n = max(1, len(truth))
    top3 = sum(t in {s.queue for s in p.top(3)} for p, t in zip(predictions, truth, strict=True))
    with_similar = any(p.similar for p in predictions)
    hits = sum(t in {s.queue for s in p.similar} for p, t in zip(predictions, truth, strict=True))
    return {
        "top3_accuracy": round(top3 / n, 4),
        "similar_hit_rate": round(hits / n, 4) if with_similar else None,
        "similar_k": max((len(p.similar) for p in predictions), default=0) or None,
    }


def _at_threshold(
    predictions: Sequence[Prediction], truth: Sequence[str], threshold: float | None
) -> tuple[float | None, float | None]:
    """(precision, coverage) of the tickets at or above `threshold` (None: no threshold)."""
    if threshold is None:
        return None, None
    routed = [
        p.label == t for p, t in zip(predictions, truth, strict=True) if p.confidence >= threshold
    ]
    coverage = len(routed) / max(1, len(truth))
    return (sum(routed) / len(routed) if routed else None), coverage


def _softmax_power(matrix: Any, weight: float) -> Any:
    import numpy as np

    z = weight * matrix
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _confidence_note(card: ExpertCard) -> str:
    neural = (
        "the class probability of vLLM's classify (pooling) runner"
        if card.is_classifier
        else "softmax of the label tokens' logprobs (vLLM)"
    )
    if card.fusion is None:
        return f"confidence: {neural}"
    return (
        f"confidence: the calibrated fusion of {neural} with the lexical model's scores "
        "(weights, temperature and confidence map fitted on the validation rows)"
    )


def component_scores(
    expert_dir: Path,
    card: ExpertCard,
    *,
    truth: Sequence[str],
    texts: Sequence[str],
    predictions: Sequence[Prediction],
) -> list[ModelScores]:
    """The fused expert's neural model and lexical model scored alone on the same rows, each
    with its own calibration from the card (empty when the card fuses nothing)."""
    import numpy as np

    fusion = card.fusion
    if fusion is None:
        return []
    out: list[ModelScores] = []
    labels = list(card.labels)
    if all(p.neural_probabilities is not None for p in predictions) and predictions:
        neural = np.asarray(
            [[p.neural_probabilities[x] for x in labels] for p in predictions]  # type: ignore[index]
        )
        probs = _softmax_power(np.log(np.clip(neural, 1e-12, 1)), fusion.neural_alone or 1.0)
        out.append(_matrix_scores("neural alone", probs, labels, truth))
    if has_lexical(expert_dir) and texts:
        model = LexicalModel.load(lexical_dir(expert_dir))
        cpu_started = time.process_time()
        lexical = model.scores(texts)
        cpu_s = time.process_time() - cpu_started
        probs = _softmax_power(lexical, fusion.lexical_alone or 1.0)
        alone = _matrix_scores("lexical alone", probs, labels, truth)
        # What the worker's process pays per ticket for the lexical half of a fused expert.
        out.append(
            alone.model_copy(
                update={
                    "tickets_per_s": len(texts) / cpu_s if cpu_s > 0 else None,
                    "notes": f"{alone.notes}; {1000 * cpu_s / len(texts):.2f} ms of CPU per "
                    "ticket in the worker's process (tickets/s: per CPU-second)",
                }
            )
        )
    return out


def _matrix_scores(
    name: str, probabilities: Any, labels: Sequence[str], truth: Sequence[str]
) -> ModelScores:
    best = probabilities.argmax(axis=1)
    return score(
        name,
        labels=labels,
        truth=truth,
        predicted=[labels[i] for i in best],
        confidences=[float(c) for c in probabilities.max(axis=1)],
    ).model_copy(update={"notes": "calibrated alone on the validation rows"})


def write_report(report: EvalReport, out_dir: Path) -> None:
    """Write report.json, report.md, reliability.png, coverage.png and confusion PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(report.model_dump_json(indent=2) + "\n", "utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), "utf-8")
    _plots(report, out_dir)


def summary_columns(report: EvalReport) -> list[str]:
    """Column titles of `summary_rows`: the served expert, its parts alone, the baseline."""
    return [
        f"expert ({report.model_id})",
        *(c.name for c in report.components),
        "TF-IDF + LinearSVC",
    ]


def summary_rows(report: EvalReport) -> list[tuple[str, ...]]:
    """(metric, expert, components..., baseline) rows shared by the Markdown report and the
    CLI table."""
    models = [report.expert, *report.components, report.baseline]

    def pct(x: float) -> str:
        return f"{x:.3f}"

    def opt(x: float | None, fmt: str) -> str:
        return "—" if x is None else format(x, fmt)

    return [
        ("accuracy", *(pct(m.accuracy) for m in models)),
        ("macro-F1", *(pct(m.macro_f1) for m in models)),
        ("ECE (15 bins)", *(pct(m.ece) for m in models)),
        (
            f"coverage at >= {report.target_precision:.0%} precision",
            *(pct(m.coverage_at_target_precision) for m in models),
        ),
        ("threshold for it", *(opt(m.threshold_at_target_precision, ".3f") for m in models)),
        ("throughput (tickets/s)", *(opt(m.tickets_per_s, ".0f") for m in models)),
        ("build/fit time (s)", *(opt(m.build_time_s, ".1f") for m in models)),
    ]


def card_threshold_line(report: EvalReport) -> str | None:
    """Precision and coverage on the test rows at the threshold the card chose on validation."""
    if report.card_threshold is None:
        return None
    precision = report.card_threshold_precision
    return (
        f"At the card's triage threshold {report.card_threshold:.3f} (chosen on validation rows "
        f"for the target precision): precision {'—' if precision is None else f'{precision:.3f}'}"
        f", coverage {report.card_threshold_coverage or 0:.3f} of the test tickets routed "
        "automatically."
    )


def render_markdown(report: EvalReport) -> str:
    """The report as Markdown: summary table, per-queue table, how the figures were made."""
    lines = [
        f"# Evaluation of `{report.model_id}`",
        "",
        f"Data `{report.data_path}`: {report.train_examples} train / "
        f"{report.test_examples} test tickets (random split, seed {report.split_seed}, "
        f"test fraction {report.test_fraction}); {len(report.labels)} labels.",
        "",
        *_engine_lines(report),
        "| metric | " + " | ".join(summary_columns(report)) + " |",
        "|---" * (len(summary_columns(report)) + 1) + "|",
        *("| " + " | ".join(row) + " |" for row in summary_rows(report)),
        "",
        *([line, ""] if (line := card_threshold_line(report)) else []),
        *(markdown_lines(report.thresholds) if report.thresholds else []),
        *([line, ""] if (line := help_line(report)) else []),
        "## Per queue (precision / recall / support)",
        "",
        "| queue | expert P | expert R | SVM P | SVM R | support |",
        "|---|---|---|---|---|---|",
    ]
    for label in report.labels:
        e, b = report.expert.per_queue[label], report.baseline.per_queue[label]
        if e.support == 0 and b.support == 0:
            continue
        lines.append(
            f"| {label} | {e.precision:.2f} | {e.recall:.2f} | {b.precision:.2f} | "
            f"{b.recall:.2f} | {e.support} |"
        )
    lines += [
        "",
        f"Expert: {report.expert.notes}. Baseline: {report.baseline.notes}.",
        *(f"{c.name.capitalize()}: {c.notes}." for c in report.components),
        "Coverage at target precision: the largest share of test tickets that can be routed "
        "automatically (confidence >= threshold) while the routed ones are at least "
        f"{report.target_precision:.0%} correct; the rest go to the triage queue.",
        "",
        "![reliability](reliability.png) ![coverage](coverage.png)",
        "",
    ]
    return "\n".join(lines)


def help_line(report: EvalReport) -> str | None:
    """Top-3 accuracy and the similar-ticket hit rate on the test rows, in words."""
    if report.top3_accuracy is None:
        return None
    line = f"Top-3 accuracy {report.top3_accuracy:.1%}"
    if report.similar_hit_rate is not None:
        line += (
            f"; the right queue is among the {report.similar_k} similar tickets' queues for "
            f"{report.similar_hit_rate:.1%} of test tickets"
        )
    return line + "."


def _engine_lines(report: EvalReport) -> list[str]:
    engine = report.engine
    if not engine:
        return []
    cpu = engine.get("cpu")
    kind = cpu.get("kind") if isinstance(cpu, dict) else None
    return [
        f"Engine: vLLM on {engine.get('device')}, dtype {engine.get('dtype')}, "
        f"{engine.get('threads')} thread(s); processor: {kind}. Throughput figures compare "
        "only with figures from the same kind of processor.",
        "",
    ]


def _plots(report: EvalReport, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = (report.expert, report.baseline)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for m in models:
        ax.plot(
            [p[0] for p in m.reliability],
            [p[1] for p in m.reliability],
            marker="o",
            label=f"{m.name} (ECE {m.ece:.3f})",
        )
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "reliability.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m in models:
        ax.plot(
            [p.coverage for p in m.curve],
            [p.precision for p in m.curve],
            label=f"{m.name} (cov@{report.target_precision:.0%}: "
            f"{m.coverage_at_target_precision:.2f})",
        )
    ax.axhline(report.target_precision, linestyle="--", color="grey")
    ax.set(
        xlabel="coverage (routed automatically)",
        ylabel="precision of routed tickets",
        title="Triage threshold: precision vs coverage",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "coverage.png", dpi=110)
    plt.close(fig)

    for m in models:
        size = max(5.0, 0.18 * len(report.labels) + 3)
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(m.confusion, cmap="Blues")
        ticks = range(len(report.labels))
        ax.set_xticks(list(ticks), report.labels, rotation=90, fontsize=6)
        ax.set_yticks(list(ticks), report.labels, fontsize=6)
        ax.set(xlabel="predicted", ylabel="true", title=f"Confusion: {m.name}")
        fig.tight_layout()
        fig.savefig(out_dir / f"confusion-{m.name}.png", dpi=110)
        plt.close(fig)


def report_from_json(path: Path) -> EvalReport:
    """Read a report.json written by `evaluate`."""
    return EvalReport.model_validate(json.loads(Path(path).read_text("utf-8")))
