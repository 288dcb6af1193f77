"""The expert registry: immutable expert versions and a `current` pointer, written atomically.

Owns the layout of a registry folder and every write to it:

    <root>/versions/<version>/   a copy of a built expert folder (card, weights, lexical/),
                                 plus `.registry.json` (when it was added, from where, and
                                 the size and SHA-256 of every file); never rewritten
    <root>/current               a small text file naming the version in service (not a
                                 symlink: portable across volume types, replaced atomically)
    <root>/history.jsonl         one JSON line per promotion: at, version, previous, reason,
                                 figures

Writers (add, promote) take an advisory lock on `<root>/.lock`. This module never loads a
model into an engine, never decides whether a version is better (the retrain command does),
and never deletes a version.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from expert.serving import ExpertLoadError, load_card

log = structlog.get_logger(__name__)

VERSIONS_DIR = "versions"
POINTER_FILENAME = "current"
HISTORY_FILENAME = "history.jsonl"
META_FILENAME = ".registry.json"
LOCK_FILENAME = ".lock"
_TMP_PREFIX = ".tmp-"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# The worker labels every output with "<card model_id>@<version>" when it serves a registry.
VERSION_SEPARATOR = "@"


class RegistryError(Exception):
    """Bad root, unknown version, invalid expert folder, or a version that changed on disk."""


@dataclass(frozen=True)
class VersionInfo:
    """One version in the registry.

    Attributes:
        version: folder name under `<root>/versions/`, e.g. "20261129T101500Z-real-balanced".
        path: `<root>/versions/<version>`.
        model_id: the card's model_id.
        created_at: when the version was added to the registry (UTC).
    """

    version: str
    path: Path
    model_id: str
    created_at: datetime


def versioned_model_id(model_id: str, version: str) -> str:
    """The model id a worker serving a registry puts on its outputs: "<model_id>@<version>"."""
    return f"{model_id}{VERSION_SEPARATOR}{version}"


def split_versioned_model_id(served: str) -> tuple[str, str | None]:
    """(model id, version) from an output's model id; version None when not from a registry."""
    model_id, sep, version = served.rpartition(VERSION_SEPARATOR)
    if not sep or not model_id or not _VERSION_RE.match(version):
        return served, None
    return model_id, version


