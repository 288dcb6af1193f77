"""Jira Service Management issue webhooks: the payload model and its mapping to `Ticket`.

Accepts the body Jira posts for an issue event (`{"webhookEvent": "jira:issue_created",
"issue": {"key", "fields": {...}}}`). `fields.description` may be plain text (Jira Server/
Data Center, REST v2) or an Atlassian Document Format document (Jira Cloud, REST v3); the
text of an ADF document is extracted without recursion, whatever its depth. No I/O.

Mapping: id = `issue.key`, subject = `fields.summary`, body = description text, requester
= reporter's email, else display name, else account id, created_at = `fields.created`,
category_hints = issue type, components, labels; priority per `schemas.itsm.normalise`
(an unknown priority name maps to None and is kept as `custom_fields["priority.name"]`).
Unknown keys of `fields` go to `custom_fields` unchanged (`customfield_10010`, `status`,
...); unknown keys of `issue` and of the envelope go there as `issue.<key>` and
`webhook.<key>`, and the event name as `webhookEvent`. The issue type and the component
names are also kept as `custom_fields["issuetype"]` / `["components"]`, so that an expert
can read them as fields.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from schemas.itsm import normalise
from schemas.ticket import SourceSystem, Ticket

# ADF nodes whose inline content ends a line of text. Containers (lists, panels, quotes)
# hold paragraphs, which end their own lines.
_LINE_NODES = frozenset({"paragraph", "heading", "codeBlock", "decisionItem", "taskItem"})
# Inline ADF nodes without `text`, and the attribute that carries their visible text.
_INLINE_ATTR = {"mention": "text", "emoji": "text", "status": "text", "inlineCard": "url"}
_SPACES_BEFORE_NEWLINE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def _inline_text(kind: str, node: dict[str, Any]) -> str | None:
    if kind == "text":
        text = node.get("text")
        return text if isinstance(text, str) else None
    if kind == "hardBreak":
        return "\n"
    attrs = node.get("attrs")
    if kind in _INLINE_ATTR and isinstance(attrs, dict):
        value = attrs.get(_INLINE_ATTR[kind]) or attrs.get("shortName")
        return value if isinstance(value, str) else None
    return None


def adf_text(doc: dict[str, Any]) -> str:
    """The plain text of an Atlassian Document Format document.

    Walks the tree with an explicit stack, so nesting depth cannot exhaust the Python stack.
    Nodes of unknown types contribute their children's text; malformed nodes are skipped.
    """
    parts: list[str] = []
    stack: list[object] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):  # a separator pushed after a block's children
            parts.append(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if not isinstance(kind, str):
            kind = ""
        inline = _inline_text(kind, node)
        if inline is not None:
            parts.append(inline)
        content = node.get("content")
        if isinstance(content, list):
            if kind in _LINE_NODES:
                stack.append("\n")
            elif kind in ("tableCell", "tableHeader"):
                stack.append(" ")
            stack.extend(reversed(content))
    text = _SPACES_BEFORE_NEWLINE.sub("\n", "".join(parts))
    return _BLANK_LINES.sub("\n\n", text).strip()


def _description_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if (
        isinstance(value, dict)
        and value.get("type") == "doc"
        and isinstance(value.get("content"), list)
    ):
        return adf_text(value)
    raise PydanticCustomError(
        "invalid_description",
        "invalid description {value}: expected a string or an Atlassian Document Format document",
        {"value": normalise.shown(value)},
    )


def _jira_time(value: object) -> datetime:
    return normalise.timestamp(value, naive_is_utc=False)


Description = Annotated[
    str,
    BeforeValidator(_description_text),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "description": "Atlassian Document Format",
                    "required": ["type", "content"],
                    "properties": {
                        "type": {"const": "doc"},
                        "version": {"type": "integer"},
                        "content": {"type": "array"},
                    },
                },
                {"type": "null"},
            ]
        }
    ),
]
JiraTime = Annotated[
    AwareDatetime,
    BeforeValidator(_jira_time),
    WithJsonSchema(
        {
            "type": "string",
            "examples": ["2026-11-27T09:14:03.000+0000"],
            "description": "ISO 8601 with a UTC offset",
        }
    ),
]


class JiraNamed(BaseModel):
    """A Jira object that matters by its name: priority, component, issue type."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str


