"""The arrival model: when tickets arrive over a day and a week, and incident storms on top.

Owns the rate function (weekday curve, weekly pattern, storms) and seeded sampling of a
non-homogeneous Poisson process by thinning. Pure: no I/O, no clocks, no Kafka. Which
ticket arrives is `loadgen.replay`'s business; this module only says when.

The intraday curve is defined on a one-minute grid and linearly interpolated, so its
integral (the expected number of arrivals) is exact and its peak/trough ratio is exactly
the configured one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SECONDS_PER_DAY = 86_400.0
_GRID_MINUTES = 1440
_GRID_H = np.arange(_GRID_MINUTES + 1, dtype=np.float64) / 60.0  # 0:00 .. 24:00 inclusive

# Monday .. Sunday. Mon-Fri average 1.0, so `daily_volume` is an average business day.
DEFAULT_WEEKDAY_FACTORS: tuple[float, ...] = (1.10, 1.03, 1.00, 0.97, 0.90, 0.22, 0.16)


@dataclass(frozen=True, slots=True)
class IncidentStorm:
    """A burst of similar tickets caused by one incident (e.g. a VPN outage).

    The storm's rate rises quickly and decays (a gamma-shaped pulse peaking at
    `peak_at_fraction` of its window), and is zero outside `[at_s, at_s + duration_s)`.

    Attributes:
        name: a short name used in reports and manifests.
        at_s: start, in seconds from the schedule's start.
        duration_s: how long the storm lasts.
        tickets: expected number of storm tickets (on top of the normal traffic).
        queue: the queue the storm's tickets belong to.
        peak_at_fraction: where in the window the rate peaks (0 < x < 1).
    """

    name: str = "vpn_outage"
    at_s: float = 9.5 * 3600
    duration_s: float = 1800.0
    tickets: int = 2000
    queue: str = "network_vpn"
    peak_at_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.tickets < 0 or self.at_s < 0:
            raise ValueError("storm: duration_s > 0, tickets >= 0 and at_s >= 0 are required")
        if not 0.0 < self.peak_at_fraction < 1.0:
            raise ValueError("storm: peak_at_fraction must be strictly between 0 and 1")

    def _shape(self, u: FloatArray) -> FloatArray:
        # u in [0, 1): gamma pulse u^k e^{-k u / p}, peaking at u = p, normalised to max 1.
        k, p = 3.0, self.peak_at_fraction
        return np.asarray(np.power(u / p, k) * np.exp(k * (1.0 - u / p)), dtype=np.float64)

    def _shape_integral(self) -> float:
        u = np.linspace(0.0, 1.0, 20_001)
        return float(np.trapezoid(self._shape(u), u))

    def rate_per_s(self, t_s: FloatArray) -> FloatArray:
        """Storm arrivals per second at offsets `t_s` from the schedule's start."""
        u = (np.asarray(t_s, dtype=np.float64) - self.at_s) / self.duration_s
        inside = (u >= 0.0) & (u < 1.0)
        scale = self.tickets / (self.duration_s * self._shape_integral())
        out = np.zeros_like(u)
        out[inside] = scale * self._shape(u[inside])
        return out

    def peak_rate_per_s(self) -> float:
        """The storm's highest rate, in arrivals per second."""
        return self.tickets / (self.duration_s * self._shape_integral())


def _bump(h: FloatArray, centre_h: float, width_h: float) -> FloatArray:
    return np.asarray(np.exp(-0.5 * ((h - centre_h) / width_h) ** 2), dtype=np.float64)


def _default_shape(h: FloatArray) -> FloatArray:
    # Night trough, morning peak ~09:45, lunch dip ~12:30, afternoon shoulder ~14:30,
    # a small evening tail. Rescaled afterwards so only the shape matters here.
    return (
        1.00 * _bump(h, 9.75, 1.4)
        + 0.80 * _bump(h, 14.5, 1.7)
        - 0.22 * _bump(h, 12.5, 0.6)
        + 0.12 * _bump(h, 19.5, 1.5)
    )


