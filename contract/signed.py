"""Signed control messages: the envelope commands and desired states travel in.

The controller signs the exact payload bytes of a ``Command`` or ``DesiredState`` with
its command key(s) and publishes a ``Signed`` envelope; a device verifies the
signatures against the command keys its trusted TUF root names (under
``COMMAND_KEYS_FIELD``), then decodes the payload. Signing is done at the edges
(python-tuf's securesystemslib on both sides); this module only fixes the format.

Replay protection is in the payload, not the envelope: every command has a random
``id`` (the nonce), an ``expires_at`` and the ``device`` it is for, and devices keep
the ids they have seen until they expire.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any, ClassVar

from .errors import MessageError
from .messages import Message

__all__ = ["COMMAND_KEYS_FIELD", "Signed"]

# the root metadata field naming the command keys: {"keys": {keyid: key}, "threshold": n}
COMMAND_KEYS_FIELD = "x-edgefleet-command-keys"


@dataclasses.dataclass(frozen=True)
class Signed(Message):
    """``payload`` (base64 of the inner message's bytes) and signatures over those bytes."""

    kind: ClassVar[str] = "signed"
    payload: str
    signatures: list[dict[str, Any]]

    def inner(self) -> bytes:
        """The signed bytes.

        Raises:
            MessageError: the payload is not base64.
        """
        try:
            return base64.b64decode(self.payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MessageError(f"signed payload is not base64: {exc}") from exc
