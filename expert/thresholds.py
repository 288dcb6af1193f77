"""Per-queue triage thresholds: one confidence threshold per predicted queue, chosen on
validation rows so that each queue's routed tickets reach the target precision.

Owns the choice rule and its smoothed precision estimate. Pure numpy-free Python on
(confidence, predicted, truth) triples: no I/O, no model. `expert.recipe` calls it at build
time and `expert.calibrate` when re-choosing thresholds on an existing expert.

The rule: tickets are grouped by the queue the expert predicts. For each queue with at
least `min_predicted` validation tickets, every cut between distinct confidences is a
candidate; the chosen cut routes the most tickets whose *estimated* precision reaches the
target. Queues are independent (a ticket is routed to its predicted queue only), so
maximising each queue's routed count maximises the total. A queue with fewer validation
tickets falls back to the global threshold (`expert.calibrate` passes the one chosen by the
same lower bound over all validation tickets); a queue where no cut reaches the target
routes nothing (threshold 1.0).

The estimate is a Wilson lower confidence bound on the precision (z = `strength`): a cut
that routes 8 of 8 tickets right is not trusted like one that routes 80 of 84. With z = 0
it is the raw validation precision, which over-fits on ~600 validation rows (expert/RESULTS.md
has the measurement that chose the default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MIN_PREDICTED = 20
DEFAULT_STRENGTH = 1.0
# A queue no cut makes precise enough routes only tickets at confidence 1.0 (in practice none).
UNREACHABLE_THRESHOLD = 1.0

Source = Literal["queue", "global", "unreachable"]


class QueueCalibration(BaseModel):
    """How one queue's threshold was chosen (the card's provenance record).

    Attributes:
        threshold: the threshold in force for tickets predicted for this queue.
        source: "queue" (its own, chosen on its validation tickets), "global" (too few
            validation tickets: the fallback, a global threshold), "unreachable" (no cut
            reached the target: nothing is routed).
        predicted: validation tickets the expert predicted for this queue.
        routed: of those, the ones at or above `threshold`.
        precision: validation precision of the routed ones (None: none routed).
        estimate: the smoothed precision the choice relied on (None: not chosen per queue).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(ge=0.0, le=1.0)
    source: Source
    predicted: int = Field(ge=0)
    routed: int = Field(ge=0)
    precision: float | None = None
    estimate: float | None = None


def wilson_lower_bound(hits: int, n: int, *, z: float) -> float:
    """The Wilson score interval's lower end for `hits` successes in `n` trials."""
    if n <= 0:
        return 0.0
    p = hits / n
    if z <= 0:
        return p
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n))


def _cuts(confidences: Sequence[float], correct: Sequence[bool]) -> list[tuple[float, int, int]]:
    """(threshold, routed, hits) at every cut between distinct confidences, high to low."""
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])
    cuts: list[tuple[float, int, int]] = []
    hits = 0
    for rank, i in enumerate(order, start=1):
        hits += bool(correct[i])
        if rank < len(order) and confidences[order[rank]] == confidences[i]:
            continue
        cuts.append((float(confidences[i]), rank, hits))
    return cuts


def _at(
    confidences: Sequence[float], correct: Sequence[bool], threshold: float
) -> tuple[int, float | None]:
    routed = [c for conf, c in zip(confidences, correct, strict=True) if conf >= threshold]
    return len(routed), (sum(routed) / len(routed) if routed else None)


def choose_queue_threshold(
    confidences: Sequence[float],
    correct: Sequence[bool],
    *,
    target: float,
    strength: float = DEFAULT_STRENGTH,
) -> QueueCalibration:
    """One queue's threshold from its predicted tickets' confidences and correctness."""
    best: tuple[float, int, int, float] | None = None
    for threshold, routed, hits in _cuts(confidences, correct):
        estimate = wilson_lower_bound(hits, routed, z=strength)
        if estimate >= target and (best is None or routed > best[1]):
            best = (threshold, routed, hits, estimate)
    if best is None:
        return QueueCalibration(
            threshold=UNREACHABLE_THRESHOLD,
            source="unreachable",
            predicted=len(confidences),
            routed=0,
        )
    threshold, routed, hits, estimate = best
    return QueueCalibration(
        threshold=threshold,
        source="queue",
        predicted=len(confidences),
        routed=routed,
        precision=round(hits / routed, 6),
        estimate=round(estimate, 6),
    )


def choose_queue_thresholds(
    confidences: Sequence[float],
    predicted: Sequence[str],
    truth: Sequence[str],
    *,
    labels: Sequence[str],
    target: float,
    global_threshold: float | None,
    min_predicted: int = DEFAULT_MIN_PREDICTED,
    strength: float = DEFAULT_STRENGTH,
) -> dict[str, QueueCalibration]:
    """Every label's threshold and how it was chosen.

    Args:
        confidences: the served confidence of each validation ticket.
        predicted: the queue the expert answered for each.
        truth: the true queue of each.
        labels: every queue (a queue never predicted falls back to the global threshold).
        target: the precision each queue's routed tickets must reach.
        global_threshold: the fallback (None: no global threshold reached the target, and
            a fallback queue routes nothing).
        min_predicted: fewer predicted validation tickets than this: the fallback.
        strength: z of the Wilson lower bound (0: raw validation precision).

    Returns:
        label -> its calibration, for every label.
    """
    by_queue: dict[str, tuple[list[float], list[bool]]] = {label: ([], []) for label in labels}
    for conf, pred, true in zip(confidences, predicted, truth, strict=True):
        confs, right = by_queue.setdefault(pred, ([], []))
        confs.append(float(conf))
        right.append(pred == true)
    fallback = UNREACHABLE_THRESHOLD if global_threshold is None else global_threshold
    chosen: dict[str, QueueCalibration] = {}
    for label in labels:
        confs, right = by_queue[label]
        if len(confs) >= min_predicted:
            chosen[label] = choose_queue_threshold(confs, right, target=target, strength=strength)
            continue
        routed, precision = _at(confs, right, fallback)
        chosen[label] = QueueCalibration(
            threshold=fallback,
            source="global",
            predicted=len(confs),
            routed=routed,
            precision=None if precision is None else round(precision, 6),
        )
    return chosen


def routed_figures(
    confidences: Sequence[float],
    predicted: Sequence[str],
    truth: Sequence[str],
    *,
    thresholds: dict[str, float],
    default: float,
) -> tuple[float, float | None]:
    """(coverage, precision) when each ticket is routed at its predicted queue's threshold
    (`default` for a queue without one)."""
    routed = [
        pred == true
        for conf, pred, true in zip(confidences, predicted, truth, strict=True)
        if conf >= thresholds.get(pred, default)
    ]
    coverage = len(routed) / max(1, len(confidences))
    return coverage, (sum(routed) / len(routed) if routed else None)
