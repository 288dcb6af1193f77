"""The expert's model card (`expert.json`): what a model directory answers and how to prompt it.

Owns the card's schema and its (de)serialisation to text. It does no file I/O: `build`
writes the card and `engine.load_card` reads it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from expert.fields import InputSpec
from expert.prompt import DEFAULT_TEMPLATE, validate_template
from expert.routing_score import RoutingScore
from expert.thresholds import QueueCalibration

CARD_FILENAME = "expert.json"
CARD_FORMAT_VERSION = 1
CLASSIFIER_TEMPLATE = "{ticket}"


class AdapterInfo(BaseModel):
    """The LoRA adapter a card describes (absent for full models).

    Attributes:
        rank: LoRA rank `r`.
        alpha: LoRA scaling numerator.
        target_modules: the projections the adapter modifies.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(ge=1)
    alpha: float
    target_modules: tuple[str, ...]


class TrainingInfo(BaseModel):
    """How the expert was trained: the figures eval reports and the split it must reuse.

    Attributes:
        data_path: the training file as given on the command line.
        data_sha256: digest of that file, so eval can tell it is scoring the same data.
        text_col: the text field (CSV column or JSONL key); "" when the data had none
            (an expert reading fields only).
        label_col: the label field.
        split_seed: seed of the random train/test split.
        test_fraction: share of examples held out (never trained on).
        train_examples: examples trained on.
        test_examples: examples held out.
        epochs: passes over the training part.
        parameters: trainable parameters.
        total_parameters: all parameters of the trained model.
        build_time_s: wall time of training and saving.
        final_loss: mean classification loss of the last epoch.
        config: the remaining build settings (architecture, optimiser), for the record.
        validation_examples: training-part rows held back to fit the fusion, the
            temperature and the threshold, and to choose between candidates (not trained on).
        validation_fraction: their share of the training part.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_path: str
    data_sha256: str
    text_col: str
    label_col: str
    split_seed: int
    test_fraction: float = Field(ge=0.0, lt=1.0)
    train_examples: int
    test_examples: int
    epochs: float
    parameters: int
    total_parameters: int
    build_time_s: float
    final_loss: float
    config: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    validation_examples: int = Field(default=0, ge=0)
    validation_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)


class RoutingCalibration(BaseModel):
    """The triage threshold chosen on validation data for a target precision.

    Attributes:
        target_precision: the share of auto-routed tickets that must be right.
        confidence_threshold: the lowest confidence at which validation precision reached the
            target (tickets below it go to triage); None when no threshold reached it.
        validation_precision: precision of the validation tickets at or above it.
        validation_coverage: share of validation tickets at or above it.
        validation_examples: how many validation tickets it was chosen on.
        queue_thresholds: per-queue thresholds (`expert.thresholds`): a ticket is routed
            when its confidence reaches the threshold of the queue it is predicted for. Every
            label is listed: a queue with few validation tickets has the fallback (the global
            threshold chosen with the same lower bound); a queue absent here uses
            `confidence_threshold`. Empty: one global threshold (cards written before
            per-queue thresholds).
        queue_calibration: how each queue's threshold was chosen (validation counts, the
            queues that fell back to the global threshold), for every label.
        queue_min_predicted: fewer predicted validation tickets than this: the global
            threshold.
        queue_strength: z of the Wilson lower bound on each queue's precision (0: raw).
        queue_validation_coverage, queue_validation_precision: the per-queue thresholds'
            figures on the validation rows, all queues together.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_precision: float = Field(gt=0.0, le=1.0)
    confidence_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    validation_precision: float | None = None
    validation_coverage: float = Field(default=0.0, ge=0.0, le=1.0)
    validation_examples: int = Field(default=0, ge=0)
    queue_thresholds: dict[str, float] = Field(default_factory=dict)
    queue_calibration: dict[str, QueueCalibration] = Field(default_factory=dict)
    queue_min_predicted: int | None = Field(default=None, ge=1)
    queue_strength: float | None = Field(default=None, ge=0.0)
    queue_validation_coverage: float | None = Field(default=None, ge=0.0, le=1.0)
    queue_validation_precision: float | None = None

    @model_validator(mode="after")
    def _queue_thresholds_are_probabilities(self) -> Self:
        bad = sorted(q for q, t in self.queue_thresholds.items() if not 0.0 <= t <= 1.0)
        if bad:
            raise ValueError(f"queue_thresholds must lie in [0, 1]; not: {bad}")
        return self


