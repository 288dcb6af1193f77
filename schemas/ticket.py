"""The canonical inbound ticket: the one shape every ITSM payload is mapped to.

Owns the `Ticket` contract and its validation rules. The per-system mapping lives in
`schemas.itsm` and the bytes-to-ticket entry point in `schemas.parse`; no I/O here.

Oversize rule: `subject` keeps at most `MAX_SUBJECT_CHARS` characters and `body` at most
`MAX_BODY_CHARS`; longer text is cut and ends with `TRUNCATION_MARKER`, and
`truncated` is set. A long ticket is routed on its beginning, never rejected for length.
Each category hint keeps at most `MAX_HINT_CHARS` characters (cut the same way, without
setting `truncated`). Text fields lose NUL characters and surrounding whitespace.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    model_validator,
)

from schemas.email_text import strip_email_noise

MAX_SUBJECT_CHARS = 500
MAX_BODY_CHARS = 16_000
MAX_HINT_CHARS = 200
MAX_CATEGORY_HINTS = 64
TRUNCATION_MARKER = " …[truncated]"


class SourceSystem(StrEnum):
    """The ITSM tool a ticket came from."""

    SERVICENOW = "servicenow"
    JIRA = "jira"
    ZENDESK = "zendesk"
    CANONICAL = "canonical"


class Priority(StrEnum):
    """Normalised priority, P1 most urgent."""

    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"
    P5 = "P5"


class Level(StrEnum):
    """Normalised impact/urgency."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


def _clean(text: str) -> str:
    # NUL breaks C-string consumers downstream; strip again after removing it so that a
    # validated text validates to itself (round-trip stability).
    return text.replace("\x00", "").strip()


def _not_blank(text: str) -> str:
    if not text:
        raise ValueError("must contain visible text")
    return text


def _truncate(limit: int) -> AfterValidator:
    def cut(text: str) -> str:
        if len(text) <= limit:
            return text
        return text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER

    return AfterValidator(cut)


def _plausible_time(value: datetime) -> datetime:
    if value.year < 1990:
        raise ValueError("before 1990, not a real ticket time")
    return value


def _is_oversize(value: object, limit: int) -> bool:
    return isinstance(value, str) and len(_clean(value)) > limit


Subject = Annotated[
    str, AfterValidator(_clean), AfterValidator(_not_blank), _truncate(MAX_SUBJECT_CHARS)
]
Body = Annotated[str, AfterValidator(_clean), _truncate(MAX_BODY_CHARS)]
# Hints are cut silently: they are hints, and do not set `truncated`.
Hint = Annotated[str, AfterValidator(_clean), _truncate(MAX_HINT_CHARS)]


class Ticket(BaseModel):
    """A support ticket in the router's canonical form.

    Attributes:
        id: the source system's ticket number or key (e.g. INC0012345, ITSM-42, 81723).
        source: which ITSM tool produced it.
        created_at: when the ticket was opened, timezone-aware.
        subject: the short description / summary / subject line.
        body: the full description; may be empty.
        requester: who raised it (user id, email or name as the source gives it).
        priority: normalised priority, when the source has one.
        impact: normalised impact, when the source has one.
        urgency: normalised urgency, when the source has one.
        category_hints: the source's own category, assignment group or tags; hints only,
            never trusted as the answer.
        custom_fields: any other fields the connector passes through, unvalidated JSON.
        truncated: True when subject or body was cut by the oversize rule.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=128)
    source: SourceSystem = SourceSystem.CANONICAL
    created_at: Annotated[AwareDatetime, AfterValidator(_plausible_time)]
    subject: Subject = Field(min_length=1)
    body: Body = ""
    requester: str | None = Field(default=None, max_length=256)
    priority: Priority | None = None
    impact: Level | None = None
    urgency: Level | None = None
    category_hints: tuple[Hint, ...] = Field(default=(), max_length=MAX_CATEGORY_HINTS)
    custom_fields: dict[str, JsonValue] = Field(default_factory=dict)
    truncated: bool = False

    @model_validator(mode="before")
    @classmethod
    def _flag_truncation(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("truncated"):
            too_long = _is_oversize(data.get("subject"), MAX_SUBJECT_CHARS) or _is_oversize(
                data.get("body"), MAX_BODY_CHARS
            )
            if too_long:
                data = {**data, "truncated": True}
        return data

    def text(self) -> str:
        """The text the router classifies: the subject, then the body without its email
        noise (quoted replies, forwarded headers, signatures: `strip_email_noise`).

        The ticket itself keeps its raw body; only what the expert reads is cleaned.
        """
        return f"{self.subject}\n{strip_email_noise(self.body)}".strip()