class JiraUser(BaseModel):
    """A Jira user reference (reporter). Jira Cloud often hides the email address."""

    model_config = ConfigDict(frozen=True, extra="allow")

    display_name: str | None = Field(default=None, alias="displayName")
    email_address: str | None = Field(default=None, alias="emailAddress")
    account_id: str | None = Field(default=None, alias="accountId")

    def label(self) -> str | None:
        """Email, else display name, else account id; None when all are empty."""
        for value in (self.email_address, self.display_name, self.account_id):
            if value and value.strip():
                return value.strip()
        return None


class JiraFields(BaseModel):
    """The issue's `fields`; unknown ones (custom fields, status, ...) are kept."""

    model_config = ConfigDict(frozen=True, extra="allow")

    summary: str
    description: Description = ""
    priority: JiraNamed | None = None
    reporter: JiraUser | None = None
    created: JiraTime
    labels: list[str] = Field(default_factory=list)
    components: list[JiraNamed] = Field(default_factory=list)
    issuetype: JiraNamed | None = None


class JiraIssue(BaseModel):
    """The webhook's `issue`."""

    model_config = ConfigDict(frozen=True, extra="allow")

    key: str = Field(examples=["ITSM-42"])
    fields: JiraFields


class JiraWebhook(BaseModel):
    """A Jira issue webhook body."""

    model_config = ConfigDict(frozen=True, extra="allow", title="JiraWebhook")

    webhook_event: str | None = Field(
        default=None, alias="webhookEvent", examples=["jira:issue_created"]
    )
    issue: JiraIssue

    def _custom_fields(self) -> dict[str, JsonValue]:
        custom: dict[str, JsonValue] = {
            f"webhook.{key}": value for key, value in (self.model_extra or {}).items()
        }
        issue_extra = self.issue.model_extra or {}
        custom.update({f"issue.{key}": value for key, value in issue_extra.items()})
        custom.update(self.issue.fields.model_extra or {})
        if self.webhook_event is not None:
            custom["webhookEvent"] = self.webhook_event
        return custom

    def to_ticket(self) -> Ticket:
        """Map this webhook's issue to the canonical ticket.

        Raises:
            pydantic.ValidationError: the mapped values break a `Ticket` rule.
        """
        fields = self.issue.fields
        custom = self._custom_fields()
        priority = None
        if fields.priority is not None:
            priority = normalise.jira_priority(fields.priority.name)
            if priority is None:
                custom["priority.name"] = fields.priority.name
        hints = [fields.issuetype.name if fields.issuetype else None]
        hints += [component.name for component in fields.components]
        # Also kept by name, so that an expert can read them as fields.
        if fields.issuetype is not None:
            custom.setdefault("issuetype", fields.issuetype.name)
        if fields.components:
            custom.setdefault("components", [component.name for component in fields.components])
        hints += fields.labels
        return Ticket(
            id=self.issue.key,
            source=SourceSystem.JIRA,
            created_at=fields.created,
            subject=fields.summary,
            body=fields.description,
            requester=fields.reporter.label() if fields.reporter else None,
            priority=priority,
            category_hints=normalise.category_hints(hints),
            custom_fields=custom,
        )


# Where each Ticket field comes from, so that errors name the payload's field.
TICKET_FIELD_ORIGINS: dict[str, str] = {
    "id": "issue.key",
    "created_at": "issue.fields.created",
    "subject": "issue.fields.summary",
    "body": "issue.fields.description",
    "requester": "issue.fields.reporter",
    "category_hints": "issue.fields.labels",
}


def ticket_from_jira(payload: dict[str, Any]) -> Ticket:
    """Validate a Jira issue webhook body and map it.

    Raises:
        pydantic.ValidationError: wrong type or value in a field the router uses.
    """
    return JiraWebhook.model_validate(payload).to_ticket()


def payload_json_schema() -> dict[str, Any]:
    """JSON Schema of what `ticket_from_jira` accepts."""
    return JiraWebhook.model_json_schema()
