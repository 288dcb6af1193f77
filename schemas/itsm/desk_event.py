"""What an ITSM update says about a ticket's group, before groups are mapped to queues.

Owns `DeskEvent`, the common result of the update adapters (`servicenow_update`,
`jira_update`, `zendesk_update`), and `GroupRef`. Mapping groups to queues and building
the `Feedback` belong to `schemas.feedback_parse`. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.feedback import FeedbackOutcome
from schemas.itsm.normalise import shown
from schemas.ticket import SourceSystem


@dataclass(frozen=True, slots=True)
class GroupRef:
    """A group as the tool names it: its id, its display name, or both."""

    id: str | None = None
    name: str | None = None

    @classmethod
    def of(cls, group_id: object = None, name: object = None) -> GroupRef | None:
        """A reference from raw values (numbers become text); None when both are empty."""
        gid = _text(group_id)
        label = _text(name)
        return None if gid is None and label is None else cls(gid, label)

    def shown(self) -> str:
        """For messages: name and id, each cut short."""
        if self.name and self.id:
            return f"{shown(self.name)} (id {shown(self.id)})"
        return shown(self.name or self.id)

    def same_as(self, other: GroupRef | None) -> bool:
        """True when both name the same group (ids compared when both have one)."""
        if other is None:
            return False
        if self.id and other.id:
            return self.id == other.id
        mine, theirs = self.name or self.id, other.name or other.id
        return mine is not None and theirs is not None and mine.casefold() == theirs.casefold()

    def audit_text(self) -> str:
        """The group as stored with the feedback: its name, else its id."""
        return (self.name or self.id or "")[:256]


def _text(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    return None


@dataclass(frozen=True, slots=True)
class DeskEvent:
    """One update of a ticket, reduced to what matters for routing feedback.

    Attributes:
        ticket_id: the ticket's id as the router saw it (`Ticket.id`).
        source: the ITSM tool.
        outcome: what the update means, or None when it says nothing about the queue
            (a comment, a priority change, a status the router does not learn from).
        group: the ticket's group after the update.
        previous_group: its group before, when the update carries it.
        actors: the acting user's identifiers, most readable first (checked against the
            group map's `ignore_actors`; the first one is stored).
        occurred_at: when the tool recorded the update.
        event_id: the tool's id of the update, when it has one.
    """

    ticket_id: str
    source: SourceSystem
    outcome: FeedbackOutcome | None
    group: GroupRef | None
    previous_group: GroupRef | None
    actors: tuple[str, ...]
    occurred_at: datetime
    event_id: str | None = None

    @property
    def actor(self) -> str | None:
        """The identifier stored as the feedback's actor."""
        return self.actors[0][:256] if self.actors else None


def actor_ids(*values: object) -> tuple[str, ...]:
    """The non-empty identifiers among `values`, as text, in order."""
    return tuple(text for v in values if (text := _text(v)) is not None)
