"""The global triage threshold vs the per-queue ones, on held-out rows: the part of the
`expert eval` report that says how many tickets each routes and how precise they are.

Owns the comparison (overall coverage and realised precision for both, and per predicted
queue: its threshold, where it came from, tickets routed and their precision) and its
Markdown. Pure Python on the expert's answers; no I/O, no model.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from expert.card import RoutingCalibration


class Routed(BaseModel):
    """Tickets routed at some thresholds: how many (share of all) and how many right."""

    model_config = ConfigDict(frozen=True)

    routed: int
    correct: int
    coverage: float
    precision: float | None


class QueueRow(BaseModel):
    """One predicted queue on the held-out rows."""

    model_config = ConfigDict(frozen=True)

    threshold: float
    source: str  # "queue", "global", "unreachable"
    predicted: int
    global_: Routed
    per_queue: Routed


class ThresholdComparison(BaseModel):
    """Both ways of thresholding, scored on the same held-out answers.

    Attributes:
        target_precision: the precision the card's thresholds were chosen for.
        global_threshold: the card's global threshold (None: none reached the target).
        global_: routed at the global threshold.
        per_queue: routed at each predicted queue's threshold.
        queues: per predicted queue (queues predicted at least once).
    """

    model_config = ConfigDict(frozen=True)

    target_precision: float
    global_threshold: float | None
    global_: Routed
    per_queue: Routed
    queues: dict[str, QueueRow]


def _routed(flags: Sequence[bool], total: int) -> Routed:
    return Routed(
        routed=len(flags),
        correct=sum(flags),
        coverage=len(flags) / max(1, total),
        precision=sum(flags) / len(flags) if flags else None,
    )


def compare_thresholds(
    *,
    confidences: Sequence[float],
    predicted: Sequence[str],
    truth: Sequence[str],
    routing: RoutingCalibration | None,
) -> ThresholdComparison | None:
    """Score the card's global and per-queue thresholds on these answers (None: the card
    has no per-queue thresholds to compare)."""
    if routing is None or not routing.queue_calibration:
        return None
    default = 1.0 if routing.confidence_threshold is None else routing.confidence_threshold
    per = routing.queue_thresholds
    total = len(truth)
    rows = list(zip(confidences, predicted, truth, strict=True))
    queues: dict[str, QueueRow] = {}
    for queue in sorted(set(predicted)):
        mine = [(c, p == t) for c, p, t in rows if p == queue]
        own = per.get(queue, default)
        calibration = routing.queue_calibration.get(queue)
        queues[queue] = QueueRow(
            threshold=own,
            source=calibration.source if calibration else "global",
            predicted=len(mine),
            global_=_routed([ok for c, ok in mine if c >= default], len(mine)),
            per_queue=_routed([ok for c, ok in mine if c >= own], len(mine)),
        )
    return ThresholdComparison(
        target_precision=routing.target_precision,
        global_threshold=routing.confidence_threshold,
        global_=_routed([p == t for c, p, t in rows if c >= default], total),
        per_queue=_routed([p == t for c, p, t in rows if c >= per.get(p, default)], total),
        queues=queues,
    )


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def summary_line(comparison: ThresholdComparison) -> str:
    """One sentence: both ways side by side."""
    g, q = comparison.global_, comparison.per_queue
    threshold = _pct(comparison.global_threshold)
    return (
        f"Card thresholds for {comparison.target_precision:.0%} precision, on the test rows: "
        f"global {threshold} routes {g.coverage:.3f} at precision {_pct(g.precision)}; "
        f"per-queue routes {q.coverage:.3f} at precision {_pct(q.precision)}."
    )


def markdown_lines(comparison: ThresholdComparison) -> list[str]:
    """The report's section: the summary and the per-queue table."""
    g, q = comparison.global_, comparison.per_queue
    lines = [
        "## Global vs per-queue thresholds (test rows)",
        "",
        "| thresholds | routed | coverage | realised precision |",
        "|---|---|---|---|",
        f"| global {_pct(comparison.global_threshold)} | {g.routed} | {g.coverage:.3f} | "
        f"{_pct(g.precision)} |",
        f"| per queue | {q.routed} | {q.coverage:.3f} | {_pct(q.precision)} |",
        "",
        "Per predicted queue (a queue's precision is that of the tickets routed TO it; "
        "source: its own threshold, the fallback (too few validation tickets: the global "
        "threshold chosen with the same lower bound), or "
        "unreachable (no threshold reached the target on validation: nothing routed)):",
        "",
        "| queue | source | threshold | predicted | global: routed / precision | "
        "per queue: routed / precision |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in sorted(comparison.queues.items(), key=lambda kv: -kv[1].predicted):
        lines.append(
            f"| {name} | {row.source} | {row.threshold:.3f} | {row.predicted} | "
            f"{row.global_.routed} / {_pct(row.global_.precision)} | "
            f"{row.per_queue.routed} / {_pct(row.per_queue.precision)} |"
        )
    return [*lines, ""]
