"""`ticket-router expert build|eval|calibrate`: the expert's commands.

Owns argument parsing and terminal output (rich) for building and evaluating experts. Heavy
libraries (torch, transformers, vllm, sklearn, matplotlib) are imported inside the commands,
so importing this module (every `ticket-router` start does) stays fast. What those libraries
print goes to a log file under .state/logs/ (`expert.quiet`), or to the terminal with
`--verbose`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from expert import quiet
from expert.thresholds import DEFAULT_MIN_PREDICTED, DEFAULT_STRENGTH

app = typer.Typer(
    name="expert",
    help="Build and evaluate the routing expert.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DataOpt = Annotated[Path, typer.Option("--data", help="Labeled tickets: JSONL or CSV.")]
TextColOpt = Annotated[str | None, typer.Option("--text-col", help="Text field (default: text).")]
LabelColOpt = Annotated[
    str | None, typer.Option("--label-col", help="Label field (default: label).")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help=quiet.VERBOSE_HELP)]


def _base_kind(base: str) -> str:
    """ "causal_lm" or "encoder" for a catalogue base or a model folder."""
    import json

    from expert import bases

    known = bases.spec(base)
    if known is not None:
        return known.kind
    config = Path(base) / "config.json"
    if not config.is_file():
        raise typer.BadParameter(
            f"{base}: neither a known base nor a model folder", param_hint="--base"
        )
    model_type = json.loads(config.read_text("utf-8")).get("model_type")
    return "encoder" if model_type in ("bert", "roberta", "xlm-roberta") else "causal_lm"


def _recipe_config(
    *,
    config_file: Path | None,
    flags: dict[str, object],
    base: str | None,
    merge: bool,
) -> object:
    """RecipeConfig from the advanced YAML file (if any) with the command-line flags on top."""
    import yaml

    from expert.recipe import RecipeConfig

    data: dict[str, object] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text("utf-8")) or {}
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"{config_file}: not a mapping", param_hint="--config")
        data.update(loaded)
    data.update({k: v for k, v in flags.items() if v is not None})
    if base is not None:
        kind = _base_kind(base)
        section = "llm" if kind == "causal_lm" else "encoder"
        sub = dict(data.get(section) or {})  # type: ignore[call-overload]
        sub["base"] = base
        if merge and section == "llm":
            sub["merge"] = True
        data[section] = sub
        data["candidates"] = ["llm-lora" if section == "llm" else "encoder"]
    elif merge:
        data["llm"] = {**dict(data.get("llm") or {}), "merge": True}  # type: ignore[call-overload]
    return RecipeConfig.model_validate(data)


@app.command("build")
def build(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Expert folder (replaced).")],
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    taxonomy: Annotated[
        str | None,
        typer.Option(help="Taxonomy YAML whose labels to use, or 'default'."),
    ] = None,
    preset: Annotated[
        str,
        typer.Option(
            help="fast (scratch model), balanced (MiniLM), best (MiniLM vs SmolLM2+LoRA)."
        ),
    ] = "best",
    base: Annotated[
        str | None,
        typer.Option(help="Only this base: smollm2, minilm, or a folder (GPU: Mistral-7B)."),
    ] = None,
    merge: Annotated[bool, typer.Option(help="Fold the LoRA adapter into the base.")] = False,
    budget_minutes: Annotated[
        float | None, typer.Option(min=1, help="Time budget (default: the preset's).")
    ] = None,
    target_precision: Annotated[
        float,
        typer.Option(min=0.5, max=1.0, help="Routed tickets at least this precise."),
    ] = 0.95,
    model_id: Annotated[str | None, typer.Option(help="The expert's name in outputs.")] = None,
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="Advanced YAML (shapes, rates: expert.recipe)."),
    ] = None,
    precision: Annotated[str, typer.Option(help="auto, bfloat16 or float32.")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads.")] = None,
    verbose: VerboseOpt = False,
    fields: Annotated[
        str | None,
        typer.Option(help="Fields it reads: COLUMN[=ADDRESS],... (README)."),
    ] = None,
    no_text: Annotated[
        bool, typer.Option("--no-text", help="No text column: read --fields only.")
    ] = False,
) -> None:
    """Train an expert from labeled tickets (JSONL or CSV), choose and calibrate it on
    validation rows, and print how each candidate did."""
    with quiet.library_output("expert-build", verbose=verbose):
        from pydantic import ValidationError
        from rich.console import Console

        from expert import hardware
        from expert.build import BuildError
        from expert.dataset import DatasetError
        from expert.fields import FieldError, InputSpec, parse_fields
        from expert.progress import progress
        from expert.recipe import RecipeConfig
        from expert.recipe import build as build_recipe
        from schemas.taxonomy import Taxonomy, TaxonomyError

        console = _wide_console()
        assert isinstance(console, Console)
        try:
            config = _recipe_config(
                config_file=config_file,
                flags={
                    "preset": preset,
                    "budget_minutes": budget_minutes,
                    "target_precision": target_precision,
                    "model_id": model_id,
                    "precision": precision,
                    "num_threads": threads,
                    "inputs": InputSpec(
                        fields=parse_fields(fields) if fields else (), reads_text=not no_text
                    )
                    if fields or no_text
                    else None,
                },
                base=base,
                merge=merge,
            )
            labels = None
            if taxonomy is not None:
                labels = Taxonomy.load(None if taxonomy == "default" else taxonomy).labels
        except (ValidationError, TaxonomyError, FieldError, OSError) as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from exc
        assert isinstance(config, RecipeConfig)
        console.print(hardware.describe(hardware.summary(config.precision, measure=True)))
        try:
            report = build_recipe(
                data,
                out,
                text_col=None if no_text else (text_col or "text"),
                label_col=label_col or "label",
                config=config,
                taxonomy_labels=labels,
                on_event=lambda message: console.print(f"[bold]build:[/] {message}"),
                progress_for=lambda label: progress(label),
            )
        except (BuildError, DatasetError) as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from exc
        _print_build(console, report)


def _wide_console() -> object:
    """A console that does not squeeze tables into 80 columns when output goes to a file."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=120)


