"""The similar-ticket index of an expert version: past tickets, their final queue, their vectors.

Owns building the index from an expert's training rows (original rows and the tickets the
desk settled), storing it as data in the expert folder (`similar/similar.json`: labels,
ticket ids, snippets, settled times; `similar/similar.safetensors`: the sparse vectors and
queue codes; nothing is executed on load, no pickle), and answering "which past tickets are
most like these" and the similarity-weighted queue vote of those neighbours. Pure numpy and
scipy.sparse; the vectors come from the caller (the expert's lexical TF-IDF vectors,
`expert.lexical.LexicalModel.vectors`), so the index never fits or imports a model.

Similarity is the cosine of the two tickets' vectors. Each vector, indexed or asked about,
keeps only its `max_terms` heaviest terms (then renormalised, so a ticket asked about again
has similarity 1): the lightest terms are the n-grams every ticket shares, which cost most
of the query time and memory and decide little.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from schemas.routing import SNIPPET_MAX_CHARS, SimilarTicket

SIMILAR_DIR = "similar"
SIMILAR_JSON = "similar.json"
SIMILAR_ARRAYS = "similar.safetensors"
SIMILAR_FORMAT_VERSION = 1
DEFAULT_K = 5
DEFAULT_MAX_TERMS = 200


class SimilarIndexError(ValueError):
    """The index files are missing, unreadable or inconsistent; the message says why."""


@dataclass(frozen=True, slots=True)
class IndexedTicket:
    """One past ticket to index.

    Attributes:
        ticket_id: its id, or a row id ("row-12") when the data had none.
        text: what the expert read (only its first `SNIPPET_MAX_CHARS` characters are kept).
        queue: its final queue.
        settled_at: when the desk settled it (None: an original training row).
    """

    ticket_id: str
    text: str
    queue: str
    settled_at: datetime | None = None


def snippet(text: str) -> str:
    """The start of a ticket's text, whitespace collapsed, at most `SNIPPET_MAX_CHARS`."""
    return " ".join(text.split())[:SNIPPET_MAX_CHARS]


def _unique(tickets: Sequence[IndexedTicket]) -> list[int]:
    """Positions of the tickets to keep: the last row of each ticket id (a settled ticket
    listed twice, or weighted by repetition, is one past ticket)."""
    last = {t.ticket_id: i for i, t in enumerate(tickets)}
    return sorted(last.values())


def _prune_rows(matrix: Any, max_terms: int | None) -> Any:
    """Each row's `max_terms` largest entries (None: all), L2-normalised (zero rows stay
    zero)."""
    from scipy.sparse import csr_matrix

    matrix = csr_matrix(matrix, dtype=np.float32)
    rows, cols, values = [], [], []
    for r in range(matrix.shape[0]):
        start, end = matrix.indptr[r], matrix.indptr[r + 1]
        data, idx = matrix.data[start:end], matrix.indices[start:end]
        if max_terms is not None and len(data) > max_terms:
            keep = np.argpartition(-data, max_terms - 1)[:max_terms]
            data, idx = data[keep], idx[keep]
        norm = float(np.sqrt(np.dot(data, data)))
        if norm > 0:
            rows.append(np.full(len(data), r, dtype=np.int32))
            cols.append(idx.astype(np.int32))
            values.append((data / norm).astype(np.float32))
    if not rows:
        return csr_matrix(matrix.shape, dtype=np.float32)
    return csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
        shape=matrix.shape,
        dtype=np.float32,
    )


