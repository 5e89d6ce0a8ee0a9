"""The TUF repository the controller serves to devices.

``TrustRepository`` keeps TUF metadata (python-tuf's Metadata API) and target files in a
file store (``_files``: a folder, or the controller's database) with consistent
snapshots: every file a device fetches is immutable by name except
``timestamp.json``, which is small enough to arrive in one chunk, so a bundle published
during a device's download cannot mix two releases. Keys come from ``keys`` (online
roles only; the root keys stay offline). Each target may carry ``custom`` data that the
targets keys sign with it: for bundles, the hardware classes it is for and its release
counter (see ``edgefleet.contract.bundle``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from edgefleet.contract import Clock, Manifest, NotFoundError, Signed, SystemClock, batch_leaves
from edgefleet.contract.bundle import model_target

from ._files import DirectoryFiles, FileStore
from .keys import init_keys, load_signers

__all__ = ["TrustExpiry", "TrustRepository", "init_keys"]

_SERIALIZER = JSONSerializer(compact=False)


@dataclasses.dataclass(frozen=True)
class TrustExpiry:
    """How long each role's metadata stays valid, in seconds."""

    targets_s: float = 90 * 86400
    snapshot_s: float = 7 * 86400
    timestamp_s: float = 86400


def _expires(clock: Clock, seconds: float) -> datetime:
    return datetime.fromtimestamp(int(clock.time() + seconds), UTC)


def _target_file(folder: str, name: str) -> str:
    """The repository file of a target: ``targets/{folder}/{sha256}.{name}``."""
    return "/".join(p for p in ("targets", folder, name) if p)


