"""Expert fixtures: a tiny expert built in seconds, and real vLLM engines serving it.

Loaded by tests/conftest.py as a pytest plugin. Session-scoped: the tiny expert is built once
per run (about ten seconds on two cores), and each engine starts once (an in-process one
again only when another test's engine tore vLLM's process-wide state down). The same holds for the
tiny classifier expert (a random BERT fine-tuned in seconds) and its pooling-runner engines.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from expert.build import BuildConfig, build_expert
from expert.encoder import EncoderConfig, build_classifier, packaged_encoder_dir
from expert.engine import BatchExpert, StreamingExpert
from expert.fields import InputSpec, parse_fields
from expert.llm import LlmConfig, build_lora
from expert.recipe import Preset, RecipeConfig
from expert.recipe import build as build_recipe
from expert.serving import EngineConfig
from loadgen.corpus import generate, write_jsonl
from schemas.taxonomy import Taxonomy

REPO = Path(__file__).resolve().parents[1]
# A cache shared by every test engine in the repo: vLLM's compiled sampler op is reused.
VLLM_CACHE = REPO / ".state" / "vllm-cache"

TINY_CONFIG = BuildConfig(
    model_id="tiny-expert",
    vocab_size=400,
    hidden_size=64,
    num_layers=2,
    num_heads=1,
    intermediate_size=128,
    max_prompt_tokens=64,
    epochs=3,
    batch_size=32,
    learning_rate=5e-3,
    lm_loss_weight=0.0,
    # One thread: tiny matmuls gain nothing from two, and the suite shares the machine.
    num_threads=1,
)
TINY_LORA_CONFIG = LlmConfig(
    model_id="tiny-lora",
    epochs=1,
    batch_size=32,
    learning_rate=1e-2,
    lora_rank=16,
    num_threads=1,
)
TINY_TICKETS = 1200
# A random BERT learns the synthetic queues in about five seconds at this learning rate
# (about 0.9 held-out accuracy); a pretrained one would use ~5e-5.
TINY_CLASSIFIER_CONFIG = EncoderConfig(
    model_id="tiny-classifier",
    max_prompt_tokens=64,
    epochs=5,
    batch_size=32,
    learning_rate=5e-3,
    num_threads=1,
)


def tiny_engine_config(
    model_dir: Path, adapter_dir: Path | None = None, *, model_in_engine_core: bool = True
) -> EngineConfig:
    """A small-footprint engine config for tests.

    A streaming engine runs its model in the engine-core process: one torch + vLLM import
    fewer per start. The production layout (a model process of its own) is tested where the
    engine core is killed (tests/test_bench_chaos.py).
    """
    return EngineConfig(
        model_dir=model_dir,
        adapter_dir=adapter_dir,
        max_num_seqs=64,
        kv_cache_gib=1.0,
        max_model_len=128,
        cache_dir=VLLM_CACHE,
        model_in_engine_core=model_in_engine_core,
    )


# The tiny LoRA adapter is taught to send every ticket here: a change that is quick to learn
# and plain to see in vLLM's answers.
LORA_TARGET_QUEUE = "facilities_other"


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """The folder `name`, made by `build(folder)` once per test run.

    Under pytest-xdist the workers of one run share it: the first to ask builds it under a
    file lock, the others wait for it and reuse it, instead of each training its own copy.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above every worker's own
    root = base / "built-once"
    root.mkdir(parents=True, exist_ok=True)
    out, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def tiny_corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small labeled synthetic corpus (JSONL) covering every taxonomy queue."""

    def build(folder: Path) -> None:
        folder.mkdir()
        write_jsonl(generate(TINY_TICKETS, seed=7), folder / "tiny.jsonl")

    return built_once(tmp_path_factory, "corpus", build) / "tiny.jsonl"


@pytest.fixture(scope="session")
def tiny_expert_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus_path: Path) -> Path:
    """A tiny from-scratch expert (~0.1M parameters) answering the taxonomy's queues."""

    def build(out: Path) -> None:
        labels = Taxonomy.load().labels
        build_expert(tiny_corpus_path, out, config=TINY_CONFIG, taxonomy_labels=labels)

    return built_once(tmp_path_factory, "tiny-expert", build)


