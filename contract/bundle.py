"""The bundle format: a manifest plus model file(s), addressed by sha256 and length.

A bundle for model ``name`` version ``v`` is a set of TUF targets::

    bundles/{name}/{v}/manifest.json     the Manifest below (JSON, at most MANIFEST_MAX_BYTES)
    bundles/{name}/{v}/{model_file}      the model bytes
    bundles/{name}/{v}/smoke.npz         the smoke test's samples and expected outputs
    bundles/{name}/{v}/profile.json      the drift reference profile
    bundles/{name}/{v}/labels.json       class names, when too many for the manifest

Data travels in its own files (``Manifest.files``, each with its role, sha256 and
length), never inline, so the manifest stays a few KiB whatever the eval set: a
detector's eval images would otherwise make it megabytes. The smoke file is capped at
``SMOKE_MAX_BYTES`` and sized relative to the model (see the registry).

and a per-class variant of that version (another file for other hardware) sits one
folder down, ``bundles/{name}/{v}/{variant}/``; the desired state names the manifest
each device is to fetch.

The manifest names the model file's sha256 and length; the TUF targets metadata
signs both files' hashes and lengths, so a device verifies the manifest through TUF
and the model file both through TUF and against the manifest.

Both targets also carry a ``TargetTrust`` in their signed TUF ``custom`` field (Uptane's
idea): the hardware classes the bundle is for and its release counter. A device checks
them before it downloads anything, refuses another class's bundle, and refuses a
counter lower than the highest it has installed for that model, whatever the
controller asks for.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, ClassVar

from .messages import Message
from .names import NAME

__all__ = ["MANIFEST_MAX_BYTES", "SMOKE_MAX_BYTES", "BundleFile", "Manifest", "TargetTrust",
           "TensorSpec", "bundle_paths", "manifest_path_ok", "model_target", "sha256_file"]

BUNDLE_ROOT = "bundles"
MANIFEST_MAX_BYTES = 64 * 1024  # a manifest bigger than this is refused by both ends
SMOKE_MAX_BYTES = 8 * 1024 * 1024  # the smoke test's file, whatever the model's size
# the largest file of each role a device downloads (checked before it downloads)
FILE_ROLES = {"smoke": SMOKE_MAX_BYTES, "profile": 8 * 1024 * 1024,
              "labels": 8 * 1024 * 1024}
RESERVED_NAMES = ("manifest.json", "trust.json")  # files the device's store writes itself


@dataclasses.dataclass(frozen=True)
class TensorSpec(Message):
    """One input or output tensor, KServe v2 datatype names (``FP32``, ``INT64``…)."""

    kind: ClassVar[str] = "tensor"
    name: str
    datatype: str
    shape: list[Any]


@dataclasses.dataclass(frozen=True)
class BundleFile(Message):
    """A data file of the bundle beside the model: what it is for, its hash and length."""

    kind: ClassVar[str] = "bundle_file"
    name: str  # file name beside the manifest
    role: str  # one of FILE_ROLES
    sha256: str
    length: int

    def __post_init__(self) -> None:
        NAME.check(self.name, "bundle file name")
        if self.name in RESERVED_NAMES:
            raise ValueError(f"bundle file name {self.name!r} is reserved (the store writes "
                             f"{' and '.join(RESERVED_NAMES)})")
        if self.role not in FILE_ROLES:
            raise ValueError(f"bundle file role {self.role!r}: expected one of "
                             f"{sorted(FILE_ROLES)}")
        if not 0 <= self.length <= FILE_ROLES[self.role] or len(self.sha256) != 64:
            raise ValueError(f"bundle file {self.name}: length beyond "
                             f"{FILE_ROLES[self.role]} bytes, or a bad sha256")


@dataclasses.dataclass(frozen=True)
class Manifest(Message):
    """What a device needs to know to install, check and serve a model version."""

    kind: ClassVar[str] = "manifest"
    name: str
    version: int
    runtime: str
    model_file: str
    model_sha256: str
    model_length: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] = dataclasses.field(default_factory=list)
    # {"hardware_classes": [...] (empty: any), "min_agent_version": "0.1.0"}
    compatibility: dict[str, Any] = dataclasses.field(default_factory=dict)
    # bundles signed before data moved into files carried the smoke sample and the
    # profile inline; agents still read them (and agents of that release read only these,
    # so new bundles leave them empty: such an agent installs without a smoke test)
    smoke_test: dict[str, Any] = dataclasses.field(default_factory=dict)
    reference_profile: dict[str, Any] = dataclasses.field(default_factory=dict)
    parent: int | None = None
    variant: str = "fp32"
    files: list[BundleFile] = dataclasses.field(default_factory=list)
    # how to judge the smoke file's samples: {"samples", "tolerance": {output: {"atol",
    # "rtol", "mismatch", "index"?}}, "label_output", "min_accuracy"} or {"skipped": why}
    smoke: dict[str, Any] = dataclasses.field(default_factory=dict)
    task: str = ""  # classification, detection, segmentation, sequence… ("": not said)

    def __post_init__(self) -> None:
        if self.version < 1 or self.model_length < 0:
            raise ValueError("version must be ≥ 1 and length ≥ 0")
        if "/" in self.model_file or self.model_file in ("", ".", "..", *RESERVED_NAMES):
            raise ValueError(f"bad model file name {self.model_file!r}")
        names = [f.name for f in self.files]
        roles = [f.role for f in self.files]
        if len(set(names)) != len(names) or self.model_file in names:
            raise ValueError("bundle file names must be unique and differ from the model's")
        if len(set(roles)) != len(roles):
            raise ValueError("one bundle file per role")

    def file(self, role: str) -> BundleFile | None:
        """The bundle's data file for ``role`` (None when the bundle has none)."""
        return next((f for f in self.files if f.role == role), None)


