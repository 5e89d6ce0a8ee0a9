"""What a job does with a desired state, decided from what the device holds (pure).

Before anything is downloaded the job worker asks ``choose``: the model asked for may
be active already (its health window perhaps still running), shadowed already, shadowed
and now to be promoted, or installed earlier and ordered back (a rollback); otherwise
its bundle is downloaded and installed. ``blobs_to_take`` decides which broadcast files
such a download takes blocks of. ``JobRunner._apply`` (``_jobs.py``) gathers the facts
and carries the choice out.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection

from edgefleet.contract import DesiredState, ModelRef

__all__ = ["BlobPlan", "Choice", "Holdings", "blobs_to_take", "choose"]


class Choice(enum.Enum):
    """What to do with a desired state."""

    ALREADY_ACTIVE = "already_active"  # stop any shadow; the job is healthy
    HEALTH_WINDOW_RUNNING = "health_window_running"  # active, on trial: say activated
    ALREADY_SHADOWING = "already_shadowing"  # say shadowing
    PROMOTE_SHADOW = "promote_shadow"  # activate the shadowed candidate, already loaded
    SWITCH_TO_LOCAL = "switch_to_local"  # a rollback to a model still on disk
    INSTALL = "install"  # download, verify, install, smoke test, activate or shadow


@dataclasses.dataclass(frozen=True)
class Holdings:
    """What the device holds, as far as a desired state's choice depends on it.

    Attributes:
        active: the model served (``None``: none).
        shadow: the candidate shadowed (``None``: none).
        on_trial: whether the job's own health window is running.
        installed: whether a complete install of the model and version asked for is on
            disk.
    """

    active: ModelRef | None = None
    shadow: ModelRef | None = None
    on_trial: bool = False
    installed: bool = False


def _is(ref: ModelRef | None, d: DesiredState) -> bool:
    return ref is not None and (ref.name, ref.version) == (d.model, d.version)


def choose(d: DesiredState, held: Holdings) -> Choice:
    """The first that applies, in this order:

    ============================================  ====================================
    desired state and holdings                    choice
    ============================================  ====================================
    ``active`` mode, the model is active          ``HEALTH_WINDOW_RUNNING`` while the
                                                  job is on trial, else
                                                  ``ALREADY_ACTIVE``
    ``shadow`` mode, the model is shadowed        ``ALREADY_SHADOWING``
    ``active`` mode, the model is shadowed        ``PROMOTE_SHADOW``
    ``allow_downgrade``, the model is installed   ``SWITCH_TO_LOCAL``
    anything else                                 ``INSTALL``
    ============================================  ====================================

    A model is the one asked for when its name and version are (its sha256 is not
    compared).
    """
    if d.mode == "active" and _is(held.active, d):
        return Choice.HEALTH_WINDOW_RUNNING if held.on_trial else Choice.ALREADY_ACTIVE
    if d.mode == "shadow" and _is(held.shadow, d):
        return Choice.ALREADY_SHADOWING
    if d.mode == "active" and _is(held.shadow, d):
        return Choice.PROMOTE_SHADOW
    if d.allow_downgrade and held.installed:
        return Choice.SWITCH_TO_LOCAL
    return Choice.INSTALL


@dataclasses.dataclass(frozen=True)
class BlobPlan:
    """Which broadcast files a download takes blocks of.

    Attributes:
        take: sha256 of the files to subscribe to, the metadata first (asked for first,
            and the broker sends retained blocks in the order of the subscriptions).
        named: metadata files the desired state names by sha256 (empty: pull them all).
    """

    take: list[str]
    named: dict[str, str]


def blobs_to_take(d: DesiredState, *, pulls_only: bool,
                  held: Collection[str] = ()) -> BlobPlan:
    """The broadcast files of ``d`` worth taking blocks of.

    Args:
        pulls_only: the device takes no broadcast blocks (it fetches over HTTP(S), or
            paces itself for a metered link).
        held: sha256 of files the device holds already (copied, not taken from anywhere).
    """
    if pulls_only:
        return BlobPlan([], {})
    files = [sha for sha in d.broadcast if sha not in held]
    named = dict(d.metadata) if d.broadcast else {}
    return BlobPlan([sha for sha in named.values() if sha not in files] + files, named)
