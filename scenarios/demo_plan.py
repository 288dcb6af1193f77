"""How much of the day the demo replays, and how fast: arithmetic on a measured capacity.

Owns the demo's choice of speed-up and window of the day (pure: no clock, no Kafka). The
day is compressed only as far as the router's measured capacity allows: the day's busiest
one-minute rate, sped up, must stay under `headroom` x capacity, so the replay offers the
router a load it keeps up with and the latency measured is the router's at that load, not a
backlog the compression built. Within the wall time left, it replays the busiest part of
the day that fits (the morning peak and its incident storm on the default day). It never
measures anything itself: the capacity comes from `bench.probe`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from loadgen.traffic import Schedule


@dataclass(frozen=True, slots=True)
class ReplayChoice:
    """What the demo replays.

    Attributes:
        speedup: simulated seconds per real second (>= 1).
        from_s, to_s: the replayed window, seconds from the day's start.
        tickets: arrivals in the window.
        day_peak_per_s: the day's busiest one-minute rate, in real time.
        offered_peak_per_s: that rate times `speedup`: the most the replay offers.
        capacity_per_s: the router's measured capacity (None: not measured).
        headroom: the share of capacity the offered peak may use.
        wall_s: how long the replay takes.
        why: one sentence on how the speed-up was chosen.
    """

    speedup: float
    from_s: float
    to_s: float
    tickets: int
    day_peak_per_s: float
    offered_peak_per_s: float
    capacity_per_s: float | None
    headroom: float
    wall_s: float
    why: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def replay_wall_s(
    *, budget_s: float, elapsed_s: float, reserve_s: float, min_s: float, max_s: float
) -> float:
    """Wall time left for the replay: the budget minus what is spent and what must follow."""
    return min(max_s, max(min_s, budget_s - elapsed_s - reserve_s))


def _busiest_start(counts: np.ndarray[Any, Any], width: int) -> int:
    if width >= counts.size:
        return 0
    sums = np.convolve(counts, np.ones(width, dtype=np.int64), mode="valid")
    return int(np.argmax(sums))


def choose_replay(
    day: Schedule,
    *,
    capacity_per_s: float | None,
    wall_s: float,
    headroom: float = 0.8,
    bin_s: float = 60.0,
) -> ReplayChoice:
    """The fastest speed-up the router keeps up with, and the busiest window that fits.

    Args:
        day: the whole day's arrivals.
        capacity_per_s: the router's highest sustainable rate, measured (None: unknown;
            the day is then replayed in real time).
        wall_s: real seconds available for the replay.
        headroom: the offered peak stays at or under `headroom` x capacity.
        bin_s: width of the bins the peak rate and the window are measured on.

    Raises:
        ValueError: an empty day, or non-positive wall time or headroom.
    """
    if len(day) == 0 or wall_s <= 0 or not 0 < headroom <= 1:
        raise ValueError("need arrivals, wall_s > 0 and 0 < headroom <= 1")
    counts = day.counts_per_bin(bin_s)
    peak = float(counts.max()) / bin_s
    if capacity_per_s is None or capacity_per_s <= 0:
        speedup = 1.0
        why = "no capacity was measured, so the day is replayed in real time"
    elif headroom * capacity_per_s <= peak:
        speedup = 1.0
        why = (
            f"the router's measured capacity ({capacity_per_s:.1f}/s) is under"
            f" {1 / headroom:.2g}x the day's peak ({peak:.2f}/s), so no compression"
        )
    else:
        speedup = headroom * capacity_per_s / peak
        why = (
            f"{headroom:.0%} of the measured capacity ({capacity_per_s:.1f}/s) divided by the"
            f" day's busiest minute ({peak:.2f}/s)"
        )
    span_s = min(day.duration_s, speedup * wall_s)
    width = min(counts.size, max(1, math.ceil(span_s / bin_s)))
    from_s = _busiest_start(counts, width) * bin_s
    to_s = min(day.duration_s, from_s + span_s)
    in_window = (day.times_s >= from_s) & (day.times_s < to_s)
    return ReplayChoice(
        speedup=speedup,
        from_s=from_s,
        to_s=to_s,
        tickets=int(in_window.sum()),
        day_peak_per_s=peak,
        offered_peak_per_s=peak * speedup,
        capacity_per_s=capacity_per_s,
        headroom=headroom,
        wall_s=(to_s - from_s) / speedup,
        why=why,
    )
