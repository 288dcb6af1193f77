"""Combining the neural and the lexical model, and calibrating what comes out.

Owns the fusion rule, fitting its weights on validation rows, and choosing the triage
threshold for a target precision. Pure numpy/scipy: no model library, no I/O.

The rule is a log-linear pool: for each ticket, logits = a * log p_neural + b * s_lexical
(the lexical model's decision values), probabilities = softmax(logits). `a` and `b` are
fitted together by minimising the negative log-likelihood of the validation labels, so they
are both the mixing weights and the temperature (1 / (a + b)); b = 0 is the neural model
alone, calibrated; a = 0 the lexical model alone. Fitting on rows no component was trained on
is what makes the weights and the confidence honest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

MAX_WEIGHT = 200.0


class FusionWeights(BaseModel):
    """The fitted pool: logits = neural_weight * log p_neural + lexical_weight * s_lexical.

    Attributes:
        neural_weight: `a` (0: the neural model is not used).
        lexical_weight: `b` (0: the lexical model is not used).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    neural_weight: float = Field(ge=0.0)
    lexical_weight: float = Field(ge=0.0)

    @property
    def uses_neural(self) -> bool:
        """Whether the neural model's answer matters."""
        return self.neural_weight > 0

    @property
    def uses_lexical(self) -> bool:
        """Whether the lexical model's answer matters."""
        return self.lexical_weight > 0


def _log_softmax(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    shifted = z - top
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _safe_log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-12, 1.0))


def logits(
    weights: FusionWeights,
    *,
    neural_probabilities: np.ndarray | None,
    lexical_scores: np.ndarray | None,
) -> np.ndarray:
    """The pooled logits (rows: tickets, columns: labels)."""
    parts = []
    if weights.uses_neural:
        if neural_probabilities is None:
            raise ValueError("the fusion uses the neural model but got no neural probabilities")
        parts.append(weights.neural_weight * _safe_log(neural_probabilities))
    if weights.uses_lexical:
        if lexical_scores is None:
            raise ValueError("the fusion uses the lexical model but got no lexical scores")
        parts.append(weights.lexical_weight * lexical_scores)
    if not parts:
        raise ValueError("a fusion needs at least one component with a positive weight")
    return np.asarray(sum(parts), dtype=np.float64)


def combine(
    weights: FusionWeights,
    *,
    neural_probabilities: np.ndarray | None,
    lexical_scores: np.ndarray | None,
) -> np.ndarray:
    """Fused probabilities (each row sums to 1)."""
    z = logits(weights, neural_probabilities=neural_probabilities, lexical_scores=lexical_scores)
    return np.exp(_log_softmax(z))


def negative_log_likelihood(z: np.ndarray, y: np.ndarray) -> float:
    """Mean NLL of integer labels `y` under softmax(z)."""
    return float(-_log_softmax(z)[np.arange(len(y)), y].mean())


def fit_weights(
    y: Sequence[int],
    *,
    neural_probabilities: np.ndarray | None = None,
    lexical_scores: np.ndarray | None = None,
) -> FusionWeights:
    """Fit the pool's weights on validation rows (labels `y` as column indices).

    Give one component to calibrate it alone (a temperature), both to fuse them.

    Raises:
        ValueError: no component given, or shapes disagree.
    """
    from scipy.optimize import minimize

    labels = np.asarray(y, dtype=np.int64)
    parts: list[np.ndarray] = []
    names: list[str] = []
    if neural_probabilities is not None:
        parts.append(_safe_log(np.asarray(neural_probabilities, dtype=np.float64)))
        names.append("neural")
    if lexical_scores is not None:
        parts.append(np.asarray(lexical_scores, dtype=np.float64))
        names.append("lexical")
    if not parts:
        raise ValueError("fit_weights needs at least one component")
    if any(p.shape != parts[0].shape or p.shape[0] != len(labels) for p in parts):
        raise ValueError("every component needs one row per label in y, same columns")

    def objective(w: np.ndarray) -> float:
        return negative_log_likelihood(sum(wi * p for wi, p in zip(w, parts, strict=True)), labels)

    result = minimize(
        objective,
        x0=np.ones(len(parts)),
        bounds=[(0.0, MAX_WEIGHT)] * len(parts),
        method="L-BFGS-B",
    )
    fitted = dict(zip(names, (float(v) for v in result.x), strict=True))
    return FusionWeights(
        neural_weight=round(fitted.get("neural", 0.0), 6),
        lexical_weight=round(fitted.get("lexical", 0.0), 6),
    )
