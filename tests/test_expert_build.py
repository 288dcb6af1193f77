"""Building experts: the model directory, its card, label handling, and the LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expert.build import BuildConfig, BuildError, build_expert, choose_labels, pick_label_tokens
from expert.card import ExpertCard
from expert.dataset import Examples, split
from expert.llm import LlmConfig
from expert.serving import load_card
from schemas.taxonomy import Taxonomy
from tests.expert_fixtures import TINY_CONFIG


def test_tiny_expert_dir_is_a_complete_hf_folder_with_a_card(tiny_expert_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "expert.json"):
        assert (tiny_expert_dir / name).is_file(), name
    config = json.loads((tiny_expert_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    card = load_card(tiny_expert_dir)
    assert card.model_id == "tiny-expert"
    assert list(card.labels) == Taxonomy.load().labels
    assert card.base_model is None and card.adapter is None
    assert card.training is not None
    assert card.training.train_examples + card.training.test_examples == 1200
    assert card.training.test_fraction == 0.2 and card.training.split_seed == 0


def test_every_label_is_one_token_of_the_trained_vocabulary(tiny_expert_dir: Path) -> None:
    from transformers import AutoTokenizer

    card = load_card(tiny_expert_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_expert_dir)
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in card.label_token_list]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(ids)


def test_labels_come_from_the_data_unless_a_taxonomy_is_enforced() -> None:
    data = ["GRP_10", "GRP_2", "GRP_0", "GRP_2"]
    assert choose_labels(data, None) == ["GRP_0", "GRP_2", "GRP_10"]
    taxonomy = Taxonomy.load().labels
    assert choose_labels(["hardware", "software"], taxonomy) == taxonomy
    with pytest.raises(BuildError, match="GRP_0"):
        choose_labels(data, taxonomy)
    with pytest.raises(BuildError, match="fewer than two"):
        choose_labels(["hardware"], None)


def test_build_trains_only_on_the_train_part(tmp_path: Path, tiny_corpus_path: Path) -> None:
    """Held-out tickets never reach training: a word only they contain is not in the BPE."""
    rows = [json.loads(line) for line in tiny_corpus_path.read_text().splitlines()[:300]]
    by_index = Examples([str(i) for i in range(len(rows))], ["x"] * len(rows))
    held_out = {int(i) for i in split(by_index, seed=0, test_fraction=0.2).test.texts}
    for i, row in enumerate(rows):
        canary = "wbvkjxqz" if i in held_out else "zqxjkvbw"
        row["text"] = f"{canary} {canary} {row['text']}"
    data = tmp_path / "canary.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "expert"
    config = TINY_CONFIG.model_copy(update={"epochs": 0.1, "model_id": "canary"})
    card = build_expert(data, out, config=config)
    assert card.training is not None
    assert card.training.train_examples == 240 and card.training.test_examples == 60
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert any("zqxj" in token for token in vocab)  # the training canary was learned
    assert not any("wbvk" in token or "jxqz" in token for token in vocab)


def test_pick_label_tokens_prefers_the_base_cards_tokens(tiny_expert_dir: Path) -> None:
    from transformers import AutoTokenizer

    card = load_card(tiny_expert_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_expert_dir)
    assert (
        pick_label_tokens(tokenizer, card.labels, preferred=card.label_tokens) == card.label_tokens
    )
    # Labels the vocabulary has never seen still get distinct single tokens of it.
    picked = pick_label_tokens(tokenizer, ["GRP_0", "GRP_1", "GRP_2"])
    assert len(set(picked.values())) == 3
    assert all(len(tokenizer.encode(t, add_special_tokens=False)) == 1 for t in picked.values())


def test_lora_adapter_is_saved_as_peft_saves_it_with_a_card(
    tiny_lora_dir: Path, tiny_expert_dir: Path
) -> None:
    assert (tiny_lora_dir / "adapter_config.json").is_file()
    assert (tiny_lora_dir / "adapter_model.safetensors").is_file()
    adapter = json.loads((tiny_lora_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 16
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    card = ExpertCard.from_json((tiny_lora_dir / "expert.json").read_text())
    assert card.adapter is not None and card.adapter.rank == 16
    assert card.base_model == str(tiny_expert_dir.resolve())
    assert card.label_tokens == load_card(tiny_expert_dir).label_tokens


def test_build_config_defaults_are_the_small_expert() -> None:
    config = BuildConfig()
    assert (config.hidden_size, config.num_layers, config.vocab_size) == (256, 4, 1024)
    assert LlmConfig().lora_rank == 16  # the reference system's adapter rank
