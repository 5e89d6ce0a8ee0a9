"""A shard: one process running a few hundred simulated devices (real agents).

Run as ``python -m edgefleet.simulations._shard``; ``simulate`` starts one per shard.
The first line on stdin is the shard's spec (JSON: devices with their profiles, broker,
trust root, agent settings); every later line is a command, answered by one JSON line
on stdout with the same ``id``. Logs go to ``shard-N.log`` beside the devices.

Threads: the ``SharedLoop`` (every device's MQTT session), one job worker per device
(downloads block on their chunk requests), a ticker calling each agent's ``tick`` every
``tick_s`` (health windows, telemetry windows and publishing), traffic threads calling
``predict`` ``inference_hz`` times a second per device on eval samples, and a worker
for fault commands (crashes and restarts take a while; the command line stays free).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import queue
import resource
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # noqa: F401 - loaded before the base RSS is read: not a per-device cost
import paho.mqtt.client as mqtt
import psutil

from edgefleet.agent import AgentConfig, JobSlots, ModelStore
from edgefleet.agent import telemetry as agent_telemetry
from edgefleet.contract import EdgefleetError, Manifest, TargetTrust

from ._device import SessionCache, SharedSystemMetrics, SimulatedAgent
from ._netloop import LinkShape, SharedLoop

__all__ = ["Shard", "main"]

log = logging.getLogger(__name__)
_TRAFFIC_THREADS = 2


class _DeviceNetwork:
    """The shard's loop as one device sees it: remembers the device's paho client."""

    def __init__(self, loop: SharedLoop, shape: LinkShape | None) -> None:
        self.loop = loop
        self.shape = shape
        self.client: mqtt.Client | None = None

    def add(self, client: mqtt.Client, *, reconnect_min_s: float,
            reconnect_max_s: float) -> None:
        self.client = client
        self.loop.add(client, reconnect_min_s=reconnect_min_s, reconnect_max_s=reconnect_max_s)
        self.loop.shape(client, self.shape)

    def remove(self, client: mqtt.Client) -> None:
        self.loop.remove(client)


class _Fanout:
    """Plain paho subscribers for the raw fan-out baseline."""

    def __init__(self, loop: SharedLoop, broker: tuple[str, int], prefix: str, count: int,
                 topic: str, expect_bytes: int) -> None:
        self.loop, self.topic, self.expect = loop, topic, expect_bytes
        self.subscribed = 0
        self.done = 0
        self.done_at = 0.0
        self._got: dict[int, int] = {}
        self.clients = []
        for i in range(count):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{prefix}-{i}",
                            clean_session=True, protocol=mqtt.MQTTv311)
            c.on_connect = self._on_connect
            c.on_subscribe = self._on_subscribe
            c.on_message = self._on_message
            c.connect_async(broker[0], broker[1], keepalive=30)
            self.clients.append(c)
            loop.add(c, reconnect_min_s=0.5, reconnect_max_s=2.0)

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self.subscribed += 1

    def _on_message(self, client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        got = self._got[id(client)] = self._got.get(id(client), 0) + len(msg.payload)
        if got >= self.expect and got - len(msg.payload) < self.expect:
            self.done += 1
            self.done_at = time.time()

    def stop(self) -> None:
        for c in self.clients:  # every DISCONNECT queued first, then each waited for
            c.disconnect()
        for c in self.clients:
            self.loop.remove(c)


class Shard:
    """The devices of one shard and the commands that act on them."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.root = Path(spec["root"])
        self.loop = SharedLoop(f"shard-{spec['shard']}-mqtt", seed=int(spec.get("seed", 0)),
                               connect_rate=float(spec.get("connect_rate", 400.0)))
        self.sessions = SessionCache()
        # the agents' job workers take turns (a few at once, each giving its turn up
        # while it waits on its link), not a thousand threads contending for one
        # interpreter lock
        self.job_slots = JobSlots(int(spec.get("job_slots", 2)))
        self.system = SharedSystemMetrics(self.root)
        self.devices = {d["id"]: d for d in spec["devices"]}
        self.agents: dict[str, SimulatedAgent] = {}
        self.networks: dict[str, _DeviceNetwork] = {}
        self.fetched_before: Counter[str] = Counter()  # bytes fetched by crashed incarnations
        self.crashed: set[str] = set()
        self.full: set[str] = set()
        self.fanout: _Fanout | None = None
        self._ops: queue.Queue[tuple[str, list[str], dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        samples = np.load(spec["samples"])["x"].astype(np.float32)
        self.samples = [samples[i:i + 1] for i in range(min(len(samples), 64))]
        self.process = psutil.Process()
        self.rss_base = self.process.memory_info().rss
        self.started = 0
        self.inference_errors = 0
        self.target: int | None = None  # the version being rolled out
        self.converged_at: dict[str, float] = {}  # first seen healthy on it (wall clock)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.loop.start()
        for target, name in ((self._start_agents, "starter"), (self._ticker, "ticker"),
                             (self._work, "faults"), (self._watch, "watch")):
            self._spawn(target, name)
        for k in range(_TRAFFIC_THREADS):
            self._spawn(lambda k=k: self._traffic(k), f"traffic-{k}")

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _config(self, d: dict[str, Any]) -> AgentConfig:
        return AgentConfig(device_id=d["id"], state_dir=self.root / d["id"],
                           trust_root=Path(self.spec["trust_root"]),
                           broker_url=self.spec["broker_url"], api_port=0,
                           hardware_class=d["hardware_class"], tags=dict(d.get("tags", {})),
                           **self.spec.get("agent", {}))

    def _image(self, device_id: str) -> None:
        """Install the factory image's model, as a device imaged with it starts out."""
        image = self.spec.get("image")
        store = ModelStore(self.root / device_id)
        if not image or store.read_state()["active"] is not None:
            return
        manifest_bytes = image["manifest"].encode()
        trust = TargetTrust.from_custom(image["trust"])
        data = {k: Path(v) for k, v in image.get("data", {}).items()}
        installed = store.install(Manifest.decode(manifest_bytes), manifest_bytes,
                                  Path(image["model_path"]), trust, data)  # checks hashes
        store.activate(installed.ref)
        if trust is not None:
            store.raise_floor(installed.manifest.name, trust.release_counter)

    def _new_agent(self, device_id: str) -> SimulatedAgent:
        d = self.devices[device_id]
        self._image(device_id)
        shape = LinkShape(d.get("bandwidth_bps", 0.0), d.get("latency_s", 0.0))
        net = self.networks[device_id] = _DeviceNetwork(self.loop, shape)
        agent = SimulatedAgent(self._config(d), network=net, sessions=self.sessions,
                               system_metrics=self.system,
                               slowdown=float(d.get("slowdown", 1.0)),
                               clock_skew_s=float(d.get("clock_skew_s", 0.0)))
        if device_id in self.full:
            agent.fill_disk()
        agent.start(hosted=True, job_slots=self.job_slots)
        return agent

    def _start_agents(self) -> None:
        gap = 1.0 / float(self.spec.get("start_rate", 200.0))
        for device_id in self.devices:
            if self._stop.is_set():
                return
            t0 = time.monotonic()
            try:
                self.agents[device_id] = self._new_agent(device_id)
            except Exception:
                log.exception("device %s did not start", device_id)
            self.started += 1
            self._stop.wait(max(0.0, gap - (time.monotonic() - t0)))
        # the devices' long-lived objects are in place: each full collection walking a
        # heap of hundreds of agents is a cost of hosting them together, not a device's
        gc.collect()
        gc.freeze()

    def stop(self) -> None:
        self._stop.set()
        self._ops.put(("stop", [], {}))
        for t in self._threads:
            t.join(5.0)
        if self.fanout is not None:
            self.fanout.stop()
        with ThreadPoolExecutor(16) as pool:  # each waits for its death message's ack
            for agent in list(self.agents.values()):
                pool.submit(agent.stop)
        self.loop.stop()

    # -- background work ------------------------------------------------------------------
    def _ticker(self) -> None:
        period = float(self.spec.get("tick_s", 1.0))
        while not self._stop.is_set():
            agents = list(self.agents.values())
            gap = period / max(len(agents), 1)
            start = time.monotonic()
            for i, agent in enumerate(agents):
                if self._stop.is_set():
                    return
                try:
                    agent.tick()
                except Exception:
                    log.exception("tick of %s failed", agent.config.device_id)
                ahead = start + (i + 1) * gap - time.monotonic()
                if ahead > 0.002:
                    self._stop.wait(ahead)
            self._stop.wait(max(0.0, start + period - time.monotonic()))

    def _watch(self) -> None:
        """Note when each device is first healthy on the target (to 0.1 s; no I/O)."""
        while not self._stop.wait(0.1):
            self._note_converged()

    def _note_converged(self) -> None:
        target = self.target
        if target is None:
            return
        for device_id, agent in list(self.agents.items()):
            if device_id in self.converged_at:
                continue
            active = agent.active
            if active is not None and active.version == target and not agent.on_trial_now:
                self.converged_at[device_id] = time.time()

    def _traffic(self, k: int) -> None:
        hz = float(self.spec.get("inference_hz", 0.0))
        if hz <= 0:
            return
        period, i = 1.0 / hz, 0
        while not self._stop.is_set():
            mine = [a for j, a in enumerate(list(self.agents.values()))
                    if j % _TRAFFIC_THREADS == k]
            start = time.monotonic()
            gap = period / max(len(mine), 1)
            for n, agent in enumerate(mine):
                if self._stop.is_set():
                    return
                if agent.active is not None:
                    try:
                        agent.predict(self.samples[i % len(self.samples)])
                    except EdgefleetError:
                        self.inference_errors += 1  # the agent counted it too
                    i += 1
                ahead = start + (n + 1) * gap - time.monotonic()
                if ahead > 0.002:
                    self._stop.wait(ahead)
            self._stop.wait(max(0.0, start + period - time.monotonic()))

    def _work(self) -> None:
        while True:
            op, ids, args = self._ops.get()
            if op == "stop":
                return
            for device_id in ids:
                try:
                    self._apply(op, device_id, args)
                except Exception:
                    log.exception("%s on %s failed", op, device_id)

    def _apply(self, op: str, device_id: str, args: dict[str, Any]) -> None:
        agent = self.agents.get(device_id)
        net = self.networks.get(device_id)
        client = net.client if net is not None else None
        if op == "crash" and agent is not None and client is not None:
            self.loop.sever(client)  # first the link, as when the process dies
            del self.agents[device_id]
            self.fetched_before[device_id] += agent.fetcher.bytes_received
            agent.stop()
            self.crashed.add(device_id)
        elif op == "restart" and device_id not in self.agents:
            self.agents[device_id] = self._new_agent(device_id)
            self.crashed.discard(device_id)
        elif op == "fill_disk":
            self.full.add(device_id)
            if agent is not None:
                agent.fill_disk()
        elif op in ("partition", "heal") and client is not None:
            (self.loop.partition if op == "partition" else self.loop.heal)(client)
        elif op == "shape" and client is not None and net is not None:
            d = self.devices[device_id]
            net.shape = LinkShape(d.get("bandwidth_bps", 0.0), d.get("latency_s", 0.0),
                                  float(args.get("loss", 0.0)))
            self.loop.shape(client, net.shape)

    # -- commands -----------------------------------------------------------------------
    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["cmd"]
        if op == "status":
            return self.status(detail=bool(cmd.get("detail")),
                               telemetry=bool(cmd.get("telemetry")), target=cmd.get("target"))
        if op in ("crash", "restart", "fill_disk", "partition", "heal", "shape"):
            ids = [i for i in cmd.get("ids", []) if i in self.devices]
            self._ops.put((op, ids, cmd))
            return {"queued": len(ids)}
        if op == "target":
            self.target = int(cmd["version"])
            return {}
        if op == "fanout_start":
            self.fanout = _Fanout(self.loop, tuple(cmd["broker"]),  # type: ignore[arg-type]
                                  cmd["prefix"], int(cmd["count"]), cmd["topic"],
                                  int(cmd["expect_bytes"]))
            return {"clients": int(cmd["count"])}
        if op == "fanout_status":
            f = self.fanout
            return {"subscribed": f.subscribed if f else 0, "done": f.done if f else 0,
                    "done_at": f.done_at if f else 0.0}
        if op == "fanout_stop":
            if self.fanout is not None:
                self.fanout.stop()
                self.fanout = None
            return {}
        raise ValueError(f"unknown command {op!r}")

    def status(self, *, detail: bool, telemetry: bool, target: int | None = None
               ) -> dict[str, Any]:
        """Counts over the shard's devices; with ``target``, those not yet healthy on it."""
        # a device that became healthy since the watcher's last pass (≤ 0.1 s ago) counts
        # as converged now: the final report must not miss it
        self._note_converged()
        agents = list(self.agents.items())
        snaps = {device_id: a.snapshot() for device_id, a in agents}
        versions: Counter[str] = Counter(str(s["version"]) for s in snaps.values())
        rejected: Counter[str] = Counter()
        dropped = 0
        for device_id, a in agents:
            rejected.update(a.guard.rejected)
            net = self.networks.get(device_id)
            if net is not None and net.client is not None:
                dropped += self.loop.dropped(net.client)
        out: dict[str, Any] = {
            "devices": len(self.devices), "started": self.started, "running": len(agents),
            "connected": sum(s["connected"] for s in snaps.values()),
            "versions": dict(versions),
            "on_trial": sum(s["on_trial"] for s in snaps.values()),
            "fetched_bytes": sum(s["fetched"] for s in snaps.values())
            + sum(self.fetched_before.values()),
            "from_broadcast_bytes": sum(s["from_broadcast"] for s in snaps.values()),
            "inferences": sum(s["inferences"] for s in snaps.values()),
            "chunks_lost": dropped, "rejected": dict(rejected),
            "rss_bytes": self.process.memory_info().rss, "rss_base_bytes": self.rss_base,
            "cpu_s": sum(self.process.cpu_times()[:2]),
            "threads": threading.active_count(), "sessions": len(self.sessions),
            "connects": self.loop.connects, "connect_failures": self.loop.connect_failures,
            "pending_ops": self._ops.qsize(), "crashed": sorted(self.crashed),
        }
        if target is not None:
            out["not_converged"] = [
                d for d in self.devices if d not in snaps or snaps[d]["version"] != target
                or snaps[d]["on_trial"]]
        if telemetry:
            produced = acked = 0
            for _, a in agents:
                made, delivered = a.buffer.delivered()
                produced += made
                acked += delivered
            out["summaries_produced"], out["summaries_acked"] = produced, acked
        if detail:
            for device_id, snap in snaps.items():
                snap["converged_at"] = self.converged_at.get(device_id)
            out["per_device"] = snaps
            out["converged_at"] = dict(self.converged_at)
        return out


def main() -> None:
    """Read the spec, start the devices, answer commands until ``stop`` or end of input."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # SQLite files and sockets: ~6 per device
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    spec = json.loads(sys.stdin.readline())
    with contextlib.suppress(OSError):  # the devices' CPU is not the controller's: yield to it
        os.nice(int(spec.get("nice", 5)))
    if not spec.get("fsync", True):  # see simulate.start_devices
        os.fsync = lambda fd: None
        agent_telemetry.CLOSE_SYNC = "NORMAL"
    root = Path(spec["root"])
    root.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=root / f"shard-{spec['shard']}.log",
                        level=getattr(logging, spec.get("log_level", "WARNING")),
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    shard = Shard(spec)
    shard.start()
    out = sys.stdout
    out.write(json.dumps({"id": 0, "ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "stop":
            shard.stop()
            out.write(json.dumps({"id": cmd["id"], "stopped": True}) + "\n")
            out.flush()
            return
        try:
            reply = {"id": cmd["id"], **shard.handle(cmd)}
        except Exception as exc:
            log.exception("command %s failed", cmd.get("cmd"))
            reply = {"id": cmd["id"], "error": repr(exc)}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    shard.stop()  # the parent went away


if __name__ == "__main__":
    main()