@dataclasses.dataclass(frozen=True)
class TargetTrust(Message):
    """What the targets keys sign about a bundle besides its hashes."""

    kind: ClassVar[str] = "target_trust"
    model: str
    version: int
    release_counter: int = 1
    hardware_classes: list[str] = dataclasses.field(default_factory=list)  # empty: any

    FIELD: ClassVar[str] = "edgefleet"

    def __post_init__(self) -> None:
        if self.release_counter < 0:
            raise ValueError("release_counter must be ≥ 0")

    def custom(self) -> dict[str, Any]:
        return {self.FIELD: self.to_dict()}

    @classmethod
    def from_custom(cls, custom: Any) -> TargetTrust | None:
        """Read it back from a target's ``custom`` field (None when absent).

        Raises:
            MessageError: present but malformed.
        """
        if not isinstance(custom, dict) or cls.FIELD not in custom:
            return None
        return cls.from_dict(custom[cls.FIELD])

    def allows(self, hardware_class: str) -> bool:
        return not self.hardware_classes or hardware_class in self.hardware_classes


def bundle_paths(name: str, version: int, model_file: str,
                 variant: str = "") -> tuple[str, str]:
    """The TUF target paths of a bundle's manifest and model file.

    A version's default bundle sits at ``bundles/{name}/{version}/``; a per-class
    variant of it at ``bundles/{name}/{version}/{variant}/``.
    """
    base = f"{BUNDLE_ROOT}/{name}/{version}" + (f"/{variant}" if variant else "")
    return f"{base}/manifest.json", f"{base}/{model_file}"


def model_target(manifest_path: str, model_file: str) -> str:
    """The model file's target path beside a manifest's."""
    return f"{manifest_path.rsplit('/', 1)[0]}/{model_file}"


def manifest_path_ok(manifest_path: str, name: str, version: int) -> bool:
    """Whether a manifest path names a bundle of ``name:version`` (default or variant)."""
    base = f"{BUNDLE_ROOT}/{name}/{version}/"
    rest = manifest_path[len(base):] if manifest_path.startswith(base) else ""
    parts = rest.split("/")
    return rest == "manifest.json" or (len(parts) == 2 and parts[1] == "manifest.json"
                                       and parts[0] not in ("", ".", ".."))


def sha256_file(path: str, block: int = 1 << 20) -> tuple[str, int]:
    """Return ``(hex sha256, length)`` of a file, read in blocks."""
    digest = hashlib.sha256()
    length = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
            length += len(chunk)
    return digest.hexdigest(), length
