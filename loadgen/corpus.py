"""The labeled synthetic corpus: seeded, deterministic, realistic-looking IT tickets.

Owns generating `LabeledTicket`s (a `Ticket`, its queue and its priority) and writing them
as JSONL for `ticket-router expert build`. Same `seed` and `n` -> byte-identical output.
It does no network I/O and never reads the environment.

Realism knobs, all seeded: many phrasings per intent, typos, abbreviations, greetings,
signatures and quoted replies, multi-symptom tickets (labeled by the main symptom), vague
tickets, words that belong to other queues, a few German/French/Spanish tickets and a small
share of plausible misroutes (labels real help desks would also get "wrong").
The words themselves live beside it: per-queue intents in `loadgen.corpus_intents`, slot
fillers and e-mail trimmings in `loadgen.corpus_text`, drifted vocabulary in
`loadgen.corpus_drift`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel, ConfigDict

from loadgen.corpus_drift import NEW_PRODUCT_INTENTS, NEW_PRODUCT_QUEUE, Drift
from loadgen.corpus_intents import FOREIGN, QUEUE_INTENTS
from loadgen.corpus_text import (
    ABBREVIATIONS,
    CLOSINGS,
    GREETINGS,
    SIGNATURES,
    SLOTS,
    URGENT,
    VAGUE,
)
from schemas.ticket import Priority, SourceSystem, Ticket

_EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


class LabeledTicket(BaseModel):
    """A generated ticket with the queue and priority it should get.

    Attributes:
        ticket: the canonical ticket.
        queue: the taxonomy queue name.
        priority: P1..P5.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ticket: Ticket
    queue: str
    priority: str

    def to_record(self) -> dict[str, object]:
        """The JSONL record: text (what the router classifies), label, priority, ticket."""
        return {
            "text": self.ticket.text(),
            "label": self.queue,
            "priority": self.priority,
            "ticket": self.ticket.model_dump(mode="json"),
        }


@dataclass(frozen=True, slots=True)
class CorpusMix:
    """Shares of the special kinds of ticket (the rest are plain single-intent tickets)."""

    multi_symptom: float = 0.12
    vague: float = 0.03
    foreign: float = 0.04
    quoted_reply: float = 0.10
    signature: float = 0.35
    typos: float = 0.25
    misroute: float = 0.02


QUEUES: tuple[str, ...] = tuple(QUEUE_INTENTS)


def _fill(template: str, rng: random.Random) -> str:
    out = template
    for key, values in SLOTS.items():
        slot = "{" + key + "}"
        while slot in out:
            out = out.replace(slot, rng.choice(values), 1)
    return out


