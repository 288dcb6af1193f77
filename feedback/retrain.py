"""Retraining from the desk's feedback: build a challenger, judge it against the champion on
the same recent rows, and promote it into the registry only when it is better by a margin.

Owns the retrain's steps and their order: the champion is the registry's current version;
its card names the original training data (checked against the digest it recorded); the
settled tickets from the decision log are merged in (`feedback.retrain_data`); the challenger
is built by the default recipe (`expert.recipe.build`, preset fast unless told otherwise);
both experts answer the evaluation slice through real vLLM (`expert.engine.BatchExpert`,
one after the other, so only one engine is in memory); the rule and the report are
`feedback.promotion`'s. Every run leaves a folder (`<work>/<version>/`: the data, the
challenger, promotion.json and promotion.md) and a line in `<work>/history.jsonl`; a
promotion is `Registry.add` + `Registry.promote` with the figures, so the registry's own
history keeps them. It never touches a running worker: workers follow the registry pointer.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from expert.card import ExpertCard
from expert.dataset import file_sha256
from expert.engine import BatchExpert
from expert.fields import InputSpec
from expert.recipe import BuildReport, Preset, RecipeConfig, build
from expert.registry import Registry, RegistryError, VersionInfo
from expert.serving import EngineConfig, Prediction, load_card
from feedback.promotion import (
    PromotionPolicy,
    PromotionReport,
    decide,
    model_figures,
    paired,
    per_queue_changes,
    render_markdown,
)
from feedback.retrain_data import (
    ROW_KEYS,
    Holdout,
    RetrainData,
    RetrainDataError,
    Row,
    SettledRows,
    assemble,
    read_original,
    settled_rows,
    write_rows,
)
from schemas.feedback import LabeledTicket

log = structlog.get_logger(__name__)

DEFAULT_WORK_DIR = Path(".state/retrain")
HISTORY_FILENAME = "history.jsonl"
REPORT_JSON = "promotion.json"
REPORT_MARKDOWN = "promotion.md"
_STAMP = re.compile(r"^\d{8}T\d{6}Z-")


class RetrainError(RuntimeError):
    """The retrain cannot start: no champion, its training data cannot be found as built, or
    the challenger could not read what the champion reads."""


@dataclass(frozen=True)
class RetrainRequest:
    """What to retrain and how to judge it.

    Attributes:
        registry_dir: the model registry (its current version is the champion).
        taxonomy_labels: the queues (the challenger's card lists exactly these).
        work_dir: where each run's folder and the history go.
        recipe: the challenger's build (default: preset fast).
        holdout: which recent feedback is the evaluation slice.
        policy: the promotion margins.
        engine: engine settings for scoring (its model_dir and max_model_len are set per
            expert).
        original_data: the champion's training data, when not where its card says (then
            used as given, whatever its digest).
        feedback_weight: each feedback training row counts this many times (see
            `feedback.retrain_data.assemble`).
        dry_run: judge and report, never add or promote.
    """

    registry_dir: Path
    taxonomy_labels: Sequence[str]
    work_dir: Path = DEFAULT_WORK_DIR
    recipe: RecipeConfig = RecipeConfig(preset=Preset.FAST)
    holdout: Holdout = Holdout()
    policy: PromotionPolicy = PromotionPolicy()
    engine: EngineConfig = EngineConfig()
    original_data: Path | None = None
    feedback_weight: int = 1
    dry_run: bool = False


@dataclass(frozen=True)
class RetrainOutcome:
    """What a retrain did: the report, its folder, the challenger's folder and version."""

    report: PromotionReport
    run_dir: Path
    challenger_dir: Path
    version: str


