"""The canonical inbound ticket, and the entry point that turns any ITSM payload into one.

Owns the `Ticket` contract and its validation rules. The per-system mapping lives in
`schemas.itsm`; this module does no I/O.

Oversize rule: `subject` keeps at most `MAX_SUBJECT_CHARS` characters and `body` at most
`MAX_BODY_CHARS`; longer text is cut and ends with `TRUNCATION_MARKER`, and
`truncated` is set. A long ticket is routed on its beginning, never rejected for length.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    model_validator,
)

MAX_SUBJECT_CHARS = 500
MAX_BODY_CHARS = 16_000
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


def _strip_nul(text: str) -> str:
    return text.replace("\x00", "")


def _truncate(limit: int) -> AfterValidator:
    def cut(text: str) -> str:
        if len(text) <= limit:
            return text
        return text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER

    return AfterValidator(cut)


Subject = Annotated[str, AfterValidator(_strip_nul), _truncate(MAX_SUBJECT_CHARS)]
Body = Annotated[str, AfterValidator(_strip_nul), _truncate(MAX_BODY_CHARS)]


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
    created_at: AwareDatetime
    subject: Subject = Field(min_length=1)
    body: Body = ""
    requester: str | None = Field(default=None, max_length=256)
    priority: Priority | None = None
    impact: Level | None = None
    urgency: Level | None = None
    category_hints: tuple[str, ...] = Field(default=(), max_length=64)
    custom_fields: dict[str, JsonValue] = Field(default_factory=dict)
    truncated: bool = False

    @model_validator(mode="before")
    @classmethod
    def _flag_truncation(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("truncated"):
            subject, body = data.get("subject"), data.get("body")
            too_long = (isinstance(subject, str) and len(subject.strip()) > MAX_SUBJECT_CHARS) or (
                isinstance(body, str) and len(body.strip()) > MAX_BODY_CHARS
            )
            if too_long:
                data = {**data, "truncated": True}
        return data

    @model_validator(mode="after")
    def _created_at_is_plausible(self) -> Self:
        if self.created_at.year < 1990:
            raise ValueError("created_at: before 1990, not a real ticket time")
        return self

    def text(self) -> str:
        """The text the router classifies: subject, then body, on one line each."""
        return f"{self.subject}\n{self.body}".strip()

