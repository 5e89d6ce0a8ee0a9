"""Moving a controller's files from its data directory into the database file store.

``import_directory`` copies ``repo/`` and ``models/`` of a data directory into another
store (normally ``DatabaseFiles``) and points model versions and variants whose
``file`` names a file in that directory at its key in the new store, so a controller
restarted with ``file_store = "database"`` keeps its repository (same metadata
versions: devices see no rollback) and its registry. Idempotent: run it again after an
interrupted run.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

import sqlalchemy as sa

from ._files import DirectoryFiles, FileStore
from ._registry_store import RegistryStore

__all__ = ["import_directory"]

_PARTS = ("repo", "models")


def _immutable(key: str) -> bool:
    """Files never rewritten under their name: targets (named by hash) and versioned
    metadata; ``timestamp.json`` and model files are copied every time."""
    name = key.rsplit("/", 1)[-1]
    return key.startswith("repo/targets/") or (
        key.startswith("repo/metadata/") and name.split(".", 1)[0].isdigit())


def _model_key(ref: str, models_dir: Path) -> str | None:
    """The key under ``models/`` of a row's file path, if it is a file of ``models_dir``."""
    parts = PurePath(ref).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "models" and i + 1 < len(parts):
            rest = parts[i + 1:]
            if models_dir.joinpath(*rest).is_file():
                return "/".join(rest)
    return None


def _is_key(target: FileStore, ref: str) -> bool:
    """Whether a row's file is already a key of ``target``'s ``models/``."""
    try:
        return target.exists(f"models/{ref}")
    except ValueError:  # an absolute or otherwise path-like name
        return False


def import_directory(data_dir: Path, target: FileStore, engine: sa.Engine) -> dict[str, Any]:
    """Copy a data directory's repository and model files into ``target``.

    Args:
        data_dir: the controller's data directory (``--data``).
        target: the store to copy into (its keys: ``repo/…``, ``models/…``).
        engine: the store's database, whose model rows are repointed.

    Returns:
        ``{"copied", "unchanged", "rows_repointed", "rows_missing"}``: files copied,
        files already there, model rows now naming a key, and rows whose file is
        neither in ``data_dir`` nor a key already (listed as ``name:version[:variant]``).

    Raises:
        ValueError: ``data_dir`` holds neither ``repo/`` nor ``models/``.
    """
    if not any((data_dir / p).is_dir() for p in _PARTS):
        raise ValueError(f"data directory {data_dir}: expected repo/ or models/ in it")
    source = DirectoryFiles(data_dir)
    copied = unchanged = 0
    for part in _PARTS:
        for key in source.list(part):
            if any(p.startswith(".") for p in key.split("/")):
                continue  # locks, scratch of optimizations
            local = source.local_path(key)
            if (_immutable(key) and target.exists(key)
                    and target.size(key) == local.stat().st_size):
                unchanged += 1
                continue
            target.put_file(key, local)
            copied += 1
    registry = RegistryStore(engine)
    moves, missing = list[tuple[dict[str, Any], str]](), list[str]()
    for ref in registry.file_refs():
        moved = _model_key(ref["file"], data_dir / "models")
        if moved is not None:
            moves.append((ref, moved))
        elif not _is_key(target, ref["file"]):
            missing.append(":".join(str(ref[k]) for k in ("name", "version", "variant")
                                    if ref[k] != ""))
    return {"copied": copied, "unchanged": unchanged,
            "rows_repointed": registry.move_file_refs(moves), "rows_missing": missing}
