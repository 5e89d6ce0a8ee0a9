"""onnxruntime execution providers: which to ask for, and a clean fallback to CPU.

On Jetson-class devices the agent asks for TensorRT (FP16, with its engine cache in
the state directory, so engines are built once per model and device) and CUDA before
the CPU; elsewhere for the CPU only, unless ``execution_providers`` in ``agent.toml``
names others. A provider that is not installed is skipped; one that is installed but
fails to load (a missing CUDA library, an engine build error) makes the agent open
the model on the CPU instead. Either way ``ProviderReport`` says what was asked for,
what is active and why they differ; the agent puts it in its birth and status, and
never fails over a provider.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from edgefleet.contract.hardware import CLASS_TRAITS

__all__ = ["ProviderReport", "choose_providers", "open_session"]

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclasses.dataclass(frozen=True)
class ProviderReport:
    requested: list[str]
    active: list[str]
    fallback: str = ""  # why the first requested provider is not the first active one

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose_providers(wanted: list[str], available: list[str], *, hardware_class: str,
                     cache_dir: Path | None) -> list[tuple[str, dict[str, Any]]]:
    """Providers to try, best first, each with its options; the CPU always ends the list.

    Args:
        wanted: names from ``agent.toml`` (empty: decide by hardware class).
        available: ``onnxruntime.get_available_providers()``.
        hardware_class: the device's class (one whose ``CLASS_TRAITS`` accelerator is
            ``tensorrt`` asks for TensorRT and CUDA).
        cache_dir: where TensorRT keeps built engines.
    """
    if not wanted:
        traits = CLASS_TRAITS.get(hardware_class)
        wanted = [TENSORRT, CUDA] if traits is not None and traits.accelerator == "tensorrt" \
            else []
    chosen: list[tuple[str, dict[str, Any]]] = []
    for name in dict.fromkeys(wanted):
        if name == CPU:
            continue
        if name not in available:
            log.info("execution provider %s is not installed; skipped", name)
            continue
        options: dict[str, Any] = {}
        if name == TENSORRT:
            options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True}
            if cache_dir is not None:
                options["trt_engine_cache_path"] = str(cache_dir)
        chosen.append((name, options))
    return [*chosen, (CPU, {})]


def open_session(path: Path, session_options: Any, providers: list[tuple[str, dict[str, Any]]],
                 requested: list[str]) -> tuple[Any, ProviderReport]:
    """An ``InferenceSession`` on the best provider that loads, and what happened.

    Raises:
        Exception: onnxruntime's own, when even the CPU cannot load the model.
    """
    import onnxruntime as ort

    names = [n for n, _ in providers]
    wanted = requested or names
    if len(providers) > 1:
        try:
            session = ort.InferenceSession(str(path), session_options, providers=names,
                                           provider_options=[o for _, o in providers])
        except Exception as exc:  # a provider that is installed but cannot start
            reason = f"{names[0]} failed to load: {str(exc).splitlines()[0][:200]}"
            log.warning("%s; using the CPU", reason)
            session = ort.InferenceSession(str(path), session_options, providers=[CPU])
            return session, ProviderReport(wanted, session.get_providers(), reason)
    else:
        session = ort.InferenceSession(str(path), session_options, providers=[CPU])
    active = session.get_providers()
    fallback = ""
    if wanted and wanted[0] not in active:
        fallback = f"{wanted[0]} is not usable here"
        if len(providers) > 1:
            log.warning("%s; running on %s", fallback, active[0])
    return session, ProviderReport(wanted, active, fallback)
