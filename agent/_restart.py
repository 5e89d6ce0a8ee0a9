"""Starting again: which installed model serves, and what becomes of a health window the
previous process stopped inside.

The active model is loaded, or the last known good one when the active one does not
load (it then becomes active). A health window the previous process died in is resumed
once; another restart inside it counts against the model (``max_trial_restarts``) and
rolls back to the last known good model. Every outcome is reported as the job's status.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Protocol

from edgefleet.contract import Clock, DesiredState, JobState, ModelError

from ._loaded import Loaded, Trial
from .health import HealthPolicy
from .models import InstalledModel, ModelStore

__all__ = ["Report", "Resumed", "resume"]

log = logging.getLogger(__name__)


class Report(Protocol):
    """Reports a job's state (``JobRunner.report``)."""

    def __call__(self, desired: DesiredState, state: str, *, reason: str = "",
                 detail: str = "") -> None: ...


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What serves after a start, and the health window that goes on (if any)."""

    active: Loaded | None
    trial: Trial | None = None


def resume(store: ModelStore, load: Callable[[InstalledModel], Loaded], clock: Clock,
           report: Report) -> Resumed:
    """Load the installed model and settle a health window left running (never raises for
    a model that does not load: the start goes on with what does)."""
    trial = store.read_trial()
    state = store.read_state()
    active: Loaded | None = None
    serving = ""
    for key in ("active", "last_good"):
        ref = state[key]
        installed = store.get(ref) if ref else None
        if installed is None:
            continue
        try:
            active = load(installed)
        except ModelError as exc:
            log.error("installed %s model %s cannot load: %s", key, ref, exc)
            continue
        if key == "last_good":
            store.rollback(failed=True)
        log.info("serving %s:%d", installed.manifest.name, installed.manifest.version)
        serving = key
        break
    if trial is None:
        return Resumed(active)
    if serving == "active" and active is not None:
        return _resume_trial(store, load, clock, report, trial, active)
    # the model on trial did not even load: it is not the one serving
    store.update_trial(None)
    report(DesiredState(**trial["desired"]), JobState.ROLLED_BACK, reason="load_failed",
           detail="the model on trial could not be loaded after a restart")
    return Resumed(active)


def _load_last_good(store: ModelStore,
                    load: Callable[[InstalledModel], Loaded]) -> Loaded | None:
    """The last known good model, loaded; None when there is none or it does not load
    (loaded before the switch is written, so a start never ends without a model)."""
    ref = store.read_state()["last_good"]
    installed = store.get(ref) if ref else None
    if installed is None:
        return None
    try:
        return load(installed)
    except ModelError as exc:
        log.error("last known good model %s cannot load: %s", ref, exc)
        return None


def _resume_trial(store: ModelStore, load: Callable[[InstalledModel], Loaded], clock: Clock,
                  report: Report, trial: dict[str, Any], active: Loaded) -> Resumed:
    """A restart inside a health window: resume it once, roll back if it repeats."""
    desired = DesiredState(**trial["desired"])
    policy = HealthPolicy.from_dict(desired.health)
    attempts = int(trial.get("attempts", 0)) + 1
    if attempts > policy.max_trial_restarts:
        detail = f"agent restarted {attempts} times inside the health window"
        previous = _load_last_good(store, load)
        if previous is None:  # the model on trial is all there is to serve
            store.commit()
            report(desired, JobState.FAILED, reason="crashed_during_health_window",
                   detail=detail + "; no last known good model that loads, still serving it")
            return Resumed(active)
        store.rollback(failed=True)
        report(desired, JobState.ROLLED_BACK, reason="crashed_during_health_window",
               detail=detail)
        return Resumed(previous)
    store.update_trial({**trial, "attempts": attempts})
    resumed = Trial(desired, policy, clock.time(), trial.get("baseline_p95"))
    report(desired, JobState.ACTIVATED, detail="agent restarted; health window starts again")
    return Resumed(active, resumed)
