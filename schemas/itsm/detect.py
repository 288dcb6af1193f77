"""Which format a decoded payload is in, judged only by the keys it has.

Owns the detection rules; it validates nothing (the adapters do) and does no I/O. Rules,
checked in this order, first match wins:

1. Jira webhook: `issue` is an object with `key` and `fields`.
2. ServiceNow incident: `short_description` with `sys_id` or `number`, bare or inside the
   Table API's `{"result": {...}}` envelope.
3. Zendesk ticket: a `{"ticket": {...}}` envelope, or `subject` with `requester_id`.
4. Canonical ticket: `id`, `subject` and `created_at` (`source` is optional: a canonical
   ticket serialised without defaults omits it).
"""

from __future__ import annotations

from typing import Any

from schemas.ticket import SourceSystem

_CANONICAL_KEYS = frozenset({"id", "subject", "created_at"})


def _is_servicenow_record(payload: dict[str, Any]) -> bool:
    return "short_description" in payload and ("sys_id" in payload or "number" in payload)


def detect_source(payload: dict[str, Any]) -> SourceSystem | None:
    """The source system whose payload shape `payload` has, or None if none matches."""
    issue = payload.get("issue")
    if isinstance(issue, dict) and "key" in issue and "fields" in issue:
        return SourceSystem.JIRA
    result = payload.get("result")
    if _is_servicenow_record(payload) or (
        isinstance(result, dict) and _is_servicenow_record(result)
    ):
        return SourceSystem.SERVICENOW
    if isinstance(payload.get("ticket"), dict) or (
        "subject" in payload and "requester_id" in payload
    ):
        return SourceSystem.ZENDESK
    if payload.keys() >= _CANONICAL_KEYS:
        return SourceSystem.CANONICAL
    return None
