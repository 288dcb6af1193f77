"""Building an expert version's similar-ticket index from its data file.

Owns which rows are indexed (the training part of the recorded split: what the expert was
built from, never the held-out test rows), each row's ticket id (the data's own id field,
else "row-N", N its record number) and settled time (a retrain's `labeled_at`: the desk's
settled tickets), and the card's record of the index. The index itself is `expert.similar`;
the vectors come from the caller (the expert's lexical model). Reads the data file; writes
only through `SimilarTicketIndex.save`.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from expert.card import SimilarInfo
from expert.dataset import DatasetError, Examples, read_examples, split
from expert.similar import (
    DEFAULT_K,
    DEFAULT_MAX_TERMS,
    IndexedTicket,
    SimilarTicketIndex,
    similar_dir,
)

# Where a row's ticket id may be, in the order tried (JSONL keys, dotted = nested; CSV columns).
ID_FIELDS = ("ticket_id", "id", "ticket.id", "number", "key")
SETTLED_FIELD = "labeled_at"


class SimilarSettings(BaseModel):
    """How `expert build` makes the similar-ticket index.

    Attributes:
        enabled: build one (an expert without it serves no similar tickets).
        k: similar tickets a triage record carries (the worker may ask for fewer or more).
        max_terms: terms kept per indexed ticket (None: all); see `expert.similar`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    k: int = Field(default=DEFAULT_K, ge=1, le=50)
    max_terms: int | None = Field(default=DEFAULT_MAX_TERMS, ge=1)


def _field(record: dict[str, Any], dotted: str) -> object:
    node: object = record
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _records(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        csv.field_size_limit(sys.maxsize)
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            yield from csv.DictReader(handle)
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _settled(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def row_identities(path: Path, *, label_col: str) -> list[tuple[str, datetime | None]]:
    """(ticket id, settled time) of each labeled record, in the order `read_examples`
    keeps them (records with an empty label are skipped by both)."""
    out: list[tuple[str, datetime | None]] = []
    for number, record in enumerate(_records(Path(path)), start=1):
        if not str(record.get(label_col) or "").strip():
            continue
        ticket_id = next(
            (str(v) for f in ID_FIELDS if (v := _field(record, f)) not in (None, "")),
            f"row-{number}",
        )
        out.append((ticket_id, _settled(record.get(SETTLED_FIELD))))
    return out


def training_tickets(
    path: Path,
    *,
    text_col: str,
    label_col: str,
    split_seed: int,
    test_fraction: float,
) -> list[IndexedTicket]:
    """The training part of `path` (the recorded split) as tickets to index.

    Raises:
        DatasetError: the file cannot be read, or its ids do not line up with its rows.
    """
    examples = read_examples(path, text_col=text_col, label_col=label_col)
    identities = row_identities(path, label_col=label_col)
    if len(identities) != len(examples):
        raise DatasetError(f"{path}: {len(identities)} ids for {len(examples)} labeled rows")
    # The split draws positions, not texts: split the positions to get the training ones.
    positions = Examples([str(i) for i in range(len(examples))], list(examples.labels))
    train = [
        int(i) for i in split(positions, seed=split_seed, test_fraction=test_fraction).train.texts
    ]
    return [
        IndexedTicket(
            ticket_id=identities[i][0],
            text=examples.texts[i],
            queue=examples.labels[i],
            settled_at=identities[i][1],
        )
        for i in train
    ]


def hit_rate(index: SimilarTicketIndex, vectors: Any, labels: Sequence[str], *, k: int) -> float:
    """Share of queries whose true queue is among their `k` similar tickets' queues."""
    if not labels:
        return 0.0
    found = index.query(vectors, k=k)
    return float(
        np.mean([label in {t.queue for t in ts} for label, ts in zip(labels, found, strict=True)])
    )


def build_index(
    tickets: Sequence[IndexedTicket],
    *,
    vectors_of: Callable[[Sequence[str]], Any],
    labels: Sequence[str],
    settings: SimilarSettings,
) -> SimilarTicketIndex:
    """The index of `tickets`, their vectors from `vectors_of` (the lexical model's)."""
    return SimilarTicketIndex.build(
        tickets,
        vectors_of([t.text for t in tickets]),
        labels=labels,
        max_terms=settings.max_terms,
    )


def validation_neighbours(
    fit: Examples,
    val: Examples,
    *,
    vectors_of: Callable[[Sequence[str]], Any],
    labels: Sequence[str],
    settings: SimilarSettings,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each validation row's `k` most similar fit rows: (label codes, similarities), as the
    served index answers a new ticket (an index of the fit rows only: a validation row never
    finds itself)."""
    fit_index = build_index(
        [
            IndexedTicket(f"fit-{i}", text, label)
            for i, (text, label) in enumerate(zip(fit.texts, fit.labels, strict=True))
        ],
        vectors_of=vectors_of,
        labels=labels,
        settings=settings,
    )
    rows, sims = fit_index.neighbours(vectors_of(val.texts), k=k)
    return fit_index.queue_codes(rows), sims


def write_index(
    out_dir: Path,
    *,
    tickets: Sequence[IndexedTicket],
    served_vectors_of: Callable[[Sequence[str]], Any],
    labels: Sequence[str],
    settings: SimilarSettings,
    validation: tuple[Examples, Examples, Callable[[Sequence[str]], Any]] | None = None,
) -> SimilarInfo:
    """Build the served index of `tickets` into `<out_dir>/similar/` and say what it is.

    Args:
        out_dir: the expert folder.
        tickets: the expert's training rows (`training_tickets`).
        served_vectors_of: the served lexical model's `vectors`.
        labels: the card's labels.
        settings: k and terms per row.
        validation: (fit rows, validation rows, the fit-only lexical model's `vectors`):
            the hit rate is measured on the validation rows with an index of the fit rows.
    """
    index = build_index(tickets, vectors_of=served_vectors_of, labels=labels, settings=settings)
    index.save(similar_dir(out_dir))
    measured = None
    if validation is not None:
        fit, val, fit_vectors_of = validation
        fit_tickets = [
            IndexedTicket(f"fit-{i}", text, label)
            for i, (text, label) in enumerate(zip(fit.texts, fit.labels, strict=True))
        ]
        fit_index = build_index(
            fit_tickets, vectors_of=fit_vectors_of, labels=labels, settings=settings
        )
        measured = round(
            hit_rate(fit_index, fit_vectors_of(val.texts), val.labels, k=settings.k), 4
        )
    return SimilarInfo(
        rows=len(index),
        settled_rows=len({t.ticket_id for t in tickets if t.settled_at is not None}),
        k=settings.k,
        max_terms=settings.max_terms,
        build_time_s=round(index.build_time_s, 3),
        memory_bytes=index.memory_bytes,
        validation_hit_rate=measured,
    )