def champion_of(registry: Registry) -> tuple[VersionInfo, ExpertCard]:
    """The registry's current version and its card.

    Raises:
        RetrainError: no current version, its card has no training record, or a field
            column it reads has the name of a column the retrain data uses itself.
    """
    try:
        current = registry.current()
    except RegistryError as exc:
        raise RetrainError(f"the registry cannot say which version serves: {exc}") from exc
    if current is None:
        raise RetrainError(
            f"{registry.root}: no current version to retrain (add and promote a first expert)"
        )
    card = load_card(current.path)
    if card.training is None:
        raise RetrainError(f"version {current.version}: its card records no training data")
    if clash := sorted(set(card.inputs.columns) & set(ROW_KEYS)):
        # The challenger must read the champion's columns by the same names, and the
        # retrain data spells its own keys with these.
        raise RetrainError(
            f"version {current.version} reads a field column named {', '.join(clash)}, a"
            " name the retrain data uses for itself: retraining it is not supported; rebuild"
            " it with the field renamed (`--fields NEW_NAME=ADDRESS`)"
        )
    return current, card


def original_rows(card: ExpertCard, override: Path | None) -> tuple[list[Row], Path]:
    """The champion's training rows, from `override` or the file its card names.

    Raises:
        RetrainError: the card's file changed since the champion was built.
        RetrainDataError: the file is missing or unreadable.
    """
    training = card.training
    assert training is not None
    path = override or Path(training.data_path)
    if override is None and path.is_file() and file_sha256(path) != training.data_sha256:
        raise RetrainError(
            f"{path} changed since the champion was built (its digest differs from the"
            " card's): pass --original-data FILE to retrain from it anyway"
        )
    rows = read_original(
        path, text_col=training.text_col, label_col=training.label_col, inputs=card.inputs
    )
    return rows, path


def answers(
    expert_dir: Path, texts: Sequence[str], *, engine: EngineConfig
) -> tuple[list[Prediction], dict[str, object]]:
    """One expert's answers for `texts` through real vLLM (offline batch), and where it ran."""
    window = load_card(expert_dir).max_prompt_tokens + 1
    config = engine.model_copy(update={"model_dir": expert_dir, "max_model_len": window})
    expert = BatchExpert(config)
    expert.start()
    try:
        predictions = expert.classify_batch(list(texts))
        placement = expert.placement.as_dict()
    finally:
        expert.close()
    return predictions, placement


def family_name(model_id: str) -> str:
    """The model id without a retrain's leading time stamp ("20261129T101500Z-x" -> "x")."""
    return _STAMP.sub("", model_id) or model_id


def _version_name(model_id: str, now: datetime) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", family_name(model_id)).strip("-.")[:80]
    return f"{now:%Y%m%dT%H%M%SZ}-{slug or 'expert'}"


