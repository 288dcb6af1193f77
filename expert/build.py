"""Training an expert: a small Llama from scratch, or a LoRA adapter on a base model folder.

Owns the tokenizer training, the model shapes, the training loop and writing a model
directory vLLM loads (config, safetensors, tokenizer files) with its `expert.json` card.
It trains only on the train part of `expert.dataset.split`, and records the split in the card
so `evaluate` scores the held-out part. It never imports vllm and never prints: progress goes
to the `on_progress` callback.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from expert import hardware
from expert.card import CARD_FILENAME, AdapterInfo, ExpertCard, TrainingInfo
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

log = structlog.get_logger(__name__)

ProgressCallback = Callable[[int, int, float], None]
"""Called after each optimiser step with (steps done, total steps, running loss)."""

PAD_TOKEN = "<pad>"  # noqa: S105 - a vocabulary entry, not a secret
EOS_TOKEN = "<eos>"  # noqa: S105 - a vocabulary entry, not a secret
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class BuildError(ValueError):
    """The build cannot proceed (bad labels, unusable base model); the message says why."""


class BuildConfig(BaseModel):
    """Shapes and training settings of a build.

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
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: int | None = None


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


def _encode_examples(
    texts: Sequence[str],
    *,
    tokenizer: Any,
    template: str,
    max_prompt_tokens: int,
    reserved: Sequence[str],
) -> list[list[int]]:
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


def length_batches(
    lengths: Sequence[int], *, batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding), in shuffled order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 32
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lengths.__getitem__)
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def _batch_loss(
    model: Any,
    prompts: list[list[int]],
    targets: list[int],
    *,
    pad_id: int,
    lm_loss_weight: float,
    bf16_autocast: bool,
) -> Any:
    """Cross-entropy of the answer token (plus the optional language-model loss)."""
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


def _train(
    model: Any,
    prompts: list[list[int]],
    targets: list[int],
    *,
    config: BuildConfig,
    pad_id: int,
    lm_loss_weight: float,
    on_progress: ProgressCallback | None,
) -> float:
    """Train `model` to emit `targets[i]` after `prompts[i]`; returns the last epoch's loss."""
    import torch

    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _train_loop(
            model,
            prompts,
            targets,
            config=config,
            pad_id=pad_id,
            lm_loss_weight=lm_loss_weight,
            on_progress=on_progress,
        )
    finally:
        torch.set_num_threads(threads)


