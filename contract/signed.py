"""Signed control messages: the envelope commands and desired states travel in.

The controller signs the exact payload bytes of a ``Command`` or ``DesiredState`` with
its command key(s) and publishes a ``Signed`` envelope; a device verifies the
signatures against the command keys its trusted TUF root names (under
``COMMAND_KEYS_FIELD``), then decodes the payload. Signing is done at the edges
(python-tuf's securesystemslib on both sides); this module only fixes the format.

Replay protection is in the payload, not the envelope: every command has a random
``id`` (the nonce), an ``expires_at`` and the ``device`` it is for, and devices keep
the ids they have seen until they expire.

**Batches.** A wave sends a desired state to each of its devices, each payload its own
(it names its device). Signing them one by one was the largest part of a deploy's CPU.
A batch is signed once (``batch_leaves`` says what to sign): each payload's hash is a
leaf of a Merkle tree (leaves ``sha256(0x00 | payload)``, nodes ``sha256(0x01 | left |
right)``, padded to a power of two with ``sha256(0x02)``), and the signatures are over
``BATCH_DOMAIN`` and the root's hex. Each envelope carries its payload, its leaf's
index and the sibling hashes up to the root (``batch_path``, ~log2(n) of them), so the
device recomputes the root from the payload it got and checks the signatures over that:
a payload changed, or moved to another leaf, gives another root. Devices say in their
birth that they take such envelopes (``FEATURE_BATCH_SIGNED`` in ``Birth.features``);
the controller signs one by one for those that do not.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from typing import Any, ClassVar

from .errors import MessageError
from .messages import Message
from .topics import valid_sha256

__all__ = ["BATCH_DOMAIN", "COMMAND_KEYS_FIELD", "FEATURE_BATCH_SIGNED", "Signed",
           "batch_leaves"]

# the root metadata field naming the command keys: {"keys": {keyid: key}, "threshold": n}
COMMAND_KEYS_FIELD = "x-edgefleet-command-keys"
# what a batch's signatures sign: these bytes, then the Merkle root in hex
BATCH_DOMAIN = b"edgefleet-batch-v1\n"
# a device's birth lists this when its agent verifies batch-signed envelopes
FEATURE_BATCH_SIGNED = "batch-signed"
MAX_BATCH_DEPTH = 32  # 4 billion payloads: a longer path is refused unread
_EMPTY = hashlib.sha256(b"\x02").digest()  # the leaves that pad a batch


def _leaf(payload: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + payload).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def batch_leaves(payloads: list[bytes]) -> tuple[bytes, list[list[str]]]:
    """What signing ``payloads`` together takes: the bytes the keys sign, and each
    payload's ``batch_path`` (its ``batch_index`` is its position in ``payloads``).
    One payload is signed itself: an envelope without a path is one whose signatures
    are over its payload."""
    if len(payloads) < 2:
        raise ValueError(f"a batch needs at least two payloads, got {len(payloads)}")
    level = [_leaf(p) for p in payloads]
    level += [_EMPTY] * ((1 << (len(level) - 1).bit_length()) - len(level))
    paths: list[list[str]] = [[] for _ in payloads]
    at = list(range(len(payloads)))  # each payload's node on the current level
    while len(level) > 1:
        for i, pos in enumerate(at):
            paths[i].append(level[pos ^ 1].hex())
            at[i] = pos >> 1
        level = [_node(level[k], level[k + 1]) for k in range(0, len(level), 2)]
    return BATCH_DOMAIN + level[0].hex().encode(), paths


@dataclasses.dataclass(frozen=True)
class Signed(Message):
    """``payload`` (base64 of the inner message's bytes) and signatures over those bytes."""

    kind: ClassVar[str] = "signed"
    payload: str
    signatures: list[dict[str, Any]]
    # a batch-signed payload: its leaf's index and the sibling hashes from it up to the
    # root (empty: the signatures are over the payload itself)
    batch_index: int = 0
    batch_path: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.batch_path) > MAX_BATCH_DEPTH or not all(
                map(valid_sha256, self.batch_path)):
            raise ValueError(f"batch_path: at most {MAX_BATCH_DEPTH} sha256 (64 lowercase hex "
                             "digits)")
        if not 0 <= self.batch_index < (1 << len(self.batch_path)):
            raise ValueError(f"batch_index must be within 0..{(1 << len(self.batch_path)) - 1} "
                             f"for a path of {len(self.batch_path)}, got {self.batch_index}")

    def inner(self) -> bytes:
        """The payload's bytes: the inner message.

        Raises:
            MessageError: the payload is not base64.
        """
        try:
            return base64.b64decode(self.payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MessageError(f"signed payload is not base64: {exc}") from exc

    def signed_bytes(self) -> bytes:
        """What the signatures are over: the payload, or for a batch-signed one the
        batch's root as recomputed from this payload, its index and its path.

        Raises:
            MessageError: the payload is not base64.
        """
        inner = self.inner()
        if not self.batch_path:
            return inner
        node, at = _leaf(inner), self.batch_index
        for sibling in self.batch_path:
            other = bytes.fromhex(sibling)
            node = _node(other, node) if at & 1 else _node(node, other)
            at >>= 1
        return BATCH_DOMAIN + node.hex().encode()
