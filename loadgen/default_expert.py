"""The embedded default expert: built once from the synthetic corpus, then reused from cache.

Owns where the default expert lives and how it is made, so the demo, the benchmarks and
capacity mode all serve the same model. Building is `expert.build`'s job; this module only
decides whether a build is needed.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from schemas.taxonomy import Taxonomy

log = structlog.get_logger(__name__)

DEFAULT_MODEL_DIR = Path(".state/models/default-expert")
DEFAULT_CORPUS_SIZE = 10_000
DEFAULT_CORPUS_SEED = 0


def is_current(model_dir: Path, taxonomy: Taxonomy) -> bool:
    """True when `model_dir` holds an expert answering exactly the taxonomy's queues, built
    by the current recipe (fused with its lexical model and calibrated on validation rows)."""
    from expert.serving import ExpertLoadError, check_labels, load_card

    try:
        card = load_card(model_dir)
        check_labels(card, taxonomy.labels)
    except ExpertLoadError:
        return False
    return card.fusion is not None and card.routing is not None


def ensure_default_expert(
    model_dir: Path = DEFAULT_MODEL_DIR,
    *,
    taxonomy: Taxonomy | None = None,
    n: int = DEFAULT_CORPUS_SIZE,
    seed: int = DEFAULT_CORPUS_SEED,
) -> Path:
    """Return `model_dir`, building the default expert there first if it is missing or stale.

    The build is `expert build --preset fast` on `n` synthetic tickets: a ~2.9M-parameter
    Llama from scratch fused with the lexical model, calibrated on validation rows (a few
    minutes on two cores), with progress lines; later calls reuse it.
    """
    from expert.progress import progress
    from expert.recipe import Preset, RecipeConfig, build
    from loadgen.corpus import generate, write_jsonl

    tax = taxonomy or Taxonomy.load()
    if is_current(model_dir, tax):
        log.info("default_expert_reused", model_dir=str(model_dir))
        return model_dir
    corpus = model_dir.parent / f"default-corpus-{n}-{seed}.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(generate(n, seed=seed), corpus)
    report = build(
        corpus,
        model_dir,
        config=RecipeConfig(model_id="default-expert", preset=Preset.FAST),
        taxonomy_labels=tax.labels,
        on_event=lambda message: log.info("default_expert_build", step=message),
        progress_for=lambda label: progress(f"default expert: {label}"),
    )
    log.info(
        "default_expert_built",
        model_dir=str(model_dir),
        tickets=n,
        chosen=report.chosen,
        latency_s=round(report.seconds, 1),
    )
    return model_dir
