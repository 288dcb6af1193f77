"""The default `expert build`: train the candidates that fit a time budget, fuse each with
the lexical model, choose and calibrate on validation rows, write one expert folder.

Owns the presets (fast / balanced / best: which neural candidates, how many minutes; the
candidates are "scratch" (a small Llama trained from nothing), "encoder" (MiniLM fine-tuned as
a classifier) and "llm-lora" (a pretrained LLM with a LoRA adapter, the reference recipe)), the
budget split between candidates, scoring every candidate through the real serving path
(vLLM, `expert.engine.BatchExpert`) on validation rows, the choice, the triage threshold for
a target precision, and assembling the final folder (the chosen neural model's files, the
lexical model's files, a card recording every candidate's figures). The held-out test rows
of `expert.dataset.split` are never seen here: `expert eval` scores them.

Choice rule: the candidate with the highest validation accuracy + macro-F1 among those
vLLM serves (neural alone, or neural fused with the lexical model). The lexical model alone
is scored too, as the reference the served expert must beat; it is never served alone.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field

from expert import bases
from expert.build import (
    BuildConfig,
    BuildError,
    Trained,
    choose_labels,
    train_scratch,
    training_info,
    write_card,
)
from expert.calibrate import calibrate_routing, validation_answers
from expert.card import CARD_FILENAME, ExpertCard, FusionInfo, ValidationScores
from expert.dataset import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    DEFAULT_VALIDATION_FRACTION,
    Examples,
    read_examples,
    split,
    validation_split,
)
from expert.encoder import EncoderConfig, train_classifier
from expert.fields import InputSpec
from expert.fusion import (
    ConfidenceMap,
    FusionWeights,
    combine,
    fit_confidence_map,
    fit_weights,
    negative_log_likelihood,
    recalibrate,
)
from expert.hardware import Requested
from expert.lexical import LexicalModel, LexicalSettings, lexical_dir
from expert.llm import LlmConfig, train_lora
from expert.metrics import TARGET_PRECISION, expected_calibration_error, threshold_at_precision
from expert.serving import EngineFailure, ExpertLoadError
from expert.similar_build import SimilarSettings, training_tickets, write_index
from expert.thresholds import DEFAULT_MIN_PREDICTED, DEFAULT_STRENGTH
from expert.training import ProgressCallback

log = structlog.get_logger(__name__)

CANDIDATES_DIR = ".candidates"
LEXICAL = "lexical"


class Preset(StrEnum):
    """Measured build configurations (expert/RESULTS.md has their figures)."""

    FAST = "fast"
    BALANCED = "balanced"
    BEST = "best"


@dataclass(frozen=True, slots=True)
class PresetPlan:
    """What a preset trains and how long it may take.

    Attributes:
        candidates: neural candidates, in training order (cheapest first).
        budget_minutes: wall-time budget of the whole build.
    """

    candidates: tuple[str, ...]
    budget_minutes: float


PRESETS: dict[Preset, PresetPlan] = {
    Preset.FAST: PresetPlan(candidates=("scratch",), budget_minutes=10),
    Preset.BALANCED: PresetPlan(candidates=("encoder",), budget_minutes=20),
    Preset.BEST: PresetPlan(candidates=("encoder", "llm-lora"), budget_minutes=45),
}


class RecipeConfig(BaseModel):
    """Everything a default build needs; the model shapes live in the per-candidate configs.

    Attributes:
        preset: which candidates and budget (see PRESETS).
        budget_minutes: overrides the preset's budget.
        candidates: overrides the preset's candidate list (advanced).
        target_precision: the triage threshold is chosen so validation precision reaches it.
        queue_min_predicted: a queue the expert predicts for fewer validation tickets than
            this keeps the global threshold; the others get their own (`expert.thresholds`).
        queue_strength: z of the Wilson lower bound each queue's precision is judged by
            (0: the raw validation precision, which over-fits).
        validation_fraction: share of the training part held back for validation.
        scratch, encoder, llm: per-candidate settings (advanced: a config file). The
            encoder's base defaults to the packaged all-MiniLM-L6-v2 and the LLM's to
            SmolLM2-135M-Instruct (both from PyPI); on a GPU host `llm.base` names a
            Mistral-7B-Instruct folder.
        keep_candidates: keep every candidate's folder under `<out>/.candidates`.
        inputs: structured fields the expert reads (`expert.fields`; `--fields`), and
            whether it reads text; the default is text alone.
        routing_score: fit a routing score on the validation rows (`expert.routing_score`)
            and choose the thresholds on it; off: they read the answered queue's probability.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str | None = None
    preset: Preset = Preset.BEST
    budget_minutes: float | None = Field(default=None, gt=0)
    candidates: tuple[str, ...] | None = None
    target_precision: float = Field(default=TARGET_PRECISION, gt=0, le=1)
    queue_min_predicted: int = Field(default=DEFAULT_MIN_PREDICTED, ge=1)
    queue_strength: float = Field(default=DEFAULT_STRENGTH, ge=0)
    validation_fraction: float = Field(default=DEFAULT_VALIDATION_FRACTION, gt=0, lt=0.5)
    seed: int = 0
    split_seed: int = DEFAULT_SPLIT_SEED
    test_fraction: float = Field(default=DEFAULT_TEST_FRACTION, ge=0.0, lt=1.0)
    precision: Requested = "auto"
    num_threads: int | None = Field(default=None, ge=1)
    lexical: LexicalSettings = LexicalSettings()
    scratch: BuildConfig = BuildConfig()
    # Measured on the real tickets (RESULTS.md): mean pooling, body 1e-4 / head 2e-3,
    # validation macro-F1 still rising at epoch 8; early stopping ends it sooner.
    encoder: EncoderConfig = EncoderConfig(
        epochs=10, learning_rate=1e-4, head_learning_rate=2e-3, patience=3
    )
    llm: LlmConfig = LlmConfig()
    keep_candidates: bool = False
    bases_dir: Path = bases.DEFAULT_BASES_DIR
    similar: SimilarSettings = SimilarSettings()
    inputs: InputSpec = InputSpec()
    routing_score: bool = True

    def plan(self) -> PresetPlan:
        """The preset's plan with this config's overrides applied."""
        base = PRESETS[self.preset]
        return PresetPlan(
            candidates=self.candidates or base.candidates,
            budget_minutes=self.budget_minutes or base.budget_minutes,
        )


