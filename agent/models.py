"""The on-device model store: installed models side by side, an atomic switch.

Layout under ``state_dir``::

    models/{name}/{version}-{sha12}/manifest.json + model file + data files (smoke.npz,
                                    profile.json…)              complete installs only
    models/.staging-*/                                          in-progress installs
    state.json          {"active": …, "last_good": …, "trial": … while a health window runs}

An install is written into a staging directory, fsynced, then renamed into place;
``state.json`` is replaced atomically. An agent killed at any instant therefore
restarts with ``state.json`` naming a complete model (or none), and leftover staging
directories are removed on start.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgefleet.contract import (
    IntegrityError,
    Manifest,
    MessageError,
    ModelRef,
    TargetTrust,
    sha256_file,
)
from edgefleet.contract.files import atomic_write, fsync_path

__all__ = ["InstalledModel", "ModelStore"]


@dataclasses.dataclass(frozen=True)
class InstalledModel:
    manifest: Manifest
    directory: Path

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest.model_file

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.manifest.name, self.manifest.version, self.manifest.model_sha256)

    def data_path(self, role: str) -> Path | None:
        """The installed data file for ``role`` (``smoke``, ``profile``, ``labels``), if any."""
        entry = self.manifest.file(role)
        return self.directory / entry.name if entry is not None else None

    def _json(self, role: str, inline: Any) -> Any:
        """The bundle's JSON file for ``role``, else ``inline`` (None: unreadable)."""
        path = self.data_path(role)
        if path is None:
            return inline
        try:
            return json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None

    def profile(self) -> dict[str, Any]:
        """The drift reference profile: its file, or what older manifests held inline
        (``{}`` when there is none or it cannot be read)."""
        data = self._json("profile", self.manifest.reference_profile)
        return dict(data) if isinstance(data, dict) else {}

    def labels(self) -> list[str]:
        """Class names: inline in the manifest, or in the bundle's labels file."""
        data = self._json("labels", self.manifest.labels)
        return [str(x) for x in data] if isinstance(data, list) else []


def _put(src: Path, dst: Path, *, move: bool) -> None:
    if move:
        try:
            os.replace(src, dst)
            return
        except OSError as exc:  # another file system: copied below
            if exc.errno != errno.EXDEV:
                raise
    shutil.copyfile(src, dst)


