"""Execution providers: TensorRT/CUDA where the class has them, a reported fallback to CPU."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from _support import ASSETS, register_digits, wait_deployment, wait_devices_known

from edgefleet.agent._providers import CPU, CUDA, TENSORRT, choose_providers
from edgefleet.agent.runtime import OnnxRuntime
from edgefleet.simulations.fleet import wait_until


def test_jetson_classes_ask_for_tensorrt_fp16_with_a_cache_then_cuda_then_cpu(tmp_path):
    chosen = choose_providers([], [TENSORRT, CUDA, CPU], hardware_class="jetson-orin",
                              cache_dir=tmp_path / "engines")
    assert [n for n, _ in chosen] == [TENSORRT, CUDA, CPU]
    trt = chosen[0][1]
    assert trt["trt_fp16_enable"] and trt["trt_engine_cache_enable"]
    assert trt["trt_engine_cache_path"] == str(tmp_path / "engines")
    # elsewhere, and where a provider is not installed: the CPU
    assert choose_providers([], [CUDA, CPU], hardware_class="rpi5", cache_dir=None) == [(CPU, {})]
    assert choose_providers([], [CPU], hardware_class="jetson-orin",
                            cache_dir=None) == [(CPU, {})]
    assert [n for n, _ in choose_providers([CUDA, CPU, CUDA], [CUDA, CPU],
                                           hardware_class="x86-vnni", cache_dir=None)] == [CUDA,
                                                                                          CPU]


def test_a_provider_that_is_not_installed_falls_back_to_cpu_and_says_so(evalset):
    rt = OnnxRuntime(ASSETS / "digits.onnx", providers=[CUDA])
    assert rt.providers.active == [CPU]
    assert rt.providers.requested == [CUDA] and "not usable" in rt.providers.fallback
    out = rt.run({"pixels": evalset["x"][:4].astype(np.float32)})["probs"]
    assert out.shape == (4, 10)


def test_a_listed_provider_that_fails_to_load_falls_back_to_cpu_and_says_so(monkeypatch,
                                                                          evalset):
    # This machine has no GPU: make onnxruntime list CUDA as installed, as a Jetson with a
    # broken CUDA library would; creating the session on it then fails or is refused.
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *real])
    rt = OnnxRuntime(ASSETS / "digits.onnx", hardware_class="jetson-orin")
    assert rt.providers.requested == [CUDA, CPU]
    assert rt.providers.active[0] == CPU and CUDA in rt.providers.fallback
    assert rt.run({"pixels": evalset["x"][:1].astype(np.float32)})["probs"].shape == (1, 10)


@pytest.mark.parametrize("providers", [[CUDA]])
def test_an_agent_reports_its_class_and_provider_fallback_in_its_birth(controller, make_fleet,
                                                                      providers):
    fleet = make_fleet(1, execution_providers=providers)
    device = fleet.ids[0]
    wait_devices_known(controller, fleet.ids)
    row = register_digits(controller)
    assert wait_deployment(controller, controller.deploy("digits", row["version"])["id"])[
        "state"] == "succeeded"

    def reported():
        hw = controller.store.get_device(device)["hw"]
        return hw if hw.get("providers", {}).get("active") else None
    hw = wait_until(reported, 10)
    assert hw["providers"]["requested"] == providers
    assert hw["providers"]["active"] == [CPU] and hw["providers"]["fallback"]
    assert hw["class"] == fleet.agents[device].hardware_class != "auto"
    assert hw["cores"] >= 1 and hw["machine"]


def test_the_classes_asking_for_tensorrt_are_those_whose_traits_name_it():
    from edgefleet.contract.hardware import CLASS_TRAITS

    assert any(t.accelerator == "tensorrt" for t in CLASS_TRAITS.values())
    for name, traits in CLASS_TRAITS.items():
        first = choose_providers([], [TENSORRT, CUDA, CPU], hardware_class=name,
                                 cache_dir=None)[0][0]
        assert (first == TENSORRT) == (traits.accelerator == "tensorrt"), name
    assert choose_providers([], [TENSORRT, CPU], hardware_class="jetsonish",
                            cache_dir=None)[0][0] == CPU  # an unknown class: the CPU