@dataclass(frozen=True, slots=True)
class TrainJob:
    """What a candidate trains on and within."""

    fit: Examples
    validation: Examples
    folder: Path
    labels: Sequence[str]
    budget_s: float
    progress: ProgressCallback | None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A neural candidate: how to train it and its share of the time budget."""

    name: str
    weight: float
    train: Callable[[RecipeConfig, TrainJob], Trained]


def _shared(cfg: RecipeConfig) -> dict[str, Any]:
    """Settings every candidate takes from the recipe."""
    return {"precision": cfg.precision, "num_threads": cfg.num_threads, "seed": cfg.seed}


CANDIDATES: dict[str, Candidate] = {
    "scratch": Candidate(
        "scratch",
        1.0,
        lambda cfg, job: train_scratch(
            job.fit,
            job.folder,
            labels=job.labels,
            config=cfg.scratch.model_copy(update=_shared(cfg)),
            time_budget_s=job.budget_s,
            on_progress=job.progress,
        ),
    ),
    "encoder": Candidate(
        "encoder",
        1.5,
        lambda cfg, job: train_classifier(
            job.fit,
            job.folder,
            labels=job.labels,
            config=cfg.encoder.model_copy(update=_shared(cfg)),
            validation=job.validation,
            bases_dir=cfg.bases_dir,
            time_budget_s=job.budget_s,
            on_progress=job.progress,
        ),
    ),
    "llm-lora": Candidate(
        "llm-lora",
        2.0,
        lambda cfg, job: train_lora(
            job.fit,
            job.folder,
            labels=job.labels,
            config=cfg.llm.model_copy(update=_shared(cfg)),
            bases_dir=cfg.bases_dir,
            time_budget_s=job.budget_s,
            on_progress=job.progress,
        ),
    ),
}


@dataclass
class CandidateOutcome:
    """What happened to one neural candidate."""

    name: str
    folder: Path | None = None
    trained: Trained | None = None
    seconds: float = 0.0
    tickets_per_s: float | None = None
    neural: np.ndarray | None = None  # validation probabilities, label order
    skipped: str | None = None


@dataclass
class BuildReport:
    """What the build did, for the terminal and the card."""

    labels: list[str]
    fit_examples: int
    validation_examples: int
    test_examples: int
    scores: list[ValidationScores] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    chosen: str = ""
    seconds: float = 0.0
    card: ExpertCard | None = None


EventCallback = Callable[[str], None]
ProgressFactory = Callable[[str], Any]


def _scores(
    name: str,
    probabilities: np.ndarray,
    y: np.ndarray,
    *,
    target: float,
    build_time_s: float | None,
    tickets_per_s: float | None,
) -> ValidationScores:
    from sklearn.metrics import f1_score

    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    correct = predicted == y
    _, coverage, _ = threshold_at_precision(confidence.tolist(), correct.tolist(), target=target)
    ece, _ = expected_calibration_error(confidence.tolist(), correct.tolist())
    z = np.log(np.clip(probabilities, 1e-12, 1.0))
    return ValidationScores(
        name=name,
        accuracy=round(float(correct.mean()), 4),
        macro_f1=round(
            float(f1_score(y, predicted, average="macro", labels=sorted(set(y.tolist())))), 4
        ),
        ece=round(ece, 4),
        coverage_at_target=round(coverage, 4),
        nll=round(negative_log_likelihood(z, y), 4),
        build_time_s=None if build_time_s is None else round(build_time_s, 1),
        tickets_per_s=None if tickets_per_s is None else round(tickets_per_s, 1),
    )


def _served_probabilities(
    folder: Path, texts: Sequence[str], labels: Sequence[str]
) -> tuple[np.ndarray, float]:
    """The candidate's probabilities on `texts` through real vLLM, and its tickets/s."""
    from expert.engine import BatchExpert
    from expert.serving import EngineConfig, load_card

    # The engine's window is what the card needs (an encoder may have only 128 positions).
    window = load_card(folder).max_prompt_tokens + 1
    expert = BatchExpert(EngineConfig(model_dir=folder, max_model_len=window))
    expert.start()
    try:
        started = time.perf_counter()
        predictions = expert.classify_batch(list(texts))
        elapsed = time.perf_counter() - started
    finally:
        expert.close()
    matrix = np.asarray([[p.probabilities[label] for label in labels] for p in predictions])
    return matrix, len(texts) / elapsed if elapsed > 0 else 0.0


