"""``edgefleet simulate``: a fleet of real agents in shard processes, a scenario of faults.

``run_simulation`` starts a real Mosquitto on a free port, the controller (SQLite) in
this process, and the scenario's devices in shard processes (``_shard``: real agents on
a shared network loop). It registers the model, runs an untimed first rollout when the
scenario asks for devices that already run v1, measures the raw fan-out baseline, then
runs the timed part: the rollout and every fault at its time, sampling the fleet every
``sample_s``. It returns the report (``docs/simulations.md`` lists its fields) and
writes it, with an HTML page of charts, to ``out``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import sqlalchemy as sa

from edgefleet.controller import FleetController, RolloutPolicy, Settings, init_keys
from edgefleet.controller.orchestrator import ACTIVE

from ._models import ASSETS, load_model, release
from ._shards import ShardProcess
from ._workspace import default_workdir, factory_image, filesystem_of
from .brokers import MosquittoProcess
from .fleet import wait_until
from .report import MAX_RATIO_TO_FANOUT, fanout_why, summarize, write_report
from .scenario import Action, Plan, Scenario, load_scenario, plan

__all__ = ["run_scenario", "run_simulation"]

Progress = Callable[[str], None]
_FANOUT_TOPIC = "sim/fanout"
_OWN_THREADS = ("shard-", "broker-restart", "sim-")


class _Run:
    """One simulation run's parts and bookkeeping (see ``run_simulation``)."""

    def __init__(self, scenario: Scenario, the_plan: Plan, root: Path, say: Progress) -> None:
        self.scenario, self.plan, self.root, self.say = scenario, the_plan, root, say
        self.ids = [d.id for d in the_plan.devices]
        self.shard_of = {d.id: d.shard for d in the_plan.devices}
        # sized for the fleet: the controller's session queue holds a birth storm (every
        # device announcing itself again when the controller reconnects)
        queue = max(10_000, 20 * len(self.ids))
        self.broker = MosquittoProcess(workdir=root / "mosquitto",
                                       extra_config=f"max_queued_messages {queue}")
        self.ctl: FleetController | None = None
        self.shards: list[ShardProcess] = []
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.partitioned: set[str] = set()
        self.crashed: set[str] = set()
        self.full = the_plan.faulted("disk_full", scenario.faults)
        self.never_back = the_plan.never_restarted(scenario.faults)
        self.dep_id: str | None = None
        self.deployed_wall: float | None = None
        self.target: int | None = None
        self.t0 = 0.0
        self._threads: list[threading.Thread] = []
        self.deploy_cpu_s = 0.0

    # -- setup --------------------------------------------------------------------------
    def start_services(self) -> None:
        """The broker and the controller."""
        self.trust_root = init_keys(self.root / "keys")
        self.broker.start()
        settings = Settings(db_url=f"sqlite:///{self.root / 'controller.db'}",
                            broker_url=self.broker.url, keys_dir=self.root / "keys",
                            data_dir=self.root / "controller",
                            admin_token=secrets.token_urlsafe(16),
                            client_id=f"sim-controller-{secrets.token_hex(3)}",
                            production_tag="")  # the default rollout tick (0.5 s)
        self.ctl = FleetController(settings)
        self.ctl.start()

    def start_devices(self, image: dict[str, Any] | None) -> None:
        """The shards and their devices (imaged with ``image`` when given)."""
        s = self.scenario
        agent = {"summary_window_s": s.summary_window_s, "reconnect_min_s": 0.5,
                 "reconnect_max_s": 5.0, "keepalive_s": 10, "loop_interval_s": s.tick_s,
                 "trust_check_interval_s": 0.0, **s.agent}
        by_shard: dict[int, list[dict[str, Any]]] = {k: [] for k in range(self.plan.shards)}
        for d in self.plan.devices:
            p = d.profile
            by_shard[d.shard].append({
                "id": d.id, "hardware_class": p.hardware_class, "slowdown": p.slowdown,
                "bandwidth_bps": p.bandwidth_mbps * 1e6, "latency_s": p.latency_ms / 1000,
                "clock_skew_s": d.clock_skew_s,
                "tags": {"profile": p.name, "memory_mb": str(p.memory_mb)}})
        devices_dir = self.root / "devices"
        devices_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"starting {len(self.ids)} devices in {self.plan.shards} shard processes")
        for k, devices in by_shard.items():
            spec = {"shard": k, "root": str(devices_dir / f"shard-{k}"),
                    "broker_url": self.broker.url, "trust_root": str(self.trust_root),
                    "image": image,
                    "samples": str(ASSETS / "eval.npz"), "seed": s.seed + k,
                    "agent": agent, "devices": devices, "inference_hz": s.inference_hz,
                    "tick_s": s.tick_s, "job_slots": s.job_slots,
                    # thousands of devices on one shared disk would measure its fsync
                    # rate, not theirs: off there, as it costs nothing in memory
                    "fsync": filesystem_of(devices_dir) == "tmpfs"}
            self.shards.append(ShardProcess(spec, devices_dir))
        for shard in self.shards:
            shard.ready(120.0)
        started = time.monotonic()
        self.wait_progress(lambda: int(self.status_all()["connected"]), len(self.ids), 60.0,
                           "every device connected")
        self.connect_s = time.monotonic() - started
        self.wait_known()
        self.say(f"{len(self.ids)} devices connected in {self.connect_s:.1f}s")

    def wait_known(self, stall_s: float = 120.0) -> None:
        """Wait until the controller has every device's birth.

        A birth can be lost (the broker drops messages for a controller whose queue is
        full in a connect storm): devices still missing after 10 s without progress are
        asked for a new one with a signed ``rebirth`` command, as an operator would.

        Raises:
            TimeoutError: no device became known for ``stall_s``.
        """
        assert self.ctl is not None
        missing, since, asked = len(self.ids) + 1, time.monotonic(), 0.0
        while True:
            known = self.online_ids()
            left = [d for d in self.ids if d not in known]
            now = time.monotonic()
            if not left:
                return
            if len(left) < missing:
                missing, since = len(left), now
            elif now - since > stall_s:
                raise TimeoutError(f"the controller saw {len(self.ids) - len(left)} of "
                                   f"{len(self.ids)} devices and no more for {stall_s:.0f}s")
            elif now - since > 10.0 and now - asked > 10.0:
                asked = now
                for device in left[:500]:
                    self.ctl.send_command(device, "rebirth")
            time.sleep(2.0)  # listing every device is not free for the controller

    def online_ids(self) -> set[str]:
        """Devices the controller has as online: its devices table, ids only (listing
        every device's record would cost the controller's process more than its births)."""
        assert self.ctl is not None
        with self.ctl.store.engine.connect() as c:
            rows = c.execute(sa.text("SELECT id FROM devices WHERE online"))
            return {str(r[0]) for r in rows}

    def wait_progress(self, count: Callable[[], int], goal: int, stall_s: float,
                      what: str) -> None:
        """Wait until ``count()`` reaches ``goal``, as long as it keeps growing.

        Raises:
            TimeoutError: it did not grow for ``stall_s``.
        """
        best, since = -1, time.monotonic()
        while (now := count()) < goal:
            if now > best:
                best, since = now, time.monotonic()
            elif time.monotonic() - since > stall_s:
                raise TimeoutError(f"stuck at {now} of {goal} for {stall_s:.0f}s: {what}")
            time.sleep(max(0.5, goal / 4000))  # every status costs each shard a pass

    def wait(self, done: Callable[[], Any], timeout_s: float, what: str) -> None:
        try:
            wait_until(done, timeout_s, 0.25)
        except TimeoutError:
            raise TimeoutError(f"not within {timeout_s:.0f}s: {what}") from None

    def broker_files_left(self) -> int:
        """Descriptors the broker may still open (its limit minus those it has)."""
        pid = self.broker.pid
        if not pid:
            return 1 << 30
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # what it started with, or:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    limit = int(line.split()[3])
        try:
            used = psutil.Process(pid).num_fds()
        except psutil.Error:
            used = 0
        return int(limit) - used

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time so far of the controller, the broker and the shards.

        The controller shares this process with the simulation's own bookkeeping (reading
        the shards, sampling), so its figure is the sum over the controller's threads
        plus the deployments it was asked for on this thread."""
        broker = self.broker.pid
        shards = self.status_all()["shards"]
        return {"controller": sum(controller_threads_cpu().values()) + self.deploy_cpu_s,
                "broker": sum(psutil.Process(broker).cpu_times()[:2]) if broker else 0.0,
                "shards": sum(s["cpu_s"] for s in shards)}

    def telemetry_delivered(self) -> bool:
        st = self.status_all(telemetry=True)
        return bool(st.get("summaries_acked", 0) >= st.get("summaries_produced", 0))

    def status_all(self, **args: Any) -> dict[str, Any]:
        """Every shard's status, summed (``versions`` merged; lists joined)."""
        reqs = [(s, s.send("status", **args)) for s in self.shards]
        total: dict[str, Any] = {"versions": Counter(), "rejected": Counter(), "shards": []}
        for shard, req in reqs:
            st = shard.collect(req, 60.0)
            total["shards"].append({k: st[k] for k in ("rss_bytes", "rss_base_bytes", "threads",
                                                       "running", "sessions", "cpu_s")})
            for key, value in st.items():
                if key in ("versions", "rejected"):
                    total[key].update(value)
                elif isinstance(value, bool) or key == "id":
                    continue
                elif isinstance(value, (int, float)):
                    total[key] = total.get(key, 0) + value
                elif isinstance(value, list):
                    total[key] = total.get(key, []) + value
                elif isinstance(value, dict):
                    total.setdefault(key, {}).update(value)
        return total

    def register(self, name: str, model: bytes,
                 extra: dict[str, Any]) -> tuple[str, int | None, int | None, bytes]:
        """Register the model (``load_model``'s result): v1 when devices start on it, the
        next one for the rollout.

        Returns:
            The model's name, the version devices start on (or None), the version rolled
            out (or None) and the rolled-out model's bytes.
        """
        assert self.ctl is not None
        s = self.scenario
        first = target = None
        if s.start_on != "none":
            first = int(self.ctl.registry.register(name, model, **extra)["version"])
        if s.rollout is not None:
            if first is not None:
                model = release(model, first + 1)
            target = int(self.ctl.registry.register(name, model, **extra)["version"])
        return name, first, target, model

    def deploy(self, name: str, version: int, policy: RolloutPolicy) -> str:
        assert self.ctl is not None
        began = time.thread_time()
        dep = self.ctl.deploy(name, version, devices=self.ids, policy=policy)
        self.deploy_cpu_s += time.thread_time() - began  # the API call's work, on this thread
        return str(dep["id"])

    def initial_rollout(self, name: str, version: int) -> float:
        """Put every device on ``version`` before the timed part; returns how long it took."""
        assert self.ctl is not None
        ctl = self.ctl
        self.say(f"installing {name}:{version} on every device (untimed)")
        started = time.monotonic()
        dep_id = self.deploy(name, version, RolloutPolicy(wave_timeout_s=600))
        limit = 120.0 + len(self.ids) / 5.0
        self.wait(lambda: ctl.store.deployment_state(dep_id) not in ACTIVE, limit,
                   "the initial rollout finished")
        self.wait(lambda: self.status_all()["versions"].get(str(version), 0) >= len(self.ids),
                   30.0, f"every device reported version {version}")
        return time.monotonic() - started

    def fanout_baseline(self, payload: bytes) -> dict[str, Any]:
        """Publish ``payload`` (in agent-sized chunks) to one plain subscriber per device."""
        chunk = int(self.scenario.agent.get("chunk_bytes", 64 * 1024))
        host, port = "127.0.0.1", self.broker.port
        topic = f"{_FANOUT_TOPIC}/{secrets.token_hex(4)}"
        count = Counter(self.shard_of.values())
        for shard in self.shards:
            shard.request("fanout_start", broker=[host, port], prefix=f"fanout-{shard.index}",
                          count=count[shard.index], topic=topic, expect_bytes=len(payload))
        limit = 60.0 + len(self.ids) / 25.0

        def fanout(key: str) -> int:
            return sum(int(s.request("fanout_status")[key]) for s in self.shards)
        self.wait(lambda: fanout("subscribed") >= len(self.ids), limit, "fan-out subscribers")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-fanout-{topic[-8:]}")
        pub.max_inflight_messages_set(100)
        pub.connect(host, port)
        pub.loop_start()
        try:
            started = time.time()
            infos = [pub.publish(topic, payload[i:i + chunk], qos=1)
                     for i in range(0, len(payload), chunk)]
            for info in infos:
                info.wait_for_publish(30.0)
            self.wait(lambda: fanout("done") >= len(self.ids), 120.0 + len(self.ids) / 5.0,
                       "every fan-out subscriber received the bundle")
            finished = max(float(s.request("fanout_status")["done_at"]) for s in self.shards)
        finally:
            pub.disconnect()
            pub.loop_stop()
            for shard in self.shards:
                shard.request("fanout_stop", timeout_s=60.0)
        return {"seconds": round(finished - started, 3), "clients": len(self.ids),
                "bytes_each": len(payload), "chunk_bytes": chunk,
                "bytes_total": len(payload) * len(self.ids)}

    # -- the timed part -------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def fire(self, action: Action, name: str) -> None:
        """Do one scheduled action and record it as an event."""
        event = {"t": round(self.now(), 2), "kind": action.kind, "devices": len(action.ids),
                 "fault": action.fault}
        if action.kind == "deploy":
            assert self.target is not None
            policy = RolloutPolicy.from_dict({
                "strategy": (self.scenario.rollout or {}).get("strategy", "all-at-once"),
                **dict((self.scenario.rollout or {}).get("policy", {}))})
            for shard in self.shards:
                shard.request("target", version=self.target)
            self.deployed_wall = time.time()
            self.dep_id = self.deploy(name, self.target, policy)
            event["deployment"] = self.dep_id
        elif action.kind == "broker_down":
            (self.broker.kill if action.args.get("mode") == "kill" else self.broker.stop)()
        elif action.kind == "command":
            assert self.ctl is not None
            for device in action.ids:
                self.ctl.send_command(device, str(action.args["action"]))
            event.update(action.args)
        elif action.kind == "broker_up":
            t = threading.Thread(target=self.broker.restart, name="broker-restart", daemon=True)
            t.start()
            self._threads.append(t)
        else:
            if action.kind == "partition":
                self.partitioned.update(action.ids)
            elif action.kind == "heal":
                self.partitioned.difference_update(action.ids)
            elif action.kind == "crash":
                self.crashed.update(action.ids)
            elif action.kind == "restart":
                self.crashed.difference_update(action.ids)
            cmd = "shape" if action.kind == "shape" else action.kind
            for shard in self.shards:
                mine = [d for d in action.ids if self.shard_of[d] == shard.index]
                if mine:
                    shard.request(cmd, ids=mine, **action.args)
            if action.args:
                event.update(action.args)
        self.events.append(event)
        self.say(f"t={event['t']:.1f}s {action.kind}"
                 + (f" ({len(action.ids)} devices)" if action.ids else ""))

    def sample(self, with_telemetry: bool) -> dict[str, Any]:
        assert self.ctl is not None
        st = self.status_all(target=self.target, telemetry=with_telemetry)
        not_conv = set(st.get("not_converged", []))
        reachable = set(self.ids) - self.partitioned - self.crashed - self.full
        expected = set(self.ids) - self.full - self.never_back
        dep = self.ctl.store.deployment_state(self.dep_id) if self.dep_id else None
        row = {"t": round(self.now(), 2), "versions": dict(st["versions"]),
               "connected": st.get("connected", 0), "running": st.get("running", 0),
               "converged": len(self.ids) - len(not_conv),
               "reachable": len(reachable), "reachable_converged": len(reachable - not_conv),
               "expected": len(expected), "expected_converged": len(expected - not_conv),
               "fetched_bytes": st.get("fetched_bytes", 0),
               "chunks_served": self.ctl.counters["chunks_served"],
               "summaries_stored": self.ctl.counters["summaries_stored"],
               "partitioned": len(self.partitioned), "crashed": len(self.crashed),
               "broker_up": self.broker.running, "deployment": dep,
               "rss_bytes": st.get("rss_bytes", 0)}
        if with_telemetry:
            row["summaries_produced"] = st.get("summaries_produced", 0)
            row["summaries_acked"] = st.get("summaries_acked", 0)
        self.samples.append(row)
        return row

    def settled(self, row: dict[str, Any], pending_actions: int) -> bool:
        if pending_actions or self.scenario.rollout is None or self.dep_id is None:
            return False
        done_failing = all(d not in self.full for d in self.ids) or row["deployment"] not in ACTIVE
        return row["expected_converged"] >= row["expected"] and done_failing

    def stop(self) -> None:
        for t in self._threads:
            t.join(20.0)
        stops = [threading.Thread(target=shard.stop, daemon=True, name="sim-stop")
                 for shard in self.shards]
        for t in stops:  # all at once: each shard stops its devices in parallel
            t.start()
        for t in stops:
            t.join(120.0)
        for shard in self.shards:
            shard.kill()  # any that did not stop in time
        if self.ctl is not None:
            self.ctl.stop()
        self.broker.stop()


