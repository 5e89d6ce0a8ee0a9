"""Signing keys for the fleet's trust root: creation, loading and rotation.

A key directory looks like this::

    keys/
      root.json                 the current root metadata: what devices pin
      roots/N.root.json         every root version, for devices that walk the chain
      online/<role>-<id>.pem    targets, snapshot, timestamp and command keys (0600)
      offline/root-<id>.pem     root keys (0600): move them off the controller

The controller reads ``root.json``, ``roots/`` and ``online/`` only; the root keys are
needed only to sign a new root (``rotate``), so they can live on a removable disk or an
air-gapped machine. ``root.json`` lists, besides TUF's four roles, the keys that sign
control commands (``x-edgefleet-command-keys``), so rotating those goes through the
root keys too.

A new root version is signed by a threshold of the old root keys *and* of the new
ones, which is what lets a device that trusts version N verify N+1 (TUF 5.3.4).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key, SSlibKey
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from edgefleet.contract import COMMAND_KEYS_FIELD, Clock, SystemClock
from edgefleet.contract.files import atomic_write

__all__ = ["KeyPolicy", "ONLINE_ROLES", "RoleSigners", "command_keys", "init_keys",
           "load_signers", "rotate_keys"]

ONLINE_ROLES = ("targets", "snapshot", "timestamp", "command")
_ALL_ROLES = ("root", *ONLINE_ROLES)
_SERIALIZER = JSONSerializer(compact=False)


@dataclasses.dataclass(frozen=True)
class KeyPolicy:
    """How many keys each role has and how many of them must sign."""

    root_keys: int = 1
    root_threshold: int = 1
    targets_keys: int = 1
    targets_threshold: int = 1

    def __post_init__(self) -> None:
        for role in ("root", "targets"):
            n, t = getattr(self, f"{role}_keys"), getattr(self, f"{role}_threshold")
            if not 1 <= t <= n:
                raise ValueError(f"{role}: threshold {t} must be between 1 and {n} keys")

    def count(self, role: str) -> int:
        return {"root": self.root_keys, "targets": self.targets_keys}.get(role, 1)

    def threshold(self, role: str) -> int:
        return {"root": self.root_threshold, "targets": self.targets_threshold}.get(role, 1)


@dataclasses.dataclass
class RoleSigners:
    """The private keys the controller holds, by role, for the current root."""

    root_version: int
    signers: dict[str, list[CryptoSigner]]

    def __getitem__(self, role: str) -> list[CryptoSigner]:
        return self.signers[role]


def _expires(clock: Clock, seconds: float) -> datetime:
    return datetime.fromtimestamp(int(clock.time() + seconds), UTC)


def _key_file(directory: Path, role: str, key: Key) -> Path:
    return directory / f"{role}-{key.keyid[:16]}.pem"


def _new_key(directory: Path, role: str) -> CryptoSigner:
    signer = CryptoSigner.generate_ed25519()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(_key_file(directory, role, signer.public_key), signer.private_bytes, mode=0o600)
    return signer


def _load_signer(directory: Path, role: str, key: Key) -> CryptoSigner | None:
    path = _key_file(directory, role, key)
    if not path.exists():
        return None
    private = load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, SSlibKey)
    return CryptoSigner(private, key)  # type: ignore[arg-type]


def command_keys(root: Root) -> tuple[dict[str, Key], int]:
    """The command-signing keys a root names, and their threshold."""
    field = root.unrecognized_fields.get(COMMAND_KEYS_FIELD) or {}
    keys: dict[str, Key] = {kid: SSlibKey.from_dict(kid, dict(k))
                            for kid, k in field.get("keys", {}).items()}
    return keys, int(field.get("threshold", 1))


def _set_command_keys(root: Root, keys: Iterable[Key], threshold: int = 1) -> None:
    root.unrecognized_fields[COMMAND_KEYS_FIELD] = {
        "keys": {k.keyid: k.to_dict() for k in keys}, "threshold": threshold}


def _write_root(key_dir: Path, root: Metadata[Root]) -> Path:
    data = root.to_bytes(_SERIALIZER)
    (key_dir / "roots").mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(key_dir / "roots" / f"{root.signed.version}.root.json", data)
    atomic_write(key_dir / "root.json", data)
    return key_dir / "root.json"


def init_keys(key_dir: Path, *, policy: KeyPolicy | None = None, root_expiry_s: float = 365 * 86400,
              clock: Clock | None = None, force: bool = False) -> Path:
    """Create the fleet's keys and the version-1 ``root.json`` devices pin.

    Returns the path of ``root.json``.

    Raises:
        FileExistsError: keys already exist and ``force`` is false.
    """
    policy = policy or KeyPolicy()
    clock = clock or SystemClock()
    if (key_dir / "root.json").exists() and not force:
        raise FileExistsError(f"{key_dir} already holds keys (--force replaces them)")
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for sub in ("online", "offline", "roots"):
        for old in (key_dir / sub).glob("*") if (key_dir / sub).is_dir() else ():
            old.unlink()
    root = Metadata(Root(expires=_expires(clock, root_expiry_s), consistent_snapshot=True))
    root_signers = []
    for role in _ALL_ROLES:
        directory = key_dir / ("offline" if role == "root" else "online")
        made = [_new_key(directory, role) for _ in range(policy.count(role))]
        if role == "command":
            _set_command_keys(root.signed, [s.public_key for s in made])
            continue
        for signer in made:
            root.signed.add_key(signer.public_key, role)
        root.signed.roles[role].threshold = policy.threshold(role)
        if role == "root":
            root_signers = made
    for signer in root_signers:
        root.sign(signer, append=True)
    return _write_root(key_dir, root)


def load_signers(key_dir: Path) -> RoleSigners:
    """Load the online keys of the current root.

    Raises:
        FileNotFoundError: no ``root.json`` (run ``edgefleet keys init``).
        ValueError: fewer keys on disk for a role than its threshold.
    """
    root = Metadata[Root].from_bytes((key_dir / "root.json").read_bytes()).signed
    online = key_dir / "online"
    signers: dict[str, list[CryptoSigner]] = {}
    for role in ONLINE_ROLES:
        if role == "command":
            keys, threshold = command_keys(root)
            wanted = list(keys.values())
        else:
            wanted = [root.keys[kid] for kid in root.roles[role].keyids]
            threshold = root.roles[role].threshold
        held = [s for s in (_load_signer(online, role, k) for k in wanted) if s is not None]
        if len(held) < threshold:
            raise ValueError(f"{key_dir}: {len(held)} {role} key(s) on disk, the root needs "
                             f"{threshold} to sign")
        signers[role] = held
    return RoleSigners(root.version, signers)


def rotate_keys(key_dir: Path, *, roles: Iterable[str], offline_dir: Path | None = None,
                policy: KeyPolicy | None = None, root_expiry_s: float = 365 * 86400,
                clock: Clock | None = None) -> dict[str, Any]:
    """Replace the keys of ``roles`` and sign root version N+1 with old and new root keys.

    Replaced online keys are deleted (a rotation usually follows a suspected
    compromise). A running controller picks the new root up on its next trust refresh
    and re-signs everything with the new keys; devices follow the root chain on their
    next update. Rotating nothing (``roles=[]``) re-signs the root with a fresh expiry.

    Args:
        roles: any of ``root``, ``targets``, ``snapshot``, ``timestamp``, ``command``.
        offline_dir: where the current root keys are (default ``key_dir/offline``).
        policy: key counts/thresholds for the rotated roles (default: keep them).

    Returns:
        ``{"version": N+1, "rotated": [...], "expires": iso}``.

    Raises:
        ValueError: unknown role, or too few current root keys to reach the threshold.
    """
    roles = list(dict.fromkeys(roles))
    unknown = set(roles) - set(_ALL_ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; choose from {_ALL_ROLES}")
    clock = clock or SystemClock()
    offline_dir = offline_dir or key_dir / "offline"
    old = Metadata[Root].from_bytes((key_dir / "root.json").read_bytes())
    old_root_keys = [old.signed.keys[kid] for kid in old.signed.roles["root"].keyids]
    old_signers = [s for s in (_load_signer(offline_dir, "root", k) for k in old_root_keys)
                   if s is not None]
    if len(old_signers) < old.signed.roles["root"].threshold:
        raise ValueError(f"{offline_dir}: {len(old_signers)} current root key(s) found, "
                         f"{old.signed.roles['root'].threshold} needed to sign a new root")
    new = Metadata[Root].from_bytes(old.to_bytes())
    new.signatures.clear()
    new.signed.version += 1
    new.signed.expires = _expires(clock, root_expiry_s)
    root_signers = old_signers
    retired: list[Path] = []
    for role in roles:
        count = policy.count(role) if policy else None
        directory = offline_dir if role == "root" else key_dir / "online"
        if role == "command":
            keys, _ = command_keys(old.signed)
            retired += [_key_file(directory, role, k) for k in keys.values()]
            made = [_new_key(directory, role) for _ in range(count or len(keys))]
            _set_command_keys(new.signed, [s.public_key for s in made])
            continue
        current = list(new.signed.roles[role].keyids)
        retired += [_key_file(directory, role, new.signed.keys[kid]) for kid in current]
        for kid in current:
            new.signed.revoke_key(kid, role)
        made = [_new_key(directory, role) for _ in range(count or len(current))]
        for signer in made:
            new.signed.add_key(signer.public_key, role)
        if policy is not None:
            new.signed.roles[role].threshold = policy.threshold(role)
        elif len(made) < new.signed.roles[role].threshold:
            raise ValueError(f"{role}: fewer keys than its threshold")
        if role == "root":
            root_signers = made
    # signed by the old root keys (so devices on N accept it) and the new ones (TUF 5.3.4)
    signed_by = {s.public_key.keyid: s for s in [*old_signers, *root_signers]}
    for signer in signed_by.values():
        new.sign(signer, append=True)
    old.verify_delegate("root", new)
    new.verify_delegate("root", new)
    path = _write_root(key_dir, new)
    for stale in retired:
        if stale.exists():
            os.remove(stale)
    return {"version": new.signed.version, "rotated": roles, "root": str(path),
            "expires": new.signed.expires.isoformat()}
