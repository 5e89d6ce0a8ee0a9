"""The rollout orchestrator: drives deployments from the store, one tick at a time.

Each tick reads every active deployment from the store, asks the pure rules in
``rollout`` what to do and does it (publish desired states, record events, change
state). All of a deployment's progress lives in the store, so a controller killed at
any point carries on where it was when it starts again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from edgefleet.contract import Clock, DesiredState, EdgefleetError, SystemClock

from ._cohorts import CohortFigures
from ._views import describe
from .auth import approval_refusal
from .lease import Lease
from .rollout import (
    ACTIONS,
    ACTIVE,
    JOB_DONE,
    JOB_SETTLED,
    WAVE_STRATEGIES,
    RolloutPolicy,
    action_applies,
    evaluate_shadow,
    evaluate_wave,
    plan_deployment,
)
from .store import Store

__all__ = ["ACTIVE", "Orchestrator", "describe"]

log = logging.getLogger(__name__)
DRIVEN = tuple(s for s in ACTIVE if s != "pending_approval")
# sends each (device, desired state) of a batch
Publish = Callable[[list[tuple[str, DesiredState]]], None]
# (model, version, devices) -> each device's bundle (its manifest path)
ManifestsFor = Callable[[str, int, list[str]], dict[str, str]]


class Orchestrator:
    """Creates deployments and moves them forward.

    Args:
        store: the controller store.
        publish: sends devices their desired states (signed, retained).
        manifest_for: ``(model, version, device)`` → the manifest path of the bundle that
            device gets (its class's variant or the default), signed if needed.
        clock: time source (wave timeouts, durations).
        lease: leadership among replicas: only the leader steps deployments; any
            replica creates them and applies operators' actions, each under a lock on
            the deployment that all replicas share (``None``: a single controller).
    """

    def __init__(self, store: Store, publish: Publish,
                 manifests_for: ManifestsFor, *,
                 clock: Clock | None = None, lease: Lease | None = None) -> None:
        self.store = store
        self._publish = publish
        self._manifests_for = manifests_for
        self.clock = clock or SystemClock()
        self.lock = threading.RLock()
        self.lease = lease
        self.figures = CohortFigures(store, self.clock)

    @property
    def leading(self) -> bool:
        """Whether this replica steps deployments (always, without a lease)."""
        return self.lease is None or self.lease.held

    @contextlib.contextmanager
    def _exclusive(self, dep_id: str) -> Iterator[None]:
        """This process's lock, then the replicas' lock on one deployment."""
        with self.lock:
            if self.lease is None:
                yield
            else:
                with self.lease.exclusive(f"deployment:{dep_id}"):
                    yield

    # -- creation -----------------------------------------------------------------------
    def create(self, dep_id: str, model: str, version: int, targets: list[str],
               policy: RolloutPolicy, created_by: str, *,
               needs_approval: Sequence[str] = ()) -> dict[str, Any]:
        """Store a deployment and step it (``needs_approval``: production targets; waits)."""
        running = self._running()
        plan, rows = plan_deployment(dep_id, targets, policy, running)
        if needs_approval:
            plan["approval"] = {"production_devices": list(needs_approval)}
        with self._exclusive(dep_id):
            self.store.add_deployment(dep_id, model, version, strategy=policy.strategy,
                                      policy=policy.to_dict(), plan=plan, targets=rows,
                                      created_by=created_by,
                                      state="pending_approval" if needs_approval else "running")
            self.store.add_event(dep_id, "created", created_by, strategy=policy.strategy,
                                 targets=len(targets), model=model, version=version)
            if needs_approval:
                self.store.add_event(dep_id, "approval_requested", created_by,
                                     production_devices=list(needs_approval)[:20])
            if self.leading:  # else the leader's next tick starts it
                self.tick_one(dep_id)
        return self.store.get_deployment(dep_id)

    # -- sending ------------------------------------------------------------------------
    def _send(self, dep: dict[str, Any], devices: list[str], *, job: str, model: str,
              version: int, policy: RolloutPolicy, mode: str = "active",
              downgrade: bool = False, state: str = "pending") -> None:
        desired = DesiredState(deployment=dep["id"], job=job, model=model, version=version,
                               manifest="",
                               issued_at=self.clock.time(), mode=mode,
                               allow_downgrade=downgrade, health=policy.device_health(),
                               shadow_sample=policy.sample if mode == "shadow" else 0.0,
                               births_in_status=True)
        current = {row["device"]: row for row in self._jobs(dep)}
        # every device's bundle first (signed on first use): a bundle that cannot be made
        # fails before anything is sent
        manifests = self._manifests_for(model, version, devices)
        fields: dict[str, Any] = {"job": job, "state": state, "progress": {}}
        if not downgrade:  # a rollback keeps the reason the device failed with
            fields.update(reason="", detail="")
        # a re-send keeps what we know
        not_on_job = [device for device in devices
                     if (current.get(device) or {}).get("job") != job]
        self.store.update_jobs(dep["id"], not_on_job, **fields)
        # one state per bundle, shared by its devices (the device is filled in as sent)
        per_bundle = {m: dataclasses.replace(desired, manifest=m)
                      for m in set(manifests.values())}
        self._publish([(device, per_bundle[manifests[device]]) for device in devices])

    def _revert(self, dep: dict[str, Any], devices: list[str], policy: RolloutPolicy,
                actor: str, reason: str, final: str) -> None:
        """Send devices back to the version they ran before this deployment."""
        jobs = self._jobs_by_device(dep)
        by_version: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
        for device in devices:
            row = jobs[device]
            if row["from_model"] and row["from_version"]:
                by_version[(row["from_model"], row["from_version"])].append(device)
            else:
                self.store.update_job(dep["id"], device, state="no_previous",
                                      reason="nothing to roll back to")
        quiet = RolloutPolicy.from_dict({**policy.to_dict(), "health_window_s": 0.0})
        for (model, version), on_version in by_version.items():
            self._send(dep, on_version, job=f"{dep['id']}.rb", model=model, version=version,
                       policy=quiet, downgrade=True, state="reverting")
        self._set(dep, "rolling_back", actor, "rollback_started", phase="rollback",
                  devices=sorted(devices), reason=reason, final=final)

    def _set(self, dep: dict[str, Any], state: str, actor: str, event: str, *,
             phase: str | None = None, **detail: Any) -> None:
        now = self.clock.time()
        values: dict[str, Any] = {"state": state}
        if phase is not None:
            values.update(phase=phase, phase_started_at=now)
        result = dict(dep.get("result") or {})
        for key in ("final", "reason", "paused_at", "breached_wave"):
            if key in detail:
                result[key] = detail[key]
        values["result"] = result
        self.store.update_with_event(dep["id"], values, event, actor, state=state, **detail)
        dep.update(values)

    # -- ticking ------------------------------------------------------------------------
    def tick(self) -> None:
        """Move every active deployment forward (called periodically)."""
        for dep in self.store.list_deployments(DRIVEN):
            try:
                with self._exclusive(dep["id"]):
                    self.tick_one(dep["id"])
            except Exception:
                log.exception("rollout step for %s failed", dep["id"])

    def tick_one(self, dep_id: str) -> None:
        # a step that only judges a wave reads how many jobs are in each state; its rows
        # (thousands, every tick) are read when a step needs them (``_jobs``)
        dep = self.store.get_deployment(dep_id, with_jobs=False)
        policy = RolloutPolicy.from_dict(dep["policy"] or {})
        state = dep["state"]
        if state == "running":
            if dep["strategy"] in WAVE_STRATEGIES:
                self._step_waves(dep, policy)
            elif dep["strategy"] == "shadow":
                self._step_shadow(dep, policy)
            else:
                self._step_ab(dep, policy)
        elif state in ("promoting", "rolling_back"):
            self._step_finish(dep, policy)

    def _jobs(self, dep: dict[str, Any]) -> list[dict[str, Any]]:
        """The deployment's job rows (what a step reads of them), read once per step."""
        if "jobs" not in dep:
            dep["jobs"] = self.store.get_deployment(dep["id"], brief_jobs=True)["jobs"]
        return dep["jobs"]  # type: ignore[no-any-return]

    def _running(self) -> dict[str, dict[str, Any]]:
        """What each known device runs now (its active model; empty when none)."""
        return {device["id"]: device.get("active") or {}
                for device in self.store.list_devices(("id", "active"))}

    def _jobs_by_device(self, dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {row["device"]: row for row in self._jobs(dep)}

    def _wave_devices(self, dep: dict[str, Any], wave: int) -> list[str]:
        return list(dep["plan"]["waves"][wave])

    def _start_wave(self, dep: dict[str, Any], policy: RolloutPolicy, wave: int) -> None:
        devices = self._wave_devices(dep, wave)
        try:
            self._send(dep, devices, job=dep["id"], model=dep["model"],
                       version=dep["version"], policy=policy)
        except EdgefleetError as exc:  # a bundle (a class's variant) that cannot be signed
            log.error("deployment %s: wave %d not started: %s", dep["id"], wave, exc)
            self._set(dep, "failed", "orchestrator", "bundle_failed", phase="done", wave=wave,
                      reason=f"the bundle for wave {wave} cannot be made: {exc}", final="failed")
            return
        self.store.update_with_event(
            dep["id"], {"wave": wave, "phase": "waves", "phase_started_at": self.clock.time()},
            "wave_started", "orchestrator", wave=wave, devices=len(devices))

    def _step_waves(self, dep: dict[str, Any], policy: RolloutPolicy) -> None:
        wave = dep["wave"]
        if wave < 0:
            self._start_wave(dep, policy, 0)
            return
        waves = dep["plan"]["waves"]
        cohort = self._wave_devices(dep, wave)
        later = [device for group in waves[wave + 1:] for device in group]
        now = self.clock.time()
        counts = self.store.job_counts(dep["id"], wave=wave)
        new, base = self.figures.wave(dep, policy, lambda: self._jobs_by_device(dep), cohort,
                                      later)
        decision = evaluate_wave(counts, started_at=dep["phase_started_at"], now=now,
                                 policy=policy, new=new, base=base)
        result = dict(dep.get("result") or {})
        result.setdefault("waves", {})[str(wave)] = {"outcome": decision.outcome,
                                                    "counts": decision.counts,
                                                    "detail": decision.detail}
        result["metrics"] = {"new": new.__dict__, "base": base.__dict__}
        self.store.update_deployment(dep["id"], result=result)
        dep["result"] = result
        if decision.outcome == "running":
            return
        if now - dep["phase_started_at"] >= policy.wave_timeout_s:
            self._mark_silent(dep, {row["device"]: row["state"] for row in self._jobs(dep)
                                    if row["wave"] == wave}, now, policy)
        if decision.outcome == "passed":
            self.store.add_event(dep["id"], "wave_passed", "orchestrator", wave=wave,
                                 detail=decision.detail, **decision.counts)
            if wave + 1 < len(waves):
                self._start_wave(dep, policy, wave + 1)
            else:
                self._set(dep, "succeeded", "orchestrator", "succeeded", phase="done")
            return
        self.store.add_event(dep["id"], "wave_breached", "orchestrator", wave=wave,
                             reason=decision.reason, detail=decision.detail, **decision.counts)
        touched = [device for group in waves[:wave + 1] for device in group]
        self._breach(dep, policy, decision.reason, touched)

    def _breach(self, dep: dict[str, Any], policy: RolloutPolicy, reason: str,
                touched: list[str]) -> None:
        if policy.on_breach == "pause":
            self._set(dep, "paused", "orchestrator", "paused", reason=reason,
                      paused_at=self.clock.time(),
                      breached_wave=dep["wave"] if dep["strategy"] in WAVE_STRATEGIES else None)
        elif policy.on_breach == "abort":
            self._hold(dep, policy)
            self._set(dep, "aborted", "orchestrator", "aborted", phase="done", reason=reason)
        else:
            self._revert(dep, touched, policy, "orchestrator", reason, final="rolled_back")

    def _mark_silent(self, dep: dict[str, Any], states: dict[str, str], now: float,
                     policy: RolloutPolicy) -> None:
        if now - dep["phase_started_at"] < policy.wave_timeout_s:
            return
        for device, s in states.items():
            if s not in JOB_SETTLED:  # and still not, when stored: a status that lands
                # between the read and this write keeps what the device said
                self.store.update_job(dep["id"], device, state="timed_out",
                                      unless_states=JOB_SETTLED,
                                      reason=f"silent_{policy.silent}",
                                      detail=f"no answer within {policy.wave_timeout_s:.0f}s")

    def _step_shadow(self, dep: dict[str, Any], policy: RolloutPolicy) -> None:
        targets = list(dep["plan"]["targets"])
        if dep["phase"] == "start":
            self._send(dep, targets, job=dep["id"], model=dep["model"], version=dep["version"],
                       policy=policy, mode="shadow")
            self._set(dep, "running", "orchestrator", "shadow_started", phase="shadow",
                      devices=len(targets), sample=policy.sample)
            return
        shadow_figures = self.store.shadow_metrics(targets, dep["model"], dep["version"],
                                      dep["phase_started_at"])
        decision = evaluate_shadow(shadow_figures, started_at=dep["phase_started_at"],
                                   now=self.clock.time(), policy=policy)
        result = dict(dep.get("result") or {})
        samples = shadow_figures.samples
        result["shadow"] = {"samples": samples, "agreement": shadow_figures.agreement,
                            "latency_ratio": shadow_figures.latency_ratio,
                            "mean_distance": shadow_figures.distance_sum / samples
                            if samples else None}
        self.store.update_deployment(dep["id"], result=result)
        dep["result"] = result
        if decision.outcome == "running":
            return
        if decision.outcome == "promote" and policy.auto_promote:
            self._promote(dep, policy, targets, "orchestrator", decision.detail)
        elif decision.outcome == "promote":
            self._set(dep, "awaiting_decision", "orchestrator", "shadow_passed",
                      detail=decision.detail)
        else:
            self._stop_shadow(dep, policy, targets)
            self._set(dep, "rejected", "orchestrator", "shadow_rejected", phase="done",
                      reason=decision.reason, detail=decision.detail)

    def _stop_shadow(self, dep: dict[str, Any], policy: RolloutPolicy,
                     devices: list[str]) -> None:
        # "stop shadowing" is "run what you run now": the device keeps its active model
        running = self._running()
        jobs = self._jobs_by_device(dep)
        for device in devices:
            now_on = running.get(device) or {}
            model = now_on.get("name") or jobs[device]["from_model"]
            version = now_on.get("version") or jobs[device]["from_version"]
            if model and version:
                self._send(dep, [device], job=f"{dep['id']}.s", model=model, version=version,
                           policy=policy, state="stopping_shadow")
            else:
                self.store.update_job(dep["id"], device, state="shadow_stopped",
                                      reason="no active model")

    def _hold(self, dep: dict[str, Any], policy: RolloutPolicy) -> None:
        """On abort: devices whose job has not finished are told to keep what they run."""
        running = self._running()
        for row in self._jobs(dep):
            now_on = running.get(row["device"]) or {}
            if not row["job"] or row["state"] in JOB_DONE or not now_on.get("version"):
                continue
            self._send(dep, [row["device"]], job=f"{dep['id']}.a", model=now_on["name"],
                       version=now_on["version"], policy=policy, downgrade=True, state="held")

    def _promote(self, dep: dict[str, Any], policy: RolloutPolicy, devices: list[str],
                 actor: str, detail: str = "") -> None:
        self._send(dep, devices, job=f"{dep['id']}.p", model=dep["model"],
                   version=dep["version"], policy=policy)
        self._set(dep, "promoting", actor, "promotion_started", phase="promote",
                  devices=len(devices), detail=detail, final="succeeded")

    def _step_ab(self, dep: dict[str, Any], policy: RolloutPolicy) -> None:
        arms = dep["plan"]["arms"]
        if dep["phase"] == "start":
            self._send(dep, arms["new"], job=dep["id"], model=dep["model"],
                       version=dep["version"], policy=policy)
            for device in arms["control"]:
                self.store.update_job(dep["id"], device, state="control")
            self._set(dep, "running", "orchestrator", "ab_started", phase="ab",
                      new=len(arms["new"]), control=len(arms["control"]))
            return
        now = self.clock.time()
        counts = self.store.job_counts(dep["id"], arm="new")
        new, base = self.figures.compare(dep, self._jobs_by_device(dep), arms["new"],
                                         arms["control"], dep["phase_started_at"])
        decision = evaluate_wave(counts, started_at=dep["phase_started_at"], now=now,
                                 policy=policy, new=new, base=base)
        result = dict(dep.get("result") or {})
        result["arms"] = self.arm_metrics(dep)
        self.store.update_deployment(dep["id"], result=result)
        dep["result"] = result
        if decision.outcome == "breached":
            self.store.add_event(dep["id"], "arm_breached", "orchestrator",
                                 reason=decision.reason, detail=decision.detail)
            self._breach(dep, policy, decision.reason, arms["new"])
        elif decision.outcome == "passed" and now - dep["phase_started_at"] >= policy.duration_s:
            self._set(dep, "awaiting_decision", "orchestrator", "ab_ready",
                      detail="arms compared; promote or drop")

    def arm_metrics(self, dep: dict[str, Any]) -> dict[str, Any]:
        """Per-arm figures since the A/B started (inferences, errors, p95, versions)."""
        return self.figures.arms(dep, self._jobs_by_device(dep))

    def _step_finish(self, dep: dict[str, Any], policy: RolloutPolicy) -> None:
        """Promotion or rollback: done when every sent device answered or timed out."""
        job_suffix = ".p" if dep["state"] == "promoting" else ".rb"
        sent = [row for row in self._jobs(dep) if (row["job"] or "").endswith(job_suffix)]
        timed_out = self.clock.time() - dep["phase_started_at"] >= policy.wave_timeout_s
        if all(row["state"] in JOB_DONE for row in sent) or timed_out:
            final = (dep.get("result") or {}).get("final", "succeeded")
            bad = sum(row["state"] in ("failed", "rolled_back", "revert_failed") or
                      row["state"] not in JOB_DONE for row in sent)
            if dep["state"] == "promoting" and sent and bad / len(sent) > policy.max_failure_rate:
                final = "failed"  # the promotion itself breached
            self._set(dep, final, "orchestrator", final, phase="done",
                      answered=sum(row["state"] in JOB_DONE for row in sent), sent=len(sent),
                      failed=bad)

    # -- operator actions ---------------------------------------------------------------
    def act(self, dep_id: str, action: str, actor: str) -> dict[str, Any]:
        """pause | resume | abort | rollback | promote | drop | approve.

        Raises:
            NotFoundError: unknown deployment.
            RegistryError: the action does not apply in the deployment's state, or
                (``four_eyes``) its creator tries to approve it.
        """
        from edgefleet.contract import RegistryError

        with self._exclusive(dep_id):
            dep = self.store.get_deployment(dep_id)
            policy = RolloutPolicy.from_dict(dep["policy"] or {})
            state, strategy = dep["state"], dep["strategy"]

            if action not in ACTIONS:
                raise ValueError(f"unknown action {action!r}")
            if not action_applies(action, strategy, state):
                raise RegistryError(f"cannot {action} a {strategy} deployment that is {state}",
                                    reason="invalid_transition")
            if action == "pause":
                self._set(dep, "paused", actor, "paused", paused_at=self.clock.time())
            elif action == "resume":
                result = dict(dep.get("result") or {})
                breached_wave = result.pop("breached_wave", None)
                paused_for = self.clock.time() - float(result.pop("paused_at",
                                                                  self.clock.time()))
                result.pop("reason", None)
                # the pause does not count against the wave's timeout
                self.store.update_deployment(dep_id, result=result,
                                             phase_started_at=(dep["phase_started_at"] or 0)
                                             + paused_for)
                dep.update(result=result)
                self._set(dep, "running", actor, "resumed")
                if breached_wave is not None and strategy in WAVE_STRATEGIES:
                    nxt = breached_wave + 1  # the operator accepts the breached wave
                    if nxt < len(dep["plan"]["waves"]):
                        self._start_wave(dep, policy, nxt)
                    else:
                        self._set(dep, "succeeded", actor, "succeeded", phase="done")
            elif action == "abort":
                self._hold(dep, policy)
                self._set(dep, "aborted", actor, "aborted", phase="done")
            elif action == "approve":
                why = approval_refusal(dep["created_by"], actor)
                if why:
                    raise RegistryError(why, reason="four_eyes")
                now = self.clock.time()  # the wait for approval counts against no timeout
                self.store.update_deployment(dep_id, approved_by=actor, approved_at=now,
                                             phase_started_at=now)
                self._set(dep, "running", actor, "approved")
                if self.leading:
                    self.tick_one(dep_id)
            elif action == "rollback":
                touched = [row["device"] for row in self._jobs(dep)
                           if row["job"] and row["state"] not in ("control",)]
                self._revert(dep, touched, policy, actor, "operator", final="rolled_back")
            elif action == "promote":
                devices = dep["plan"]["targets"] if strategy == "shadow" else \
                    dep["plan"]["arms"]["control"]
                self._promote(dep, policy, list(devices), actor)
            elif action == "drop":
                if strategy == "shadow":
                    self._stop_shadow(dep, policy, list(dep["plan"]["targets"]))
                    self._set(dep, "dropped", actor, "dropped", phase="done")
                else:
                    self._revert(dep, list(dep["plan"]["arms"]["new"]), policy, actor,
                                 "dropped", final="dropped")
            return self.store.get_deployment(dep_id, with_events=True)

    def run(self, stop: threading.Event, interval_s: float = 0.5,
            on_lead: Callable[[], None] | None = None) -> None:
        """Tick every ``interval_s`` while this replica leads (taking the lease when free);
        ``on_lead`` runs each time this replica becomes the leader, before its first tick."""
        leading = False
        while not stop.wait(interval_s):
            if self.lease is not None:
                now_leading = self.lease.acquire()
                if now_leading and not leading and on_lead is not None:
                    try:
                        on_lead()
                    except Exception:
                        log.exception("taking over as leader failed; trying again")
                        continue
                leading = now_leading
                if not leading:
                    continue
            self.tick()