def _budgets(plan: PresetPlan, remaining_s: float, done: int) -> float:
    """The training budget of candidate number `done` (0-based) given the time left."""
    pending = [c.weight if (c := CANDIDATES.get(name)) else 1.0 for name in plan.candidates[done:]]
    # Each candidate also needs ~10% of its time to be scored through vLLM afterwards.
    return max(0.0, remaining_s * 0.9 * pending[0] / sum(pending))


def build(
    data_path: Path,
    out_dir: Path,
    *,
    text_col: str | None = "text",
    label_col: str = "label",
    config: RecipeConfig | None = None,
    taxonomy_labels: Sequence[str] | None = None,
    on_event: EventCallback | None = None,
    progress_for: ProgressFactory | None = None,
) -> BuildReport:
    """Build the default expert from labeled tickets; write it to `out_dir`.

    Args:
        data_path: JSONL or CSV of labeled tickets.
        out_dir: the expert folder (replaced: a previous expert there is removed).
        text_col: text field; None when the data has none (`config.inputs` then names the
            fields the expert reads alone; the neural candidates read them as text lines).
        label_col: label field.
        config: preset, budget, target precision (defaults: preset "best").
        taxonomy_labels: when given, the card lists exactly these (data must be a subset).
        on_event: one-line messages for the terminal ("training encoder (budget 12 min)").
        progress_for: label -> context manager yielding a progress callback.

    Returns:
        The report, its `card` the card written to `out_dir/expert.json`.

    Raises:
        BuildError: no candidate could be trained within the budget, or bad labels.
    """
    config = config or RecipeConfig()
    plan = config.plan()
    say = on_event or (lambda _message: None)
    started = time.perf_counter()
    deadline = started + plan.budget_minutes * 60
    examples = read_examples(
        data_path, text_col=text_col, label_col=label_col, inputs=config.inputs
    )
    parts = split(examples, seed=config.split_seed, test_fraction=config.test_fraction)
    labels = choose_labels(examples.labels, taxonomy_labels)
    fit, val = validation_split(parts.train, fraction=config.validation_fraction, seed=config.seed)
    index = {label: i for i, label in enumerate(labels)}
    y = np.asarray([index[label] for label in val.labels])
    report = BuildReport(
        labels=labels,
        fit_examples=len(fit),
        validation_examples=len(val),
        test_examples=len(parts.test),
    )
    say(
        f"{len(examples)} tickets, {len(labels)} labels: {len(fit)} to fit, {len(val)} to "
        f"validate, {len(parts.test)} held out for `expert eval`; preset {config.preset}, "
        f"budget {plan.budget_minutes:g} min, candidates {', '.join(plan.candidates)}"
    )
    lexical = LexicalModel.fit(
        fit.texts, fit.labels, labels=labels, settings=config.lexical, inputs=config.inputs
    )
    lexical_val = lexical.scores(val.texts)
    lexical_alone = fit_weights(y, lexical_scores=lexical_val)
    report.scores.append(
        _scores(
            LEXICAL,
            combine(lexical_alone, neural_probabilities=None, lexical_scores=lexical_val),
            y,
            target=config.target_precision,
            build_time_s=lexical.fit_time_s,
            tickets_per_s=None,
        )
    )
    say(f"lexical model fitted in {lexical.fit_time_s:.1f} s ({lexical.features} features)")
    work = Path(out_dir) / CANDIDATES_DIR
    shutil.rmtree(work, ignore_errors=True)
    outcomes: list[CandidateOutcome] = []
    for done, name in enumerate(plan.candidates):
        outcome = _run_candidate(
            name,
            config=config,
            fit=fit,
            val=val,
            labels=labels,
            folder=work / name,
            budget_s=_budgets(plan, deadline - time.perf_counter(), done),
            say=say,
            progress_for=progress_for,
        )
        outcomes.append(outcome)
        if outcome.skipped:
            report.skipped[name] = outcome.skipped
    return _choose_and_write(
        report,
        outcomes=outcomes,
        lexical=lexical,
        lexical_val=lexical_val,
        lexical_alone=lexical_alone,
        y=y,
        config=config,
        data_path=Path(data_path),
        text_col=text_col,
        label_col=label_col,
        parts=(fit, val, parts.test),
        out_dir=Path(out_dir),
        started=started,
        say=say,
    )


