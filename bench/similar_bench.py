"""`ticket-router bench similar`: what the similar-ticket index finds and what it costs.

Prints figures, asserts nothing. On a labeled data file and the split an expert build
records (seed, test fraction), it fits the lexical model on the training part as `expert
build` does, indexes the training part (`expert.similar`), and on the held-out rows reports
the share whose queue is among their k similar tickets' queues (hit rate @k), the nearest
ticket's queue and the similarity-weighted vote as classifiers, the lexical model's own
accuracy and top-3 accuracy (the served expert's are `expert eval`'s), the CPU time per ticket of
finding them (process time, in batches as the engine does, and one at a time), the index's
memory and build time, with the processor kind and the load average beside every time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from expert import hardware
from expert.dataset import read_examples, split
from expert.lexical import LexicalModel
from expert.similar import DEFAULT_K, IndexedTicket, SimilarTicketIndex

BATCH = 32  # about one poll's tickets: the engine looks them up in one call per loop turn


def measure(
    data: Path,
    *,
    text_col: str,
    label_col: str,
    k: int,
    max_terms: int | None,
    split_seed: int = 0,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    """The figures of one index built on `data`'s training part, scored on its test part."""
    examples = read_examples(data, text_col=text_col, label_col=label_col)
    parts = split(examples, seed=split_seed, test_fraction=test_fraction)
    labels = sorted(set(examples.labels))
    lexical = LexicalModel.fit(parts.train.texts, parts.train.labels, labels=labels)
    tickets = [
        IndexedTicket(f"row-{i}", text, label)
        for i, (text, label) in enumerate(zip(parts.train.texts, parts.train.labels, strict=True))
    ]
    index = SimilarTicketIndex.build(
        tickets, lexical.vectors(parts.train.texts), labels=labels, max_terms=max_terms
    )
    queries = lexical.vectors(parts.test.texts)
    truth = np.asarray([labels.index(label) for label in parts.test.labels])
    started = time.process_time()
    found = [
        ticket
        for start in range(0, queries.shape[0], BATCH)
        for ticket in index.query(queries[start : start + BATCH], k=k)
    ]
    batch_cpu_s = time.process_time() - started
    singles = min(200, queries.shape[0])
    started = time.process_time()
    for i in range(singles):
        index.query(queries[i : i + 1], k=k)
    single_cpu_s = time.process_time() - started
    started = time.process_time()
    lexical.vectors(parts.test.texts)
    vectors_cpu_s = time.process_time() - started
    hits = [
        label in {t.queue for t in ts} for label, ts in zip(parts.test.labels, found, strict=True)
    ]
    nearest = [
        bool(ts) and ts[0].queue == label
        for label, ts in zip(parts.test.labels, found, strict=True)
    ]
    vote = index.vote(queries, k=k).argmax(axis=1)
    # The lexical model's own best three, for the top-3 figure of an expert without vLLM.
    ranked = np.argsort(-lexical.scores(parts.test.texts, vectors=queries), axis=1)[:, :3]
    n = max(1, len(truth))
    return {
        "data": str(data),
        "indexed_rows": len(index),
        "test_rows": len(truth),
        "k": k,
        "max_terms": max_terms,
        "hit_rate_at_k": round(sum(hits) / n, 4),
        "nearest_ticket_accuracy": round(sum(nearest) / n, 4),
        "vote_accuracy": round(float((vote == truth).mean()), 4),
        "lexical_accuracy": round(float((ranked[:, 0] == truth).mean()), 4),
        "lexical_top3_accuracy": round(float((ranked == truth[:, None]).any(axis=1).mean()), 4),
        "query_cpu_ms_per_ticket_batched": round(1000 * batch_cpu_s / n, 3),
        "query_cpu_ms_per_ticket_alone": round(1000 * single_cpu_s / max(1, singles), 3),
        "vectors_cpu_ms_per_ticket_batched": round(1000 * vectors_cpu_s / n, 3),
        "index_memory_mib": round(index.memory_bytes / 2**20, 2),
        "index_build_s": round(index.build_time_s, 3),
        "lexical_fit_s": round(lexical.fit_time_s, 1),
        "cpu": hardware.detect().kind,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def bench_similar(
    data: Annotated[Path, typer.Option("--data", help="Labeled JSONL or CSV.")],
    text_col: Annotated[str, typer.Option("--text-col")] = "text",
    label_col: Annotated[str, typer.Option("--label-col")] = "label",
    k: Annotated[int, typer.Option("--k", min=1, help="Similar tickets per query.")] = DEFAULT_K,
    max_terms: Annotated[
        str,
        typer.Option(
            "--max-terms",
            help="Terms kept per indexed row, comma-separated "
            "values to compare ('all': every term).",
        ),
    ] = "200",
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the figures (JSON).")
    ] = None,
) -> None:
    """Similar-ticket hit rate, CPU per ticket, memory and build time of the index."""
    rows = []
    for value in max_terms.split(","):
        terms = None if value.strip() == "all" else int(value)
        figures = measure(data, text_col=text_col, label_col=label_col, k=k, max_terms=terms)
        rows.append(figures)
        typer.echo(json.dumps(figures))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2) + "\n", "utf-8")
