"""The expert registry: immutable versions, an atomic `current` pointer, the history."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from expert.card import CARD_FILENAME, CLASSIFIER_TEMPLATE, ExpertCard
from expert.registry import (
    META_FILENAME,
    Registry,
    RegistryError,
    split_versioned_model_id,
    versioned_model_id,
)
from schemas.taxonomy import Taxonomy


def _expert(folder: Path, model_id: str = "unit-expert", weights: bytes = b"w1") -> Path:
    """A folder `load_card` accepts (a classifier card), with a weights file and lexical/."""
    folder.mkdir(parents=True)
    card = ExpertCard(
        kind="classifier",
        model_id=model_id,
        labels=tuple(Taxonomy.load().labels),
        prompt_template=CLASSIFIER_TEMPLATE,
        max_prompt_tokens=64,
    )
    (folder / CARD_FILENAME).write_text(card.to_json())
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "lexical").mkdir()
    (folder / "lexical" / "weights.json").write_text("{}")
    return folder


def test_add_copies_the_folder_into_a_new_immutable_version(tmp_path: Path) -> None:
    source = _expert(tmp_path / "built")
    reg = Registry(tmp_path / "registry")
    info = reg.add(source, version="v1")
    assert info.version == "v1" and info.model_id == "unit-expert"
    assert info.path == tmp_path / "registry" / "versions" / "v1"
    assert (info.path / "model.safetensors").read_bytes() == b"w1"
    assert (info.path / "lexical" / "weights.json").is_file()
    reg.verify("v1")
    # A copy, not a link: changing the source later does not change the version.
    (source / "model.safetensors").write_bytes(b"changed")
    assert (info.path / "model.safetensors").read_bytes() == b"w1"
    # Never overwritten: the same name again is refused and the version is untouched.
    with pytest.raises(RegistryError, match="exists already"):
        reg.add(source, version="v1")
    assert (info.path / "model.safetensors").read_bytes() == b"w1"
    # Read-only files: an accidental in-place write fails (for any user but root).
    assert (info.path / "model.safetensors").stat().st_mode & 0o222 == 0


def test_default_version_names_are_unique_and_versions_list_oldest_first(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    first = reg.add(_expert(tmp_path / "a", model_id="real balanced/expert"))
    second = reg.add(_expert(tmp_path / "b", model_id="real balanced/expert"))
    assert first.version != second.version
    assert first.version.endswith("real-balanced-expert")
    assert [v.version for v in reg.versions()] == [first.version, second.version]
    assert reg.info(first.version) == first


def test_changed_files_fail_verification(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    info = reg.add(_expert(tmp_path / "built"), version="v1")
    card = info.path / CARD_FILENAME
    card.chmod(0o644)
    card.write_text(card.read_text().replace("unit-expert", "other-expert"))
    with pytest.raises(RegistryError, match="changed on disk.*expert.json"):
        reg.verify("v1")


@pytest.mark.parametrize("damage", ["no_card", "broken_card", "not_a_folder"])
def test_an_invalid_expert_folder_is_refused_and_leaves_nothing(
    tmp_path: Path, damage: str
) -> None:
    source = tmp_path / "built"
    if damage != "not_a_folder":
        _expert(source)
    if damage == "no_card":
        (source / CARD_FILENAME).unlink()
    elif damage == "broken_card":
        (source / CARD_FILENAME).write_text('{"model_id": "x", "labels": ["only-one"]}')
    reg = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="not an expert folder"):
        reg.add(source, version="v1")
    versions = tmp_path / "registry" / "versions"
    assert not versions.exists() or list(versions.iterdir()) == []


def test_invalid_version_names_are_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    for name in ("../escape", "", ".hidden", "a b", "x" * 129):
        with pytest.raises(RegistryError, match="invalid version name"):
            reg.add(_expert(tmp_path / f"e{abs(hash(name))}"), version=name)


def test_promote_repoints_current_and_appends_history(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    assert reg.history() == []
    reg.add(_expert(tmp_path / "a"), version="v1")
    reg.add(_expert(tmp_path / "b", model_id="challenger"), version="v2")
    assert reg.current() is None
    reg.promote("v1", reason="first expert")
    reg.promote("v2", reason="challenger better", figures={"accuracy": np.float64(0.91), "n": 3})
    current = reg.current()
    assert current is not None and (current.version, current.model_id) == ("v2", "challenger")
    assert reg.pointer_path.read_text() == "v2\n"
    history = reg.history()
    assert [(h["version"], h["previous"], h["reason"]) for h in history] == [
        ("v1", None, "first expert"),
        ("v2", "v1", "challenger better"),
    ]
    assert history[1]["figures"] == {"accuracy": 0.91, "n": 3}
    assert all(isinstance(h["at"], str) for h in history)
    # No temporary pointer files are left beside it.
    assert sorted(p.name for p in reg.root.iterdir() if p.name.startswith(".tmp")) == []


def test_promote_refuses_unknown_versions_and_keeps_the_pointer(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.add(_expert(tmp_path / "a"), version="v1")
    reg.promote("v1", reason="first")
    with pytest.raises(RegistryError, match="unknown version"):
        reg.promote("v9", reason="typo")
    with pytest.raises(RegistryError, match="reason"):
        reg.promote("v1", reason=" ")
    with pytest.raises(RegistryError, match="JSON"):
        reg.promote("v1", reason="bad figures", figures={"x": object()})
    assert reg.current_name() == "v1"
    assert len(reg.history()) == 1


def test_the_pointer_is_never_seen_torn_while_it_is_replaced(tmp_path: Path) -> None:
    """A reader polling `current` (as the worker does) sees a whole version name every time."""
    reg = Registry(tmp_path / "registry")
    names = ["v1", "a-much-longer-version-name-2"]
    for name in names:
        reg.add(_expert(tmp_path / name), version=name)
    reg.promote(names[0], reason="start")
    seen: set[str | None] = set()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.add(reg.current_name())

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for i in range(60):
            reg.promote(names[i % 2], reason="flip")
    finally:
        stop.set()
        reader.join()
    assert seen <= set(names) and seen
    assert len(reg.history()) == 61


def test_a_bad_root_or_pointer_is_an_error(tmp_path: Path) -> None:
    missing = Registry(tmp_path / "nowhere")
    with pytest.raises(RegistryError, match="does not exist"):
        missing.current()
    with pytest.raises(RegistryError, match="does not exist"):
        missing.versions()
    reg = Registry(tmp_path / "registry")
    reg.add(_expert(tmp_path / "a"), version="v1")
    reg.pointer_path.write_text("v7\n")
    with pytest.raises(RegistryError, match="unknown version 'v7'"):
        reg.current()
    reg.pointer_path.write_text("")
    with pytest.raises(RegistryError, match="empty"):
        reg.current()


def test_a_torn_history_line_is_skipped(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.add(_expert(tmp_path / "a"), version="v1")
    reg.promote("v1", reason="first")
    with reg.history_path.open("a") as f:
        f.write('{"at": "2026-')
    assert [h["version"] for h in reg.history()] == ["v1"]


def test_version_record_survives_and_versioned_model_ids_round_trip(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    info = reg.add(_expert(tmp_path / "a"), version="20261129T101500Z-real-balanced")
    meta = json.loads((info.path / META_FILENAME).read_text())
    assert meta["model_id"] == "unit-expert" and "model.safetensors" in meta["files"]
    served = versioned_model_id(info.model_id, info.version)
    assert served == "unit-expert@20261129T101500Z-real-balanced"
    assert split_versioned_model_id(served) == ("unit-expert", info.version)
    assert split_versioned_model_id("tiny-expert") == ("tiny-expert", None)
