"""The routing policy in force: the triage threshold of each queue and each queue's mode.

Owns where thresholds come from (a configured one overrides everything; else the expert
card's per-queue thresholds, falling back to its global one, else 0.5), where modes come from
(the taxonomy's `mode:` per queue, overridden per queue by `ROUTER_ROUTING__MODES`), and the
plan for one answered ticket: the topic, disposition and reason of the record the desk sees,
and for a queue in shadow mode the shadow decision record. Pure: the pipeline and `route`
both call it, so the command line shows exactly what the worker would do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from expert.serving import Prediction
from schemas.routing import Disposition, TriageReason
from schemas.taxonomy import QueueMode, Taxonomy

DEFAULT_CONFIDENCE_THRESHOLD = 0.5


class PolicyError(ValueError):
    """A configured mode names a queue the taxonomy does not know."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The triage thresholds in force.

    Attributes:
        default: the threshold of queues without their own.
        per_queue: queue -> its own threshold (the card's `routing.queue_thresholds`).
        source: "configured" (ROUTER_ROUTING__CONFIDENCE_THRESHOLD: one threshold for every
            queue), "card" or "default" (0.5).
    """

    default: float
    per_queue: Mapping[str, float] = field(default_factory=dict)
    source: str = "default"

    def for_queue(self, queue: str) -> float:
        """The threshold a ticket predicted for `queue` must reach to be routed."""
        return self.per_queue.get(queue, self.default)


def thresholds_in_force(
    configured: float | None,
    recommended: float | None,
    recommended_per_queue: Mapping[str, float] | None = None,
) -> Thresholds:
    """A configured threshold (one for all queues), else the card's per-queue thresholds
    over its global one, else 0.5."""
    if configured is not None:
        return Thresholds(default=configured, source="configured")
    if recommended is None and not recommended_per_queue:
        return Thresholds(default=DEFAULT_CONFIDENCE_THRESHOLD)
    return Thresholds(
        default=DEFAULT_CONFIDENCE_THRESHOLD if recommended is None else recommended,
        per_queue=dict(recommended_per_queue or {}),
        source="card",
    )


def modes_in_force(taxonomy: Taxonomy, overrides: Mapping[str, QueueMode]) -> dict[str, QueueMode]:
    """Each queue's mode: the taxonomy's, replaced by the configured overrides.

    Raises:
        PolicyError: an override names a queue the taxonomy does not have.
    """
    unknown = sorted(set(overrides) - set(taxonomy.labels))
    if unknown:
        raise PolicyError(f"routing.modes names queues the taxonomy lacks: {unknown}")
    return {**taxonomy.modes(), **{q: QueueMode(m) for q, m in overrides.items()}}


@dataclass(frozen=True, slots=True)
class Plan:
    """What to publish for one answered ticket.

    Attributes:
        topic, disposition, reason: the record the desk sees (a queue topic, or triage).
        mode: the predicted queue's mode.
        shadow_reason: for a queue in shadow mode, the shadow record's reason (None: autoroute
            would have routed it); meaningless unless `shadow` is True.
        shadow: whether a shadow decision record goes to the shadow topic too.
    """

    topic: str
    disposition: Disposition
    reason: TriageReason | None
    mode: QueueMode
    shadow: bool = False
    shadow_reason: TriageReason | None = None


def plan(
    taxonomy: Taxonomy,
    prediction: Prediction,
    *,
    thresholds: Thresholds,
    modes: Mapping[str, QueueMode],
) -> Plan:
    """Where an answered ticket goes under its predicted queue's threshold and mode.

    autoroute: the queue's topic at or above the threshold, else triage (low_confidence).
    recommend: triage either way; recommend_mode when autoroute would have routed it.
    shadow: triage (shadow_mode) whatever the confidence, plus a shadow decision record.
    """
    mode = modes.get(prediction.label, QueueMode.AUTOROUTE)
    confident = prediction.confidence >= thresholds.for_queue(prediction.label)
    triage = taxonomy.topics.triage
    if mode is QueueMode.SHADOW:
        return Plan(
            triage,
            Disposition.TRIAGE,
            TriageReason.SHADOW_MODE,
            mode,
            shadow=True,
            shadow_reason=None if confident else TriageReason.LOW_CONFIDENCE,
        )
    if not confident:
        return Plan(triage, Disposition.TRIAGE, TriageReason.LOW_CONFIDENCE, mode)
    if mode is QueueMode.RECOMMEND:
        return Plan(triage, Disposition.TRIAGE, TriageReason.RECOMMEND_MODE, mode)
    return Plan(taxonomy.topic_for(prediction.label), Disposition.ROUTED, None, mode)
