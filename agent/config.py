"""Agent configuration: a frozen dataclass, loaded from TOML.

Example ``agent.toml``::

    device_id = "pi-kitchen-01"
    broker_url = "mqtt://10.0.0.5:1883"
    state_dir = "/var/lib/edgefleet"
    trust_root = "/etc/edgefleet/root.json"
    api_port = 8470
    [tags]
    site = "lab"
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgefleet.contract.topics import valid_device_id

__all__ = ["AgentConfig", "load_config", "parse_broker_url"]


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
    api_host: str = "127.0.0.1"
    api_port: int = 8470  # 0 picks a free port
    hardware_class: str = "generic"
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
    telemetry_queue_max: int = 10_000
    max_raw_rows: int = 200_000
    publish_batch: int = 50
    resend_after_s: float = 10.0
    command_max_age_s: float = 3600.0
    loop_interval_s: float = 0.2

    def __post_init__(self) -> None:
        if not valid_device_id(self.device_id):
            raise ValueError(f"device_id {self.device_id!r}: use letters, digits, '.', '_', '-'")
        parse_broker_url(self.broker_url)
        if self.intra_op_threads < 1:
            raise ValueError("intra_op_threads must be ≥ 1")
        if self.summary_window_s <= 0 or self.fetch_timeout_s <= 0:
            raise ValueError("summary_window_s and fetch_timeout_s must be > 0")
        if not 1024 <= self.chunk_bytes <= 128 * 1024:
            raise ValueError("chunk_bytes must be between 1 KiB and 128 KiB")
        if not 0 <= self.api_port <= 65535:
            raise ValueError("api_port must be 0..65535")

    def __repr__(self) -> str:  # never print the MQTT password
        shown = dataclasses.replace(self, mqtt_password="***" if self.mqtt_password else None)
        return "AgentConfig(" + ", ".join(
            f"{f.name}={getattr(shown, f.name)!r}" for f in dataclasses.fields(self)) + ")"


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` → ``(host, port)``.

    Raises:
        ValueError: not an ``mqtt://`` URL with a host.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
        raise ValueError(f"broker url must look like mqtt://host:port, got {url!r}")
    return parsed.hostname, parsed.port or 1883


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
    for key in ("state_dir", "trust_root"):
        if key not in data:
            raise ValueError(f"{path}: missing {key}")
        p = Path(data[key]).expanduser()
        data[key] = p if p.is_absolute() else (path.parent / p).resolve()
    return AgentConfig(**data)
