"""A rollout through the controller vs a raw MQTT fan-out of the same bundle.

Measured by ``edgefleet simulate`` (``simulate.run_scenario``), which runs a simulated
fleet; this benchmark only calls it and reports its figures, so there is one fleet
simulator: ``rollout_s`` (the signed bundle, offered through the controller, installed
and serving on every device), ``raw_fanout_s`` (the same bytes published to the same
devices over raw MQTT, no controller, no verification) and ``target_ratio`` (the
rollout's budget as a multiple of the raw fan-out). The rest is kept in the JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..report import _by_thread
from . import make_result

__all__ = ["SIZES", "run"]

SIZES = {"tiny": 10, "small": 50, "medium": 200, "large": 1_000, "full": 1_000}  # devices
HEALTHY_WITHIN_S = 10.0  # every device healthy on the new bundle within this
CONTROLLER_MS_PER_DEVICE = 1.0  # controller CPU per device updated, at most
BYTES_PER_BUNDLE_WAVE = 1.2  # bytes out of the controller per bundle byte per wave


def run(size: str = "full", progress: Callable[[str], None] | None = None
        ) -> list[dict[str, Any]]:
    """Rows ``rollout`` (seconds until every device is healthy, against the raw fan-out:
    at most ``HEALTHY_WITHIN_S`` and 3x), ``rollout.controller_cpu`` (ms of controller
    CPU per device, against the broker's in the same rollout) and ``rollout.bytes_out``
    (bytes out of the controller, repairs apart, against the bundle's bytes times its
    waves).

    Raises:
        ValueError: an unknown size.
        RuntimeError: the scenario's report has no ``rollout_s`` (the rollout did not
            reach every device) or no ``raw_fanout_s``.
    """
    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    from ..simulate import run_scenario  # (imports the controller: only when it runs)

    devices = SIZES[size]
    report = run_scenario(devices, quick=size == "tiny", progress=progress)
    if report.get("rollout_s") is None or not report.get("raw_fanout_s"):
        raise RuntimeError(f"the scenario measured no rollout_s/raw_fanout_s: rollout_s="
                           f"{report.get('rollout_s')}, raw_fanout_s={report.get('raw_fanout_s')}")
    rollout, raw = float(report.pop("rollout_s")), float(report.pop("raw_fanout_s"))
    ratio_target = float(report.pop("target_ratio"))
    ratio = rollout / raw
    why = str(report.pop("why", ""))
    f = report["figures"]
    rows = [make_result(
        "rollout", figure=round(rollout, 3), unit="s", baseline=round(raw, 3),
        ratio=round(ratio, 3), target=f"<= {HEALTHY_WITHIN_S:g} s and <= {ratio_target:g}x raw",
        passed=rollout <= HEALTHY_WITHIN_S and ratio <= ratio_target,
        target_value=HEALTHY_WITHIN_S, target_of="figure", target_op="<=", why=why,
        ratio_target=ratio_target, devices=devices,
        baseline_is="raw MQTT fan-out of the same bundle bytes", scenario=report)]
    cpu = f.get("cpu_s_timed_part") or {}
    ctl_ms = 1000.0 * float(cpu.get("controller", 0.0)) / devices
    device_ms = 1000.0 * float(cpu.get("shards", 0.0)) / devices
    rows.append(make_result(
        "rollout.controller_cpu", figure=round(ctl_ms, 2), unit="ms/device",
        baseline=round(device_ms, 2), ratio=round(ctl_ms / device_ms, 3) if device_ms else 0.0,
        target=f"<= {CONTROLLER_MS_PER_DEVICE:g} ms per device",
        passed=ctl_ms <= CONTROLLER_MS_PER_DEVICE, target_value=CONTROLLER_MS_PER_DEVICE,
        target_of="figure", target_op="<=", devices=devices,
        why=f"controller CPU per device by thread: {_by_thread(f, devices)}; "
            f"{int(f.get('job_statuses', 0)) / devices:.2f} job statuses read per device",
        baseline_is="each device's own CPU for the update, in the same rollout",
        by_thread_s=f.get("controller_cpu_by_thread_s", {})))
    waves = int((report.get("deployment") or {}).get("waves") or 1)
    # the bundle's files as broadcast (each once); pulled whole when not broadcasting
    bundle = int(f.get("bytes_broadcast", 0)) - int(f.get("bytes_broadcast_metadata", 0)) \
        if f.get("transport") == "broadcast" else int(f.get("bytes_bundle_pulled", 0)) // devices
    out, repaired = int(f.get("bytes_out_of_controller", 0)), int(f.get("bytes_repaired", 0))
    base = bundle * waves
    ratio_out = (out - repaired) / base if base else 0.0
    rows.append(make_result(
        "rollout.bytes_out", figure=out - repaired, unit="bytes", baseline=base,
        ratio=round(ratio_out, 3),
        target=f"<= {BYTES_PER_BUNDLE_WAVE:g}x bundle x waves (+ repairs)",
        passed=ratio_out <= BYTES_PER_BUNDLE_WAVE, target_value=BYTES_PER_BUNDLE_WAVE,
        target_of="ratio", target_op="<=", devices=devices, waves=waves,
        repaired_bytes=repaired, transport=f.get("transport"),
        why=(f"{f.get('bytes_broadcast', 0)} B broadcast (bundle and metadata), "
             f"{f.get('bytes_metadata_served', 0)} B of metadata pulled (timestamps, root "
             f"probes), {repaired} B repaired, {f.get('bytes_bundle_pulled', 0)} B of bundle "
             f"pulled"),
        baseline_is="the bundle's bytes times the deployment's waves"))
    return rows