class ValidationScores(BaseModel):
    """One candidate's figures on the validation rows (never trained on, never the test rows).

    Attributes:
        name: the candidate ("lexical", "smollm2-lora", "smollm2-lora+lexical", ...).
        accuracy, macro_f1, ece: the usual metrics (ECE over 15 bins).
        coverage_at_target: share routable at the card's target precision.
        nll: mean negative log-likelihood of the true label.
        build_time_s: wall time spent building its parts (None: not measured).
        tickets_per_s: its neural part's offline throughput through vLLM (None: no neural
            part, or not measured).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    accuracy: float
    macro_f1: float
    ece: float
    coverage_at_target: float
    nll: float
    build_time_s: float | None = None
    tickets_per_s: float | None = None


class FusionInfo(BaseModel):
    """How the served answer is made from the neural model and the lexical model.

    logits = neural_weight * log p_neural + lexical_weight * lexical decision values;
    probabilities = softmax(logits) (`expert.fusion`). The lexical model's files
    (`lexical.json`, `lexical.safetensors`) sit in the expert folder.

    Attributes:
        neural_weight: weight of the neural log-probabilities (0: not used).
        lexical_weight: weight of the lexical decision values (0: not used).
        validation_examples: rows the weights (and the threshold) were fitted on.
        candidates: every candidate's validation figures, the chosen one included.
        chosen: the name of the candidate this card serves.
        confidence_slope, confidence_bias: the map applied to the pooled top-label
            probability, sigmoid(slope * logit(p) + bias), fitted on the validation rows
            (identity: 1, 0); see `expert.fusion.ConfidenceMap`.
        neural_alone: the neural model's own calibration (a temperature), for reports.
        lexical_alone: the lexical model's own calibration, for reports.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    neural_weight: float = Field(ge=0.0)
    lexical_weight: float = Field(ge=0.0)
    validation_examples: int = Field(ge=0)
    candidates: tuple[ValidationScores, ...] = ()
    chosen: str = ""
    confidence_slope: float = Field(default=1.0, gt=0.0)
    confidence_bias: float = 0.0
    neural_alone: float | None = None
    lexical_alone: float | None = None

    @model_validator(mode="after")
    def _uses_something(self) -> Self:
        if self.neural_weight <= 0 and self.lexical_weight <= 0:
            raise ValueError("a fusion needs a positive weight on at least one component")
        return self