def check_version_name(version: str) -> str:
    """Return `version` when it is a legal version name.

    Raises:
        RegistryError: not 1-128 characters of letters, digits, '.', '_' or '-' starting
            with a letter or digit.
    """
    if not _VERSION_RE.match(version):
        raise RegistryError(
            f"invalid version name {version!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return version


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return slug[:80] or "expert"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _file_digests(folder: Path) -> dict[str, dict[str, object]]:
    digests: dict[str, dict[str, object]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name == META_FILENAME:
            continue
        sha = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        digests[path.relative_to(folder).as_posix()] = {
            "bytes": path.stat().st_size,
            "sha256": sha.hexdigest(),
        }
    return digests


def _jsonable(value: object) -> object:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    if isinstance(value, datetime | Path):
        return str(value)
    raise TypeError(f"figures: {type(value).__name__} is not JSON serialisable")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Registry:
    """Immutable expert versions under `root`, and which one is current.

    Args:
        root: the registry folder (created by the first `add`).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths

    @property
    def pointer_path(self) -> Path:
        """`<root>/current`: what a worker polls."""
        return self.root / POINTER_FILENAME

    @property
    def history_path(self) -> Path:
        return self.root / HISTORY_FILENAME

    def path_of(self, version: str) -> Path:
        """`<root>/versions/<version>` (whether or not it exists)."""
        return self.root / VERSIONS_DIR / check_version_name(version)

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise RegistryError(f"{self.root}: registry folder does not exist")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_FILENAME).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ reading

    def info(self, version: str) -> VersionInfo:
        """The version `version`.

        Raises:
            RegistryError: the name is invalid, the version does not exist, or neither its
                registry record nor its card can be read.
        """
        path = self.path_of(version)
        if not path.is_dir():
            raise RegistryError(f"{self.root}: unknown version {version!r}")
        meta = self._meta(path)
        if meta is not None:
            try:
                return VersionInfo(
                    version=version,
                    path=path,
                    model_id=str(meta["model_id"]),
                    created_at=datetime.fromisoformat(str(meta["added_at"])),
                )
            except (KeyError, ValueError):
                pass
        try:
            card = load_card(path)
        except ExpertLoadError as exc:
            raise RegistryError(f"version {version!r}: {exc}") from exc
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return VersionInfo(version=version, path=path, model_id=card.model_id, created_at=mtime)

    def _meta(self, path: Path) -> dict[str, object] | None:
        try:
            data = json.loads((path / META_FILENAME).read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first (a folder whose card cannot be read is skipped).

        Raises:
            RegistryError: the root does not exist.
        """
        self._check_root()
        folder = self.root / VERSIONS_DIR
        if not folder.is_dir():
            return []
        found = []
        for child in folder.iterdir():
            if not child.is_dir() or not _VERSION_RE.match(child.name):  # skips .tmp-*
                continue
            try:
                found.append(self.info(child.name))
            except RegistryError as exc:
                log.warning("registry_version_unreadable", version=child.name, error=str(exc))
        return sorted(found, key=lambda v: (v.created_at, v.version))

    def current_name(self) -> str | None:
        """The version name `<root>/current` holds, read without checking it (None: no
        pointer yet). Cheap enough to poll every second.

        Raises:
            RegistryError: the root does not exist, or the pointer is unreadable or empty.
        """
        self._check_root()
        try:
            text = self.pointer_path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{self.pointer_path}: cannot read the pointer: {exc}") from exc
        name = text.strip()
        if not name:
            raise RegistryError(f"{self.pointer_path}: the pointer is empty")
        return name

    def current(self) -> VersionInfo | None:
        """The version `<root>/current` names (None: no pointer yet).

        Raises:
            RegistryError: the root does not exist, or the pointer names no valid version.
        """
        name = self.current_name()
        return None if name is None else self.info(name)

    def history(self) -> list[dict[str, object]]:
        """Every promotion, oldest first (a torn line from a crash mid-append is skipped)."""
        try:
            lines = self.history_path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                log.warning("registry_history_line_unreadable", line=number)
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def verify(self, version: str) -> None:
        """Check that the version's files are the ones added (sizes and SHA-256).

        Raises:
            RegistryError: a file was changed, removed or added since `add`, or the version
                has no registry record (a folder placed by hand: nothing to compare).
        """
        path = self.path_of(version)
        meta = self._meta(path) if path.is_dir() else None
        recorded = meta.get("files") if meta is not None else None
        if not isinstance(recorded, dict):
            raise RegistryError(f"version {version!r}: no registry record to verify against")
        actual = _file_digests(path)
        changed = sorted(
            name for name in set(recorded) | set(actual) if recorded.get(name) != actual.get(name)
        )
        if changed:
            raise RegistryError(
                f"version {version!r} changed on disk since it was added: {changed[:5]}"
            )

    # ------------------------------------------------------------------ writing

    def add(self, expert_dir: Path, *, version: str | None = None) -> VersionInfo:
        """Copy a built expert folder into the registry as a new, immutable version.

        The copy is made in a temporary folder beside the versions and renamed into place,
        so a reader sees the whole version or none of it. Files are made read-only.

        Args:
            expert_dir: a folder with `expert.json` and its weights (and `lexical/`).
            version: the new version's name; default "<UTC time>-<card model_id>".

        Returns:
            The new version.

        Raises:
            RegistryError: the folder is not a loadable expert, the name is invalid, or the
                version exists already (a version is never overwritten).
        """
        expert_dir = Path(expert_dir)
        try:
            card = load_card(expert_dir)
        except ExpertLoadError as exc:
            raise RegistryError(f"not an expert folder: {exc}") from exc
        if version is not None:
            check_version_name(version)
        added_at = _utc_now()
        versions_dir = self.root / VERSIONS_DIR
        with self._locked():
            versions_dir.mkdir(parents=True, exist_ok=True)
            name = version or self._free_name(
                f"{added_at:%Y%m%dT%H%M%SZ}-{_slug(card.model_id)}", versions_dir
            )
            final = versions_dir / name
            if final.exists():
                raise RegistryError(f"version {name!r} exists already; versions are immutable")
            tmp = versions_dir / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            try:
                shutil.copytree(expert_dir, tmp, symlinks=False)
                try:
                    load_card(tmp)
                except ExpertLoadError as exc:
                    raise RegistryError(f"the copied card does not load: {exc}") from exc
                meta = {
                    "version": name,
                    "model_id": card.model_id,
                    "added_at": added_at.isoformat(),
                    "source": str(expert_dir.resolve()),
                    "files": _file_digests(tmp),
                }
                (tmp / META_FILENAME).write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
                for path in tmp.rglob("*"):
                    if path.is_file():
                        path.chmod(0o444)
                os.rename(tmp, final)
                _fsync_dir(versions_dir)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        log.info("registry_version_added", version=name, model_id=card.model_id)
        return VersionInfo(version=name, path=final, model_id=card.model_id, created_at=added_at)

    @staticmethod
    def _free_name(base: str, versions_dir: Path) -> str:
        name, n = base, 1
        while (versions_dir / name).exists():
            n += 1
            name = f"{base}-{n}"
        return name

    def promote(
        self, version: str, *, reason: str, figures: dict[str, object] | None = None
    ) -> None:
        """Make `version` current: replace the pointer atomically, then log the promotion.

        The pointer is written to a temporary file, fsync'd and renamed over `current`
        (`os.replace`), so a reader sees the old name or the new one, never a torn one.

        Args:
            version: an existing version.
            reason: why (logged in the history).
            figures: the figures the decision rests on (JSON-serialisable).

        Raises:
            RegistryError: unknown version, empty reason, or figures that are not JSON.
        """
        if not reason.strip():
            raise RegistryError("a promotion needs a reason")
        if not self.path_of(version).is_dir():
            raise RegistryError(f"{self.root}: unknown version {version!r}")
        with self._locked():
            try:
                previous = self.current_name()
            except RegistryError:
                previous = None
            entry = {
                "at": _utc_now().isoformat(),
                "version": version,
                "previous": previous,
                "reason": reason,
                "figures": figures or {},
            }
            try:
                line = json.dumps(entry, default=_jsonable)
            except (TypeError, ValueError) as exc:
                raise RegistryError(f"figures are not JSON serialisable: {exc}") from exc
            tmp = self.root / f"{_TMP_PREFIX}{POINTER_FILENAME}-{uuid.uuid4().hex[:8]}"
            try:
                with tmp.open("w", encoding="utf-8") as f:
                    f.write(version + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.pointer_path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(self.root)
            with self.history_path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        log.info("registry_version_promoted", version=version, previous=previous, reason=reason)
