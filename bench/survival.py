"""Durations with censoring: the Kaplan-Meier estimator and a censored lognormal regression.

Owns the statistics of times that may not have ended yet. A ticket still open when the
export was taken has a duration of *at least* its age: it enters the Kaplan-Meier curve as
at risk until then, and the lognormal likelihood through its survival function, never as a
short ticket and never dropped. Times under `floor_h` (the export's clock resolution)
enter as left-censored (somewhere between 0 and the floor). Pure numpy/scipy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special

Array = NDArray[np.float64]
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def kaplan_meier(durations: ArrayLike, observed: ArrayLike) -> tuple[Array, Array]:
    """The Kaplan-Meier survival curve: event times and S(t) just after each.

    Args:
        durations: time of each subject (event or censoring).
        observed: True where the event happened, False where the subject was censored.
    """
    t = np.asarray(durations, dtype=np.float64)
    e = np.asarray(observed, dtype=bool)
    if t.size == 0:
        return np.empty(0), np.empty(0)
    order = np.lexsort((~e, t))  # at tied times, events before censorings
    t, e = t[order], e[order]
    times, first = np.unique(t, return_index=True)
    events = np.add.reduceat(e.astype(np.int64), first)
    at_risk = t.size - first
    keep = events > 0
    factors = 1.0 - events[keep] / at_risk[keep]
    return times[keep], np.cumprod(factors)


def km_quantile(durations: ArrayLike, observed: ArrayLike, q: float) -> float | None:
    """The time by which a share `q` of subjects had the event (None: not reached).

    With no censoring this is the empirical quantile's lower value; with censoring, the
    curve may never fall to 1 - q, and then the quantile is unknown, not the last time.
    """
    times, surv = kaplan_meier(durations, observed)
    hit = np.nonzero(surv <= 1.0 - q + 1e-12)[0]
    if hit.size == 0:
        return None
    i = int(hit[0])
    # Median convention: halfway to the next event time when the curve sits exactly on it.
    if math.isclose(float(surv[i]), 1.0 - q, abs_tol=1e-12) and i + 1 < times.size:
        return float((times[i] + times[i + 1]) / 2)
    return float(times[i])


def km_quantiles(
    values: ArrayLike, observed: ArrayLike, levels: Sequence[float], *, tail_sigma: float
) -> list[float]:
    """Quantiles of (possibly negative) censored values at `levels`, by Kaplan-Meier.

    Level 0 is the smallest value, level 1 the largest observed one. Levels the curve never
    reaches (censored tail) are extrapolated as a normal of sd `tail_sigma` centred on 0,
    never below the last known quantile.

    Raises:
        ValueError: no observed value.
    """
    v = np.asarray(values, dtype=np.float64)
    e = np.asarray(observed, dtype=bool)
    if not e.any():
        raise ValueError("no observed value")
    shift = float(v.min()) - 1.0
    times, surv = kaplan_meier(v - shift, e)
    out: list[float] = []
    for q in levels:
        if q <= 0.0:
            out.append(float(v.min()))
            continue
        hit = np.nonzero(surv <= 1.0 - q + 1e-12)[0]
        if hit.size:
            out.append(float(times[hit[0]] + shift))
        else:
            normal = tail_sigma * math.sqrt(2) * float(special.erfinv(2 * min(q, 0.999) - 1))
            out.append(max(out[-1] if out else normal, normal))
    return [float(x) for x in np.maximum.accumulate(out)]


@dataclass(frozen=True, slots=True)
class LognormalFit:
    """A censored lognormal regression: log T = X @ beta + sigma[group] * eps, eps ~ N(0, 1).

    Attributes:
        beta: the coefficients of the design's columns.
        sigma: the scale of each sigma group.
        loglik: the log-likelihood at the fit.
        converged: the optimiser reported success.
    """

    beta: Array
    sigma: Array
    loglik: float
    converged: bool


def _loglik_terms(z: Array, sigma: Array, kind: NDArray[np.int8]) -> tuple[Array, Array, Array]:
    """Per-observation log-likelihood and its derivatives in mu and in log sigma."""
    ll = np.empty_like(z)
    d_mu = np.empty_like(z)
    d_ls = np.empty_like(z)
    ev, rc, lc = kind == 0, kind == 1, kind == 2
    ll[ev] = -np.log(sigma[ev]) - LOG_SQRT_2PI - z[ev] ** 2 / 2
    d_mu[ev] = z[ev] / sigma[ev]
    d_ls[ev] = z[ev] ** 2 - 1
    # right-censored: log S(z) = log Phi(-z); hazard phi(z)/S(z)
    log_s = special.log_ndtr(-z[rc])
    ll[rc] = log_s
    hazard = np.exp(-(z[rc] ** 2) / 2 - LOG_SQRT_2PI - log_s)
    d_mu[rc] = hazard / sigma[rc]
    d_ls[rc] = z[rc] * hazard
    # left-censored below the floor: log Phi(z)
    log_f = special.log_ndtr(z[lc])
    ll[lc] = log_f
    ratio = np.exp(-(z[lc] ** 2) / 2 - LOG_SQRT_2PI - log_f)
    d_mu[lc] = -ratio / sigma[lc]
    d_ls[lc] = -z[lc] * ratio
    return ll, d_mu, d_ls


def fit_lognormal(
    durations_h: ArrayLike,
    observed: ArrayLike,
    *,
    design: ArrayLike | None = None,
    sigma_group: ArrayLike | None = None,
    ridge: ArrayLike | float = 0.0,
    floor_h: float = 1 / 60,
) -> LognormalFit:
    """Maximum-likelihood lognormal regression of durations, censoring included.

    Args:
        durations_h: durations in hours (events and censorings).
        observed: True for an event, False for a right-censored duration.
        design: the regression's design matrix (None: one intercept column).
        sigma_group: 0-based group of each row for its scale (None: one scale).
        ridge: an L2 penalty per coefficient (a normal prior of sd 1/sqrt(ridge) on the
            log scale), so that a small group's effect shrinks towards the intercept.
        floor_h: durations below this are left-censored at it (clock resolution).

    Raises:
        ValueError: no events to fit, or mismatched lengths.
    """
    t = np.asarray(durations_h, dtype=np.float64)
    e = np.asarray(observed, dtype=bool)
    x = np.ones((t.size, 1)) if design is None else np.asarray(design, dtype=np.float64)
    g = np.zeros(t.size, dtype=np.int64) if sigma_group is None else np.asarray(sigma_group)
    if not (t.size == e.size == x.shape[0] == g.size):
        raise ValueError("durations, observed, design and sigma_group differ in length")
    if not e.any():
        raise ValueError("no observed event to fit a duration distribution to")
    kind = np.where(e, 0, 1).astype(np.int8)
    kind[e & (t < floor_h)] = 2
    y = np.log(np.maximum(t, floor_h))
    n_beta, n_sigma = x.shape[1], int(g.max()) + 1
    penalty = np.broadcast_to(np.asarray(ridge, dtype=np.float64), (n_beta,))

    def objective(theta: Array) -> tuple[float, Array]:
        beta, log_sigma = theta[:n_beta], theta[n_beta:]
        sigma = np.exp(log_sigma)[g]
        z = (y - x @ beta) / sigma
        ll, d_mu, d_ls = _loglik_terms(z, sigma, kind)
        grad_beta = -(x.T @ d_mu) + penalty * beta
        grad_ls = -np.bincount(g, weights=d_ls, minlength=n_sigma)
        value = -float(ll.sum()) + 0.5 * float(np.sum(penalty * beta**2))
        return value, np.concatenate([grad_beta, grad_ls])

    start_mu = float(np.mean(y[e])) if x.shape[1] else 0.0
    start_sd = float(np.std(y[e])) or 1.0
    beta0 = np.zeros(n_beta)
    if design is None:
        beta0[0] = start_mu
    else:
        beta0 = np.linalg.lstsq(x[e], y[e], rcond=None)[0]
    theta0 = np.concatenate([beta0, np.full(n_sigma, math.log(max(start_sd, 0.05)))])
    res = optimize.minimize(objective, theta0, jac=True, method="L-BFGS-B")
    return LognormalFit(
        beta=res.x[:n_beta],
        sigma=np.exp(res.x[n_beta:]),
        loglik=-float(res.fun),
        converged=bool(res.success),
    )


def lognormal_quantile(mu: float, sigma: float, q: float) -> float:
    """The q-quantile of a lognormal with log-mean `mu` and log-sd `sigma`."""
    return float(math.exp(mu + sigma * math.sqrt(2) * special.erfinv(2 * q - 1)))


def lognormal_mean(mu: float, sigma: float) -> float:
    """The mean of a lognormal with log-mean `mu` and log-sd `sigma`."""
    return math.exp(mu + sigma**2 / 2)


def one_hot(values: Sequence[str], levels: Sequence[str]) -> Array:
    """Indicator columns of `levels` (a value outside them gets a row of zeros)."""
    index = {v: i for i, v in enumerate(levels)}
    out = np.zeros((len(values), len(levels)))
    for row, v in enumerate(values):
        if v in index:
            out[row, index[v]] = 1.0
    return out
