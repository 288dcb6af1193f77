"""The feedback entry point: raw record bytes to a `Feedback`, a skip, or one error that says why.

Owns detecting the feedback format, mapping the tool's groups to queues with the group map,
and classifying every failure into a `FeedbackParseError` with a `DeadLetterReason`. It
never raises anything else for any input bytes, so a poison record can always be
dead-lettered. No I/O.

Formats, detected in this order (first match wins):

1. Jira: an `issue` with a `key`, and a `changelog` (`schemas.itsm.jira_update`).
2. Zendesk: a `type` starting `zen:event-type:ticket.` with a `detail` (`zendesk_update`).
3. ServiceNow: an incident record (bare or in `result`) with `sys_updated_on` and
   `number` or `sys_id` (`servicenow_update`).
4. Canonical: `ticket_id` and `final_queue` (`schemas.feedback.Feedback`).

Reasons: not UTF-8 / not JSON / not an object -> undecodable; no format matches ->
unknown_format; a wrong type or value -> invalid; the ticket's group maps to no queue ->
unknown_group (never guessed). A valid update that says nothing about the queue (a
comment, a priority change), or that an ignored actor made, is not an error: it comes back
as `NotFeedback` with the reason, and the consumer skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

from pydantic import ValidationError

from schemas.dead_letter import DeadLetterReason
from schemas.feedback import Feedback, FeedbackOutcome
from schemas.group_map import GroupMap
from schemas.itsm import jira_update, servicenow_update, zendesk_update
from schemas.itsm.desk_event import DeskEvent, GroupRef
from schemas.itsm.normalise import shown
from schemas.parse import MAX_MESSAGE_CHARS, TicketParseError, decode_payload
from schemas.ticket import SourceSystem

_MAX_ERRORS_SHOWN = 3
_MAX_KEYS_SHOWN = 8


class FeedbackParseError(ValueError):
    """A record that cannot become a `Feedback`.

    Attributes:
        reason: the dead-letter reason class.
        message: what is wrong, naming the field or group at fault.
        source: the format it was read as, when one was recognised.
    """

    def __init__(
        self, reason: DeadLetterReason, message: str, source: SourceSystem | None = None
    ) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.source = source

    def __reduce__(
        self,
    ) -> tuple[type[FeedbackParseError], tuple[DeadLetterReason, str, SourceSystem | None]]:
        return (type(self), (self.reason, self.message, self.source))


class SkipReason(StrEnum):
    """Why a valid update is not feedback (a metric label)."""

    NO_SIGNAL = "no_signal"  # says nothing about the ticket's queue
    IGNORED_ACTOR = "ignored_actor"  # made by an integration user (the router's write-back)


@dataclass(frozen=True, slots=True)
class NotFeedback:
    """A valid update the feedback loop does not learn from."""

    source: SourceSystem
    ticket_id: str
    reason: SkipReason


def parse_feedback(raw: bytes, *, group_map: GroupMap, labels: list[str]) -> Feedback | NotFeedback:
    """Decode a feedback record and map it to the canonical `Feedback`.

    Args:
        raw: the record value as received.
        group_map: the tools' groups -> queues.
        labels: the taxonomy's queue names (a canonical feedback must name one of them).

    Returns:
        The feedback, or `NotFeedback` for a valid update without a routing signal.

    Raises:
        FeedbackParseError: for any input that is not valid feedback, and only that.
    """
    try:
        payload = decode_payload(raw)
    except TicketParseError as exc:
        raise FeedbackParseError(exc.reason, exc.message) from exc
    return feedback_from_payload(payload, group_map=group_map, labels=labels)


def detect_feedback_source(payload: dict[str, Any]) -> SourceSystem | None:
    """The format of a decoded feedback payload (rules in the module docstring), or None."""
    if jira_update.is_update(payload):
        return SourceSystem.JIRA
    if zendesk_update.is_update(payload):
        return SourceSystem.ZENDESK
    if servicenow_update.is_update(payload):
        return SourceSystem.SERVICENOW
    if "ticket_id" in payload and "final_queue" in payload:
        return SourceSystem.CANONICAL
    return None


def feedback_from_payload(
    payload: dict[str, Any], *, group_map: GroupMap, labels: list[str]
) -> Feedback | NotFeedback:
    """Map a decoded JSON object to `Feedback` (see `parse_feedback`)."""
    source = detect_feedback_source(payload)
    if source is None:
        keys = [shown(key) for key in list(payload)[:_MAX_KEYS_SHOWN]]
        _fail(
            DeadLetterReason.UNKNOWN_FORMAT,
            "unknown format: not a ServiceNow incident update, Jira issue_updated webhook, "
            f"Zendesk ticket event or canonical feedback; top-level keys: [{', '.join(keys)}]",
        )
    try:
        if source is SourceSystem.CANONICAL:
            return _canonical(payload, labels)
        if source is SourceSystem.JIRA:
            event = jira_update.event_from_jira(payload, group_map.jira)
        elif source is SourceSystem.ZENDESK:
            event = zendesk_update.event_from_zendesk(payload)
        else:
            event = servicenow_update.event_from_servicenow(payload)
        return _from_event(event, group_map)
    except ValidationError as exc:
        _fail(DeadLetterReason.INVALID, _describe(exc, source), source=source)
    except RecursionError:
        _fail(DeadLetterReason.INVALID, f"{source}: nested too deeply", source=source)


def _canonical(payload: dict[str, Any], labels: list[str]) -> Feedback:
    feedback = Feedback.model_validate(payload)
    known = set(labels)
    for field in ("final_queue", "previous_queue"):
        queue = getattr(feedback, field)
        if queue is not None and queue not in known:
            _fail(
                DeadLetterReason.INVALID,
                f"canonical.{field}: {shown(queue)} is not a queue of the taxonomy",
                source=SourceSystem.CANONICAL,
            )
    return feedback


def _from_event(event: DeskEvent, group_map: GroupMap) -> Feedback | NotFeedback:
    groups = group_map.for_source(event.source)
    if event.outcome is None or event.group is None:
        return NotFeedback(event.source, event.ticket_id, SkipReason.NO_SIGNAL)
    if groups.is_ignored_actor(*event.actors):
        return NotFeedback(event.source, event.ticket_id, SkipReason.IGNORED_ACTOR)
    final_queue = _queue(groups.queue_of, event.group)
    if final_queue is None:
        _fail(
            DeadLetterReason.UNKNOWN_GROUP,
            f"{event.source}: group {event.group.shown()} of ticket {shown(event.ticket_id)} "
            "maps to no queue; add it to the group map",
            source=event.source,
        )
    previous_queue = _queue(groups.queue_of, event.previous_group) if event.previous_group else None
    outcome = event.outcome
    if outcome is FeedbackOutcome.REASSIGNED and previous_queue == final_queue:
        # Two groups of one queue: the ticket stayed in the queue.
        outcome = FeedbackOutcome.CONFIRMED
    return Feedback(
        ticket_id=event.ticket_id,
        final_queue=final_queue,
        previous_queue=previous_queue,
        outcome=outcome,
        actor=event.actor,
        occurred_at=event.occurred_at,
        source=event.source,
        final_group=event.group.audit_text(),
        previous_group=event.previous_group.audit_text() if event.previous_group else None,
        event_id=event.event_id,
    )


def _queue(lookup: Any, group: GroupRef) -> str | None:
    queue: str | None = lookup(group.id, group.name)
    return queue


def _describe(exc: ValidationError, source: SourceSystem) -> str:
    errors = exc.errors(include_url=False, include_context=False)
    parts = []
    for error in errors[:_MAX_ERRORS_SHOWN]:
        path = ".".join([source.value, *(str(p) for p in error["loc"])])
        if len(path) > 120:
            path = f"{path[:60]}…{path[-60:]}"
        text = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if error["type"] != "missing" and not isinstance(value, dict | list):
            text = f"{text}, got {shown(value)}"
        parts.append(f"{path}: {text}")
    if len(errors) > _MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - _MAX_ERRORS_SHOWN} more")
    return "; ".join(parts)


def _fail(
    reason: DeadLetterReason, message: str, *, source: SourceSystem | None = None
) -> NoReturn:
    raise FeedbackParseError(reason, message, source)