def run_simulation(scenario: Scenario, devices: int | None = None, *, shards: int | None = None,
                   out: Path | None = None, workdir: Path | None = None,
                   progress: Progress | None = None,
                   on_sample: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``scenario`` on ``devices`` simulated devices; return the report.

    Args:
        devices: fleet size (default: the scenario's ``devices``).
        shards: shard processes (default: one per ``per_shard`` devices).
        out: the folder ``report.json`` and ``report.html`` are written to (none: the
            report is only returned).
        workdir: state of the broker, controller and devices (default: a new temp dir,
            in memory when there is room — see ``default_workdir`` — removed at the end).
        progress: hears what happens, one line at a time.
        on_sample: sees each timeline sample as it is taken.

    Raises:
        TimeoutError: setup (connecting, the untimed first rollout) did not finish in time.
        ValueError: the scenario does not fit the fleet size.
    """
    say = progress or (lambda _m: None)
    the_plan = plan(scenario, devices, shards=shards)
    own = workdir is None
    loaded = load_model(scenario.model,
                        Path(scenario.source).parent if scenario.source else None)
    bundle = len(loaded[1]) if scenario.model in ("digits", "tiny") else 16 * 1024 * 1024
    root = Path(workdir) if workdir is not None else default_workdir(len(the_plan.devices),
                                                                       bundle)
    for stale in ("keys", "controller", "devices", "mosquitto", "controller.db"):
        path = root / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    run = _Run(scenario, the_plan, root, say)
    started = time.monotonic()
    try:
        run.start_services()
        name, first, target, target_bytes = run.register(*loaded)
        run.target = target
        assert run.ctl is not None
        image = factory_image(run.ctl, name, first) if scenario.start_on == "preinstalled" \
            and first is not None else None
        run.start_devices(image)
        setup: dict[str, Any] = {"connect_s": round(run.connect_s, 2),
                                 "start_on": scenario.start_on, "first_version": first}
        if scenario.start_on == "rollout" and first is not None:
            setup["initial_rollout_s"] = round(run.initial_rollout(name, first), 2)
        fanout = None
        room = run.broker_files_left()
        if scenario.fanout_baseline and target is not None and room < len(run.ids) + 100:
            # as many subscribers again as devices would not fit the broker's descriptors
            setup["fanout_skipped"] = (f"{len(run.ids)} more connections do not fit the "
                                       f"broker's open-files limit ({room} left)")
            say(f"raw fan-out baseline skipped: {setup['fanout_skipped']}")
        elif scenario.fanout_baseline and target is not None:
            say("measuring the raw fan-out baseline")
            fanout = run.fanout_baseline(target_bytes)
            say(f"raw fan-out of {len(target_bytes) / 1e6:.2f} MB to {len(run.ids)} clients: "
                f"{fanout['seconds']:.2f}s")
        actions = list(the_plan.actions)
        cpu_before, threads_before = run.cpu_seconds(), controller_threads_cpu()
        run.t0 = time.monotonic()
        settled_at: float | None = None
        n = 0
        while True:
            while actions and actions[0].t <= run.now():
                run.fire(actions.pop(0), name)
            row = run.sample(with_telemetry=n % 5 == 0)
            n += 1
            if on_sample is not None:
                on_sample(row)
            if settled_at is None and run.settled(row, len(actions)):
                settled_at = run.now()
            if settled_at is not None and run.now() >= settled_at + scenario.settle_s:
                break
            if run.now() >= scenario.duration_s:
                break
            next_t = min([row["t"] + scenario.sample_s] + [a.t for a in actions[:1]])
            time.sleep(max(0.0, next_t - run.now()))
        # the timed part's CPU ends here: waiting for the acks of summaries closed just
        # now polls every device's telemetry store, work of the simulation, not theirs
        cpu_after, threads_after = run.cpu_seconds(), controller_threads_cpu()
        with contextlib.suppress(TimeoutError):  # let summaries closed just now be acked
            run.wait(run.telemetry_delivered, 2 * scenario.tick_s + 3.0, "acks")
        final = run.status_all(target=run.target, telemetry=True, detail=True)
        final["cpu_s"] = {k: round(cpu_after[k] - cpu_before.get(k, 0.0), 3) for k in cpu_after}
        final["controller_threads_cpu_s"] = {
            name: round(cpu - threads_before.get(name, 0.0), 2)
            for name, cpu in sorted(threads_after.items())
            if cpu - threads_before.get(name, 0.0) >= 0.005}
        final["rss_self"] = psutil.Process().memory_info().rss
        broker = run.broker.pid
        final["rss_broker"] = psutil.Process(broker).memory_info().rss if broker else 0
        assert run.ctl is not None
        deployment = run.ctl.store.get_deployment(run.dep_id) if run.dep_id else None
        report = summarize(scenario=scenario, plan=the_plan, samples=run.samples,
                           events=run.events, final=final, deployment=deployment,
                           target=run.target, deployed_wall=run.deployed_wall, fanout=fanout,
                           setup=setup, settled_at=settled_at,
                           counters={**run.ctl.counters,
                                     **(run.ctl.broadcaster.counters
                                        if run.ctl.broadcaster is not None else {}),
                                     "transport": "broadcast" if run.ctl.broadcaster
                                     is not None else "pull"}, model=name,
                           bundle_bytes=len(target_bytes))
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        report["workdir"] = None if own else str(root)
        report["setup"]["state_on"] = filesystem_of(root)
        if report["setup"]["state_on"] != "tmpfs":
            report["setup"]["fsync"] = "skipped: the devices share one disk"
        if out is not None:
            write_report(report, out)
            report["out"] = str(out)
        return report
    finally:
        try:
            run.stop()
        finally:
            if own:
                shutil.rmtree(root, ignore_errors=True)


def controller_threads_cpu() -> dict[str, float]:
    """CPU seconds so far of each live thread of this process but the simulation's own
    (the main thread, shard readers and helpers), by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    main = threading.main_thread().native_id
    cpu: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "?")
        if t.id == main or name.startswith(_OWN_THREADS):
            continue
        cpu[name] = cpu.get(name, 0.0) + t.user_time + t.system_time
    return cpu


def run_scenario(devices: int, *, quick: bool = False,
                 progress: Progress | None = None) -> dict[str, Any]:
    """The ``rollout`` benchmark's entry (``simulations/bench/rollout.py``).

    Runs the built-in ``rollout`` scenario (the 1.2 MB digits bundle to devices with no
    model, no faults) and returns ``rollout_s`` (deploy until every device is healthy on
    it), ``raw_fanout_s`` (the same bytes to as many plain subscribers, same broker, same
    run) and ``target_ratio`` (3: the budget the rollout is held to), with the
    report's figures.
    """
    scenario = load_scenario("rollout")
    if quick:
        scenario = dataclasses.replace(scenario, inference_hz=0.0, settle_s=0.0)
    report = run_simulation(scenario, devices, progress=progress)
    f = report["figures"]
    return {"rollout_s": f.get("time_to_all_healthy_s"),
            "raw_fanout_s": f.get("fanout_baseline_s"), "target_ratio": MAX_RATIO_TO_FANOUT,
            "figures": f, "outcomes": report["outcomes"], "deployment": report["deployment"],
            "why": fanout_why(f, f.get("devices", devices))}
