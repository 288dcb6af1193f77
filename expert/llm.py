"""A pretrained causal LLM as the expert: a LoRA adapter trained to answer one label token.

This is the reference system's recipe (Mistral-7B + a rank-16 LoRA on q/k/v/o on a GPU), run
here on the CPU with SmolLM2-135M-Instruct from PyPI (`expert.bases`): the instruction prompt
(`expert.prompt`), one label token per queue taken from the base vocabulary, cross-entropy of
that token. The result is served by vLLM either as a LoRA adapter on the base (`LoRARequest`)
or, with `merge`, as a full model with the adapter folded in (no LoRA cost per request).
Owns only this builder; the loop is `expert.training`, shared helpers are `expert.build`.
It never imports vllm and never prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from expert import bases, hardware
from expert.build import (
    BuildError,
    Trained,
    answer_token_loss,
    build_on_train_part,
    encode_prompts,
    parameter_counts,
    pick_label_tokens,
    precision_record,
    write_card,
)
from expert.card import CARD_FILENAME, AdapterInfo, ExpertCard
from expert.dataset import DEFAULT_SPLIT_SEED, DEFAULT_TEST_FRACTION, Examples
from expert.hardware import Requested
from expert.lexical import LEXICAL_DIR
from expert.prompt import DEFAULT_TEMPLATE
from expert.training import ProgressCallback, Schedule, torch_threads, train

log = structlog.get_logger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
DEFAULT_BASE = "smollm2-135m-instruct"


class LlmConfig(BaseModel):
    """Settings of a LoRA build on a pretrained causal LM.

    Attributes:
        base: a catalogue base (`expert.bases`) or a Hugging Face folder.
        lora_rank, lora_alpha: the adapter's rank and scaling (alpha default: 2 x rank).
        max_prompt_tokens: prompts are cut to this many tokens (SmolLM2: ~56 on real tickets).
        merge: fold the adapter into the base and write a full model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str | None = None
    base: str = DEFAULT_BASE
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: int | None = None
    max_prompt_tokens: int = Field(default=96, ge=16, le=2048)
    prompt_template: str = DEFAULT_TEMPLATE
    epochs: float = Field(default=2.0, gt=0)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=5e-4, gt=0)
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    merge: bool = False
    precision: Requested = "auto"
    num_threads: int | None = Field(default=None, ge=1)
    seed: int = 0
    split_seed: int = DEFAULT_SPLIT_SEED
    test_fraction: float = Field(default=DEFAULT_TEST_FRACTION, ge=0.0, lt=1.0)


def _base_card(base_dir: Path) -> ExpertCard | None:
    """The base's own card when the base is itself an expert (its label tokens are reused)."""
    path = base_dir / CARD_FILENAME
    return ExpertCard.from_json(path.read_text("utf-8")) if path.is_file() else None