class SimilarTicketIndex:
    """Past tickets and their vectors, asked for the ones most like new tickets.

    Attributes:
        labels: the expert's queues (the order of `vote` columns).
        vectors_kind: what the vectors are ("lexical": the expert's TF-IDF vectors).
        build_time_s: wall time of the build.
    """

    def __init__(
        self,
        *,
        labels: Sequence[str],
        matrix: Any,
        ticket_ids: Sequence[str],
        snippets: Sequence[str],
        queue_codes: np.ndarray,
        settled_at: Sequence[str | None],
        vectors_kind: str = "lexical",
        build_time_s: float = 0.0,
        max_terms: int | None = DEFAULT_MAX_TERMS,
    ) -> None:
        from scipy.sparse import csr_matrix

        self.labels = tuple(labels)
        self.max_terms = max_terms
        self.vectors_kind = vectors_kind
        self.build_time_s = build_time_s
        self._matrix = csr_matrix(matrix, dtype=np.float32)
        # Rows are looked up term by term: the transposed matrix is the inverted index.
        self._by_term = self._matrix.T.tocsr()
        self._ids = list(ticket_ids)
        self._snippets = list(snippets)
        self._codes = np.asarray(queue_codes, dtype=np.int32)
        self._settled_raw = list(settled_at)
        self._settled = [datetime.fromisoformat(s) if s else None for s in settled_at]
        n = self._matrix.shape[0]
        lengths = {len(self._ids), len(self._snippets), len(self._codes), len(self._settled)}
        if lengths != {n}:
            raise SimilarIndexError("the index's rows and its ticket records differ in number")
        if n and (self._codes.min() < 0 or self._codes.max() >= len(self.labels)):
            raise SimilarIndexError("a queue code is outside the label list")

    def __len__(self) -> int:
        return int(self._matrix.shape[0])

    @property
    def dimensions(self) -> int:
        """Length of the vectors the index compares."""
        return int(self._matrix.shape[1])

    @property
    def memory_bytes(self) -> int:
        """What the index holds in memory: both sparse layouts and the ticket records."""
        arrays = sum(
            a.nbytes for m in (self._matrix, self._by_term) for a in (m.data, m.indices, m.indptr)
        )
        records = sum(len(s.encode()) for s in (*self._ids, *self._snippets)) + self._codes.nbytes
        return int(arrays + records)

    @classmethod
    def build(
        cls,
        tickets: Sequence[IndexedTicket],
        vectors: Any,
        *,
        labels: Sequence[str],
        max_terms: int | None = DEFAULT_MAX_TERMS,
        vectors_kind: str = "lexical",
    ) -> SimilarTicketIndex:
        """Index `tickets` (row i of `vectors` is ticket i).

        Raises:
            SimilarIndexError: a queue outside `labels`, or rows and tickets differ in number.
        """
        started = time.perf_counter()
        if vectors.shape[0] != len(tickets):
            raise SimilarIndexError(f"{len(tickets)} tickets but {vectors.shape[0]} vectors")
        index = {label: i for i, label in enumerate(labels)}
        unknown = sorted({t.queue for t in tickets} - set(index))
        if unknown:
            raise SimilarIndexError(f"queues not in the label list: {unknown}")
        keep = _unique(tickets)
        kept = [tickets[i] for i in keep]
        matrix = _prune_rows(vectors[keep] if len(keep) else vectors[:0], max_terms)
        return cls(
            labels=labels,
            matrix=matrix,
            ticket_ids=[t.ticket_id for t in kept],
            snippets=[snippet(t.text) for t in kept],
            queue_codes=np.asarray([index[t.queue] for t in kept], dtype=np.int32),
            settled_at=[t.settled_at.isoformat() if t.settled_at else None for t in kept],
            vectors_kind=vectors_kind,
            build_time_s=time.perf_counter() - started,
            max_terms=max_terms,
        )

    def neighbours(
        self, vectors: Any, *, k: int = DEFAULT_K, exclude: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most similar indexed rows of each query, most similar first.

        Args:
            vectors: query vectors (any scale; CSR, one row per query).
            k: neighbours per query (fewer when the index is smaller).
            exclude: per query, an indexed row it must not find (its own row, when the
                queries are indexed tickets), or -1.

        Returns:
            (rows, similarities), both shaped (queries, k'); rows with similarity 0 (no
            shared term) are -1.
        """
        n_queries = vectors.shape[0]
        k = min(k, len(self))
        if n_queries == 0 or k <= 0:
            return np.zeros((n_queries, 0), dtype=np.int64), np.zeros((n_queries, 0))
        queries = _prune_rows(vectors, self.max_terms)
        sims = np.asarray((queries @ self._by_term).todense(), dtype=np.float32)
        if exclude is not None:
            rows = np.arange(n_queries)
            own = np.asarray(exclude)
            sims[rows[own >= 0], own[own >= 0]] = 0.0
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        # Most similar first; equal similarities in index order (older rows first).
        order = np.lexsort((top, -top_sims), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        top_sims = np.clip(np.take_along_axis(top_sims, order, axis=1), 0.0, 1.0)
        top = np.where(top_sims > 0, top, -1)
        return top, top_sims

    def query(self, vectors: Any, *, k: int = DEFAULT_K) -> list[tuple[SimilarTicket, ...]]:
        """The `k` past tickets most like each query, most similar first (tickets sharing
        no term with the query are left out)."""
        return self.tickets(*self.neighbours(vectors, k=k))

    def tickets(self, rows: np.ndarray, sims: np.ndarray) -> list[tuple[SimilarTicket, ...]]:
        """The past tickets of `neighbours`' output (rows -1 left out)."""
        return [
            tuple(self._ticket(int(r), float(s)) for r, s in zip(rr, ss, strict=True) if r >= 0)
            for rr, ss in zip(rows, sims, strict=True)
        ]

    def queue_codes(self, rows: np.ndarray) -> np.ndarray:
        """The label index of each row of `neighbours`' output (-1 stays -1)."""
        rows = np.asarray(rows)
        return np.where(rows >= 0, self._codes[np.maximum(rows, 0)], -1)

    def _ticket(self, row: int, similarity: float) -> SimilarTicket:
        return SimilarTicket(
            ticket_id=self._ids[row],
            snippet=self._snippets[row],
            queue=self.labels[self._codes[row]],
            similarity=round(similarity, 4),
            settled_at=self._settled[row],
        )

    def vote(
        self, vectors: Any, *, k: int = DEFAULT_K, exclude: Sequence[int] | None = None
    ) -> np.ndarray:
        """Each query's neighbours' queues, weighted by similarity: (queries, labels), rows
        summing to 1 (all zeros when no neighbour shares a term)."""
        rows, sims = self.neighbours(vectors, k=k, exclude=exclude)
        out = np.zeros((rows.shape[0], len(self.labels)), dtype=np.float64)
        for q in range(rows.shape[0]):
            found = rows[q] >= 0
            np.add.at(out[q], self._codes[rows[q][found]], sims[q][found])
        totals = out.sum(axis=1, keepdims=True)
        np.divide(out, totals, out=out, where=totals > 0)
        return out

    def save(self, folder: Path) -> None:
        """Write `similar.json` and `similar.safetensors` into `folder`."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        doc = {
            "format_version": SIMILAR_FORMAT_VERSION,
            "vectors": self.vectors_kind,
            "labels": list(self.labels),
            "dimensions": self.dimensions,
            "build_time_s": round(self.build_time_s, 3),
            "max_terms": self.max_terms,
            "ticket_ids": self._ids,
            "snippets": self._snippets,
            "settled_at": self._settled_raw,
        }
        (folder / SIMILAR_JSON).write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
        save_file(
            {
                "data": self._matrix.data,
                "indices": self._matrix.indices.astype(np.int32),
                "indptr": self._matrix.indptr.astype(np.int64),
                "queue_codes": self._codes,
            },
            str(folder / SIMILAR_ARRAYS),
        )

    @classmethod
    def load(cls, folder: Path) -> SimilarTicketIndex:
        """Read an index written by `save` (data only: JSON and safetensors).

        Raises:
            SimilarIndexError: files missing, unreadable or inconsistent.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        from scipy.sparse import csr_matrix

        folder = Path(folder)
        try:
            doc = json.loads((folder / SIMILAR_JSON).read_text("utf-8"))
            arrays = load_file(str(folder / SIMILAR_ARRAYS))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as exc:
            raise SimilarIndexError(f"{folder}: cannot read the index: {exc}") from exc
        if doc.get("format_version") != SIMILAR_FORMAT_VERSION:
            raise SimilarIndexError(f"{folder}: unknown index format {doc.get('format_version')}")
        try:
            ids = doc["ticket_ids"]
            matrix = csr_matrix(
                (arrays["data"], arrays["indices"], arrays["indptr"]),
                shape=(len(ids), int(doc["dimensions"])),
            )
            return cls(
                labels=doc["labels"],
                matrix=matrix,
                ticket_ids=ids,
                snippets=doc["snippets"],
                queue_codes=arrays["queue_codes"],
                settled_at=doc["settled_at"],
                vectors_kind=str(doc.get("vectors", "lexical")),
                build_time_s=float(doc.get("build_time_s", 0.0)),
                max_terms=doc.get("max_terms"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SimilarIndexError(f"{folder}: inconsistent similar-ticket index: {exc}") from exc


def similar_dir(expert_dir: Path) -> Path:
    """Where an expert folder keeps its similar-ticket index."""
    return Path(expert_dir) / SIMILAR_DIR


def has_similar(expert_dir: Path) -> bool:
    """Whether the expert folder holds a similar-ticket index."""
    return (similar_dir(expert_dir) / SIMILAR_JSON).is_file()
