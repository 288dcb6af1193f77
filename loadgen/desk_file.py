"""The desk file: a service desk fitted on a real ticket history, as YAML with its provenance.

Owns the schema of the fitted desk (pydantic) and where desks are found: `toy` (the old
assumed desk of `loadgen.desk_model`, no file), the desk shipped with the project (fitted on
a public ServiceNow event log; parameters only, never the data), or a file written by
`ticket-router loadgen mttr --calibrate`. `bench.desk_calibration` writes desk files,
`bench.desk_sim` simulates them. Reading YAML is the only I/O here.

What a desk file holds (times in hours, lognormal on the log scale):
- the first assignment: how often the first group was the final one, and how long the
  desk took to set it (dispatch delay quantiles);
- the first hop: the time a ticket spent in a wrong first group before it was passed on
  (what a right first assignment saves), and the time of each later hop;
- how many further hops follow a wrong first group, and how often a ticket assigned right
  bounces anyway;
- the time to resolve once in the final group, by group and priority, with a shift for
  tickets that were reassigned (they are other tickets: harder, or partly diagnosed);
- the mix of groups and priorities, arrivals by hour of week, the confounding statement,
  the validation on held-back incidents, and bootstrap replicates of every parameter.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

TOY = "toy"
# Levels of every stored quantile list: denser in the tail, where p90 and the mean live.
QUANTILE_LEVELS = (
    0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
    0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 1.0,
)  # fmt: skip
DEFAULT_DESK = "servicenow-sample"
SCHEMA_VERSION = 1


class DeskFileError(ValueError):
    """A desk file that cannot be read or does not match the schema."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_quantiles(v: list[float] | None) -> list[float] | None:
    if v is not None and (
        len(v) != len(QUANTILE_LEVELS) or any(b < a for a, b in zip(v, v[1:], strict=False))
    ):
        raise ValueError(f"quantiles: {len(QUANTILE_LEVELS)} ascending values expected")
    return v


