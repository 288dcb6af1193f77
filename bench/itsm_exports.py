"""Ticket-history exports read into one shape: each incident's opening, resolution (or none:
still open when the export was taken), priority and the assignment groups it went through.

Owns the readers of the exports a service desk can produce, and the detection of which one a
file is:
- `servicenow-events`: a ServiceNow incident event log (one row per update of an incident,
  as the UCI "incident management process enriched event log"): the assignment group of
  every update, so the time of each handoff between groups is known;
- `servicenow`: a ServiceNow incident list export (one row per incident: `number`,
  `opened_at`, `resolved_at`, `assignment_group`, `reassignment_count`, `priority`);
- `zendesk`: a Zendesk ticket export in JSON (the incremental export or a ticket list, with
  `include=metric_sets`: `created_at`, `group_id`, `priority`, `status` and the metric set's
  `solved_at`, `group_stations`, `initially_assigned_at`);
- `jira`: a Jira search result in JSON with `expand=changelog` (`fields.created`,
  `fields.resolutiondate`, `fields.priority`, and the group field's history in the
  changelog), so the time of each handoff is known as in the ServiceNow event log.

Only the event log and Jira's changelog carry handoff times; the one-row exports carry the
final group and a reassignment count. Reading is the only I/O here; nothing is fitted.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

MISSING = {"", "?", "null", "none", "nan"}
RESOLVED_STATES = {"resolved", "closed"}
DATE_FORMATS = (
    "%d-%m-%Y %H:%M",
    "%d-%m-%Y %H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S.%f%z",
    "%Y-%m-%dT%H:%M:%SZ",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
)


class ExportFormat(StrEnum):
    """The history exports the calibration reads."""

    SERVICENOW_EVENTS = "servicenow-events"
    SERVICENOW = "servicenow"
    ZENDESK = "zendesk"
    JIRA = "jira"


class ExportError(ValueError):
    """The file is not an export this module can read (the message says what is missing)."""


@dataclass(frozen=True, slots=True)
class Incident:
    """One ticket of the history.

    Attributes:
        number: the ticket's id in the ITSM tool.
        opened_at: when it was opened (UTC).
        resolved_at: when it was resolved; None when it was still open at the export's end
            (a censored observation, never a short ticket).
        priority: the tool's priority label ("3 - Moderate", "normal", ...).
        groups: the assignment groups in the order the ticket went through them, without
            repeats in a row; the last is the final (or, when open, the current) group.
        handoffs_at: when each group after the first took the ticket (len(groups) - 1
            times); None when the export has no assignment history.
        first_assigned_at: when the first group was set (None: unknown).
        reassignments: times the group changed (the export's count when it has no history).
        first_group_known: the export says which group was assigned first.
        censored_at: for an open ticket, the export's end.
    """

    number: str
    opened_at: datetime
    resolved_at: datetime | None
    priority: str
    groups: tuple[str, ...]
    handoffs_at: tuple[datetime, ...] | None
    first_assigned_at: datetime | None
    reassignments: int
    first_group_known: bool
    censored_at: datetime | None = None

    @property
    def is_resolved(self) -> bool:
        """False when the ticket was still open at the export's end."""
        return self.resolved_at is not None

    @property
    def end(self) -> datetime:
        """Resolution, or the export's end for an open ticket."""
        end = self.resolved_at or self.censored_at
        if end is None:
            raise ValueError(f"{self.number}: open ticket without a censoring time")
        return end

    @property
    def duration_h(self) -> float:
        """Hours from opening to resolution (to the export's end when open)."""
        return max(0.0, (self.end - self.opened_at).total_seconds() / 3600)

    @property
    def final_group(self) -> str:
        """The group that resolved it (the current group when open)."""
        return self.groups[-1]

    @property
    def first_right(self) -> bool:
        """The first group was the final one (without a first group: never reassigned)."""
        if self.first_group_known:
            return self.groups[0] == self.groups[-1]
        return self.reassignments == 0


@dataclass(frozen=True, slots=True)
class History:
    """Every incident of an export and when the export was taken.

    Attributes:
        incidents: the tickets, in order of opening.
        export_end: the export's end (the last timestamp in it, or as given): open tickets
            are censored there.
        source_format: which reader read it.
        has_handoff_times: the export records when each reassignment happened.
        skipped: rows or tickets that could not be used, by reason.
    """

    incidents: tuple[Incident, ...]
    export_end: datetime
    source_format: ExportFormat
    has_handoff_times: bool
    skipped: Mapping[str, int]


def parse_time(value: str | float | int | None) -> datetime | None:
    """A timestamp from an export (several date formats, or Unix seconds); None if missing.

    Naive times are taken as UTC: every duration is a difference of two times of the same
    export, so the desk's time zone cancels out.
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=UTC)
    text = value.strip()
    if text.lower() in MISSING:
        return None
    for fmt in DATE_FORMATS:
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ExportError(f"unreadable timestamp {text!r}") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _present(value: Any) -> bool:
    return value is not None and str(value).strip().lower() not in MISSING


def _dedupe(groups: Iterable[str]) -> list[str]:
    out: list[str] = []
    for g in groups:
        if not out or out[-1] != g:
            out.append(g)
    return out


def detect_format(path: Path) -> ExportFormat:
    """Which export `path` is, from its first bytes and columns.

    Raises:
        ExportError: none of the known exports.
    """
    with path.open(encoding="utf-8-sig") as f:
        head = f.read(65_536)
    stripped = head.lstrip()
    if stripped.startswith(("{", "[")):
        if '"changelog"' in head or '"issues"' in head or '"fields"' in head:
            return ExportFormat.JIRA
        if '"group_id"' in head or '"metric_set' in head or '"tickets"' in head:
            return ExportFormat.ZENDESK
        raise ExportError(f"{path}: JSON, but neither a Zendesk nor a Jira export")
    header = next(csv.reader([head.splitlines()[0] if head else ""]), [])
    columns = {c.strip().lower() for c in header}
    if {"number", "opened_at", "assignment_group"} <= columns:
        numbers = [row.get("number") for row in _csv_rows(path, limit=2000)]
        repeated = len(numbers) != len(set(numbers))
        return ExportFormat.SERVICENOW_EVENTS if repeated else ExportFormat.SERVICENOW
    raise ExportError(
        f"{path}: unknown export (columns {sorted(columns)[:12]}); expected a ServiceNow CSV"
        " (number, opened_at, assignment_group, ...), a Zendesk JSON or a Jira JSON export"
    )


def _csv_rows(path: Path, *, limit: int | None = None) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k.strip().lower(): (v or "").strip() for k, v in row.items() if k})
            if limit is not None and len(rows) >= limit:
                break
    return rows


def read_export(
    path: Path,
    *,
    fmt: ExportFormat | None = None,
    export_end: datetime | None = None,
    group_field: str | None = None,
) -> History:
    """Read a history export.

    Args:
        path: the file.
        fmt: its format (None: detected).
        export_end: when the export was taken (None: its last timestamp).
        group_field: Jira only: the field holding the assignment group (None: the first of
            "Assignment group", "Team", "Component/s" the issues have).

    Raises:
        ExportError: unreadable, or no usable incident.
    """
    fmt = fmt or detect_format(path)
    if fmt is ExportFormat.SERVICENOW_EVENTS:
        history = servicenow_events(_csv_rows(path), export_end=export_end)
    elif fmt is ExportFormat.SERVICENOW:
        history = servicenow_rows(_csv_rows(path), export_end=export_end)
    elif fmt is ExportFormat.ZENDESK:
        history = zendesk(_json_records(path), export_end=export_end)
    else:
        history = jira(_json_records(path), export_end=export_end, group_field=group_field)
    if not history.incidents:
        raise ExportError(f"{path}: no usable incident ({dict(history.skipped)})")
    return history


def _json_records(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8-sig").strip()
    if text.startswith("["):
        return list(json.loads(text))
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _finish(
    incidents: list[Incident],
    *,
    export_end: datetime | None,
    last_seen: datetime | None,
    fmt: ExportFormat,
    has_handoff_times: bool,
    skipped: Mapping[str, int],
) -> History:
    end = export_end or last_seen
    if end is None:
        raise ExportError("the export has no timestamp")
    done = [
        i if i.is_resolved else _with_censoring(i, end)
        for i in sorted(incidents, key=lambda i: (i.opened_at, i.number))
    ]
    return History(tuple(done), end, fmt, has_handoff_times, dict(skipped))


def _with_censoring(incident: Incident, end: datetime) -> Incident:
    return Incident(
        number=incident.number,
        opened_at=incident.opened_at,
        resolved_at=None,
        priority=incident.priority,
        groups=incident.groups,
        handoffs_at=incident.handoffs_at,
        first_assigned_at=incident.first_assigned_at,
        reassignments=incident.reassignments,
        first_group_known=incident.first_group_known,
        censored_at=max(end, incident.opened_at),
    )


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


# --- ServiceNow ------------------------------------------------------------------------


def servicenow_events(
    rows: Sequence[Mapping[str, str]], *, export_end: datetime | None = None
) -> History:
    """Incidents from a ServiceNow event log (many rows per incident, in update order).

    The resolution is the last row's `resolved_at`, else the first update that put the
    incident in a resolved or closed state; an incident with neither is open (censored). A
    handoff is an update whose assignment group differs from the previous known one.
    """
    by_number: dict[str, list[Mapping[str, str]]] = defaultdict(list)
    for row in rows:
        by_number[row["number"]].append(row)
    incidents: list[Incident] = []
    skipped: dict[str, int] = defaultdict(int)
    last_seen: datetime | None = None
    for number, events in by_number.items():
        events = sorted(events, key=_event_order)
        for e in events:
            last_seen = _latest(last_seen, parse_time(e.get("sys_updated_at")))
        incident = _event_incident(number, events)
        if isinstance(incident, str):
            skipped[incident] += 1
        else:
            incidents.append(incident)
    return _finish(
        incidents,
        export_end=export_end,
        last_seen=last_seen,
        fmt=ExportFormat.SERVICENOW_EVENTS,
        has_handoff_times=True,
        skipped=skipped,
    )


def _event_order(row: Mapping[str, str]) -> tuple[int, datetime]:
    count = row.get("sys_mod_count", "")
    updated = parse_time(row.get("sys_updated_at")) or datetime.min.replace(tzinfo=UTC)
    return (int(count) if count.isdigit() else 0, updated)


def _event_incident(number: str, events: Sequence[Mapping[str, str]]) -> Incident | str:
    opened = parse_time(events[0].get("opened_at"))
    if opened is None:
        return "no opened_at"
    groups: list[str] = []
    handoffs: list[datetime] = []
    first_assigned: datetime | None = None
    for e in events:
        group = e.get("assignment_group", "")
        if not _present(group):
            continue
        at = max(parse_time(e.get("sys_updated_at")) or opened, opened)
        if not groups:
            first_assigned = at
            groups.append(group)
        elif groups[-1] != group:
            groups.append(group)
            handoffs.append(at)
    if not groups:
        return "no assignment group"
    last = events[-1]
    resolved = parse_time(last.get("resolved_at"))
    if resolved is None:
        done = [e for e in events if e.get("incident_state", "").lower() in RESOLVED_STATES]
        resolved = parse_time(done[0].get("sys_updated_at")) if done else None
    if resolved is not None:
        resolved = max(resolved, handoffs[-1] if handoffs else opened)
    return Incident(
        number=number,
        opened_at=opened,
        resolved_at=resolved,
        priority=last.get("priority") or "unknown",
        groups=tuple(groups),
        handoffs_at=tuple(handoffs),
        first_assigned_at=first_assigned,
        reassignments=len(groups) - 1,
        first_group_known=True,
    )


def servicenow_rows(
    rows: Sequence[Mapping[str, str]], *, export_end: datetime | None = None
) -> History:
    """Incidents from a ServiceNow list export (one row per incident).

    `resolved_at` (else `closed_at` for a closed incident) is the resolution; no handoff
    times, so the final group and `reassignment_count` are all that is known of routing.
    """
    incidents: list[Incident] = []
    skipped: dict[str, int] = defaultdict(int)
    last_seen: datetime | None = None
    for row in rows:
        opened = parse_time(row.get("opened_at"))
        group = row.get("assignment_group", "")
        if opened is None or not _present(group):
            skipped["no opened_at or assignment_group"] += 1
            continue
        state = (row.get("incident_state") or row.get("state") or "").lower()
        resolved = parse_time(row.get("resolved_at"))
        if resolved is None and state in RESOLVED_STATES:
            resolved = parse_time(row.get("closed_at"))
        count = row.get("reassignment_count", "0")
        last_seen = _latest(
            last_seen, opened, resolved, parse_time(row.get("sys_updated_on") or None)
        )
        incidents.append(
            Incident(
                number=row.get("number", ""),
                opened_at=opened,
                resolved_at=max(resolved, opened) if resolved else None,
                priority=row.get("priority") or "unknown",
                groups=(group,),
                handoffs_at=None,
                first_assigned_at=None,
                reassignments=int(count) if count.isdigit() else 0,
                first_group_known=False,
            )
        )
    return _finish(
        incidents,
        export_end=export_end,
        last_seen=last_seen,
        fmt=ExportFormat.SERVICENOW,
        has_handoff_times=False,
        skipped=skipped,
    )


# --- Zendesk ---------------------------------------------------------------------------


def _zendesk_tickets(records: Sequence[Any]) -> tuple[list[Mapping[str, Any]], datetime | None]:
    """Tickets with their metric set attached, and the export's end_time if it says one."""
    tickets: list[Mapping[str, Any]] = []
    metrics: dict[Any, Mapping[str, Any]] = {}
    end: datetime | None = None
    for rec in records:
        if isinstance(rec, Mapping) and "tickets" in rec:
            tickets.extend(rec["tickets"])
            metrics |= {m["ticket_id"]: m for m in rec.get("metric_sets") or []}
            if rec.get("end_time"):
                end = _latest(end, parse_time(rec["end_time"]))
        elif isinstance(rec, Mapping) and "ticket" in rec:
            tickets.append(rec["ticket"])
        elif isinstance(rec, Mapping):
            tickets.append(rec)
    return [
        {**t, "metric_set": t.get("metric_set") or metrics.get(t.get("id")) or {}} for t in tickets
    ], end


def zendesk(records: Sequence[Any], *, export_end: datetime | None = None) -> History:
    """Tickets from a Zendesk JSON export with metric sets.

    The resolution is the metric set's `solved_at` (a solved or closed ticket without one
    takes its `updated_at`); `group_stations` - 1 is the number of group changes. Zendesk
    keeps no handoff times, and a ticket that left its first group and came back counts
    as reassigned.
    """
    tickets, end_time = _zendesk_tickets(records)
    incidents: list[Incident] = []
    skipped: dict[str, int] = defaultdict(int)
    last_seen: datetime | None = end_time
    for t in tickets:
        opened = parse_time(t.get("created_at"))
        if opened is None or t.get("group_id") is None:
            skipped["no created_at or group_id"] += 1
            continue
        if t.get("status") == "deleted":
            skipped["deleted"] += 1
            continue
        m = t["metric_set"]
        resolved = parse_time(m.get("solved_at"))
        if resolved is None and t.get("status") in {"solved", "closed"}:
            resolved = parse_time(t.get("updated_at"))
        stations = m.get("group_stations")
        if end_time is None:
            last_seen = _latest(last_seen, parse_time(t.get("updated_at")), resolved, opened)
        incidents.append(
            Incident(
                number=str(t.get("id")),
                opened_at=opened,
                resolved_at=max(resolved, opened) if resolved else None,
                priority=str(t.get("priority") or "none"),
                groups=(f"group {t['group_id']}",),
                handoffs_at=None,
                first_assigned_at=parse_time(m.get("initially_assigned_at")),
                reassignments=max(0, int(stations) - 1) if stations else 0,
                first_group_known=False,
            )
        )
    return _finish(
        incidents,
        export_end=export_end,
        last_seen=last_seen,
        fmt=ExportFormat.ZENDESK,
        has_handoff_times=False,
        skipped=skipped,
    )


# --- Jira ------------------------------------------------------------------------------

JIRA_GROUP_FIELDS = ("assignment group", "team", "component/s", "components")


def _jira_issues(records: Sequence[Any]) -> list[Mapping[str, Any]]:
    issues: list[Mapping[str, Any]] = []
    for rec in records:
        if isinstance(rec, Mapping) and "issues" in rec:
            issues.extend(rec["issues"])
        elif isinstance(rec, Mapping) and "fields" in rec:
            issues.append(rec)
    return issues


def _jira_value(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, Mapping):
        value = value.get("name") or value.get("value") or value.get("displayName")
    return str(value) if _present(value) else None


def _jira_group_changes(
    issue: Mapping[str, Any], field: str
) -> list[tuple[datetime, str | None, str | None]]:
    changes = []
    for h in (issue.get("changelog") or {}).get("histories") or []:
        at = parse_time(h.get("created"))
        for item in h.get("items") or []:
            if at is not None and str(item.get("field", "")).lower() == field:
                changes.append((at, item.get("fromString"), item.get("toString")))
    return sorted(changes, key=lambda c: c[0])


def jira(
    records: Sequence[Any], *, export_end: datetime | None = None, group_field: str | None = None
) -> History:
    """Issues from a Jira search result with `expand=changelog` (one JSON page or several).

    The group is the issue's `group_field` (in `fields` by its name, or in `names`), its
    history the changelog's changes of that field: the first group is the first change's
    `fromString` (the value at creation), each change a handoff at the change's time.
    """
    issues = _jira_issues(records)
    candidates = (group_field.lower(),) if group_field else JIRA_GROUP_FIELDS
    incidents: list[Incident] = []
    skipped: dict[str, int] = defaultdict(int)
    last_seen: datetime | None = None
    for issue in issues:
        fields = {k.lower(): v for k, v in (issue.get("fields") or {}).items()}
        opened = parse_time(fields.get("created"))
        field = next((c for c in candidates if c in fields), candidates[0])
        final = _jira_value(fields.get(field))
        changes = _jira_group_changes(issue, field)
        first = changes[0][1] if changes and _present(changes[0][1]) else None
        groups = _dedupe(
            [g for g in [first, *(c[2] for c in changes)] if g is not None and _present(g)]
        ) or ([final] if final else [])
        if opened is None or not groups:
            skipped["no created or group"] += 1
            continue
        resolved = parse_time(fields.get("resolutiondate"))
        handoffs = [max(c[0], opened) for c in changes if _present(c[1]) and _present(c[2])]
        set_later = [c[0] for c in changes if not _present(c[1]) and _present(c[2])]
        assigned = opened if first is not None or not set_later else max(set_later[0], opened)
        last_seen = _latest(last_seen, opened, resolved, parse_time(fields.get("updated")))
        incidents.append(
            Incident(
                number=str(issue.get("key") or issue.get("id")),
                opened_at=opened,
                resolved_at=max(resolved, opened) if resolved else None,
                priority=_jira_value(fields.get("priority")) or "none",
                groups=tuple(groups),
                handoffs_at=tuple(handoffs[-(len(groups) - 1) :]) if len(groups) > 1 else (),
                first_assigned_at=assigned,
                reassignments=len(groups) - 1,
                first_group_known=True,
            )
        )
    return _finish(
        incidents,
        export_end=export_end,
        last_seen=last_seen,
        fmt=ExportFormat.JIRA,
        has_handoff_times=True,
        skipped=skipped,
    )
