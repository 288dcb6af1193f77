"""The service desk that answers: what the agents do with each routed ticket, and when.

Owns the feedback model of the simulated desk: an agent of the queue a ticket landed in takes
it after a pickup delay and confirms it when it is theirs; a misrouted ticket costs that
agent the reassignment penalty before it is moved to its true queue; the triage desk
assigns a triaged ticket after its handling time. The times are `bench.mttr`'s
distributions (`HandlingTime`: exponential, or lognormal with a coefficient of variation)
with its desk's assumptions (triage minutes, reassignment penalty), and a small share of
human mistakes (`noise`: the final queue is another one). Pure and seeded: it never reads a
topic or a clock; `loadgen.answering_desk` publishes what it decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from loadgen.desk_model import DeskAssumptions, HandlingTime
from schemas.feedback import Feedback, FeedbackOutcome
from schemas.ticket import SourceSystem

# Minutes until an agent of a queue takes a ticket that landed there (assumptions).
PICKUP_MIN_BY_TIER = {"L1": 10.0, "L2": 20.0, "L3": 30.0}
TRIAGE_GROUP = "triage"


@dataclass(frozen=True, slots=True)
class DeskResponse:
    """How the desk answers (times in the desk's minutes; all assumptions, overridable).

    Attributes:
        pickup_min_by_tier: mean minutes until an agent of the landing queue takes a ticket.
        cv: coefficient of variation of every delay (1: exponential).
        reassignment_penalty_min: agent minutes a misrouted ticket costs before it is moved.
        triage_min: minutes the triage desk spends before it assigns a ticket.
        noise: share of tickets whose final queue is a human mistake (another queue).
    """

    pickup_min_by_tier: Mapping[str, float] = field(
        default_factory=lambda: dict(PICKUP_MIN_BY_TIER)
    )
    cv: float = 1.0
    reassignment_penalty_min: float = DeskAssumptions().reassignment_penalty_min
    triage_min: float = DeskAssumptions().triage_min
    noise: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise < 1.0:
            raise ValueError("noise must be a share in [0, 1)")


@dataclass(frozen=True, slots=True)
class DeskAnswer:
    """What the desk does with one ticket.

    Attributes:
        delay_min: desk minutes from the router's decision to the action.
        outcome: confirmed (it stays where it landed) or reassigned.
        final_queue: where the ticket ends (the true queue, unless a human erred).
        landed: the queue the router sent it to (None: triage).
        mistaken: the final queue is a human mistake.
    """

    delay_min: float
    outcome: FeedbackOutcome
    final_queue: str
    landed: str | None
    mistaken: bool


def answer(
    *,
    truth: str,
    landed: str | None,
    tiers: Mapping[str, str],
    desk: DeskResponse,
    rng: np.random.Generator,
) -> DeskAnswer:
    """The desk's action on a ticket the router sent to `landed` (None: triage).

    Args:
        truth: the ticket's true queue.
        landed: the queue the router chose, or None when it went to triage.
        tiers: queue -> tier (L1/L2/L3) for every queue of the taxonomy.
        desk: the desk's delays and noise.
        rng: the randomness (seeded by the caller).
    """
    final, mistaken = truth, False
    if rng.random() < desk.noise:
        others: Sequence[str] = [q for q in tiers if q != truth]
        final, mistaken = others[int(rng.integers(0, len(others)))], True
    if landed is None:
        delay = HandlingTime(desk.triage_min, desk.cv).draw_min(rng)
        return DeskAnswer(delay, FeedbackOutcome.REASSIGNED, final, None, mistaken)
    delay = HandlingTime(desk.pickup_min_by_tier[tiers[landed]], desk.cv).draw_min(rng)
    if final == landed:
        return DeskAnswer(delay, FeedbackOutcome.CONFIRMED, final, landed, mistaken)
    delay += HandlingTime(desk.reassignment_penalty_min, desk.cv).draw_min(rng)
    return DeskAnswer(delay, FeedbackOutcome.REASSIGNED, final, landed, mistaken)


def to_feedback(ticket_id: str, reply: DeskAnswer, *, occurred_at: datetime) -> Feedback:
    """The canonical `Feedback` event the desk's ITSM connector would publish."""
    previous_group = reply.landed or TRIAGE_GROUP
    return Feedback(
        ticket_id=ticket_id,
        final_queue=reply.final_queue,
        previous_queue=reply.landed if reply.outcome is FeedbackOutcome.REASSIGNED else None,
        outcome=reply.outcome,
        actor=f"agent.{reply.final_queue}",
        occurred_at=occurred_at,
        source=SourceSystem.CANONICAL,
        final_group=reply.final_queue,
        previous_group=previous_group if reply.outcome is FeedbackOutcome.REASSIGNED else None,
    )
