"""Source vocabularies to canonical values: priority, impact/urgency, timestamps, hints.

Owns the documented maps below and the parsing of each ITSM tool's field values. It knows
nothing about payload shapes (that is each adapter's job) and does no I/O. Every failure is
a `PydanticCustomError`, so that pydantic reports it at the field that carried the value.

Priority (canonical P1 most urgent):

| ServiceNow `priority`  | Jira `priority.name`           | Zendesk `priority` | Ticket |
|------------------------|--------------------------------|--------------------|--------|
| 1, "1 - Critical"      | Highest, Blocker, "P1 ..."     | urgent             | P1     |
| 2, "2 - High"          | High, Critical, "P2 ..."       | high               | P2     |
| 3, "3 - Moderate"      | Medium, Major, "P3 ..."        | normal             | P3     |
| 4, "4 - Low"           | Low, Minor, "P4 ..."           | low                | P4     |
| 5, "5 - Planning"      | Lowest, Trivial, "P5 ..."      | -                  | P5     |

Jira priority schemes are configurable per site, so an unknown Jira name maps to no
priority (None) instead of an error. ServiceNow and Zendesk have fixed scales: a value
outside them is an error. An empty value ("" or null) means no priority.

Impact and urgency (ServiceNow only; Jira and Zendesk have no standard field):
1 / "1 - High" -> high, 2 / "2 - Medium" -> medium, 3 / "3 - Low" -> low.

Timestamps: ISO 8601 with a UTC offset ("2026-11-27T09:14:03Z",
"2026-11-27T09:14:03.000+0000"). ServiceNow's Table API writes "2026-11-27 09:14:03"
without an offset and means UTC, so naive ServiceNow times are read as UTC; a naive time
from any other source is an error, because guessing its zone would skew latencies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic_core import PydanticCustomError

from schemas.ticket import MAX_CATEGORY_HINTS, Level, Priority

SERVICENOW_PRIORITY: dict[int, Priority] = {
    1: Priority.P1,  # 1 - Critical
    2: Priority.P2,  # 2 - High
    3: Priority.P3,  # 3 - Moderate
    4: Priority.P4,  # 4 - Low
    5: Priority.P5,  # 5 - Planning
}
SERVICENOW_PRIORITY_LABELS: dict[str, Priority] = {
    "critical": Priority.P1,
    "high": Priority.P2,
    "moderate": Priority.P3,
    "low": Priority.P4,
    "planning": Priority.P5,
}
SERVICENOW_LEVEL: dict[int, Level] = {1: Level.HIGH, 2: Level.MEDIUM, 3: Level.LOW}
SERVICENOW_LEVEL_LABELS: dict[str, Level] = {
    "high": Level.HIGH,
    "medium": Level.MEDIUM,
    "low": Level.LOW,
}
JIRA_PRIORITY: dict[str, Priority] = {
    "highest": Priority.P1,
    "blocker": Priority.P1,
    "high": Priority.P2,
    "critical": Priority.P2,
    "medium": Priority.P3,
    "major": Priority.P3,
    "low": Priority.P4,
    "minor": Priority.P4,
    "lowest": Priority.P5,
    "trivial": Priority.P5,
}
ZENDESK_PRIORITY: dict[str, Priority] = {
    "urgent": Priority.P1,
    "high": Priority.P2,
    "normal": Priority.P3,
    "low": Priority.P4,
}

_MAX_SHOWN_CHARS = 60
# "1", "1 - Critical", "2-High": a leading number, then an optional " - label".
_NUMBERED = re.compile(r"\s*(\d{1,3})\s*(?:-.*)?", re.DOTALL)
_P_NAME = re.compile(r"\s*[Pp]([1-5])\b.*", re.DOTALL)


def shown(value: object) -> str:
    """A short repr of `value` for error messages (long strings are cut)."""
    if isinstance(value, datetime):
        return repr(value.isoformat())
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str) and len(value) > _MAX_SHOWN_CHARS:
        return repr(value[:_MAX_SHOWN_CHARS]) + "…"
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS] + "…"


def _scale_key(value: object, *, kind: str, expected: str) -> int | str | None:
    """The number or lower-cased label a ServiceNow choice value carries, None if empty."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError(
            f"invalid_{kind}",
            "invalid {kind} {value}: expected {expected}",
            {"kind": kind, "value": shown(value), "expected": expected},
        )
    text = value.strip()
    if not text:
        return None
    numbered = _NUMBERED.fullmatch(text)
    return int(numbered.group(1)) if numbered else text.lower()


