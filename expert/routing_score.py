"""The routing score: the probability that the expert's answer for a ticket is right.

The triage thresholds read one number per ticket. The fused probability of the answered
queue is one such number, but it only knows the models' view of this ticket. Whether the
answer is right also shows in things the probability does not see: how far the answer is
ahead of the runner-up, how big the answered queue is, and whether the most similar past
tickets (the similar-ticket index) went to the answered queue. On the real 74-group tickets
a selective score built on these routed more tickets at 95% precision than the fused
probability did (expert/RESULTS.md).

Owns the score's features, its fitting on validation rows (a logistic regression, cross-
fitted so the thresholds are chosen on scores of rows the score was not fitted on) and its
evaluation at serve time in pure numpy. The fitted score is part of the card: a few dozen
numbers, no pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Features, in column order. Neighbour features are 0 when the expert has no index.
ANSWER_FEATURES = ("top_probability", "margin", "entropy", "log_queue_share")
NEIGHBOUR_FEATURES = (
    "nearest_similarity",
    "nearest_agrees",
    "weighted_agreement",
    "share_agreeing",
)
DEFAULT_NEIGHBOURS = 10
DEFAULT_FOLDS = 5
# L2 strength of the logistic regression (sklearn's C): validation rows are few (hundreds),
# the features are eight; a mild penalty keeps the coefficients steady across folds.
DEFAULT_C = 1.0
_MIN_SHARE = 1e-6


class RoutingScore(BaseModel):
    """A fitted routing score (logistic regression over standardised features).

    Attributes:
        features: the feature names, in column order.
        neighbours: similar tickets read per ticket (0: no neighbour features).
        means, scales: standardisation of each feature.
        coefficients, intercept: the logistic regression.
        queue_shares: each label's share of the training rows (for `log_queue_share`), in
            the card's label order.
        validation_examples: rows it was fitted on.
        folds: the cross-fitting folds the thresholds were chosen with.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: tuple[str, ...]
    neighbours: int = Field(ge=0)
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    queue_shares: tuple[float, ...]
    validation_examples: int = Field(ge=0)
    folds: int = Field(ge=2)

    @model_validator(mode="after")
    def _shapes_agree(self) -> RoutingScore:
        n = len(self.features)
        if not (len(self.means) == len(self.scales) == len(self.coefficients) == n):
            raise ValueError("means, scales and coefficients need one value per feature")
        if self.features != feature_names(self.neighbours):
            raise ValueError(f"features must be {feature_names(self.neighbours)}")
        if any(s <= 0 for s in self.scales):
            raise ValueError("scales must be positive")
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """P(answer right) for each row of `features` (`answer_features` output)."""
        z = (np.asarray(features, dtype=np.float64) - np.asarray(self.means)) / np.asarray(
            self.scales
        )
        logits = z @ np.asarray(self.coefficients) + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def of(
        self,
        probabilities: np.ndarray,
        neighbour_codes: np.ndarray | None = None,
        neighbour_similarities: np.ndarray | None = None,
    ) -> np.ndarray:
        """The score of each ticket from its served probabilities and neighbours."""
        return self.score(
            answer_features(
                probabilities,
                queue_shares=np.asarray(self.queue_shares),
                neighbour_codes=neighbour_codes,
                neighbour_similarities=neighbour_similarities,
                neighbours=self.neighbours,
            )
        )


def feature_names(neighbours: int) -> tuple[str, ...]:
    """The feature columns of a score reading `neighbours` similar tickets."""
    return ANSWER_FEATURES + (NEIGHBOUR_FEATURES if neighbours > 0 else ())


