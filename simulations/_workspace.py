"""Where a simulation keeps its state, and what devices imaged with a model hold."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psutil

from edgefleet.contract.bundle import model_target
from edgefleet.controller import FleetController

__all__ = ["default_workdir", "factory_image", "filesystem_of"]


def default_workdir(devices: int, bundle_bytes: int) -> Path:
    """A new temp folder: in memory (``/dev/shm``) when it exists and has room, else disk.

    Each real device writes (and fsyncs) its own storage; a thousand simulated devices
    sharing one disk would measure that disk instead. A device needs about three bundles
    (download, active, last good) and about 1 MB of SQLite and metadata; the folder is
    used when both it and the free memory hold 1.5 times that.
    """
    shm = Path("/dev/shm")
    need = devices * (3 * bundle_bytes + 1024 * 1024)
    try:
        roomy = shm.is_dir() and os.access(shm, os.W_OK) and \
            min(shutil.disk_usage(shm).free, psutil.virtual_memory().available) > 1.5 * need
    except OSError:
        roomy = False
    return Path(tempfile.mkdtemp(prefix="edgefleet-sim-", dir=shm if roomy else None))


def factory_image(ctl: FleetController, name: str, version: int) -> dict[str, Any]:
    """What a device imaged with ``name:version`` holds: its signed bundle's files."""
    manifest_path = ctl.registry.ensure_bundle(name, version)
    targets = ctl.repo.targets.signed.targets

    def stored(target: str) -> Path:  # (the file itself, or a local copy of a stored one)
        dirname, _, base = target.rpartition("/")
        name = f"{targets[target].hashes['sha256']}.{base}"
        return ctl.repo.files.local_path("/".join(p for p in ("targets", dirname, name) if p))
    manifest_bytes = stored(manifest_path).read_bytes()
    manifest = json.loads(manifest_bytes)
    return {"manifest": manifest_bytes.decode(),
            "model_path": str(stored(model_target(manifest_path, manifest["model_file"]))),
            "data": {f["name"]: str(stored(model_target(manifest_path, f["name"])))
                     for f in manifest.get("files", [])},
            "trust": targets[manifest_path].unrecognized_fields.get("custom")}


def filesystem_of(path: Path) -> str:
    """The file system type the devices' state is on (``tmpfs``, ``ext4``…)."""
    best, fstype = "", "unknown"
    for part in psutil.disk_partitions(all=True):
        if str(path.resolve()).startswith(part.mountpoint) and len(part.mountpoint) > len(best):
            best, fstype = part.mountpoint, part.fstype
    return fstype