class ModelStore:
    """Installed models and which one is active / last known good."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "models"
        self.state_path = state_dir / "state.json"
        self.root.mkdir(parents=True, exist_ok=True)
        self._by_sha: dict[str, Path] | None = None  # file_with's index
        # state.json as last read or written, with the file's identity then: an update
        # reads it a dozen times, and a stat costs less than a read and a parse
        self._state: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        for leftover in self.root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _dir_for(self, ref: ModelRef) -> Path:
        return self.root / ref.name / f"{ref.version}-{ref.sha256[:12]}"

    def read_state(self) -> dict[str, ModelRef | None]:
        """The active and last-known-good refs (``None`` when absent)."""
        raw = self._read_raw()
        return {k: ModelRef(**raw[k]) if raw.get(k) else None for k in ("active", "last_good")}

    def get(self, ref: ModelRef) -> InstalledModel | None:
        """The installed model for ``ref`` if its files are complete and match."""
        directory = self._dir_for(ref)
        try:
            manifest = Manifest.decode((directory / "manifest.json").read_bytes())
        except (FileNotFoundError, ValueError, MessageError):
            return None
        for name, length in [(manifest.model_file, manifest.model_length),
                             *((f.name, f.length) for f in manifest.files)]:
            path = directory / name
            if not path.exists() or path.stat().st_size != length:
                return None
        return InstalledModel(manifest, directory)

    def install(self, manifest: Manifest, manifest_bytes: bytes, model_src: Path,
                trust: TargetTrust | None = None,
                data: dict[str, Path] | None = None, *, move: bool = False,
                verified: bool = False) -> InstalledModel:
        """Copy a verified model (and its data files) beside the others; does not
        activate it.

        ``trust`` (the signed hardware classes and release counter) is kept with it, so
        a later switch back to it can be checked against the release floor. ``data``
        maps each of the manifest's data file names to the downloaded file. ``move``:
        the files are the agent's own downloads, moved in (copied only across file
        systems) instead of copied. ``verified``: python-tuf has just checked these very
        files against signed lengths and hashes equal to the manifest's, so they are not
        read and hashed again (their sizes still are checked).

        Raises:
            IntegrityError: the model or a data file does not match the manifest.
        """
        data = dict(data or {})
        files = [(manifest.model_file, model_src, manifest.model_sha256, manifest.model_length),
                 *((f.name, data.get(f.name), f.sha256, f.length) for f in manifest.files)]
        checked: list[tuple[str, Path]] = []
        for name, src, sha, length in files:
            if src is None:
                raise IntegrityError(f"{name} is missing")
            got = (sha, src.stat().st_size) if verified else sha256_file(str(src))
            if got != (sha, length):
                raise IntegrityError(f"{name} does not match its manifest")
            checked.append((name, src))
        ref = ModelRef(manifest.name, manifest.version, manifest.model_sha256)
        final = self._dir_for(ref)
        existing = self.get(ref)
        if existing is not None:
            return existing
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            for name, src in checked:
                _put(src, staging / name, move=move)
                fsync_path(staging / name)
            if trust is not None:
                atomic_write(staging / "trust.json", trust.encode())
            atomic_write(staging / "manifest.json", manifest_bytes)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # an incomplete earlier attempt
                shutil.rmtree(final)
            os.replace(staging, final)
            fsync_path(final.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            self._by_sha = None
        return InstalledModel(manifest, final)

    @staticmethod
    def trust_of(installed: InstalledModel) -> TargetTrust | None:
        """What was signed about an installed model (None for installs that predate it)."""
        try:
            return TargetTrust.decode((installed.directory / "trust.json").read_bytes())
        except (FileNotFoundError, MessageError):
            return None

    def release_floor(self, name: str) -> int:
        """The highest release counter of ``name`` this device has run healthy (0: none)."""
        floors = self._read_raw().get("release_floor") or {}
        return int(floors.get(name, 0)) if isinstance(floors, dict) else 0

    def raise_floor(self, name: str, counter: int) -> None:
        """Remember that ``name`` ran healthy at ``counter``; lower ones are refused from now on."""
        data = self._read_raw()
        if self._raised(data, name, counter):
            self._write_raw(data)

    @staticmethod
    def _raised(data: dict[str, Any], name: str, counter: int) -> bool:
        """Raise ``name``'s floor in ``data`` (state.json's content) to ``counter``;
        whether it rose."""
        floors = dict(data.get("release_floor") or {})
        if counter <= int(floors.get(name, 0)):
            return False
        floors[name] = counter
        data["release_floor"] = floors
        return True

    def read_trial(self) -> dict[str, Any] | None:
        """The health trial in progress (job, deployment, policy, attempts…), if any."""
        trial = self._read_raw().get("trial")
        return dict(trial) if isinstance(trial, dict) else None  # the kept state's: a copy

    def activate(self, ref: ModelRef, *, trial: dict[str, Any] | None = None,
                 floor: int | None = None) -> None:
        """Make ``ref`` active; the previously active model becomes last known good.

        Args:
            trial: what to remember while the health window runs (cleared by ``commit``).
            floor: with no health window, the release counter ``ref`` runs healthy at:
                its name's floor is raised in the same write (``raise_floor``).
        """
        state = self.read_state()
        previous = state["active"]
        last_good = previous if previous is not None and previous != ref else state["last_good"]
        self._write(active=ref, last_good=last_good, trial=trial,
                    floor=(ref.name, floor) if floor is not None else None)

    def update_trial(self, trial: dict[str, Any] | None) -> None:
        state = self.read_state()
        self._write(active=state["active"], last_good=state["last_good"], trial=trial)

    def commit(self) -> None:
        """The health window passed: forget the trial."""
        self.update_trial(None)

    def rollback(self, *, failed: bool = False) -> ModelRef | None:
        """Switch back to the last known good model; returns it (``None`` if there is none).

        Args:
            failed: the active model failed; it must not become the new last known good.
        """
        state = self.read_state()
        if state["last_good"] is None or self.get(state["last_good"]) is None:
            return None
        self._write(active=state["last_good"], last_good=None if failed else state["active"],
                    trial=None)
        return state["last_good"]

    def record_job(self, job: str, state: str, issued_at: float, *, keep: int = 50) -> None:
        """Remember how a job ended, so a restart does not run it again."""
        data = self._read_raw()
        jobs = dict(data.get("jobs") or {})
        jobs[job] = {"state": state, "issued_at": issued_at}
        data["jobs"] = dict(list(jobs.items())[-keep:])
        self._write_raw(data)

    def finished_jobs(self) -> dict[str, dict[str, Any]]:
        jobs = self._read_raw().get("jobs")
        return dict(jobs) if isinstance(jobs, dict) else {}

    def _read_raw(self) -> dict[str, Any]:
        """state.json's top level (a copy: change it, then ``_write_raw`` it)."""
        try:
            st = os.stat(self.state_path)
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        kept = self._state
        if kept is not None and kept[0] == key:
            return dict(kept[1])
        try:
            data = json.loads(self.state_path.read_bytes())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        if not isinstance(data, dict):
            return {}
        self._state = (key, data)
        return dict(data)

    def _write_raw(self, data: dict[str, Any]) -> None:
        atomic_write(self.state_path, json.dumps(data, indent=2).encode())
        self._state = None  # read again (once) with the new file's identity

    def file_with(self, sha256: str) -> Path | None:
        """An installed file (model or data file of any model here) whose manifest says
        it has this sha256; a new bundle's file with the same content is copied from it
        instead of downloaded (TUF still checks the copy).

        The installs' manifests are read once and kept until an install or a prune (an
        update asks for each of its files twice)."""
        if self._by_sha is None:
            self._by_sha = self._index_files()
        path = self._by_sha.get(sha256)
        if path is not None and not path.is_file():  # removed under us: look again
            self._by_sha = self._index_files()
            path = self._by_sha.get(sha256)
        return path

    def _index_files(self) -> dict[str, Path]:
        index: dict[str, Path] = {}
        for manifest_path in sorted(self.root.glob("*/*/manifest.json")):
            try:
                manifest = Manifest.decode(manifest_path.read_bytes())
            except (OSError, ValueError, MessageError):
                continue
            for name, sha in [(manifest.model_file, manifest.model_sha256),
                              *((f.name, f.sha256) for f in manifest.files)]:
                path = manifest_path.parent / name
                if sha not in index and path.is_file():
                    index[sha] = path
        return index

    def find(self, name: str, version: int) -> InstalledModel | None:
        """Any complete install of ``name:version`` on this device."""
        for d in sorted((self.root / name).glob(f"{version}-*")):
            sha_prefix = d.name.split("-", 1)[1]
            try:
                manifest = Manifest.decode((d / "manifest.json").read_bytes())
            except (FileNotFoundError, ValueError, MessageError):
                continue
            if manifest.model_sha256.startswith(sha_prefix):
                found = self.get(ModelRef(name, version, manifest.model_sha256))
                if found is not None:
                    return found
        return None

    def _write(self, *, active: ModelRef | None, last_good: ModelRef | None,
               trial: dict[str, Any] | None = None,
               floor: tuple[str, int] | None = None) -> None:
        data = self._read_raw()
        data.update(active=active.to_dict() if active else None,
                    last_good=last_good.to_dict() if last_good else None, trial=trial)
        if floor is not None:
            self._raised(data, *floor)
        self._write_raw(data)

    def prune(self, keep: set[ModelRef]) -> int:
        """Delete installed models not in ``keep``; returns how many were removed."""
        keep_dirs = {self._dir_for(r) for r in keep}
        removed = 0
        self._by_sha = None
        for name_dir in self.root.iterdir():
            if name_dir.name.startswith(".") or not name_dir.is_dir():
                continue
            for d in name_dir.iterdir():
                if d not in keep_dirs:
                    shutil.rmtree(d, ignore_errors=True)
                    removed += 1
        return removed

