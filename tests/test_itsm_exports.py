"""Reading ticket-history exports: each format on a small inline sample, and detection."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.itsm_exports import ExportError, ExportFormat, detect_format, read_export

EVENT_LOG = """number,incident_state,reassignment_count,sys_mod_count,opened_at,sys_updated_at,assignment_group,priority,resolved_at,closed_at
INC1,New,0,0,01-03-2016 09:00,01-03-2016 09:05,Service Desk,3 - Moderate,02-03-2016 12:00,07-03-2016 12:00
INC1,Active,1,1,01-03-2016 09:00,01-03-2016 15:00,Network,3 - Moderate,02-03-2016 12:00,07-03-2016 12:00
INC1,Resolved,1,2,01-03-2016 09:00,02-03-2016 12:00,Network,3 - Moderate,02-03-2016 12:00,07-03-2016 12:00
INC2,New,0,0,01-03-2016 10:00,01-03-2016 10:00,?,4 - Low,?,?
INC2,Active,0,1,01-03-2016 10:00,01-03-2016 10:30,Database,4 - Low,?,?
INC3,Resolved,0,0,01-03-2016 11:00,01-03-2016 11:00,Network,3 - Moderate,?,?
INC3,Closed,0,1,01-03-2016 11:00,05-03-2016 11:00,Network,3 - Moderate,?,?
"""  # noqa: E501 - a CSV line is as long as its columns

LIST_EXPORT = """number,state,opened_at,resolved_at,closed_at,assignment_group,reassignment_count,priority
INC10,Resolved,2024-05-01 08:00:00,2024-05-03 08:00:00,,Network,0,2 - High
INC11,In Progress,2024-05-02 08:00:00,,,Database,2,3 - Moderate
INC12,Closed,2024-05-02 09:00:00,,2024-05-04 09:00:00,Network,1,3 - Moderate
"""  # noqa: E501


def test_servicenow_event_log_gives_handoff_times_and_censors_open_incidents(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(EVENT_LOG)
    assert detect_format(path) is ExportFormat.SERVICENOW_EVENTS
    h = read_export(path)
    by = {i.number: i for i in h.incidents}
    assert h.has_handoff_times and h.export_end == datetime(2016, 3, 5, 11, tzinfo=UTC)
    one = by["INC1"]
    assert one.groups == ("Service Desk", "Network") and not one.first_right
    assert one.handoffs_at == (datetime(2016, 3, 1, 15, tzinfo=UTC),)
    assert one.duration_h == pytest.approx(27.0)
    two = by["INC2"]  # never resolved: open at the export's end, first group set at 10:30
    assert not two.is_resolved and two.censored_at == h.export_end
    assert two.first_assigned_at == datetime(2016, 3, 1, 10, 30, tzinfo=UTC)
    assert two.duration_h == pytest.approx(4 * 24 + 1)
    three = by["INC3"]  # no resolved_at: the first update in a resolved state
    assert three.resolved_at == datetime(2016, 3, 1, 11, tzinfo=UTC)


def test_servicenow_list_export_has_counts_but_no_handoff_times(tmp_path: Path) -> None:
    path = tmp_path / "incidents.csv"
    path.write_text(LIST_EXPORT)
    assert detect_format(path) is ExportFormat.SERVICENOW
    h = read_export(path)
    by = {i.number: i for i in h.incidents}
    assert not h.has_handoff_times
    assert by["INC10"].duration_h == pytest.approx(48.0) and by["INC10"].first_right
    assert not by["INC11"].is_resolved and by["INC11"].reassignments == 2
    assert by["INC12"].resolved_at == datetime(2024, 5, 4, 9, tzinfo=UTC)
    assert not by["INC12"].first_right  # reassigned once: the first group was not final


def test_zendesk_export_joins_sideloaded_metric_sets(tmp_path: Path) -> None:
    page = {
        "tickets": [
            {"id": 1, "created_at": "2024-05-01T08:00:00Z", "updated_at": "2024-05-02T08:00:00Z",
             "status": "solved", "priority": "high", "group_id": 360001},
            {"id": 2, "created_at": "2024-05-01T09:00:00Z", "updated_at": "2024-05-01T10:00:00Z",
             "status": "open", "priority": None, "group_id": 360002},
            {"id": 3, "created_at": "2024-05-01T09:00:00Z", "status": "new", "group_id": None},
        ],
        "metric_sets": [
            {"ticket_id": 1, "solved_at": "2024-05-01T20:00:00Z", "group_stations": 2,
             "initially_assigned_at": "2024-05-01T08:30:00Z"},
            {"ticket_id": 2, "solved_at": None, "group_stations": 1},
        ],
        "end_time": 1714600800,  # 2024-05-01T22:00:00Z
    }  # fmt: skip
    path = tmp_path / "zendesk.json"
    path.write_text(json.dumps(page))
    assert detect_format(path) is ExportFormat.ZENDESK
    h = read_export(path)
    by = {i.number: i for i in h.incidents}
    assert h.skipped == {"no created_at or group_id": 1}
    assert by["1"].duration_h == pytest.approx(12.0) and by["1"].reassignments == 1
    assert by["1"].groups == ("group 360001",) and by["1"].priority == "high"
    assert not by["2"].is_resolved and by["2"].duration_h == pytest.approx(13.0)
    assert h.export_end == datetime(2024, 5, 1, 22, tzinfo=UTC)


def test_jira_changelog_gives_the_group_history(tmp_path: Path) -> None:
    result = {
        "issues": [
            {
                "key": "IT-1",
                "fields": {
                    "created": "2024-05-01T08:00:00.000+0000",
                    "resolutiondate": "2024-05-02T08:00:00.000+0000",
                    "priority": {"name": "Medium"},
                    "Team": {"value": "Network"},
                },
                "changelog": {
                    "histories": [
                        {
                            "created": "2024-05-01T12:00:00.000+0000",
                            "items": [
                                {"field": "Team", "fromString": "Service Desk",
                                 "toString": "Network"}
                            ],
                        }
                    ]
                },
            },
            {
                "key": "IT-2",
                "fields": {"created": "2024-05-01T09:00:00.000+0000", "resolutiondate": None,
                           "priority": {"name": "High"}, "Team": {"value": "Database"}},
                "changelog": {"histories": []},
            },
        ]
    }  # fmt: skip
    path = tmp_path / "jira.json"
    path.write_text(json.dumps(result))
    assert detect_format(path) is ExportFormat.JIRA
    h = read_export(path, export_end=datetime(2024, 5, 3, tzinfo=UTC))
    by = {i.number: i for i in h.incidents}
    assert h.has_handoff_times
    assert by["IT-1"].groups == ("Service Desk", "Network") and not by["IT-1"].first_right
    assert by["IT-1"].handoffs_at == (datetime(2024, 5, 1, 12, tzinfo=UTC),)
    assert by["IT-2"].groups == ("Database",) and not by["IT-2"].is_resolved
    assert by["IT-2"].duration_h == pytest.approx(39.0)


def test_an_unknown_file_is_refused_with_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ExportError, match="expected a ServiceNow CSV"):
        read_export(path)