def retrain(
    request: RetrainRequest,
    feedback: Iterable[LabeledTicket],
    *,
    on_event: Callable[[str], None] | None = None,
    progress_for: Callable[[str], Any] | None = None,
) -> RetrainOutcome:
    """Build a challenger from the champion's data plus `feedback`, judge, maybe promote.

    Args:
        request: registry, recipe, holdout, policy, engine settings.
        feedback: the settled tickets (`DecisionLog.labeled_tickets()`).
        on_event: one-line progress messages.
        progress_for: label -> context manager yielding a progress callback (the build's).

    Returns:
        The outcome; `report.promoted_version` is set when the challenger was promoted.

    Raises:
        RetrainError: no champion, its data changed, or the recipe names other inputs.
        RetrainDataError: too little feedback for the slice, unreadable data.
        expert.build.BuildError: the challenger could not be built.
        expert.engine.ExpertLoadError: an expert could not be served.
        RegistryError: the promotion could not be written.
    """
    say = on_event or (lambda _message: None)
    started = time.perf_counter()
    wall: dict[str, float] = {}
    registry = Registry(request.registry_dir)
    champion, card = champion_of(registry)
    recipe = _challenger_recipe(request.recipe, card)
    original, original_path = original_rows(card, request.original_data)
    settled = settled_rows(feedback, inputs=card.inputs)
    data = _assembled(original, settled, request=request)
    now = datetime.now(UTC)
    version = _version_name(card.model_id, now)
    run_dir = Path(request.work_dir) / version
    data_path = write_rows(data.train, run_dir / "data.jsonl").resolve()
    write_rows(data.evaluation, run_dir / "evaluation.jsonl")
    wall["data"] = time.perf_counter() - started
    say(
        f"champion {champion.version}; {data.counts['training_rows']} training rows"
        f" ({data.counts['original_rows']} original, {data.counts['feedback_rows_trained_on']}"
        f" from feedback), {data.counts['evaluation_rows']} recent feedback rows to judge on"
    )
    if settled.without_fields:
        say(
            f"{settled.without_fields} settled tickets left out: decided before the decision"
            f" log kept field values, and the champion reads {', '.join(card.inputs.columns)}"
        )
    t0 = time.perf_counter()
    challenger_dir = run_dir / "expert"
    built = build(
        data_path,
        challenger_dir,
        text_col="text" if card.inputs.reads_text else None,
        label_col="label",
        config=recipe,
        taxonomy_labels=list(request.taxonomy_labels),
        on_event=say,
        progress_for=progress_for,
    )
    wall["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = _judge(
        request,
        data=data,
        champion=champion,
        champion_card=card,
        challenger_dir=challenger_dir,
        built=built,
        original_path=original_path,
        wall=wall,
        say=say,
    )
    wall["score"] = time.perf_counter() - t0
    promoted = None
    if report.decision.promote and not request.dry_run:
        t0 = time.perf_counter()
        added = registry.add(challenger_dir, version=version)
        wall["registry"] = time.perf_counter() - t0
        wall["total"] = time.perf_counter() - started
        report = report.model_copy(update={"wall_s": _rounded(wall)})
        registry.promote(added.version, reason=_reason(report), figures=report.summary())
        promoted = added.version
    wall["total"] = time.perf_counter() - started
    report = report.model_copy(update={"promoted_version": promoted, "wall_s": _rounded(wall)})
    _write(report, run_dir=run_dir, work_dir=Path(request.work_dir), version=version)
    _log(report, version=version)
    return RetrainOutcome(
        report=report, run_dir=run_dir, challenger_dir=challenger_dir, version=version
    )


def _challenger_recipe(recipe: RecipeConfig, card: ExpertCard) -> RecipeConfig:
    """The recipe with the champion's family name and inputs: the challenger reads what the
    champion reads (both answer the same rendered rows).

    Raises:
        RetrainError: the recipe names other inputs than the champion's card.
    """
    if recipe.inputs not in (InputSpec(), card.inputs):
        raise RetrainError(
            "the build settings name other inputs than the champion reads: a retrain keeps"
            " the champion's (build a new expert to change them)"
        )
    return recipe.model_copy(
        update={"model_id": recipe.model_id or family_name(card.model_id), "inputs": card.inputs}
    )


def _assembled(
    original: list[Row], settled: SettledRows, *, request: RetrainRequest
) -> RetrainData:
    """`assemble`, with the settled tickets left out for lack of fields counted (and named
    when too few rows are left to judge on)."""
    try:
        data = assemble(
            original,
            settled.rows,
            holdout=request.holdout,
            feedback_weight=request.feedback_weight,
        )
    except RetrainDataError as exc:
        if settled.without_fields:
            raise RetrainDataError(
                f"{exc} ({settled.without_fields} more settled tickets were left out: decided"
                " before the decision log kept field values)"
            ) from exc
        raise
    data.counts["feedback_tickets_without_fields"] = settled.without_fields
    return data


