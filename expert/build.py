"""Training an expert from scratch: a small Llama causal LM answering one label token.

Owns the from-scratch builder (byte-level BPE tokenizer, model shapes, the answer-token loss)
and what every builder shares: the label list, a card's training record, writing a model
directory vLLM loads (config, safetensors, tokenizer files) with its `expert.json` card.
Builders train only on the rows they are given; the `build_*` entry points read a data file
and train on the train part of `expert.dataset.split` (recorded in the card, so `evaluate`
scores the held-out part). The LoRA builder on a pretrained LLM is `expert.llm`, the encoder
classifier `expert.encoder`, the default multi-candidate build `expert.recipe`. It never
imports vllm and never prints: progress goes to the `on_progress` callback.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from expert import hardware
from expert.card import CARD_FILENAME, ExpertCard, TrainingInfo
from expert.dataset import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    Examples,
    file_sha256,
    read_examples,
    split,
)
from expert.hardware import Requested
from expert.prompt import DEFAULT_TEMPLATE, prompt_token_ids
from expert.training import ProgressCallback, Schedule, TrainingResult, torch_threads, train

log = structlog.get_logger(__name__)

PAD_TOKEN = "<pad>"  # noqa: S105 - a vocabulary entry, not a secret
EOS_TOKEN = "<eos>"  # noqa: S105 - a vocabulary entry, not a secret

RecordValue = str | int | float | bool | None


class BuildError(ValueError):
    """The build cannot proceed (bad labels, unusable base model); the message says why."""


class BuildConfig(BaseModel):
    """Shapes and training settings of a from-scratch build.

    The defaults are the ~2.9M-parameter expert (hidden 256, 4 layers, ~1k BPE vocab).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str | None = None
    vocab_size: int = Field(default=1024, ge=300)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_prompt_tokens: int = Field(default=96, ge=16, le=500)
    prompt_template: str = DEFAULT_TEMPLATE
    epochs: float = Field(default=2.0, gt=0)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    lm_loss_weight: float = Field(default=0.0, ge=0.0)
    zero_init_queries: bool = True
    precision: Requested = "auto"
    num_threads: int | None = Field(default=None, ge=1)
    seed: int = 0
    split_seed: int = DEFAULT_SPLIT_SEED
    test_fraction: float = Field(default=DEFAULT_TEST_FRACTION, ge=0.0, lt=1.0)


@dataclass(frozen=True, slots=True)
class Trained:
    """A neural model trained on some rows and written to a folder with its card.

    Attributes:
        card: the card written (its `training` record is the caller's to fill).
        parameters: trainable parameters.
        total_parameters: all parameters of the trained model.
        result: what the training loop did.
        record: build settings for the card's `training.config`.
    """

    card: ExpertCard
    parameters: int
    total_parameters: int
    result: TrainingResult
    record: dict[str, RecordValue] = field(default_factory=dict)


def label_token_for(label: str) -> str:
    """The added-token string that stands for `label` in a from-scratch vocabulary."""
    return "<" + re.sub(r"\s+", "_", label.strip()) + ">"


def natural_key(label: str) -> tuple[Any, ...]:
    """Sort key that orders GRP_2 before GRP_10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", label))


def choose_labels(data_labels: Sequence[str], taxonomy_labels: Sequence[str] | None) -> list[str]:
    """The expert's label list: the taxonomy's (when enforced) or the data's, sorted.

    Raises:
        BuildError: fewer than two labels, or labels the enforced taxonomy does not know.
    """
    present = set(data_labels)
    if taxonomy_labels is None:
        if len(present) < 2:
            raise BuildError(f"the data has fewer than two labels: {sorted(present)}")
        return sorted(present, key=natural_key)
    unknown = sorted(present - set(taxonomy_labels))
    if unknown:
        raise BuildError(f"data labels not in the taxonomy: {unknown}")
    return list(taxonomy_labels)


def precision_record(requested: str) -> dict[str, RecordValue]:
    """What a card records of the number format a build trained in, and on which CPU."""
    capability = hardware.detect()
    precision = hardware.choose_precision(requested, capability)
    return {"precision_requested": requested, "precision": precision.dtype, "cpu": capability.kind}


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters of a torch module."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def training_info(
    *,
    data_path: Path,
    text_col: str,
    label_col: str,
    split_seed: int,
    test_fraction: float,
    train_examples: int,
    test_examples: int,
    trained: Trained,
    build_time_s: float,
    extra: dict[str, RecordValue] | None = None,
) -> TrainingInfo:
    """The card's training record of `trained`, built from `data_path`."""
    result = trained.result
    return TrainingInfo(
        data_path=str(data_path),
        data_sha256=file_sha256(data_path),
        text_col=text_col,
        label_col=label_col,
        split_seed=split_seed,
        test_fraction=test_fraction,
        train_examples=train_examples,
        test_examples=test_examples,
        epochs=result.epochs_done,
        parameters=trained.parameters,
        total_parameters=trained.total_parameters,
        build_time_s=round(build_time_s, 2),
        final_loss=round(result.final_loss, 5),
        config={
            **trained.record,
            "steps": result.steps,
            "planned_steps": result.planned_steps,
            "stopped_by": result.stopped_by,
            **(extra or {}),
        },
    )