def _run_candidate(
    name: str,
    *,
    config: RecipeConfig,
    fit: Examples,
    val: Examples,
    labels: Sequence[str],
    folder: Path,
    budget_s: float,
    say: EventCallback,
    progress_for: ProgressFactory | None,
) -> CandidateOutcome:
    candidate = CANDIDATES.get(name)
    if candidate is None:
        return CandidateOutcome(name, skipped=f"unknown candidate (known: {', '.join(CANDIDATES)})")
    if budget_s < 60:
        return CandidateOutcome(name, skipped=f"no time left in the budget ({budget_s:.0f} s)")
    say(f"training {name} (budget {budget_s / 60:.1f} min)")
    started = time.perf_counter()
    try:
        if progress_for is None:
            trained = candidate.train(config, TrainJob(fit, val, folder, labels, budget_s, None))
        else:
            with progress_for(f"training {name}") as progress:
                trained = candidate.train(
                    config, TrainJob(fit, val, folder, labels, budget_s, progress)
                )
    except (BuildError, bases.BaseModelError) as exc:
        return CandidateOutcome(name, skipped=str(exc))
    seconds = time.perf_counter() - started
    say(
        f"{name}: {trained.result.steps}/{trained.result.planned_steps} steps "
        f"({trained.result.stopped_by}), loss {trained.result.final_loss:.3f}, {seconds:.0f} s; "
        f"scoring {len(val)} validation tickets through vLLM"
    )
    try:
        neural, tickets_per_s = _served_probabilities(folder, val.texts, labels)
    except (ExpertLoadError, EngineFailure) as exc:
        return CandidateOutcome(name, skipped=f"vLLM could not serve it: {exc}")
    return CandidateOutcome(
        name,
        folder=folder,
        trained=trained,
        seconds=seconds,
        tickets_per_s=tickets_per_s,
        neural=neural,
    )


