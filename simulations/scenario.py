"""Simulation scenarios: fleet composition, the rollout to run and timed faults. Pure.

A scenario is a TOML (or JSON) file; ``load_scenario`` checks it and ``plan`` turns it
plus a fleet size into devices (each with its profile and shard) and a timeline of
actions. Nothing here starts a process or touches the network. Example::

    name = "broker restart during a rollout"
    devices = 40                    # when --devices is not given
    duration_s = 90                 # the timed part never runs longer

    [model]
    source = "digits"               # the bundled 1.2 MB MLP; "tiny" (3 KB) or an .onnx path

    [fleet]
    profiles = [{profile = "rpi4", share = 3}, {profile = "x86", share = 1}]
    start_on = "rollout"            # devices run v1 at t=0: "none", "preinstalled", "rollout"
    inference_hz = 1.0              # per device, on eval samples
    summary_window_s = 5.0

    [rollout]                       # without it: no rollout, the fleet just runs
    at = 1.0                        # the next version is deployed at t=1 s
    strategy = "all-at-once"
    policy = {max_failure_rate = 0.1, wave_timeout_s = 120}

    [[faults]]
    kind = "broker_restart"
    at = 4.0
    down_s = 2.0

Fault kinds (devices are picked by ``fraction`` of the fleet or a ``devices`` count,
from a shuffle seeded by ``seed``; two faults never pick the same device):

``broker_restart``  ``at``, ``down_s`` (1), ``mode`` ("kill": SIGKILL; "stop": SIGTERM)
``partition``       ``from``, ``until``: the devices' links silently carry nothing
``crash``           ``at``, ``restart_after`` (none: they stay down): process death
``flaky``           ``loss`` (chunk answers lost), ``from`` (0), ``until`` (the end)
``clock_skew``      ``seconds``: the devices' clocks are that far off from the start;
                    at ``at`` (0) each is sent a signed ``rebirth`` command
``disk_full``       ``at``: installing a model fails with ENOSPC from then on
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["FAULT_KINDS", "PROFILES", "Action", "DeviceProfile", "Fault", "Plan", "PlannedDevice",
           "Scenario", "builtin_scenarios", "load_scenario", "parse_scenario", "plan"]

SCENARIO_DIR = Path(__file__).parent / "scenarios"
FAULT_KINDS = ("broker_restart", "partition", "crash", "flaky", "clock_skew", "disk_full")


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """How a device class differs from this machine.

    ``slowdown``: inference takes this many times as long as here. ``bandwidth_mbps``
    and ``latency_ms``: the device's downlink and round trip. ``memory_mb``: what the
    board has (reported beside the agent's measured memory; not enforced).
    """

    name: str
    hardware_class: str
    slowdown: float = 1.0
    bandwidth_mbps: float = 0.0  # 0: unlimited
    latency_ms: float = 0.0
    memory_mb: int = 0

    def __post_init__(self) -> None:
        if self.slowdown < 1 or self.bandwidth_mbps < 0 or self.latency_ms < 0:
            raise ValueError(f"profile {self.name}: slowdown ≥ 1, bandwidth and latency ≥ 0")


# Rough figures for the digits-sized models this runs: CPU time relative to a current
# x86 core, a typical link for where such boards sit, and their usual RAM.
PROFILES = {
    "rpi4": DeviceProfile("rpi4", "rpi4", slowdown=6.0, bandwidth_mbps=40.0, latency_ms=30.0,
                          memory_mb=4096),
    "rpi5": DeviceProfile("rpi5", "rpi5", slowdown=2.5, bandwidth_mbps=100.0, latency_ms=20.0,
                          memory_mb=8192),
    "jetson": DeviceProfile("jetson", "jetson-orin", slowdown=2.0, bandwidth_mbps=200.0,
                            latency_ms=10.0, memory_mb=8192),
    "x86": DeviceProfile("x86", "x86-avx2", slowdown=1.0, bandwidth_mbps=1000.0,
                         latency_ms=2.0, memory_mb=16384),
}


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    start: float = 0.0  # at / from
    end: float | None = None  # until / at + restart_after / at + down_s
    fraction: float = 0.0
    devices: int = 0
    loss: float = 0.0
    seconds: float = 0.0
    mode: str = "kill"


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A checked scenario file (see the module docstring for the fields)."""

    name: str
    devices: int = 20
    seed: int = 1
    duration_s: float = 120.0
    settle_s: float = 2.0
    sample_s: float = 1.0
    profiles: tuple[tuple[DeviceProfile, float], ...] = ((PROFILES["x86"], 1.0),)
    inference_hz: float = 1.0
    summary_window_s: float = 5.0
    tick_s: float = 1.0
    per_shard: int = 250
    job_slots: int = 2  # agents of a shard applying a job at once (waits on links apart)
    agent: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: str = "digits"
    start_on: str = "none"  # none | preinstalled | rollout
    rollout: dict[str, Any] | None = None
    fanout_baseline: bool = True
    faults: tuple[Fault, ...] = ()
    description: str = ""
    source: str = ""


@dataclasses.dataclass(frozen=True)
class PlannedDevice:
    id: str
    profile: DeviceProfile
    shard: int
    clock_skew_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class Action:
    """One thing the simulation does at ``t`` seconds after the timed part starts."""

    t: float
    kind: str  # deploy | broker_down | broker_up | partition | heal | crash | command | …
    ids: tuple[str, ...] = ()
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    fault: int = -1  # index into scenario.faults (-1: not a fault)


@dataclasses.dataclass(frozen=True)
class Plan:
    devices: tuple[PlannedDevice, ...]
    shards: int
    actions: tuple[Action, ...]
    picked: dict[int, tuple[str, ...]]  # fault index → its devices

    def faulted(self, kind: str, faults: tuple[Fault, ...]) -> set[str]:
        """Devices touched by faults of ``kind``."""
        return {d for i, ids in self.picked.items() if faults[i].kind == kind for d in ids}

    def never_restarted(self, faults: tuple[Fault, ...]) -> set[str]:
        """Devices a crash fault stops for good (no ``end``)."""
        return {d for i, ids in self.picked.items()
                if faults[i].kind == "crash" and faults[i].end is None for d in ids}


def _num(data: dict[str, Any], key: str, default: float, *, low: float = 0.0) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < low:
        raise ValueError(f"{key} must be a number ≥ {low}, got {value!r}")
    return float(value)


def _profile(entry: dict[str, Any]) -> tuple[DeviceProfile, float]:
    name = str(entry.get("profile") or entry.get("name") or "")
    base = PROFILES.get(name)
    fields = {k: entry[k] for k in ("hardware_class", "slowdown", "bandwidth_mbps",
                                    "latency_ms", "memory_mb") if k in entry}
    if base is None and "hardware_class" not in fields:
        raise ValueError(f"unknown profile {name!r} (built in: {', '.join(PROFILES)}); a new "
                         "one needs at least hardware_class")
    profile = dataclasses.replace(base, **fields) if base else DeviceProfile(name=name, **fields)
    return profile, _num(entry, "share", 1.0)


def _fault(entry: dict[str, Any]) -> Fault:
    kind = entry.get("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")
    unknown = set(entry) - {"kind", "at", "from", "until", "down_s", "restart_after", "fraction",
                            "devices", "loss", "seconds", "mode"}
    if unknown:
        raise ValueError(f"{kind}: unknown fields {sorted(unknown)}")
    start = _num(entry, "from" if kind in ("partition", "flaky") else "at", 0.0)
    end: float | None = None
    if kind == "broker_restart":
        end = start + _num(entry, "down_s", 1.0)
        if entry.get("mode", "kill") not in ("kill", "stop"):
            raise ValueError("broker_restart mode must be kill or stop")
    elif kind == "partition":
        end = _num(entry, "until", start)
        if end <= start:
            raise ValueError("partition needs until > from")
    elif kind == "crash" and "restart_after" in entry:
        end = start + _num(entry, "restart_after", 0.0)
    elif kind == "flaky" and "until" in entry:
        end = _num(entry, "until", start)
    fraction, devices = _num(entry, "fraction", 0.0), int(_num(entry, "devices", 0))
    if kind != "broker_restart" and not (0 < fraction <= 1 or devices > 0):
        raise ValueError(f"{kind}: give a fraction (0, 1] or a devices count")
    loss = _num(entry, "loss", 0.0)
    if kind == "flaky" and not 0 < loss < 1:
        raise ValueError("flaky needs 0 < loss < 1")
    return Fault(kind=kind, start=start, end=end, fraction=fraction, devices=devices, loss=loss,
                 seconds=float(entry.get("seconds", 0.0)), mode=str(entry.get("mode", "kill")))


def parse_scenario(data: dict[str, Any], *, source: str = "") -> Scenario:
    """Check a scenario's data (as read from TOML/JSON).

    Raises:
        ValueError: unknown fields, bad values, an unknown profile or fault kind.
    """
    known = {"name", "description", "devices", "seed", "duration_s", "settle_s", "sample_s",
             "fleet", "model", "rollout", "baseline", "faults"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown scenario fields {sorted(unknown)}")
    fleet = dict(data.get("fleet", {}))
    fleet_known = {"profiles", "inference_hz", "summary_window_s", "tick_s", "per_shard", "agent",
                   "start_on", "job_slots"}
    if set(fleet) - fleet_known:
        raise ValueError(f"unknown [fleet] fields {sorted(set(fleet) - fleet_known)}")
    profiles = tuple(_profile(p) for p in fleet.get("profiles", [{"profile": "x86"}]))
    if not profiles or sum(share for _, share in profiles) <= 0:
        raise ValueError("[fleet] profiles need a positive share in total")
    rollout = data.get("rollout")
    if rollout is not None:
        rollout = dict(rollout)
        bad = set(rollout) - {"at", "strategy", "policy"}
        if bad:
            raise ValueError(f"unknown [rollout] fields {sorted(bad)}")
        _num(rollout, "at", 0.0)
    start_on = str(fleet.get("start_on", "none"))
    if start_on not in ("none", "preinstalled", "rollout"):
        raise ValueError("[fleet] start_on must be none, preinstalled or rollout")
    model = dict(data.get("model", {}))
    if set(model) - {"source"}:
        raise ValueError(f"unknown [model] fields {sorted(set(model) - {'source'})}")
    return Scenario(
        name=str(data.get("name", Path(source).stem or "scenario")),
        description=str(data.get("description", "")),
        devices=int(_num(data, "devices", 20, low=1)), seed=int(_num(data, "seed", 1)),
        duration_s=_num(data, "duration_s", 120.0, low=1.0),
        settle_s=_num(data, "settle_s", 2.0), sample_s=_num(data, "sample_s", 1.0, low=0.1),
        profiles=profiles, inference_hz=_num(fleet, "inference_hz", 1.0),
        summary_window_s=_num(fleet, "summary_window_s", 5.0, low=0.5),
        tick_s=_num(fleet, "tick_s", 1.0, low=0.05),
        per_shard=int(_num(fleet, "per_shard", 250, low=1)), agent=dict(fleet.get("agent", {})),
        job_slots=int(_num(fleet, "job_slots", 2, low=1)),
        model=str(model.get("source", "digits")), start_on=start_on, rollout=rollout,
        fanout_baseline=bool(dict(data.get("baseline", {})).get("fanout", True)),
        faults=tuple(_fault(dict(f)) for f in data.get("faults", [])), source=source)


def builtin_scenarios() -> dict[str, Path]:
    """The example scenarios shipped beside this module, by name."""
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.toml"))}


def load_scenario(path_or_name: str | Path) -> Scenario:
    """Read a scenario file (``.toml`` or ``.json``), or a built-in one by name.

    Raises:
        FileNotFoundError: no such file and no built-in scenario of that name.
        ValueError: the file is not valid TOML/JSON or not a valid scenario.
    """
    path = Path(path_or_name)
    if not path.exists():
        builtin = builtin_scenarios().get(str(path_or_name))
        if builtin is None:
            raise FileNotFoundError(f"no scenario file {path} and no built-in scenario of that "
                                    f"name (built in: {', '.join(builtin_scenarios())})")
        path = builtin
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return parse_scenario(data, source=str(path))


def _counts(n: int, shares: list[float]) -> list[int]:
    """Split ``n`` by ``shares`` (largest remainder): the counts add up to ``n``."""
    total = sum(shares)
    exact = [n * s / total for s in shares]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[:n - sum(counts)]:
        counts[i] += 1
    return counts


def plan(scenario: Scenario, devices: int | None = None, *, shards: int | None = None) -> Plan:
    """Devices, shards and the timeline of actions for a run of ``devices`` devices.

    Raises:
        ValueError: faults ask for more devices than the fleet has.
    """
    n = devices or scenario.devices
    # one shard per ``per_shard`` devices, and one more shard than there are cores once
    # the fleet fills them half: a shard runs its Python on one core at a time (the
    # interpreter lock), so with a shard per core a core idles whenever a shard waits
    spare = min((os.cpu_count() or 1) + 1, math.ceil(2 * n / scenario.per_shard))
    k = shards or max(1, math.ceil(n / scenario.per_shard), spare)
    k = min(k, n)
    profiles = [p for p, _ in scenario.profiles]
    counts = _counts(n, [s for _, s in scenario.profiles])
    order = [p for p, c in zip(profiles, counts, strict=True) for _ in range(c)]
    ids = [f"sim-{i + 1:05d}" for i in range(n)]
    rng = random.Random(scenario.seed)
    pool = list(ids)
    rng.shuffle(pool)
    picked: dict[int, tuple[str, ...]] = {}
    for i, f in enumerate(scenario.faults):
        if f.kind == "broker_restart":
            continue
        want = f.devices or max(1, round(f.fraction * n))
        if want > len(pool):
            raise ValueError(f"fault {i} ({f.kind}) wants {want} devices; {len(pool)} are left "
                             f"(faults never share devices)")
        picked[i], pool = tuple(sorted(pool[:want])), pool[want:]
    skew = {d: scenario.faults[i].seconds for i, ds in picked.items()
            if scenario.faults[i].kind == "clock_skew" for d in ds}
    planned = tuple(PlannedDevice(id=d, profile=order[j], shard=j % k,
                                  clock_skew_s=skew.get(d, 0.0)) for j, d in enumerate(ids))
    actions: list[Action] = []
    if scenario.rollout is not None:
        actions.append(Action(float(scenario.rollout.get("at", 0.0)), "deploy"))
    for i, f in enumerate(scenario.faults):
        who = picked.get(i, ())
        if f.kind == "broker_restart":
            actions += [Action(f.start, "broker_down", args={"mode": f.mode}, fault=i),
                        Action(f.end or f.start, "broker_up", fault=i)]
        elif f.kind == "partition":
            actions += [Action(f.start, "partition", who, fault=i),
                        Action(f.end or f.start, "heal", who, fault=i)]
        elif f.kind == "crash":
            actions.append(Action(f.start, "crash", who, fault=i))
            if f.end is not None:
                actions.append(Action(f.end, "restart", who, fault=i))
        elif f.kind == "flaky":
            actions.append(Action(f.start, "shape", who, {"loss": f.loss}, fault=i))
            if f.end is not None:
                actions.append(Action(f.end, "shape", who, {"loss": 0.0}, fault=i))
        elif f.kind == "disk_full":
            actions.append(Action(f.start, "fill_disk", who, fault=i))
        elif f.kind == "clock_skew":  # a signed command, which each checks by its own clock
            actions.append(Action(f.start, "command", who, {"action": "rebirth"}, fault=i))
    actions.sort(key=lambda a: a.t)
    return Plan(devices=planned, shards=k, actions=tuple(actions), picked=picked)