@dataclass(frozen=True, slots=True)
class TrafficModel:
    """Daily volume, intraday curve, weekly pattern and storms.

    Attributes:
        daily_volume: expected tickets on a day whose weekday factor is 1.0 (the average
            business day with the default factors), storms excluded.
        peak_to_trough: ratio of the highest to the lowest intraday rate (> 1).
        weekday_factors: Monday..Sunday multipliers of `daily_volume`.
        storms: incident storms, timed from the schedule's start.
    """

    daily_volume: float = 100_000.0
    peak_to_trough: float = 12.0
    weekday_factors: tuple[float, ...] = DEFAULT_WEEKDAY_FACTORS
    storms: tuple[IncidentStorm, ...] = ()
    _grid: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.daily_volume < 0:
            raise ValueError("daily_volume must be >= 0")
        if self.peak_to_trough <= 1.0:
            raise ValueError("peak_to_trough must be > 1")
        if len(self.weekday_factors) != 7 or min(self.weekday_factors) < 0:
            raise ValueError("weekday_factors: seven non-negative numbers, Monday first")
        raw = _default_shape(_GRID_H)
        unit = (raw - raw.min()) / (raw.max() - raw.min())
        shape = 1.0 + (self.peak_to_trough - 1.0) * unit
        # Normalise so the curve integrates to one day's volume (rate in arrivals per second).
        per_day = float(np.trapezoid(shape, _GRID_H * 3600.0))
        object.__setattr__(self, "_grid", shape * (self.daily_volume / per_day))

    def base_rate_per_s(self, t_s: FloatArray, *, start: datetime) -> FloatArray:
        """Normal (non-storm) arrivals per second at offsets `t_s` from `start`.

        The time of day and the weekday are `start`'s wall clock plus the offset.
        """
        t = np.asarray(t_s, dtype=np.float64)
        midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
        since_midnight_s = (start - midnight).total_seconds() + t
        day_index = np.floor(since_midnight_s / SECONDS_PER_DAY).astype(np.int64)
        hour_of_day = (since_midnight_s - day_index * SECONDS_PER_DAY) / 3600.0
        weekday = (start.weekday() + day_index) % 7
        factors = np.asarray(self.weekday_factors, dtype=np.float64)[weekday]
        return np.asarray(np.interp(hour_of_day, _GRID_H, self._grid) * factors, np.float64)

    def rate_per_s(self, t_s: FloatArray, *, start: datetime) -> FloatArray:
        """Total arrivals per second (normal traffic plus every storm)."""
        total = self.base_rate_per_s(t_s, start=start)
        for storm in self.storms:
            total = total + storm.rate_per_s(t_s)
        return total

    def intraday_peak_to_trough(self) -> float:
        """The intraday curve's max/min rate (equals `peak_to_trough` by construction)."""
        return float(self._grid.max() / self._grid.min())

    def expected_arrivals(self, *, start: datetime, duration_s: float) -> float:
        """Expected arrivals (normal traffic and storms) in `[start, start + duration_s)`."""
        # Grid breakpoints are at whole minutes; a 1 s step integrates the piecewise-linear
        # curve to ~1e-9 relative, and storms to well below Poisson noise.
        steps = max(2, int(math.ceil(duration_s)) + 1)
        t = np.linspace(0.0, duration_s, steps)
        total = float(np.trapezoid(self.rate_per_s(t, start=start), t))
        return total

    def peak_rate_per_s(self, *, start: datetime, duration_s: float) -> float:
        """The highest total rate in the window (on a one-second grid)."""
        t = np.arange(0.0, duration_s, 1.0, dtype=np.float64)
        return float(self.rate_per_s(t, start=start).max()) if t.size else 0.0


@dataclass(frozen=True, slots=True)
class Schedule:
    """Sampled arrival times.

    Attributes:
        start: the wall-clock time offset 0 stands for.
        duration_s: the schedule's length.
        times_s: arrival offsets in seconds, sorted ascending.
        storm_index: per arrival, the index into `storms`, or -1 for normal traffic.
        storms: the storms of the model that produced it.
    """

    start: datetime
    duration_s: float
    times_s: FloatArray
    storm_index: IntArray
    storms: tuple[IncidentStorm, ...]

    def __len__(self) -> int:
        return int(self.times_s.size)

    def counts_per_bin(self, bin_s: float) -> IntArray:
        """Arrivals per consecutive bin of `bin_s` seconds, covering the whole duration."""
        edges = np.arange(0.0, self.duration_s + bin_s, bin_s)
        counts, _ = np.histogram(self.times_s, bins=edges)
        return counts.astype(np.int64)

    def window(self, from_s: float, to_s: float) -> Schedule:
        """The arrivals in `[from_s, to_s)`, re-based so `from_s` becomes offset 0.

        Storms keep their index; their `at_s` stays relative to the original start.
        """
        keep = (self.times_s >= from_s) & (self.times_s < to_s)
        return Schedule(
            start=self.start + timedelta(seconds=from_s),
            duration_s=min(to_s, self.duration_s) - from_s,
            times_s=self.times_s[keep] - from_s,
            storm_index=self.storm_index[keep],
            storms=self.storms,
        )

    def at(self, index: int) -> datetime:
        """Wall-clock time of arrival `index`."""
        return self.start + timedelta(seconds=float(self.times_s[index]))


