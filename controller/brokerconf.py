"""Mosquitto configuration that keeps every device in its own lane.

``render_acl`` and ``password_line`` are pure; ``write_broker_config`` writes
``mosquitto.conf``, ``passwd`` (PBKDF2-SHA512, the ``$7$`` format Mosquitto 2 reads)
and ``acl`` (0600). Devices authenticate with their device id as username; ACL
patterns on ``%u`` give each one only its own topics, in the right direction, and the
controller user everything under ``fleet/v1``. Anonymous clients are refused. Revoking
a device is rewriting ``passwd`` without it and sending Mosquitto SIGHUP. Client ids are
bound to usernames (``use_username_as_clientid``): a device that connects with another
device's or the controller's client id cannot take over that session. The controller's
client id is therefore its username; controller replicas on such a broker each need a
username of their own.

The files are written 0600: make them owned by the user Mosquitto runs as
(``chown mosquitto: passwd acl``), since a broker started as root drops to that user.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from edgefleet.contract import BLOB_PREFIX, PREFIX
from edgefleet.contract.files import atomic_write
from edgefleet.contract.topics import valid_device_id

__all__ = ["LISTENER_LINES", "auth_lines", "password_line", "render_acl", "render_conf",
           "write_broker_config", "write_credentials"]

_ITERATIONS = 101  # what mosquitto_passwd writes for $7$

# what a device may publish and what it may receive, relative to fleet/v1/dev/<id>/
DEVICE_WRITES = ("birth", "death", "telemetry", "fetch/req", "job/+/status")
DEVICE_READS = ("cmd", "desired", "fetch/resp", "telemetry/ack")


def password_line(username: str, password: str, *, salt: bytes | None = None) -> str:
    """One ``passwd`` line in Mosquitto 2's PBKDF2-SHA512 format."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return (f"{username}:$7${_ITERATIONS}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def render_acl(controller_user: str) -> str:
    """The ACL: the controller reads and writes the fleet, a device only its own topics
    (and reads the broadcast bundle blocks)."""
    lines = [f"user {controller_user}", f"topic readwrite {PREFIX}/#", ""]
    lines += [f"pattern write {PREFIX}/dev/%u/{t}" for t in DEVICE_WRITES]
    lines += [f"pattern read {PREFIX}/dev/%u/{t}" for t in DEVICE_READS]
    lines.append(f"pattern read {PREFIX}/ctl/state")
    # broadcast bundle blocks: every device may read them (a device may pull any bundle
    # file too); only the controller writes them
    lines.append(f"pattern read {BLOB_PREFIX}/+/+")
    return "\n".join(lines) + "\n"


# per listener (written after each ``listener`` line: before any, Mosquitto would open
# a default listener on 1883 for it): a client's id is its username, so a device that
# connects with another's client id gets its own anyway and cannot close that session
LISTENER_LINES = ("use_username_as_clientid true",)


def auth_lines(directory: Path) -> list[str]:
    """The global directives that decide who may connect: no anonymous clients, ``passwd``
    and ``acl``; ``LISTENER_LINES`` go with each listener."""
    return ["allow_anonymous false", f"password_file {directory / 'passwd'}",
            f"acl_file {directory / 'acl'}"]


def render_conf(directory: Path, *, port: int, host: str = "0.0.0.0",
                tls: tuple[Path, Path, Path] | None = None) -> str:
    """``mosquitto.conf`` for a listener (plain or TLS) using ``passwd`` and ``acl``.

    ``host`` is the address the listener binds; the default, every interface, is what a
    broker that devices reach over the network needs, and the file says so."""
    conf = [
        "per_listener_settings false",
        *auth_lines(directory),
        "persistence true",
        f"persistence_location {directory}/",
        "max_queued_messages 10000",
        "max_packet_size 1048576",
        "set_tcp_nodelay true",  # fetches and statuses are small: send them at once
        f"# {'every interface' if host in ('0.0.0.0', '::') else host}: where devices "
        "connect from; narrow it with --host",
        f"listener {port} {host}",
        *LISTENER_LINES,
    ]
    if tls is not None:
        ca, cert, key = tls
        conf += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}", "tls_version tlsv1.2"]
    return "\n".join(conf) + "\n"


def write_broker_config(directory: Path, *, devices: dict[str, str], controller_user: str,
                        controller_password: str, port: int = 8883, host: str = "0.0.0.0",
                        tls: tuple[Path, Path, Path] | None = None) -> Path:
    """Write ``mosquitto.conf``, ``passwd`` and ``acl`` into ``directory``.

    Args:
        devices: device id → MQTT password (revoked devices are simply left out).

    Returns:
        The path of ``mosquitto.conf``.

    Raises:
        ValueError: a device id that would break the topic patterns, or one equal to
            the controller's username.
    """
    lines = {d: password_line(d, pw) for d, pw in devices.items()}
    write_credentials(directory, controller_user=controller_user,
                      controller_password=controller_password, device_lines=lines)
    conf = directory / "mosquitto.conf"
    atomic_write(conf, render_conf(directory.resolve(), port=port, host=host, tls=tls).encode(),
                 mode=0o600)
    return conf


def write_credentials(directory: Path, *, controller_user: str, controller_password: str,
                      device_lines: dict[str, str]) -> None:
    """Write ``passwd`` and ``acl`` (0600) from already hashed device lines.

    Args:
        device_lines: device id → its ``passwd`` line (``password_line``); revoked
            devices are simply left out.

    Raises:
        ValueError: a device id that would break the topic patterns, or one equal to
            the controller's username.
    """
    for device_id, line in device_lines.items():
        if not valid_device_id(device_id) or device_id == controller_user:
            raise ValueError(f"invalid device id for broker credentials: {device_id!r}")
        if not line.startswith(f"{device_id}:$7$"):
            raise ValueError(f"{device_id}: not a Mosquitto PBKDF2 password line")
    lines = [password_line(controller_user, controller_password)]
    lines += [device_lines[d] for d in sorted(device_lines)]
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "passwd", ("\n".join(lines) + "\n").encode(), mode=0o600)
    atomic_write(directory / "acl", render_acl(controller_user).encode(), mode=0o600)