def _print_build(console: object, report: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from expert.recipe import BuildReport

    assert isinstance(console, Console) and isinstance(report, BuildReport)
    card = report.card
    assert card is not None and card.routing is not None
    table = Table(
        title=f"candidates on {report.validation_examples} validation tickets "
        f"(fitted on {report.fit_examples}; {report.test_examples} held out for `expert eval`)"
    )
    for column in (
        "candidate",
        "accuracy",
        "macro-F1",
        "ECE",
        "coverage@target",
        "build s",
        "tickets/s",
    ):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for row in report.scores:
        mark = (
            " (chosen)"
            if row.name == report.chosen
            else (" (reference)" if row.name == "lexical" else "")
        )
        table.add_row(
            row.name + mark,
            f"{row.accuracy:.3f}",
            f"{row.macro_f1:.3f}",
            f"{row.ece:.3f}",
            f"{row.coverage_at_target:.3f}",
            "-" if row.build_time_s is None else f"{row.build_time_s:.0f}",
            "-" if row.tickets_per_s is None else f"{row.tickets_per_s:.0f}",
        )
    console.print(table)
    for name, reason in report.skipped.items():
        console.print(f"[yellow]skipped {name}:[/] {reason}")
    routing = card.routing
    threshold = (
        "none reached it"
        if routing.confidence_threshold is None
        else f"{routing.confidence_threshold:.3f}"
    )
    console.print(
        f"[green]built[/] {card.model_id}: {report.chosen}, {len(card.labels)} labels, "
        f"{report.seconds:.0f} s; triage threshold for {routing.target_precision:.0%} precision: "
        f"{threshold} (routes {routing.validation_coverage:.1%} of validation tickets)"
    )
    console.print(_routing_summary(routing))
    console.print(_score_summary(card))
    if (similar := card.similar) is not None:
        hit = "-" if similar.validation_hit_rate is None else f"{similar.validation_hit_rate:.1%}"
        console.print(
            f"similar-ticket index: {similar.rows} tickets ({similar.settled_rows} settled), "
            f"{similar.memory_bytes / 2**20:.1f} MiB, built in {similar.build_time_s:.1f} s; "
            f"the queue is among the {similar.k} similar tickets' for {hit} of validation tickets"
        )


@app.command("merge")
def merge_command(
    model: Annotated[Path, typer.Option("--model", help="A LoRA expert folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the merged full model.")],
    verbose: VerboseOpt = False,
) -> None:
    """Fold a LoRA expert's adapter into its base: served without per-request LoRA cost."""
    with quiet.library_output("expert-merge", verbose=verbose):
        from rich.console import Console

        from expert.bases import BaseModelError
        from expert.build import BuildError
        from expert.llm import merge_adapter

        console = Console()
        try:
            card = merge_adapter(model, out)
        except (BuildError, BaseModelError, OSError) as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from exc
        console.print(f"[green]merged[/] {card.model_id} onto {card.base_model} -> {out}")


@app.command("eval")
def evaluate_command(
    model: Annotated[Path, typer.Option("--model", help="Expert (or adapter) directory.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Report directory.")],
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    kv_cache_gib: Annotated[float, typer.Option("--kv-cache-gib")] = 1.0,
    max_num_seqs: Annotated[int, typer.Option("--max-num-seqs")] = 256,
    dtype: Annotated[
        str,
        typer.Option("--dtype", help="Engine number format: auto, bfloat16 or float32."),
    ] = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """Score the expert vs TF-IDF + LinearSVC on the build's held-out split; write a report."""
    with quiet.library_output("expert-eval", verbose=verbose):
        from rich.console import Console
        from rich.table import Table

        from expert import hardware
        from expert.evaluate import (
            card_threshold_line,
            evaluate,
            help_line,
            resolve_engine_config,
            summary_columns,
            summary_rows,
        )
        from expert.serving import ExpertLoadError, load_card

        console = _wide_console()
        assert isinstance(console, Console)
        if dtype not in hardware.REQUESTED_VALUES:
            console.print(f"[red]--dtype must be one of {', '.join(hardware.REQUESTED_VALUES)}[/]")
            raise typer.Exit(2)
        console.print(hardware.describe(hardware.summary(dtype, measure=True)))
        try:
            card = load_card(model)
            config = resolve_engine_config(
                model, card, kv_cache_gib=kv_cache_gib, max_num_seqs=max_num_seqs, dtype=dtype
            )
            report = evaluate(
                model,
                data,
                out_dir=out,
                text_col=text_col,
                label_col=label_col,
                engine_config=config,
            )
        except ExpertLoadError as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(4) from exc
        table = Table(
            title=f"{report.model_id} vs TF-IDF + LinearSVC: "
            f"{report.test_examples} held-out tickets"
        )
        table.add_column("metric")
        for column in summary_columns(report):
            table.add_column(column, justify="right")
        for row in summary_rows(report):
            table.add_row(*row)
        console.print(table)
        if (line := card_threshold_line(report)) is not None:
            console.print(line)
        if report.thresholds is not None:
            from expert.queue_report import summary_line

            console.print(summary_line(report.thresholds))
        if (line := help_line(report)) is not None:
            console.print(line)
        if report.engine:
            cpu = report.engine.get("cpu")
            console.print(
                f"engine: dtype {report.engine.get('dtype')}, {report.engine.get('threads')} "
                f"thread(s), cpu {cpu.get('kind') if isinstance(cpu, dict) else '?'}"
            )
        if report.data_matches_build is False:
            console.print("[yellow]the data file differs from the one the expert was built on[/]")
        console.print(f"report: {out / 'report.md'} (JSON, PNGs beside it)")


@app.command("calibrate")
def calibrate_command(
    model: Annotated[Path, typer.Option("--model", help="Expert folder (its card is rewritten).")],
    target: Annotated[
        float | None,
        typer.Option("--target-precision", help="Default: the card's target (else 0.95)."),
    ] = None,
    min_queue_tickets: Annotated[
        int,
        typer.Option(
            "--min-queue-tickets",
            help="A queue predicted for fewer validation tickets keeps the global threshold.",
        ),
    ] = DEFAULT_MIN_PREDICTED,
    strength: Annotated[
        float,
        typer.Option("--strength", help="z of the lower bound on each queue's precision."),
    ] = DEFAULT_STRENGTH,
    data: Annotated[
        Path | None, typer.Option("--data", help="The build's data, if it moved.")
    ] = None,
    routing_score: Annotated[
        bool,
        typer.Option(
            help="Fit a routing score (P(answer right)) for the thresholds to read (README)."
        ),
    ] = True,
) -> None:
    """Re-choose the global and per-queue thresholds on the card's validation rows (no
    retraining): after changing the target precision, or for an expert built before
    per-queue thresholds or the routing score."""
    from rich.console import Console

    from expert.calibrate import CalibrationError, recalibrate_card
    from expert.serving import ExpertLoadError

    console = _wide_console()
    assert isinstance(console, Console)
    try:
        card = recalibrate_card(
            model,
            target=target,
            min_predicted=min_queue_tickets,
            strength=strength,
            data_path=data,
            with_score=routing_score,
        )
    except ExpertLoadError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(4) from exc
    except (CalibrationError, OSError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    assert card.routing is not None
    console.print(_routing_summary(card.routing))
    console.print(_score_summary(card))


def _score_summary(card: object) -> str:
    from expert.card import ExpertCard

    assert isinstance(card, ExpertCard)
    score = card.routing_score
    if score is None:
        return "the thresholds read the answered queue's probability"
    return (
        f"the thresholds read a routing score fitted on {score.validation_examples} "
        f"validation tickets ({len(score.features)} features, {score.neighbours} similar "
        f"tickets; cross-fitted in {score.folds} folds)"
    )


def _routing_summary(routing: object) -> str:
    from expert.card import RoutingCalibration

    assert isinstance(routing, RoutingCalibration)
    sources = [c.source for c in routing.queue_calibration.values()]
    threshold = (
        "none reached it"
        if routing.confidence_threshold is None
        else f"{routing.confidence_threshold:.3f}"
    )
    return (
        f"target {routing.target_precision:.0%} on {routing.validation_examples} validation "
        f"tickets: global threshold {threshold} routes {routing.validation_coverage:.1%}; "
        f"per-queue thresholds route {routing.queue_validation_coverage or 0:.1%} at precision "
        f"{routing.queue_validation_precision or 0:.3f} ({sources.count('queue')} queues own, "
        f"{sources.count('global')} global fallback, {sources.count('unreachable')} unreachable)"
    )


@app.command("prepare-incidents")
def prepare_incidents_command(
    data: Annotated[Path, typer.Option("--data", help="Incident event log (CSV).")],
    out: Annotated[Path, typer.Option("--out", help="One row per incident (CSV).")],
    fields: Annotated[
        str | None,
        typer.Option(help="Opening fields to keep (comma-separated; default: the usual ten)."),
    ] = None,
) -> None:
    """Turn a ServiceNow incident event log into build data: per incident, the first
    event's fields and the last event's assignment group (the label)."""
    from rich.console import Console

    from expert.incidents import OPENING_FIELDS, IncidentLogError, prepare

    console = Console()
    chosen = tuple(f.strip() for f in fields.split(",")) if fields else OPENING_FIELDS
    try:
        done = prepare(data, out, fields=chosen)
    except IncidentLogError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    console.print(
        f"[green]wrote[/] {out}: {done.incidents} incidents from {done.events} events "
        f"({done.dropped} without a final group left out), {done.groups} groups, majority "
        f"{done.majority_share:.1%}, first group = final for {done.first_equals_final:.1%}"
    )