def _train_loop(
    model: Any,
    prompts: list[list[int]],
    targets: list[int],
    *,
    config: BuildConfig,
    pad_id: int,
    lm_loss_weight: float,
    on_progress: ProgressCallback | None,
) -> float:
    import torch

    precision = hardware.choose_precision(config.precision, hardware.detect())
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)  # noqa: S311 - reproducible shuffling, not security
    lengths = [len(p) for p in prompts]
    steps_per_epoch = math.ceil(len(prompts) / config.batch_size)
    total_steps = max(1, round(steps_per_epoch * config.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, round(total_steps * config.warmup_fraction))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)

    def batch_loss(batch: list[int]) -> Any:
        return _batch_loss(
            model,
            [prompts[i] for i in batch],
            [targets[i] for i in batch],
            pad_id=pad_id,
            lm_loss_weight=lm_loss_weight,
            bf16_autocast=precision.bf16_autocast,
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


def run_training(
    model: Any,
    batch_loss: Callable[[list[int]], Any],
    *,
    lengths: Sequence[int],
    batch_size: int,
    total_steps: int,
    optimiser: Any,
    scheduler: Any,
    rng: random.Random,
    on_progress: ProgressCallback | None,
) -> float:
    """The optimisation loop both builders share: length-bucketed batches, `total_steps`
    clipped AdamW steps, progress reports; returns the last epoch's mean loss."""
    import torch

    model.train()
    step, epoch_losses = 0, [0.0]
    while step < total_steps:
        epoch_losses = []
        for batch in length_batches(lengths, batch_size=batch_size, rng=rng):
            if step >= total_steps:
                break
            loss = batch_loss(batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for group in optimiser.param_groups for p in group["params"]], 1.0
            )
            optimiser.step()
            scheduler.step()
            step += 1
            epoch_losses.append(loss.item())
            running_loss = sum(epoch_losses) / len(epoch_losses)
            if on_progress is not None:
                on_progress(step, total_steps, running_loss)
            if step % max(1, total_steps // 20) == 0:
                log.info(
                    "training_progressed",
                    step=step,
                    total_steps=total_steps,
                    loss=round(running_loss, 4),
                )
    model.eval()
    return sum(epoch_losses) / max(1, len(epoch_losses))


def precision_record(requested: str) -> dict[str, str | int | float | bool | None]:
    """What a card records of the number format a build trained in, and on which CPU."""
    capability = hardware.detect()
    precision = hardware.choose_precision(requested, capability)
    return {
        "precision_requested": requested,
        "precision": precision.dtype,
        "cpu": capability.kind,
    }


def _training_info(
    *,
    data_path: Path,
    text_col: str,
    label_col: str,
    config: BuildConfig,
    train: Examples,
    test: Examples,
    model: Any,
    started: float,
    final_loss: float,
    extra: dict[str, str | int | float | bool | None],
) -> TrainingInfo:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return TrainingInfo(
        data_path=str(data_path),
        data_sha256=file_sha256(data_path),
        text_col=text_col,
        label_col=label_col,
        split_seed=config.split_seed,
        test_fraction=config.test_fraction,
        train_examples=len(train),
        test_examples=len(test),
        epochs=config.epochs,
        parameters=trainable,
        total_parameters=total,
        build_time_s=round(time.perf_counter() - started, 2),
        final_loss=round(final_loss, 5),
        config={
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "lm_loss_weight": config.lm_loss_weight,
            **precision_record(config.precision),
            "max_prompt_tokens": config.max_prompt_tokens,
            "seed": config.seed,
            **extra,
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
    """Train a small Llama causal LM from scratch and write it to `out_dir`.

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
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = config or BuildConfig()
    started = time.perf_counter()
    examples = read_examples(data_path, text_col=text_col, label_col=label_col)
    parts = split(examples, seed=config.split_seed, test_fraction=config.test_fraction)
    labels = choose_labels(examples.labels, taxonomy_labels)
    label_tokens = {label: label_token_for(label) for label in labels}
    if len(set(label_tokens.values())) != len(labels):
        raise BuildError("two labels map to the same token string; rename them")
    tokenizer = train_tokenizer(parts.train.texts, labels, vocab_size=config.vocab_size)
    reserved = list(label_tokens.values())
    prompts = _encode_examples(
        parts.train.texts,
        tokenizer=tokenizer,
        template=config.prompt_template,
        max_prompt_tokens=config.max_prompt_tokens,
        reserved=reserved,
    )
    token_ids = {label: tokenizer.convert_tokens_to_ids(label_tokens[label]) for label in labels}
    targets = [token_ids[label] for label in parts.train.labels]
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
    log.info(
        "expert_build_started",
        train_examples=len(parts.train),
        labels=len(labels),
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=len(tokenizer),
    )
    final_loss = _train(
        model,
        prompts,
        targets,
        config=config,
        pad_id=tokenizer.pad_token_id,
        lm_loss_weight=config.lm_loss_weight,
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
        training=_training_info(
            data_path=Path(data_path),
            text_col=text_col,
            label_col=label_col,
            config=config,
            train=parts.train,
            test=parts.test,
            model=model,
            started=started,
            final_loss=final_loss,
            extra={
                "vocab_size": len(tokenizer),
                "hidden_size": config.hidden_size,
                "num_layers": config.num_layers,
                "num_heads": config.num_heads,
                "intermediate_size": config.intermediate_size,
                "mean_prompt_tokens": round(sum(map(len, prompts)) / max(1, len(prompts)), 1),
            },
        ),
    )
    (out_dir / CARD_FILENAME).write_text(card.to_json(), "utf-8")
    log.info(
        "expert_build_finished",
        out_dir=str(out_dir),
        final_loss=final_loss,
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


def build_lora(
    data_path: Path,
    out_dir: Path,
    *,
    base_dir: Path,
    text_col: str = "text",
    label_col: str = "label",
    config: BuildConfig | None = None,
    taxonomy_labels: Sequence[str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExpertCard:
    """Train a peft LoRA adapter (q/k/v/o projections) on top of the model in `base_dir`.

    The adapter is saved as peft saves it (adapter_config.json, adapter_model.safetensors),
    with an `expert.json` card naming the base. Labels map to single tokens of the base
    vocabulary (the base expert's own label tokens when it has a card that covers them).

    Raises:
        BuildError: the base directory is not a model, or labels cannot be mapped.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or BuildConfig()
    started = time.perf_counter()
    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise BuildError(f"{base_dir}: no config.json, not a base model directory")
    base_card = None
    if (base_dir / CARD_FILENAME).is_file():
        base_card = ExpertCard.from_json((base_dir / CARD_FILENAME).read_text("utf-8"))
    template = base_card.prompt_template if base_card else config.prompt_template
    max_prompt_tokens = base_card.max_prompt_tokens if base_card else config.max_prompt_tokens

    examples = read_examples(data_path, text_col=text_col, label_col=label_col)
    parts = split(examples, seed=config.split_seed, test_fraction=config.test_fraction)
    labels = choose_labels(examples.labels, taxonomy_labels)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    label_tokens = pick_label_tokens(
        tokenizer, labels, preferred=dict(base_card.label_tokens) if base_card else None
    )
    reserved = list(label_tokens.values())
    prompts = _encode_examples(
        parts.train.texts,
        tokenizer=tokenizer,
        template=template,
        max_prompt_tokens=max_prompt_tokens,
        reserved=reserved,
    )
    token_ids = {
        label: tokenizer.encode(label_tokens[label], add_special_tokens=False)[0]
        for label in labels
    }
    targets = [token_ids[label] for label in parts.train.labels]
    torch.manual_seed(config.seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    alpha = config.lora_alpha if config.lora_alpha is not None else 2 * config.lora_rank
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=alpha,
        target_modules=list(LORA_TARGETS),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    final_loss = _train(
        model,
        prompts,
        targets,
        config=config,
        pad_id=pad_id,
        lm_loss_weight=0.0,
        on_progress=on_progress,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    card = ExpertCard(
        model_id=config.model_id or f"lora-{out_dir.resolve().name}",
        labels=tuple(labels),
        label_tokens=label_tokens,
        prompt_template=template,
        max_prompt_tokens=max_prompt_tokens,
        base_model=str(base_dir.resolve()),
        adapter=AdapterInfo(rank=config.lora_rank, alpha=alpha, target_modules=LORA_TARGETS),
        training=_training_info(
            data_path=Path(data_path),
            text_col=text_col,
            label_col=label_col,
            config=config,
            train=parts.train,
            test=parts.test,
            model=model,
            started=started,
            final_loss=final_loss,
            extra={"base_model": base_card.model_id if base_card else str(base_dir)},
        ),
    )
    (out_dir / CARD_FILENAME).write_text(card.to_json(), "utf-8")
    log.info("lora_build_finished", out_dir=str(out_dir), final_loss=final_loss)
    return card