class DurationModel(_Model):
    """A duration: log hours = intercept + group effect + priority effect + residual.

    The location (intercept and effects) comes from a lognormal regression; the residual's
    shape from the residuals themselves (their Kaplan-Meier quantiles at `QUANTILE_LEVELS`,
    per group where a group has enough of them), since a desk's times are rarely lognormal
    (many same-day fixes and a long tail of tickets pending for weeks). Without residual
    quantiles the residual is normal with `sigma`.

    Attributes:
        intercept: log hours of a ticket of no listed group and no listed priority.
        sigma: standard deviation of log hours (the regression's).
        groups: effect of each group kept apart (other groups: 0, the pooled rest).
        priorities: effect of each priority (unlisted: 0).
        residual_quantiles: the residual's quantiles (None: normal with `sigma`).
        group_residual_quantiles: a group's own residual quantiles.
        max_h: the longest such time the history saw: no draw is longer (a group's
            location plus the pooled tail would otherwise invent years).
    """

    intercept: float
    sigma: float = Field(gt=0)
    groups: dict[str, float] = {}
    priorities: dict[str, float] = {}
    residual_quantiles: list[float] | None = None
    group_residual_quantiles: dict[str, list[float]] = {}
    max_h: float | None = None

    @field_validator("residual_quantiles")
    @classmethod
    def _residuals(cls, v: list[float] | None) -> list[float] | None:
        return _check_quantiles(v)

    @field_validator("group_residual_quantiles")
    @classmethod
    def _group_residuals(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        for q in v.values():
            _check_quantiles(q)
        return v

    def mu(self, *, group: str | None = None, priority: str | None = None) -> float:
        """Log-hours location for a group and priority."""
        return (
            self.intercept
            + self.groups.get(group or "", 0.0)
            + self.priorities.get(priority or "", 0.0)
        )

    def median_h(self, *, group: str | None = None, priority: str | None = None) -> float:
        """Median hours for a group and priority."""
        return math.exp(self.mu(group=group, priority=priority))


class ResolutionModel(DurationModel):
    """Time to resolve once in the final group (`DurationModel`: a ticket assigned right the
    first time), and the same for a ticket that reached its final group by a handoff.

    Attributes:
        after_handoff: the residual of a ticket that arrived by a handoff (time from the last
            handoff to resolution), located at the same group and priority effects plus
            `after_handoff_shift`.
        after_handoff_shift: log-hours added for such a ticket.
    """

    after_handoff: DurationModel
    after_handoff_shift: float = 0.0


class DeskParameters(_Model):
    """Every number the simulation draws from (one fit, or one bootstrap replicate).

    Attributes:
        first_assignment_accuracy: share of tickets whose first group was the final one.
        dispatch_delay_h: quantiles (at `QUANTILE_LEVELS`) of the hours from opening to the
            first assignment.
        first_hop: hours in a wrong first group before the handoff.
        later_hop: hours in each further group that passed the ticket on.
        further_hops_if_wrong: after a wrong first group, how many more handoffs (pmf).
        hops_if_right: handoffs of a ticket whose first group was right (it bounces and
            comes back; pmf).
        resolution: hours from reaching the final group to resolution.
    """

    first_assignment_accuracy: float = Field(ge=0, le=1)
    dispatch_delay_h: list[float]
    first_hop: DurationModel
    later_hop: DurationModel
    further_hops_if_wrong: dict[int, float]
    hops_if_right: dict[int, float]
    resolution: ResolutionModel

    @field_validator("further_hops_if_wrong", "hops_if_right")
    @classmethod
    def _is_pmf(cls, v: dict[int, float]) -> dict[int, float]:
        if not v or any(p < 0 for p in v.values()) or abs(sum(v.values()) - 1.0) > 1e-3:
            raise ValueError("a pmf needs non-negative shares that sum to 1")
        return v

    @field_validator("dispatch_delay_h")
    @classmethod
    def _is_quantiles(cls, v: list[float]) -> list[float]:
        if v[0] < 0:
            raise ValueError("dispatch_delay_h: non-negative quantiles")
        return _check_quantiles(v) or v


class MixEntry(_Model):
    """Share of tickets resolved by `group` at `priority` (the simulated tickets' mix)."""

    group: str
    priority: str
    share: float = Field(ge=0)


class Provenance(_Model):
    """Where the desk came from.

    Attributes:
        source: the export (a file name, never its content) and how it was obtained.
        citation: the data set's citation and licence, when public.
        sha256: hash of the export file.
        format: the reader that read it.
        command: the command that wrote this desk.
        fitted_at: date of the fit (UTC, ISO).
        code_version: the project's git commit when known.
        incidents, resolved, censored: counts read; censored ones were open at the export's
            end.
        opened_from, opened_to, export_end: the history's time span (ISO).
        skipped: rows or tickets left out, by reason.
    """

    source: str
    citation: str | None = None
    sha256: str
    format: str
    command: str
    fitted_at: str
    code_version: str | None = None
    incidents: int
    resolved: int
    censored: int
    opened_from: str
    opened_to: str
    export_end: str
    skipped: dict[str, int] = {}


class Arrivals(_Model):
    """When tickets arrive.

    Attributes:
        tickets_per_day: mean over the days the history covers.
        per_hour_of_week: share of a week's tickets per hour (Monday 00:00 first, UTC of the
            export); null for hours the history never covered.
        days_covered: days between the first and the last opening.
    """

    tickets_per_day: float
    per_hour_of_week: list[float | None]
    days_covered: float


class Confounding(_Model):
    """What the model blames on misrouting, and what on the tickets themselves.

    Attributes:
        attributed_share: share of the median gap (reassigned vs never reassigned, same
            group and priority) the model attributes to misrouting: the first hop.
        all_hops_share: the share if every hop before resolution were a misroute (an upper
            bound the model does not use).
        reassigned_median_h, not_reassigned_median_h: the medians compared.
        first_hop_median_h: the median time in a wrong first group.
        explanation: why, in words.
    """

    attributed_share: float
    all_hops_share: float
    reassigned_median_h: float
    not_reassigned_median_h: float
    first_hop_median_h: float
    explanation: str


class DeskFile(_Model):
    """A fitted desk: parameters, provenance, and how well it reproduced held-back tickets.

    Attributes:
        schema_version: the file format's version.
        name: a short name (shown in reports).
        quantile_levels: the levels of every quantile list in the file.
        provenance: where it came from.
        sources: how each parameter was measured (parameter -> text).
        parameters: the fit on the whole history.
        mix: the groups and priorities of simulated tickets.
        arrivals: when tickets arrived.
        confounding: what is blamed on misrouting.
        validation: the held-back check (see calibration.json), summarised.
        assumptions: figures the export cannot give (agent minutes), marked as such.
        replicates: the parameters refitted on bootstrap resamples of the incidents.
    """

    schema_version: int = SCHEMA_VERSION
    name: str
    quantile_levels: list[float] = list(QUANTILE_LEVELS)
    provenance: Provenance
    sources: dict[str, str]
    parameters: DeskParameters
    mix: list[MixEntry]
    arrivals: Arrivals
    confounding: Confounding
    validation: dict[str, Any] = {}
    assumptions: dict[str, float] = {}
    replicates: list[DeskParameters] = []

    @field_validator("quantile_levels")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        if len(v) != len(QUANTILE_LEVELS) or not all(
            math.isclose(a, b) for a, b in zip(v, QUANTILE_LEVELS, strict=True)
        ):
            raise ValueError(f"quantile_levels must be {list(QUANTILE_LEVELS)}")
        return v

    def to_yaml(self) -> str:
        """The file's text: provenance first, number lists on one line each."""
        return yaml.dump(
            _rounded(self.model_dump(mode="json")),
            Dumper=_Dumper,
            sort_keys=False,
            allow_unicode=True,
            width=100,
        )

    def write(self, path: Path) -> Path:
        """Write the desk to `path` (folders created)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path


# libyaml's safe loader when PyYAML was built with it: four times faster on a desk file.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(yaml.SafeDumper):
    """Lists of numbers in flow style (one line): the file stays readable and small."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = bool(data) and all(isinstance(x, int | float) or x is None for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _rounded(value: Any) -> Any:
    """Floats to 5 significant digits: the fit is not more precise than that."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def shipped_desk_path(name: str = DEFAULT_DESK) -> Path:
    """Where a desk shipped with the package lives."""
    return Path(str(resources.files("loadgen") / "desks" / f"{name}.yaml"))


def load_desk_file(path: Path) -> DeskFile:
    """Read and validate a desk file.

    Raises:
        DeskFileError: missing, unreadable, or not matching the schema.
    """
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a safe loader
        return DeskFile.model_validate(data)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise DeskFileError(f"{path}: {exc}") from exc


def resolve_desk(spec: str | Path | None) -> DeskFile | None:
    """The desk a `--desk` value names: None for `toy`; the shipped desk for None/"default";
    else a file path.

    Raises:
        DeskFileError: the file cannot be read.
    """
    if spec is None or str(spec) in ("", "default", DEFAULT_DESK):
        return load_desk_file(shipped_desk_path())
    if str(spec) == TOY:
        return None
    return load_desk_file(Path(spec))
