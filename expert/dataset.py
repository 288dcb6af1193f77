"""Labeled training data: reading JSONL/CSV files and the train/test split build and eval share.

Owns the one definition of the held-out split (random, seeded, recorded in the model card),
so `build` never trains on what `eval` scores. Reads files; writes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expert.fields import InputSpec, row_input
from schemas.email_text import strip_email_noise

DEFAULT_SPLIT_SEED = 0
DEFAULT_TEST_FRACTION = 0.2


class DatasetError(ValueError):
    """The data file is missing, unreadable, or lacks the text/label fields."""


@dataclass(frozen=True, slots=True)
class Examples:
    """Parallel lists of ticket texts and their labels."""

    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> Examples:
        """The examples at `indices`, in that order."""
        return Examples([self.texts[i] for i in indices], [self.labels[i] for i in indices])


@dataclass(frozen=True, slots=True)
class Split:
    """A train/test split and how it was drawn."""

    train: Examples
    test: Examples
    seed: int
    test_fraction: float


def read_examples(
    path: Path,
    *,
    text_col: str | None = "text",
    label_col: str = "label",
    inputs: InputSpec | None = None,
) -> Examples:
    """Read labeled examples from JSONL (one object per line) or CSV (with a header).

    Rows with an empty label are skipped; an empty text is kept (real exports have them,
    and the reference split counts them). Texts go through the same email cleaning the
    worker applies (`schemas.email_text.strip_email_noise`: quoted replies, signatures,
    disclaimers), so experts train and are scored on what they will be served. With
    `inputs` naming fields, each example's text is the expert input (`expert.fields`:
    the fields' lines, then the text); with `text_col` None the rows have no text (the
    expert reads fields only).

    Raises:
        DatasetError: missing file, bad line, or missing fields.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: data file does not exist")
    inputs = inputs or InputSpec()
    if text_col is None and inputs.reads_text:
        raise DatasetError("no text column: name the fields to read instead (--fields)")
    rows = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
    texts: list[str] = []
    labels: list[str] = []
    for number, row in enumerate(rows, start=1):
        if (text_col is not None and text_col not in row) or label_col not in row:
            raise DatasetError(
                f"{path}: record {number} has no {text_col!r} or {label_col!r} field "
                f"(fields: {sorted(row)}); pass --text-col/--label-col"
            )
        label = str(row[label_col] or "").strip()
        text = "" if text_col is None else strip_email_noise(str(row[text_col] or "").strip())
        if label:
            texts.append(row_input(row, inputs, text=text))
            labels.append(label)
    if not labels:
        raise DatasetError(f"{path}: no labeled records")
    _check_fields_present(path, rows, inputs)
    return Examples(texts, labels)


def _check_fields_present(path: Path, rows: list[dict[str, object]], inputs: InputSpec) -> None:
    """A named field that no row carries is a typo, not a field that is always missing."""
    for column in inputs.columns:
        if not any(column in row for row in rows):
            raise DatasetError(f"{path}: no record has the field {column!r} (--fields)")


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not JSON: {exc.msg}") from exc
    return rows


def _read_csv(path: Path) -> list[dict[str, object]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        return list(csv.DictReader(handle))


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split(
    examples: Examples,
    *,
    seed: int = DEFAULT_SPLIT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> Split:
    """A random, unstratified split, the same as scikit-learn's
    `train_test_split(test_size=test_fraction, random_state=seed)`.

    With `test_fraction=0` everything is training data (no held-out part).
    """
    indices = [int(i) for i in np.random.RandomState(seed).permutation(len(examples))]
    n_test = math.ceil(len(indices) * test_fraction)
    test_idx, train_idx = sorted(indices[:n_test]), sorted(indices[n_test:])
    return Split(examples.subset(train_idx), examples.subset(test_idx), seed, test_fraction)


DEFAULT_VALIDATION_FRACTION = 0.1


def validation_split(
    train: Examples, *, fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = 0
) -> tuple[Examples, Examples]:
    """Carve a stratified validation part out of the training part: (fit, validation).

    Each label keeps about `fraction` of its rows for validation; a label with a single row
    keeps it for fitting. The validation rows are what fusion weights, temperatures,
    thresholds and the choice between candidates are fitted on: never the test rows, never
    rows a component was trained on.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError("the validation fraction must be between 0 and 1")
    rng = np.random.RandomState(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(train.labels):
        by_label.setdefault(label, []).append(i)
    val: list[int] = []
    for label in sorted(by_label):
        rows = by_label[label]
        if len(rows) < 2:
            continue
        take = max(1, round(len(rows) * fraction))
        take = min(take, len(rows) - 1)
        val.extend(int(i) for i in rng.permutation(rows)[:take])
    chosen = set(val)
    fit = [i for i in range(len(train)) if i not in chosen]
    return train.subset(fit), train.subset(sorted(val))
