"""Per-class variants: a mixed fleet gets the right file per class; others refuse it."""

from __future__ import annotations

import json
import time

import numpy as np
from _support import ASSETS, TOKEN, register_digits, wait_deployment, wait_devices_known
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.contract import DesiredState, JobStatus
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer
from edgefleet.optimizer import onnx_to_tflite, quantize_tflite
from edgefleet.simulations.fleet import wait_until


def test_a_mixed_fleet_gets_its_class_variant_and_refuses_another_class(controller, make_fleet,
                                                                        evalset, tmp_path):
    pi4 = make_fleet(2, prefix="pi4", hardware_class="rpi4")
    pi5 = make_fleet(2, prefix="pi5", hardware_class="rpi5")
    wait_devices_known(controller, pi4.ids + pi5.ids)
    base = register_digits(controller)  # ONNX fp32: the default bundle
    int8 = quantize_tflite(onnx_to_tflite(ASSETS / "digits.onnx", tmp_path / "d.tflite"),
                           tmp_path / "d-int8.tflite")
    controller.registry.add_variant("digits", base["version"], int8.read_bytes(),
                                    variant="tflite-int8", hardware_classes=["rpi5"])

    dep = wait_deployment(controller, controller.deploy("digits", base["version"])["id"])
    assert dep["state"] == "succeeded", dep["jobs"]
    x = evalset["x"][:16].astype(np.float32)
    for fleet, runtime, variant in ((pi4, "onnxruntime", "fp32"), (pi5, "litert",
                                                                     "tflite-int8")):
        for agent in fleet.agents.values():
            manifest = agent._active.installed.manifest
            assert (manifest.runtime, manifest.variant) == (runtime, variant)
            assert np.mean(agent.predict(x).outputs["probs"].argmax(1)
                           == evalset["y"][:16]) >= 0.9

    # a Pi 4 offered the Pi 5's variant refuses it: the class is signed with the bundle
    victim = pi4.agents[pi4.ids[0]]
    job = "dep-forged.pi4-1.v"
    path = controller.registry.manifest_for("digits", base["version"], "rpi5")
    assert path.endswith("/tflite-int8/manifest.json")
    v2 = register_digits(controller)
    api = ApiServer(create_app(controller))  # this time through the CLI and the API
    api.start()
    try:
        added = CliRunner().invoke(app, [
            "model", "add-variant", f"digits:{v2['version']}", str(int8), "--variant",
            "tflite-int8", "--hardware-class", "rpi5", "--json"],
            env={"EDGEFLEET_URL": api.url, "EDGEFLEET_TOKEN": TOKEN})
        assert added.exit_code == 0, added.output
        assert json.loads(added.stdout)["hardware_classes"] == ["rpi5"]
    finally:
        api.stop()
    offered = controller.registry.manifest_for("digits", v2["version"], "rpi5")
    controller._publish_desired([(victim.config.device_id, DesiredState(
        deployment="dep-forged", job=job, model="digits", version=v2["version"],
        manifest=offered, issued_at=time.time()))])
    wait_until(lambda: victim.jobs.done.get(job) == "failed", 20)
    assert JobStatus.decode(victim.jobs.last_status(job)).reason == "wrong_hardware"
    assert victim.active.version == base["version"]
    assert victim._active.installed.manifest.runtime == "onnxruntime"
