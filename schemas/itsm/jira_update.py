"""Jira Service Management `jira:issue_updated` webhooks: what the changelog says of the team.

Accepts the body Jira posts when an issue changes: `{"webhookEvent": "jira:issue_updated",
"timestamp": <epoch ms>, "user": {...}, "issue": {"key", "fields": {...}}, "changelog":
{"id", "items": [{"field", "fieldId", "from", "fromString", "to", "toString"}]}}`.
JSM queues are saved filters, not an assignment, so the resolver team lives in a field the
site chooses (the Atlassian `Team` field, a group picker, a select list): the group map's
`jira.team_fields` names it (by `field` name or `fieldId`). No I/O.

Reading:

- a changelog item of a team field with a new value -> reassigned (group = `to` /
  `toString`, previous = `from` / `fromString`);
- else a `status` item while the issue's status category is `done`, or a `resolution`
  item that sets one -> resolved, in the team the issue's team field holds;
- else a `status` item while the category is `indeterminate` (in progress) -> confirmed,
  in that team;
- anything else says nothing about the queue (also a resolution without a known team).

Actor = `user` (email, else display name, else account id; all are checked against
`ignore_actors`); occurred_at = `timestamp`; ticket id = `issue.key`; event id =
`changelog.id`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.feedback import FeedbackOutcome
from schemas.group_map import SourceGroups
from schemas.itsm.desk_event import DeskEvent, GroupRef, actor_ids
from schemas.itsm.jira import JiraUser
from schemas.ticket import SourceSystem

UPDATED_EVENT = "jira:issue_updated"
# Jira's epoch-millisecond timestamps: 1990-01-01 .. 2200-01-01.
_MIN_EPOCH_MS = 631_152_000_000
_MAX_EPOCH_MS = 7_258_118_400_000


class JiraChangeItem(BaseModel):
    """One changed field of a changelog."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    field: str
    field_id: str | None = Field(default=None, alias="fieldId")
    fieldtype: str | None = None
    from_value: str | None = Field(default=None, alias="from")
    from_string: str | None = Field(default=None, alias="fromString")
    to_value: str | None = Field(default=None, alias="to")
    to_string: str | None = Field(default=None, alias="toString")


class JiraChangelog(BaseModel):
    """The webhook's changelog: what this update changed."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: str | None = None
    items: list[JiraChangeItem] = Field(max_length=1000)


class JiraStatusCategory(BaseModel):
    """A status's category: `new`, `indeterminate` (in progress) or `done`."""

    model_config = ConfigDict(frozen=True, extra="allow")

    key: str | None = None


class JiraStatus(BaseModel):
    """The issue's status after the update."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    name: str | None = None
    category: JiraStatusCategory | None = Field(default=None, alias="statusCategory")


class JiraUpdatedFields(BaseModel):
    """The issue's fields after the update; only `status` and the team fields are read."""

    model_config = ConfigDict(frozen=True, extra="allow")

    status: JiraStatus | None = None


class JiraUpdatedIssue(BaseModel):
    """The webhook's `issue`."""

    model_config = ConfigDict(frozen=True, extra="allow")

    key: str = Field(min_length=1, examples=["ITSM-42"])
    fields: JiraUpdatedFields = JiraUpdatedFields()


class JiraIssueUpdated(BaseModel):
    """A `jira:issue_updated` webhook body."""

    model_config = ConfigDict(frozen=True, extra="allow", title="JiraIssueUpdated")

    webhook_event: str = Field(alias="webhookEvent", examples=[UPDATED_EVENT])
    timestamp: int = Field(ge=_MIN_EPOCH_MS, le=_MAX_EPOCH_MS, examples=[1795774443000])
    user: JiraUser | None = None
    issue: JiraUpdatedIssue
    changelog: JiraChangelog

    @field_validator("webhook_event")
    @classmethod
    def _is_an_update(cls, value: str) -> str:
        if value != UPDATED_EVENT:
            raise ValueError(f"expected {UPDATED_EVENT!r}")
        return value

    def _current_team(self, teams: SourceGroups) -> GroupRef | None:
        fields = self.issue.fields.model_extra or {}
        for name in teams.team_fields:
            value = fields.get(name)
            if isinstance(value, dict):
                label = value.get("name") or value.get("title") or value.get("value")
                ref = GroupRef.of(value.get("id"), label)
            else:
                ref = GroupRef.of(None, value)
            if ref is not None:
                return ref
        return None

    def _outcome(self, teams: SourceGroups) -> tuple[FeedbackOutcome | None, GroupRef | None]:
        category = self.issue.fields.status.category if self.issue.fields.status else None
        category_key = (category.key or "").casefold() if category else ""
        status_changed = resolution_set = False
        for item in self.changelog.items:
            if teams.is_team_field(item.field, item.field_id):
                group = GroupRef.of(item.to_value, item.to_string)
                if group is not None:
                    return FeedbackOutcome.REASSIGNED, group
            elif item.field.casefold() == "status":
                status_changed = True
            elif item.field.casefold() == "resolution" and (item.to_value or item.to_string):
                resolution_set = True
        if resolution_set or (status_changed and category_key == "done"):
            return FeedbackOutcome.RESOLVED, self._current_team(teams)
        if status_changed and category_key == "indeterminate":
            return FeedbackOutcome.CONFIRMED, self._current_team(teams)
        return None, self._current_team(teams)

    def to_event(self, teams: SourceGroups) -> DeskEvent:
        """What this update says about the issue's team.

        Args:
            teams: the group map's Jira section (which fields hold the team).
        """
        outcome, group = self._outcome(teams)
        previous = None
        if outcome is FeedbackOutcome.REASSIGNED:
            item = next(i for i in self.changelog.items if teams.is_team_field(i.field, i.field_id))
            previous = GroupRef.of(item.from_value, item.from_string)
        elif group is None:
            outcome = None  # resolved or started, but in no team we can name
        user = self.user
        return DeskEvent(
            ticket_id=self.issue.key.strip(),
            source=SourceSystem.JIRA,
            outcome=outcome,
            group=group,
            previous_group=previous,
            actors=actor_ids(
                user.email_address if user else None,
                user.display_name if user else None,
                user.account_id if user else None,
            ),
            occurred_at=datetime.fromtimestamp(self.timestamp / 1000, UTC),
            event_id=self.changelog.id,
        )


def is_update(payload: dict[str, Any]) -> bool:
    """True for an issue webhook that carries a changelog."""
    issue = payload.get("issue")
    return isinstance(issue, dict) and "key" in issue and "changelog" in payload


def event_from_jira(payload: dict[str, Any], teams: SourceGroups) -> DeskEvent:
    """Validate a `jira:issue_updated` body and reduce it to a `DeskEvent`.

    Raises:
        pydantic.ValidationError: wrong type or value in a field the router uses.
    """
    return JiraIssueUpdated.model_validate(payload).to_event(teams)


def payload_json_schema() -> dict[str, Any]:
    """JSON Schema of what `event_from_jira` accepts."""
    return JiraIssueUpdated.model_json_schema()
