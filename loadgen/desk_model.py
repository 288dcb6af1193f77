"""The service desk's numbers: handling-time distributions and the desk's assumptions.

Owns the parameters of the people behind the queues, which the simulated desk that answers
(`loadgen.desk`) and the MTTR model (`bench.mttr`) both draw from. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

Rng = np.random.Generator


@dataclass(frozen=True, slots=True)
class HandlingTime:
    """A handling-time distribution in minutes: exponential when `cv` is 1, else lognormal.

    Attributes:
        mean_min: mean handling time.
        cv: coefficient of variation (std / mean).
    """

    mean_min: float
    cv: float = 1.0

    def draw_min(self, rng: Rng) -> float:
        """One handling time, in minutes."""
        if self.mean_min <= 0:
            return 0.0
        if math.isclose(self.cv, 1.0):
            return float(rng.exponential(self.mean_min))
        sigma2 = math.log1p(self.cv**2)
        mu = math.log(self.mean_min) - sigma2 / 2
        return float(rng.lognormal(mu, math.sqrt(sigma2)))


# Default handling times by tier (minutes): assumptions, overridable from the CLI.
TIER_HANDLING_MIN = {"L1": 25.0, "L2": 60.0, "L3": 120.0}


@dataclass(frozen=True, slots=True)
class DeskAssumptions:
    """The service desk's numbers that are assumptions, not measurements (all overridable).

    Attributes:
        handling_min_by_tier: mean handling time per queue tier, minutes.
        handling_cv: coefficient of variation of handling times (1 = exponential).
        reassignment_penalty_min: agent minutes lost per misrouted ticket.
        triage_min: minutes a human triage agent spends per ticket.
        utilisation: staffing target at the busiest hour of normal traffic (storms excluded,
            so a storm builds a backlog, as it does on a real desk).
        manual_min_per_ticket: dispatcher minutes per ticket under manual dispatch.
        manual_accuracy: share of tickets a dispatcher sends to the right queue.
    """

    handling_min_by_tier: Mapping[str, float] = field(
        default_factory=lambda: dict(TIER_HANDLING_MIN)
    )
    handling_cv: float = 1.0
    reassignment_penalty_min: float = 15.0
    triage_min: float = 5.0
    utilisation: float = 0.85
    manual_min_per_ticket: float = 4.0
    manual_accuracy: float = 0.85