RateFn = Callable[[FloatArray], FloatArray]


def sample(
    model: TrafficModel,
    *,
    start: datetime,
    duration_s: float,
    seed: int,
    chunk_s: float = 900.0,
) -> Schedule:
    """Sample arrivals of `model` on `[start, start + duration_s)` by thinning.

    Each component (normal traffic, each storm) is thinned separately against its own
    per-chunk majorant, which keeps rejection low when the rate varies strongly; the
    superposition of independent Poisson processes is the Poisson process of the summed
    rate.

    Args:
        model: the traffic model.
        start: wall-clock time of offset 0 (its weekday and time of day matter).
        duration_s: length of the schedule.
        seed: the only source of randomness.
        chunk_s: width of the piecewise-constant majorant.

    Returns:
        The sorted arrivals.

    Raises:
        ValueError: `duration_s` is not positive.
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    rng = np.random.default_rng(seed)

    def base(t: FloatArray) -> FloatArray:
        return model.base_rate_per_s(t, start=start)

    components: list[tuple[int, RateFn]] = [(-1, base)]
    components += [(i, storm.rate_per_s) for i, storm in enumerate(model.storms)]
    times: list[FloatArray] = []
    labels: list[IntArray] = []
    for index, rate in components:
        accepted = _thin(rng, rate, duration_s=duration_s, chunk_s=chunk_s)
        times.append(accepted)
        labels.append(np.full(accepted.size, index, dtype=np.int64))
    all_t = np.concatenate(times)
    all_i = np.concatenate(labels)
    order = np.argsort(all_t, kind="stable")
    return Schedule(
        start=start,
        duration_s=duration_s,
        times_s=all_t[order],
        storm_index=all_i[order],
        storms=model.storms,
    )


def _thin(
    rng: np.random.Generator, rate: RateFn, *, duration_s: float, chunk_s: float
) -> FloatArray:
    """Lewis-Shedler thinning with a piecewise-constant majorant, one per chunk."""
    out: list[FloatArray] = []
    for t0 in np.arange(0.0, duration_s, chunk_s):
        t1 = min(float(t0) + chunk_s, duration_s)
        probe = np.linspace(float(t0), t1, 241)
        # The curve is piecewise linear on whole minutes and storms are smooth; 10% headroom
        # over a dense probe keeps the majorant above the true maximum.
        lam_max = float(np.max(rate(probe))) * 1.1
        if lam_max <= 0.0:
            continue
        n = int(rng.poisson(lam_max * (t1 - float(t0))))
        t = np.sort(rng.uniform(float(t0), t1, size=n))
        keep = rng.uniform(0.0, lam_max, size=n) < rate(t)
        out.append(t[keep])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


def business_day_start(day: datetime) -> datetime:
    """Midnight of `day` in its own timezone (a convenient schedule start)."""
    return day.replace(hour=0, minute=0, second=0, microsecond=0)


def storms_from_specs(specs: Sequence[str], *, default: IncidentStorm) -> tuple[IncidentStorm, ...]:
    """Parse `NAME@HH:MM[/TICKETS[/MINUTES[/QUEUE]]]` storm specs (CLI helper, pure).

    `HH:MM` is measured from the schedule's start.
    """
    storms: list[IncidentStorm] = []
    for spec in specs:
        name, _, rest = spec.partition("@")
        parts = rest.split("/")
        hh, _, mm = parts[0].partition(":")
        at_s = int(hh) * 3600 + int(mm or 0) * 60
        tickets = int(parts[1]) if len(parts) > 1 else default.tickets
        minutes = float(parts[2]) if len(parts) > 2 else default.duration_s / 60
        queue = parts[3] if len(parts) > 3 else default.queue
        storms.append(
            IncidentStorm(
                name=name or default.name,
                at_s=at_s,
                duration_s=minutes * 60,
                tickets=tickets,
                queue=queue,
                peak_at_fraction=default.peak_at_fraction,
            )
        )
    return tuple(storms)
