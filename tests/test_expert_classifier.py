"""The classifier expert: a fine-tuned encoder served by real vLLM's pooling runner."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from expert.card import CLASSIFIER_TEMPLATE, ExpertCard
from expert.cli import app
from expert.encoder import class_weights, classifier_logits, packaged_encoder_dir
from expert.engine import BatchExpert, StreamingExpert
from expert.evaluate import evaluate
from expert.prompt import classifier_token_ids
from expert.serving import ExpertLoadError, LabelMismatchError, Prediction, check_labels, load_card
from loadgen.corpus import generate
from schemas.taxonomy import Taxonomy
from tests.expert_fixtures import tiny_engine_config

TICKETS = generate(60, seed=123)
TEXTS = [t.ticket.text() for t in TICKETS]


def _assert_valid(prediction: Prediction, labels: tuple[str, ...]) -> None:
    assert prediction.label in labels
    assert set(prediction.probabilities) == set(labels)
    assert abs(sum(prediction.probabilities.values()) - 1.0) < 1e-6
    assert prediction.confidence == max(prediction.probabilities.values())
    assert prediction.confidence == prediction.probabilities[prediction.label]
    assert prediction.latency_s > 0


def test_packaged_encoder_is_a_complete_bert_folder() -> None:
    base = packaged_encoder_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        assert (base / name).is_file(), name
    assert json.loads((base / "config.json").read_text())["model_type"] == "bert"


def test_classifier_dir_is_a_sequence_classifier_with_a_card(tiny_classifier_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "expert.json"):
        assert (tiny_classifier_dir / name).is_file(), name
    config = json.loads((tiny_classifier_dir / "config.json").read_text())
    labels = Taxonomy.load().labels
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["problem_type"] == "single_label_classification"
    assert [config["id2label"][str(i)] for i in range(len(labels))] == labels
    assert config["label2id"] == {label: i for i, label in enumerate(labels)}
    card = load_card(tiny_classifier_dir)
    assert card.kind == "classifier" and card.is_classifier
    assert list(card.labels) == labels
    assert card.label_tokens == {} and card.prompt_template == CLASSIFIER_TEMPLATE
    assert card.training is not None
    assert card.training.train_examples + card.training.test_examples == 1200
    assert card.training.test_fraction == 0.2 and card.training.split_seed == 0
    assert card.training.config["architecture"] == "BertForSequenceClassification"


def test_cards_without_a_kind_are_generative_and_classifier_cards_have_no_label_tokens() -> None:
    legacy = {"model_id": "g", "labels": ["a", "b"], "max_prompt_tokens": 64}
    legacy["label_tokens"] = {"a": "<a>", "b": "<b>"}
    assert ExpertCard.model_validate(legacy).kind == "generative"
    with pytest.raises(ValueError, match="label_tokens must cover labels"):
        ExpertCard.model_validate({**legacy, "label_tokens": {}})
    base = {"kind": "classifier", "model_id": "c", "labels": ["a", "b"], "max_prompt_tokens": 64}
    ExpertCard.model_validate({**base, "prompt_template": CLASSIFIER_TEMPLATE})
    with pytest.raises(ValueError, match="no label_tokens"):
        ExpertCard.model_validate(
            {**base, "prompt_template": CLASSIFIER_TEMPLATE, "label_tokens": {"a": "x", "b": "y"}}
        )
    with pytest.raises(ValueError, match="reads the ticket alone"):
        ExpertCard.model_validate(base)  # the instruction template is generative-only


def test_class_weights_favour_rare_classes_and_average_one() -> None:
    train = ["big"] * 8 + ["small"] * 2
    assert class_weights(["big", "small", "absent"], train, "none") is None
    for weighting in ("sqrt_inverse", "inverse"):
        weights = class_weights(["big", "small", "absent"], train, weighting)
        assert weights is not None
        big, small, absent = weights
        assert small > big and absent == 0.0
        assert (8 * big + 2 * small) / 10 == pytest.approx(1.0)


def test_classifier_prompt_is_the_ticket_cut_to_the_limit(tiny_classifier_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    short = classifier_token_ids("vpn down", tokenizer=tokenizer, max_prompt_tokens=64)
    assert short == tokenizer.encode("vpn down")
    long = classifier_token_ids("printer jam " * 500, tokenizer=tokenizer, max_prompt_tokens=64)
    assert len(long) == 64
    assert long[0] == tokenizer.cls_token_id and long[-1] == tokenizer.sep_token_id


@pytest.mark.slow
def test_batch_classifier_answers_only_card_labels_with_class_probabilities(
    batch_classifier: BatchExpert,
) -> None:
    predictions = batch_classifier.classify_batch(TEXTS)
    assert len(predictions) == len(TEXTS)
    for p in predictions:
        _assert_valid(p, batch_classifier.card.labels)
    # The fine-tuned head learned the synthetic queues (a constant would score ~1/12).
    hits = sum(p.label == t.queue for p, t in zip(predictions, TICKETS, strict=True))
    assert hits >= 0.6 * len(TICKETS)


@pytest.mark.slow
def test_overlong_ticket_is_cut_and_classified_not_rejected(
    batch_classifier: BatchExpert,
) -> None:
    [prediction] = batch_classifier.classify_batch(["printer jam on the 2nd floor " * 2000])
    _assert_valid(prediction, batch_classifier.card.labels)


@pytest.mark.slow
def test_vllm_class_probabilities_match_the_trained_torch_model(
    batch_classifier: BatchExpert, tiny_classifier_dir: Path
) -> None:
    """Same tokens, weights and pooling (the card's: mean by default) in vLLM's pooling runner
    and in transformers, same answer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    card = load_card(tiny_classifier_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    vllm_predictions = batch_classifier.classify_batch(TEXTS)
    agree = 0
    for text, served in zip(TEXTS, vllm_predictions, strict=True):
        ids = classifier_token_ids(
            text, tokenizer=tokenizer, max_prompt_tokens=card.max_prompt_tokens
        )
        with torch.no_grad():
            tokens = torch.tensor([ids])
            logits = classifier_logits(model, tokens, torch.ones_like(tokens), pooling=card.pooling)
            probs = logits[0].softmax(-1).tolist()
        assert served.probabilities == pytest.approx(
            dict(zip(card.labels, probs, strict=True)), abs=0.05
        )
        agree += card.labels[max(range(len(probs)), key=probs.__getitem__)] == served.label
    # vLLM runs bfloat16, so a near-tie may flip; a wrong pooling or head would not agree.
    assert agree >= 0.9 * len(TEXTS)


def test_classifier_head_that_differs_from_the_card_is_a_load_error(
    tmp_path: Path, tiny_classifier_dir: Path
) -> None:
    copy = tmp_path / "swapped-head"
    shutil.copytree(tiny_classifier_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["id2label"]["0"], config["id2label"]["1"] = config["id2label"]["1"], "x"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExpertLoadError, match="id2label"):
        BatchExpert(tiny_engine_config(copy)).start()


def test_classifier_labels_are_checked_against_the_taxonomy(tiny_classifier_dir: Path) -> None:
    card = load_card(tiny_classifier_dir)
    taxonomy = Taxonomy.load().labels
    check_labels(card, list(reversed(taxonomy)))
    with pytest.raises(LabelMismatchError) as caught:
        check_labels(card, [*taxonomy[1:], "printers_only"])
    assert caught.value.missing == ["printers_only"]
    assert caught.value.unexpected == [taxonomy[0]]


@pytest.mark.slow
async def test_streaming_classifier_serves_concurrent_requests_like_the_batch_engine(
    streaming_classifier: StreamingExpert, batch_classifier: BatchExpert
) -> None:
    assert streaming_classifier.model_id == "tiny-classifier"
    assert streaming_classifier.adapter_id is None
    streamed = await asyncio.gather(
        *(streaming_classifier.classify(t, request_id=f"cls-{i}") for i, t in enumerate(TEXTS)),
        streaming_classifier.classify("outlook " * 3000, request_id="cls-long"),
    )
    for p in streamed:
        _assert_valid(p, streaming_classifier.card.labels)
    assert streaming_classifier.load() == (0, 0)
    batched = batch_classifier.classify_batch(TEXTS)
    for s, b in zip(streamed, batched, strict=False):
        assert s.probabilities == pytest.approx(b.probabilities, abs=0.02)


@pytest.mark.slow
def test_eval_scores_the_classifier_on_its_held_out_split(
    batch_classifier: BatchExpert,
    tiny_classifier_dir: Path,
    tiny_corpus_path: Path,
    tmp_path: Path,
) -> None:
    report = evaluate(
        tiny_classifier_dir, tiny_corpus_path, out_dir=tmp_path, expert=batch_classifier
    )
    card = load_card(tiny_classifier_dir)
    assert card.training is not None
    assert report.test_examples == card.training.test_examples
    assert report.data_matches_build is True
    assert report.expert.accuracy > 0.6
    assert "classify" in report.expert.notes
    assert (tmp_path / "report.md").is_file()


@pytest.mark.integration  # the build scores its candidates in vLLM
def test_cli_builds_an_encoder_classifier_fused_and_calibrated_on_validation_rows(
    tmp_path: Path, tiny_corpus_path: Path, tiny_encoder_base: Path
) -> None:
    out = tmp_path / "cli-classifier"
    advanced = tmp_path / "advanced.yaml"
    advanced.write_text(
        "encoder:\n  epochs: 2\n  learning_rate: 0.005\n  head_learning_rate: 0.005\n"
        "  max_prompt_tokens: 32\n  class_weighting: sqrt_inverse\n"
    )
    args = ["build", "--data", str(tiny_corpus_path), "--out", str(out), "--taxonomy", "default"]
    args += ["--base", str(tiny_encoder_base), "--config", str(advanced), "--threads", "1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "validation tickets" in result.output and "lexical (reference)" in result.output
    card = load_card(out)
    assert card.kind == "classifier" and card.max_prompt_tokens == 32 and card.pooling == "mean"
    assert card.training is not None and card.fusion is not None and card.routing is not None
    assert card.training.config["class_weighting"] == "sqrt_inverse"
    assert card.training.config["learning_rate"] == 0.005
    # 1200 tickets: 240 held out for eval; the rest split about 9:1 into fit and validation.
    assert card.training.test_examples == 240
    assert card.training.validation_examples + card.training.train_examples == 960
    assert card.fusion.chosen.startswith("encoder")
    assert {c.name for c in card.fusion.candidates} >= {"lexical", "encoder", "encoder+lexical"}
    assert (out / "lexical" / "lexical.json").is_file() == (card.fusion.lexical_weight > 0)
    assert not (out / ".candidates").exists()


def test_cli_help_of_build_fits_one_screen() -> None:
    result = CliRunner().invoke(app, ["build", "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    assert "--preset" in result.output and "--hidden-size" not in result.output
    assert len(result.output.splitlines()) <= 50
