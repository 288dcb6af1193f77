"""The drift scenario's traffic and its retrain trigger (pure: no clock, no Kafka).

Owns two decisions of `ticket-router loadgen drift`: which ticket is sent when (open-loop
Poisson arrivals at a steady rate; before the drift moment the tickets are the older desk's
world, after it the drifted one, see `loadgen.corpus_drift`), and when live quality says it
is time to retrain: the accuracy the desk's feedback gives the router's most recent decisions
(the feedback consumer's `router_feedback_verdicts_total`) falls a stated amount below the
accuracy of every decision judged before them, by more than chance explains (a z-score), and
enough new feedback has arrived since to learn from. It never reads the
scenario's ground truth: the trigger sees only what production would see.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from loadgen.replay import PlannedSend


def drift_sends(
    *,
    rate_per_s: float,
    duration_s: float,
    drift_at_s: float,
    before: int,
    after: int,
    seed: int,
) -> list[PlannedSend]:
    """Poisson arrivals at `rate_per_s` for `duration_s` real seconds.

    Arrivals before `drift_at_s` draw from corpus indices [0, before); later ones from
    [before, before + after) (the corpus is the older world's tickets, then the drifted
    world's). Due times are real seconds from the start (no compression).

    Raises:
        ValueError: a non-positive rate or duration, or an empty side.
    """
    if rate_per_s <= 0 or duration_s <= 0 or before <= 0 or after <= 0:
        raise ValueError("need a positive rate, duration and tickets on both sides")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / rate_per_s, size=int(rate_per_s * duration_s * 1.2) + 10)
    times = np.cumsum(gaps)
    times = times[times < duration_s]
    old = rng.integers(0, before, size=times.size)
    new = rng.integers(before, before + after, size=times.size)
    return [
        PlannedSend(
            seq=i,
            scheduled_s=float(t),
            due_s=float(t),
            corpus_index=int(old[i] if t < drift_at_s else new[i]),
            storm=None,
        )
        for i, t in enumerate(times)
    ]


@dataclass(frozen=True, slots=True)
class TriggerPolicy:
    """When live quality calls for a retrain.

    Attributes:
        window_s: rolling window the live accuracy is measured over.
        min_judged: fewer judged decisions in the window (or before it) say nothing.
        drop: a drop is this far below the accuracy of the decisions judged before the
            window ...
        min_z: ... and this many standard errors of the difference (a two-proportion test;
            the max of many noisy windows is no baseline: a 30 s window of ~170 decisions
            wobbles by 1.5 points, and the desk's own mistakes look like the router's).
        labels_after_drop: then wait for this many more judged decisions (data to learn
            from and to judge the challenger on).
        max_wait_s: fire anyway this long after the first reading (None: never).
    """

    window_s: float = 30.0
    min_judged: int = 60
    drop: float = 0.05
    min_z: float = 4.0
    labels_after_drop: int = 600
    max_wait_s: float | None = None


@dataclass(slots=True)
class RetrainTrigger:
    """Watches the cumulative feedback verdicts and says when to retrain (once).

    Feed it `observe(now_s, confirmed, reassigned)` with the running totals of judged
    routed decisions; it returns a reason string once, when the policy fires.
    """

    policy: TriggerPolicy
    readings: deque[tuple[float, int, int]] = field(default_factory=deque)
    started_s: float | None = None
    reference: float | None = None  # accuracy before the window, when the drop was seen
    dropped_at: tuple[float, int] | None = None  # (time, judged then)
    fired: str | None = None

    def _base(self) -> tuple[float, int, int]:
        t1 = self.readings[-1][0]
        return next(
            (x for x in self.readings if x[0] >= t1 - self.policy.window_s), self.readings[0]
        )

    def window_accuracy(self) -> tuple[float | None, int]:
        """Accuracy of the decisions judged within the window, and how many there were."""
        if len(self.readings) < 2:
            return None, 0
        _, c1, r1 = self.readings[-1]
        _, c0, r0 = self._base()
        judged = (c1 + r1) - (c0 + r0)
        if judged < self.policy.min_judged:
            return None, judged
        return (c1 - c0) / judged, judged

    def _dropped(self) -> float | None:
        """The accuracy before the window when the window is significantly below it."""
        accuracy, judged = self.window_accuracy()
        _, c0, r0 = self._base()
        if accuracy is None or c0 + r0 < self.policy.min_judged:
            return None
        n0 = c0 + r0
        before = c0 / n0
        # Two-proportion z-test: both accuracies are estimates, the earlier one too.
        pooled = (c0 + accuracy * judged) / (n0 + judged)
        error = max(math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / judged)), 1e-9)
        gap = before - accuracy
        return before if gap >= self.policy.drop and gap / error >= self.policy.min_z else None

    def observe(self, now_s: float, *, confirmed: int, reassigned: int) -> str | None:
        """Record the totals at `now_s`; the reason to retrain, the first time it holds (later
        readings still update `window_accuracy`)."""
        if self.started_s is None:
            self.started_s = now_s
        self.readings.append((now_s, confirmed, reassigned))
        while len(self.readings) > 2 and self.readings[1][0] < now_s - 2 * self.policy.window_s:
            self.readings.popleft()
        if self.fired is not None:
            return None
        judged = confirmed + reassigned
        if self.dropped_at is None and (before := self._dropped()) is not None:
            self.reference, self.dropped_at = before, (now_s, judged)
        if (
            self.dropped_at is not None
            and judged - self.dropped_at[1] >= self.policy.labels_after_drop
        ):
            assert self.reference is not None
            self.fired = (
                f"live accuracy fell more than {self.policy.drop * 100:.0f} points below the"
                f" {self.reference:.1%} of the decisions judged before at"
                f" {self.dropped_at[0] - self.started_s:.0f} s; {judged - self.dropped_at[1]}"
                " decisions judged since"
            )
        elif (
            self.policy.max_wait_s is not None and now_s - self.started_s >= self.policy.max_wait_s
        ):
            self.fired = f"no clear drop within {self.policy.max_wait_s:.0f} s: retrain anyway"
        return self.fired
