"""The desk file: the shipped calibrated desk, its provenance, and reading desk files."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.desk_file import (
    DEFAULT_DESK,
    DeskFileError,
    load_desk_file,
    resolve_desk,
    shipped_desk_path,
)


def test_the_shipped_desk_loads_and_says_where_it_came_from() -> None:
    desk = resolve_desk(None)
    assert desk is not None and desk.name == DEFAULT_DESK
    p = desk.provenance
    assert p.source == "servicenow-incident-log-sample.csv" and p.format == "servicenow-events"
    assert "UCI Machine Learning Repository" in (p.citation or "") and "CC BY 4.0" in (
        p.citation or ""
    )
    assert len(p.sha256) == 64 and p.command.startswith("ticket-router loadgen mttr --calibrate")
    assert p.incidents == p.resolved + p.censored > 800
    # every parameter says how it was measured
    assert set(desk.sources) >= {"first_assignment_accuracy", "first_hop", "resolution"}
    # the sample's own figures (data README: first group final for 62.8% of 873 incidents)
    assert desk.parameters.first_assignment_accuracy == pytest.approx(0.63, abs=0.02)
    assert desk.validation["reproduces_the_desk"] is True
    assert len(desk.replicates) >= 10
    assert 0 < desk.confounding.attributed_share < 1


def test_a_desk_file_round_trips_through_yaml(tmp_path: Path) -> None:
    desk = load_desk_file(shipped_desk_path())
    again = load_desk_file(desk.write(tmp_path / "desk.yaml"))
    assert again.parameters == desk.parameters and again.provenance == desk.provenance


def test_toy_is_the_assumed_desk_and_a_broken_file_is_refused(tmp_path: Path) -> None:
    assert resolve_desk("toy") is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nparameters: {}\n")
    with pytest.raises(DeskFileError, match="bad.yaml"):
        resolve_desk(str(bad))
    with pytest.raises(DeskFileError):
        resolve_desk(str(tmp_path / "missing.yaml"))
