"""Messages exchanged over MQTT (JSON, UTF-8), with strict decoding.

Each message is a frozen dataclass. ``encode()`` gives the payload bytes;
``Cls.decode(payload)`` validates field presence and types and raises
``MessageError`` with a precise reason for anything else, so a malformed payload is
logged and dropped rather than crashing a reader. Unknown fields are ignored
(forward compatibility); missing optional fields take their defaults.

Chunk responses carry binary data and use a small framing instead of JSON:
``4-byte big-endian header length | JSON header | raw bytes``.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import re
import struct
import typing
from typing import Any, ClassVar, TypeVar

from . import _json
from ._fields import _INT32, _INT64, from_dict
from .errors import MessageError
from .topics import valid_sha256

__all__ = [
    "Ack",
    "Birth",
    "ChunkResponse",
    "Command",
    "Death",
    "DesiredState",
    "FetchRequest",
    "JobState",
    "JobStatus",
    "Message",
    "ModelRef",
    "Summary",
    "MAX_CHUNK_BYTES",
]

MAX_CHUNK_BYTES = 128 * 1024
MAX_BROADCAST_FILES = 64  # files of one bundle a desired state may name as broadcast
MAX_BROADCAST_METADATA = 8  # versioned metadata files a desired state may name
MAX_STATUS_INTERVAL_S = 3600.0  # the longest pacing of step statuses a controller may ask
# versioned TUF metadata, or the timestamp (its name is reused; the sha256 pins a copy)
_BROADCAST_METADATA = re.compile(
    r"metadata/(?:[1-9][0-9]{0,9}\.[a-z][a-z0-9_-]{0,63}|timestamp)\.json")
_MAX_PAYLOAD = 4 * 1024 * 1024
_BIRTH_DICT_BYTES = 4096

T = TypeVar("T", bound="Message")


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` for message fields (dataclasses, lists, tuples, dicts of
    JSON values), without its deep copy of every leaf."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


class Message:
    """Mixin giving dataclass messages JSON ``encode``/``decode``."""

    kind: ClassVar[str] = "message"

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = _plain(self)  # a message is a dataclass: an object
        return plain

    def encode(self) -> bytes:
        return self.encode_plain(self.to_dict())

    @staticmethod
    def encode_plain(plain: dict[str, Any]) -> bytes:
        """The bytes ``encode`` gives for a message whose ``to_dict`` is ``plain`` (a
        caller that needs both makes the dict once)."""
        return json.dumps(plain, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls: type[T], payload: bytes | str) -> T:
        """Parse and validate a payload.

        Raises:
            MessageError: not JSON, not an object, too large, or a field is missing
                or of the wrong type.
        """
        if len(payload) > _MAX_PAYLOAD:
            raise MessageError(f"{cls.kind}: payload of {len(payload)} bytes is too large")
        try:
            data = _json.loads(payload)
        except ValueError as exc:  # (JSONDecodeError, UnicodeDecodeError: ValueErrors)
            raise MessageError(f"{cls.kind}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise MessageError(f"{cls.kind}: expected a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:
        """Validate an already parsed JSON object.

        Raises:
            MessageError: not an object, or a field is missing or of the wrong type.
        """
        if not isinstance(data, dict):
            raise MessageError(f"{cls.kind}: expected a JSON object")
        return typing.cast(T, from_dict(cls, data, cls.kind))


@dataclasses.dataclass(frozen=True)
class ModelRef(Message):
    """A model version as installed on a device."""

    kind: ClassVar[str] = "model_ref"
    name: str
    version: int
    sha256: str = ""


@dataclasses.dataclass(frozen=True)
class Birth(Message):
    """Published by an agent on every (re)connect."""

    kind: ClassVar[str] = "birth"
    bd_seq: int
    agent_version: str
    ts: float
    hw: dict[str, Any] = dataclasses.field(default_factory=dict)
    runtimes: list[str] = dataclasses.field(default_factory=list)
    active: ModelRef | None = None
    last_good: ModelRef | None = None
    api_url: str = ""
    # {"state": "ok"|"expired"|"untrusted"|"unknown", "reason", "checked_at"}: whether the
    # device can install anything new (it keeps serving its model either way)
    trust: dict[str, Any] = dataclasses.field(default_factory=dict)
    # message forms this agent takes beyond the first ones ("batch-signed": see
    # ``signed``); the controller sends the first forms to a device that lists none
    features: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        # a birth is stored and listed: what a device says of itself stays small
        if len(self.agent_version) > 64 or len(self.api_url) > 256:
            raise ValueError("agent_version: at most 64 characters, api_url 256")
        for name, items in (("runtimes", self.runtimes), ("features", self.features)):
            if len(items) > 32 or any(len(r) > 64 for r in items):
                raise ValueError(f"{name}: at most 32, each at most 64 characters")
        for name, value in (("hw", self.hw), ("trust", self.trust)):
            if len(json.dumps(value, default=str)) > _BIRTH_DICT_BYTES:
                raise ValueError(f"{name}: at most {_BIRTH_DICT_BYTES} bytes as JSON")


@dataclasses.dataclass(frozen=True)
class Death(Message):
    """The agent's will: the broker publishes it when the connection drops."""

    kind: ClassVar[str] = "death"
    bd_seq: int


