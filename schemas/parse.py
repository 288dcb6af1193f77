"""The parse entry point: raw record bytes to a `Ticket`, or one error that says why.

Owns decoding (UTF-8, strict RFC 8259 JSON), dispatch to the format's adapter, and the
classification of every failure into a `TicketParseError` with a `DeadLetterReason`.
It never raises anything else for any input bytes, so a poison record can always be
dead-lettered. No I/O; the mapping itself lives in `schemas.itsm`.

Reasons: bytes that are not UTF-8, not JSON, or not a JSON object -> undecodable; a JSON
object no adapter recognises -> unknown_format; a recognised payload with a wrong type or
value in a field the router uses -> invalid. Messages name the field, prefixed with the
format ("servicenow.opened_at: invalid datetime '2026-13-45'"), and are short enough for
the dead-letter envelope.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from schemas.dead_letter import DeadLetterReason
from schemas.itsm import ADAPTERS, Adapter
from schemas.itsm.detect import detect_source
from schemas.itsm.normalise import shown
from schemas.ticket import SourceSystem, Ticket

MAX_MESSAGE_CHARS = 1_000
_MAX_ERRORS_SHOWN = 3
_MAX_PATH_CHARS = 120
_MAX_KEYS_SHOWN = 8
# Lone surrogates can only come from \uD800-\uDFFF escapes; json.loads joins valid pairs.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class TicketParseError(ValueError):
    """A record that cannot become a `Ticket`.

    Attributes:
        reason: the dead-letter reason class.
        message: what is wrong, naming the field at fault.
    """

    def __init__(self, reason: DeadLetterReason, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[TicketParseError], tuple[DeadLetterReason, str]]:
        return (type(self), (self.reason, self.message))


def parse_ticket(raw: bytes, *, source_format: SourceSystem | None = None) -> Ticket:
    """Decode a record value and map it to the canonical ticket.

    Args:
        raw: the record value as received.
        source_format: the payload's format; detected from its keys when None.

    Returns:
        The validated ticket.

    Raises:
        TicketParseError: for any input that is not a valid ticket payload, and only that.
    """
    return ticket_from_payload(decode_payload(raw), source_format=source_format)


def decode_payload(raw: bytes) -> dict[str, Any]:
    """Decode UTF-8 JSON bytes (a leading BOM is allowed) into a JSON object.

    Lone UTF-16 surrogates escaped in strings (`"\\ud800"`) become U+FFFD, because no
    UTF-8 encoder can write them back out.

    Raises:
        TicketParseError: reason undecodable.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        _fail(DeadLetterReason.UNDECODABLE, f"expected bytes, got {type(raw).__name__}")
    try:
        text = bytes(raw).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        _fail(DeadLetterReason.UNDECODABLE, f"not UTF-8: invalid byte at offset {exc.start}", exc)
    try:
        payload = json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        _fail(DeadLetterReason.UNDECODABLE, "not JSON: nested too deeply", exc)
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers over 4300 digits
        _fail(DeadLetterReason.UNDECODABLE, f"not JSON: {exc}", exc)
    if not isinstance(payload, dict):
        _fail(DeadLetterReason.UNDECODABLE, f"not a JSON object: got {_json_kind(payload)}")
    if _SURROGATE_ESCAPE.search(text):
        _replace_lone_surrogates(payload)
    return payload


def ticket_from_payload(payload: object, *, source_format: SourceSystem | None = None) -> Ticket:
    """Map a decoded JSON object to the canonical ticket.

    Args:
        payload: the decoded JSON value.
        source_format: the payload's format; detected from its keys when None.

    Returns:
        The validated ticket.

    Raises:
        TicketParseError: not an object (undecodable), no format matches (unknown_format),
            or the payload breaks its format's rules (invalid).
    """
    if not isinstance(payload, dict):
        _fail(DeadLetterReason.UNDECODABLE, f"not a JSON object: got {_json_kind(payload)}")
    source = source_format or detect_source(payload)
    if source is None:
        _fail(
            DeadLetterReason.UNKNOWN_FORMAT,
            "unknown format: not a ServiceNow, Jira, Zendesk or canonical ticket; "
            f"top-level keys: {_keys(payload)}",
        )
    adapter = ADAPTERS[source]
    try:
        return adapter.to_ticket(payload)
    except ValidationError as exc:
        message = describe_validation_error(exc, adapter=adapter, payload=payload)
        _fail(DeadLetterReason.INVALID, message, exc)
    except RecursionError as exc:
        _fail(DeadLetterReason.INVALID, f"{source}: nested too deeply", exc)


def describe_validation_error(
    exc: ValidationError, *, adapter: Adapter, payload: dict[str, Any]
) -> str:
    """A one-line message naming each field at fault in the payload's own terms.

    Args:
        exc: the adapter's validation error (of its payload model or of `Ticket`).
        adapter: the format that was being read.
        payload: the decoded payload, to locate mapped fields inside an envelope.
    """
    errors = exc.errors(include_url=False, include_context=False)
    # A Ticket rule broken by a mapped value is reported at the payload field it came from.
    from_ticket = exc.title == Ticket.__name__ and adapter.source is not SourceSystem.CANONICAL
    parts = []
    for error in errors[:_MAX_ERRORS_SHOWN]:
        loc = [str(part) for part in error["loc"]]
        if from_ticket and loc:
            loc[0] = adapter.origin_of(loc[0], payload)
        path = _shorten(".".join([adapter.source.value, *loc]))
        parts.append(f"{path}: {_error_text(error)}")
    if len(errors) > _MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - _MAX_ERRORS_SHOWN} more")
    return "; ".join(parts)


def _error_text(error: ErrorDetails) -> str:
    kind = error["type"]
    text = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    # Our own errors (invalid_*) already show the value; "missing" has none to show.
    if kind == "missing" or kind.startswith("invalid_") or isinstance(value, dict | list):
        return text
    return f"{text}, got {shown(value)}"


def _fail(reason: DeadLetterReason, message: str, cause: BaseException | None = None) -> NoReturn:
    raise TicketParseError(reason, message) from cause


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _keys(payload: dict[str, Any]) -> str:
    keys = [shown(key) for key in list(payload)[:_MAX_KEYS_SHOWN]]
    more = len(payload) - len(keys)
    return "[" + ", ".join(keys) + (f", … {more} more" if more else "") + "]"


def _shorten(path: str) -> str:
    if len(path) <= _MAX_PATH_CHARS:
        return path
    half = _MAX_PATH_CHARS // 2
    return f"{path[:half]}…{path[-half:]}"


def _replace_lone_surrogates(payload: dict[str, Any]) -> None:
    """Replace lone surrogates in every key and string, in place, without recursion."""
    stack: list[dict[str, Any] | list[Any]] = [payload]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
            node.clear()
            for key, value in items:
                node[_LONE_SURROGATE.sub("\ufffd", key)] = _fixed(value, stack)
        else:
            for index, value in enumerate(node):
                node[index] = _fixed(value, stack)


def _fixed(value: Any, stack: list[dict[str, Any] | list[Any]]) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict | list):
        stack.append(value)
    return value
