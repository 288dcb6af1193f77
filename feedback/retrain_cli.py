"""`ticket-router expert retrain`: the command around `feedback.retrain`.

Owns the command's options, reading the settled tickets (the feedback consumer's decision
log, read-only beside a running consumer, or a `decisions labels` JSONL file), the terminal
output and the exit codes: 0 the challenger was judged (promoted or refused: the report says
which), 1 crash, 2 bad input (no champion, its data changed or is missing, too little
feedback, bad options), 4 an expert could not be loaded or served. Mounted under `expert`
by the top-level script (the expert package cannot import the decision log).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from expert import quiet

if TYPE_CHECKING:
    from expert.recipe import RecipeConfig
    from feedback.retrain import RetrainOutcome
    from schemas.feedback import LabeledTicket

DEFAULT_STORE = Path(".state/feedback/decisions.sqlite3")


def _labeled(store: Path, labels: Path | None) -> Iterator[LabeledTicket]:
    from feedback.decision_log import DecisionLog
    from schemas.feedback import LabeledTicket

    if labels is not None:
        with labels.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield LabeledTicket.model_validate_json(line)
        return
    if not store.is_file():
        raise typer.BadParameter(f"no decision log at {store}", param_hint="--store")
    log_ = DecisionLog(store, read_only=True)
    log_.open()
    try:
        yield from log_.labeled_tickets()
    finally:
        log_.close()


def _recipe(config: Path | None, preset: str, budget_minutes: float | None) -> RecipeConfig:
    import yaml

    from expert.recipe import RecipeConfig

    data: dict[str, object] = {}
    if config is not None:
        loaded = yaml.safe_load(config.read_text("utf-8")) or {}
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"{config}: not a mapping", param_hint="--config")
        data.update(loaded)
    data["preset"] = preset
    if budget_minutes is not None:
        data["budget_minutes"] = budget_minutes
    return RecipeConfig.model_validate(data)


def retrain(
    registry: Annotated[
        Path, typer.Option(help="The model registry; its current version is the champion.")
    ],
    store: Annotated[
        Path, typer.Option(help="The feedback consumer's decision log (read-only).")
    ] = DEFAULT_STORE,
    labels: Annotated[
        Path | None,
        typer.Option(help="A `decisions labels` JSONL file instead of the decision log."),
    ] = None,
    work_dir: Annotated[
        Path, typer.Option(help="Each run's folder (data, challenger, report) and history.")
    ] = Path(".state/retrain"),
    preset: Annotated[str, typer.Option(help="The challenger's build: fast, balanced, best.")] = (
        "fast"
    ),
    budget_minutes: Annotated[
        float | None, typer.Option(min=1, help="Overrides the preset's build budget.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Advanced build settings (YAML, as `expert build`).")
    ] = None,
    holdout_share: Annotated[
        float,
        typer.Option(min=0.01, max=0.9, help="The newest share of feedback judged on."),
    ] = 0.2,
    holdout_hours: Annotated[
        float | None,
        typer.Option(help="Judge on the feedback of the last N hours instead of a share."),
    ] = None,
    min_eval_rows: Annotated[
        int, typer.Option(min=1, help="Fewer recent feedback rows than this: no verdict.")
    ] = 50,
    min_accuracy_gain: Annotated[
        float, typer.Option(help="Promote only if accuracy rises at least this much (0.01).")
    ] = 0.01,
    max_macro_f1_drop: Annotated[
        float, typer.Option(min=0, help="... and macro-F1 drops at most this much.")
    ] = 0.005,
    feedback_weight: Annotated[
        int,
        typer.Option(
            min=1,
            help="Each feedback row counts N times: newer labels outweigh an older desk's.",
        ),
    ] = 1,
    original_data: Annotated[
        Path | None,
        typer.Option(help="The champion's training data, when not where its card says."),
    ] = None,
    taxonomy: Annotated[
        Path | None, typer.Option(help="Taxonomy YAML (default: the worker's).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Judge and report; never promote.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=quiet.VERBOSE_HELP)] = False,
) -> None:
    """Build a challenger from the champion's training data plus the desk's feedback, score
    both on the same recent feedback, and promote it only when it is better by the margins."""
    with quiet.library_output("expert-retrain", verbose=verbose):
        from pydantic import ValidationError

        from expert.build import BuildError
        from expert.progress import progress
        from expert.recipe import Preset
        from expert.registry import RegistryError
        from expert.serving import ExpertLoadError
        from feedback.decision_log import DecisionLogError
        from feedback.promotion import PromotionPolicy
        from feedback.retrain import (
            Holdout,
            RetrainDataError,
            RetrainError,
            RetrainRequest,
        )
        from feedback.retrain import retrain as run_retrain
        from schemas.taxonomy import Taxonomy, TaxonomyError
        from worker.config import load_settings

        console = Console(file=quiet.user_stderr())
        try:
            settings = load_settings()
            request = RetrainRequest(
                registry_dir=registry,
                taxonomy_labels=Taxonomy.load(taxonomy or settings.taxonomy_path).labels,
                work_dir=work_dir,
                recipe=_recipe(config, Preset(preset).value, budget_minutes),
                holdout=Holdout(
                    share=holdout_share,
                    window=timedelta(hours=holdout_hours) if holdout_hours else None,
                    min_rows=min_eval_rows,
                ),
                policy=PromotionPolicy(
                    min_accuracy_gain=min_accuracy_gain, max_macro_f1_drop=max_macro_f1_drop
                ),
                engine=settings.engine,
                original_data=original_data,
                feedback_weight=feedback_weight,
                dry_run=dry_run,
            )
        except (ValidationError, TaxonomyError, ValueError, OSError) as exc:
            console.print(f"[red]invalid options:[/] {exc}")
            raise typer.Exit(2) from exc
        try:
            outcome = run_retrain(
                request,
                _labeled(store, labels),
                on_event=lambda message: console.print(f"retrain: {message}"),
                progress_for=lambda label: progress(f"challenger: {label}"),
            )
        except (RetrainError, RetrainDataError, RegistryError, BuildError, DecisionLogError) as exc:
            console.print(f"[red]retrain:[/] {exc}")
            raise typer.Exit(2) from exc
        except ExpertLoadError as exc:
            console.print(f"[red]retrain: an expert could not be served:[/] {exc}")
            raise typer.Exit(4) from exc
        _print_outcome(outcome)


def _print_outcome(outcome: RetrainOutcome) -> None:
    from feedback.retrain import REPORT_MARKDOWN

    report = outcome.report
    verdict = (
        f"[green]promoted[/] {report.promoted_version}"
        if report.promoted_version
        else ("would be promoted (dry run)" if report.decision.promote else "[yellow]refused[/]")
    )
    Console().print(
        f"{verdict}: accuracy {report.champion.accuracy:.1%} -> {report.challenger.accuracy:.1%},"
        f" macro-F1 {report.champion.macro_f1:.3f} -> {report.challenger.macro_f1:.3f} on"
        f" {report.champion.rows} rows; {report.wall_s.get('total', 0):.0f} s; report"
        f" {outcome.run_dir / REPORT_MARKDOWN}"
    )
    for reason in report.decision.reasons:
        Console().print(f"  {reason}")