class SimilarInfo(BaseModel):
    """The expert's similar-ticket index (`similar/` in its folder; `expert.similar`).

    Attributes:
        vectors: what the index compares ("lexical": the lexical model's TF-IDF vectors).
        rows: past tickets indexed (training rows and settled tickets, one per ticket id).
        settled_rows: how many of them the desk settled (retrain's feedback rows).
        k: similar tickets a triage record carries by default.
        max_terms: terms kept per indexed ticket (None: all).
        build_time_s: wall time of building the index.
        memory_bytes: what the index holds in memory when served.
        validation_hit_rate: share of validation rows whose queue was among their `k`
            similar tickets' queues (an index of the fit rows only); None: not measured.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    vectors: Literal["lexical"] = "lexical"
    rows: int = Field(ge=0)
    settled_rows: int = Field(default=0, ge=0)
    k: int = Field(ge=1)
    max_terms: int | None = None
    build_time_s: float = Field(default=0.0, ge=0.0)
    memory_bytes: int = Field(default=0, ge=0)
    validation_hit_rate: float | None = Field(default=None, ge=0.0, le=1.0)


class ExpertCard(BaseModel):
    """What a model (or adapter) directory answers, and how it must be prompted.

    Attributes:
        format_version: card format version.
        kind: "generative" (a causal LM that emits one label token) or "classifier" (a
            sequence-classification encoder whose head has one output per label, in `labels`
            order, served by vLLM's pooling runner). Cards without it are generative.
        model_id: a stable name for the expert (logged and exported as a metric label).
        labels: the answers, in a stable order (a classifier's head index order).
        label_tokens: label -> the single token string the model emits for it; empty for a
            classifier.
        prompt_template: instruction template with one `{ticket}` slot; a classifier reads
            the ticket text alone (`{ticket}`).
        max_prompt_tokens: prompts are cut to this many tokens.
        pooling: how a classifier turns token states into the vector its head reads: "cls"
            (BERT's [CLS] token, HF's default) or "mean" (over every token, as
            sentence-transformers models like all-MiniLM-L6-v2 were trained).
        base_model: the base model directory or name; None for a from-scratch model.
        adapter: LoRA details when the directory holds an adapter, else None.
        training: training figures, None when unknown.
        routing: the triage threshold(s) chosen on validation data, None when not calibrated
            (the worker then uses its configured threshold, default 0.5).
        fusion: how the neural answer is combined with the lexical model's (and calibrated);
            None: the neural model's probabilities are served as they are.
        inputs: the structured fields the expert reads beside (or instead of) the ticket
            text (`expert.fields`); cards without it read the text alone.
        created_at: when the card was written.
        similar: the similar-ticket index the folder holds; None: none (older experts).
        routing_score: what the served confidence is when set: the probability that the
            answer is right (`expert.routing_score`), which the thresholds in `routing` were
            chosen on; None: the answered queue's probability (older experts).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = CARD_FORMAT_VERSION
    kind: Literal["generative", "classifier"] = "generative"
    model_id: str = Field(min_length=1, max_length=128)
    labels: tuple[str, ...] = Field(min_length=2)
    label_tokens: dict[str, str] = Field(default_factory=dict)
    prompt_template: str = DEFAULT_TEMPLATE
    max_prompt_tokens: int = Field(ge=8)
    pooling: Literal["cls", "mean"] = "cls"
    base_model: str | None = None
    adapter: AdapterInfo | None = None
    training: TrainingInfo | None = None
    routing: RoutingCalibration | None = None
    fusion: FusionInfo | None = None
    inputs: InputSpec = InputSpec()
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    similar: SimilarInfo | None = None
    routing_score: RoutingScore | None = None

    @model_validator(mode="after")
    def _labels_have_distinct_tokens(self) -> Self:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.kind == "classifier":
            return self._check_classifier()
        missing = [label for label in self.labels if label not in self.label_tokens]
        extra = sorted(set(self.label_tokens) - set(self.labels))
        if missing or extra:
            raise ValueError(
                f"label_tokens must cover labels exactly; missing {missing}, extra {extra}"
            )
        tokens = [self.label_tokens[label] for label in self.labels]
        if len(set(tokens)) != len(tokens) or not all(tokens):
            raise ValueError("label tokens must be distinct and non-empty")
        validate_template(self.prompt_template)
        if self.adapter is not None and self.base_model is None:
            raise ValueError("an adapter card must name its base_model")
        return self

    @model_validator(mode="after")
    def _queue_thresholds_name_labels(self) -> Self:
        if self.routing is not None:
            unknown = sorted(set(self.routing.queue_thresholds) - set(self.labels))
            if unknown:
                raise ValueError(f"routing.queue_thresholds names unknown labels: {unknown}")
        score = self.routing_score
        if score is not None and len(score.queue_shares) != len(self.labels):
            raise ValueError("routing_score.queue_shares needs one share per label")
        if score is not None and score.neighbours and self.similar is None:
            raise ValueError("routing_score reads similar tickets but the card lists no index")
        return self

    def _check_classifier(self) -> Self:
        if self.label_tokens:
            raise ValueError("a classifier card has no label_tokens (its head scores labels)")
        if self.prompt_template != CLASSIFIER_TEMPLATE:
            raise ValueError(f"a classifier reads the ticket alone: template {CLASSIFIER_TEMPLATE}")
        if self.adapter is not None:
            raise ValueError("classifier cards describe full models, not LoRA adapters")
        return self

    @property
    def is_classifier(self) -> bool:
        """Whether the model is a sequence classifier served by vLLM's pooling runner."""
        return self.kind == "classifier"

    @property
    def label_token_list(self) -> list[str]:
        """The label token strings in label order."""
        return [self.label_tokens[label] for label in self.labels]

    def to_json(self) -> str:
        """The card as pretty JSON text."""
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ExpertCard:
        """Parse a card (raises pydantic's ValidationError when invalid)."""
        return cls.model_validate_json(text)
