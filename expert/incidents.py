"""An ITSM event log to build data: one row per incident, opening fields and final group.

Owns `expert prepare-incidents`' work: reading an incident event log exported from
ServiceNow (one row per update of an incident, as the UCI "Incident management process
enriched event log" has it: `number`, the incident's fields at that update,
`assignment_group`; "?" for a missing value) and writing one row per incident: the fields of
its first event (what the desk knew when the ticket arrived), the group of its first event
(`first_assignment_group`: the desk's own first assignment, a baseline) and the group of its
last event (`assignment_group`: the queue that finally handled it, the label). Events are
taken in file order. Incidents whose last event has no group are left out. Reads one CSV
and writes one CSV; it trains nothing.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# What the desk sees when an incident is opened (the log's columns of that name).
OPENING_FIELDS = (
    "category",
    "subcategory",
    "u_symptom",
    "location",
    "contact_type",
    "impact",
    "urgency",
    "priority",
    "cmdb_ci",
    "opened_by",
)
ID_COLUMN = "number"
GROUP_COLUMN = "assignment_group"
FIRST_GROUP_COLUMN = "first_assignment_group"
MISSING_VALUES = frozenset({"", "?"})


class IncidentLogError(ValueError):
    """The event log is missing or lacks the columns named."""


@dataclass(frozen=True, slots=True)
class PreparedIncidents:
    """What `prepare` wrote.

    Attributes:
        events: event rows read.
        incidents: incident rows written.
        dropped: incidents left out (no final group).
        groups: distinct final groups.
        majority_share: share of the most common final group.
        first_equals_final: share of incidents whose first group is the final one.
    """

    events: int
    incidents: int
    dropped: int
    groups: int
    majority_share: float
    first_equals_final: float


def _value(row: dict[str, str], column: str) -> str:
    value = (row.get(column) or "").strip()
    return "" if value in MISSING_VALUES else value


def prepare(
    log_path: Path, out_path: Path, *, fields: Sequence[str] = OPENING_FIELDS
) -> PreparedIncidents:
    """Write one row per incident of `log_path` to `out_path` (CSV).

    Columns: `number`, the opening `fields`, `first_assignment_group`, `assignment_group`;
    missing values ("?" or empty) are written empty.

    Raises:
        IncidentLogError: the file is missing or lacks `number`, `assignment_group` or a field.
    """
    log_path, out_path = Path(log_path), Path(out_path)
    if not log_path.is_file():
        raise IncidentLogError(f"{log_path}: event log does not exist")
    csv.field_size_limit(sys.maxsize)
    events: dict[str, list[dict[str, str]]] = {}
    with log_path.open(encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {ID_COLUMN, GROUP_COLUMN, *fields} - set(reader.fieldnames or ())
        if missing:
            raise IncidentLogError(f"{log_path}: no column(s) {sorted(missing)}")
        count = 0
        for row in reader:
            count += 1
            events.setdefault(row[ID_COLUMN], []).append(row)
    out_rows = []
    for number, rows in events.items():
        final = _value(rows[-1], GROUP_COLUMN)
        if not final:
            continue
        first = rows[0]
        out_rows.append(
            {
                ID_COLUMN: number,
                **{field: _value(first, field) for field in fields},
                FIRST_GROUP_COLUMN: _value(first, GROUP_COLUMN),
                GROUP_COLUMN: final,
            }
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=[ID_COLUMN, *fields, FIRST_GROUP_COLUMN, GROUP_COLUMN]
        )
        writer.writeheader()
        writer.writerows(out_rows)
    finals = [row[GROUP_COLUMN] for row in out_rows]
    top = max((finals.count(g) for g in set(finals)), default=0)
    same = sum(row[FIRST_GROUP_COLUMN] == row[GROUP_COLUMN] for row in out_rows)
    return PreparedIncidents(
        events=count,
        incidents=len(out_rows),
        dropped=len(events) - len(out_rows),
        groups=len(set(finals)),
        majority_share=top / len(finals) if finals else 0.0,
        first_equals_final=same / len(finals) if finals else 0.0,
    )
