"""What the drift scenario runs with: its options and the older desk's expert.

Owns `DriftOptions` (what `ticket-router loadgen drift` was asked for), the small recipe
the older expert is built and retrained with (`drift_recipe`), building that expert once
and reusing it while its card and data match (`ensure_old_expert`), and making it the
registry's first version. It starts no process and reads no Kafka: `scenarios.drift` runs
the phases, `scenarios.drift_loop` the live part.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from expert.recipe import RecipeConfig
    from schemas.taxonomy import Taxonomy

DRIFT_MODEL_ID = "drift-expert"


def drift_recipe() -> RecipeConfig:
    """The preset-fast recipe with a small from-scratch model: the scenario builds the older
    expert with it once, and retrains with it while the worker routes, so both must take
    minutes on two shared cores (imported late: `ticket-router --help` stays fast)."""
    from expert.build import BuildConfig
    from expert.recipe import Preset, RecipeConfig

    return RecipeConfig(
        model_id=DRIFT_MODEL_ID,
        preset=Preset.FAST,
        budget_minutes=6,
        scratch=BuildConfig(
            model_id=DRIFT_MODEL_ID,
            vocab_size=1024,
            hidden_size=128,
            num_layers=2,
            num_heads=2,
            intermediate_size=256,
            max_prompt_tokens=96,
            epochs=2,
            batch_size=32,
            learning_rate=3e-3,
        ),
    )


DEFAULT_MODEL_DIR = Path(".state/models/drift-old-expert")


@dataclass(frozen=True, slots=True)
class DriftOptions:
    """What `ticket-router loadgen drift` was asked for.

    Attributes:
        out_dir: the run folder (registry, decision log, retrain runs, logs, report).
        port: the embedded broker's port (None: a free one).
        model_dir: where the older desk's expert is cached.
        old_corpus_n: tickets the older expert is trained on.
        traffic_n: tickets of each world the replay draws from.
        seed: seed of the corpora, the traffic and the desk.
        rate_per_s: tickets per second offered (Poisson arrivals).
        before_drift_s: seconds of the older world's traffic before the drift.
        new_product_share: share of drifted tickets about the new product.
        after_swap_s: seconds of traffic after the swap before the run ends.
        max_replay_s: the replay ends by then whatever happened.
        speedup: desk minutes per real minute (the desk's answers arrive that much sooner).
        noise: share of the desk's answers that are human mistakes.
        drop: retrain when the live accuracy of the last `window_s` of feedback is this far
            below the best it was (`scenarios.drift_plan.TriggerPolicy`) ...
        labels_after_drop: ... once this many more decisions were judged since.
        window_s: the live-accuracy window.
        retrain_by_s: retrain at this many seconds of replay whatever the accuracy does.
        holdout_share: the newest share of feedback the challenger is judged on.
        feedback_weight: each feedback row counts this many times in the challenger's data
            (the older desk filed ~230 cloud tickets under servers; a few hundred drifted
            tickets outweigh them only when they count more: `expert retrain
            --feedback-weight`).
        min_eval_rows: the retrain needs at least this many slice rows.
        fmt: payload format of the replayed tickets.
    """

    out_dir: Path = Path(".state/drift")
    port: int | None = None
    model_dir: Path = DEFAULT_MODEL_DIR
    old_corpus_n: int = 3000
    traffic_n: int = 3000
    seed: int = 0
    rate_per_s: float = 8.0
    before_drift_s: float = 90.0
    new_product_share: float = 0.25
    after_swap_s: float = 120.0
    max_replay_s: float = 660.0
    speedup: float = 60.0
    noise: float = 0.02
    drop: float = 0.05
    labels_after_drop: int = 600
    window_s: float = 30.0
    retrain_by_s: float = 330.0
    holdout_share: float = 0.2
    feedback_weight: int = 3
    min_eval_rows: int = 100
    fmt: str = "servicenow"


def ensure_old_expert(
    model_dir: Path, *, n: int, seed: int, taxonomy: Taxonomy, say: Any = print
) -> Path:
    """The expert trained on the older desk's tickets (cloud filed under servers, no new
    product), built with `drift_recipe()` once and reused while its card and data match."""
    from expert.dataset import file_sha256
    from expert.recipe import build
    from expert.serving import ExpertLoadError, check_labels, load_card
    from loadgen.corpus import generate, write_jsonl
    from loadgen.corpus_drift import OLD_DESK

    data = (model_dir.parent / f"drift-old-corpus-{n}-{seed}.jsonl").resolve()
    with contextlib.suppress(ExpertLoadError, OSError):
        card = load_card(model_dir)
        check_labels(card, taxonomy.labels)
        training = card.training
        if (
            card.model_id == DRIFT_MODEL_ID
            and training is not None
            and Path(training.data_path) == data
            and file_sha256(data) == training.data_sha256
        ):
            say(f"reusing the older desk's expert in {model_dir}")
            return model_dir
    write_jsonl(generate(n, seed=seed, drift=OLD_DESK), data)
    say(f"building the older desk's expert from {n} tickets (preset fast, small model)")
    build(data, model_dir, config=drift_recipe(), taxonomy_labels=taxonomy.labels, on_event=say)
    return model_dir


def write_recipe(path: Path) -> None:
    """Write `drift_recipe()` as YAML for the retrain's `--config`."""
    import yaml

    path.write_text(yaml.safe_dump(drift_recipe().model_dump(mode="json")), "utf-8")


def seed_registry(root: Path, model_dir: Path, *, say: Any = print) -> str:
    """Add the older expert to the registry at `root` and promote it; its version."""
    from expert.registry import Registry

    registry = Registry(root)
    info = registry.add(model_dir)
    registry.promote(info.version, reason="drift scenario: the expert of the older desk")
    say(f"{root}: current version {info.version}")
    return info.version
