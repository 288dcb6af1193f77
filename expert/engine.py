"""Serving the expert: the only module that imports `vllm`.

Owns loading a model directory (card, weights, optional LoRA adapter) into real vLLM, the
label-constrained request, and the label-probability confidence. Two kinds of expert are
served: a generative one (one constrained label token; confidence from the label tokens'
logprobs) and a classifier (an encoder served by vLLM's pooling runner, `classify` task;
confidence is the class probability vLLM returns). Two front ends share that:
`StreamingExpert` (AsyncLLM, continuous batching, for the worker) and `BatchExpert`
(in-process offline `vllm.LLM`, for evaluation and benchmarks).

`vllm` is imported inside `start()`, after the vLLM environment defaults are set from the
`EngineConfig`, so importing this module stays cheap (the CLI imports it). Environment
defaults are process-wide: the first engine started in a process fixes them.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from expert import bases
from expert.card import CARD_FILENAME, ExpertCard
from expert.fields import expert_input
from expert.fusion import ConfidenceMap, FusionWeights, combine, recalibrate
from expert.lexical import LexicalError, LexicalModel, has_lexical, lexical_dir
from expert.lexical_side import LexicalAnswer, LexicalBatch, lexical_answers, served_confidence
from expert.prompt import classifier_token_ids, prompt_token_ids
from expert.serving import (
    EngineConfig,
    EngineFailure,
    EnginePlacement,
    ExpertLoadError,
    Prediction,
    class_probabilities,
    engine_placement,
    label_probabilities,
    load_card,
)
from expert.similar import SimilarIndexError, SimilarTicketIndex, has_similar, similar_dir
from schemas.ticket import Ticket

log = structlog.get_logger(__name__)

# vLLM accepts only these values for max_lora_rank.
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
_WARMUP_TEXT = "warm-up ticket: laptop will not start"


def _output_probabilities(
    card: ExpertCard, output: Any, label_token_ids: Sequence[int]
) -> dict[str, float]:
    if getattr(output, "error", None) is not None:
        raise EngineFailure(f"the engine failed the request: {output.error}")
    completions = getattr(output, "outputs", None)
    if card.is_classifier:
        # LLM.classify gives ClassificationOutput(probs); AsyncLLM.encode gives
        # PoolingOutput(data), the same vector as a tensor.
        probs = getattr(completions, "probs", None)
        if probs is None and getattr(completions, "data", None) is not None:
            probs = completions.data.tolist()
        if not probs:
            raise EngineFailure("the engine returned no answer for the request")
        return class_probabilities(card, probs)
    if not completions or not completions[0].logprobs:
        raise EngineFailure("the engine returned no answer for the request")
    return label_probabilities(card, completions[0].logprobs[0], label_token_ids)


def _prediction(
    loaded: _Loaded, output: Any, latency_s: float, lexical: LexicalAnswer | None
) -> Prediction:
    neural = _output_probabilities(loaded.card, output, loaded.label_token_ids)
    probabilities = loaded.finish(neural, None if lexical is None else lexical.scores)
    label = max(probabilities, key=probabilities.__getitem__)
    return Prediction(
        label=label,
        confidence=loaded.confidence(probabilities, label, lexical),
        probabilities=probabilities,
        latency_s=latency_s,
        neural_probabilities=neural if loaded.card.fusion is not None else None,
        similar=() if lexical is None else lexical.similar,
    )


def _set_env_defaults(
    config: EngineConfig, placement: EnginePlacement, *, in_process: bool
) -> None:
    cache = config.cache_dir.resolve()
    for sub in ("vllm", "inductor", "rpc"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(config.kv_cache_gib))))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    os.environ.setdefault("VLLM_RPC_BASE_PATH", str(cache / "rpc"))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    # Read by the engine processes when they start (this process's torch is not changed).
    if placement.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(placement.threads)
    # Set, not defaulted: an offline engine started earlier in this process must not change
    # where a later streaming engine runs its model. AsyncLLM always runs its engine core in
    # a child process; "0" keeps the model in that child (vLLM's CPU platform starts one
    # more process for it otherwise), and runs the offline `LLM` in this process.
    one_process = in_process or config.model_in_engine_core
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if one_process else "1"


def _check_classifier_head(model_dir: Path, card: ExpertCard) -> None:
    """The model's head must score exactly the card's labels, in the card's order.

    Raises:
        ExpertLoadError: config.json is unreadable, not a sequence classifier, or its
            id2label differs from the card.
    """
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExpertLoadError(f"{config_path}: cannot read the model config: {exc}") from exc
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise ExpertLoadError(
            f"{model_dir}: the card says classifier but the model is {architectures}"
        )
    id2label = config.get("id2label") or {}
    head = [id2label.get(str(i)) for i in range(len(id2label))]
    if head != list(card.labels):
        raise ExpertLoadError(
            f"{model_dir}: the classifier head's labels (config id2label) differ from the "
            f"card's: head {head}, card {list(card.labels)}"
        )


class _Loaded:
    """What both front ends need once a model is loaded: card, tokenizer, request shape."""

    def __init__(self, config: EngineConfig, *, streaming: bool) -> None:
        self.config = config
        self.placement = engine_placement(config, streaming=streaming)
        self.base_card: ExpertCard | None = None
        self.model_dir = Path(config.model_dir)
        self.adapter_dir = Path(config.adapter_dir) if config.adapter_dir is not None else None
        self.card = self._read_cards()
        self.similar_k = self._similar_k()
        score = self.card.routing_score
        self.score_neighbours = 0 if score is None else score.neighbours
        self.lexical = self._read_lexical()
        self.similar = self._read_similar()
        self.lora_request: Any = None
        self.label_token_ids: list[int] = []
        self.tokenizer: Any = None
        self.params: Any = None

    @property
    def expert_dir(self) -> Path:
        """The folder whose card is served (the adapter's folder when serving an adapter)."""
        return self.adapter_dir if self.adapter_dir is not None else self.model_dir

    def _serve_adapter_on_its_base(self) -> None:
        """An adapter expert given as the model is served on the base its card names."""
        if self.adapter_dir is not None or not (self.model_dir / CARD_FILENAME).is_file():
            return
        card = load_card(self.model_dir)
        if card.adapter is None or card.base_model is None:
            return  # a full model (an adapter card without a base fails validation)
        try:
            base = bases.resolve(card.base_model, bases_dir=self.config.bases_dir)
        except bases.BaseModelError as exc:
            raise ExpertLoadError(f"{self.model_dir}: {exc}") from exc
        self.model_dir, self.adapter_dir = base, self.model_dir

    def _read_cards(self) -> ExpertCard:
        self._serve_adapter_on_its_base()
        model_dir = self.model_dir
        if not (model_dir / "config.json").is_file():
            if not model_dir.is_dir():
                raise ExpertLoadError(f"{model_dir}: expert directory does not exist")
            raise ExpertLoadError(f"{model_dir}: no config.json, not a model directory")
        if self.adapter_dir is None:
            card = load_card(model_dir)
            if card.is_classifier:
                _check_classifier_head(model_dir, card)
            return card
        if (model_dir / CARD_FILENAME).is_file():
            self.base_card = load_card(model_dir)
            if self.base_card.is_classifier:
                raise ExpertLoadError(f"{model_dir}: a classifier takes no LoRA adapter")
        card = load_card(self.adapter_dir)
        if card.adapter is None:
            raise ExpertLoadError(f"{self.adapter_dir}: card describes no LoRA adapter")
        if not (self.adapter_dir / "adapter_config.json").is_file():
            raise ExpertLoadError(f"{self.adapter_dir}: no adapter_config.json")
        return card

    @property
    def fuses_lexical(self) -> bool:
        """Whether the served answer fuses the lexical model's decision values."""
        fusion = self.card.fusion
        return fusion is not None and fusion.lexical_weight > 0

    def _similar_k(self) -> int:
        """Similar tickets per ticket: 0 when the card records no index (older experts)."""
        if self.card.similar is None:
            return 0
        configured = self.config.similar_tickets
        return self.card.similar.k if configured is None else configured

    @property
    def wants_index(self) -> bool:
        """Whether the similar-ticket index is served: for the triage record's similar
        tickets, or for the neighbours the routing score reads."""
        return bool(self.similar_k or self.score_neighbours)

    def _read_lexical(self) -> LexicalModel | None:
        # The similar-ticket index compares the lexical model's vectors.
        if not self.fuses_lexical and not (self.wants_index and has_lexical(self.expert_dir)):
            if self.score_neighbours:
                raise ExpertLoadError(
                    f"{self.expert_dir}: its routing score reads similar tickets, "
                    "but the folder has no lexical model"
                )
            return None
        try:
            lexical = LexicalModel.load(lexical_dir(self.expert_dir))
        except LexicalError as exc:
            raise ExpertLoadError(
                f"{self.expert_dir}: cannot load its lexical model: {exc}"
            ) from exc
        if lexical.labels != self.card.labels:
            raise ExpertLoadError(
                f"{self.expert_dir}: the lexical model's labels differ from the card's"
            )
        return lexical

    def _read_similar(self) -> SimilarTicketIndex | None:
        if self.score_neighbours and not has_similar(self.expert_dir):
            raise ExpertLoadError(
                f"{self.expert_dir}: its routing score reads similar tickets, "
                "but the folder has no similar-ticket index"
            )
        if not self.wants_index or self.lexical is None or not has_similar(self.expert_dir):
            return None
        try:
            index = SimilarTicketIndex.load(similar_dir(self.expert_dir))
        except SimilarIndexError as exc:
            raise ExpertLoadError(f"{self.expert_dir}: the card lists an index: {exc}") from exc
        if index.labels != self.card.labels or index.dimensions != self.lexical.features:
            raise ExpertLoadError(
                f"{self.expert_dir}: the similar-ticket index does not match the expert's "
                "labels or lexical vectors"
            )
        return index

    def lexical_answers(self, texts: Sequence[str]) -> list[LexicalAnswer] | None:
        """The lexical side's answer for each of `texts` (None: no lexical model served)."""
        if self.lexical is None:
            return None
        return lexical_answers(
            self.lexical,
            self.similar,
            texts,
            fuses=self.fuses_lexical,
            similar_k=self.similar_k,
            score_neighbours=self.score_neighbours,
        )

    def confidence(
        self, probabilities: dict[str, float], label: str, lexical: LexicalAnswer | None
    ) -> float:
        """The served confidence: the routing score when the card has one (the probability
        that `label` is right), else `label`'s probability."""
        return served_confidence(self.card, probabilities, label, lexical)

    def input_of(self, ticket: Ticket | str) -> str:
        """What the expert reads for `ticket`; a string is an expert input already."""
        return ticket if isinstance(ticket, str) else expert_input(ticket, self.card.inputs)

    def finish(self, neural: dict[str, float], lexical_row: Any) -> dict[str, float]:
        """The served probabilities: the neural ones as they are, or fused per the card."""
        fusion = self.card.fusion
        if fusion is None:
            return neural
        import numpy as np

        weights = FusionWeights(
            neural_weight=fusion.neural_weight, lexical_weight=fusion.lexical_weight
        )
        fused = recalibrate(
            combine(
                weights,
                neural_probabilities=np.asarray([[neural[label] for label in self.card.labels]]),
                lexical_scores=None if lexical_row is None else np.asarray([lexical_row]),
            ),
            ConfidenceMap(slope=fusion.confidence_slope, bias=fusion.confidence_bias),
        )[0]
        return {label: float(p) for label, p in zip(self.card.labels, fused, strict=True)}

    def engine_kwargs(self) -> dict[str, Any]:
        card = self.card
        # A generative expert answers with one more token; a classifier answers none.
        answer_tokens = 0 if card.is_classifier else 1
        if card.max_prompt_tokens + answer_tokens > self.config.max_model_len:
            raise ExpertLoadError(
                f"card max_prompt_tokens={card.max_prompt_tokens} does not fit "
                f"max_model_len={self.config.max_model_len}"
            )
        if card.is_classifier:
            # Called after the vLLM environment defaults are set: importing vllm is safe here.
            from vllm.config import PoolerConfig

            return {
                "model": str(self.model_dir),
                "tokenizer": str(self.model_dir),
                "runner": "pooling",
                "dtype": self.placement.dtype,
                "max_model_len": self.config.max_model_len,
                "max_num_seqs": self.config.max_num_seqs,
                "kv_cache_memory_bytes": int(self.config.kv_cache_gib * 2**30),
                "enforce_eager": True,
                "seed": 0,
                # The pooling the classifier was trained with (BERT's default is [CLS]).
                "pooler_config": PoolerConfig(pooling_type=card.pooling.upper()),
            }
        kwargs: dict[str, Any] = {
            "model": str(self.model_dir),
            "tokenizer": str(self.model_dir),
            "dtype": self.placement.dtype,
            "max_model_len": self.config.max_model_len,
            "max_num_seqs": self.config.max_num_seqs,
            "kv_cache_memory_bytes": int(self.config.kv_cache_gib * 2**30),
            "enforce_eager": True,
            "max_logprobs": max(20, len(card.labels)),
            "seed": 0,
        }
        if card.adapter is not None:
            rank = next((r for r in _VLLM_LORA_RANKS if r >= card.adapter.rank), None)
            if rank is None:
                raise ExpertLoadError(f"LoRA rank {card.adapter.rank} is above vLLM's maximum")
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
        return kwargs

    def bind(self, tokenizer: Any) -> None:
        """Resolve label token ids and build the per-request sampling (or pooling) parameters."""
        from vllm import PoolingParams, SamplingParams
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import StructuredOutputsParams

        self.tokenizer = tokenizer
        if self.card.is_classifier:
            # The classifier head's softmax (config problem_type single_label_classification).
            self.params = PoolingParams(task="classify", use_activation=True)
            return
        ids: list[int] = []
        for label, token in zip(self.card.labels, self.card.label_token_list, strict=True):
            encoded = tokenizer.encode(token, add_special_tokens=False)
            if len(encoded) != 1:
                raise ExpertLoadError(
                    f"label {label!r}: token {token!r} is {len(encoded)} tokens in the "
                    "model's vocabulary, expected exactly one"
                )
            ids.append(int(encoded[0]))
        self.label_token_ids = ids
        self.params = SamplingParams(
            temperature=0.0,
            max_tokens=1,
            structured_outputs=StructuredOutputsParams(choice=self.card.label_token_list),
            logprob_token_ids=ids,
        )
        if self.adapter_dir is not None:
            self.lora_request = LoRARequest(
                lora_name=self.card.model_id,
                lora_int_id=1,
                lora_path=str(self.adapter_dir.resolve()),
            )

    def prompt(self, text: str) -> dict[str, list[int]]:
        """The tokens prompt for one ticket text, cut to the card's limit.

        Both kinds are cut here, never by vLLM, so serving reads exactly the tokens training
        read and vLLM never sees (or rejects) a prompt over the limit.
        """
        if self.card.is_classifier:
            ids = classifier_token_ids(
                text, tokenizer=self.tokenizer, max_prompt_tokens=self.card.max_prompt_tokens
            )
            return {"prompt_token_ids": ids}
        ids = prompt_token_ids(
            text,
            tokenizer=self.tokenizer,
            template=self.card.prompt_template,
            max_prompt_tokens=self.card.max_prompt_tokens,
            reserved=self.card.label_token_list,
        )
        return {"prompt_token_ids": ids}


class _ServedIdentity:
    """What both front ends say about the expert they serve (after `start()`)."""

    _loaded: _Loaded | None

    def _require_loaded(self) -> _Loaded:
        if self._loaded is None:
            raise EngineFailure("the expert is not started")
        return self._loaded

    @property
    def card(self) -> ExpertCard:
        """The served expert's card (the adapter's card when an adapter is served)."""
        return self._require_loaded().card

    @property
    def model_id(self) -> str:
        """The base model's id (the adapter's card names it when serving an adapter)."""
        loaded = self._require_loaded()
        if loaded.adapter_dir is None:
            return loaded.card.model_id
        if loaded.base_card is not None:
            return loaded.base_card.model_id
        return str(loaded.card.base_model)

    @property
    def adapter_id(self) -> str | None:
        """The served adapter's id, or None."""
        loaded = self._require_loaded()
        return loaded.card.model_id if loaded.adapter_dir is not None else None

    @property
    def recommended_threshold(self) -> float | None:
        """The triage threshold the card chose on validation data (None: not calibrated)."""
        routing = self._require_loaded().card.routing
        return routing.confidence_threshold if routing is not None else None

    @property
    def recommended_queue_thresholds(self) -> dict[str, float]:
        """The card's per-queue thresholds (empty: one global threshold)."""
        routing = self._require_loaded().card.routing
        return dict(routing.queue_thresholds) if routing is not None else {}

    @property
    def placement(self) -> EnginePlacement:
        """The dtype and threads the engine was started with, and the CPU it runs on."""
        return self._require_loaded().placement


class StreamingExpert(_ServedIdentity):
    """The expert on vLLM's AsyncLLM: continuous batching for the streaming worker.

    The engine core runs in a child process; start it before any Kafka client exists.
    """

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._loaded: _Loaded | None = None
        self._engine: Any = None
        self._in_flight = 0
        self._lexical: LexicalBatch | None = None

    async def start(self) -> None:
        """Load the card, start AsyncLLM and warm it up.

        Raises:
            ExpertLoadError: the model cannot be loaded.
        """
        loaded = _Loaded(self._config, streaming=True)
        _set_env_defaults(self._config, loaded.placement, in_process=False)
        kwargs = loaded.engine_kwargs()
        started = time.perf_counter()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        try:
            self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
            loaded.bind(self._engine.get_tokenizer())
        except (OSError, ValueError, RuntimeError) as exc:
            await self.shutdown()
            raise ExpertLoadError(
                f"{self._config.model_dir}: vLLM could not load it: {exc}"
            ) from exc
        self._loaded = loaded
        self._lexical = LexicalBatch(loaded.lexical_answers) if loaded.lexical is not None else None
        # The first logprob request compiles a sampler op; pay for it here.
        try:
            await self.classify(_WARMUP_TEXT, request_id="warmup-0")
        except EngineFailure as exc:
            await self.shutdown()
            raise ExpertLoadError(
                f"{self._config.model_dir}: warm-up request failed: {exc}"
            ) from exc
        log.info(
            "expert_started",
            model_id=self.model_id,
            adapter_id=self.adapter_id,
            labels=len(loaded.card.labels),
            mode="streaming",
            dtype=loaded.placement.dtype,
            threads=loaded.placement.threads,
            cpu=loaded.placement.cpu["kind"],
            latency_s=round(time.perf_counter() - started, 3),
        )

    async def classify(self, ticket: Ticket | str, *, request_id: str) -> Prediction:
        """Classify one ticket.

        Args:
            ticket: the ticket (read as the card says: `expert.fields.expert_input`), or an
                expert input already made (a text expert's is `Ticket.text()`); cut to the
                card's prompt limit, never rejected.
            request_id: unique per in-flight request.

        Raises:
            EngineFailure: the engine is dead or returned nothing.
            asyncio.CancelledError: re-raised after the vLLM request is aborted.
        """
        loaded = self._require_loaded()
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        engine = self._engine
        if engine is None or engine.errored:
            raise EngineFailure("the engine is not running")
        text = loaded.input_of(ticket)
        prompt = loaded.prompt(text)
        started = time.perf_counter()
        lexical = self._lexical.submit(text) if self._lexical is not None else None
        final = None
        self._in_flight += 1
        try:
            if loaded.card.is_classifier:
                stream = engine.encode(prompt, loaded.params, request_id=request_id)
            else:
                stream = engine.generate(
                    prompt, loaded.params, request_id=request_id, lora_request=loaded.lora_request
                )
            async for output in stream:
                final = output
        except asyncio.CancelledError:
            try:
                await engine.abort(request_id)
            except EngineDeadError:
                log.warning("abort_skipped", request_id=request_id, reason="engine_dead")
            raise
        except (EngineDeadError, EngineGenerateError) as exc:
            raise EngineFailure(f"the engine failed on request {request_id}: {exc!r}") from exc
        finally:
            self._in_flight -= 1
        answer = None if lexical is None else await lexical
        return _prediction(loaded, final, time.perf_counter() - started, answer)

    def load(self) -> tuple[int, int]:
        """(running, waiting) requests now, best effort: this client's in-flight requests,
        split at `max_num_seqs` (the most the engine runs at once)."""
        running = min(self._in_flight, self._config.max_num_seqs)
        return running, self._in_flight - running

    async def shutdown(self) -> None:
        """Stop the engine core (idempotent)."""
        engine, self._engine = self._engine, None
        if engine is None:
            return
        # Stop vLLM's output handler first: left running, it sees the engine core exit
        # and logs a spurious "engine dead" error on every clean shutdown.
        handler = getattr(engine, "output_handler", None)
        if isinstance(handler, asyncio.Task) and not handler.done():
            handler.cancel()
            await asyncio.wait([handler])
        await asyncio.to_thread(engine.shutdown)
        log.info("expert_stopped", mode="streaming")


class BatchExpert(_ServedIdentity):
    """The expert on the in-process offline `vllm.LLM`, for evaluation and benchmarks."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._loaded: _Loaded | None = None
        self._llm: Any = None

    def start(self) -> None:
        """Load the card and the model in-process, and warm up.

        Raises:
            ExpertLoadError: the model cannot be loaded.
        """
        loaded = _Loaded(self._config, streaming=False)
        _set_env_defaults(self._config, loaded.placement, in_process=True)
        kwargs = loaded.engine_kwargs()
        started = time.perf_counter()
        from vllm import LLM

        try:
            self._llm = LLM(**kwargs)
            loaded.bind(self._llm.get_tokenizer())
        except (OSError, ValueError, RuntimeError) as exc:
            self.close()
            raise ExpertLoadError(
                f"{self._config.model_dir}: vLLM could not load it: {exc}"
            ) from exc
        self._loaded = loaded
        try:
            self.classify_batch([_WARMUP_TEXT])
        except EngineFailure as exc:
            self.close()
            raise ExpertLoadError(
                f"{self._config.model_dir}: warm-up request failed: {exc}"
            ) from exc
        log.info(
            "expert_started",
            model_id=loaded.card.model_id,
            labels=len(loaded.card.labels),
            mode="batch",
            dtype=loaded.placement.dtype,
            threads=loaded.placement.threads,
            cpu=loaded.placement.cpu["kind"],
            latency_s=round(time.perf_counter() - started, 3),
        )

    def classify_batch(self, tickets: Sequence[Ticket | str]) -> list[Prediction]:
        """Classify many tickets (or expert inputs, as `StreamingExpert.classify` takes
        them) in one offline batch.

        `latency_s` of each prediction is the whole batch's wall time (all are submitted
        together and answered by the end).

        Raises:
            EngineFailure: the engine is not started or returned too few answers.
        """
        if self._loaded is None or self._llm is None:
            raise EngineFailure("the expert is not started")
        if not tickets:
            return []
        loaded = self._loaded
        texts = [loaded.input_of(ticket) for ticket in tickets]
        prompts = [loaded.prompt(text) for text in texts]
        started = time.perf_counter()
        lexical = loaded.lexical_answers(texts)
        if loaded.card.is_classifier:
            outputs = self._llm.classify(prompts, pooling_params=loaded.params, use_tqdm=False)
        else:
            outputs = self._llm.generate(
                prompts, loaded.params, use_tqdm=False, lora_request=loaded.lora_request
            )
        latency_s = time.perf_counter() - started
        if len(outputs) != len(texts):
            raise EngineFailure(f"{len(texts)} prompts submitted, {len(outputs)} answered")
        return [
            _prediction(loaded, out, latency_s, None if lexical is None else lexical[i])
            for i, out in enumerate(outputs)
        ]

    def close(self) -> None:
        """Release the in-process engine (idempotent)."""
        llm, self._llm = self._llm, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            log.info("expert_stopped", mode="batch")