def servicenow_priority(value: object) -> Priority | None:
    """ServiceNow `priority` ("1".."5", "1 - Critical", 1..5, "Critical") to P1..P5."""
    expected = "1..5 or a label such as '1 - Critical'"
    key = _scale_key(value, kind="priority", expected=expected)
    if key is None:
        return None
    if isinstance(key, int):
        found = SERVICENOW_PRIORITY.get(key)
    else:
        found = SERVICENOW_PRIORITY_LABELS.get(key)
    if found is None:
        raise PydanticCustomError(
            "invalid_priority",
            "invalid priority {value}: expected {expected}",
            {"value": shown(value), "expected": expected},
        )
    return found


def servicenow_level(value: object) -> Level | None:
    """ServiceNow `impact` / `urgency` ("1".."3", "1 - High", 1..3) to high/medium/low."""
    expected = "1..3 or a label such as '1 - High'"
    key = _scale_key(value, kind="level", expected=expected)
    if key is None:
        return None
    found = SERVICENOW_LEVEL.get(key) if isinstance(key, int) else SERVICENOW_LEVEL_LABELS.get(key)
    if found is None:
        raise PydanticCustomError(
            "invalid_level",
            "invalid level {value}: expected {expected}",
            {"value": shown(value), "expected": expected},
        )
    return found


def jira_priority(name: str) -> Priority | None:
    """A Jira priority name to P1..P5; None for a name outside the known schemes."""
    numbered = _P_NAME.fullmatch(name)
    if numbered:
        return Priority(f"P{numbered.group(1)}")
    return JIRA_PRIORITY.get(name.strip().lower())


def zendesk_priority(value: object) -> Priority | None:
    """Zendesk `priority` (urgent/high/normal/low, or null) to P1..P4."""
    if value is None or value == "":
        return None
    found = ZENDESK_PRIORITY.get(value.strip().lower()) if isinstance(value, str) else None
    if found is None:
        raise PydanticCustomError(
            "invalid_priority",
            "invalid priority {value}: expected one of urgent, high, normal, low or null",
            {"value": shown(value)},
        )
    return found


def timestamp(value: object, *, naive_is_utc: bool) -> datetime:
    """An ISO 8601 (or ServiceNow "YYYY-MM-DD HH:MM:SS") string to an aware datetime.

    Args:
        value: the raw field value.
        naive_is_utc: read a time without a UTC offset as UTC instead of rejecting it.

    Returns:
        A timezone-aware datetime, with the offset the source gave.

    Raises:
        PydanticCustomError: not a string, not a datetime, or naive where not allowed.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise PydanticCustomError(
                "invalid_datetime", "invalid datetime {value}", {"value": shown(value)}
            ) from None
    else:
        raise PydanticCustomError(
            "invalid_datetime",
            "invalid datetime {value}: expected an ISO 8601 string",
            {"value": shown(value)},
        )
    if parsed.utcoffset() is None:
        if not naive_is_utc:
            raise PydanticCustomError(
                "invalid_datetime",
                "invalid datetime {value}: no UTC offset",
                {"value": shown(value)},
            )
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def category_hints(values: Iterable[str | None]) -> tuple[str, ...]:
    """The non-empty values, stripped, deduplicated ignoring case, at most `MAX_CATEGORY_HINTS`.

    The first spelling of a value is kept, in order.
    """
    seen: dict[str, str] = {}
    for value in values:
        text = (value or "").strip()
        if text:
            seen.setdefault(text.casefold(), text)
            if len(seen) == MAX_CATEGORY_HINTS:
                break
    return tuple(seen.values())
