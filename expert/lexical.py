"""The lexical model: TF-IDF word and character n-grams with a linear classifier.

Owns fitting it (scikit-learn), storing it as data (`lexical.json`: settings and the two
vocabularies; `lexical.safetensors`: idf vectors, class weights and biases) and loading it
without executing anything from the folder (no pickle: an expert folder may come from
elsewhere), and scoring ticket texts. In an expert folder it lives in `lexical/`. Scores are
the classifier's decision values in the card's label order; turning them into probabilities
(alone or fused with the neural model) is `expert.fusion`'s job. It never imports torch or
vllm.

Structured fields (`expert.fields`): an expert that reads fields gets one more block of
features, one-hot per (field, value) seen in training, each row scaled to unit length like
the two TF-IDF blocks. On the ServiceNow incident log (fields only) that block reached 0.531
accuracy where the same values as tokens inside the TF-IDF text reached 0.469 (RESULTS.md).
With no fields the features are exactly the two TF-IDF blocks, as before.

Lexical features are strong on tickets (product names, error codes, hostnames): word 1-2-grams
plus char_wb 2-5-grams with LinearSVC(C=1) reached 0.676 accuracy on the real tickets, the
best linear model measured (RESULTS.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from expert.fields import InputSpec, split_input

# An expert folder keeps its lexical model in this sub-folder: vLLM loads every top-level
# *.safetensors file of a model folder as model weights.
LEXICAL_DIR = "lexical"
LEXICAL_JSON = "lexical.json"
LEXICAL_WEIGHTS = "lexical.safetensors"
LEXICAL_FORMAT_VERSION = 1
# A label the training rows never showed scores this much below the lowest bias of the
# labels they did show: unlikely, but on the same scale (an extreme value would dominate
# the validation log-likelihood the fusion and its temperature are fitted on).
UNSEEN_LABEL_MARGIN = 1.0


class LexicalError(ValueError):
    """The lexical files are missing, unreadable or inconsistent; the message says why."""


class LexicalSettings(BaseModel):
    """How the lexical model is built.

    Attributes:
        word_ngrams: word n-gram range.
        char_ngrams: character n-gram range (within word boundaries, `char_wb`).
        min_df: n-grams seen in fewer training texts are dropped.
        c: LinearSVC regularisation (higher fits the training rows more closely).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    min_df: int = Field(default=2, ge=1)
    c: float = Field(default=1.0, gt=0)


def _field_block(
    rows: Sequence[Sequence[tuple[str, ...]]], columns: Sequence[str], vocabulary: dict[str, int]
) -> Any:
    """One-hot (field, value) features, each row scaled to unit L2 norm; unseen values
    have no feature."""
    from scipy.sparse import csr_matrix

    indices: list[int] = []
    data: list[float] = []
    pointers = [0]
    for values in rows:
        found = sorted(
            {
                vocabulary[term]
                for column, field_values in zip(columns, values, strict=True)
                for value in field_values
                if (term := _field_term(column, value)) in vocabulary
            }
        )
        indices.extend(found)
        data.extend([1.0 / np.sqrt(len(found))] * len(found) if found else [])
        pointers.append(len(indices))
    return csr_matrix(
        (
            np.asarray(data, dtype=np.float64),
            np.asarray(indices, dtype=np.int32),
            np.asarray(pointers, dtype=np.int32),
        ),
        shape=(len(rows), len(vocabulary)),
    )


def _field_term(column: str, value: str) -> str:
    return f"{column}={value}"


def _vectorizers(settings: LexicalSettings, vocabularies: Sequence[Any] = (None, None)) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    word = TfidfVectorizer(
        ngram_range=settings.word_ngrams,
        min_df=settings.min_df,
        sublinear_tf=True,
        vocabulary=vocabularies[0],
    )
    char = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=settings.char_ngrams,
        min_df=settings.min_df,
        sublinear_tf=True,
        vocabulary=vocabularies[1],
    )
    return word, char