def write_card(out_dir: Path, card: ExpertCard) -> None:
    """Write `card` as `out_dir/expert.json` (validated again first: `model_copy` updates
    are not validated, and a card that does not load again must never be written)."""
    text = card.to_json()
    ExpertCard.from_json(text)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / CARD_FILENAME).write_text(text, "utf-8")


def train_tokenizer(texts: Sequence[str], labels: Sequence[str], *, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, with one added token per label.

    Label tokens are added as plain (non-special) added tokens: the structured-output
    grammar only lets the model emit tokens that are not special.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(labels),
        min_frequency=2,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(label_token_for(label), normalized=False) for label in labels])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, model_max_length=512
    )


def encode_prompts(
    texts: Sequence[str],
    *,
    tokenizer: Any,
    template: str,
    max_prompt_tokens: int,
    reserved: Sequence[str],
) -> list[list[int]]:
    """Prompt token ids of every text (the serving path's exact prompts)."""
    return [
        prompt_token_ids(
            text,
            tokenizer=tokenizer,
            template=template,
            max_prompt_tokens=max_prompt_tokens,
            reserved=reserved,
        )
        for text in texts
    ]


def answer_token_loss(
    model: Any,
    prompts: list[list[int]],
    targets: list[int],
    *,
    pad_id: int,
    bf16_autocast: bool,
    lm_loss_weight: float = 0.0,
) -> Any:
    """Cross-entropy of the answer token after each prompt (plus an optional LM loss)."""
    import torch
    import torch.nn.functional as F  # noqa: N812  (torch's own convention)

    width = max(len(p) for p in prompts)
    # Left padding: the answer position is the last column for every row, and RoPE
    # attention is invariant to the constant position shift this causes.
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    keep = 0 if lm_loss_weight else 1  # 0 keeps every position's logits
    # float32 master weights; bfloat16 matmuls only where the CPU runs them natively.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep)
    loss = F.cross_entropy(out.logits[:, -1, :].float(), torch.tensor(targets))
    if lm_loss_weight:
        lm_logits = out.logits[:, :-1, :].float()
        lm_labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = loss + lm_loss_weight * F.cross_entropy(
            lm_logits.reshape(-1, lm_logits.shape[-1]), lm_labels.reshape(-1)
        )
    return loss


def _scratch_model(config: BuildConfig, tokenizer: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
    )
    if config.zero_init_queries:
        # Zero queries make every head start as a causal mean over the prompt: the answer
        # position sees a bag of the ticket's tokens from step one, which skips the long
        # plateau a randomly initialised model spends finding the ticket at all.
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.zero_()
    return model


def train_scratch(
    rows: Examples,
    out_dir: Path,
    *,
    labels: Sequence[str],
    config: BuildConfig | None = None,
    time_budget_s: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> Trained:
    """Train a small Llama from scratch on `rows` and write it (with a card) to `out_dir`.

    Raises:
        BuildError: two labels map to the same token string.
    """
    import torch

    config = config or BuildConfig()
    precision = hardware.choose_precision(config.precision, hardware.detect())
    label_tokens = {label: label_token_for(label) for label in labels}
    if len(set(label_tokens.values())) != len(labels):
        raise BuildError("two labels map to the same token string; rename them")
    tokenizer = train_tokenizer(rows.texts, labels, vocab_size=config.vocab_size)
    prompts = encode_prompts(
        rows.texts,
        tokenizer=tokenizer,
        template=config.prompt_template,
        max_prompt_tokens=config.max_prompt_tokens,
        reserved=list(label_tokens.values()),
    )
    token_ids = {label: tokenizer.convert_tokens_to_ids(label_tokens[label]) for label in labels}
    targets = [token_ids[label] for label in rows.labels]
    model = _scratch_model(config, tokenizer)
    log.info(
        "expert_build_started",
        train_examples=len(rows),
        labels=len(labels),
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=len(tokenizer),
        precision=precision.dtype,
    )

    def batch_loss(batch: list[int]) -> Any:
        return answer_token_loss(
            model,
            [prompts[i] for i in batch],
            [targets[i] for i in batch],
            pad_id=tokenizer.pad_token_id,
            bf16_autocast=precision.bf16_autocast,
            lm_loss_weight=config.lm_loss_weight,
        )

    with torch_threads(config.num_threads):
        torch.manual_seed(config.seed)
        result = train(
            model,
            batch_loss,
            lengths=[len(p) for p in prompts],
            batch_size=config.batch_size,
            epochs=config.epochs,
            optimiser=torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad],
                lr=config.learning_rate,
                weight_decay=config.weight_decay,
            ),
            schedule=Schedule(warmup_fraction=config.warmup_fraction, shape="cosine", floor=0.1),
            seed=config.seed,
            time_budget_s=time_budget_s,
            on_progress=on_progress,
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    card = ExpertCard(
        model_id=config.model_id or f"expert-{out_dir.resolve().name}",
        labels=tuple(labels),
        label_tokens=label_tokens,
        prompt_template=config.prompt_template,
        max_prompt_tokens=config.max_prompt_tokens,
    )
    write_card(out_dir, card)
    trainable, total = parameter_counts(model)
    return Trained(
        card=card,
        parameters=trainable,
        total_parameters=total,
        result=result,
        record={
            "builder": "scratch",
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "lm_loss_weight": config.lm_loss_weight,
            **precision_record(config.precision),
            "max_prompt_tokens": config.max_prompt_tokens,
            "seed": config.seed,
            "vocab_size": len(tokenizer),
            "hidden_size": config.hidden_size,
            "num_layers": config.num_layers,
            "num_heads": config.num_heads,
            "intermediate_size": config.intermediate_size,
            "mean_prompt_tokens": round(sum(map(len, prompts)) / max(1, len(prompts)), 1),
        },
    )