class TrustRepository:
    """TUF metadata and targets in a file store, signed with the controller's online keys.

    Layout: ``metadata/`` (``N.root.json``, ``N.targets.json``, ``N.snapshot.json``,
    ``timestamp.json``) and ``targets/`` (``{sha256}.{name}``).

    Args:
        repo_dir: the folder of the repository, when it is kept in one (``files`` None).
        key_dir: the directory made by ``init_keys``.
        expiry: validity of targets, snapshot and timestamp metadata.
        clock: time source for expiry.
        shared: several controller replicas publish into the same store: each change
            first takes what another replica published.
        files: where metadata and targets live instead of ``repo_dir`` (e.g. the
            database store's ``repo/``); its ``lock`` serializes publishing.

    Raises:
        TypeError: neither ``repo_dir`` nor ``files``.
    """

    def __init__(self, repo_dir: Path | None, key_dir: Path, *,
                 expiry: TrustExpiry | None = None, clock: Clock | None = None,
                 shared: bool = False, files: FileStore | None = None) -> None:
        if files is None:
            if repo_dir is None:
                raise TypeError("TrustRepository needs repo_dir or files")
            files = DirectoryFiles(repo_dir)
        self.files = files
        self.repo_dir = repo_dir if files.local else None
        self.key_dir = key_dir
        # the folders, when the repository is kept in one (tools and tests look in them)
        self.metadata_dir = self.repo_dir / "metadata" if self.repo_dir is not None else None
        self.targets_dir = self.repo_dir / "targets" if self.repo_dir is not None else None
        self.expiry = expiry or TrustExpiry()
        self.clock = clock or SystemClock()
        self.shared = shared
        self._lock = threading.RLock()
        with self._writing(reload=False):
            self._load_root()
            if self.files.exists("metadata/timestamp.json"):
                self._load_published()
                if not self._signed_by_current_keys():
                    self._publish(targets_changed=True)  # keys were rotated while we were down
            else:
                self.targets = Metadata(Targets(expires=self._exp(self.expiry.targets_s)))
                self.snapshot = Metadata(Snapshot(expires=self._exp(self.expiry.snapshot_s)))
                self.timestamp = Metadata(Timestamp(expires=self._exp(self.expiry.timestamp_s)))
                self._publish(targets_changed=True, bump=False)

    def _load_published(self) -> None:
        """Take the timestamp, snapshot and targets metadata published on disk."""
        ts = Metadata[Timestamp].from_bytes(self.files.get("metadata/timestamp.json"))
        snap_ver = ts.signed.snapshot_meta.version
        self.snapshot = Metadata[Snapshot].from_bytes(
            self.files.get(f"metadata/{snap_ver}.snapshot.json"))
        tgt_ver = self.snapshot.signed.meta["targets.json"].version
        self.targets = Metadata[Targets].from_bytes(
            self.files.get(f"metadata/{tgt_ver}.targets.json"))
        self.timestamp = ts

    @contextlib.contextmanager
    def _writing(self, *, reload: bool = True) -> Iterator[None]:
        """Hold the repository for a change: this process's lock, then the store's lock
        shared with other controller replicas (an ``flock`` in a folder; an advisory
        lock on PostgreSQL); when ``shared``, take what another replica published
        meanwhile first, so versions only ever grow. (A single controller trusts only
        what it holds in memory: a file changed under it is not adopted.)"""
        with self._lock, self.files.lock("write"):
            if reload and self.shared:
                on_disk = Metadata[Timestamp].from_bytes(
                    self.files.get("metadata/timestamp.json"))
                if on_disk.signed.version > self.timestamp.signed.version:
                    self._load_published()
            yield

    def _load_root(self) -> None:
        """Publish every root version the key directory has; load the online keys."""
        self._signers = load_signers(self.key_dir)
        history = sorted((self.key_dir / "roots").glob("*.root.json"),
                         key=lambda p: int(p.name.split(".")[0]))
        for path in history:
            if not self.files.exists(f"metadata/{path.name}"):
                self.files.put(f"metadata/{path.name}", path.read_bytes())
        root_bytes = (self.key_dir / "root.json").read_bytes()
        self.root = Metadata[Root].from_bytes(root_bytes)
        current = f"metadata/{self.root.signed.version}.root.json"
        if not self.files.exists(current):
            self.files.put(current, root_bytes)

    def _signed_by_current_keys(self) -> bool:
        root = self.root
        try:
            root.verify_delegate("targets", self.targets)
            root.verify_delegate("snapshot", self.snapshot)
            root.verify_delegate("timestamp", self.timestamp)
        except Exception:
            return False
        return True

    def _exp(self, seconds: float) -> datetime:
        return _expires(self.clock, seconds)

    @property
    def root_json(self) -> bytes:
        """The current root metadata, for provisioning devices."""
        return self.files.get(f"metadata/{self.root.signed.version}.root.json")

    def _command_signatures(self, message: bytes) -> list[dict[str, Any]]:
        with self._lock:
            signers = list(self._signers["command"])
        return [{"keyid": g.keyid, "sig": g.signature} for g in (s.sign(message) for s in signers)]

    def sign_command(self, payload: bytes) -> bytes:
        """Wrap a command or desired-state payload in a ``Signed`` envelope."""
        return Signed(payload=base64.b64encode(payload).decode(),
                      signatures=self._command_signatures(payload)).encode()

    def sign_commands(self, payloads: list[bytes]) -> list[bytes]:
        """``sign_command`` for many payloads with one signature per key: batch-signed
        envelopes (``contract.signed``), for devices that take them."""
        if len(payloads) < 2:
            return [self.sign_command(p) for p in payloads]
        message, paths = batch_leaves(payloads)
        sigs = self._command_signatures(message)
        return [Signed(payload=base64.b64encode(p).decode(), signatures=sigs, batch_index=i,
                       batch_path=path).encode()
                for i, (p, path) in enumerate(zip(payloads, paths, strict=True))]

    def add_targets(self, files: dict[str, bytes],
                    custom: dict[str, dict[str, Any]] | None = None) -> dict[str, TargetFile]:
        """Store files as targets and publish new targets/snapshot/timestamp metadata.

        Args:
            files: target path → content.
            custom: target path → data signed with the file's hash (TUF ``custom``).

        Returns:
            The signed ``TargetFile`` entries, by path.
        """
        custom = custom or {}
        with self._writing():
            added = {}
            for path, data in files.items():
                if path.startswith("/") or ".." in path.split("/"):
                    raise ValueError(f"bad target path {path!r}")
                info = TargetFile.from_data(path, data, ["sha256"])
                if path in custom:
                    info.unrecognized_fields["custom"] = custom[path]
                digest = info.hashes["sha256"]
                dirname, _, base = path.rpartition("/")
                self.files.put(_target_file(dirname, f"{digest}.{base}"), data)
                self.targets.signed.targets[path] = info
                added[path] = info
            self._publish(targets_changed=True)
            return added

    def refresh(self, *, min_remaining_fraction: float = 0.5) -> bool:
        """Pick up a rotated root; re-sign metadata when less than a fraction of its life
        remains.

        Returns whether anything was re-signed.
        """
        with self._writing():
            on_disk = Metadata[Root].from_bytes((self.key_dir / "root.json").read_bytes())
            if on_disk.signed.version > self.root.signed.version:
                self._load_root()
                self._publish(targets_changed=True)
                return True
            now = self.clock.time()
            ts_left = self.timestamp.signed.expires.timestamp() - now
            snap_left = self.snapshot.signed.expires.timestamp() - now
            tgt_left = self.targets.signed.expires.timestamp() - now
            if tgt_left < self.expiry.targets_s * min_remaining_fraction:
                self._publish(targets_changed=True)
                return True
            if snap_left < self.expiry.snapshot_s * min_remaining_fraction:
                self._publish(targets_changed=False)
                return True
            if ts_left < self.expiry.timestamp_s * min_remaining_fraction:
                self._publish_timestamp()
                return True
            return False

    def _sign(self, md: Metadata[Any], role: str) -> None:
        md.signatures.clear()
        for signer in self._signers[role]:
            md.sign(signer, append=True)

    def _publish(self, *, targets_changed: bool, bump: bool = True) -> None:
        if targets_changed:
            self.targets.signed.version += int(bump)
            self.targets.signed.expires = self._exp(self.expiry.targets_s)
            self._sign(self.targets, "targets")
            data = self.targets.to_bytes(_SERIALIZER)
            self.files.put(f"metadata/{self.targets.signed.version}.targets.json", data)
        tdata = self.files.get(f"metadata/{self.targets.signed.version}.targets.json")
        self.snapshot.signed.version += int(bump)
        self.snapshot.signed.expires = self._exp(self.expiry.snapshot_s)
        self.snapshot.signed.meta["targets.json"] = MetaFile(
            version=self.targets.signed.version, length=len(tdata),
            hashes={"sha256": hashlib.sha256(tdata).hexdigest()})
        self._sign(self.snapshot, "snapshot")
        self.files.put(f"metadata/{self.snapshot.signed.version}.snapshot.json",
                       self.snapshot.to_bytes(_SERIALIZER))
        self._publish_timestamp(bump=bump)

    def _publish_timestamp(self, bump: bool = True) -> None:
        sdata = self.files.get(f"metadata/{self.snapshot.signed.version}.snapshot.json")
        self.timestamp.signed.version += int(bump)
        self.timestamp.signed.expires = self._exp(self.expiry.timestamp_s)
        self.timestamp.signed.snapshot_meta = MetaFile(
            version=self.snapshot.signed.version, length=len(sdata),
            hashes={"sha256": hashlib.sha256(sdata).hexdigest()})
        self._sign(self.timestamp, "timestamp")
        self.files.put("metadata/timestamp.json", self.timestamp.to_bytes(_SERIALIZER))

    def bundle_files(self, manifest_path: str) -> list[tuple[str, str, int]]:
        """``(sha256, repository file, length)`` of a signed bundle's files: its manifest,
        model and data files, as devices fetch them (``targets/…/{sha256}.{name}``).

        Raises:
            NotFoundError: the manifest is not a signed target.
        """
        targets = self.targets.signed.targets
        if manifest_path not in targets:
            raise NotFoundError(f"no signed bundle {manifest_path}")

        def entry(path: str) -> tuple[str, str, int]:
            info = targets[path]
            sha = info.hashes["sha256"]
            folder, _, base = path.rpartition("/")
            return sha, _target_file(folder, f"{sha}.{base}"), info.length

        first = entry(manifest_path)
        manifest = Manifest.decode(self.files.get(first[1]))
        paths = [model_target(manifest_path, manifest.model_file),
                 *(model_target(manifest_path, f.name) for f in manifest.files)]
        return [first, *(entry(p) for p in paths if p in targets)]

    def metadata_files(self) -> list[tuple[str, str, int]]:
        """``(sha256, repository file, length)`` of the published timestamp, snapshot and
        targets metadata a device asks for after its root: the timestamp as it is now
        (its name is reused, the sha256 pins this copy), the others by their versioned
        names (immutable: consistent snapshots), as the timestamp and snapshot list them."""
        with self._lock:
            stamp = self.files.get("metadata/timestamp.json")
            snap = self.timestamp.signed.snapshot_meta
            tgt = self.snapshot.signed.meta["targets.json"]
        return [(hashlib.sha256(stamp).hexdigest(), "metadata/timestamp.json", len(stamp)),
                *((str((m.hashes or {}).get("sha256", "")), f"metadata/{m.version}.{role}.json",
                   int(m.length or 0)) for m, role in ((snap, "snapshot"), (tgt, "targets")))]

    @property
    def root_version(self) -> int:
        """The newest published root version."""
        return int(self.root.signed.version)

    def read(self, file: str, offset: int, count: int) -> tuple[bytes, int]:
        """Serve ``count`` bytes of a repository file at ``offset``.

        Args:
            file: ``metadata/<name>`` or ``targets/<path>`` as devices ask for it.

        Returns:
            ``(data, total_length)``.

        Raises:
            NotFoundError: no such file (devices probe for newer root versions).
            ValueError: a path that leaves the repository.
        """
        parts = file.split("/")
        if parts[0] not in ("metadata", "targets") or ".." in parts or file.startswith("/"):
            raise ValueError(f"bad repository path {file!r}")
        try:  # (a doubled "/" is how some clients join an empty folder)
            return self.files.read("/".join(p for p in parts if p), offset, count)
        except (NotFoundError, ValueError) as exc:  # ValueError: e.g. "targets/" alone
            raise NotFoundError(f"no repository file {file}") from exc
