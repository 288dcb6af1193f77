"""Routing-quality metrics that need no model: calibration and the triage trade-off.

Owns ECE (with its reliability points) and the precision/coverage curve of a triage
threshold, shared by evaluation reports and by the builders that calibrate an expert on
validation rows. Pure Python: no I/O, no model library.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

TARGET_PRECISION = 0.95
ECE_BINS = 15


class CurvePoint(BaseModel):
    """One triage threshold: tickets at or above it are routed, the rest go to triage."""

    model_config = ConfigDict(frozen=True)

    threshold: float
    coverage: float
    precision: float


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], *, bins: int = ECE_BINS
) -> tuple[float, list[tuple[float, float, int]]]:
    """ECE over equal-width confidence bins, and the per-bin reliability points."""
    buckets: list[list[int]] = [[] for _ in range(bins)]
    for i, c in enumerate(confidences):
        buckets[min(bins - 1, int(c * bins))].append(i)
    total, ece, points = len(confidences), 0.0, []
    for members in buckets:
        if not members:
            continue
        conf = sum(confidences[i] for i in members) / len(members)
        acc = sum(correct[i] for i in members) / len(members)
        ece += len(members) / total * abs(acc - conf)
        points.append((round(conf, 4), round(acc, 4), len(members)))
    return ece, points


def _cuts(confidences: Sequence[float], correct: Sequence[bool]) -> list[CurvePoint]:
    """Every distinct threshold, from the most to the least confident ticket.

    Routing the tickets whose confidence is at least the threshold: coverage is the share
    routed, precision the share of routed tickets that went to the right queue. Cuts fall
    only between distinct confidences: a threshold routes all ties alike.
    """
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])
    curve: list[CurvePoint] = []
    hits, n = 0, len(order)
    for rank, i in enumerate(order, start=1):
        hits += bool(correct[i])
        if rank < n and confidences[order[rank]] == confidences[i]:
            continue
        curve.append(
            CurvePoint(threshold=float(confidences[i]), coverage=rank / n, precision=hits / rank)
        )
    return curve


def precision_coverage(
    confidences: Sequence[float], correct: Sequence[bool], *, target: float = TARGET_PRECISION
) -> tuple[list[CurvePoint], float, float | None]:
    """The curve of (threshold, coverage, precision), thinned to ~200 points, and the
    largest coverage at `target` precision with its threshold."""
    curve = _cuts(confidences, correct)
    threshold, coverage, _ = threshold_at_precision(confidences, correct, target=target)
    step = max(1, len(curve) // 200)
    thinned = curve[::step] + ([curve[-1]] if curve and (len(curve) - 1) % step else [])
    return thinned, coverage, threshold


def threshold_at_precision(
    confidences: Sequence[float], correct: Sequence[bool], *, target: float = TARGET_PRECISION
) -> tuple[float | None, float, float | None]:
    """The triage threshold with the largest coverage whose routed tickets reach `target`.

    Returns:
        (threshold or None when no threshold reaches the target, its coverage, its precision).
    """
    best: tuple[float | None, float, float | None] = (None, 0.0, None)
    for point in _cuts(confidences, correct):
        if point.precision >= target and point.coverage > best[1]:
            best = (point.threshold, point.coverage, point.precision)
    return best
