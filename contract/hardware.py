"""What the agent runs on: board, CPU features, cores, memory, and a hardware class.

``detect`` reads a handful of files under a root directory (``/`` on a device; a folder
of recorded files in tests): the device-tree model (Raspberry Pi, Jetson), the L4T
release file (Jetson), ``/proc/cpuinfo`` (CPU features: ``asimddp`` on Armv8.2 cores
such as the Pi 5's Cortex-A76, ``avx2``/``avx512_vnni`` on x86) and
``/proc/meminfo``. ``classify`` turns that into the class names bundles are built
for:

=================  ==============================================================
``rpi5``           Raspberry Pi 5 (Cortex-A76: int8 dot-product instructions)
``rpi4``           Raspberry Pi 4 and 400 (Cortex-A72: no int8 dot product)
``rpi``            another Raspberry Pi
``jetson-orin``    Jetson Orin family (L4T r35+, CUDA/TensorRT capable)
``jetson``         an older Jetson
``x86-vnni``       x86-64 with AVX-512 VNNI or AVX-VNNI (fast int8)
``x86-avx2``       x86-64 with AVX2
``arm64-dotprod``  another arm64 board with ``asimddp``
``arm64``          another arm64 board
``generic``        anything else
=================  ==============================================================

``CLASS_TRAITS`` says what each class offers a model (int8 dot-product instructions, a
TensorRT-capable GPU, the runtime its bundles prefer); the optimizer plans variants
from it for the classes it cannot measure. It lives in the contract because agent,
controller and optimizer all speak of these classes.

Pure but for the file reads; nothing here needs root or extra packages.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from pathlib import Path
from typing import Any

__all__ = ["CLASS_TRAITS", "ClassTraits", "HardwareInfo", "classify", "detect"]

_MODEL_FILES = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
_INT8_FEATURES = ("asimddp", "avx512_vnni", "avx_vnni", "avx2", "i8mm", "sve")


@dataclasses.dataclass(frozen=True)
class ClassTraits:
    """What a hardware class offers a model.

    Attributes:
        cpu: the CPU, in words, with the feature that matters for int8.
        int8_dot_product: the CPU has int8 dot-product instructions (``asimddp``, VNNI),
            so int8 kernels beat fp32 ones; without them int8 gains little or loses.
        accelerator: ``"tensorrt"`` where onnxruntime's TensorRT provider builds FP16
            engines from the fp32 model on the device; ``""`` for CPU-only classes.
        runtime: the runtime its bundles prefer when the model converts: ``"litert"``
            (XNNPACK, the Arm-tuned path Raspberry Pi images install) or ``"onnxruntime"``.
    """

    cpu: str
    int8_dot_product: bool
    accelerator: str = ""
    runtime: str = "onnxruntime"


CLASS_TRAITS: dict[str, ClassTraits] = {
    "rpi5": ClassTraits("Cortex-A76, Armv8.2 with asimddp", True, runtime="litert"),
    "rpi4": ClassTraits("Cortex-A72, Armv8.0 without asimddp", False, runtime="litert"),
    "rpi": ClassTraits("older Raspberry Pi core without asimddp", False, runtime="litert"),
    "jetson-orin": ClassTraits("Cortex-A78AE with asimddp, Ampere GPU", True, "tensorrt"),
    "jetson": ClassTraits("Jetson before Orin, CUDA GPU", False, "tensorrt"),
    "x86-vnni": ClassTraits("x86-64 with AVX-512 VNNI or AVX-VNNI", True),
    "x86-avx2": ClassTraits("x86-64 with AVX2, no VNNI", False),
    "arm64-dotprod": ClassTraits("arm64 with asimddp", True),
    "arm64": ClassTraits("arm64 without asimddp", False),
    "generic": ClassTraits("unknown CPU", False),
}


@dataclasses.dataclass(frozen=True)
class HardwareInfo:
    """What ``detect`` found; ``hardware_class`` is ``classify``'s verdict."""

    hardware_class: str
    board: str
    machine: str
    cpu_features: tuple[str, ...]
    cores: int
    ram_bytes: int
    l4t_release: str = ""

    def to_dict(self) -> dict[str, Any]:
        # every field is a plain value: a shallow copy (``asdict`` deep-copies each of the
        # CPU's flags, on every birth)
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["cpu_features"] = [f for f in self.cpu_features if f in _INT8_FEATURES]
        return d


def _read(root: Path, rel: str) -> str:
    try:
        return (root / rel).read_bytes().replace(b"\x00", b"").decode(errors="replace").strip()
    except OSError:
        return ""


def _cpu_features(cpuinfo: str) -> tuple[str, ...]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return tuple(sorted(set(value.split())))
    return ()


def _l4t_release(text: str) -> str:
    """``# R36 (release), REVISION: 3.0, …`` → ``"36.3.0"``."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def _ram_bytes(meminfo: str) -> int:
    m = re.search(r"^MemTotal:\s+(\d+)\s+kB", meminfo, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else 0


def classify(board: str, machine: str, features: tuple[str, ...], l4t_release: str = "") -> str:
    """The hardware class for a board name, architecture, CPU features and L4T release."""
    b = board.lower()
    arch = machine.lower()
    if "raspberry pi 5" in b:
        return "rpi5"
    if "raspberry pi 4" in b or "raspberry pi 400" in b:
        return "rpi4"
    if "raspberry pi" in b:
        return "rpi"
    if l4t_release or "jetson" in b or "nvidia" in b:
        major = int(l4t_release.split(".")[0]) if l4t_release else 0
        return "jetson-orin" if "orin" in b or major >= 35 else "jetson"
    if arch in ("x86_64", "amd64"):
        if "avx512_vnni" in features or "avx_vnni" in features:
            return "x86-vnni"
        return "x86-avx2" if "avx2" in features else "generic"
    if arch in ("aarch64", "arm64"):
        return "arm64-dotprod" if "asimddp" in features else "arm64"
    return "generic"


def detect(root: Path = Path("/"), *, machine: str | None = None,
           cores: int | None = None) -> HardwareInfo:
    """Read the hardware description under ``root``.

    Args:
        root: ``/`` on a device; a directory of recorded files in tests.
        machine: the architecture (default: ``platform.machine()``, or the recorded
            ``machine`` file under ``root`` when there is one).
        cores: CPU count (default: ``os.cpu_count()``, or the processors listed in
            the recorded ``proc/cpuinfo``).
    """
    recorded = root != Path("/")
    board = next((m for m in (_read(root, f) for f in _MODEL_FILES) if m), "")
    cpuinfo = _read(root, "proc/cpuinfo")
    machine = machine or (_read(root, "machine") if recorded else "") or platform.machine()
    if cores is None:
        listed = len(re.findall(r"^processor\s*:", cpuinfo, re.MULTILINE))
        cores = listed if recorded and listed else (os.cpu_count() or 1)
    features = _cpu_features(cpuinfo)
    l4t = _l4t_release(_read(root, "etc/nv_tegra_release"))
    return HardwareInfo(hardware_class=classify(board, machine, features, l4t), board=board,
                        machine=machine, cpu_features=features, cores=cores,
                        ram_bytes=_ram_bytes(_read(root, "proc/meminfo")), l4t_release=l4t)
