"""A challenger's data: the champion's original training rows plus the desk's settled tickets,
and the slice of recent feedback both experts are judged on.

Owns reading the original data file with its ticket ids (when it has them) and, for an
expert that reads structured fields, each row's field values (canonical, as the build reads
them), merging it with labeled tickets from the decision log (one row per ticket id: the
human's final queue wins over an original label), and carving the evaluation slice: the most
recent feedback, by a stated share or time window, made only of tickets the champion never
trained on (a ticket id that is in the original data is never judged on). Rows are written
in the form `expert build` reads (`text`, `label`, and one column per field the expert
reads), so the challenger reads what the champion reads. Pure apart from reading and writing
JSONL/CSV files; it trains nothing and decides nothing about promotion.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from expert.fields import InputSpec, render, row_values
from feedback.ticket_fields import column_values
from schemas.email_text import strip_email_noise
from schemas.feedback import LabeledTicket

# Where a row's ticket id may be, in the order tried (JSONL keys, dotted = nested; CSV columns).
ID_FIELDS = ("ticket_id", "id", "ticket.id", "number", "key")
ORIGIN_ORIGINAL = "original"
ORIGIN_FEEDBACK = "feedback"
# The keys a written row uses for itself: a field column cannot share one.
ROW_KEYS = ("text", "label", "ticket_id", "origin", "labeled_at")


class RetrainDataError(ValueError):
    """The data cannot make a fair challenger (missing file, too little feedback)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One labeled training or evaluation row.

    Attributes:
        text: what the expert reads (email noise removed, as the worker does).
        label: the queue.
        ticket_id: the ticket's id, when known.
        origin: "original" (the champion's data) or "feedback" (a human settled it).
        labeled_at: when the human's latest feedback occurred (feedback rows only).
        values: each structured field's canonical values, by its data column (empty for
            an expert that reads text only).
    """

    text: str
    label: str
    ticket_id: str | None = None
    origin: str = ORIGIN_ORIGINAL
    labeled_at: datetime | None = None
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_record(self) -> dict[str, object]:
        """The JSONL record `expert build --data [--fields ...]` reads (`text`, `label`, a
        list of values per field column) and the rest."""
        record: dict[str, object] = {
            "text": self.text,
            "label": self.label,
            "ticket_id": self.ticket_id,
            "origin": self.origin,
            "labeled_at": self.labeled_at.isoformat() if self.labeled_at else None,
        }
        record |= {column: list(found) for column, found in self.values.items()}
        return record

    def expert_input(self, inputs: InputSpec) -> str:
        """What the expert reads for this row, as the build renders it (`text` alone for
        an expert without fields)."""
        values = [self.values.get(column, ()) for column in inputs.columns]
        return render(inputs, text=self.text if inputs.reads_text else "", values=values)

    @property
    def content(self) -> tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]:
        """The text and field values (what makes two rows read alike)."""
        return self.text, tuple(sorted(self.values.items()))


@dataclass(frozen=True, slots=True)
class Holdout:
    """Which recent feedback becomes the evaluation slice.

    Attributes:
        share: the most recent share of the eligible feedback rows (used when `window` is
            None).
        window: the feedback labeled within this time of the newest one, instead.
        min_rows: fewer slice rows than this cannot judge a challenger.
    """

    share: float = 0.2
    window: timedelta | None = None
    min_rows: int = 50

    def __post_init__(self) -> None:
        if not 0.0 < self.share < 1.0:
            raise ValueError("the holdout share must be between 0 and 1")
        if self.window is not None and self.window <= timedelta(0):
            raise ValueError("the holdout window must be positive")
        if self.min_rows < 1:
            raise ValueError("min_rows must be at least 1")


@dataclass(frozen=True, slots=True)
class RetrainData:
    """The challenger's training rows and the evaluation slice, with how they were made.

    Attributes:
        train: original rows (minus those a human relabeled) then older feedback rows.
        evaluation: the most recent feedback on tickets the champion never trained on.
        counts: row counts for the promotion report.
    """

    train: list[Row]
    evaluation: list[Row]
    counts: dict[str, int]


def _field(record: dict[str, object], dotted: str) -> object:
    node: object = record
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _row(
    record: dict[str, object], *, text_col: str, label_col: str, inputs: InputSpec
) -> Row | None:
    label = str(record.get(label_col) or "").strip()
    if not label:
        return None  # expert.dataset skips unlabeled rows too
    text = strip_email_noise(str(record.get(text_col) or "").strip()) if text_col else ""
    ticket_id = next(
        (str(v) for f in ID_FIELDS if (v := _field(record, f)) not in (None, "")), None
    )
    origin = str(record.get("origin") or ORIGIN_ORIGINAL)
    labeled = record.get("labeled_at")
    labeled_at = datetime.fromisoformat(labeled) if isinstance(labeled, str) and labeled else None
    values = {spec.column: row_values(record, spec) for spec in inputs.fields}
    return Row(text, label, ticket_id, origin, labeled_at, values)


def read_original(
    path: Path, *, text_col: str, label_col: str, inputs: InputSpec | None = None
) -> list[Row]:
    """The champion's training rows, read as `expert.dataset.read_examples` reads them
    (unlabeled rows skipped, email noise removed, each field of `inputs` canonical; a
    missing one is blank, as the build read it), with each row's ticket id when the file
    has one (`ID_FIELDS`). An empty `text_col` reads no text (an expert of fields only).

    Raises:
        RetrainDataError: missing file, a line that is not JSON, missing fields.
    """
    path = Path(path)
    if not path.is_file():
        raise RetrainDataError(
            f"{path}: the champion's training data is missing (its card names it); pass"
            " --original-data FILE"
        )
    inputs = inputs or InputSpec()
    rows: list[Row] = []
    for number, record in enumerate(_records(path), start=1):
        if (text_col and text_col not in record) or label_col not in record:
            raise RetrainDataError(
                f"{path}: record {number} has no {text_col!r} or {label_col!r} field"
            )
        row = _row(record, text_col=text_col, label_col=label_col, inputs=inputs)
        if row is not None:
            rows.append(row)
    if not rows:
        raise RetrainDataError(f"{path}: no labeled records")
    return rows


def _records(path: Path) -> Iterable[dict[str, object]]:
    if path.suffix.lower() == ".csv":
        csv.field_size_limit(sys.maxsize)
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            yield from csv.DictReader(handle)
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RetrainDataError(f"{path}:{number}: not JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise RetrainDataError(f"{path}:{number}: not a JSON object")
            yield record


@dataclass(frozen=True, slots=True)
class SettledRows:
    """The settled tickets as rows, and those left out.

    Attributes:
        rows: one row per ticket id (the latest feedback wins), oldest feedback first.
        without_fields: tickets left out because their decision was logged before the log
            kept field values, and the expert reads fields.
    """

    rows: list[Row]
    without_fields: int = 0


def settled_rows(labeled: Iterable[LabeledTicket], *, inputs: InputSpec) -> SettledRows:
    """The settled tickets as rows for an expert reading `inputs`.

    A ticket whose decision carries no field values (logged before the log kept them) is
    left out and counted when the expert reads fields: trained with blank fields it would
    teach the challenger that those tickets have none, which the router never sees; refusing
    the whole retrain instead would stop the loop for as long as such labels are in the log
    (labels are never pruned). The count is in the report, and too few rows left still
    fail the slice's minimum.
    """
    latest: dict[str, LabeledTicket] = {}
    for item in labeled:
        seen = latest.get(item.ticket_id)
        if seen is None or item.labeled_at >= seen.labeled_at:
            latest[item.ticket_id] = item
    ordered = sorted(latest.values(), key=lambda t: (t.labeled_at, t.ticket_id))
    rows, without = [], 0
    for t in ordered:
        if inputs.fields and t.fields is None:
            without += 1
            continue
        values = column_values(t.fields or {}, inputs)
        text = strip_email_noise(t.text)
        rows.append(Row(text, t.label, t.ticket_id, ORIGIN_FEEDBACK, t.labeled_at, values))
    return SettledRows(rows, without)


def feedback_rows(labeled: Iterable[LabeledTicket]) -> list[Row]:
    """One row per ticket id (the latest feedback wins), oldest feedback first (an expert
    that reads text only)."""
    return settled_rows(labeled, inputs=InputSpec()).rows


def _slice_start(eligible: Sequence[Row], holdout: Holdout) -> int:
    """Index of the first slice row in `eligible` (oldest first)."""
    if holdout.window is not None:
        newest = eligible[-1].labeled_at
        assert newest is not None
        cut = newest - holdout.window
        return next(i for i, r in enumerate(eligible) if r.labeled_at and r.labeled_at >= cut)
    return len(eligible) - max(1, round(len(eligible) * holdout.share))


def assemble(
    original: Sequence[Row],
    feedback: Sequence[Row],
    *,
    holdout: Holdout,
    feedback_weight: int = 1,
) -> RetrainData:
    """The challenger's training rows and the evaluation slice.

    Feedback rows are tickets a human settled. A feedback ticket whose id is also in the
    original data replaces that original row (the human's queue wins) and stays out of the
    slice (the champion may have trained on it). Of the other feedback rows, the most recent
    (by `holdout`) are the slice; the older ones join the training rows, each
    `feedback_weight` times (a desk that changed its conventions outweighs thousands of older
    rows filed the old way only when its few hundred new rows count more; the copies may
    then sit on both sides of the builder's own validation split, so its calibration sees
    some rows it trained on; the promotion slice never holds a training row).

    Raises:
        RetrainDataError: the slice would have fewer than `holdout.min_rows` rows.
        ValueError: a feedback weight below 1.
    """
    if feedback_weight < 1:
        raise ValueError("feedback_weight must be at least 1")
    feedback = sorted(feedback, key=lambda r: (r.labeled_at or datetime.min, r.ticket_id or ""))
    feedback_ids = {r.ticket_id for r in feedback if r.ticket_id is not None}
    original_ids = {r.ticket_id for r in original if r.ticket_id is not None}
    kept = [r for r in original if r.ticket_id is None or r.ticket_id not in feedback_ids]
    known = [r for r in feedback if r.ticket_id in original_ids]
    eligible = [r for r in feedback if r.ticket_id not in original_ids]
    if not eligible:
        raise RetrainDataError(
            "no feedback on tickets outside the champion's training data: nothing to judge a"
            " challenger on"
        )
    start = _slice_start(eligible, holdout)
    evaluation, older = eligible[start:], eligible[:start]
    if len(evaluation) < holdout.min_rows:
        raise RetrainDataError(
            f"the evaluation slice has {len(evaluation)} rows of recent feedback, fewer than"
            f" the {holdout.min_rows} needed to judge a challenger ({len(eligible)} feedback"
            " rows in all): wait for more feedback or widen the holdout"
        )
    train = [*kept, *([*known, *older] * feedback_weight)]
    seen = {r.content for r in train}
    return RetrainData(
        train=train,
        evaluation=evaluation,
        counts={
            "original_rows": len(original),
            "original_rows_relabeled_by_feedback": len(original) - len(kept),
            "feedback_rows": len(feedback),
            "feedback_rows_on_original_tickets": len(known),
            "feedback_rows_trained_on": len(known) + len(older),
            "feedback_weight": feedback_weight,
            "training_rows": len(train),
            "evaluation_rows": len(evaluation),
            "evaluation_texts_also_in_training": sum(r.content in seen for r in evaluation),
        },
    )


def write_rows(rows: Iterable[Row], path: Path) -> Path:
    """Write rows as JSONL (`text`, `label`, `ticket_id`, `origin`, `labeled_at`, and a
    list of values per field column)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row.to_record(), ensure_ascii=False) + "\n")
    return path
