"""`ticket-router bench thresholds`: how the ways of choosing triage thresholds on
validation rows hold up on unseen rows, over several random splits of one data file.

Owns that measurement. The expert in it is the calibrated lexical model alone (fitted in
seconds, so many splits are affordable; `expert build` fits its validation probabilities the
same way): for each split seed it fits on the fit rows, calibrates on the validation rows,
chooses thresholds there by each strategy, and scores them on the test rows. It prints the
mean coverage and realised precision per strategy and how many splits reach the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Strategy = tuple[str, float, float | None]  # name, strength z, min predicted (None: global)
STRATEGIES: tuple[Strategy, ...] = (
    ("global, raw", 0.0, None),
    ("global, Wilson z 1", 1.0, None),
    ("per queue, raw, min 20", 0.0, 20),
    ("per queue, z 0.5, min 20", 0.5, 20),
    ("per queue, z 1, min 10", 1.0, 10),
    ("per queue, z 1, min 20 (default)", 1.0, 20),
)


def _split_figures(
    data: Path, *, text_col: str, label_col: str, seed: int, target: float
) -> dict[str, tuple[float, float | None]]:
    import numpy as np

    from expert.calibrate import routing_calibration
    from expert.dataset import read_examples, split, validation_split
    from expert.fusion import combine, fit_confidence_map, fit_weights, recalibrate
    from expert.lexical import LexicalModel
    from expert.metrics import threshold_at_precision
    from expert.thresholds import routed_figures

    examples = read_examples(data, text_col=text_col, label_col=label_col)
    labels = sorted(set(examples.labels))
    index = {label: i for i, label in enumerate(labels)}
    parts = split(examples, seed=seed, test_fraction=0.2)
    fit, val = validation_split(parts.train, fraction=0.1, seed=seed)
    y = np.asarray([index[t] for t in val.labels])
    lexical = LexicalModel.fit(fit.texts, fit.labels, labels=labels)
    weights = fit_weights(y, lexical_scores=lexical.scores(val.texts))
    pooled = combine(weights, neural_probabilities=None, lexical_scores=lexical.scores(val.texts))
    cmap = fit_confidence_map(pooled.max(1).tolist(), (pooled.argmax(1) == y).tolist())
    val_probs = recalibrate(pooled, cmap)
    test_scores = lexical.scores(parts.test.texts)
    test_probs = recalibrate(
        combine(weights, neural_probabilities=None, lexical_scores=test_scores), cmap
    )
    conf = test_probs.max(1).tolist()
    predicted = [labels[i] for i in test_probs.argmax(1)]
    truth = list(parts.test.labels)
    correct = [p == t for p, t in zip(predicted, truth, strict=True)]
    _, oracle, _ = threshold_at_precision(conf, correct, target=target)
    out: dict[str, tuple[float, float | None]] = {"global chosen on the test rows": (oracle, None)}
    for name, z, min_predicted in STRATEGIES:
        routing = routing_calibration(
            val_probs,
            y,
            labels=labels,
            target=target,
            min_predicted=int(min_predicted or len(y) + 1),  # global: every queue falls back
            strength=z,
        )
        out[name] = routed_figures(
            conf, predicted, truth, thresholds=routing.queue_thresholds, default=1.0
        )
    return out


def bench_thresholds(
    data: Annotated[Path, typer.Option("--data", help="Labeled tickets: JSONL or CSV.")],
    text_col: Annotated[str, typer.Option("--text-col")] = "text",
    label_col: Annotated[str, typer.Option("--label-col")] = "label",
    seeds: Annotated[int, typer.Option(help="Random splits (seeds 1..N).")] = 5,
    target: Annotated[float, typer.Option("--target-precision")] = 0.95,
) -> None:
    """Coverage and realised test precision of each threshold strategy over N splits."""
    from rich.console import Console
    from rich.table import Table

    runs = [
        _split_figures(data, text_col=text_col, label_col=label_col, seed=s, target=target)
        for s in range(1, seeds + 1)
    ]
    table = Table(title=f"{data.name}: thresholds chosen on validation, scored on test")
    for column in ("strategy", "mean coverage", "mean precision", "lowest", "splits >= target"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name in runs[0]:
        coverage = [run[name][0] for run in runs]
        precision = [p for run in runs if (p := run[name][1]) is not None]
        table.add_row(
            name,
            f"{sum(coverage) / len(coverage):.3f}",
            f"{sum(precision) / len(precision):.3f}" if precision else "—",
            f"{min(precision):.3f}" if precision else "—",
            f"{sum(p >= target for p in precision)}/{len(runs)}" if precision else "—",
        )
    Console().print(table)
