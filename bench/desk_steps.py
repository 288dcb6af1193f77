"""The desk steps: calibrate a desk from an export, and simulate routing on a calibrated desk.

Owns the I/O around `bench.desk_calibration`, `bench.desk_validation` and `bench.desk_sim`:
reading the export, hashing it, writing DIR/desk.yaml, DIR/calibration.json and
DIR/calibration.md, and turning a calibrated comparison into mttr.json's shape (the same
as the toy desk's, plus the desk, the intervals and the verdicts). `bench.cli` parses the
arguments; `bench.steps.mttr_step` hands a calibrated desk to `calibrated_mttr`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bench.desk_calibration import FitOptions
    from bench.mttr import Scenario
    from loadgen.desk_file import DeskFile


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _code_version() -> str | None:
    try:
        out = subprocess.run(  # noqa: S603 - fixed arguments, our own repository
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def validation_summary(calibration: dict[str, Any]) -> dict[str, Any]:
    """What the desk file keeps of calibration.json."""

    def pick(fig: dict[str, Any]) -> dict[str, Any]:
        keys = ("median_h", "p90_h", "first_assignment_accuracy", "median_h_by_reassignments")
        return {k: fig[k] for k in keys}

    forward = calibration["forward"]
    return {
        "method": calibration["split"]["method"],
        "observed": pick(calibration["observed"]),
        "simulated": pick(calibration["simulated"]),
        "within_20pct": calibration["within_20pct"],
        "reproduces_the_desk": calibration["reproduces_the_desk"],
        "forward_check": {
            "opened_from": forward["opened_from"],
            "observed": pick(forward["observed"]),
            "simulated": pick(forward["simulated"]),
            "within_20pct": forward["within_20pct"]["simulated"],
        },
    }


def calibrate_step(
    *,
    export: Path,
    out_dir: Path,
    options: FitOptions,
    fmt: str | None = None,
    name: str | None = None,
    export_end: datetime | None = None,
    group_field: str | None = None,
    citation: str | None = None,
    reference: str | None = None,
    command: str,
    blocks: int = 5,
    sims: int = 20,
) -> dict[str, Any]:
    """Read `export`, fit and validate a desk, write desk.yaml + calibration.json/.md.

    Args:
        export: the history file (read in place; only its name and hash are recorded).
        out_dir: where the three files go.
        options: the fit's pooling, shrinkage and bootstrap.
        fmt: the export's format (None: detected).
        name: the desk's name (default: the file's stem).
        export_end: when the export was taken (default: its last timestamp).
        group_field: Jira: the field holding the assignment group.
        citation: the data's citation and licence, recorded in the provenance.
        reference: the desk that lends hop times to an export without them (default: the
            shipped desk).
        command: the command line, recorded in the provenance.
        blocks, sims: the validation's time blocks and simulations per incident.

    Returns:
        calibration.json's content, with `paths` of the files written.
    """
    from bench import desk_validation
    from bench.desk_calibration import build_desk_file, reference_from
    from bench.itsm_exports import ExportFormat, read_export
    from loadgen.desk_file import resolve_desk

    history = read_export(
        export,
        fmt=ExportFormat(fmt) if fmt else None,
        export_end=export_end,
        group_field=group_field,
    )
    ref = None
    if not history.has_handoff_times:
        lender = resolve_desk(reference)
        ref = reference_from(lender) if lender is not None else None
    calibration = desk_validation.validate(
        history, options=options, reference=ref, blocks=blocks, sims=sims
    )
    desk_name = name or export.stem
    desk = build_desk_file(
        history,
        name=desk_name,
        provenance={
            "source": export.name,
            "citation": citation,
            "sha256": _sha256(export),
            "command": command,
            "fitted_at": datetime.now(UTC).date().isoformat(),
            "code_version": _code_version(),
        },
        options=options,
        reference=ref,
        validation=validation_summary(calibration),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "desk": desk.write(out_dir / "desk.yaml"),
        "json": out_dir / "calibration.json",
        "markdown": out_dir / "calibration.md",
    }
    calibration = {
        "desk": desk_name,
        "source": export.name,
        "format": history.source_format.value,
        "counts": desk.provenance.model_dump(include={"incidents", "resolved", "censored"}),
        "first_assignment_accuracy": desk.parameters.first_assignment_accuracy,
        "confounding": desk.confounding.model_dump(),
        **calibration,
    }
    paths["json"].write_text(json.dumps(calibration, indent=2) + "\n")
    paths["markdown"].write_text(
        desk_validation.markdown(calibration, desk_name=desk_name, source=export.name)
        + "\n"
        + desk.confounding.explanation
        + "\n"
    )
    calibration["paths"] = {k: str(v) for k, v in paths.items()}
    return calibration


def print_calibration(c: dict[str, Any]) -> None:
    """The calibration's figures in a few lines."""
    from loadgen.steps import console

    o, s = c["observed"], c["simulated"]

    def h(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1f} h"

    out = console()
    out.print(
        f"calibrate: {c['source']} ({c['format']}): {c['counts']['incidents']} incidents,"
        f" {c['counts']['censored']} still open (censored); first assignment right"
        f" {100 * c['first_assignment_accuracy']:.1f}%; misrouting blamed for"
        f" {100 * c['confounding']['attributed_share']:.0f}% of the reassigned tickets' gap"
    )
    out.print(
        f"validation ({c['split']['blocks']} time blocks held back): median observed"
        f" {h(o['median_h'])}, simulated {h(s['median_h'])}; p90 observed {h(o['p90_h'])},"
        f" simulated {h(s['p90_h'])}: "
        + ("within 20%" if c["reproduces_the_desk"] else "[red]NOT within 20%[/]")
    )
    fo, fs = c["forward"]["observed"], c["forward"]["simulated"]
    out.print(
        f"forward check (last block, fitted on the ones before): median {h(fo['median_h'])}"
        f" observed, {h(fs['median_h'])} simulated; p90 {h(fo['p90_h'])} / {h(fs['p90_h'])}"
    )
    out.print("wrote " + ", ".join(c["paths"].values()))