def _save(model: Any, tokenizer: Any, out_dir: Path, *, merge: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if merge:
        full = model.merge_and_unload()
        full.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    else:
        model.save_pretrained(str(out_dir))


def train_lora(
    rows: Examples,
    out_dir: Path,
    *,
    labels: Sequence[str],
    config: LlmConfig | None = None,
    bases_dir: Path = bases.DEFAULT_BASES_DIR,
    time_budget_s: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> Trained:
    """Train a LoRA adapter (q/k/v/o) on the base to answer each row's label token.

    Raises:
        BuildError: the base vocabulary cannot give every label a single token.
        bases.BaseModelError: the base is unknown or cannot be prepared.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or LlmConfig()
    precision = hardware.choose_precision(config.precision, hardware.detect())
    base_dir = bases.resolve(config.base, bases_dir=bases_dir)
    base_card = _base_card(base_dir)
    template = base_card.prompt_template if base_card else config.prompt_template
    max_prompt_tokens = base_card.max_prompt_tokens if base_card else config.max_prompt_tokens
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    label_tokens = pick_label_tokens(
        tokenizer, labels, preferred=dict(base_card.label_tokens) if base_card else None
    )
    prompts = encode_prompts(
        rows.texts,
        tokenizer=tokenizer,
        template=template,
        max_prompt_tokens=max_prompt_tokens,
        reserved=list(label_tokens.values()),
    )
    token_ids = {
        label: tokenizer.encode(label_tokens[label], add_special_tokens=False)[0]
        for label in labels
    }
    targets = [token_ids[label] for label in rows.labels]
    torch.manual_seed(config.seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    alpha = config.lora_alpha if config.lora_alpha is not None else 2 * config.lora_rank
    model = get_peft_model(
        base,
        LoraConfig(
            r=config.lora_rank,
            lora_alpha=alpha,
            target_modules=list(LORA_TARGETS),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    log.info(
        "lora_build_started",
        base=config.base,
        train_examples=len(rows),
        labels=len(labels),
        precision=precision.dtype,
    )

    def batch_loss(batch: list[int]) -> Any:
        return answer_token_loss(
            model,
            [prompts[i] for i in batch],
            [targets[i] for i in batch],
            pad_id=pad_id,
            bf16_autocast=precision.bf16_autocast,
        )

    with torch_threads(config.num_threads):
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
            schedule=Schedule(warmup_fraction=config.warmup_fraction, shape="linear"),
            seed=config.seed,
            time_budget_s=time_budget_s,
            on_progress=on_progress,
        )
    trainable, total = parameter_counts(model)
    out_dir = Path(out_dir)
    _save(model, tokenizer, out_dir, merge=config.merge)
    base_name = bases.portable_name(base_dir, bases_dir=bases_dir)
    card = ExpertCard(
        model_id=config.model_id or f"lora-{out_dir.resolve().name}",
        labels=tuple(labels),
        label_tokens=label_tokens,
        prompt_template=template,
        max_prompt_tokens=max_prompt_tokens,
        base_model=base_name,
        adapter=None
        if config.merge
        else AdapterInfo(rank=config.lora_rank, alpha=alpha, target_modules=LORA_TARGETS),
    )
    write_card(out_dir, card)
    return Trained(
        card=card,
        parameters=trainable,
        total_parameters=total,
        result=result,
        record={
            "builder": "lora",
            "base_model": base_card.model_id if base_card else base_name,
            "lora_rank": config.lora_rank,
            "lora_alpha": alpha,
            "merged": config.merge,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            **precision_record(config.precision),
            "max_prompt_tokens": max_prompt_tokens,
            "seed": config.seed,
            "mean_prompt_tokens": round(sum(map(len, prompts)) / max(1, len(prompts)), 1),
        },
    )


def build_lora(
    data_path: Path,
    out_dir: Path,
    *,
    text_col: str = "text",
    label_col: str = "label",
    config: LlmConfig | None = None,
    taxonomy_labels: Sequence[str] | None = None,
    bases_dir: Path = bases.DEFAULT_BASES_DIR,
    on_progress: ProgressCallback | None = None,
) -> ExpertCard:
    """Train a LoRA expert on the train part of `data_path` (no lexical model, no fusion).

    Returns:
        The card written to `out_dir/expert.json`.
    """
    config = config or LlmConfig()
    return build_on_train_part(
        data_path,
        out_dir,
        text_col=text_col,
        label_col=label_col,
        split_seed=config.split_seed,
        test_fraction=config.test_fraction,
        taxonomy_labels=taxonomy_labels,
        train=lambda rows, labels: train_lora(
            rows,
            out_dir,
            labels=labels,
            config=config,
            bases_dir=bases_dir,
            on_progress=on_progress,
        ),
    )


def merge_adapter(
    adapter_dir: Path, out_dir: Path, *, bases_dir: Path = bases.DEFAULT_BASES_DIR
) -> ExpertCard:
    """Fold a LoRA expert's adapter into its base: a full model folder vLLM serves without
    LoRA (no per-request adapter cost), with the same card minus the adapter, and the
    lexical model if the expert has one.

    Raises:
        BuildError: `adapter_dir` is not a LoRA expert.
        bases.BaseModelError: its base cannot be found.
    """
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    card = ExpertCard.from_json((Path(adapter_dir) / CARD_FILENAME).read_text("utf-8"))
    if card.adapter is None or card.base_model is None:
        raise BuildError(f"{adapter_dir}: not a LoRA expert (its card names no adapter)")
    base_dir = bases.resolve(card.base_model, bases_dir=bases_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    lexical = Path(adapter_dir) / LEXICAL_DIR
    if lexical.is_dir():
        shutil.copytree(lexical, out_dir / LEXICAL_DIR, dirs_exist_ok=True)
    merged_card = card.model_copy(update={"adapter": None})
    write_card(out_dir, merged_card)
    log.info("lora_merged", adapter_dir=str(adapter_dir), out_dir=str(out_dir))
    return merged_card
