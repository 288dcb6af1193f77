"""The instruction template and the token-level truncation of ticket text.

Owns how a ticket becomes the prompt the expert sees, for training and for serving alike, so
both sides build byte-identical prompts. It does no I/O and imports no model library: the
tokenizer is passed in (anything with Hugging Face's `encode`/`decode` signature).

Oversize rule: a ticket that would make the prompt longer than `max_prompt_tokens` is cut at
a token boundary (its beginning is kept), never rejected. That holds for both kinds of expert:
a generative one reads the instruction template, a classifier (encoder) reads the ticket text
alone, framed by its tokenizer's own special tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

DEFAULT_TEMPLATE = "### Instruction:\nTicket: '{ticket}'\n\n### Response:\n"
TICKET_SLOT = "{ticket}"


class EncoderTokenizer(Protocol):
    """The tokenizer call a classifier prompt needs (Hugging Face tokenizers have it)."""

    def encode(
        self,
        text: str,
        add_special_tokens: bool = True,
        *,
        truncation: bool = False,
        max_length: int | None = None,
    ) -> list[int]:
        """Token ids of `text`, cut to `max_length` (special tokens kept) when truncating."""
        ...


class PromptTokenizer(Protocol):
    """The two tokenizer calls the prompt needs (Hugging Face tokenizers have them)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`."""
        ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of `token_ids`."""
        ...


def validate_template(template: str) -> None:
    """Check that `template` has exactly one ticket slot.

    Raises:
        ValueError: the slot is missing or repeated.
    """
    if template.count(TICKET_SLOT) != 1:
        raise ValueError(f"prompt template must contain {TICKET_SLOT} exactly once")


def render(template: str, ticket_text: str) -> str:
    """The prompt text for `ticket_text` (no truncation).

    `str.replace` rather than `str.format`, so braces in templates or tickets are inert.
    """
    return template.replace(TICKET_SLOT, ticket_text)


def neutralise(ticket_text: str, reserved: Iterable[str]) -> str:
    """Remove label-token strings from ticket text, so a ticket cannot type an answer."""
    for token in reserved:
        if token and token in ticket_text:
            ticket_text = ticket_text.replace(token, " ")
    return ticket_text


def prompt_token_ids(
    ticket_text: str,
    *,
    tokenizer: PromptTokenizer,
    template: str,
    max_prompt_tokens: int,
    reserved: Sequence[str] = (),
) -> list[int]:
    """Token ids of the prompt for `ticket_text`, never longer than `max_prompt_tokens`.

    Args:
        ticket_text: the ticket as `Ticket.text()` gives it.
        tokenizer: the expert's tokenizer.
        template: the instruction template with one `{ticket}` slot.
        max_prompt_tokens: hard upper bound on the returned length.
        reserved: label-token strings removed from the ticket text first.

    Returns:
        The prompt's token ids (with the tokenizer's own special tokens, if it adds any).

    Raises:
        ValueError: the template alone is longer than `max_prompt_tokens`.
    """
    text = neutralise(ticket_text, reserved)
    ids = tokenizer.encode(render(template, text), add_special_tokens=True)
    if len(ids) <= max_prompt_tokens:
        return ids
    overhead = len(tokenizer.encode(render(template, ""), add_special_tokens=True))
    budget = max_prompt_tokens - overhead
    if budget < 1:
        raise ValueError(
            f"the template alone takes {overhead} tokens; max_prompt_tokens={max_prompt_tokens}"
        )
    body = tokenizer.encode(text, add_special_tokens=False)[:budget]
    # Re-encoding the cut text inside the template can merge differently at the seams,
    # so shrink until the whole prompt fits.
    while True:
        ids = tokenizer.encode(
            render(template, tokenizer.decode(body, skip_special_tokens=False)),
            add_special_tokens=True,
        )
        if len(ids) <= max_prompt_tokens or not body:
            return ids[:max_prompt_tokens]
        body = body[: -max(1, len(ids) - max_prompt_tokens)]


def classifier_token_ids(
    ticket_text: str, *, tokenizer: EncoderTokenizer, max_prompt_tokens: int
) -> list[int]:
    """Token ids a classifier reads for `ticket_text`: the text alone, never longer than
    `max_prompt_tokens`.

    The tokenizer cuts the text and keeps its framing tokens (BERT's [CLS] ... [SEP]), the
    way the model was fine-tuned. A classifier emits no tokens, so a ticket cannot type an
    answer and nothing is neutralised.

    Args:
        ticket_text: the ticket as `Ticket.text()` gives it.
        tokenizer: the classifier's tokenizer.
        max_prompt_tokens: hard upper bound on the returned length.
    """
    ids = tokenizer.encode(
        ticket_text, add_special_tokens=True, truncation=True, max_length=max_prompt_tokens
    )
    return list(ids[:max_prompt_tokens])