def desk_dispatch_scenario(desk: DeskFile, *, queues: Sequence[str]) -> Scenario:
    """The desk's own dispatch as a scenario (its people route; `bench.desk_sim` replays the
    desk's fitted accuracy and dispatch delay for it)."""
    import numpy as np

    from bench.desk_sim import DESK_DISPATCH
    from bench.mttr import Desk, parametric_scenario
    from loadgen.desk_model import HandlingTime

    p = desk.parameters
    minutes = desk.assumptions.get("dispatch_min_per_ticket", 0.0)
    scenario = parametric_scenario(
        name=DESK_DISPATCH,
        queues=queues,
        latency_s=0.0,
        accuracy=p.first_assignment_accuracy,
        dispatch=Desk(1, HandlingTime(minutes)),
    )
    scenario.routing_latency_s = float(np.mean(p.dispatch_delay_h)) * 3600
    return scenario


def calibrated_mttr(
    *,
    desk: DeskFile,
    router: Scenario,
    cloud: Scenario,
    queues: Sequence[str],
    truths: Sequence[str],
    seed: int,
    days: float,
    assumptions: dict[str, Any],
    replicates: int | None = None,
) -> dict[str, Any]:
    """mttr.json for a calibrated desk: this router, the cloud LLM and the desk's own
    dispatch (the baseline), point figures and intervals."""
    from bench import desk_sim, mttr

    manual = desk_dispatch_scenario(desk, queues=queues)
    comparison, intervals = desk_sim.compare_calibrated(
        desk,
        [router, cloud, manual],
        truths=truths,
        seed=seed,
        days=days,
        baseline=manual.name,
        assumptions=desk.assumptions,
        replicates=replicates,
    )
    data = mttr.comparison_json(
        comparison,
        baseline=manual.name,
        assumptions={**assumptions, **{f"desk_{k}": v for k, v in desk.assumptions.items()}},
    )
    per_day = comparison.tickets_per_day
    for key, diff in intervals["differences"].items():
        name, _, base = key.partition(" vs ")
        if base == manual.name and name in data["saved_vs_baseline"]:
            lo, hi = diff["mean_h"]["interval"]
            data["saved_vs_baseline"][name]["ticket_hours_per_day_interval"] = [
                -hi * per_day,
                -lo * per_day,
            ]
    data["desk"] = desk_sim.desk_summary(desk)
    data["intervals"] = intervals
    return data