def queue_shares(y: Sequence[int], n_labels: int) -> np.ndarray:
    """Each label's share of the integer labels `y`."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_labels).astype(np.float64)
    return counts / max(1.0, counts.sum())


def answer_features(
    probabilities: np.ndarray,
    *,
    queue_shares: np.ndarray,
    neighbour_codes: np.ndarray | None = None,
    neighbour_similarities: np.ndarray | None = None,
    neighbours: int = 0,
) -> np.ndarray:
    """The features of each ticket's answer (rows: tickets).

    Args:
        probabilities: served probabilities, tickets x labels.
        queue_shares: each label's share of the training rows.
        neighbour_codes: label index of each ticket's most similar past tickets, most
            similar first, -1 where there is none (tickets x at least `neighbours`).
        neighbour_similarities: their similarities, same shape.
        neighbours: how many neighbours to read (0: no neighbour features).

    Raises:
        ValueError: neighbours are asked for but not given, or shapes disagree.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    ordered = np.sort(p, axis=1)
    top = ordered[:, -1]
    margin = top - (ordered[:, -2] if p.shape[1] > 1 else 0.0)
    entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)
    answer = p.argmax(axis=1)
    share = np.log(np.maximum(np.asarray(queue_shares)[answer], _MIN_SHARE))
    columns = [top, margin, entropy, share]
    if neighbours > 0:
        if neighbour_codes is None or neighbour_similarities is None:
            raise ValueError("this score reads similar tickets: give their codes and similarities")
        codes = np.asarray(neighbour_codes)[:, :neighbours]
        sims = np.asarray(neighbour_similarities, dtype=np.float64)[:, :neighbours]
        if codes.shape != sims.shape or codes.shape[0] != p.shape[0]:
            raise ValueError("neighbour codes and similarities need one row per ticket")
        found = codes >= 0
        sims = np.where(found, sims, 0.0)
        agree = found & (codes == answer[:, None])
        nearest = sims[:, 0] if sims.shape[1] else np.zeros(len(p))
        nearest_agrees = agree[:, 0].astype(np.float64) if sims.shape[1] else np.zeros(len(p))
        total = sims.sum(axis=1)
        weighted = np.divide(
            (sims * agree).sum(axis=1), total, out=np.zeros(len(p)), where=total > 0
        )
        share_agreeing = agree.sum(axis=1) / max(1, neighbours)
        columns += [nearest, nearest_agrees, weighted, share_agreeing]
    return np.column_stack(columns)


@dataclass(frozen=True, slots=True)
class FittedScore:
    """A fitted routing score and the cross-fitted scores of the rows it was fitted on."""

    score: RoutingScore
    cross_fitted: np.ndarray


def fit_routing_score(
    probabilities: np.ndarray,
    y: Sequence[int],
    *,
    queue_shares: np.ndarray,
    neighbour_codes: np.ndarray | None = None,
    neighbour_similarities: np.ndarray | None = None,
    neighbours: int = 0,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    c: float = DEFAULT_C,
) -> FittedScore | None:
    """Fit the score on validation rows; None when they cannot teach it (too few rows, or
    the answers all right or all wrong).

    The returned `cross_fitted` scores come from `folds` fits that each left the row out:
    thresholds chosen on them are not chosen on rows the score has seen.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    features = answer_features(
        probabilities,
        queue_shares=queue_shares,
        neighbour_codes=neighbour_codes,
        neighbour_similarities=neighbour_similarities,
        neighbours=neighbours,
    )
    right = np.asarray(probabilities).argmax(axis=1) == np.asarray(y)
    if min(int(right.sum()), int((~right).sum())) < folds:
        return None

    def fit(rows: np.ndarray) -> RoutingScore:
        x = features[rows]
        means = x.mean(axis=0)
        scales = x.std(axis=0)
        scales = np.where(scales > 1e-9, scales, 1.0)
        model = LogisticRegression(C=c, max_iter=5000)
        model.fit((x - means) / scales, right[rows])
        return RoutingScore(
            features=feature_names(neighbours),
            neighbours=neighbours,
            means=tuple(round(float(v), 8) for v in means),
            scales=tuple(round(float(v), 8) for v in scales),
            coefficients=tuple(round(float(v), 8) for v in model.coef_[0]),
            intercept=round(float(model.intercept_[0]), 8),
            queue_shares=tuple(round(float(v), 8) for v in queue_shares),
            validation_examples=len(rows),
            folds=folds,
        )

    cross_fitted = np.zeros(len(right))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_rows, held_rows in splitter.split(features, right):
        cross_fitted[held_rows] = fit(train_rows).score(features[held_rows])
    return FittedScore(score=fit(np.arange(len(right))), cross_fitted=cross_fitted)
