"""Synthetic ticket histories whose true desk is known: as incidents, and as a ServiceNow
event-log CSV (the calibration's input), for the desk-calibration tests."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bench.itsm_exports import Incident

T0 = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday


@dataclass(frozen=True, slots=True)
class TrueDesk:
    """The desk a synthetic history is drawn from (lognormal times, medians in hours)."""

    accuracy: float = 0.7
    first_hop_median_h: float = 10.0
    resolution_median_h: dict[str, float] = field(
        default_factory=lambda: {"Group A": 20.0, "Group B": 80.0}
    )
    sigma: float = 1.0
    span_days: float = 30.0


def synthetic_incidents(
    n: int, *, seed: int, desk: TrueDesk | None = None, export_after_h: float | None = None
) -> tuple[list[Incident], datetime]:
    """`n` incidents opened over `desk.span_days`; those not resolved `export_after_h` after
    the last opening are still open at the export's end (None: the export waits for all).

    A wrong first assignment goes to "Group W" and is handed to the right group after the
    first-hop time; the time in the final group does not depend on how it got there.
    """
    d = desk or TrueDesk()
    rng = np.random.default_rng(seed)
    groups = list(d.resolution_median_h)
    drafts = []
    for k in range(n):
        opened = T0 + timedelta(hours=float(rng.uniform(0, d.span_days * 24)))
        final = groups[int(rng.integers(0, len(groups)))]
        right = bool(rng.random() < d.accuracy)
        hop = float(rng.lognormal(math.log(d.first_hop_median_h), d.sigma))
        rest = float(rng.lognormal(math.log(d.resolution_median_h[final]), d.sigma))
        handoffs = () if right else (opened + timedelta(hours=hop),)
        resolved = (handoffs[-1] if handoffs else opened) + timedelta(hours=rest)
        drafts.append((f"INC{k:06d}", opened, final, right, handoffs, resolved))
    last_open = max(x[1] for x in drafts)
    end = (
        max(x[5] for x in drafts) + timedelta(hours=1)
        if export_after_h is None
        else last_open + timedelta(hours=export_after_h)
    )
    incidents = []
    for number, opened, final, right, handoffs, resolved in drafts:
        seen = tuple(h for h in handoffs if h <= end)
        groups_seen = (final,) if right else (("Group W",) + ((final,) if seen else ()))
        is_open = resolved > end
        incidents.append(
            Incident(
                number=number,
                opened_at=opened,
                resolved_at=None if is_open else resolved,
                priority="3 - Moderate",
                groups=groups_seen,
                handoffs_at=seen,
                first_assigned_at=opened,
                reassignments=len(groups_seen) - 1,
                first_group_known=True,
                censored_at=end if is_open else None,
            )
        )
    return sorted(incidents, key=lambda i: i.opened_at), end


EVENT_COLUMNS = (
    "number",
    "incident_state",
    "active",
    "reassignment_count",
    "reopen_count",
    "sys_mod_count",
    "opened_at",
    "sys_updated_at",
    "assignment_group",
    "priority",
    "resolved_at",
    "closed_at",
)


def _snow(t: datetime | None) -> str:
    return "?" if t is None else t.strftime("%d-%m-%Y %H:%M")


def write_event_log(incidents: list[Incident], path: Path) -> Path:
    """The incidents as a ServiceNow event log (New, a row per handoff, Resolved, Closed)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(EVENT_COLUMNS)
        for i in incidents:
            resolved = _snow(i.resolved_at)
            rows = [("New", 0, i.opened_at, i.groups[0])]
            for k, (at, group) in enumerate(
                zip(i.handoffs_at or (), i.groups[1:], strict=True), start=1
            ):
                rows.append(("Active", k, at, group))
            if i.resolved_at is not None:
                rows.append(("Resolved", len(i.groups) - 1, i.resolved_at, i.groups[-1]))
            for mod, (state, count, at, group) in enumerate(rows):
                w.writerow(
                    [
                        i.number,
                        state,
                        "TRUE",
                        count,
                        0,
                        mod,
                        _snow(i.opened_at),
                        _snow(at),
                        group,
                        i.priority,
                        resolved,
                        "?",
                    ]
                )
    return path
