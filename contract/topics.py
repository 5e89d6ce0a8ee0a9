"""The MQTT topic layout, in one place (see docs/mqtt.md).

Every topic lives under ``fleet/v1``. Device topics carry the device id as their third
level so a broker ACL on ``fleet/v1/dev/%u/#`` isolates devices from one another.
"""

from __future__ import annotations

import re

from .names import NAME

__all__ = [
    "PREFIX",
    "BLOB_PREFIX",
    "CTL_STATE",
    "DeviceTopic",
    "device_topic",
    "parse_device_topic",
    "valid_device_id",
    "device_wildcard",
    "blob_topic",
    "blob_filter",
    "parse_blob_topic",
    "valid_sha256",
]

PREFIX = "fleet/v1"
CTL_STATE = f"{PREFIX}/ctl/state"
# bundle files broadcast to the devices of a wave, content-addressed:
# fleet/v1/blob/{sha256}/{offset}, retained, one block per message
BLOB_PREFIX = f"{PREFIX}/blob"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DeviceTopic:
    """Suffixes of the per-device topics, ``fleet/v1/dev/{id}/<suffix>``."""

    BIRTH = "birth"
    DEATH = "death"
    CMD = "cmd"
    DESIRED = "desired"
    FETCH_REQ = "fetch/req"
    FETCH_RESP = "fetch/resp"
    TELEMETRY = "telemetry"
    TELEMETRY_ACK = "telemetry/ack"
    JOB_STATUS = "job/{job}/status"


def valid_device_id(device_id: str) -> bool:
    """Whether ``device_id`` is usable in topics (no wildcards, slashes or spaces)."""
    return NAME.valid(device_id)


def device_topic(device_id: str, suffix: str, **fields: str) -> str:
    """Build a device topic, e.g. ``device_topic("pi-1", DeviceTopic.CMD)``.

    Raises:
        ValueError: the device id or a field would break the topic structure.
    """
    NAME.check(device_id, "device id")
    for key, value in fields.items():
        NAME.check(value, key)
    return f"{PREFIX}/dev/{device_id}/{suffix.format(**fields)}"


def device_wildcard(suffix: str) -> str:
    """The subscription filter for ``suffix`` on every device (``+`` for the id)."""
    return f"{PREFIX}/dev/+/{suffix.replace('{job}', '+')}"


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """Split a device topic into ``(device_id, suffix)``; ``None`` if it is not one."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "fleet" or parts[1] != "v1" or parts[2] != "dev":
        return None
    device_id = parts[3]
    if not valid_device_id(device_id):
        return None
    return device_id, "/".join(parts[4:])


def valid_sha256(text: str) -> bool:
    """Whether ``text`` is a lowercase hex sha256 (the name of a broadcast file)."""
    return bool(_SHA256.match(text))


def blob_topic(sha256: str, offset: int) -> str:
    """The topic of the block of broadcast file ``sha256`` that starts at ``offset``.

    Raises:
        ValueError: not a sha256, or a negative offset.
    """
    if not valid_sha256(sha256) or offset < 0:
        raise ValueError(f"invalid blob {sha256!r} at {offset}")
    return f"{BLOB_PREFIX}/{sha256}/{offset}"


def blob_filter(sha256: str) -> str:
    """The subscription filter for every block of broadcast file ``sha256``.

    Raises:
        ValueError: not a sha256.
    """
    if not valid_sha256(sha256):
        raise ValueError(f"invalid blob {sha256!r}")
    return f"{BLOB_PREFIX}/{sha256}/+"


def parse_blob_topic(topic: str) -> tuple[str, int] | None:
    """``(sha256, offset)`` of a blob topic; ``None`` if it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != BLOB_PREFIX or not valid_sha256(parts[3]) \
            or not parts[4].isdigit() or len(parts[4]) > 18:
        return None
    return parts[3], int(parts[4])