@dataclasses.dataclass(frozen=True)
class DesiredState(Message):
    """What a device should run; retained so a device that was away catches up."""

    kind: ClassVar[str] = "desired"
    deployment: str
    job: str
    model: str
    version: int
    manifest: str
    issued_at: float
    # "active": install and serve; "shadow": install beside the active model, run it on
    # a sample of live inputs, never serve it.
    mode: str = "active"
    # A controller-ordered rollback may go to an older version (normally refused).
    allow_downgrade: bool = False
    # On-device health window after activation (see agent.health.HealthPolicy).
    health: dict[str, Any] = dataclasses.field(default_factory=dict)
    shadow_sample: float = 0.0
    # the device this is for: bound into the signature, so it cannot be replayed to another
    device: str = ""
    # sha256 of the bundle's files the controller broadcasts on their blob topics: the
    # device may take their blocks from there (TUF still verifies every file it uses)
    broadcast: list[str] = dataclasses.field(default_factory=list)
    # TUF metadata broadcast with them ("metadata/7.snapshot.json" -> its sha256): a
    # device takes a file of that name and content from the broadcast instead of asking
    # for it; python-tuf verifies it as any other copy (the timestamp, whose name is
    # reused, is the one current when this was issued)
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    # the newest root version when this was issued: the device does not ask for a root
    # above it (0: it asks, as python-tuf does on every refresh)
    root_version: int = 0
    # the controller reads a birth carried in a job status (``JobStatus.birth``): the
    # device says what it runs after the switch in the job's statuses instead of in a
    # birth of its own (False, as older controllers send it: a birth of its own)
    births_in_status: bool = False
    # the least time between the job's step statuses the controller asks for, so that a
    # big wave's progress reports stay within what it wants to read (0: the device's own
    # ``status_interval_s``; a device keeps its own when that is longer)
    status_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("active", "shadow"):
            raise ValueError(f"unknown mode {self.mode!r}")
        if not 0.0 <= self.shadow_sample <= 1.0:
            raise ValueError("shadow_sample must be within 0..1")
        if len(self.broadcast) > MAX_BROADCAST_FILES or not all(
                map(valid_sha256, self.broadcast)):
            raise ValueError(f"broadcast lists at most {MAX_BROADCAST_FILES} sha256 "
                             "(64 lowercase hex digits)")
        if len(self.metadata) > MAX_BROADCAST_METADATA or not all(
                _BROADCAST_METADATA.fullmatch(k) and valid_sha256(v)
                for k, v in self.metadata.items()):
            raise ValueError(f"metadata maps at most {MAX_BROADCAST_METADATA} metadata files "
                             "(metadata/<N>.<role>.json or metadata/timestamp.json) to "
                             "their sha256")
        if not 0 <= self.root_version <= _INT32:
            raise ValueError(f"root_version must be within 0..{_INT32}")
        if not 0.0 <= self.status_interval_s <= MAX_STATUS_INTERVAL_S:
            raise ValueError(f"status_interval_s must be within 0..{MAX_STATUS_INTERVAL_S:g} "
                             f"seconds, got {self.status_interval_s!r}")


@dataclasses.dataclass(frozen=True)
class Command(Message):
    """A controller → device instruction with an id and an expiry."""

    kind: ClassVar[str] = "cmd"
    id: str
    action: str
    issued_at: float
    expires_at: float
    desired: DesiredState | None = None
    device: str = ""  # the device it is for (signed with it)

    def __post_init__(self) -> None:
        if self.action not in ("deploy", "rollback", "rebirth", "cancel"):
            raise ValueError(f"unknown action {self.action!r}")


@dataclasses.dataclass(frozen=True)
class FetchRequest(Message):
    """Ask for ``count`` bytes of ``file`` (a TUF metadata or target path) at ``offset``."""

    kind: ClassVar[str] = "fetch_req"
    req: str
    file: str
    offset: int
    count: int

    def __post_init__(self) -> None:
        if self.offset < 0 or not 0 < self.count <= MAX_CHUNK_BYTES:
            raise ValueError(f"offset/count out of range ({self.offset}, {self.count})")
        if not self.file or ".." in self.file.split("/") or self.file.startswith("/"):
            raise ValueError(f"bad file path {self.file!r}")