@dataclass(frozen=True)
class _Option:
    """A servable way to answer: one neural candidate alone or fused, calibrated."""

    score: float
    name: str
    outcome: CandidateOutcome
    weights: FusionWeights
    confidence_map: ConfidenceMap
    probabilities: np.ndarray
    neural_alone: float


def _options(
    outcome: CandidateOutcome,
    lexical_val: np.ndarray,
    y: np.ndarray,
    report: BuildReport,
    config: RecipeConfig,
    lexical_fit_s: float,
) -> list[_Option]:
    """The candidate alone and fused with the lexical model, each calibrated on the
    validation rows and scored there (the scores go into the report)."""
    assert outcome.neural is not None
    alone = fit_weights(y, neural_probabilities=outcome.neural)
    fused = fit_weights(y, neural_probabilities=outcome.neural, lexical_scores=lexical_val)
    options = []
    for name, weights in ((outcome.name, alone), (f"{outcome.name}+{LEXICAL}", fused)):
        pooled = combine(weights, neural_probabilities=outcome.neural, lexical_scores=lexical_val)
        confidence_map = fit_confidence_map(
            pooled.max(axis=1).tolist(), (pooled.argmax(axis=1) == y).tolist()
        )
        probs = recalibrate(pooled, confidence_map)
        scores = _scores(
            name,
            probs,
            y,
            target=config.target_precision,
            build_time_s=outcome.seconds + (lexical_fit_s if weights.uses_lexical else 0),
            tickets_per_s=outcome.tickets_per_s,
        )
        report.scores.append(scores)
        options.append(
            _Option(
                score=scores.accuracy + scores.macro_f1,
                name=name,
                outcome=outcome,
                weights=weights,
                confidence_map=confidence_map,
                probabilities=probs,
                neural_alone=alone.neural_weight,
            )
        )
    return options


