"""The fleet controller: registry, deployments, device state and telemetry ingest.

``FleetController`` owns the store, the TUF repository and the MQTT link. Device
messages arrive on paho's thread through ``handle``; API calls arrive on FastAPI's
workers. Decisions (which devices a deployment targets, a deployment's state from its
jobs) are small pure functions below.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

from edgefleet.contract import (
    Ack,
    Birth,
    ChunkResponse,
    Clock,
    Command,
    Death,
    DesiredState,
    DeviceTopic,
    FetchRequest,
    JobState,
    JobStatus,
    MessageError,
    NotFoundError,
    Summary,
    SystemClock,
)
from edgefleet.contract.topics import valid_device_id

from ._mqtt import ControllerLink
from .registry import Registry
from .settings import Settings
from .signing import TrustRepository
from .store import Store

__all__ = ["FleetController", "deployment_state", "select_devices"]

log = logging.getLogger(__name__)


def select_devices(devices: list[dict[str, Any]], *, ids: list[str] | None,
                   selector: dict[str, str] | None) -> list[str]:
    """Target device ids: explicit ids (known or not yet seen) plus tag matches."""
    chosen = set(ids or [])
    if selector:
        for d in devices:
            tags = d.get("tags") or {}
            if all(tags.get(k) == v for k, v in selector.items()):
                chosen.add(d["id"])
    elif ids is None:
        chosen.update(d["id"] for d in devices)
    return sorted(chosen)


def deployment_state(job_states: list[str]) -> str:
    """``running`` until every job is terminal, then ``succeeded``/``failed``/``partial``."""
    if not job_states or any(s not in JobState.TERMINAL for s in job_states):
        return "running"
    healthy = sum(s == JobState.HEALTHY for s in job_states)
    if healthy == len(job_states):
        return "succeeded"
    return "failed" if healthy == 0 else "partial"


class FleetController:
    """Everything the controller does, behind the HTTP API and the CLI.

    Args:
        settings: controller settings.
        clock: time source for command expiry.
    """

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.db_url)
        self.repo = TrustRepository(settings.data_dir / "repo", settings.keys_dir,
                                    clock=self.clock)
        self.registry = Registry(self.store, self.repo, settings.data_dir / "models")
        self.broker: Any = None
        self.link: ControllerLink | None = None
        self.broker_url = settings.broker_url
        self.counters = {"summaries_stored": 0, "summaries_duplicate": 0, "chunks_served": 0,
                         "malformed": 0}
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def start(self) -> None:
        """Start the embedded broker if no broker URL was given, then connect.

        Raises:
            TransportError: the broker cannot be started or reached.
        """
        if self.broker_url is None:
            from .broker import EmbeddedBroker

            self.broker = EmbeddedBroker()
            self.broker.start()
            self.broker_url = self.broker.url
        self.link = ControllerLink(self.broker_url, self.settings.client_id, self.handle)
        self.link.start()
        self._refresher = threading.Thread(target=self._refresh_loop, name="trust-refresh",
                                           daemon=True)
        self._refresher.start()

    def stop(self) -> None:
        self._stop.set()
        if self.link is not None:
            self.link.stop()
        if self.broker is not None:
            self.broker.stop()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.settings.trust_refresh_interval_s):
            try:
                self.repo.refresh()
            except Exception:
                log.exception("re-signing trust metadata failed")

    # -- device messages (paho's thread) -----------------------------------------------
    def handle(self, device: str, suffix: str, payload: bytes) -> None:
        """Dispatch one device message; raises ``MessageError`` for a malformed one."""
        if suffix == DeviceTopic.FETCH_REQ:
            self._on_fetch(device, FetchRequest.decode(payload))
        elif suffix == DeviceTopic.TELEMETRY:
            self._on_summary(device, Summary.decode(payload))
        elif suffix == DeviceTopic.BIRTH:
            self._on_birth(device, Birth.decode(payload))
        elif suffix == DeviceTopic.DEATH:
            self.store.mark_offline(device, Death.decode(payload).bd_seq)
        elif suffix.startswith("job/") and suffix.endswith("/status"):
            self._on_status(device, JobStatus.decode(payload))
        else:
            raise MessageError(f"unexpected topic suffix {suffix!r}")

    def _on_birth(self, device: str, birth: Birth) -> None:
        hw = dict(birth.hw)
        tags = hw.pop("tags", {}) if isinstance(hw.get("tags"), dict) else {}
        self.store.upsert_device(
            device, online=True, bd_seq=birth.bd_seq, last_seen=time.time(),
            agent_version=birth.agent_version, hw=hw, tags=tags, api_url=birth.api_url,
            active=birth.active.to_dict() if birth.active else None,
            last_good=birth.last_good.to_dict() if birth.last_good else None)

    def _on_status(self, device: str, status: JobStatus) -> None:
        fields: dict[str, Any] = {"state": status.state, "reason": status.reason,
                                  "detail": status.detail}
        if status.progress:
            fields["progress"] = status.progress
        if not self.store.update_job(status.deployment, device, **fields):
            log.info("status for unknown job %s on %s ignored", status.deployment, device)
            return
        dep = self.store.get_deployment(status.deployment)
        state = deployment_state([j["state"] for j in dep["jobs"]])
        if state != dep["state"]:
            self.store.set_deployment_state(status.deployment, state)

    def _on_summary(self, device: str, summary: Summary) -> None:
        if self.store.add_summary(device, summary.to_dict()):
            self.counters["summaries_stored"] += 1
        else:
            self.counters["summaries_duplicate"] += 1
        self.store.upsert_device(device, last_seen=time.time())
        assert self.link is not None
        self.link.publish(device, DeviceTopic.TELEMETRY_ACK, Ack(seqs=[summary.seq]).encode())

    def _on_fetch(self, device: str, req: FetchRequest) -> None:
        assert self.link is not None
        try:
            data, total = self.repo.read(req.file, req.offset, req.count)
            resp = ChunkResponse(req.req, req.file, req.offset, total, "ok", data)
            self.counters["chunks_served"] += 1
        except NotFoundError:
            resp = ChunkResponse(req.req, req.file, req.offset, -1, "not_found")
        except ValueError:
            resp = ChunkResponse(req.req, req.file, req.offset, -1, "error")
        self.link.publish(device, DeviceTopic.FETCH_RESP, resp.encode())

    # -- operations (API workers) -------------------------------------------------------
    def deploy(self, model: str, version: int, *, devices: list[str] | None = None,
               selector: dict[str, str] | None = None, created_by: str = "admin") -> dict[str, Any]:
        """Sign the bundle if needed and send every target device its desired state.

        Raises:
            NotFoundError: unknown model version.
            ValueError: no target device, or an invalid device id.
        """
        self.registry.get(model, version)
        for d in devices or []:
            if not valid_device_id(d):
                raise ValueError(f"invalid device id {d!r}")
        targets = select_devices(self.store.list_devices(), ids=devices, selector=selector)
        if not targets:
            raise ValueError("no device matches this deployment's target")
        manifest = self.registry.ensure_bundle(model, version)
        dep_id = f"dep-{int(self.clock.time())}-{secrets.token_hex(3)}"
        self.store.add_deployment(dep_id, model, version, targets, created_by)
        now = self.clock.time()
        desired = DesiredState(deployment=dep_id, job=dep_id, model=model, version=version,
                               manifest=manifest, issued_at=now)
        assert self.link is not None
        for device in targets:
            self.link.publish(device, DeviceTopic.DESIRED, desired.encode(), retain=True)
            cmd = Command(id=secrets.token_hex(8), action="deploy", issued_at=now,
                          expires_at=now + self.settings.command_ttl_s, desired=desired)
            self.link.publish(device, DeviceTopic.CMD, cmd.encode())
        return self.store.get_deployment(dep_id)