def build_expert(
    data_path: Path,
    out_dir: Path,
    *,
    text_col: str = "text",
    label_col: str = "label",
    config: BuildConfig | None = None,
    taxonomy_labels: Sequence[str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExpertCard:
    """Train a small Llama causal LM from scratch on the train part of `data_path`.

    Args:
        data_path: JSONL or CSV of labeled tickets.
        out_dir: the model directory to write (created; files in it are overwritten).
        text_col: text field.
        label_col: label field.
        config: shapes and training settings.
        taxonomy_labels: when given, the card lists exactly these (data must be a subset).
        on_progress: per-step progress callback.

    Returns:
        The card written to `out_dir/expert.json`.
    """
    config = config or BuildConfig()
    return build_on_train_part(
        data_path,
        out_dir,
        text_col=text_col,
        label_col=label_col,
        split_seed=config.split_seed,
        test_fraction=config.test_fraction,
        taxonomy_labels=taxonomy_labels,
        train=lambda rows, labels: train_scratch(
            rows, out_dir, labels=labels, config=config, on_progress=on_progress
        ),
    )


def build_on_train_part(
    data_path: Path,
    out_dir: Path,
    *,
    text_col: str,
    label_col: str,
    split_seed: int,
    test_fraction: float,
    taxonomy_labels: Sequence[str] | None,
    train: Callable[[Examples, list[str]], Trained],
) -> ExpertCard:
    """One model trained on the train part of `data_path` (no lexical model, no fusion):
    read, split, choose the labels, `train(rows, labels)`, record the split in the card."""
    started = time.perf_counter()
    examples = read_examples(data_path, text_col=text_col, label_col=label_col)
    parts = split(examples, seed=split_seed, test_fraction=test_fraction)
    labels = choose_labels(examples.labels, taxonomy_labels)
    trained = train(parts.train, labels)
    card = trained.card.model_copy(
        update={
            "training": training_info(
                data_path=Path(data_path),
                text_col=text_col,
                label_col=label_col,
                split_seed=split_seed,
                test_fraction=test_fraction,
                train_examples=len(parts.train),
                test_examples=len(parts.test),
                trained=trained,
                build_time_s=time.perf_counter() - started,
            )
        }
    )
    write_card(Path(out_dir), card)
    log.info(
        "expert_build_finished",
        out_dir=str(out_dir),
        final_loss=trained.result.final_loss,
        latency_s=card.training.build_time_s if card.training else None,
    )
    return card


def pick_label_tokens(
    tokenizer: Any, labels: Sequence[str], *, preferred: dict[str, str] | None = None
) -> dict[str, str]:
    """Distinct single-token strings of an existing vocabulary, one per label.

    Prefers `preferred` (a base expert's own label tokens), then the label itself (with and
    without a leading space), then plain word tokens of the vocabulary in id order.

    Raises:
        BuildError: the vocabulary has too few usable single tokens.
    """

    def single(text: str) -> bool:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return len(ids) == 1 and tokenizer.decode(ids) == text

    chosen: dict[str, str] = {}
    used: set[str] = set()
    pending: list[str] = []
    for label in labels:
        candidates = [(preferred or {}).get(label, ""), label, " " + label, " " + label.lower()]
        pick = next((c for c in candidates if c and c not in used and single(c)), None)
        if pick is None:
            pending.append(label)
        else:
            chosen[label] = pick
            used.add(pick)
    if pending:
        special = set(getattr(tokenizer, "all_special_ids", []))
        pool = (
            text
            for token_id in range(len(tokenizer))
            if token_id not in special
            and re.fullmatch(r" [A-Za-z]{3,}", text := tokenizer.decode([token_id]))
        )
        for label in pending:
            pick = next((t for t in pool if t not in used and single(t)), None)
            if pick is None:
                raise BuildError("the base vocabulary has too few single tokens for the labels")
            chosen[label] = pick
            used.add(pick)
    return {label: chosen[label] for label in labels}
