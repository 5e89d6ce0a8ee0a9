"""Signing keys and the TUF repository the controller serves to devices.

``init_keys`` makes one Ed25519 key per top-level role and the version-1 ``root.json``
that devices pin. ``TrustRepository`` keeps TUF metadata (python-tuf's Metadata API)
and target files on disk with consistent snapshots: every file a device fetches is
immutable by name except ``timestamp.json``, which is small enough to arrive in one
chunk, so a bundle published during a device's download cannot mix two releases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey
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

from edgefleet.contract import Clock, NotFoundError, SystemClock
from edgefleet.contract.files import atomic_write

__all__ = ["ROLES", "TrustExpiry", "TrustRepository", "init_keys", "load_signers"]

ROLES = ("root", "targets", "snapshot", "timestamp")
_SERIALIZER = JSONSerializer(compact=False)


@dataclasses.dataclass(frozen=True)
class TrustExpiry:
    """How long each role's metadata stays valid, in seconds."""

    root_s: float = 365 * 86400
    targets_s: float = 90 * 86400
    snapshot_s: float = 7 * 86400
    timestamp_s: float = 86400


def init_keys(key_dir: Path, *, expiry: TrustExpiry | None = None, clock: Clock | None = None,
              force: bool = False) -> Path:
    """Create one Ed25519 key per role and the signed trust root devices pin.

    Returns the path of ``root.json``.

    Raises:
        FileExistsError: keys already exist and ``force`` is false.
    """
    expiry = expiry or TrustExpiry()
    clock = clock or SystemClock()
    key_dir.mkdir(parents=True, exist_ok=True)
    if (key_dir / "root.json").exists() and not force:
        raise FileExistsError(f"{key_dir} already holds keys (--force replaces them)")
    signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
    public = {}
    for role, signer in signers.items():
        atomic_write(key_dir / f"{role}.pem", signer.private_bytes, mode=0o600)
        public[role] = signer.public_key.to_dict() | {"keyid": signer.public_key.keyid}
    atomic_write(key_dir / "public.json", json.dumps(public, indent=2).encode())
    root = Metadata(Root(expires=_expires(clock, expiry.root_s), consistent_snapshot=True))
    for role, signer in signers.items():
        root.signed.add_key(signer.public_key, role)
    root.sign(signers["root"])
    atomic_write(key_dir / "root.json", root.to_bytes(_SERIALIZER))
    return key_dir / "root.json"


def load_signers(key_dir: Path) -> dict[str, CryptoSigner]:
    """Load the role signers written by ``init_keys``.

    Raises:
        FileNotFoundError: a key file is missing (run ``edgefleet keys init``).
    """
    public = json.loads((key_dir / "public.json").read_text())
    signers = {}
    for role in ROLES:
        info = dict(public[role])
        keyid = info.pop("keyid")
        pub = SSlibKey.from_dict(keyid, info)
        priv = load_pem_private_key((key_dir / f"{role}.pem").read_bytes(), None)
        signers[role] = CryptoSigner(priv, pub)  # type: ignore[arg-type]
    return signers


def _expires(clock: Clock, seconds: float) -> datetime:
    return datetime.fromtimestamp(int(clock.time() + seconds), UTC)


