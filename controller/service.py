"""The fleet controller: registry, deployments, device state and telemetry ingest.

``FleetController`` owns the store, the TUF repository and the MQTT link. Device
messages arrive on paho's thread through ``handle``; API calls arrive on FastAPI's
workers; optimizations run as jobs on their own threads (``optimizations``).
Decisions (which devices a deployment targets, a deployment's state from its jobs) are
small pure functions below.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgefleet.contract import (
    FEATURE_BATCH_SIGNED,
    Birth,
    ChunkResponse,
    Clock,
    Command,
    Death,
    DesiredState,
    DeviceTopic,
    FetchRequest,
    InvalidRequest,
    JobStatus,
    MessageError,
    NotFoundError,
    RegistryError,
    SystemClock,
)
from edgefleet.contract.topics import valid_device_id

from ._alerting import AlertMonitor
from ._broadcast import Broadcaster
from ._files import open_files
from ._ingestor import Ingestor
from ._mqtt import ControllerLink
from ._statuses import RecordWriter, fold, step_status_interval
from .auth import production_targets
from .ingest import encode_ack
from .lease import Lease
from .optimizations import OptimizationJobs
from .orchestrator import ACTIVE, Orchestrator
from .provisioning import Provisioner, reload_command
from .registry import Registry
from .rollout import JOB_SETTLED, RolloutPolicy, needs_redrive
from .settings import Settings
from .signing import TrustRepository
from .store import Store

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["FleetController", "select_devices"]

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


class FleetController:
    """Everything the controller does, behind the HTTP API and the CLI.

    Args:
        settings: controller settings.
        clock: time source for command expiry.
    """

    def __init__(self, settings: Settings, *, clock: Clock | None = None,
                 broker_reload: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.db_url, audit_anchor=settings.data_dir / "audit-head.json",
                           upgrade=settings.db_auto_upgrade)
        files = open_files(settings.file_store, settings.data_dir, self.store.engine)
        self.files = files
        self.repo = TrustRepository(settings.data_dir / "repo", settings.keys_dir,
                                    clock=self.clock, shared=bool(settings.share_group),
                                    files=files.sub("repo"))
        self.registry = Registry(self.store, self.repo, files.sub("models"),
                                 work_dir=settings.data_dir / "work")
        if broker_reload is None and settings.broker_reload_command:
            broker_reload = reload_command(settings.broker_reload_command)
        self.provisioner = Provisioner(
            self.store, broker_auth_dir=settings.broker_auth_dir,
            controller_user=settings.mqtt_username or settings.client_id,
            controller_password=settings.mqtt_password, reload=broker_reload,
            clock=self.clock.time)
        # replicas (share_group set): one leads rollouts and the periodic work at a time
        self.lease = Lease(self.store.engine) if settings.share_group else None
        self.orchestrator = Orchestrator(self.store, self._publish_desired,
                                         self._manifests_for, clock=self.clock,
                                         lease=self.lease)
        self.broker: Any = None
        self.link: ControllerLink | None = None
        self.broker_url = settings.broker_url
        self.counters = {"summaries_stored": 0, "summaries_duplicate": 0, "chunks_served": 0,
                         "target_bytes_served": 0, "metadata_bytes_served": 0,
                         "malformed": 0, "desired_redriven": 0, "revoked_ignored": 0,
                         "births_announced": 0, "job_statuses": 0}
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._rollouts: threading.Thread | None = None
        self._upkeep: threading.Thread | None = None
        self.broadcaster: Broadcaster | None = None
        self.ingestor = Ingestor(self.store.telemetry, self._ack, clock=self.clock,
                                 counters=self.counters, queue_max=settings.telemetry_queue_max,
                                 batch_max=settings.telemetry_batch_max,
                                 batch_wait_s=settings.telemetry_batch_wait_s,
                                 gap_timeout_s=settings.telemetry_gap_timeout_s,
                                 shared=bool(settings.share_group))
        self.alerts = AlertMonitor(self.store, settings, self.clock)
        self.records = RecordWriter(self._store_records, counters=self.counters)
        # the hardware rows a wave's bundles were chosen from, for its desired states
        # sent right after (``_manifests_for``, then ``_publish_desired``)
        self._wave_hw: tuple[list[str], dict[str, dict[str, Any]]] | None = None
        self.optimizations = OptimizationJobs(
            self.registry, clock=self.clock.time, workers=settings.optimize_workers,
            queue_max=settings.optimize_queue_max, history_max=settings.optimize_history_max,
            counters=self.counters)

    def start(self) -> None:
        """Start the embedded broker if no broker URL was given, then connect.

        Raises:
            TransportError: the broker cannot be started or reached.
        """
        self.provisioner.sync_broker()  # the broker's files match the store before we connect
        if self.broker_url is None:
            from .broker import EmbeddedBroker

            self.broker = EmbeddedBroker()
            self.broker.start()
            self.broker_url = self.broker.url
        self.link = ControllerLink(self.broker_url, self.settings.client_id, self.handle,
                                   username=self.settings.mqtt_username,
                                   password=self.settings.mqtt_password,
                                   ca_file=str(self.settings.broker_ca_file)
                                   if self.settings.broker_ca_file else None,
                                   share_group=self.settings.share_group,
                                   on_broker_lost_state=self._broker_lost_state)
        if self.settings.broadcast:
            link = self.link
            self.broadcaster = Broadcaster(
                self.repo, lambda topic, payload, retain: link.publish_topic(
                    topic, payload, retain=retain),
                self.clock, ttl_s=self.settings.broadcast_ttl_s)
        self.ingestor.start()
        self.records.start()
        self.alerts.start()
        self.optimizations.start()
        self.link.start()
        self._upkeep = threading.Thread(target=self._upkeep_loop, name="telemetry-upkeep",
                                        daemon=True)
        self._upkeep.start()
        self._refresher = threading.Thread(target=self._refresh_loop, name="trust-refresh",
                                           daemon=True)
        self._refresher.start()
        self._rollouts = threading.Thread(
            target=self.orchestrator.run, args=(self._stop, self.settings.rollout_tick_s,
                                                self._take_over), name="rollouts", daemon=True)
        self._rollouts.start()

    def _broker_lost_state(self) -> None:
        """The broker restarted without its state: the broadcast blocks it held are gone,
        so the files still wanted are published again (devices would pull them all)."""
        if self.broadcaster is not None:
            log.warning("the broker lost its state; broadcasting %d files again",
                        self.broadcaster.republish())

    def stop(self) -> None:
        self._stop.set()
        self.optimizations.stop()  # jobs still waiting fail; running ones cannot be cut
        if self.broadcaster is not None:
            self.broadcaster.stop()
        if self._rollouts is not None:
            self._rollouts.join(5.0)
        if self._upkeep is not None:
            self._upkeep.join(5.0)
        self.ingestor.stop()  # stores and acks what is queued while the link is up
        self.records.stop()
        self.alerts.stop()
        if self.link is not None:
            self.link.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.lease is not None:
            self.lease.release()

    @property
    def leading(self) -> bool:
        """Whether this replica does the periodic work (always, for a single controller)."""
        return self.orchestrator.leading

    def _take_over(self) -> None:
        """This replica now leads: send again the desired state of every device in a
        running deployment. A job status the old leader received just before it died is
        lost with it; a device asked again about a finished job says again how it ended,
        and one still working on it carries on."""
        resent = 0
        for dep in self.store.list_deployments(ACTIVE):
            for job in self.store.get_deployment(dep["id"])["jobs"]:
                want = self.store.get_desired(job["device"])
                if want is not None and want["deployment"] == dep["id"]:
                    self._send_desired(job["device"], DesiredState(**want["payload"]))
                    resent += 1
        log.info("leading now; re-sent %d desired states of running deployments", resent)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.settings.trust_refresh_interval_s):
            if not self.leading:
                continue
            try:
                self.repo.refresh()
            except Exception:
                log.exception("re-signing trust metadata failed")

    def _upkeep_loop(self) -> None:
        """Alert rules every ``alert_interval_s``; retention every maintenance interval."""
        s = self.settings
        next_retention = self.clock.time()
        while not self._stop.wait(s.alert_interval_s):
            if not self.leading:
                continue
            try:
                self.alerts.evaluate()
                now = self.clock.time()
                if now >= next_retention:
                    next_retention = now + s.telemetry_maintenance_interval_s
                    self.store.telemetry.apply_retention(
                        now, raw_retention_s=s.telemetry_raw_retention_s,
                        rollup_retention_s=s.telemetry_rollup_retention_s)
                    self.alerts.prune(now)
                if self.broadcaster is not None:
                    self.broadcaster.prune()
            except Exception:
                log.exception("telemetry upkeep (alerts, retention) failed")

    # -- device messages (paho's thread) -----------------------------------------------
    def handle(self, device: str, suffix: str, payload: bytes) -> None:
        """Dispatch one device message; raises ``MessageError`` for a malformed one."""
        if device in self.provisioner.revoked:  # still connected: heard, never obeyed
            self.counters["revoked_ignored"] += 1
            return
        if suffix == DeviceTopic.FETCH_REQ:
            self._on_fetch(device, FetchRequest.decode(payload))
        elif suffix == DeviceTopic.TELEMETRY:
            # queued as received: the ingest worker decodes, stores, then acks (_ingestor)
            self.ingestor.submit(device, payload, self.clock.time())
        elif suffix == DeviceTopic.BIRTH:  # stored in order with deaths and statuses
            self.records.submit(device, Birth.decode(payload))
        elif suffix == DeviceTopic.DEATH:
            self.records.submit(device, Death.decode(payload))
        elif suffix.startswith("job/") and suffix.endswith("/status"):
            self.records.submit(device, JobStatus.decode(payload))
            self.counters["job_statuses"] += 1
        else:
            raise MessageError(f"unexpected topic suffix {suffix!r}")

    @staticmethod
    def _birth_values(birth: Birth) -> dict[str, Any]:
        hw = dict(birth.hw)
        tags = hw.pop("tags", {}) if isinstance(hw.get("tags"), dict) else {}
        hw["runtimes"] = list(birth.runtimes)  # a .tflite variant only where LiteRT runs
        hw["features"] = list(birth.features)  # e.g. batch-signed desired states
        if birth.trust:
            hw["trust"] = dict(birth.trust)  # e.g. expired metadata: installs nothing new
        return dict(online=True, last_seen=time.time(), agent_version=birth.agent_version,
                    hw=hw, tags=tags, api_url=birth.api_url,
                    active=birth.active.to_dict() if birth.active else None,
                    last_good=birth.last_good.to_dict() if birth.last_good else None)

    def _birth_of_session(self, device: str, birth: Birth,
                          conn: sa.Connection | None = None) -> bool:
        """Store a birth of the device's current session (a model it activated, its
        trust); False when it is a new session. Such a device holds its desired state
        and reports its job itself; only a new session may have missed something."""
        if not self.store.update_session(device, birth.bd_seq, conn=conn,
                                         **self._birth_values(birth)):
            return False
        self.counters["births_announced"] += 1
        return True

    def _new_session(self, device: str, birth: Birth) -> None:
        """A birth of a new connection: store the device, then look at its desired state
        (the new session may have missed it)."""
        self.store.upsert_device(device, bd_seq=birth.bd_seq, **self._birth_values(birth))
        self._reconcile(device, birth)

    def _reconcile(self, device: str, birth: Birth) -> None:
        """Re-drive the desired state when a device reports something else."""
        with self.orchestrator.lock:  # not while a rollout step rewrites desired states
            self._reconcile_locked(device, birth)

    def _reconcile_locked(self, device: str, birth: Birth) -> None:
        want = self.store.get_desired(device)
        if want is None:
            return
        if self.store.deployment_state(want["deployment"]) not in ACTIVE:
            return  # finished or aborted: nothing more to drive
        job = self.store.get_job(want["deployment"], device)
        job_state = job["state"] if job is not None and job["job"] == want["job"] else None
        reported = (birth.active.name, birth.active.version) if birth.active else None
        if needs_redrive(desired_model=want["model"], desired_version=want["version"],
                         mode=want["mode"], reported=reported, job_state=job_state):
            self._send_desired(device, DesiredState(**want["payload"]))
            self.counters["desired_redriven"] += 1

    def _on_status(self, device: str, status: JobStatus) -> None:
        """Record where a device's job stands, at once (``handle`` queues statuses to
        ``records``, which stores them in batches)."""
        self._store_statuses([(device, status)])

    def _store_records(self, records: list[tuple[str, Any]]) -> None:
        """Store devices' births, deaths and statuses in the order they came, in one
        transaction; a birth of a new session ends it (it is stored, and the device's
        desired state looked at, before the records after it)."""
        todo = list(records)
        while todo:
            todo = self._store_some(todo)

    def _store_some(self, records: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """Store records in one transaction up to a birth of a new session (stored after
        it, on its own); returns the records after that birth."""
        run: list[tuple[str, JobStatus]] = []
        new_session: tuple[str, Birth] | None = None
        rest: list[tuple[str, Any]] = []
        with self.store.transaction() as conn:
            for i, (device, record) in enumerate(records):
                if isinstance(record, JobStatus):
                    run.append((device, record))
                    continue
                if run:
                    self._store_statuses(run, conn)
                    run = []
                if isinstance(record, Birth):
                    if not self._birth_of_session(device, record, conn):
                        new_session, rest = (device, record), records[i + 1:]
                        break
                elif isinstance(record, Death):
                    self.store.mark_offline(device, record.bd_seq, conn=conn)
            if run:
                self._store_statuses(run, conn)
        if new_session is not None:
            self._new_session(*new_session)
        return rest

    def _store_statuses(self, items: list[tuple[str, JobStatus]],
                        conn: sa.Connection | None = None) -> None:
        # the births statuses carry, as births of the current session (one of another
        # session is not taken: that session sends its own), in one statement
        carried = [(device, st.birth.bd_seq, self._birth_values(st.birth))
                   for device, st in items if st.birth is not None]
        if carried:
            stored = self.store.update_sessions(carried, conn=conn)
            self.counters["births_announced"] += len(carried) if stored is None else stored
        # statuses arrive out of order (a broker's redelivery, two replicas at once, a
        # device republishing its last ones): a job that ended stays ended, and a step
        # never overwrites an end (each UPDATE says so, so it holds between replicas too)
        for u in self.store.apply_statuses(fold(items, JOB_SETTLED), JOB_SETTLED, conn=conn):
            log.info("status %s for job %s on %s is not current", u.fields["state"], u.job,
                     u.device)

    def latency_by_model(self, since: float) -> dict[tuple[str, int], dict[str, Any]]:
        """p50/p95/p99 from merged sketches, inferences and errors per model version over
        telemetry received since ``since`` (Prometheus ``/metrics`` reads this)."""
        return self.store.telemetry.latency_by_version(since)

    def _ack(self, device: str, seqs: list[int]) -> None:
        if self.link is not None:
            self.link.publish(device, DeviceTopic.TELEMETRY_ACK, encode_ack(seqs))

    def _on_fetch(self, device: str, req: FetchRequest) -> None:
        assert self.link is not None
        try:
            data, total = self.repo.read(req.file, req.offset, req.count)
            resp = ChunkResponse(req.req, req.file, req.offset, total, "ok", data)
            self.counters["chunks_served"] += 1
            # bundle bytes pulled (with broadcast on: the repairs) and metadata bytes
            self.counters["target_bytes_served" if req.file.startswith("targets/")
                          else "metadata_bytes_served"] += len(data)
        except NotFoundError:
            resp = ChunkResponse(req.req, req.file, req.offset, -1, "not_found")
        except ValueError:
            resp = ChunkResponse(req.req, req.file, req.offset, -1, "error")
        self.link.publish(device, DeviceTopic.FETCH_RESP, resp.encode())

    # -- operations (API workers) -------------------------------------------------------
    def _publish_desired(self, items: list[tuple[str, DesiredState]]) -> None:
        """Record and send devices' desired states (signed, retained: a device online
        gets it at once, one offline when it connects); the states are stored in one
        transaction before any is sent."""
        files: dict[str, list[str]] = {}
        for _, d in items:
            if d.manifest not in files:
                files[d.manifest] = self._broadcast(d.manifest)
        metadata = self._broadcast_metadata() if any(files.values()) else {}
        root = self.repo.root_version if metadata else 0
        pacing = step_status_interval(len(items), self.settings.step_status_rate)
        # a state shared by many devices (a wave's, one per bundle) is completed, checked
        # and made a dict once; each device's is that dict with its id
        shared: dict[int, dict[str, Any]] = {}
        plain = []  # stored, then sent
        for device, d in items:
            base = shared.get(id(d))
            if base is None:
                base = shared[id(d)] = dataclasses.replace(
                    d, broadcast=files[d.manifest],
                    metadata=metadata if files[d.manifest] else {},
                    root_version=root if files[d.manifest] else 0,
                    status_interval_s=pacing).to_dict()
            plain.append((device, {**base, "device": device}))
        self.store.set_desired_many(plain)
        sent = [(device, DesiredState.encode_plain(p)) for device, p in plain]
        # one signature for the devices whose agents verify batch-signed states
        hw = self._hardware([device for device, _ in sent]) if len(sent) > 1 else {}
        batch = [(device, payload) for device, payload in sent
                 if FEATURE_BATCH_SIGNED in ((hw.get(device) or {}).get("features") or ())]
        envelopes = dict(zip([device for device, _ in batch],
                             self.repo.sign_commands([payload for _, payload in batch]),
                             strict=True))
        for device, payload in sent:
            self._publish_signed(device, envelopes.get(device)
                                 or self.repo.sign_command(payload))

    def _hardware(self, devices: list[str]) -> dict[str, dict[str, Any]]:
        """The devices' hardware rows: those the bundles of these very devices were just
        chosen from, else read."""
        kept, self._wave_hw = self._wave_hw, None
        if kept is not None and kept[0] == devices:
            return kept[1]
        return self.store.devices_hw(devices)

    def _broadcast(self, manifest_path: str) -> list[str]:
        """The bundle's files, broadcast once (see ``_broadcast.Broadcaster``); none when
        broadcasting is off (devices pull everything)."""
        if self.broadcaster is None or not manifest_path:
            return []
        try:
            return self.broadcaster.announce(manifest_path)
        except (NotFoundError, OSError, ValueError) as exc:  # the device pulls instead
            log.warning("cannot broadcast %s: %s", manifest_path, exc)
            return []

    def _broadcast_metadata(self) -> dict[str, str]:
        """The snapshot and targets metadata a device will ask for after the timestamp,
        broadcast with the bundle (by versioned name, which never changes content)."""
        if self.broadcaster is None:
            return {}
        try:
            return self.broadcaster.announce_metadata()
        except (OSError, ValueError, KeyError) as exc:  # the device pulls them instead
            log.warning("cannot broadcast trust metadata: %s", exc)
            return {}

    def _send_desired(self, device: str, desired: DesiredState) -> None:
        """Send a stored desired state again (another leader, a device that reports
        something else); its broadcast files go out again if this controller has not
        sent them."""
        if desired.device != device:  # a stored state from before states were addressed
            desired = dataclasses.replace(desired, device=device)
        if desired.broadcast:  # again, with the metadata published now
            metadata = self._broadcast_metadata()
            desired = dataclasses.replace(desired, broadcast=self._broadcast(desired.manifest),
                                          metadata=metadata,
                                          root_version=self.repo.root_version if metadata
                                          else 0)
        self._post_desired(device, desired)

    def _post_desired(self, device: str, desired: DesiredState) -> None:
        self._publish_signed(device, self.repo.sign_command(desired.encode()))

    def _publish_signed(self, device: str, envelope: bytes) -> None:
        """Send a device its signed desired state, retained."""
        assert self.link is not None
        self.link.publish(device, DeviceTopic.DESIRED, envelope, retain=True)

    def send_command(self, device: str, action: str, *,
                     desired: DesiredState | None = None) -> Command:
        """Sign and send one command (``rollback``, ``rebirth``; ``deploy`` with a desired
        state, which agents still accept) to a device."""
        now = self.clock.time()
        cmd = Command(id=secrets.token_hex(16), action=action, issued_at=now,
                      expires_at=now + self.settings.command_ttl_s, desired=desired,
                      device=device)
        assert self.link is not None
        self.link.publish(device, DeviceTopic.CMD, self.repo.sign_command(cmd.encode()))
        return cmd

    def _manifests_for(self, model: str, version: int, devices: list[str]) -> dict[str, str]:
        """The bundle each device gets: its hardware class's variant, else the default
        (chosen once per kind of device)."""
        hws = self.store.devices_hw(devices)  # one never connected: the default bundle
        self._wave_hw = (devices, hws)
        chosen: dict[tuple[str, tuple[str, ...] | None], str] = {}
        out = {}
        for device in devices:
            hw = hws.get(device) or {}
            runtimes = hw.get("runtimes")  # unknown (None) for agents that did not say
            # reported as "runtime:detail" ("onnxruntime:CPU", "litert:ai-edge-litert")
            known = tuple(sorted({str(r).split(":")[0] for r in runtimes})) \
                if isinstance(runtimes, list) and runtimes else None
            key = (str(hw.get("class", "")), known)
            if key not in chosen:
                chosen[key] = self.registry.manifest_for(
                    model, version, key[0], list(known) if known is not None else None)
            out[device] = chosen[key]
        return out

    def provision(self, *, claim_token: str, public_key: str, proof: str, ts: float,
                  device_id: str | None = None) -> dict[str, Any]:
        """A device's first boot: see ``Provisioner.provision``."""
        return self.provisioner.provision(
            claim_token=claim_token, public_key=public_key, proof=proof, ts=ts,
            device_id=device_id, broker_url=self.settings.device_broker_url or self.broker_url
            or "")

    def deploy(self, model: str, version: int, *, devices: list[str] | None = None,
               selector: dict[str, str] | None = None, created_by: str = "admin",
               policy: RolloutPolicy | None = None) -> dict[str, Any]:
        """Create a deployment; the orchestrator sends desired states wave by wave.

        A deployment that targets a device tagged ``settings.production_tag`` starts in
        ``pending_approval``: nothing is sent until another operator approves it.

        Raises:
            NotFoundError: unknown model version.
            InvalidRequest: no target device, or an invalid device id.
        """
        self.registry.get(model, version)
        for d in devices or []:
            if not valid_device_id(d):
                raise InvalidRequest(f"invalid device id {d!r}")
        known = self.store.list_devices(("id", "tags"))
        targets = select_devices(known, ids=devices, selector=selector)
        if not targets:
            raise InvalidRequest("no device matches this deployment's target")
        busy = self.store.devices_in(ACTIVE, targets)
        if busy:
            raise RegistryError(
                f"{len(busy)} target device(s) are in a deployment that has not finished "
                f"({', '.join(sorted(busy)[:5])}…); finish, abort or roll it back first",
                reason="device_busy")
        self.registry.ensure_bundle(model, version)
        dep_id = f"dep-{int(self.clock.time())}-{secrets.token_hex(3)}"
        production = production_targets(known, targets, self.settings.production_tag)
        return self.orchestrator.create(dep_id, model, version, targets,
                                        policy or RolloutPolicy(), created_by,
                                        needs_approval=production)
