"""Where an answered ticket goes: its queue's topic, or triage.

Owns the triage threshold in force (configured, else the expert's card, else 0.5) and the
decision for one prediction. Pure: the pipeline and `route` both call it, so the command
line shows exactly what the worker would do.
"""

from __future__ import annotations

from expert.serving import Prediction
from schemas.routing import Disposition, TriageReason
from schemas.taxonomy import Taxonomy

DEFAULT_CONFIDENCE_THRESHOLD = 0.5


def effective_threshold(configured: float | None, recommended: float | None) -> float:
    """The triage threshold in force: the configured one, else the expert's, else 0.5."""
    if configured is not None:
        return configured
    return recommended if recommended is not None else DEFAULT_CONFIDENCE_THRESHOLD


def destination(
    taxonomy: Taxonomy, prediction: Prediction, threshold: float
) -> tuple[str, Disposition, TriageReason | None]:
    """Where an answered ticket goes: its queue's topic, or triage below `threshold`.

    Returns:
        (topic, disposition, triage reason or None).
    """
    if prediction.confidence < threshold:
        return taxonomy.topics.triage, Disposition.TRIAGE, TriageReason.LOW_CONFIDENCE
    return taxonomy.topic_for(prediction.label), Disposition.ROUTED, None
