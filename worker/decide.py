"""Where an answered ticket goes: its queue's topic, or triage.

Owns the triage threshold in force (configured, else the expert's card, else 0.5) and the
decision for one prediction. Pure: the pipeline and `route` both call it, so the command
line shows exactly what the worker would do. Per-queue thresholds and modes are
`worker.policy`'s; a plain float threshold here means one threshold, every queue autoroute.
"""

from __future__ import annotations

from collections.abc import Mapping

from expert.serving import Prediction
from schemas.routing import Disposition, TriageReason
from schemas.taxonomy import QueueMode, Taxonomy
from worker.policy import DEFAULT_CONFIDENCE_THRESHOLD, Thresholds, plan

__all__ = ["DEFAULT_CONFIDENCE_THRESHOLD", "destination", "effective_threshold"]


def effective_threshold(configured: float | None, recommended: float | None) -> float:
    """The triage threshold in force: the configured one, else the expert's, else 0.5."""
    if configured is not None:
        return configured
    return recommended if recommended is not None else DEFAULT_CONFIDENCE_THRESHOLD


def destination(
    taxonomy: Taxonomy,
    prediction: Prediction,
    threshold: float | Thresholds,
    *,
    modes: Mapping[str, QueueMode] | None = None,
) -> tuple[str, Disposition, TriageReason | None]:
    """Where an answered ticket goes: its queue's topic, or triage below its threshold (or
    when its queue is in recommend or shadow mode, `worker.policy.plan`).

    Returns:
        (topic, disposition, triage reason or None).
    """
    if not isinstance(threshold, Thresholds):
        threshold = Thresholds(default=threshold, source="configured")
    chosen = plan(taxonomy, prediction, thresholds=threshold, modes=modes or {})
    return chosen.topic, chosen.disposition, chosen.reason
