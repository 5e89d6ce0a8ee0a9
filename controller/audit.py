"""The audit log's hash chain, pure: hashing entries and verifying a chain against anchors.

Each entry is ``{seq, ts, actor, action, target, detail, prev_hash, hash}`` with
``seq`` counting from 1, ``prev_hash`` the previous entry's ``hash`` (``GENESIS``
for the first) and ``hash = sha256(prev_hash + canonical JSON of the other fields)``.
Changing, removing, inserting or reordering entries breaks the chain at that point.

Removing the *last* entries leaves a valid but shorter chain, so verification also
takes anchors: heads recorded elsewhere (the store's head row, a file in the data
directory, the running controller's memory). An anchor either must be the chain's end
(``exact``) or must be contained in the chain (a copy that may lag behind).

The chain has no secret: someone who can rewrite the whole table *and* every anchor
can forge a consistent history. Keep a copy of the head off the machine for that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["FIELDS", "GENESIS", "Anchor", "Verification", "canonical", "chain_entry",
           "entry_hash", "normalize", "verify_chain"]

GENESIS = "0" * 64
FIELDS = ("seq", "ts", "actor", "action", "target", "detail", "prev_hash")


def normalize(detail: Mapping[str, Any]) -> dict[str, Any]:
    """``detail`` as it reads back from JSON storage (tuples → lists, keys → str…)."""
    return json.loads(json.dumps(dict(detail), default=str, allow_nan=False))  # type: ignore[no-any-return]


def canonical(entry: Mapping[str, Any]) -> str:
    """The hashed form of an entry: its ``FIELDS`` as sorted, compact JSON."""
    return json.dumps({k: entry[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256((entry["prev_hash"] + canonical(entry)).encode()).hexdigest()


def chain_entry(prev_seq: int, prev_hash: str, *, ts: float, actor: str, action: str,
                target: str, detail: Mapping[str, Any]) -> dict[str, Any]:
    """The entry that follows ``(prev_seq, prev_hash)`` (``(0, GENESIS)`` to start)."""
    entry: dict[str, Any] = {"seq": prev_seq + 1, "ts": float(ts), "actor": actor,
                             "action": action, "target": target, "detail": normalize(detail),
                             "prev_hash": prev_hash}
    entry["hash"] = entry_hash(entry)
    return entry


@dataclasses.dataclass(frozen=True)
class Anchor:
    """A head recorded outside the chain: ``exact`` ones must be its last entry."""

    name: str
    seq: int
    hash: str
    exact: bool = False


@dataclasses.dataclass(frozen=True)
class Verification:
    """The outcome: ``first_bad_seq`` is the first entry that is wrong or missing."""

    ok: bool
    entries: int
    head_seq: int
    first_bad_seq: int | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verify_chain(entries: Iterable[Mapping[str, Any]],
                 anchors: Sequence[Anchor] = ()) -> Verification:
    """Check entries (in the order given, meant to be by ``seq``) and the anchors.

    Stops at the first problem. ``entries`` may be a generator paging through a table.
    """
    count, last_seq, last_hash = 0, 0, GENESIS
    pending = {a.seq: a for a in anchors if a.seq > 0}

    def bad(seq: int, reason: str) -> Verification:
        return Verification(False, count, last_seq, seq, reason)

    for e in entries:
        seq = e["seq"]
        if seq != last_seq + 1:
            if seq > last_seq + 1:
                gap = (f"entry {last_seq + 1} is" if seq == last_seq + 2
                       else f"entries {last_seq + 1}..{seq - 1} are")
                return bad(last_seq + 1, f"{gap} missing (deleted or reordered): entry "
                                         f"{last_seq} is followed by entry {seq}")
            return bad(seq, f"entry {seq} comes after entry {last_seq} (reordered or "
                            "duplicated)")
        if entry_hash(e) != e["hash"]:
            return bad(seq, f"entry {seq} was modified: its hash does not match its content")
        if e["prev_hash"] != last_hash:
            return bad(seq, f"entry {seq} does not link to entry {last_seq} (an entry was "
                            "replaced or the chain rewritten)")
        anchor = pending.pop(seq, None)
        if anchor is not None and anchor.hash != e["hash"]:
            return bad(seq, f"entry {seq} differs from the {anchor.name}, which recorded a "
                            "different hash for it (the chain was rewritten)")
        count, last_seq, last_hash = count + 1, seq, e["hash"]
    for anchor in sorted(anchors, key=lambda a: a.seq):
        if anchor.seq > last_seq:
            return bad(last_seq + 1, f"the log ends at entry {last_seq} but the {anchor.name} "
                                     f"records entry {anchor.seq}: the last entries were "
                                     "deleted")
        if anchor.seq == 0 and anchor.hash != GENESIS:
            return bad(1, f"the {anchor.name} is malformed")
        if anchor.exact and anchor.seq < last_seq:
            return bad(anchor.seq + 1, f"the log continues past the {anchor.name} (entry "
                                       f"{anchor.seq}): entries {anchor.seq + 1}..{last_seq} "
                                       "were added outside the controller")
    return Verification(True, count, last_seq)
