"""What serving an expert means, without vLLM: its answer, its errors, its settings.

Owns `Prediction`, the load errors, `EngineConfig`, reading and checking an expert's card
against a taxonomy, turning label logprobs or class scores into probabilities, and where an
engine runs (`EnginePlacement`: number format and threads on this machine). `expert.engine`
serves an expert on vLLM with these; workers, benches and the learning loop import them from
here without touching vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import ValidationError

from expert import bases, hardware
from expert.card import CARD_FILENAME, ExpertCard
from schemas.routing import QueueSuggestion, SimilarTicket, top_suggestions


@dataclass(frozen=True, slots=True)
class Prediction:
    """The expert's answer for one ticket.

    Attributes:
        label: always one of the card's labels.
        confidence: what the thresholds read: the card's routing score (the probability
            that `label` is right, `expert.routing_score`), else `label`'s probability.
        probabilities: every label -> probability; sums to 1.
        latency_s: submit -> answer, seconds.
        neural_probabilities: the neural model's own probabilities when the served answer
            is a fusion (for reports); None otherwise.
        similar: the past tickets most like this one, most similar first (empty: the
            expert has no similar-ticket index, or it is switched off).
    """

    label: str
    confidence: float
    probabilities: dict[str, float]
    latency_s: float
    neural_probabilities: dict[str, float] | None = None
    similar: tuple[SimilarTicket, ...] = ()

    def top(self, n: int = 3) -> tuple[QueueSuggestion, ...]:
        """The `n` most probable queues with their probabilities, most probable first."""
        return top_suggestions(self.probabilities, n=n)


class ExpertLoadError(Exception):
    """The model directory is missing, unreadable or not an expert; the message says why."""


class LabelMismatchError(ExpertLoadError):
    """The card's labels differ from the taxonomy's; the message lists the difference.

    Attributes:
        missing: taxonomy labels the expert cannot answer.
        unexpected: expert labels the taxonomy does not know.
    """

    def __init__(self, message: str, *, missing: list[str], unexpected: list[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected


class EngineFailure(Exception):
    """The engine died or returned nothing: never route on it."""


class EngineConfig(pydantic.BaseModel, frozen=True):
    """How to serve an expert.

    Attributes:
        model_dir: the model directory (or the base model of `adapter_dir`).
        adapter_dir: optional peft LoRA adapter served on top of `model_dir`.
        max_num_seqs: most requests batched at once.
        kv_cache_gib: KV-cache size.
        dtype: weights and activations dtype. "auto" (default): on a GPU, vLLM's own choice;
            on a CPU, `expert.hardware` picks bfloat16 where it is native and float32 where
            it is emulated (~100x slower). An explicit format always wins.
        max_model_len: longest sequence (prompt + answer) the engine accepts.
        cache_dir: vLLM and inductor caches and RPC sockets go under it.
        cpu_threads: OpenMP threads of the model on a CPU (OMP_NUM_THREADS of the engine
            processes). None: `expert.hardware.engine_threads` decides (half the cores for
            the streaming engine, which shares them with Kafka and the broker; every core
            for offline batches).
        similar_tickets: similar past tickets found per ticket when the expert has an
            index (None: the card's `similar.k`; 0: none, the index is not loaded).
        model_in_engine_core: the streaming engine runs the model inside vLLM's engine-core
            process (vLLM's one-process executor) instead of a process of its own, which
            vLLM's CPU platform otherwise starts: one process and one torch + vLLM import
            fewer per engine start, and no idle model process polling its queue (figures in
            the README's Configuration table). The offline batch engine always runs
            in-process.
    """

    model_dir: Path = Path(".state/models/default-expert")
    adapter_dir: Path | None = None
    max_num_seqs: int = 256
    kv_cache_gib: float = 1.0
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    max_model_len: int = 512
    cache_dir: Path = Path(".state/vllm-cache")
    cpu_threads: int | None = pydantic.Field(default=None, ge=1)
    bases_dir: Path = bases.DEFAULT_BASES_DIR
    similar_tickets: int | None = pydantic.Field(default=None, ge=0, le=50)
    model_in_engine_core: bool = False


def load_card(model_dir: Path) -> ExpertCard:
    """Read and validate `<model_dir>/expert.json`.

    Raises:
        ExpertLoadError: the directory or card is missing, unreadable or invalid.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ExpertLoadError(f"{model_dir}: expert directory does not exist")
    card_path = model_dir / CARD_FILENAME
    try:
        text = card_path.read_text("utf-8")
    except FileNotFoundError as exc:
        raise ExpertLoadError(
            f"{model_dir}: not an expert directory (no {CARD_FILENAME}; build one with "
            "`ticket-router expert build`)"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ExpertLoadError(f"{card_path}: cannot read the model card: {exc}") from exc
    try:
        return ExpertCard.from_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ExpertLoadError(f"{card_path}: invalid model card: {problems}") from exc


def check_labels(card: ExpertCard, labels: Sequence[str]) -> None:
    """Check that the expert answers exactly `labels` (order does not matter).

    Raises:
        LabelMismatchError: listing the labels missing from the card and those unknown.
    """
    missing = sorted(set(labels) - set(card.labels))
    unexpected = sorted(set(card.labels) - set(labels))
    if missing or unexpected:
        raise LabelMismatchError(
            f"expert {card.model_id!r} labels differ from the taxonomy: "
            f"missing from the expert {missing}; unknown to the taxonomy {unexpected}",
            missing=missing,
            unexpected=unexpected,
        )


def label_probabilities(
    card: ExpertCard, logprobs: Mapping[int, Any], label_token_ids: Sequence[int]
) -> dict[str, float]:
    """Softmax of the label tokens' logprobs, over the labels only.

    Args:
        card: gives the label order.
        logprobs: token id -> vLLM `Logprob` (or a bare float) for the answer position.
        label_token_ids: the token id of each label, in card order.

    Raises:
        EngineFailure: no label has a finite logprob.
    """
    values: list[float] = []
    for token_id in label_token_ids:
        entry = logprobs.get(token_id)
        value = getattr(entry, "logprob", entry)
        values.append(float(value) if value is not None else -math.inf)
    top = max(values)
    if not math.isfinite(top):
        raise EngineFailure("the engine returned no finite logprob for any label")
    weights = [math.exp(v - top) for v in values]
    total = sum(weights)
    return {label: w / total for label, w in zip(card.labels, weights, strict=True)}


def class_probabilities(card: ExpertCard, probs: Sequence[float]) -> dict[str, float]:
    """A classifier's per-class probabilities (head index order = card label order).

    Renormalised to sum to exactly 1 (vLLM computes the softmax in the model's dtype).

    Raises:
        EngineFailure: the vector does not have one finite, non-negative entry per label.
    """
    values = [float(p) for p in probs]
    if len(values) != len(card.labels):
        raise EngineFailure(
            f"the engine returned {len(values)} class probabilities for {len(card.labels)} labels"
        )
    total = sum(values)
    if not all(math.isfinite(v) and v >= 0 for v in values) or total <= 0:
        raise EngineFailure("the engine returned no usable class probabilities")
    return {label: v / total for label, v in zip(card.labels, values, strict=True)}


@dataclass(frozen=True, slots=True)
class EnginePlacement:
    """Where and how an engine runs: the number format and threads it was given, and why.

    Attributes:
        device: "cpu" or "gpu".
        dtype: the dtype handed to vLLM ("auto" on a GPU when none was requested).
        reason: why that dtype (from `expert.hardware` on a CPU).
        threads: OpenMP threads of the model on a CPU (None on a GPU).
        cpu: `CpuCapability.as_dict()` of this machine.
    """

    device: str
    dtype: str
    reason: str
    threads: int | None
    cpu: dict[str, object]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form, recorded beside every figure measured with this engine."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "reason": self.reason,
            "threads": self.threads,
            "cpu": self.cpu,
        }


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def engine_placement(config: EngineConfig, *, streaming: bool) -> EnginePlacement:
    """The dtype and thread count an engine with `config` gets on this machine.

    A GPU keeps vLLM's own "auto" (the model's bfloat16/float16); a CPU asks
    `expert.hardware` (native bfloat16 or float32). An explicit dtype always wins.
    """
    capability = hardware.detect()
    if _has_gpu():
        return EnginePlacement(
            device="gpu",
            dtype=config.dtype,
            reason="GPU: vLLM chooses" if config.dtype == "auto" else "requested explicitly",
            threads=None,
            cpu=capability.as_dict(),
        )
    if config.dtype == "float16":
        dtype, reason = "float16", "float16 requested explicitly"
    else:
        precision = hardware.choose_precision(config.dtype, capability)
        dtype, reason = precision.dtype, precision.reason
    threads = config.cpu_threads or hardware.engine_threads(capability, streaming=streaming)
    return EnginePlacement(
        device="cpu", dtype=dtype, reason=reason, threads=threads, cpu=capability.as_dict()
    )
