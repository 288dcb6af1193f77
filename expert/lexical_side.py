"""The lexical side of a served expert: per-ticket answers of the lexical model and the
similar-ticket index, batched per event-loop turn, and the confidence the routing score
makes of them.

Owns one lookup per batch for both the triage record's similar tickets and the routing
score's neighbours. No vLLM here: `expert.engine` calls it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from expert.card import ExpertCard
from expert.lexical import LexicalModel
from expert.serving import EngineFailure
from expert.similar import SimilarTicketIndex
from schemas.routing import SimilarTicket


@dataclass(frozen=True, slots=True)
class LexicalAnswer:
    """What the lexical side says of one ticket: its decision values (None: the card fuses
    no lexical model), the similar past tickets (empty: no index) and the queues and
    similarities of the neighbours the routing score reads (None: it reads none)."""

    scores: Any
    similar: tuple[SimilarTicket, ...] = ()
    neighbour_codes: Any = None
    neighbour_similarities: Any = None


def lexical_answers(
    lexical: LexicalModel,
    similar_index: SimilarTicketIndex | None,
    texts: Sequence[str],
    *,
    fuses: bool,
    similar_k: int,
    score_neighbours: int,
) -> list[LexicalAnswer]:
    """The lexical side's answer for each of `texts`.

    Args:
        lexical: the served lexical model (its vectors feed the index).
        similar_index: the similar-ticket index (None: none served).
        texts: expert inputs.
        fuses: whether the lexical decision values are fused (else not computed).
        similar_k: similar tickets per triage record (0: none).
        score_neighbours: neighbours the routing score reads (0: none).
    """
    vectors = lexical.vectors(texts)
    scores = lexical.scores(texts, vectors=vectors) if fuses else None
    similar: list[tuple[SimilarTicket, ...]] = [()] * len(texts)
    codes = sims = None
    if similar_index is not None:
        # One lookup serves both the triage record and the routing score.
        rows, sims = similar_index.neighbours(vectors, k=max(similar_k, score_neighbours))
        if similar_k:
            similar = similar_index.tickets(rows[:, :similar_k], sims[:, :similar_k])
        codes = similar_index.queue_codes(rows) if score_neighbours else None
    return [
        LexicalAnswer(
            None if scores is None else scores[i],
            similar[i],
            None if codes is None else codes[i : i + 1],
            None if codes is None or sims is None else sims[i : i + 1],
        )
        for i in range(len(texts))
    ]


def served_confidence(
    card: ExpertCard, probabilities: dict[str, float], label: str, lexical: LexicalAnswer | None
) -> float:
    """The routing score of the answer when the card has one (the probability that `label`
    is right), else `label`'s probability.

    Raises:
        EngineFailure: the score reads similar tickets and none were looked up.
    """
    score = card.routing_score
    if score is None:
        return probabilities[label]
    row = np.asarray([[probabilities[name] for name in card.labels]])
    codes = None if lexical is None else lexical.neighbour_codes
    sims = None if lexical is None else lexical.neighbour_similarities
    if score.neighbours and codes is None:
        raise EngineFailure("the routing score reads similar tickets but none were looked up")
    return float(score.of(row, codes, sims)[0])


class LexicalBatch:
    """Scores the texts of the requests submitted in one event-loop turn together.

    The lexical model costs about 0.1 ms of CPU per ticket in a batch but 1-1.5 ms scored
    one at a time (scikit-learn's per-call validation); the worker submits a poll's tickets
    in one turn, so they are scored in one call while vLLM works on them.
    """

    def __init__(self, answers: Callable[[list[str]], list[LexicalAnswer] | None]) -> None:
        self._answers = answers
        self._pending: list[tuple[str, asyncio.Future[Any]]] = []

    def submit(self, text: str) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((text, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        live = [(text, future) for text, future in pending if not future.done()]
        if not live:
            return
        try:
            rows = self._answers([text for text, _ in live])
            assert rows is not None
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for _, future in live:
                future.set_exception(exc)
            return
        for (_, future), row in zip(live, rows, strict=True):
            future.set_result(row)
