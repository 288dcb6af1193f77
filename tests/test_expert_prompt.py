"""The prompt: template, truncation that never exceeds the limit, label-token neutralising."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expert.build import train_tokenizer
from expert.prompt import DEFAULT_TEMPLATE, neutralise, prompt_token_ids, render, validate_template
from loadgen.corpus import generate

LABELS = ["hardware", "software"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    texts = [t.ticket.text() for t in generate(300, seed=1)]
    return train_tokenizer(texts, LABELS, vocab_size=400)


def test_short_ticket_is_the_reference_prompt_unchanged(tokenizer: Any) -> None:
    ids = prompt_token_ids(
        "printer jam", tokenizer=tokenizer, template=DEFAULT_TEMPLATE, max_prompt_tokens=100
    )
    assert tokenizer.decode(ids) == "### Instruction:\nTicket: 'printer jam'\n\n### Response:\n"


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=0, max_size=3000), room=st.integers(min_value=1, max_value=150))
def test_prompt_never_exceeds_max_prompt_tokens(tokenizer: Any, text: str, room: int) -> None:
    limit = len(tokenizer.encode(render(DEFAULT_TEMPLATE, ""))) + room
    ids = prompt_token_ids(
        text, tokenizer=tokenizer, template=DEFAULT_TEMPLATE, max_prompt_tokens=limit
    )
    assert 0 < len(ids) <= limit
    # The instruction frame survives every cut: the answer position is always the same.
    assert tokenizer.decode(ids).endswith("'\n\n### Response:\n")


def test_long_ticket_keeps_its_beginning(tokenizer: Any) -> None:
    text = "VPN drops every hour. " + "filler words " * 500
    ids = prompt_token_ids(
        text, tokenizer=tokenizer, template=DEFAULT_TEMPLATE, max_prompt_tokens=48
    )
    assert "VPN drops" in tokenizer.decode(ids)


def test_template_too_long_for_the_limit_is_an_error(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="template alone"):
        prompt_token_ids(
            "x" * 500, tokenizer=tokenizer, template=DEFAULT_TEMPLATE, max_prompt_tokens=5
        )


def test_label_tokens_typed_in_a_ticket_are_removed() -> None:
    assert neutralise("fix <hardware> now", ["<hardware>"]) == "fix   now"
    assert render(DEFAULT_TEMPLATE, "{a} {ticket}") == (
        "### Instruction:\nTicket: '{a} {ticket}'\n\n### Response:\n"
    )


def test_template_needs_exactly_one_slot() -> None:
    validate_template(DEFAULT_TEMPLATE)
    for bad in ("no slot", "{ticket} {ticket}"):
        with pytest.raises(ValueError):
            validate_template(bad)
