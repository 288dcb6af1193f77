"""The expert served by real vLLM on the CPU: batch and streaming front ends, LoRA, errors."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from expert.engine import BatchExpert, StreamingExpert
from expert.serving import (
    EngineFailure,
    ExpertLoadError,
    LabelMismatchError,
    check_labels,
    load_card,
)
from loadgen.corpus import generate
from schemas.taxonomy import Taxonomy
from tests.expert_fixtures import LORA_TARGET_QUEUE, tiny_engine_config

pytestmark = pytest.mark.slow

TEXTS = [t.ticket.text() for t in generate(40, seed=123)]


def _assert_valid(prediction, labels: tuple[str, ...]) -> None:
    assert prediction.label in labels
    assert set(prediction.probabilities) == set(labels)
    assert abs(sum(prediction.probabilities.values()) - 1.0) < 1e-6
    assert prediction.confidence == max(prediction.probabilities.values())
    assert prediction.confidence == prediction.probabilities[prediction.label]
    assert prediction.latency_s > 0


def test_batch_expert_answers_only_card_labels_with_normalised_confidence(
    batch_expert: BatchExpert,
) -> None:
    predictions = batch_expert.classify_batch(TEXTS)
    assert len(predictions) == len(TEXTS)
    for p in predictions:
        _assert_valid(p, batch_expert.card.labels)
    # A trained expert is not a constant: it gives different tickets different answers.
    assert len({p.label for p in predictions}) > 1


def test_overlong_ticket_is_cut_and_classified_not_rejected(batch_expert: BatchExpert) -> None:
    long_text = "printer jam on the 2nd floor " * 2000
    [prediction] = batch_expert.classify_batch([long_text])
    _assert_valid(prediction, batch_expert.card.labels)


def test_ticket_typing_a_label_token_cannot_inject_an_answer(batch_expert: BatchExpert) -> None:
    token = batch_expert.card.label_tokens["security_incident"]
    # The label token is blanked out of the text, so both prompts are the same tokens.
    blanked, injected = batch_expert.classify_batch(["vpn broken  ", f"vpn broken {token}"])
    assert injected.probabilities == pytest.approx(blanked.probabilities, abs=1e-3)


def test_vllm_answers_match_the_trained_torch_model(
    batch_expert: BatchExpert, tiny_expert_dir: Path
) -> None:
    """Same prompt tokens and weights in vLLM and in transformers give the same labels."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from expert.prompt import prompt_token_ids

    card = load_card(tiny_expert_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_expert_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_expert_dir).eval()
    ids = [tokenizer.convert_tokens_to_ids(card.label_tokens[label]) for label in card.labels]
    torch_labels = []
    for text in TEXTS:
        prompt = prompt_token_ids(
            text,
            tokenizer=tokenizer,
            template=card.prompt_template,
            max_prompt_tokens=card.max_prompt_tokens,
            reserved=card.label_token_list,
        )
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0, -1, ids]
        torch_labels.append(card.labels[int(logits.argmax())])
    vllm_labels = [p.label for p in batch_expert.classify_batch(TEXTS)]
    agree = sum(a == b for a, b in zip(torch_labels, vllm_labels, strict=True))
    # vLLM runs bfloat16, so a near-tie may flip; systematic prompt drift would not agree.
    assert agree >= 0.9 * len(TEXTS)


def test_missing_model_dir_is_a_clear_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ExpertLoadError, match="does not exist"):
        BatchExpert(tiny_engine_config(missing)).start()
    with pytest.raises(ExpertLoadError, match="does not exist"):
        asyncio.run(StreamingExpert(tiny_engine_config(missing)).start())


def test_model_dir_without_card_is_a_clear_load_error(
    tmp_path: Path, tiny_expert_dir: Path
) -> None:
    copy = tmp_path / "no-card"
    shutil.copytree(tiny_expert_dir, copy)
    (copy / "expert.json").unlink()
    with pytest.raises(ExpertLoadError, match="not an expert directory"):
        BatchExpert(tiny_engine_config(copy)).start()


