"""Champion vs challenger on the same rows: the figures, the promotion rule and its report.

Owns the figures of one expert's answers on the evaluation slice (accuracy, macro-F1,
coverage at the card's target precision, what the card's own triage threshold would route,
per-queue recall and F1), the rule that promotes a challenger only when it is better by a
stated margin, and the promotion report (JSON and Markdown). Pure: it is given the answers
(`expert.engine.Prediction`s) and never runs an engine, reads the registry or writes files.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

from pydantic import BaseModel, ConfigDict, Field

from expert.evaluate import score
from expert.metrics import threshold_at_precision
from expert.serving import Prediction


class QueueFigures(BaseModel):
    """One queue on the slice: its rows, and how often the expert found it."""

    model_config = ConfigDict(frozen=True)

    support: int
    recall: float
    f1: float


class ModelFigures(BaseModel):
    """One expert's answers on the evaluation slice.

    Attributes:
        name: "champion" or "challenger".
        version: its registry version (None: not in the registry yet).
        model_id: its card's model id.
        rows: rows scored.
        accuracy: top-1 accuracy over every row (triage ignored: the best guess counts).
        macro_f1: F1 averaged over the queues present in the slice.
        coverage_at_target: the largest share of rows a threshold can route on the slice
            with `target_precision` precision (0 when no threshold reaches it).
        target_precision: the precision that coverage is measured at (the champion card's).
        card_threshold: the triage threshold the card chose on its validation rows.
        routed_at_card_threshold: share of rows at or above it (what the worker would route).
        precision_at_card_threshold: accuracy of those rows (None: none routed).
        ece: expected calibration error of the confidences.
        per_queue: queue -> support, recall and F1 (queues present in the slice).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    version: str | None
    model_id: str
    rows: int
    accuracy: float
    macro_f1: float
    coverage_at_target: float
    target_precision: float
    card_threshold: float | None
    routed_at_card_threshold: float
    precision_at_card_threshold: float | None
    ece: float
    per_queue: dict[str, QueueFigures]


def model_figures(
    *,
    name: str,
    version: str | None,
    model_id: str,
    labels: Sequence[str],
    truth: Sequence[str],
    predictions: Sequence[Prediction],
    target_precision: float,
    card_threshold: float | None,
) -> ModelFigures:
    """Score one expert's answers against the slice's labels.

    Raises:
        ValueError: as many answers as rows are needed, and at least one row.
    """
    if not truth or len(truth) != len(predictions):
        raise ValueError(f"{len(predictions)} answers for {len(truth)} rows")
    predicted = [p.label for p in predictions]
    confidences = [p.confidence for p in predictions]
    scores = score(name, labels=labels, truth=truth, predicted=predicted, confidences=confidences)
    correct = [t == p for t, p in zip(truth, predicted, strict=True)]
    _, coverage, _ = threshold_at_precision(confidences, correct, target=target_precision)
    routed = [
        ok
        for ok, c in zip(correct, confidences, strict=True)
        if card_threshold is None or c >= card_threshold
    ]
    return ModelFigures(
        name=name,
        version=version,
        model_id=model_id,
        rows=len(truth),
        accuracy=round(scores.accuracy, 4),
        macro_f1=round(scores.macro_f1, 4),
        coverage_at_target=round(coverage, 4),
        target_precision=target_precision,
        card_threshold=card_threshold,
        routed_at_card_threshold=round(len(routed) / len(truth), 4),
        precision_at_card_threshold=round(sum(routed) / len(routed), 4) if routed else None,
        ece=round(scores.ece, 4),
        per_queue={
            queue: QueueFigures(support=q.support, recall=round(q.recall, 4), f1=round(q.f1, 4))
            for queue, q in scores.per_queue.items()
            if q.support > 0
        },
    )


class PromotionPolicy(BaseModel):
    """When a challenger replaces the champion.

    Attributes:
        min_accuracy_gain: the challenger's accuracy on the slice must be at least this much
            higher (0.01: one point).
        max_macro_f1_drop: its macro-F1 may be at most this much lower.
        min_coverage_gain: its coverage at the target precision must change by at least
            this much (default -1: not a condition).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_accuracy_gain: float = Field(default=0.01, ge=-1, le=1)
    max_macro_f1_drop: float = Field(default=0.005, ge=0, le=1)
    min_coverage_gain: float = Field(default=-1.0, ge=-1, le=1)


class Paired(BaseModel):
    """The rows where exactly one of the two experts is right (same rows, same labels).

    Attributes:
        challenger_only: rows only the challenger gets right.
        champion_only: rows only the champion gets right.
        p_value: two-sided exact McNemar test that both are equally often right (small: the
            difference is unlikely to be chance). Reported, never a promotion condition.
    """

    model_config = ConfigDict(frozen=True)

    challenger_only: int
    champion_only: int
    p_value: float


def paired(
    truth: Sequence[str], champion: Sequence[Prediction], challenger: Sequence[Prediction]
) -> Paired:
    """Count the discordant rows and test them (exact binomial McNemar)."""
    b = sum(
        c.label == t and h.label != t for t, h, c in zip(truth, champion, challenger, strict=True)
    )
    a = sum(
        h.label == t and c.label != t for t, h, c in zip(truth, champion, challenger, strict=True)
    )
    n, k = a + b, min(a, b)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)
    return Paired(challenger_only=b, champion_only=a, p_value=round(p, 6))


class Decision(BaseModel):
    """The verdict and every reason for it (each condition, met or not)."""

    model_config = ConfigDict(frozen=True)

    promote: bool
    reasons: list[str]


def decide(champion: ModelFigures, challenger: ModelFigures, policy: PromotionPolicy) -> Decision:
    """Promote only when every condition of `policy` holds; say which did not."""
    checks = [
        (
            challenger.accuracy - champion.accuracy >= policy.min_accuracy_gain - 1e-9,
            f"accuracy {_pct(champion.accuracy)} -> {_pct(challenger.accuracy)}"
            f" ({_pts(challenger.accuracy - champion.accuracy)}; needs"
            f" {_pts(policy.min_accuracy_gain)})",
        ),
        (
            champion.macro_f1 - challenger.macro_f1 <= policy.max_macro_f1_drop + 1e-9,
            f"macro-F1 {champion.macro_f1:.3f} -> {challenger.macro_f1:.3f} (may drop"
            f" {policy.max_macro_f1_drop:.3f} at most)",
        ),
    ]
    if policy.min_coverage_gain > -1:
        checks.append(
            (
                challenger.coverage_at_target - champion.coverage_at_target
                >= policy.min_coverage_gain - 1e-9,
                f"coverage at {_pct(champion.target_precision)} precision"
                f" {_pct(champion.coverage_at_target)} -> {_pct(challenger.coverage_at_target)}"
                f" (needs {_pts(policy.min_coverage_gain)})",
            )
        )
    return Decision(
        promote=all(ok for ok, _ in checks),
        reasons=[("met: " if ok else "NOT met: ") + text for ok, text in checks],
    )


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _pts(x: float) -> str:
    return f"{x * 100:+.1f} points"


class PromotionReport(BaseModel):
    """What `ticket-router expert retrain` decided, and on what.

    Attributes:
        at: when the decision was taken (ISO 8601, UTC).
        decision: promote or not, and why.
        promoted_version: the registry version made current (None: refused or dry run).
        policy: the margins applied.
        champion, challenger: their figures on the same slice.
        paired: the rows where only one of them is right.
        per_queue_changes: queue -> champion and challenger recall and F1 on the slice.
        counts: rows of each kind (original, feedback, relabeled, slice, ...).
        holdout: how the slice was chosen.
        build: the challenger's build (preset, chosen candidate, rows fit/validated/held out,
            seconds).
        wall_s: the whole retrain's wall time, by phase.
        hardware: the CPU and number format the experts were scored on.
    """

    model_config = ConfigDict(frozen=True)

    at: str
    decision: Decision
    promoted_version: str | None
    dry_run: bool
    policy: PromotionPolicy
    champion: ModelFigures
    challenger: ModelFigures
    paired: Paired
    per_queue_changes: dict[str, dict[str, float | int]]
    counts: dict[str, int]
    holdout: dict[str, object]
    build: dict[str, object]
    wall_s: dict[str, float]
    hardware: dict[str, object]

    def summary(self) -> dict[str, object]:
        """The figures the registry history keeps beside a promotion."""
        return {
            "accuracy": {
                "champion": self.champion.accuracy,
                "challenger": self.challenger.accuracy,
            },
            "macro_f1": {
                "champion": self.champion.macro_f1,
                "challenger": self.challenger.macro_f1,
            },
            "coverage_at_target": {
                "champion": self.champion.coverage_at_target,
                "challenger": self.challenger.coverage_at_target,
                "target_precision": self.champion.target_precision,
            },
            "evaluation_rows": self.champion.rows,
            "champion_version": self.champion.version,
            "counts": self.counts,
            "policy": self.policy.model_dump(),
            "reasons": self.decision.reasons,
            "retrain_wall_s": self.wall_s.get("total"),
        }


def per_queue_changes(
    champion: ModelFigures, challenger: ModelFigures
) -> dict[str, dict[str, float | int]]:
    """Queue -> support, recall and F1 of both, and the recall change (largest moves first)."""
    rows: dict[str, dict[str, float | int]] = {}
    for queue, old in champion.per_queue.items():
        new = challenger.per_queue[queue]
        rows[queue] = {
            "support": old.support,
            "recall_champion": old.recall,
            "recall_challenger": new.recall,
            "recall_change": round(new.recall - old.recall, 4),
            "f1_champion": old.f1,
            "f1_challenger": new.f1,
        }
    return dict(sorted(rows.items(), key=lambda kv: -abs(float(kv[1]["recall_change"]))))


def render_markdown(report: PromotionReport) -> str:
    """The report as Markdown: verdict, the comparison table, per-queue changes, counts."""
    h, c = report.champion, report.challenger
    verdict = (
        f"**Promoted** `{report.promoted_version}`"
        if report.promoted_version
        else ("**Not promoted** (dry run)" if report.dry_run and report.decision.promote else "")
    ) or "**Refused**: the champion keeps serving"
    lines = [
        "# Promotion report",
        "",
        f"{report.at}: {verdict}.",
        "",
        *[f"- {reason}" for reason in report.decision.reasons],
        "",
        f"Both experts answered the same {h.rows} rows: the most recent feedback on tickets"
        " the champion never trained on (" + _holdout_text(report.holdout) + ").",
        "",
        "| | champion | challenger | change |",
        "|---|---|---|---|",
        f"| version | `{h.version}` | `{c.version or '(not in the registry)'}` | |",
        f"| accuracy | {_pct(h.accuracy)} | {_pct(c.accuracy)} | {_pts(c.accuracy - h.accuracy)} |",
        f"| macro-F1 | {h.macro_f1:.3f} | {c.macro_f1:.3f} | {c.macro_f1 - h.macro_f1:+.3f} |",
        f"| coverage at {_pct(h.target_precision)} precision | {_pct(h.coverage_at_target)} |"
        f" {_pct(c.coverage_at_target)} | {_pts(c.coverage_at_target - h.coverage_at_target)} |",
        f"| routed at the card's threshold | {_routed(h)} | {_routed(c)} | |",
        f"| ECE | {h.ece:.3f} | {c.ece:.3f} | {c.ece - h.ece:+.3f} |",
        "",
        f"Rows only the challenger gets right: {report.paired.challenger_only}; only the"
        f" champion: {report.paired.champion_only} (exact McNemar p ="
        f" {report.paired.p_value:.3g}).",
        "",
        "## Per queue (recall on the slice)",
        "",
        "| queue | rows | champion | challenger | change | F1 champion | F1 challenger |",
        "|---|---|---|---|---|---|---|",
    ]
    for queue, q in report.per_queue_changes.items():
        lines.append(
            f"| {queue} | {q['support']} | {_pct(float(q['recall_champion']))} |"
            f" {_pct(float(q['recall_challenger']))} | {_pts(float(q['recall_change']))} |"
            f" {float(q['f1_champion']):.3f} | {float(q['f1_challenger']):.3f} |"
        )
    lines += ["", "## Rows", "", "| what | rows |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in report.counts.items()]
    lines += ["", "## Challenger build and wall time", ""]
    lines += [f"- {k}: {v}" for k, v in report.build.items()]
    lines += [f"- {k} wall time: {v:.1f} s" for k, v in report.wall_s.items()]
    lines += ["", f"Scored on: {report.hardware}", ""]
    return "\n".join(lines)


def _routed(m: ModelFigures) -> str:
    if m.card_threshold is None:
        return "no threshold on the card"
    precision = (
        "-" if m.precision_at_card_threshold is None else _pct(m.precision_at_card_threshold)
    )
    return f"{_pct(m.routed_at_card_threshold)} at {m.card_threshold:.3f} ({precision} right)"


def _holdout_text(holdout: dict[str, object]) -> str:
    window, share = holdout.get("window_s"), holdout.get("share")
    if isinstance(window, int | float) and window:
        return f"feedback of the last {window / 3600:g} h before the newest"
    share = share if isinstance(share, int | float) else 0.0
    return f"the newest {share:.0%} of the eligible feedback"
