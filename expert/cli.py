"""`ticket-router expert build|eval`: the expert's commands.

Owns argument parsing and terminal output (rich) for building and evaluating experts. Heavy
libraries (torch, transformers, vllm, sklearn, matplotlib) are imported inside the commands,
so importing this module (every `ticket-router` start does) stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="expert",
    help="Build and evaluate the routing expert.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DataOpt = Annotated[Path, typer.Option("--data", help="Labeled tickets: JSONL or CSV.")]
TextColOpt = Annotated[
    str | None, typer.Option("--text-col", help="Text field/column (default: text).")
]
LabelColOpt = Annotated[
    str | None, typer.Option("--label-col", help="Label field/column (default: label).")
]


def _mode_problem(*, encoder: bool, lora: bool, base_model: Path | None) -> str | None:
    """Why the build-mode flags do not go together, or None when they do."""
    if encoder and lora:
        return "--encoder and --lora exclude each other"
    if not encoder and lora != (base_model is not None):
        return "--lora and --base-model go together"
    return None


@app.command("build")
def build(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Model (or adapter) directory to write.")],
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    taxonomy: Annotated[
        str | None,
        typer.Option(
            "--taxonomy",
            help="Enforce a taxonomy's labels: a YAML path, or 'default' for the packaged one.",
        ),
    ] = None,
    base_model: Annotated[
        Path | None,
        typer.Option(
            "--base-model",
            help="Base model folder: the LLM under --lora, or the encoder --encoder fine-tunes "
            "(default there: the packaged all-MiniLM-L6-v2).",
        ),
    ] = None,
    lora: Annotated[
        bool, typer.Option("--lora", help="Train a LoRA adapter on --base-model.")
    ] = False,
    encoder: Annotated[
        bool,
        typer.Option(
            "--encoder",
            help="Fine-tune a pretrained encoder (BERT) as a sequence classifier, served by "
            "vLLM's pooling runner.",
        ),
    ] = False,
    class_weighting: Annotated[
        str,
        typer.Option(
            "--class-weighting",
            help="With --encoder: loss weight per class: none, sqrt_inverse or inverse.",
        ),
    ] = "none",
    lora_rank: Annotated[int, typer.Option("--lora-rank", min=1)] = 16,
    model_id: Annotated[str | None, typer.Option("--model-id")] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", min=0.01, help="Default: 2 (3 with --encoder).")
    ] = None,
    hidden_size: Annotated[int, typer.Option("--hidden-size")] = 256,
    layers: Annotated[int, typer.Option("--layers")] = 4,
    heads: Annotated[int, typer.Option("--heads")] = 4,
    intermediate_size: Annotated[int, typer.Option("--intermediate-size")] = 512,
    vocab_size: Annotated[int, typer.Option("--vocab-size")] = 1024,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option("--max-prompt-tokens", help="Default: 96 (128 with --encoder)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    learning_rate: Annotated[
        float | None, typer.Option("--lr", help="Default: 3e-3 (5e-5 with --encoder).")
    ] = None,
    lm_loss_weight: Annotated[float, typer.Option("--lm-loss-weight")] = 0.0,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="torch threads (default: all cores).")
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="Training number format: auto (bfloat16 where the CPU runs it natively, else "
            "float32), bfloat16 or float32.",
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    split_seed: Annotated[int, typer.Option("--split-seed")] = 0,
    test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.0, max=0.9)] = 0.2,
) -> None:
    """Train an expert: from scratch, a LoRA adapter (--lora --base-model DIR), or a
    fine-tuned encoder classifier (--encoder [--base-model DIR])."""
    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from expert import hardware
    from expert.build import BuildConfig, BuildError, build_expert, build_lora
    from expert.dataset import DatasetError
    from expert.encoder import EncoderConfig, build_classifier
    from schemas.taxonomy import Taxonomy, TaxonomyError

    console = Console()
    if precision not in hardware.REQUESTED_VALUES:
        console.print(f"[red]--precision must be one of {', '.join(hardware.REQUESTED_VALUES)}[/]")
        raise typer.Exit(2)
    console.print(hardware.describe(hardware.summary(precision, measure=True)))
    problem = _mode_problem(encoder=encoder, lora=lora, base_model=base_model)
    if problem is not None:
        console.print(f"[red]{problem}[/]")
        raise typer.Exit(2)
    try:
        labels = None
        if taxonomy is not None:
            labels = Taxonomy.load(None if taxonomy == "default" else taxonomy).labels
    except TaxonomyError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    shared = {
        "model_id": model_id,
        "batch_size": batch_size,
        "seed": seed,
        "split_seed": split_seed,
        "test_fraction": test_fraction,
        "num_threads": threads,
        "precision": precision,
    }
    # Unset flags keep each builder's own defaults.
    given = {
        k: v
        for k, v in {
            "epochs": epochs,
            "max_prompt_tokens": max_prompt_tokens,
            "learning_rate": learning_rate,
        }.items()
        if v is not None
    }
    try:
        config: BuildConfig | EncoderConfig
        if encoder:
            config = EncoderConfig(**shared, **given, class_weighting=class_weighting)
        else:
            config = BuildConfig(
                **shared,
                **given,
                hidden_size=hidden_size,
                num_layers=layers,
                num_heads=heads,
                intermediate_size=intermediate_size,
                vocab_size=vocab_size,
                lm_loss_weight=lm_loss_weight,
                lora_rank=lora_rank,
            )
    except ValidationError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    columns = (
        TextColumn("[bold]training"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=None, loss=float("nan"))

        def on_progress(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, loss=loss)

        common = {
            "text_col": text_col or "text",
            "label_col": label_col or "label",
            "config": config,
            "taxonomy_labels": labels,
            "on_progress": on_progress,
        }
        try:
            if encoder:
                card = build_classifier(data, out, base_dir=base_model, **common)  # type: ignore[arg-type]
            elif base_model is not None:
                card = build_lora(data, out, base_dir=base_model, **common)  # type: ignore[arg-type]
            else:
                card = build_expert(data, out, **common)  # type: ignore[arg-type]
        except (BuildError, DatasetError) as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from exc
    t = card.training
    assert t is not None  # build always records its training
    console.print(
        f"[green]built[/] {card.model_id} -> {out}: {len(card.labels)} labels, "
        f"{t.parameters:,} trainable / {t.total_parameters:,} parameters, "
        f"{t.train_examples} train / {t.test_examples} held out, "
        f"final loss {t.final_loss:.3f}, {t.build_time_s:.0f} s"
    )


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
) -> None:
    """Score the expert vs TF-IDF + LinearSVC on the build's held-out split; write a report."""
    from rich.console import Console
    from rich.table import Table

    from expert import hardware
    from expert.engine import ExpertLoadError, load_card
    from expert.evaluate import evaluate, resolve_engine_config, summary_rows

    console = Console()
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
            model, data, out_dir=out, text_col=text_col, label_col=label_col, engine_config=config
        )
    except ExpertLoadError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(4) from exc
    table = Table(
        title=f"{report.model_id} vs TF-IDF + LinearSVC: {report.test_examples} held-out tickets"
    )
    table.add_column("metric")
    table.add_column(f"expert ({report.model_id})", justify="right")
    table.add_column("TF-IDF + LinearSVC", justify="right")
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    if report.engine:
        cpu = report.engine.get("cpu")
        console.print(
            f"engine: dtype {report.engine.get('dtype')}, {report.engine.get('threads')} "
            f"thread(s), cpu {cpu.get('kind') if isinstance(cpu, dict) else '?'}"
        )
    if report.data_matches_build is False:
        console.print("[yellow]the data file differs from the one the expert was built on[/]")
    console.print(f"report: {out / 'report.md'} (JSON, PNGs beside it)")
