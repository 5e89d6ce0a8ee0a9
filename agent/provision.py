"""First boot: the device makes its own key, presents its claim token, gets an identity.

``ensure_identity`` runs before the agent starts when ``agent.toml`` names a
``provision_url``. If ``identity.json`` is already in the state directory it returns
at once. Otherwise it creates the device key (Ed25519, ``device.key``, 0600; kept
across retries and factory resets of the identity alone), signs a provisioning
request with it and sends it, with the claim token, to the controller's
``/v1/provision``. The answer (device id, MQTT username and password, broker URL) is
written to ``identity.json`` (0600), which ``load_config`` reads from then on.

A refusal (bad or used-up token, a device id taken by another key) is final and says
why; an unreachable controller is retried with backoff until ``deadline_s``.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.contract import EdgefleetError
from edgefleet.contract.backoff import Backoff
from edgefleet.contract.files import atomic_write

__all__ = ["IDENTITY_FILE", "KEY_FILE", "ProvisioningError", "ensure_identity",
           "provision_from_config"]

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
KEY_FILE = "device.key"


class ProvisioningError(EdgefleetError):
    """The controller refused to provision this device (final), or never answered."""

    reason = "provisioning_refused"


def _device_key(state_dir: Path) -> Ed25519PrivateKey:
    path = state_dir / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ProvisioningError(f"{path} is not an Ed25519 key")
        return key
    key = Ed25519PrivateKey.generate()
    atomic_write(path, key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), mode=0o600)
    return key


def _message(device_id: str, public_pem: str, ts: float) -> bytes:
    # the same bytes as edgefleet.controller.provisioning.provision_message
    return f"edgefleet-provision/v1\n{device_id}\n{ts:.3f}\n{public_pem.strip()}".encode()


def ensure_identity(state_dir: Path, *, provision_url: str, claim_token: str,
                    device_id: str | None = None, ca_file: Path | None = None,
                    deadline_s: float = 0.0, timeout_s: float = 15.0,
                    sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The device's identity, provisioning it first if needed.

    Args:
        state_dir: the agent's state directory (``identity.json``, ``device.key``).
        provision_url: the controller's base URL (https in production).
        claim_token: the token from the image.
        device_id: the id to ask for (default: the controller derives one from the key).
        ca_file: a CA bundle to verify the controller's certificate with.
        deadline_s: give up after this long without an answer (0: keep trying).

    Raises:
        ProvisioningError: refused by the controller, or no answer before the deadline.
    """
    path = state_dir / IDENTITY_FILE
    if path.exists():
        return dict(json.loads(path.read_text()))
    state_dir.mkdir(parents=True, exist_ok=True)
    key = _device_key(state_dir)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    url = provision_url.rstrip("/") + "/v1/provision"
    started, backoff = time.monotonic(), Backoff(1.0, 60.0)
    while True:
        ts = time.time()
        body = json.dumps({
            "claim_token": claim_token, "public_key": public_pem, "ts": ts,
            "device_id": device_id,
            "proof": base64.b64encode(key.sign(_message(device_id or "", public_pem, ts)))
            .decode()}).encode()
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s,
                                        context=context if url.startswith("https") else None
                                        ) as resp:
                answer = json.loads(resp.read())
            break
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                detail = exc.read()[:500].decode(errors="replace")
                raise ProvisioningError(f"the controller refused provisioning "
                                        f"({exc.code}): {detail}") from exc
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            problem = str(exc)
        if deadline_s and time.monotonic() - started > deadline_s:
            raise ProvisioningError(f"no answer from {url} within {deadline_s:.0f}s: "
                                    f"{problem}", reason="provisioning_unreachable")
        wait = next(backoff)
        log.warning("provisioning at %s failed (%s); retrying in %.0fs", url, problem, wait)
        sleep(wait)
    identity = {"device_id": answer["device_id"], "mqtt_password": answer["mqtt_password"],
                "broker_url": answer.get("broker_url") or "", "provisioned_at": time.time(),
                "controller": provision_url}
    atomic_write(path, json.dumps(identity, indent=2).encode(), mode=0o600)
    log.info("provisioned as %s", identity["device_id"])
    return identity


def provision_from_config(config_path: Path, *, deadline_s: float = 0.0) -> dict[str, Any] | None:
    """Provision the device an ``agent.toml`` describes, if it names a ``provision_url``.

    Returns the identity, or None when the file does not ask for provisioning.

    Raises:
        ProvisioningError: as ``ensure_identity``.
        ValueError: the file is not valid TOML, or the claim token cannot be read.
    """
    try:
        data = tomllib.loads(config_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{config_path}: {exc}") from exc
    url = data.get("provision_url")
    if not url:
        return None

    def resolve(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (config_path.parent / p).resolve()

    state_dir = resolve(str(data.get("state_dir", ".")))
    if (state_dir / IDENTITY_FILE).exists():
        return ensure_identity(state_dir, provision_url=url, claim_token="")
    token_file = data.get("claim_token_file")
    if not token_file:
        raise ValueError(f"{config_path}: provision_url needs claim_token_file")
    try:
        token = resolve(token_file).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the claim token: {exc}") from exc
    ca = data.get("provision_ca_file")
    return ensure_identity(state_dir, provision_url=url, claim_token=token,
                           device_id=data.get("device_id"),
                           ca_file=resolve(ca) if ca else None, deadline_s=deadline_s)