def _choose_and_write(
    report: BuildReport,
    *,
    outcomes: list[CandidateOutcome],
    lexical: LexicalModel,
    lexical_val: np.ndarray,
    lexical_alone: FusionWeights,
    y: np.ndarray,
    config: RecipeConfig,
    data_path: Path,
    text_col: str | None,
    label_col: str,
    parts: tuple[Examples, Examples, Examples],
    out_dir: Path,
    started: float,
    say: EventCallback,
) -> BuildReport:
    options: list[_Option] = []
    for outcome in outcomes:
        if outcome.neural is not None:
            options.extend(_options(outcome, lexical_val, y, report, config, lexical.fit_time_s))
    if not options:
        raise BuildError(
            "no neural candidate could be trained: "
            + "; ".join(f"{k}: {v}" for k, v in report.skipped.items())
        )
    best = max(options, key=lambda o: o.score)
    chosen, outcome, weights, probs = best.name, best.outcome, best.weights, best.probabilities
    neural_alone = best.neural_alone
    report.chosen = chosen
    fit, val, test = parts
    routing, routing_score = calibrate_routing(
        validation_answers(
            probs,
            fit,
            val,
            labels=report.labels,
            vectors_of=lexical.vectors,
            similar=config.similar if config.similar.enabled else None,
        ),
        target=config.target_precision,
        min_predicted=config.queue_min_predicted,
        strength=config.queue_strength,
        with_score=config.routing_score,
    )
    threshold = routing.confidence_threshold
    assert outcome.folder is not None and outcome.trained is not None
    served_lexical = None
    if weights.uses_lexical or config.similar.enabled:
        # The fusion weights are fitted; the lexical model is refitted on every training
        # row (fit + validation) for serving: seconds of work, and on the real tickets the
        # 10% it would otherwise miss (one row of each rare queue) cost 0.03 macro-F1.
        served_lexical = LexicalModel.fit(
            [*fit.texts, *val.texts],
            [*fit.labels, *val.labels],
            labels=report.labels,
            settings=config.lexical,
            inputs=config.inputs,
        )
    _assemble(out_dir, outcome.folder, served_lexical)
    similar = None
    if served_lexical is not None and config.similar.enabled:
        # The index holds every training row (fit + validation), as the served lexical
        # model does; its hit rate is measured on the validation rows with the fit rows'.
        similar = write_index(
            out_dir,
            tickets=training_tickets(
                data_path,
                text_col=text_col,
                label_col=label_col,
                split_seed=config.split_seed,
                test_fraction=config.test_fraction,
            ),
            served_vectors_of=served_lexical.vectors,
            labels=report.labels,
            settings=config.similar,
            validation=(fit, val, lexical.vectors),
        )
    card = outcome.trained.card.model_copy(
        update={
            # Named after its folder unless told: a candidate's own name ("classifier-encoder")
            # says nothing in a routed ticket's `router.model`.
            "model_id": config.model_id or out_dir.resolve().name,
            "training": training_info(
                data_path=data_path,
                text_col=text_col or "",
                label_col=label_col,
                split_seed=config.split_seed,
                test_fraction=config.test_fraction,
                train_examples=len(fit),
                test_examples=len(test),
                trained=outcome.trained,
                build_time_s=time.perf_counter() - started,
                extra={"preset": str(config.preset), "chosen": chosen},
            ).model_copy(
                update={
                    "validation_examples": len(val),
                    "validation_fraction": config.validation_fraction,
                }
            ),
            "fusion": FusionInfo(
                neural_weight=weights.neural_weight,
                lexical_weight=weights.lexical_weight,
                confidence_slope=best.confidence_map.slope,
                confidence_bias=best.confidence_map.bias,
                validation_examples=len(val),
                candidates=tuple(report.scores),
                chosen=chosen,
                neural_alone=neural_alone,
                lexical_alone=lexical_alone.lexical_weight,
            ),
            "inputs": config.inputs,
            "routing": routing,
            "similar": similar,
            "routing_score": routing_score,
        }
    )
    write_card(out_dir, card)
    if not config.keep_candidates:
        shutil.rmtree(out_dir / CANDIDATES_DIR, ignore_errors=True)
    report.card = card
    report.seconds = time.perf_counter() - started
    shown = "none" if threshold is None else f"{threshold:.3f}"
    say(f"chose {chosen}; triage threshold {shown} for {config.target_precision:.0%} precision")
    log.info(
        "expert_recipe_finished", chosen=chosen, out_dir=str(out_dir), latency_s=report.seconds
    )
    return report


def _assemble(out_dir: Path, chosen: Path, lexical: LexicalModel | None) -> None:
    """Replace `out_dir`'s expert files by the chosen candidate's (and the lexical model's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in out_dir.iterdir():
        if entry.name == CANDIDATES_DIR:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in chosen.iterdir():
        shutil.copy2(entry, out_dir / entry.name) if entry.is_file() else shutil.copytree(
            entry, out_dir / entry.name
        )
    (out_dir / CARD_FILENAME).unlink(missing_ok=True)
    if lexical is not None:
        lexical.save(lexical_dir(out_dir))
