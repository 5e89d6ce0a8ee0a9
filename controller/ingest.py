"""Ingest rules, pure: which summaries to store, which to hold back, which are repeats.

Summaries are keyed by ``(device, stream, seq)``. ``stream`` is the random id of the
device's telemetry buffer (``""`` from agents that predate it), so a re-provisioned
device counting from 1 again is a new stream, not a run of duplicates.

**Exactly once, in order, per stream.** The controller keeps each stream's highest
stored ``seq`` and stores a stream's summaries strictly in ``seq`` order:

* ``seq <= last``: a repeat (the agent did not get our ack). Acked, not stored.
* ``seq == last + 1``: stored and acked.
* ``seq > last + 1``: a gap. Held back: neither stored nor acked, so it stays in the
  device's buffer and comes again (agents resend unacked summaries oldest first, so
  the missing one arrives first). A gap still open ``gap_timeout_s`` after the first
  held-back arrival is given up on: its seqs are counted as lost and the summary is
  stored.
* A device that had to evict unsent summaries (its buffer was full) says so:
  ``buffer.evicted_through_seq`` = E means no unsent summary at or below E is left on
  it. Seqs up to E are then counted as lost at once, without waiting.

Summaries of a stream that arrive in the same ingest batch are judged in ``seq`` order.
A stream the controller has never seen starts at ``last = 0`` — except that a new
stream of a device whose legacy stream (``""``) ended at ``seq - 1`` continues it (an
agent that gained a stream id on upgrade keeps counting).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from edgefleet.contract import Summary

__all__ = ["StreamState", "Verdict", "admit", "encode_ack", "initial_state",
           "summary_fields"]

Action = Literal["store", "duplicate", "hold"]


@dataclasses.dataclass(frozen=True)
class StreamState:
    """Where a stream stands: its highest stored seq and an open gap's first sighting."""

    last_seq: int = 0
    gap_since: float | None = None


@dataclasses.dataclass(frozen=True)
class Verdict:
    action: Action
    state: StreamState
    lost: int = 0  # seqs given up on by this verdict (also when it holds back)


def initial_state(seq: int, *, stream: str, legacy_last: int | None) -> StreamState:
    """The state of a stream seen for the first time (see the module docstring)."""
    if stream and legacy_last is not None and seq == legacy_last + 1:
        return StreamState(last_seq=legacy_last)
    return StreamState()


def admit(state: StreamState, seq: int, *, now: float, gap_timeout_s: float,
          evicted_through: int | None = None) -> Verdict:
    """Judge one arriving summary of a stream (``evicted_through``: its buffer's
    ``evicted_through_seq``, if any)."""
    if seq <= state.last_seq:
        return Verdict("duplicate", state)
    lost = 0
    if evicted_through is not None and state.last_seq < evicted_through < seq:
        lost = evicted_through - state.last_seq  # gone from the device: never coming
        state = StreamState(last_seq=evicted_through)
    if seq == state.last_seq + 1:
        return Verdict("store", StreamState(last_seq=seq), lost=lost)
    since = state.gap_since if state.gap_since is not None else now
    if now - since >= gap_timeout_s:
        return Verdict("store", StreamState(last_seq=seq),
                       lost=lost + seq - state.last_seq - 1)
    return Verdict("hold", StreamState(last_seq=state.last_seq, gap_since=since), lost=lost)


# -- encoding ------------------------------------------------------------------------
_FIELDS = dataclasses.fields(Summary)


def summary_fields(summary: Summary) -> dict[str, Any]:
    """A summary as a (shallow) dict, without ``dataclasses.asdict``'s deep copy."""
    return {f.name: getattr(summary, f.name) for f in _FIELDS}



def encode_ack(seqs: list[int]) -> bytes:
    """``Ack(seqs=seqs).encode()``, without ``dataclasses.asdict`` (one per device and batch)."""
    return json.dumps({"seqs": [int(s) for s in seqs]}, separators=(",", ":")).encode()