class TrustRepository:
    """TUF metadata and targets on disk, signed with the controller's keys.

    Layout under ``repo_dir``: ``metadata/`` (``N.root.json``, ``N.targets.json``,
    ``N.snapshot.json``, ``timestamp.json``) and ``targets/`` (``{sha256}.{name}``).

    Args:
        repo_dir: where metadata and targets live.
        key_dir: the directory made by ``init_keys``.
        expiry: validity of each role's metadata.
        clock: time source for expiry.
    """

    def __init__(self, repo_dir: Path, key_dir: Path, *, expiry: TrustExpiry | None = None,
                 clock: Clock | None = None) -> None:
        self.repo_dir = repo_dir
        self.metadata_dir = repo_dir / "metadata"
        self.targets_dir = repo_dir / "targets"
        self.expiry = expiry or TrustExpiry()
        self.clock = clock or SystemClock()
        self._signers = load_signers(key_dir)
        self._lock = threading.RLock()
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        root_bytes = (key_dir / "root.json").read_bytes()
        self.root = Metadata[Root].from_bytes(root_bytes)
        root_path = self.metadata_dir / f"{self.root.signed.version}.root.json"
        if not root_path.exists():
            atomic_write(root_path, root_bytes)
        if (self.metadata_dir / "timestamp.json").exists():
            ts = Metadata[Timestamp].from_bytes((self.metadata_dir / "timestamp.json").read_bytes())
            snap_ver = ts.signed.snapshot_meta.version
            self.snapshot = Metadata[Snapshot].from_bytes(
                (self.metadata_dir / f"{snap_ver}.snapshot.json").read_bytes())
            tgt_ver = self.snapshot.signed.meta["targets.json"].version
            self.targets = Metadata[Targets].from_bytes(
                (self.metadata_dir / f"{tgt_ver}.targets.json").read_bytes())
            self.timestamp = ts
        else:
            self.targets = Metadata(Targets(expires=self._exp(self.expiry.targets_s)))
            self.snapshot = Metadata(Snapshot(expires=self._exp(self.expiry.snapshot_s)))
            self.timestamp = Metadata(Timestamp(expires=self._exp(self.expiry.timestamp_s)))
            self._publish(targets_changed=True, bump=False)

    def _exp(self, seconds: float) -> datetime:
        return _expires(self.clock, seconds)

    @property
    def root_json(self) -> bytes:
        """The current root metadata, for provisioning devices."""
        return (self.metadata_dir / f"{self.root.signed.version}.root.json").read_bytes()

    def add_targets(self, files: dict[str, bytes]) -> dict[str, TargetFile]:
        """Store files as targets and publish new targets/snapshot/timestamp metadata.

        Args:
            files: target path → content.

        Returns:
            The signed ``TargetFile`` entries, by path.
        """
        with self._lock:
            added = {}
            for path, data in files.items():
                if path.startswith("/") or ".." in path.split("/"):
                    raise ValueError(f"bad target path {path!r}")
                info = TargetFile.from_data(path, data, ["sha256"])
                digest = info.hashes["sha256"]
                dirname, _, base = path.rpartition("/")
                dest = self.targets_dir / dirname / f"{digest}.{base}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(dest, data)
                self.targets.signed.targets[path] = info
                added[path] = info
            self._publish(targets_changed=True)
            return added

    def refresh(self, *, min_remaining_fraction: float = 0.5) -> bool:
        """Re-sign snapshot and timestamp when less than a fraction of their life remains.

        Returns whether anything was re-signed.
        """
        with self._lock:
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

    def _publish(self, *, targets_changed: bool, bump: bool = True) -> None:
        if targets_changed:
            self.targets.signed.version += int(bump)
            self.targets.signed.expires = self._exp(self.expiry.targets_s)
            self.targets.signatures.clear()
            self.targets.sign(self._signers["targets"])
            data = self.targets.to_bytes(_SERIALIZER)
            atomic_write(self.metadata_dir / f"{self.targets.signed.version}.targets.json", data)
        tdata = (self.metadata_dir / f"{self.targets.signed.version}.targets.json").read_bytes()
        self.snapshot.signed.version += int(bump)
        self.snapshot.signed.expires = self._exp(self.expiry.snapshot_s)
        self.snapshot.signed.meta["targets.json"] = MetaFile(
            version=self.targets.signed.version, length=len(tdata),
            hashes={"sha256": hashlib.sha256(tdata).hexdigest()})
        self.snapshot.signatures.clear()
        self.snapshot.sign(self._signers["snapshot"])
        atomic_write(self.metadata_dir / f"{self.snapshot.signed.version}.snapshot.json",
                     self.snapshot.to_bytes(_SERIALIZER))
        self._publish_timestamp(bump=bump)

    def _publish_timestamp(self, bump: bool = True) -> None:
        sdata = (self.metadata_dir / f"{self.snapshot.signed.version}.snapshot.json").read_bytes()
        self.timestamp.signed.version += int(bump)
        self.timestamp.signed.expires = self._exp(self.expiry.timestamp_s)
        self.timestamp.signed.snapshot_meta = MetaFile(
            version=self.snapshot.signed.version, length=len(sdata),
            hashes={"sha256": hashlib.sha256(sdata).hexdigest()})
        self.timestamp.signatures.clear()
        self.timestamp.sign(self._signers["timestamp"])
        atomic_write(self.metadata_dir / "timestamp.json", self.timestamp.to_bytes(_SERIALIZER))

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
        path = self.repo_dir / file
        try:
            with open(path, "rb") as fh:
                total = os.fstat(fh.fileno()).st_size
                fh.seek(offset)
                return fh.read(count), total
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFoundError(f"no repository file {file}") from exc