@pytest.fixture(scope="session")
def tiny_lora_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_corpus_path: Path, tiny_expert_dir: Path
) -> Path:
    """A LoRA adapter on the tiny expert, taught to answer `LORA_TARGET_QUEUE` for all."""

    def build(folder: Path) -> None:
        folder.mkdir()
        data = folder / "relabeled.jsonl"
        with tiny_corpus_path.open() as src, data.open("w") as dst:
            for line in src:
                record = json.loads(line)
                record["label"] = LORA_TARGET_QUEUE
                dst.write(json.dumps(record) + "\n")
        build_lora(
            data,
            folder / "tiny-lora",
            config=TINY_LORA_CONFIG.model_copy(update={"base": str(tiny_expert_dir)}),
            taxonomy_labels=Taxonomy.load().labels,
        )

    return built_once(tmp_path_factory, "lora", build) / "tiny-lora"


SHARED_ENGINES: list[InProcessEngine] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How often each shared in-process engine started: more than once is a restart that a
    test closing its own in-process engine forced (see InProcessEngine)."""
    for engine in SHARED_ENGINES:
        name = engine.model_dir.name
        terminalreporter.write_line(f"shared in-process engine {name}: {engine.starts} start(s)")


class InProcessEngine:
    """One in-process vLLM engine shared by the tests that only query it.

    vLLM keeps its parallel groups process-wide, and every in-process engine's shutdown
    tears them down (`EngineCore.shutdown` calls `cleanup_dist_env_and_memory`): once
    another test closes its own engine, or a leaked one is garbage-collected, a shared
    engine would fail with "pipeline model parallel group is not initialized". The
    worker never runs two in-process engines at once; the suite does, so `get` restarts
    the shared engine when that state is gone.
    """

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._expert: BatchExpert | None = None
        self.starts = 0
        SHARED_ENGINES.append(self)

    @property
    def model_dir(self) -> Path:
        return self._config.model_dir

    def get(self) -> BatchExpert:
        import gc

        from vllm.distributed.parallel_state import model_parallel_is_initialized

        gc.collect()  # finalizers of leaked engines run now, not in the middle of a test
        if self._expert is None or not model_parallel_is_initialized():
            self.close()
            expert = BatchExpert(self._config)
            expert.start()
            self._expert = expert
            self.starts += 1
        return self._expert

    def close(self) -> None:
        expert, self._expert = self._expert, None
        if expert is not None:
            expert.close()


def _shared_engine(expert_dir: Path) -> Iterator[InProcessEngine]:
    engine = InProcessEngine(tiny_engine_config(expert_dir))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def _batch_expert_engine(tiny_expert_dir: Path) -> Iterator[InProcessEngine]:
    yield from _shared_engine(tiny_expert_dir)


@pytest.fixture
def batch_expert(_batch_expert_engine: InProcessEngine) -> BatchExpert:
    """The tiny expert in the in-process offline vLLM engine (shared, see InProcessEngine)."""
    return _batch_expert_engine.get()


@pytest.fixture(scope="session")
async def streaming_expert(tiny_expert_dir: Path) -> AsyncIterator[StreamingExpert]:
    """The tiny expert in vLLM's AsyncLLM (engine core in a child process, the model in it:
    a separate model process would poll its queue for the whole session)."""
    expert = StreamingExpert(tiny_engine_config(tiny_expert_dir))
    await expert.start()
    yield expert
    await expert.shutdown()


@pytest.fixture(scope="session")
def tiny_encoder_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BertModel folder (hidden 32, 2 layers) with the packaged MiniLM tokenizer.

    One 32-wide attention head: vLLM's CPU attention kernels take head sizes from 32 up.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    def build(out: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_dir(), local_files_only=True)
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=1,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        BertModel(config).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return built_once(tmp_path_factory, "tiny-bert", build)


@pytest.fixture(scope="session")
def tiny_classifier_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_corpus_path: Path, tiny_encoder_base: Path
) -> Path:
    """The tiny BERT fine-tuned as a classifier expert over the taxonomy's queues."""

    def build(out: Path) -> None:
        build_classifier(
            tiny_corpus_path,
            out,
            base_dir=tiny_encoder_base,
            config=TINY_CLASSIFIER_CONFIG,
            taxonomy_labels=Taxonomy.load().labels,
        )

    return built_once(tmp_path_factory, "tiny-classifier", build)