class LexicalModel:
    """A fitted lexical model answering the card's labels.

    Attributes:
        labels: the label order of `scores()` columns (the card's).
        settings: how it was built.
        columns: the structured fields it reads (`expert.fields`), in input order.
        reads_text: False when it reads the fields alone.
        train_examples: rows it was fitted on.
        fit_time_s: wall time of the fit.
    """

    def __init__(
        self,
        *,
        labels: Sequence[str],
        settings: LexicalSettings,
        word: Any,
        char: Any,
        weights: np.ndarray,
        biases: np.ndarray,
        train_examples: int,
        fit_time_s: float,
        columns: Sequence[str] = (),
        reads_text: bool = True,
        field_terms: Sequence[str] = (),
    ) -> None:
        self.labels = tuple(labels)
        self.settings = settings
        self._word = word
        self._char = char
        self.columns = tuple(columns)
        self.reads_text = reads_text
        self._field_vocabulary = {term: i for i, term in enumerate(field_terms)}
        self._weights = np.ascontiguousarray(weights, dtype=np.float32)
        self._biases = np.asarray(biases, dtype=np.float32)
        self.train_examples = train_examples
        self.fit_time_s = fit_time_s
        if self._weights.shape[0] != len(self.labels) or self._biases.shape != (len(labels),):
            raise LexicalError("weights and biases must have one row per label")

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        text_labels: Sequence[str],
        *,
        labels: Sequence[str],
        settings: LexicalSettings | None = None,
        inputs: InputSpec | None = None,
    ) -> LexicalModel:
        """Fit on `texts` (labelled `text_labels`); scores come out in `labels` order.

        `texts` are expert inputs: with `inputs` naming fields, each starts with the fields'
        lines (`expert.fields.render`), read as one-hot features.

        Labels absent from `text_labels` get no weights and a bias `UNSEEN_LABEL_MARGIN`
        below the lowest bias of the others.

        Raises:
            LexicalError: fewer than two distinct labels, or labels outside `labels`.
        """
        from sklearn.svm import LinearSVC

        settings = settings or LexicalSettings()
        inputs = inputs or InputSpec()
        present = sorted(set(text_labels))
        unknown = sorted(set(present) - set(labels))
        if unknown:
            raise LexicalError(f"training labels not in the label list: {unknown}")
        if len(present) < 2:
            raise LexicalError("the lexical model needs at least two distinct labels")
        started = time.perf_counter()
        word, char = _vectorizers(settings) if inputs.reads_text else (None, None)
        fields, text_parts = _split_all(texts, inputs.columns, reads_text=inputs.reads_text)
        field_terms = sorted(
            {
                _field_term(column, value)
                for row in fields
                for column, values in zip(inputs.columns, row, strict=True)
                for value in values
            }
        )
        blocks = []
        if word is not None and char is not None:
            blocks += [word.fit_transform(text_parts), char.fit_transform(text_parts)]
        if inputs.fields:
            vocabulary = {term: i for i, term in enumerate(field_terms)}
            blocks.append(_field_block(fields, inputs.columns, vocabulary))
        features = _stack(blocks)
        svm = LinearSVC(C=settings.c, max_iter=5000).fit(features, list(text_labels))
        classes = [str(c) for c in svm.classes_]
        coef = np.atleast_2d(svm.coef_)
        intercept = np.atleast_1d(svm.intercept_)
        if len(classes) == 2:  # binary: one decision value d, scores (-d, d)
            coef = np.vstack([-coef[0], coef[0]])
            intercept = np.array([-intercept[0], intercept[0]])
        weights = np.zeros((len(labels), features.shape[1]), dtype=np.float32)
        biases = np.full(len(labels), intercept.min() - UNSEEN_LABEL_MARGIN, dtype=np.float32)
        index = {label: i for i, label in enumerate(labels)}
        for row, label in enumerate(classes):
            weights[index[label]] = coef[row]
            biases[index[label]] = intercept[row]
        return cls(
            labels=labels,
            settings=settings,
            word=word,
            char=char,
            weights=weights,
            biases=biases,
            train_examples=len(texts),
            fit_time_s=time.perf_counter() - started,
            columns=inputs.columns,
            reads_text=inputs.reads_text,
            field_terms=field_terms,
        )

    @property
    def features(self) -> int:
        """Number of features (word + character n-grams + field values)."""
        return int(self._weights.shape[1])

    def vectors(self, texts: Sequence[str]) -> Any:
        """The feature rows of expert inputs `texts` (scipy CSR, one row per text): the word
        and character TF-IDF parts, each L2-normalised, and the fields' one-hot block; what
        `scores` weighs and the similar-ticket index compares."""
        from scipy.sparse import csr_matrix

        if not texts:
            return csr_matrix((0, self.features), dtype=np.float64)
        fields, text_parts = _split_all(texts, self.columns, reads_text=self.reads_text)
        blocks = []
        if self.reads_text:
            blocks += [self._word.transform(text_parts), self._char.transform(text_parts)]
        if self.columns:
            blocks.append(_field_block(fields, self.columns, self._field_vocabulary))
        return _stack(blocks)

    def scores(self, texts: Sequence[str], *, vectors: Any = None) -> np.ndarray:
        """Decision values, one row per text, one column per label (float64).

        `vectors`: `self.vectors(texts)` when the caller already has them.
        """
        if not texts:
            return np.zeros((0, len(self.labels)))
        features = self.vectors(texts) if vectors is None else vectors
        out = np.asarray(features @ self._weights.T, dtype=np.float64)
        return out + self._biases.astype(np.float64)

    def save(self, folder: Path) -> None:
        """Write `lexical.json` and `lexical.safetensors` into `folder`."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        doc = {
            "format_version": LEXICAL_FORMAT_VERSION,
            "labels": list(self.labels),
            "settings": self.settings.model_dump(mode="json"),
            "train_examples": self.train_examples,
            "fit_time_s": round(self.fit_time_s, 3),
            "word_vocabulary": _terms(self._word.vocabulary_) if self.reads_text else [],
            "char_vocabulary": _terms(self._char.vocabulary_) if self.reads_text else [],
        }
        tensors = {"weights": self._weights, "biases": self._biases}
        if self.reads_text:
            tensors["word_idf"] = np.asarray(self._word.idf_, dtype=np.float64)
            tensors["char_idf"] = np.asarray(self._char.idf_, dtype=np.float64)
        if self.columns:  # absent from text-only models: their files stay as they were
            doc["fields"] = list(self.columns)
            doc["reads_text"] = self.reads_text
            doc["field_vocabulary"] = _terms(self._field_vocabulary)
        (folder / LEXICAL_JSON).write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
        save_file(tensors, str(folder / LEXICAL_WEIGHTS))

    @classmethod
    def load(cls, folder: Path) -> LexicalModel:
        """Read a lexical model written by `save` (data only: JSON and safetensors).

        Raises:
            LexicalError: files missing, unreadable or inconsistent.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        try:
            doc = json.loads((folder / LEXICAL_JSON).read_text("utf-8"))
            tensors = load_file(str(folder / LEXICAL_WEIGHTS))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as exc:
            raise LexicalError(f"{folder}: cannot read the lexical model: {exc}") from exc
        if doc.get("format_version") != LEXICAL_FORMAT_VERSION:
            raise LexicalError(f"{folder}: unknown lexical format {doc.get('format_version')}")
        try:
            settings = LexicalSettings.model_validate(doc["settings"])
            word_terms, char_terms = doc["word_vocabulary"], doc["char_vocabulary"]
            columns = [str(c) for c in doc.get("fields", [])]
            reads_text = bool(doc.get("reads_text", True))
            field_terms = [str(t) for t in doc.get("field_vocabulary", [])]
            word = char = None
            if reads_text:
                vocabularies = [
                    {t: i for i, t in enumerate(terms)} for terms in (word_terms, char_terms)
                ]
                word, char = _vectorizers(settings, vocabularies)
                word.idf_ = tensors["word_idf"]
                char.idf_ = tensors["char_idf"]
            weights, biases = tensors["weights"], tensors["biases"]
        except (KeyError, TypeError, ValueError) as exc:
            raise LexicalError(f"{folder}: inconsistent lexical model: {exc}") from exc
        if weights.shape[1] != len(word_terms) + len(char_terms) + len(field_terms):
            raise LexicalError(f"{folder}: weights do not match the vocabularies")
        return cls(
            labels=doc["labels"],
            settings=settings,
            word=word,
            char=char,
            weights=weights,
            biases=biases,
            train_examples=int(doc.get("train_examples", 0)),
            fit_time_s=float(doc.get("fit_time_s", 0.0)),
            columns=columns,
            reads_text=reads_text,
            field_terms=field_terms,
        )


def _split_all(
    texts: Sequence[str], columns: Sequence[str], *, reads_text: bool
) -> tuple[list[list[tuple[str, ...]]], Sequence[str]]:
    """Each expert input's field values and text; the texts untouched without fields."""
    if not columns:
        return [[] for _ in texts], texts
    parts = [split_input(text, columns=columns, reads_text=reads_text) for text in texts]
    return [values for values, _ in parts], [text for _, text in parts]


def _stack(blocks: Sequence[Any]) -> Any:
    from scipy.sparse import hstack

    return hstack(list(blocks)).tocsr()


def _terms(vocabulary: dict[str, int]) -> list[str]:
    """The vocabulary as a list indexed by feature number."""
    terms = [""] * len(vocabulary)
    for term, index in vocabulary.items():
        terms[int(index)] = term
    return terms


def lexical_dir(expert_dir: Path) -> Path:
    """Where an expert folder keeps its lexical model."""
    return Path(expert_dir) / LEXICAL_DIR


def has_lexical(expert_dir: Path) -> bool:
    """Whether the expert folder holds a lexical model."""
    return (lexical_dir(expert_dir) / LEXICAL_JSON).is_file()
