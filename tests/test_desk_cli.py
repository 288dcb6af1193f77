"""`loadgen mttr --calibrate` on a generated export, then `mttr` and `report` on its desk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from scenarios.cli import loadgen_app as app
from tests.desk_histories import TrueDesk, synthetic_incidents, write_event_log

runner = CliRunner()


def test_calibrate_writes_a_desk_that_mttr_and_report_use(tmp_path: Path) -> None:
    incidents, _ = synthetic_incidents(
        300, seed=8, desk=TrueDesk(span_days=5.0), export_after_h=48.0
    )
    export = write_event_log(incidents, tmp_path / "export.csv")
    out = tmp_path / "desk"
    result = runner.invoke(
        app,
        ["mttr", "--calibrate", str(export), "--out", str(out), "--bootstrap", "3",
         "--blocks", "3", "--min-group", "5", "--citation", "synthetic, test"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cal = json.loads((out / "calibration.json").read_text())
    for side in ("observed", "simulated"):
        assert {"median_h", "p90_h", "first_assignment_accuracy"} <= set(cal[side])
        assert set(cal[side]["median_h_by_reassignments"]) == {"0", "1", "2", "3+"}
    assert cal["counts"]["censored"] == sum(not i.is_resolved for i in incidents) > 0
    assert isinstance(cal["within_20pct"]["simulated"]["median_h"]["within_20pct"], bool)
    assert "Desk calibration: export" in (out / "calibration.md").read_text()
    desk = yaml.safe_load((out / "desk.yaml").read_text())
    assert desk["provenance"]["source"] == "export.csv"
    assert desk["provenance"]["sha256"] == hashlib.sha256(export.read_bytes()).hexdigest()
    assert desk["provenance"]["citation"] == "synthetic, test"
    assert len(desk["replicates"]) == 3
    assert "Group A" in desk["parameters"]["resolution"]["groups"]

    run = tmp_path / "run"
    result = runner.invoke(
        app, ["mttr", "--dir", str(run), "--volume", "2000", "--desk", str(out / "desk.yaml")]
    )
    assert result.exit_code == 0, result.output
    m = json.loads((run / "mttr.json").read_text())
    assert [r["name"] for r in m["results"]] == [
        "this router (assumed)",
        "cloud LLM router",
        "desk's own dispatch (observed)",
    ]
    assert m["desk"]["name"] == "export" and m["intervals"]["replicates"] == 3
    router = m["results"][0]
    assert (
        router["extras"]["intervals"]["median_h"][0] <= router["extras"]["intervals"]["median_h"][1]
    )


def test_calibrate_refuses_a_file_that_is_not_an_export(tmp_path: Path) -> None:
    bad = tmp_path / "notes.csv"
    bad.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["mttr", "--calibrate", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "calibration failed" in result.output


@pytest.mark.parametrize("desk", ["toy", "nonexistent.yaml"])
def test_mttr_desk_option(tmp_path: Path, desk: str) -> None:
    result = runner.invoke(
        app, ["mttr", "--dir", str(tmp_path), "--volume", "2000", "--desk", desk]
    )
    if desk == "toy":
        assert result.exit_code == 0, result.output
        names = [r["name"] for r in json.loads((tmp_path / "mttr.json").read_text())["results"]]
        assert names == ["this router (assumed)", "cloud LLM router", "manual dispatch"]
    else:
        assert result.exit_code == 2 and "desk error" in result.output
