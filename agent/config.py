"""Agent configuration: a frozen dataclass, loaded from TOML.

Example ``agent.toml``::

    device_id = "pi-kitchen-01"
    broker_url = "mqtt://10.0.0.5:1883"
    state_dir = "/var/lib/edgefleet"
    trust_root = "/etc/edgefleet/root.json"
    api_port = 8470
    grpc_port = 8471          # optional: the v2 gRPC service (the grpc extra)
    # optional: bundles over HTTP(S) from the controller, nginx or a CDN, not MQTT
    # repository_url = "https://cdn.example/edgefleet/"
    [tags]
    site = "lab"

A device provisioned on first boot names no ``device_id`` or password; it names the
controller and its claim token instead, and gets both from ``identity.json``::

    state_dir = "/var/lib/edgefleet"
    trust_root = "/etc/edgefleet/root.json"
    provision_url = "https://fleet.example.com"
    claim_token_file = "/etc/edgefleet/claim-token"
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgefleet.contract.names import NAME

from ._retention import MIN_BUFFER_BYTES

__all__ = ["AgentConfig", "load_config", "parse_broker_url", "repository_base"]


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything an agent needs; units are in the names.

    Raises:
        ValueError: from ``__post_init__`` for an unusable value.
    """

    device_id: str
    state_dir: Path
    trust_root: Path
    broker_url: str = "mqtt://127.0.0.1:1883"
    # MQTT credentials (the username is the device id); none: anonymous
    mqtt_password: str | None = None
    # mqtts:// brokers: the CA bundle to verify the broker with (none: the system's)
    broker_ca_file: Path | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8470  # 0 picks a free port
    max_request_bytes: int = 64 * 1024 * 1024  # v2 request bodies (413 above)
    # the v2 gRPC service on api_host (needs the grpc extra): off unless a port is set;
    # 0 picks a free port
    grpc_port: int | None = None
    # "auto": detected (contract.hardware: rpi4, rpi5, jetson-orin, x86-vnni…); else as given
    hardware_class: str = "auto"
    # onnxruntime providers to ask for, best first (empty: TensorRT and CUDA on Jetson
    # classes, the CPU elsewhere); one that fails to load falls back to the CPU, reported
    execution_providers: list[str] = dataclasses.field(default_factory=list)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    intra_op_threads: int = 1
    summary_window_s: float = 60.0
    keepalive_s: int = 15
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    chunk_bytes: int = 64 * 1024
    fetch_timeout_s: float = 5.0
    download_deadline_s: float = 600.0
    max_download_bytes_per_s: int = 0  # 0: unlimited
    # a broadcast file's blocks are waited for while they keep coming: after this long
    # without one, the rest is pulled
    broadcast_wait_s: float = 5.0
    # a bundle file with the content of one already installed here (the same model in
    # a new version) is copied from it instead of downloaded; TUF checks the copy
    reuse_local_files: bool = True
    # a job's step statuses at most this often (its first and its end at once; 0: all)
    status_interval_s: float = 1.0
    # fetch the TUF repository over HTTP(S) from here (metadata/ and targets/ below it:
    # the controller's /v1/repository/, nginx or a CDN) instead of over MQTT ("": MQTT);
    # fetch_timeout_s bounds connecting and each wait for bytes, download_deadline_s a file
    repository_url: str = ""
    # https:// repositories: the CA bundle to verify the host with (none: the system's)
    repository_ca: Path | None = None
    # telemetry buffer (docs/telemetry.md): records waiting for the writer (a full
    # queue drops and counts), how often the writer commits, the store's cap on disk
    # (database + WAL) and an optional row limit on raw records (0: the byte cap only)
    telemetry_queue_max: int = 10_000
    telemetry_flush_interval_s: float = 1.0
    max_buffer_bytes: int = 64 * 1024 * 1024
    max_raw_rows: int = 0
    publish_batch: int = 50
    resend_after_s: float = 10.0
    command_max_age_s: float = 3600.0
    # first boot (agent.provision): the controller to ask for an identity, the claim
    # token's file and an optional CA bundle for the controller's certificate
    provision_url: str = ""
    claim_token_file: Path | None = None
    provision_ca_file: Path | None = None
    # how often an idle agent checks its trust metadata is fresh (0: only when installing)
    trust_check_interval_s: float = 3600.0
    loop_interval_s: float = 0.2

    def __post_init__(self) -> None:
        NAME.check(self.device_id, "device_id")
        parse_broker_url(self.broker_url)
        if self.intra_op_threads < 1:
            raise ValueError("intra_op_threads must be ≥ 1")
        if self.summary_window_s <= 0 or self.fetch_timeout_s <= 0:
            raise ValueError("summary_window_s and fetch_timeout_s must be > 0")
        if self.broadcast_wait_s < 0:
            raise ValueError("broadcast_wait_s must be >= 0")
        if self.status_interval_s < 0:
            raise ValueError("status_interval_s must be >= 0")
        if not 1024 <= self.chunk_bytes <= 128 * 1024:
            raise ValueError("chunk_bytes must be between 1 KiB and 128 KiB")
        if not 0 <= self.api_port <= 65535:
            raise ValueError("api_port must be 0..65535")
        if self.grpc_port is not None:
            if not 0 <= self.grpc_port <= 65535:
                raise ValueError("grpc_port must be 0..65535")
            if importlib.util.find_spec("grpc") is None:
                raise ValueError("grpc_port is set but gRPC is not installed: "
                                 "pip install 'edgefleet[grpc]'")
        if self.max_request_bytes < 1024:
            raise ValueError("max_request_bytes must be at least 1024")
        if self.max_buffer_bytes < MIN_BUFFER_BYTES:
            raise ValueError(f"max_buffer_bytes must be ≥ {MIN_BUFFER_BYTES} (256 KiB)")
        if self.telemetry_queue_max < 1 or self.max_raw_rows < 0:
            raise ValueError("telemetry_queue_max must be ≥ 1 and max_raw_rows ≥ 0")
        if self.telemetry_flush_interval_s <= 0:
            raise ValueError("telemetry_flush_interval_s must be > 0")
        _check_repository(self.repository_url, self.repository_ca)

    def __repr__(self) -> str:  # never print the MQTT password
        shown = dataclasses.replace(self, mqtt_password="***" if self.mqtt_password else None)
        return "AgentConfig(" + ", ".join(
            f"{f.name}={getattr(shown, f.name)!r}" for f in dataclasses.fields(self)) + ")"


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` or ``mqtts://host:port`` (TLS) → ``(host, port)``.

    Raises:
        ValueError: not an ``mqtt://``/``mqtts://`` URL with a host.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp", "mqtts") or not parsed.hostname:
        raise ValueError(f"broker url must look like mqtt://host:port or mqtts://host:port, "
                         f"got {url!r}")
    return parsed.hostname, parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)


def _check_repository(url: str, ca: Path | None) -> None:
    """Raises: ValueError naming ``repository_url`` or ``repository_ca`` when unusable."""
    if url:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"repository_url must be an http:// or https:// URL with a "
                             f"host, like https://cdn.example/edgefleet/; got {url!r}")
        if parsed.query or parsed.fragment:
            raise ValueError(f"repository_url must not carry a query or fragment; got "
                             f"{url!r}")
    if ca is not None:
        if not url.startswith("https://"):
            raise ValueError("repository_ca is set but repository_url is not an https:// "
                             "URL: the CA bundle only verifies an https:// host")
        if not ca.is_file():
            raise ValueError(f"repository_ca {str(ca)!r} is not a readable file (expected "
                             f"a PEM CA bundle)")


def repository_base(url: str) -> str:
    """A ``repository_url`` as the base of the URLs fetched: it ends with one ``/``."""
    return url.rstrip("/") + "/"


def type_problem(value: Any, hint: Any) -> str | None:
    """What ``value`` (from TOML) should have been to fit a field typed ``hint``, or None
    when it fits: ``execution_providers = "CUDA"`` is not a list of one provider."""
    options = [h for h in typing.get_args(hint) if h is not type(None)] \
        if isinstance(hint, types.UnionType) else [hint]
    if value is None and type(None) in typing.get_args(hint):
        return None
    wants = []
    for option in options:
        origin = typing.get_origin(option)
        if option is bool:
            ok, want = isinstance(value, bool), "true or false"
        elif option is int:
            ok, want = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif option is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            want = "a number"
        elif option in (str, Path):
            ok, want = isinstance(value, (str, Path)), "a string"
        elif origin in (list, tuple):
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            want = 'a list of strings, like ["a", "b"]'
        elif origin is dict:
            ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in value.items())
            want = "a table of strings"
        else:  # a type this check does not know: AgentConfig judges it
            return None
        if ok:
            return None
        wants.append(want)
    return " or ".join(wants)


def load_config(path: Path, **overrides: Any) -> AgentConfig:
    """Read an ``agent.toml``; relative paths are relative to the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid TOML, unknown keys or bad values.
    """
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    data.update(overrides)
    known = {f.name for f in dataclasses.fields(AgentConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    hints = typing.get_type_hints(AgentConfig)
    for key, value in data.items():
        why = type_problem(value, hints[key])
        if why:
            raise ValueError(f"{path}: {key} must be {why}, got {value!r}")
    for key in ("state_dir", "trust_root", "claim_token_file", "provision_ca_file",
                "broker_ca_file", "repository_ca"):
        if key not in data:
            if key in ("state_dir", "trust_root"):
                raise ValueError(f"{path}: missing {key}")
            continue
        p = Path(data[key]).expanduser()
        data[key] = p if p.is_absolute() else (path.parent / p).resolve()
    if data.get("provision_url"):
        identity_path = data["state_dir"] / "identity.json"
        try:
            identity = json.loads(identity_path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: this device is not provisioned yet (no "
                             f"{identity_path}); `edgefleet agent run` provisions it") from None
        # the identity the controller issued wins; broker_url in the file may override
        data["device_id"] = identity["device_id"]
        data["mqtt_password"] = identity["mqtt_password"]
        if "broker_url" not in data and identity.get("broker_url"):
            data["broker_url"] = identity["broker_url"]
    return AgentConfig(**data)
