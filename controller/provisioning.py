"""Device identity: claim tokens, first-boot provisioning, broker credentials, revocation.

A device image carries a claim token (``edgefleet claim-tokens create``). On first boot
the agent generates its own Ed25519 key, signs a provisioning request with it and
presents the token; the controller checks the token (hashed at rest; limited uses,
an expiry, revocable), records the device's public key, and answers with the device's
identity and fresh MQTT credentials. Only the PBKDF2 hash of the password is kept
(the line Mosquitto's ``password_file`` reads); the password itself is in the one
response and then only on the device.

When the controller manages the broker's files (``Settings.broker_auth_dir``), every
provisioning and revocation rewrites ``passwd``/``acl`` and reloads the broker, so a
revoked device can no longer connect; the controller also ignores whatever a revoked
device still sends on an open connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from edgefleet.contract import InvalidRequest, NotFoundError, RegistryError, SignatureError
from edgefleet.contract.topics import valid_device_id

from .brokerconf import password_line, write_credentials
from .store import Store

__all__ = ["PROOF_MAX_SKEW_S", "Provisioner", "provision_message"]

PROOF_MAX_SKEW_S = 600.0


def provision_message(device_id: str, public_key_pem: str, ts: float) -> bytes:
    """The bytes a device signs with its new key to prove it holds it."""
    return f"edgefleet-provision/v1\n{device_id}\n{ts:.3f}\n{public_key_pem.strip()}".encode()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _invalid_token() -> SignatureError:
    return SignatureError("the claim token is unknown, used up, expired or revoked",
                          reason="invalid_claim_token")


def _usable_token(token: dict[str, Any] | None, claim_token: str,
                  now: float) -> dict[str, Any]:
    """The claim token's row if it can provision a device now.

    Raises:
        SignatureError: unknown, revoked, expired or used up (``invalid_claim_token``).
    """
    if (token is None or token["revoked_at"] is not None or token["expires_at"] < now
            or token["uses_left"] <= 0
            or not hmac.compare_digest(token["hash"], _hash(claim_token))):
        raise _invalid_token()
    return token


class Provisioner:
    """Claim tokens and device credentials, in the controller's store.

    Args:
        store: the controller's store.
        broker_auth_dir: where to keep Mosquitto's ``passwd``/``acl`` (None: not managed).
        controller_user / controller_password: the controller's own broker account.
        reload: makes the broker re-read its files (e.g. SIGHUP to Mosquitto).
        clock: time source (token expiry, proof freshness).
    """

    def __init__(self, store: Store, *, broker_auth_dir: Path | None = None,
                 controller_user: str = "edgefleet-controller",
                 controller_password: str | None = None,
                 reload: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.broker_auth_dir = broker_auth_dir
        self.controller_user = controller_user
        self.controller_password = controller_password
        self.reload = reload
        self.clock = clock
        self._lock = threading.Lock()
        self.revoked: set[str] = store.credentials.revoked_devices()

    # -- claim tokens -------------------------------------------------------------------
    def create_claim_token(self, *, label: str, uses: int = 1, ttl_s: float = 7 * 86400,
                           created_by: str) -> dict[str, Any]:
        """A new claim token; its secret is in the result and nowhere else.

        Raises:
            InvalidRequest: uses < 1 or ttl_s ≤ 0.
        """
        if uses < 1 or ttl_s <= 0:
            raise InvalidRequest("a claim token needs uses ≥ 1 and ttl_s > 0")
        token_id = secrets.token_hex(6)
        secret = f"efc_{token_id}_{secrets.token_urlsafe(24)}"
        now = self.clock()
        row = {"id": token_id, "label": label[:128], "hash": _hash(secret), "uses_left": uses,
               "expires_at": now + ttl_s, "created_at": now, "created_by": created_by,
               "revoked_at": None}
        self.store.credentials.add_claim_token(row)
        return {**self._public_token(row), "token": secret}

    def list_claim_tokens(self) -> list[dict[str, Any]]:
        return [self._public_token(row) for row in self.store.credentials.claim_tokens()]

    def revoke_claim_token(self, token_id: str) -> dict[str, Any]:
        """Raises: NotFoundError."""
        row = self.store.credentials.revoke_claim_token(token_id, self.clock())
        if row is None:
            raise NotFoundError(f"no claim token {token_id}")
        return self._public_token(row)

    def _public_token(self, row: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        state = "revoked" if row["revoked_at"] else "expired" if row["expires_at"] < now else \
            "used" if row["uses_left"] <= 0 else "valid"
        return {k: row[k] for k in ("id", "label", "uses_left", "expires_at", "created_at",
                                    "created_by", "revoked_at")} | {"state": state}

    # -- provisioning -------------------------------------------------------------------
    def provision(self, *, claim_token: str, public_key: str, proof: str, ts: float,
                  device_id: str | None = None, broker_url: str) -> dict[str, Any]:
        """First boot: check the token and the key proof; issue identity and credentials.

        Raises:
            SignatureError: bad token (``invalid_claim_token``), bad key or proof
                (``invalid_proof``).
            RegistryError: the device id belongs to another key or was revoked.
            InvalidRequest: a malformed device id.
        """
        self._check_token(claim_token)  # before any work on what the caller sent
        key = self._check_proof(public_key, proof, ts, device_id or "")
        key_id = hashlib.sha256(public_key.strip().encode()).hexdigest()
        device = device_id or f"dev-{key_id[:12]}"
        if not valid_device_id(device) or device == self.controller_user:
            raise InvalidRequest(f"invalid device id {device!r}")
        del key
        password = secrets.token_urlsafe(24)
        now = self.clock()
        with self._lock, self.store.credentials.transaction() as tx:
            token = _usable_token(tx.claim_token(_hash(claim_token)), claim_token, now)
            existing = tx.credentials(device)
            if existing is not None and existing["revoked_at"] is not None:
                raise RegistryError(f"{device} was revoked; it cannot be provisioned again",
                                    reason="device_revoked")
            if existing is not None and existing["key_id"] != key_id:
                raise RegistryError(f"{device} is already provisioned with another key",
                                    reason="device_conflict")
            if not tx.spend_token(token["id"]):  # another replica took its last use
                raise _invalid_token()
            values = {"public_key": public_key.strip(), "key_id": key_id,
                      "passwd_line": password_line(device, password), "provisioned_at": now,
                      "claim_token": token["id"], "revoked_at": None, "revoked_by": None}
            # a device provisioned before: the same one (same key), e.g. after a reset
            tx.save_credentials(device, values, new=existing is None)
        self.sync_broker()
        return {"device_id": device, "mqtt_username": device, "mqtt_password": password,
                "broker_url": broker_url}

    def _check_token(self, claim_token: str) -> None:
        _usable_token(self.store.credentials.claim_token(_hash(claim_token)), claim_token,
                      self.clock())

    def _check_proof(self, public_key: str, proof: str, ts: float,
                     device_id: str) -> Ed25519PublicKey:
        try:
            key = load_pem_public_key(public_key.encode())
        except ValueError as exc:
            raise SignatureError(f"not a PEM public key: {exc}", reason="invalid_proof") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError("device keys must be Ed25519", reason="invalid_proof")
        if abs(self.clock() - ts) > PROOF_MAX_SKEW_S:
            raise SignatureError("the provisioning proof is too old or from the future "
                                 "(check the device clock)", reason="invalid_proof")
        try:
            key.verify(base64.b64decode(proof), provision_message(device_id, public_key, ts))
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError("the provisioning proof does not verify with that key",
                                 reason="invalid_proof") from exc
        return key

    # -- devices ------------------------------------------------------------------------
    def revoke_device(self, device: str, *, actor: str) -> dict[str, Any]:
        """Revoke a device's credentials; the broker refuses it from its next connection.

        Raises:
            NotFoundError: no credentials for that device.
        """
        with self._lock:
            done = self.store.credentials.revoke_device(device, now=self.clock(), actor=actor)
        if not done:
            raise NotFoundError(f"no provisioned device {device}")
        self.revoked.add(device)
        self.sync_broker()
        return self.identity(device)

    def identity(self, device: str) -> dict[str, Any]:
        """A device's public identity (never its credentials).

        Raises:
            NotFoundError: never provisioned.
        """
        row = self.store.credentials.credentials(device)
        if row is None:
            raise NotFoundError(f"no provisioned device {device}")
        return {k: row[k] for k in ("device", "key_id", "public_key", "provisioned_at",
                                    "claim_token", "revoked_at", "revoked_by")}

    def sync_broker(self) -> None:
        """Rewrite the broker's password and ACL files from the store, then reload it."""
        if self.broker_auth_dir is None:
            return
        if not self.controller_password:
            raise ValueError("managing the broker's files needs the controller's MQTT password")
        write_credentials(self.broker_auth_dir, controller_user=self.controller_user,
                          controller_password=self.controller_password,
                          device_lines=self.store.credentials.password_lines())
        if self.reload is not None:
            self.reload()


def reload_command(command: str) -> Callable[[], None]:
    """A reload callback running ``command`` (e.g. ``systemctl reload mosquitto``)."""
    argv = shlex.split(command)

    def run() -> None:
        subprocess.run(argv, check=True, timeout=30)
    return run