def _typos(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for i, word in enumerate(words):
        roll = rng.random()
        if roll < 0.06 and len(word) > 3:
            j = rng.randrange(len(word) - 1)
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
        elif roll < 0.09 and len(word) > 4:
            j = rng.randrange(len(word))
            words[i] = word[:j] + word[j + 1 :]
        elif roll < 0.20:
            words[i] = ABBREVIATIONS.get(word, word)
    text = " ".join(words)
    return text.lower() if rng.random() < 0.3 else text


def _symptom(queue: str, rng: random.Random) -> tuple[str, str]:
    subjects, bodies = rng.choice(QUEUE_INTENTS[queue][1])
    return _fill(rng.choice(subjects), rng), _fill(rng.choice(bodies), rng)


def _priority(queue: str, body: str, rng: random.Random) -> str:
    level = int(rng.choice(QUEUE_INTENTS[queue][0])[1])
    if any(u.lower() in body.lower() for u in URGENT):
        level = max(1, level - 1)
    return f"P{level}"


def _compose(queue: str, rng: random.Random, mix: CorpusMix) -> tuple[str, str]:
    roll = rng.random()
    if roll < mix.foreign:
        subject, body = rng.choice(FOREIGN[queue])
        return _fill(subject, rng), _fill(body, rng)
    subject, body = _symptom(queue, rng)
    if rng.random() < 0.5:
        _, extra = _symptom(queue, rng)
        body = f"{body} {extra}"
    if rng.random() < mix.multi_symptom:
        other = rng.choice([q for q in QUEUES if q != queue])
        _, extra = _symptom(other, rng)
        lead = rng.choice(["Also, ", "Not sure if related: ", "PS: ", "Btw ", ""])
        # The main symptom comes first; the side remark names another queue's problem.
        body = f"{body} {lead}{extra[0].lower()}{extra[1:]}" if lead else f"{body} {extra}"
    if rng.random() < 0.15:
        body = f"{body} {rng.choice(URGENT)}."
    return subject, body


def _decorate(body: str, rng: random.Random, mix: CorpusMix) -> str:
    if rng.random() < mix.typos:
        body = _typos(body, rng)
    greeting, closing = rng.choice(GREETINGS), rng.choice(CLOSINGS)
    parts = [p for p in (greeting, body, closing) if p]
    text = "\n".join(parts)
    if rng.random() < mix.signature:
        text = f"{text}\n{_fill(rng.choice(SIGNATURES), rng)}"
    if rng.random() < mix.quoted_reply:
        quoted = "\n".join("> " + line for line in _fill(rng.choice(SIGNATURES), rng).split("\n"))
        text = (
            f"{text}\n\n-----Original Message-----\nFrom: Service Desk\n"
            f"> Your ticket has been received and will be handled shortly.\n{quoted}"
        )
    return text


def _new_product(rng: random.Random) -> tuple[str, str]:
    subjects, bodies = rng.choice(NEW_PRODUCT_INTENTS)
    subject, body = _fill(rng.choice(subjects), rng), _fill(rng.choice(bodies), rng)
    if rng.random() < 0.15:
        body = f"{body} {rng.choice(URGENT)}."
    return subject, body


def _one(index: int, rng: random.Random, mix: CorpusMix, drift: Drift | None) -> LabeledTicket:
    queue = rng.choice(QUEUES)
    # Without a drift no extra number is drawn: the default corpus stays byte-identical.
    if drift is not None and drift.new_product > 0 and rng.random() < drift.new_product:
        queue = NEW_PRODUCT_QUEUE
        subject, body = _new_product(rng)
    elif rng.random() < mix.vague:
        subject, body = rng.choice(VAGUE)
        hint_subject, _ = _symptom(queue, rng)
        subject = f"{subject} - {hint_subject}" if rng.random() < 0.5 else subject
    else:
        subject, body = _compose(queue, rng, mix)
    label = queue
    if rng.random() < mix.misroute:
        label = rng.choice(QUEUES)
    if drift is not None:
        label = drift.label(label)
    body = _decorate(body, rng, mix)
    priority = _priority(queue, f"{subject} {body}", rng)
    person = rng.choice(SLOTS["person"]).lower()
    ticket = Ticket(
        id=f"INC{index + 1:07d}",
        source=rng.choice(
            [
                SourceSystem.SERVICENOW,
                SourceSystem.JIRA,
                SourceSystem.ZENDESK,
                SourceSystem.CANONICAL,
            ]
        ),
        created_at=_EPOCH + timedelta(minutes=index * 7 + rng.randrange(7)),
        subject=subject if rng.random() > 0.1 else subject.upper(),
        body=body,
        requester=f"{person}.{rng.choice(SLOTS['surname']).lower()}@example.com",
        priority=Priority(priority),
    )
    return LabeledTicket(ticket=ticket, queue=label, priority=priority)


def generate(
    n: int, *, seed: int, mix: CorpusMix | None = None, drift: Drift | None = None
) -> list[LabeledTicket]:
    """Generate `n` labeled tickets; the same `n`, `seed`, `mix` and `drift` give the same
    tickets.

    Args:
        n: number of tickets.
        seed: random seed.
        mix: shares of the special kinds of ticket.
        drift: how the tickets differ from the default corpus (`loadgen.corpus_drift`: a new
            product's tickets, an older desk's labels); None: the default corpus.

    Returns:
        The tickets, ids INC0000001.. in order.
    """
    mix = mix or CorpusMix()
    rng = random.Random(seed)  # noqa: S311 - seeded test data, not security
    return [_one(i, rng, mix, drift) for i in range(n)]


def write_jsonl(tickets: list[LabeledTicket], path: Path) -> None:
    """Write one JSON record per line: {"text", "label", "priority", "ticket"}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for item in tickets:
            handle.write(json.dumps(item.to_record(), ensure_ascii=False) + "\n")


def corpus_command(
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of tickets.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    drift: Annotated[
        str | None,
        typer.Option(
            "--drift",
            help="old-desk: cloud tickets filed under servers_storage (an older desk);"
            " new-product: a quarter of the tickets about a product the default corpus never"
            " mentions. Default: neither.",
        ),
    ] = None,
) -> None:
    """Write a seeded, labeled synthetic ticket corpus as JSONL (text, label, priority, ticket)."""
    from collections import Counter

    from rich.console import Console

    from loadgen.corpus_drift import DRIFTS

    if drift is not None and drift not in DRIFTS:
        raise typer.BadParameter(f"--drift must be one of {', '.join(DRIFTS)}")
    tickets = generate(n, seed=seed, drift=DRIFTS[drift] if drift else None)
    write_jsonl(tickets, out)
    counts = Counter(t.queue for t in tickets)
    Console().print(
        f"wrote {len(tickets)} tickets to {out} (seed {seed}); "
        + ", ".join(f"{q} {counts[q]}" for q in QUEUES)
    )
