"""`ticket-router route`: where the router would send a ticket, without a broker.

Owns reading tickets for the command (a text typed on the command line, a JSONL file of ITSM
payloads, one payload on stdin), asking the expert, and printing the decision the worker
would take. Everything that decides is the worker's own: `schemas.parse` (the same
dead-letter reasons), the engine's `expert.fields.expert_input` (the same expert input),
the worker's `Settings` (env vars and `--config` apply as for the worker) and
`worker.decide.destination` at `effective_threshold`. It reads and writes no Kafka topic and
changes no offset.

Engine: `expert.engine.BatchExpert`, the in-process offline vLLM engine. It serves the same
expert folder with the same prompt and label-probability code as the worker's
`StreamingExpert`, but starts in a few seconds (no engine-core child process to spawn and
connect, which costs AsyncLLM 10-16 s here) and answers a whole `--file` in batches.
Continuous batching and the worker's deadline do not apply to a command that waits for
its answers. The engine's start-up output goes to a log file (`expert.quiet`), or to stderr
with --verbose: stdout carries only the results.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from expert import quiet
from expert.card import CARD_FILENAME, ExpertCard
from expert.engine import BatchExpert
from expert.registry import Registry, RegistryError, versioned_model_id
from expert.serving import EngineConfig, Prediction, load_card
from schemas.parse import TicketParseError, parse_ticket
from schemas.routing import RoutingDecision, TriageReason
from schemas.taxonomy import QueueMode, Taxonomy
from schemas.ticket import SourceSystem, Ticket
from worker.decide import DEFAULT_CONFIDENCE_THRESHOLD, effective_threshold
from worker.policy import Thresholds, modes_in_force, plan
from worker.suggest import with_help

DEAD_LETTER = "dead_letter"
TEXT_TICKET_ID = "cli-ticket"
# Tickets per offline batch: the engine's default max_num_seqs, and a bound on memory for
# files of any length (results are printed batch by batch).
BATCH_SIZE = 256
_SUBJECT_SHOWN_CHARS = 70


class BatchEngine(Protocol):
    """What `route` needs from an engine (`expert.engine.BatchExpert`)."""

    @property
    def card(self) -> ExpertCard: ...

    def classify_batch(self, tickets: Sequence[Ticket | str]) -> list[Prediction]: ...


@dataclass(frozen=True, slots=True)
class ExpertVersion:
    """The served expert as the worker names it in its outputs (`router.model` header)."""

    model_id: str
    adapter_id: str | None
    recommended_threshold: float | None
    recommended_queue_thresholds: Mapping[str, float] = field(default_factory=dict)


def expert_version(config: EngineConfig, card: ExpertCard) -> ExpertVersion:
    """The model and adapter ids the worker's `StreamingExpert` reports for `config`.

    `BatchExpert` exposes only the served card, so this mirrors `StreamingExpert.model_id`
    and `.adapter_id`: serving an adapter, the model id is the base's card id (else the
    base the adapter's card names) and the adapter id is the adapter card's id.

    Args:
        config: the engine config served.
        card: the served card (the adapter's card when an adapter is served).
    """
    routing = card.routing.confidence_threshold if card.routing is not None else None
    per_queue = dict(card.routing.queue_thresholds) if card.routing is not None else {}
    if card.adapter is None:
        return ExpertVersion(card.model_id, None, routing, per_queue)
    base_dir = Path(config.model_dir) if config.adapter_dir is not None else None
    if base_dir is not None and (base_dir / CARD_FILENAME).is_file():
        return ExpertVersion(load_card(base_dir).model_id, card.model_id, routing, per_queue)
    return ExpertVersion(str(card.base_model), card.model_id, routing, per_queue)


@dataclass(frozen=True, slots=True)
class Threshold:
    """The triage threshold in force and where it comes from.

    Attributes:
        value: the global threshold (queues without their own).
        source: "configured", "expert card" or "default".
        per_queue: the card's per-queue thresholds (empty when configured: one for all).
    """

    value: float
    source: str
    per_queue: Mapping[str, float] = field(default_factory=dict)

    def for_queue(self, queue: str | None) -> float:
        """The threshold of tickets predicted for `queue`."""
        return self.per_queue.get(queue or "", self.value)

    @property
    def thresholds(self) -> Thresholds:
        """As `worker.policy` takes it."""
        return Thresholds(default=self.value, per_queue=self.per_queue, source=self.source)


def threshold_in_force(
    configured: float | None,
    recommended: float | None,
    per_queue: Mapping[str, float] | None = None,
) -> Threshold:
    """`effective_threshold`, with the source of its value (and the card's per-queue
    thresholds unless one is configured)."""
    value = effective_threshold(configured, recommended)
    if configured is not None:
        return Threshold(value, "configured")
    if recommended is not None or per_queue:
        return Threshold(value, "expert card", dict(per_queue or {}))
    return Threshold(DEFAULT_CONFIDENCE_THRESHOLD, "default")


@dataclass(frozen=True, slots=True)
class Item:
    """One input: a ticket, or the parse error the worker would dead-letter it with.

    Attributes:
        where: where it came from ("text", "stdin", "<file>:<line>").
        ticket: the parsed ticket, None when it did not parse.
        error: why it did not parse.
    """

    where: str
    ticket: Ticket | None = None
    error: TicketParseError | None = None


def item_from_text(text: str, *, now: datetime | None = None) -> Item:
    """A canonical ticket from typed text: the first line is the subject, the rest the body.

    Raises:
        ValueError: the text has no visible characters.
    """
    subject, _, body = text.strip().partition("\n")
    if not subject.strip():
        raise ValueError("the ticket text is empty")
    ticket = Ticket(
        id=TEXT_TICKET_ID,
        source=SourceSystem.CANONICAL,
        created_at=now or datetime.now(UTC),
        subject=subject,
        body=body,
    )
    return Item(where="text", ticket=ticket)


def item_from_payload(raw: bytes, *, where: str, source_format: SourceSystem | None) -> Item:
    """Parse one record value exactly as the worker does."""
    try:
        return Item(where=where, ticket=parse_ticket(raw, source_format=source_format))
    except TicketParseError as exc:
        return Item(where=where, error=exc)


def items_from_jsonl(
    lines: Iterable[bytes], *, name: str, source_format: SourceSystem | None
) -> Iterator[Item]:
    """One item per non-blank line (each line one record value), numbered from 1."""
    for number, line in enumerate(lines, start=1):
        value = line.rstrip(b"\r\n")
        if value.strip():
            yield item_from_payload(value, where=f"{name}:{number}", source_format=source_format)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the worker would do with one input.

    Attributes:
        item: the input.
        disposition: "routed", "triage" or "dead_letter".
        topic: the topic the worker would publish it to.
        decision: the expert's decision (None for a dead letter).
        triage_reason: why it would go to triage.
        threshold: the triage threshold in force.
        mode: the predicted queue's mode (None for a dead letter).
        shadow_topic: where its shadow decision would go (queues in shadow mode).
    """

    item: Item
    disposition: str
    topic: str
    decision: RoutingDecision | None
    triage_reason: TriageReason | None
    threshold: Threshold
    mode: QueueMode | None = None
    shadow_topic: str | None = None

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        """The `n` most probable queues with their probabilities, most probable first."""
        probabilities = self.decision.probabilities if self.decision else {}
        return sorted(probabilities.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def as_json(self) -> dict[str, Any]:
        """One machine-readable object (the `--json` line)."""
        ticket, error, decision = self.item.ticket, self.item.error, self.decision
        out: dict[str, Any] = {
            "input": self.item.where,
            "ticket_id": ticket.id if ticket else None,
            "subject": ticket.subject if ticket else None,
            "disposition": self.disposition,
            "topic": self.topic,
        }
        if error is not None:
            out.update(reason=error.reason.value, error=error.message)
            return out
        assert decision is not None
        out.update(
            queue=decision.queue,
            confidence=decision.confidence,
            top3=[{"queue": q, "probability": p} for q, p in self.top(3)],
            triage_reason=self.triage_reason.value if self.triage_reason else None,
            threshold=self.threshold.for_queue(decision.queue),
            threshold_source=self.threshold.source
            + (" (queue)" if decision.queue in self.threshold.per_queue else ""),
            mode=self.mode.value if self.mode else None,
            shadow_topic=self.shadow_topic,
            model_id=decision.model_id,
            adapter_id=decision.adapter_id,
            engine_latency_s=decision.engine_latency_s,
            probabilities=decision.probabilities,
            similar_tickets=[t.model_dump(mode="json") for t in decision.similar_tickets],
        )
        return out

    def render(self) -> str:
        """The human-readable block."""
        item, decision = self.item, self.decision
        if item.error is not None or decision is None:
            assert item.error is not None
            return (
                f"{item.where}: dead-letter ({item.error.reason.value}) -> {self.topic}: "
                f"{item.error.message}"
            )
        assert item.ticket is not None
        subject = item.ticket.subject
        if len(subject) > _SUBJECT_SHOWN_CHARS:
            subject = subject[: _SUBJECT_SHOWN_CHARS - 1] + "…"
        c, t = decision.confidence, self.threshold.for_queue(decision.queue)
        source = self.threshold.source + (
            " for the queue" if decision.queue in self.threshold.per_queue else ""
        )
        sign = "<" if c < t else ">="
        why = f"confidence {c:.3f} {sign} threshold {t:.3f}, {source}; mode {self.mode}"
        if self.triage_reason is not None:
            why = f"{self.triage_reason}: {why}"
        if self.shadow_topic:
            why += f"; shadow decision -> {self.shadow_topic}"
        top = ", ".join(f"{q} {p:.3f}" for q, p in self.top(3))
        return "\n".join(
            [
                f"{item.where}: {item.ticket.id} {json.dumps(subject, ensure_ascii=False)}",
                f"  queue       {decision.queue}  (confidence {c:.3f})",
                f"  top 3       {top}",
                f"  decision    {self.disposition} -> {self.topic}  ({why})",
                f"  expert      {decision.model_id}, adapter {decision.adapter_id or 'none'}",
                *_similar_lines(decision),
            ]
        )


def _similar_lines(decision: RoutingDecision) -> list[str]:
    """One line per similar past ticket: similarity, final queue, id and the text's start."""
    lines = []
    for n, t in enumerate(decision.similar_tickets):
        head = "  similar    " if n == 0 else "             "
        text = t.snippet if len(t.snippet) <= 60 else t.snippet[:59] + "…"
        lines.append(
            f"{head} {t.similarity:.2f} {t.queue}  {t.ticket_id}  "
            f"{json.dumps(text, ensure_ascii=False)}"
        )
    return lines


def dead_letter_outcome(item: Item, *, taxonomy: Taxonomy, threshold: Threshold) -> Outcome:
    """The outcome of an input that did not parse: the dead-letter topic, with its reason."""
    return Outcome(item, DEAD_LETTER, taxonomy.topics.dead_letter, None, None, threshold)


def route_items(
    items: Sequence[Item],
    *,
    engine: BatchEngine,
    version: ExpertVersion,
    taxonomy: Taxonomy,
    threshold: Threshold,
    modes: Mapping[str, QueueMode] | None = None,
) -> list[Outcome]:
    """Decide every item as the worker would, in one offline batch for the tickets.

    Raises:
        EngineFailure: the engine is not started or answered too few.
    """
    tickets = [item.ticket for item in items if item.ticket is not None]
    predictions = iter(engine.classify_batch(tickets) if tickets else [])
    outcomes = []
    for item in items:
        if item.ticket is None:
            outcomes.append(dead_letter_outcome(item, taxonomy=taxonomy, threshold=threshold))
            continue
        prediction = next(predictions)
        chosen = plan(taxonomy, prediction, thresholds=threshold.thresholds, modes=modes or {})
        decision = RoutingDecision(
            queue=prediction.label,
            confidence=prediction.confidence,
            probabilities=prediction.probabilities,
            model_id=version.model_id,
            adapter_id=version.adapter_id,
            engine_latency_s=prediction.latency_s,
        )
        decision = with_help(decision, prediction, disposition=chosen.disposition)
        outcomes.append(
            Outcome(
                item,
                chosen.disposition.value,
                chosen.topic,
                decision,
                chosen.reason,
                threshold,
                mode=chosen.mode,
                shadow_topic=taxonomy.topics.shadow if chosen.shadow else None,
            )
        )
    return outcomes


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# ---------------------------------------------------------------------------- command


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(message, file=quiet.user_stderr())
    return typer.Exit(code)


def _inputs(
    text: str | None, file: str | None, source_format: SourceSystem | None
) -> Iterator[Item]:
    if text is not None and file is not None:
        raise _fail("give a ticket text or --file, not both", 2)
    if file is not None:
        if file == "-":
            yield from items_from_jsonl(sys.stdin.buffer, name="stdin", source_format=source_format)
            return
        path = Path(file)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise _fail(f"cannot read {path}: {exc.strerror}", 2) from exc
        with handle:
            yield from items_from_jsonl(handle, name=path.name, source_format=source_format)
        return
    if text is not None and text != "-":
        try:
            yield item_from_text(text)
        except ValueError as exc:
            raise _fail(str(exc), 2) from exc
        return
    if text is None and sys.stdin.isatty():
        raise _fail("nothing to route: give a ticket text, --file FILE, or a payload on stdin", 2)
    raw = sys.stdin.buffer.read()
    if not raw.strip():
        raise _fail("nothing to route: stdin is empty", 2)
    yield item_from_payload(raw, where="stdin", source_format=source_format)


class _Router:
    """Starts the engine on the first ticket that needs it; stops it at the end."""

    def __init__(self, *, settings: Any, taxonomy: Taxonomy) -> None:
        self.settings = settings
        self.taxonomy = taxonomy
        self.engine: BatchExpert | None = None
        self.version: ExpertVersion | None = None
        self.threshold = threshold_in_force(settings.routing.confidence_threshold, None)
        self.modes = modes_in_force(taxonomy, settings.routing.modes)
        self.start_s = 0.0

    def ensure_started(self) -> tuple[BatchExpert, ExpertVersion]:
        from expert.serving import ExpertLoadError, check_labels

        if self.engine is not None and self.version is not None:
            return self.engine, self.version
        config, registry_version = _served_config(self.settings.engine)
        engine = BatchExpert(config)
        started = time.perf_counter()
        try:
            engine.start()
            self.engine = engine
            check_labels(engine.card, self.taxonomy.labels)
        except ExpertLoadError as exc:
            raise _fail(f"expert failed to load: {exc}", 4) from exc
        self.start_s = time.perf_counter() - started
        self.version = expert_version(config, engine.card)
        if registry_version is not None:
            self.version = ExpertVersion(
                versioned_model_id(self.version.model_id, registry_version),
                self.version.adapter_id,
                self.version.recommended_threshold,
                self.version.recommended_queue_thresholds,
            )
        self.threshold = threshold_in_force(
            self.settings.routing.confidence_threshold,
            self.version.recommended_threshold,
            self.version.recommended_queue_thresholds,
        )
        placement = engine.placement
        typer.echo(
            f"expert {self.version.model_id} (adapter {self.version.adapter_id or 'none'}) "
            f"from {config.model_dir}: started in {self.start_s:.1f} s on "
            f"{placement.cpu.get('kind')} ({placement.dtype}, "
            f"{placement.threads} model thread(s)); "
            f"triage below {self.threshold.value:.3f} ({self.threshold.source}"
            + (
                f"; {len(self.threshold.per_queue)} queues with their own threshold)"
                if self.threshold.per_queue
                else ")"
            ),
            file=quiet.user_stderr(),
        )
        return engine, self.version

    def decide(self, batch: list[Item]) -> list[Outcome]:
        if all(item.ticket is None for item in batch):
            return [
                dead_letter_outcome(item, taxonomy=self.taxonomy, threshold=self.threshold)
                for item in batch
            ]
        engine, version = self.ensure_started()
        return route_items(
            batch,
            engine=engine,
            version=version,
            taxonomy=self.taxonomy,
            threshold=self.threshold,
            modes=self.modes,
        )

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def _served_config(config: EngineConfig) -> tuple[EngineConfig, str | None]:
    """The engine config the worker would serve: with a registry configured, its current
    version (named `<model>@<version>` as the worker names it), else the model folder."""
    registry_dir = getattr(config, "registry_dir", None)
    if registry_dir is None:
        return config, None
    try:
        current = Registry(Path(registry_dir)).current()
    except RegistryError as exc:
        raise _fail(f"expert registry {registry_dir}: {exc}", 4) from exc
    if current is None:
        raise _fail(f"expert registry {registry_dir} has no current version yet", 4)
    served = config.model_copy(update={"model_dir": current.path, "adapter_dir": None})
    return served, current.version


def _settings(
    *, config: Path | None, model: Path | None, taxonomy: Path | None, threshold: float | None
) -> tuple[Any, Taxonomy]:
    from pydantic import ValidationError

    from schemas.taxonomy import TaxonomyError
    from worker.config import load_settings
    from worker.policy import PolicyError

    overrides: dict[str, object] = {
        # --model wins over a configured registry, as it does over the model folder.
        "engine": {"model_dir": model, "registry_dir": None} if model else None,
        "taxonomy_path": taxonomy,
        "routing": {"confidence_threshold": threshold} if threshold is not None else None,
    }
    try:
        settings = load_settings(config_file=config, **overrides)
        tax = Taxonomy.load(settings.taxonomy_path)
        modes_in_force(tax, settings.routing.modes)
        return settings, tax
    except (ValidationError, TaxonomyError, PolicyError, ValueError) as exc:
        raise _fail(f"invalid configuration: {exc}", 2) from exc


def route(
    text: Annotated[
        str | None,
        typer.Argument(
            help="The ticket: first line the subject, the rest the body. '-' or nothing: "
            "one ITSM payload (ServiceNow, Jira, Zendesk or canonical JSON) from stdin."
        ),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file", "-f", help="JSONL file of ITSM payloads, one per line ('-': stdin)."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per ticket on stdout.")
    ] = False,
    model: Annotated[
        Path | None, typer.Option(help="Expert model folder (default: the worker's).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="The worker's YAML settings file (env and flags win).")
    ] = None,
    taxonomy: Annotated[
        Path | None, typer.Option(help="Taxonomy YAML (default: the worker's).")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Triage threshold (default: the worker's configured one)."
        ),
    ] = None,
    source_format: Annotated[
        SourceSystem | None,
        typer.Option("--format", help="The payloads' format (default: the worker's, detected)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=quiet.VERBOSE_HELP)] = False,
) -> None:
    """Route tickets as the worker would, without a broker: queue, confidence, top three,
    triage or not, expert version. Exit 1 when a payload would be dead-lettered."""
    from worker.logs import configure_logging

    settings, tax = _settings(config=config, model=model, taxonomy=taxonomy, threshold=threshold)
    fmt = source_format or (
        SourceSystem(settings.kafka.source_format) if settings.kafka.source_format else None
    )
    # Results go to stdout; the engine's start-up output to the log (stderr with --verbose).
    with quiet.library_output("route", verbose=verbose):
        configure_logging(level="WARNING", fmt=settings.log_format)
        _route(_inputs(text, file, fmt), settings=settings, taxonomy=tax, as_json=as_json)


def _route(items: Iterable[Item], *, settings: Any, taxonomy: Taxonomy, as_json: bool) -> None:
    router = _Router(settings=settings, taxonomy=taxonomy)
    counts = {"routed": 0, "triage": 0, DEAD_LETTER: 0}
    deciding_s = 0.0
    try:
        for batch in _batches(items, BATCH_SIZE):
            started = time.perf_counter()
            outcomes = router.decide(batch)
            deciding_s += time.perf_counter() - started
            for outcome in outcomes:
                counts[outcome.disposition] += 1
                if as_json:
                    typer.echo(json.dumps(outcome.as_json(), ensure_ascii=False))
                else:
                    dead = outcome.disposition == DEAD_LETTER
                    typer.echo(outcome.render(), file=quiet.user_stderr() if dead else None)
    finally:
        router.close()
    decided = counts["routed"] + counts["triage"]
    routing_s = deciding_s - router.start_s
    timing = (
        f"; {routing_s:.2f} s after the engine started, {routing_s / decided * 1000:.1f} ms "
        "per ticket"
        if decided
        else ""
    )
    typer.echo(
        f"{counts['routed']} routed, {counts['triage']} to triage, "
        f"{counts[DEAD_LETTER]} dead-lettered{timing}",
        file=quiet.user_stderr(),
    )
    if counts[DEAD_LETTER]:
        raise typer.Exit(1)
