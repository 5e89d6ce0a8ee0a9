"""The optimizer makes a variant per hardware class and says why; a mixed fleet runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _support import TOKEN, register_digits, wait_deployment, wait_devices_known
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.contract.hardware import detect
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer
from edgefleet.optimizer import Candidate, choose_for_class


def _cands(int8_ms: float = 0.5, int8_ok: bool = True,
           tflite: bool = True) -> dict[str, Candidate]:
    out = {"fp32": Candidate("fp32", "onnxruntime", "fp32", 0.98, True, 1.0, 4000),
           "int8": Candidate("int8", "onnxruntime", "int8", 0.97 if int8_ok else 0.80,
                             int8_ok, int8_ms, 1000)}
    if tflite:
        out["tflite-fp32"] = Candidate("tflite-fp32", "litert", "fp32", 0.98, True, 0.9, 4000)
        out["tflite-int8"] = Candidate("tflite-int8", "litert", "int8", 0.97, int8_ok, 0.4,
                                       1000)
    return out


@pytest.mark.parametrize(("cls", "cands", "expected"), [
    # this machine's class: the timings decide
    ("x86-vnni", _cands(int8_ms=0.5), ("int8", "int8", "measured")),
    ("x86-vnni", _cands(int8_ms=1.5), ("fp32", "fp32", "measured")),
    ("x86-vnni", _cands(int8_ms=0.5, int8_ok=False), ("fp32", "fp32", "measured")),
    # other classes: by rule, with accuracy still measured
    ("rpi4", _cands(), ("tflite-fp32", "fp32", "rule")),
    ("rpi5", _cands(), ("tflite-int8", "int8", "rule")),
    ("rpi5", _cands(tflite=False), ("int8", "int8", "rule")),
    ("rpi5", _cands(int8_ok=False), ("tflite-fp32", "fp32", "rule")),
    ("x86-avx2", _cands(int8_ms=0.1), ("fp32", "fp32", "rule")),
    ("arm64-dotprod", _cands(), ("int8", "int8", "rule")),
    ("jetson-orin", _cands(), ("fp32", "fp16", "rule")),
    ("some-new-board", _cands(), ("fp32", "fp32", "rule")),
])
def test_each_class_gets_a_variant_measured_here_or_by_rule(cls, cands, expected):
    choice = choose_for_class(cls, cands, measured_class="x86-vnni")
    assert (choice.variant, choice.precision, choice.basis) == expected
    assert choice.why.startswith("measured on this machine" if choice.basis == "measured"
                                 else "by rule")
    if cls == "rpi5" and "tflite-int8" not in cands:
        assert "litert preferred, but no litert candidate" in choice.why
    if cls == "some-new-board":
        assert "unknown class" in choice.why
    if cls == "jetson-orin":
        assert "TensorRT" in choice.why and "FP16" in choice.why


def test_choosing_needs_the_fp32_onnx_model():
    cands = _cands()
    del cands["fp32"]
    with pytest.raises(ValueError, match="fp32 ONNX"):
        choose_for_class("rpi4", cands, measured_class="x86-vnni")


@pytest.mark.slow
def test_optimizing_for_a_mixed_fleet_reports_each_class_and_each_runs_its_variant(
        controller, make_fleet, evalset):
    here = detect().hardware_class
    classes = ["rpi4", "rpi5", "jetson-orin", here]
    fleets = {c: make_fleet(1, prefix=c, hardware_class=c) for c in classes}
    wait_devices_known(controller, [d for f in fleets.values() for d in f.ids])
    base = register_digits(controller)
    api = ApiServer(create_app(controller))
    api.start()
    try:
        args = ["model", "optimize", f"digits:{base['version']}"]
        for c in classes:
            args += ["--hardware-class", c]
        env = {"EDGEFLEET_URL": api.url, "EDGEFLEET_TOKEN": TOKEN, "COLUMNS": "250"}
        done = CliRunner().invoke(app, [*args, "--json"], env=env)
        assert done.exit_code == 0, done.output
        row = json.loads(done.stdout)
        human = CliRunner().invoke(app, args, env=env)  # the table a person reads
        assert human.exit_code == 0, human.output
        assert "variant per class" in human.output
        for c in classes:
            assert c in human.output
        assert "measured" in human.output and "by rule" in human.output
    finally:
        api.stop()

    report = row["report"]
    chosen = {c["hardware_class"]: c for c in report["classes"]}
    assert list(chosen) == classes and report["machine_class"] == here
    assert {c: chosen[c]["basis"] for c in classes} == {
        "rpi4": "rule", "rpi5": "rule", "jetson-orin": "rule", here: "measured"}
    # this machine's choice is what its measurements say: the fastest ONNX candidate
    # within the accuracy budget (the timings are in the report, nothing is assumed)
    cands = report["candidates"]
    onnx_ok = [c for c in cands.values() if c["runtime"] == "onnxruntime" and c["accuracy_ok"]]
    assert chosen[here]["variant"] == min(onnx_ok, key=lambda c: c["p50_ms"])["variant"]
    assert f"{cands['fp32']['p50_ms']:.4f} ms" in chosen[here]["why"]
    assert report["tflite"]["made"] is True
    assert (chosen["rpi4"]["variant"], chosen["rpi5"]["variant"]) == ("tflite-fp32",
                                                                      "tflite-int8")
    assert (chosen["jetson-orin"]["variant"], chosen["jetson-orin"]["precision"]) == (
        "fp32", "fp16")
    v = row["version"]
    registered = {x["variant"]: x["hardware_classes"]
                  for x in controller.registry.variants("digits", v)}
    expected: dict[str, list[str]] = {}
    for c in classes:
        if chosen[c]["variant"] != "fp32":
            expected.setdefault(chosen[c]["variant"], []).append(c)
    assert registered == expected

    dep = wait_deployment(controller, controller.deploy("digits", v)["id"], 90)
    assert dep["state"] == "succeeded", dep["jobs"]
    x, y = evalset["x"][:32].astype(np.float32), evalset["y"][:32]
    for c, fleet in fleets.items():
        for agent in fleet.agents.values():
            manifest = agent._active.installed.manifest
            assert (manifest.version, manifest.variant, manifest.runtime) == (
                v, chosen[c]["variant"], chosen[c]["runtime"])
            assert np.mean(agent.predict(x).outputs["probs"].argmax(1) == y) >= 0.9
    # a Pi 5 without LiteRT gets the default ONNX bundle, which it can run
    assert controller.registry.manifest_for("digits", v, "rpi5", ["onnxruntime"]).endswith(
        f"digits/{v}/manifest.json")
    assert controller.registry.manifest_for("digits", v, "rpi5", ["onnxruntime", "litert"]) \
        .endswith("/tflite-int8/manifest.json")
