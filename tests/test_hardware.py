"""Hardware detection from recorded device files: each kind of device gets its class."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.contract.hardware import classify, detect

RECORDED = Path(__file__).parent / "fixtures" / "hardware"


@pytest.mark.parametrize(("device", "klass", "cores", "dotprod"), [
    ("rpi4", "rpi4", 4, False),
    ("rpi5", "rpi5", 4, True),
    ("jetson-orin", "jetson-orin", 12, True),
])
def test_arm_boards_are_recognised_with_their_int8_capability(device, klass, cores, dotprod):
    info = detect(RECORDED / device)
    assert info.hardware_class == klass
    assert info.machine == "aarch64" and info.cores == cores
    assert ("asimddp" in info.cpu_features) is dotprod
    assert info.ram_bytes > 3 * 2**30


def test_jetson_reports_its_l4t_release():
    info = detect(RECORDED / "jetson-orin")
    assert info.l4t_release == "36.3.0"
    assert info.board == "NVIDIA Jetson AGX Orin Developer Kit"


def test_x86_box_is_classed_by_its_vector_extensions():
    info = detect(RECORDED / "x86")
    assert info.machine == "x86_64"
    assert info.hardware_class == ("x86-vnni" if "avx512_vnni" in info.cpu_features
                                   else "x86-avx2")
    assert "avx2" in info.to_dict()["cpu_features"]


def test_classification_rules():
    assert classify("Raspberry Pi 400 Rev 1.0", "aarch64", ()) == "rpi4"
    assert classify("Raspberry Pi 3 Model B", "aarch64", ()) == "rpi"
    assert classify("NVIDIA Jetson Nano Developer Kit", "aarch64", (), "32.7.4") == "jetson"
    assert classify("", "aarch64", ("asimd", "asimddp")) == "arm64-dotprod"
    assert classify("", "aarch64", ("asimd",)) == "arm64"
    assert classify("", "x86_64", ("sse4_2",)) == "generic"
    assert classify("", "riscv64", ()) == "generic"


def test_missing_files_give_a_generic_answer(tmp_path):
    info = detect(tmp_path, machine="aarch64", cores=2)
    assert info.hardware_class == "arm64" and info.board == "" and info.ram_bytes == 0
    here = detect()  # this machine: whatever it is, detection must not fail
    assert here.cores >= 1 and here.hardware_class