def test_corrupt_card_names_the_bad_field(tmp_path: Path, tiny_expert_dir: Path) -> None:
    copy = tmp_path / "bad-card"
    shutil.copytree(tiny_expert_dir, copy)
    card = json.loads((copy / "expert.json").read_text())
    del card["label_tokens"][card["labels"][0]]
    (copy / "expert.json").write_text(json.dumps(card))
    with pytest.raises(ExpertLoadError, match="label_tokens must cover labels"):
        load_card(copy)


def test_label_mismatch_lists_both_sides_of_the_difference(tiny_expert_dir: Path) -> None:
    card = load_card(tiny_expert_dir)
    taxonomy = Taxonomy.load().labels
    check_labels(card, list(reversed(taxonomy)))  # order does not matter
    with pytest.raises(LabelMismatchError) as caught:
        check_labels(card, [*taxonomy[1:], "printers_only"])
    assert caught.value.missing == ["printers_only"]
    assert caught.value.unexpected == [taxonomy[0]]
    assert "printers_only" in str(caught.value) and taxonomy[0] in str(caught.value)
    assert isinstance(caught.value, ExpertLoadError)


async def test_streaming_expert_classifies_concurrent_requests(
    streaming_expert: StreamingExpert,
) -> None:
    assert streaming_expert.model_id == "tiny-expert"
    assert streaming_expert.adapter_id is None
    predictions = await asyncio.gather(
        *(streaming_expert.classify(text, request_id=f"c-{i}") for i, text in enumerate(TEXTS))
    )
    for p in predictions:
        _assert_valid(p, streaming_expert.card.labels)
    assert streaming_expert.load() == (0, 0)


async def test_streaming_expert_agrees_with_batch_expert(
    streaming_expert: StreamingExpert, batch_expert: BatchExpert
) -> None:
    streamed = await asyncio.gather(
        *(streaming_expert.classify(text, request_id=f"a-{i}") for i, text in enumerate(TEXTS))
    )
    batched = batch_expert.classify_batch(TEXTS)
    for s, b in zip(streamed, batched, strict=True):
        assert s.probabilities == pytest.approx(b.probabilities, abs=0.02)


async def test_cancelled_request_is_aborted_and_the_engine_keeps_serving(
    streaming_expert: StreamingExpert,
) -> None:
    started = asyncio.Event()

    async def classify() -> None:
        started.set()
        await streaming_expert.classify("outlook " * 200, request_id="to-cancel")

    task = asyncio.create_task(classify())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert streaming_expert.load() == (0, 0)
    after = await streaming_expert.classify("vpn drops every hour", request_id="after-cancel")
    _assert_valid(after, streaming_expert.card.labels)


async def test_lora_adapter_served_by_vllm_changes_answers(
    tiny_expert_dir: Path, tiny_lora_dir: Path, batch_expert: BatchExpert
) -> None:
    tickets = generate(60, seed=321)
    texts = [t.ticket.text() for t in tickets]
    base = batch_expert.classify_batch(texts)
    lora = StreamingExpert(tiny_engine_config(tiny_expert_dir, tiny_lora_dir))
    await lora.start()
    try:
        assert lora.adapter_id == "tiny-lora"
        assert lora.model_id == "tiny-expert"
        tuned = await asyncio.gather(
            *(lora.classify(text, request_id=f"l-{i}") for i, text in enumerate(texts))
        )
    finally:
        await lora.shutdown()
    with pytest.raises(EngineFailure):
        await lora.classify("hello", request_id="after-shutdown")
    for p in tuned:
        _assert_valid(p, lora.card.labels)
    base_hits = sum(p.label == LORA_TARGET_QUEUE for p in base)
    tuned_hits = sum(p.label == LORA_TARGET_QUEUE for p in tuned)
    # The base answers by content; the adapter learned to send everything to one queue.
    assert base_hits <= len(texts) // 3
    assert tuned_hits >= 0.8 * len(texts)


async def test_classify_before_start_is_an_engine_failure(tiny_expert_dir: Path) -> None:
    expert = StreamingExpert(tiny_engine_config(tiny_expert_dir))
    with pytest.raises(EngineFailure):
        await expert.classify("hello", request_id="not-started")
