"""Control messages a device accepts: signed by a command key its trusted root names,
addressed to it, fresh, and never seen before.

``CommandGuard.open`` takes a payload as it arrived over MQTT and returns the decoded
``Command`` or ``DesiredState``, or raises a ``TrustError`` with the reason it was
refused. The command keys come from the TUF root the updater keeps verified in the
agent's state (``tuf/root.json``), so they rotate with the root. Seen command ids (the
nonces) are kept on disk until they expire, so a replay is refused after a restart too.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Key, Signature, SSlibKey

from edgefleet.contract import (
    COMMAND_KEYS_FIELD,
    Clock,
    Command,
    DesiredState,
    ExpiredError,
    MessageError,
    RollbackError,
    SignatureError,
    Signed,
    TrustError,
)
from edgefleet.contract.files import atomic_write

log = logging.getLogger(__name__)

__all__ = ["CommandGuard", "ControlInbox"]

M = TypeVar("M", Command, DesiredState)


def _command_keys(root_json: bytes) -> tuple[dict[str, Key], int]:
    signed = json.loads(root_json)["signed"]
    field = signed.get(COMMAND_KEYS_FIELD) or {}
    keys: dict[str, Key] = {kid: SSlibKey.from_dict(kid, dict(k))
                            for kid, k in field.get("keys", {}).items()}
    return keys, int(field.get("threshold", 1))


class CommandGuard:
    """Verifies and de-duplicates control messages for one device.

    Args:
        device_id: this device; a message addressed to another is refused.
        root_path: the trusted TUF root (kept current by the updater).
        seen_path: where seen command ids are kept until they expire.
        clock: time source for expiry.
        max_age_s: a command issued longer ago than this is refused even if not expired.
    """

    def __init__(self, device_id: str, root_path: Path, seen_path: Path, clock: Clock, *,
                 max_age_s: float) -> None:
        self.device_id = device_id
        self.root_path = root_path
        self.seen_path = seen_path
        self.clock = clock
        self.max_age_s = max_age_s
        self.rejected: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._keys_mtime = -1.0
        self._keys: dict[str, Key] = {}
        self._threshold = 1
        self._seen = self._load_seen()

    # -- public -------------------------------------------------------------------------
    def open(self, payload: bytes, cls: type[M]) -> M:
        """Verify and decode one message.

        Raises:
            SignatureError: unsigned while the root names command keys
                (``unsigned_command``), signed by unknown keys or too few
                (``untrusted_signature``; ``unknown_command_key`` when no signature is by
                a key the root names: the root may have rotated), or for another device
                (``wrong_device``).
            ExpiredError: a command past its expiry or too old (``expired_command``).
            RollbackError: a command id already seen (``replayed_command``).
            MessageError: not a well-formed message.
        """
        try:
            msg = self._verified(payload, cls)
            if isinstance(msg, Command):
                self._fresh(msg)
            return msg
        except (TrustError, MessageError) as exc:
            self.rejected[exc.reason] += 1
            raise

    def stats(self) -> dict[str, Any]:
        return {"rejected": dict(self.rejected), "command_keys": len(self._keys)}

    # -- verification -------------------------------------------------------------------
    def _load_keys(self) -> None:
        try:
            mtime = self.root_path.stat().st_mtime
            if mtime != self._keys_mtime:
                self._keys, self._threshold = _command_keys(self.root_path.read_bytes())
                self._keys_mtime = mtime
        except FileNotFoundError as exc:
            # python-tuf re-creates root.json (remove, then link) each time it opens the
            # metadata: for that instant the root already loaded stays in force
            if self._keys_mtime < 0:  # never loaded: fail closed
                raise SignatureError(f"cannot read the trusted root: {exc}",
                                     reason="no_trusted_root") from exc
        except (OSError, ValueError, KeyError) as exc:  # fail closed: no root, no commands
            raise SignatureError(f"cannot read the trusted root: {exc}",
                                 reason="no_trusted_root") from exc

    def _verified(self, payload: bytes, cls: type[M]) -> M:
        self._load_keys()
        try:
            envelope: Signed | None = Signed.decode(payload)
        except MessageError:
            envelope = None
        if envelope is None:
            if self._keys:
                raise SignatureError(f"unsigned {cls.kind} refused: the trusted root names "
                                     "command keys", reason="unsigned_command")
            msg = cls.decode(payload)  # a root without command keys (older fleets)
        else:
            inner = envelope.inner()
            signed = envelope.signed_bytes()  # the payload, or its batch's root
            good = set()
            known = False
            for entry in envelope.signatures:
                keyid = entry.get("keyid") if isinstance(entry, dict) else None
                key = self._keys.get(keyid) if isinstance(keyid, str) else None
                if key is None:
                    continue
                known = True
                try:
                    key.verify_signature(Signature.from_dict(dict(entry)), signed)
                except (UnverifiedSignatureError, KeyError, ValueError, TypeError):
                    continue
                good.add(key.keyid)  # a key counts once, however often it signed
            if len(good) < self._threshold:
                reason = "untrusted_signature" if known or not envelope.signatures else \
                    "unknown_command_key"
                raise SignatureError(f"{cls.kind}: {len(good)} valid signature(s) by command "
                                     f"keys, {self._threshold} needed", reason=reason)
            msg = cls.decode(inner)
        if msg.device and msg.device != self.device_id or (envelope and not msg.device):
            raise SignatureError(f"{cls.kind} is addressed to {msg.device!r}, not to "
                                 f"{self.device_id}", reason="wrong_device")
        return msg

    def _fresh(self, cmd: Command) -> None:
        now = self.clock.time()
        if cmd.expires_at < now or now - cmd.issued_at > self.max_age_s:
            raise ExpiredError(f"command {cmd.id} ({cmd.action}) has expired",
                               reason="expired_command")
        with self._lock:
            if cmd.id in self._seen:
                raise RollbackError(f"command {cmd.id} was already received",
                                    reason="replayed_command")
            self._seen = {k: v for k, v in self._seen.items() if v >= now}
            self._seen[cmd.id] = max(cmd.expires_at, cmd.issued_at + self.max_age_s)
            atomic_write(self.seen_path, json.dumps(self._seen).encode())

    def _load_seen(self) -> dict[str, float]:
        try:
            data = json.loads(self.seen_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}


class ControlInbox:
    """Routes verified control messages: desired states to the job runner, commands to
    their action. Runs on paho's thread.

    Args:
        guard: verifies each message.
        want: hands a desired state to the job runner.
        actions: what ``rollback`` and ``rebirth`` commands do.
        refresh_then: refreshes trust metadata off paho's thread, then calls back (a
            message signed by a command key the device's root does not name yet is
            retried once after that).
    """

    def __init__(self, guard: CommandGuard, *, want: Callable[[DesiredState], None],
                 actions: dict[str, Callable[[], Any]],
                 refresh_then: Callable[[Callable[[], None]], None]) -> None:
        self.guard = guard
        self._want = want
        self._actions = actions
        self._refresh_then = refresh_then

    def on_desired(self, payload: bytes, *, retry: bool = True) -> None:
        if payload:  # an empty payload clears a retained message
            desired = self._open(payload, DesiredState, retry)
            if desired is not None:
                self._want(desired)

    def on_cmd(self, payload: bytes, *, retry: bool = True) -> None:
        cmd = self._open(payload, Command, retry)
        if cmd is None:
            return
        if cmd.action == "deploy" and cmd.desired is not None:
            self._want(cmd.desired)
        elif cmd.action in self._actions:
            self._actions[cmd.action]()

    def _open(self, payload: bytes, cls: type[M], retry: bool) -> M | None:
        try:
            return self.guard.open(payload, cls)
        except TrustError as exc:
            log.warning("refused %s: %s", cls.kind, exc)
            if retry and exc.reason == "unknown_command_key":
                handler = self.on_cmd if cls is Command else self.on_desired
                self._refresh_then(lambda: handler(payload, retry=False))
            return None