@dataclasses.dataclass(frozen=True)
class ChunkResponse:
    """One block of a file, or a status when there is none (``not_found``/``error``)."""

    req: str
    file: str
    offset: int
    total: int
    status: str = "ok"
    data: bytes = b""

    def encode(self) -> bytes:
        header = json.dumps(
            {"req": self.req, "file": self.file, "offset": self.offset,
             "total": self.total, "status": self.status},
            separators=(",", ":"),
        ).encode()
        return struct.pack(">I", len(header)) + header + self.data

    @classmethod
    def decode(cls, payload: bytes) -> ChunkResponse:
        """Raises: MessageError for a payload that is not a well-formed chunk frame."""
        if len(payload) < 4:
            raise MessageError("chunk: frame too short")
        (hlen,) = struct.unpack(">I", payload[:4])
        if hlen > 4096 or 4 + hlen > len(payload):
            raise MessageError("chunk: bad header length")
        try:
            head = json.loads(payload[4 : 4 + hlen])
            data = payload[4 + hlen :]
            if len(data) > MAX_CHUNK_BYTES:
                raise MessageError(f"chunk: {len(data)} bytes exceeds {MAX_CHUNK_BYTES}")
            return cls(
                req=str(head["req"]), file=str(head["file"]), offset=int(head["offset"]),
                total=int(head["total"]), status=str(head["status"]), data=data,
            )
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise MessageError(f"chunk: bad header ({exc})") from exc


class JobState(enum.StrEnum):
    """The steps a device reports while it applies a desired state (each is its string on
    the wire)."""

    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    ACTIVATED = "activated"  # switched; watching the health window
    HEALTHY = "healthy"  # the health window passed
    FAILED = "failed"  # never switched (download, trust, smoke test…)
    ROLLED_BACK = "rolled_back"  # switched, then went back to the last known good model
    SHADOWING = "shadowing"  # installed beside the active model, running on samples

    TERMINAL = enum.nonmember(frozenset({"healthy", "failed", "rolled_back"}))
    ALL = enum.nonmember(frozenset({"downloading", "verifying", "installing", "activated",
                                    "healthy", "failed", "rolled_back", "shadowing"}))


@dataclasses.dataclass(frozen=True)
class JobStatus(Message):
    kind: ClassVar[str] = "job_status"
    job: str
    deployment: str
    state: str
    ts: float
    model: str = ""
    version: int = 0
    reason: str = ""
    detail: str = ""
    progress: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the device's birth as it stands when this is sent (its models after the switch,
    # its trust), when the desired state asked for it (``births_in_status``); a
    # controller takes it only if it is of the device's current session
    birth: Birth | None = None

    def __post_init__(self) -> None:
        if self.state not in JobState.ALL:
            raise ValueError(f"unknown job state {self.state!r}")


@dataclasses.dataclass(frozen=True)
class Summary(Message):
    """One telemetry window, numbered per device; kept on the device until acked."""

    kind: ClassVar[str] = "summary"
    seq: int
    window_start: float
    window_end: float
    count: int
    errors: int
    model: str = ""
    version: int = 0
    latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    predictions: dict[str, int] = dataclasses.field(default_factory=dict)
    system: dict[str, float] = dataclasses.field(default_factory=dict)
    historical: bool = False
    # shadow runs in this window: {model, version, samples, agree, distance_sum,
    # candidate_ms_sum, active_ms_sum, dropped}
    shadow: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the buffer this summary comes from (random, made with the buffer): (device, stream,
    # seq) is unique even when a re-provisioned device starts counting from 1 again
    stream: str = ""
    # latency as a mergeable sketch (contract.sketch.DDSketch.to_dict)
    latency_sketch: dict[str, Any] = dataclasses.field(default_factory=dict)
    errors_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    # agent.drift.DriftWindow.inputs(): {samples, mean, std, out_of_range, non_finite}
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # agent.drift.DriftWindow.scores(): {samples, psi_max, psi_mean, top, psi_predictions}
    drift: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the device's buffer when the window closed: {bytes, cap_bytes, evicted_raw,
    # evicted_summaries, dropped}; when sent, also evicted_through_seq: no unsent summary
    # at or below it is left, so a gap before it is lost for good (counted as evicted)
    buffer: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seq < 1 or self.count < 0 or self.errors < 0 or self.version < 0:
            raise ValueError("seq must be ≥ 1; counts and version ≥ 0")
        # what every store takes (PostgreSQL enforces these; SQLite would not)
        if self.seq > _INT64 or max(self.count, self.errors, self.version) > _INT32:
            raise ValueError("seq must fit 64 bits; count, errors and version 32 bits")
        if len(self.model) > 128 or len(self.stream) > 64 or \
                "\x00" in self.model or "\x00" in self.stream:
            raise ValueError("model: at most 128 characters, stream 64, no NUL")


@dataclasses.dataclass(frozen=True)
class Ack(Message):
    """The controller stored these summary sequence numbers."""

    kind: ClassVar[str] = "ack"
    seqs: list[int]