@pytest.fixture(scope="session")
def _batch_classifier_engine(tiny_classifier_dir: Path) -> Iterator[InProcessEngine]:
    yield from _shared_engine(tiny_classifier_dir)


@pytest.fixture
def batch_classifier(_batch_classifier_engine: InProcessEngine) -> BatchExpert:
    """The tiny classifier in the in-process offline engine (pooling runner, shared)."""
    return _batch_classifier_engine.get()


@pytest.fixture(scope="session")
async def streaming_classifier(tiny_classifier_dir: Path) -> AsyncIterator[StreamingExpert]:
    """The tiny classifier in vLLM's AsyncLLM (pooling runner, engine core in a child)."""
    expert = StreamingExpert(tiny_engine_config(tiny_classifier_dir))
    await expert.start()
    yield expert
    await expert.shutdown()


# The default recipe on the tiny corpus: the tiny from-scratch model as the only neural
# candidate, fused with the lexical model and calibrated on validation rows.
TINY_RECIPE_CONFIG = RecipeConfig(
    model_id="tiny-fused",
    preset=Preset.FAST,
    budget_minutes=10,
    scratch=TINY_CONFIG.model_copy(update={"model_id": "tiny-fused"}),
    num_threads=1,
)


@pytest.fixture(scope="session")
def tiny_fused_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus_path: Path) -> Path:
    """A fused, calibrated expert built by `expert.recipe.build` (the default build path)."""

    def build(out: Path) -> None:
        labels = Taxonomy.load().labels
        build_recipe(tiny_corpus_path, out, config=TINY_RECIPE_CONFIG, taxonomy_labels=labels)

    return built_once(tmp_path_factory, "tiny-fused", build)


# A fields-reading expert: the ticket texts say nothing, the `site` field decides the queue.
FIELDS_QUEUES = ("network", "hardware", "access")
FIELDS_INPUTS = InputSpec(fields=parse_fields("site,priority"))
_FIELDS_NOISE = ("please help", "it does not work", "urgent issue", "see attached", "any update?")


def fields_rows(n: int, *, seed: int) -> list[dict[str, str]]:
    """Rows of the fields corpus: `text`, `site` (decides `label`), `priority` (noise)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        queue = rng.choice(FIELDS_QUEUES)
        rows.append(
            {
                "text": rng.choice(_FIELDS_NOISE),
                "site": f"site-{queue}",
                "priority": f"{rng.randint(1, 5)} - level",
                "label": queue,
            }
        )
    return rows


@pytest.fixture(scope="session")
def tiny_fields_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fused expert built by `expert.recipe.build` with `--fields site,priority`."""
    config = TINY_RECIPE_CONFIG.model_copy(
        update={
            "model_id": "tiny-fields",
            "inputs": FIELDS_INPUTS,
            "scratch": TINY_CONFIG.model_copy(update={"model_id": "tiny-fields"}),
        }
    )

    def build(folder: Path) -> None:
        folder.mkdir()
        data = folder / "fields.jsonl"
        rows = fields_rows(600, seed=11)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
        build_recipe(data, folder / "tiny-fields", config=config)

    return built_once(tmp_path_factory, "fields", build) / "tiny-fields"