def _judge(
    request: RetrainRequest,
    *,
    data: RetrainData,
    champion: VersionInfo,
    champion_card: ExpertCard,
    challenger_dir: Path,
    built: BuildReport,
    original_path: Path,
    wall: dict[str, float],
    say: Callable[[str], None],
) -> PromotionReport:
    texts = [r.expert_input(champion_card.inputs) for r in data.evaluation]
    truth = [r.label for r in data.evaluation]
    say(f"scoring the champion and the challenger on the same {len(texts)} rows through vLLM")
    old, placement = answers(champion.path, texts, engine=request.engine)
    new, _ = answers(challenger_dir, texts, engine=request.engine)
    target = (
        champion_card.routing.target_precision
        if champion_card.routing is not None
        else request.recipe.target_precision
    )
    challenger_card = built.card
    assert challenger_card is not None
    figures = {
        name: model_figures(
            name=name,
            version=version,
            model_id=c.model_id,
            labels=list(request.taxonomy_labels),
            truth=truth,
            predictions=predictions,
            target_precision=target,
            card_threshold=c.routing.confidence_threshold if c.routing else None,
        )
        for name, version, c, predictions in (
            ("champion", champion.version, champion_card, old),
            ("challenger", None, challenger_card, new),
        )
    }
    h, c = figures["champion"], figures["challenger"]
    return PromotionReport(
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        decision=decide(h, c, request.policy),
        promoted_version=None,
        dry_run=request.dry_run,
        policy=request.policy,
        champion=h,
        challenger=c,
        paired=paired(truth, old, new),
        per_queue_changes=per_queue_changes(h, c),
        counts=data.counts,
        holdout={
            "share": request.holdout.share,
            "window_s": request.holdout.window.total_seconds() if request.holdout.window else None,
            "min_rows": request.holdout.min_rows,
            "oldest_feedback": _iso(data.evaluation[0].labeled_at),
            "newest_feedback": _iso(data.evaluation[-1].labeled_at),
        },
        build={
            "original_data": str(original_path),
            "preset": str(request.recipe.preset),
            "chosen": built.chosen,
            "fit_rows": built.fit_examples,
            "validation_rows": built.validation_examples,
            "held_out_rows": built.test_examples,
            "seconds": round(built.seconds, 1),
        },
        wall_s=_rounded(wall),
        hardware=placement,
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _rounded(wall: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in wall.items()}


def _reason(report: PromotionReport) -> str:
    h, c = report.champion, report.challenger
    return (
        f"retrain: challenger beat {h.version} on {h.rows} rows of recent feedback"
        f" (accuracy {h.accuracy:.3f} -> {c.accuracy:.3f}, macro-F1 {h.macro_f1:.3f} ->"
        f" {c.macro_f1:.3f})"
    )


def _write(report: PromotionReport, *, run_dir: Path, work_dir: Path, version: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / REPORT_JSON).write_text(report.model_dump_json(indent=2) + "\n", "utf-8")
    (run_dir / REPORT_MARKDOWN).write_text(render_markdown(report), "utf-8")
    line = {
        "at": report.at,
        "challenger": version,
        "champion": report.champion.version,
        "promote": report.decision.promote,
        "promoted_version": report.promoted_version,
        "dry_run": report.dry_run,
        "figures": report.summary(),
        "report": str(run_dir / REPORT_JSON),
    }
    with (work_dir / HISTORY_FILENAME).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def _log(report: PromotionReport, *, version: str) -> None:
    event = "challenger_promoted" if report.promoted_version else "challenger_refused"
    if report.dry_run and report.decision.promote:
        event = "challenger_would_be_promoted"
    log.info(
        event,
        challenger=version,
        champion=report.champion.version,
        rows=report.champion.rows,
        accuracy_champion=report.champion.accuracy,
        accuracy_challenger=report.challenger.accuracy,
        macro_f1_champion=report.champion.macro_f1,
        macro_f1_challenger=report.challenger.macro_f1,
        reasons=report.decision.reasons,
        latency_s=report.wall_s.get("total"),
    )


__all__ = [
    "Holdout",
    "PromotionPolicy",
    "RetrainDataError",
    "RetrainError",
    "RetrainOutcome",
    "RetrainRequest",
    "retrain",
]
