"""Model runtimes behind one small interface; onnxruntime first.

This module is the one place onnxruntime errors are translated into edgefleet's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefleet.contract import ModelError, ModelLoadError, TensorSpec, datatypes

from ._litert import LiteRtRuntime, litert_module
from ._providers import choose_providers, open_session
from ._signature import V2_TO_NUMPY, check_feeds, signature_text

__all__ = ["V2_TO_NUMPY", "OnnxRuntime", "Runtime", "available_runtimes", "check_feeds",
           "load_runtime", "signature_text"]

class Runtime(Protocol):
    """A loaded model that can run a batch."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def available_runtimes() -> list[str]:
    """Runtimes and execution providers this device really has, e.g. ``onnxruntime:CPU``."""
    found = []
    try:
        import onnxruntime as ort

        found += [f"onnxruntime:{p.removesuffix('ExecutionProvider')}"
                  for p in ort.get_available_providers()]
    except ImportError:  # pragma: no cover - the agent extra installs it
        pass
    litert = litert_module()
    if litert is not None:  # .tflite models: LiteRT or tflite-runtime, whichever is there
        found.append(f"litert:{litert[0]}")
    return found


class OnnxRuntime:
    """An onnxruntime session with input checking, on the best provider that loads.

    Args:
        path: the ``.onnx`` file.
        intra_op_threads: threads per operator (1 keeps a Pi's other cores free).
        providers: execution providers to ask for (none: by hardware class; see
            ``_providers``); ``self.providers`` reports what is active and why.
        hardware_class: the device's class.
        cache_dir: TensorRT's engine cache.

    Raises:
        ModelLoadError: the file is missing or onnxruntime refuses it.
    """

    def __init__(self, path: Path, *, intra_op_threads: int = 1,
                 providers: list[str] | None = None, hardware_class: str = "generic",
                 cache_dir: Path | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        chosen = choose_providers(list(providers or []), ort.get_available_providers(),
                                  hardware_class=hardware_class, cache_dir=cache_dir)
        try:
            self._session, self.providers = open_session(path, opts, chosen,
                                                         list(providers or []))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/… types
            raise ModelLoadError(f"onnxruntime could not load {path.name}: {exc}") from exc
        self.inputs = [_spec(i) for i in self._session.get_inputs()]
        self.outputs = [_spec(o) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch after checking names, dtypes and shapes.

        Raises:
            InputError: the feeds do not match the model's signature.
            ModelError: the runtime failed on input that matches the signature.
        """
        try:
            results = self._session.run(self._output_names, feeds)
        except Exception as exc:
            # onnxruntime refuses wrong names, dtypes and fixed dimensions itself, so the
            # feeds are checked only now, to say what the model expects (~1 us per call
            # saved); a failure on feeds that fit the signature is the model's
            check_feeds(self.inputs, feeds)
            raise ModelError(f"the model failed on this input: {exc}",
                             reason="inference_failed") from exc
        return dict(zip(self._output_names, results, strict=True))

    def run_unchecked(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        """``session.run`` without checks, for benchmarks that compare against raw."""
        outputs: list[Any] = self._session.run(self._output_names, feeds)
        return outputs


def _spec(arg: Any) -> TensorSpec:
    shape = [d if isinstance(d, int) else (d or "?") for d in arg.shape]
    return TensorSpec(name=arg.name, datatype=datatypes.from_onnx(arg.type), shape=shape)


def load_runtime(runtime: str, path: Path, *, intra_op_threads: int = 1,
                 providers: list[str] | None = None, hardware_class: str = "generic",
                 cache_dir: Path | None = None) -> Runtime:
    """Load ``path`` with the named runtime.

    Raises:
        ModelLoadError: unknown runtime or the file cannot be loaded.
    """
    if runtime == "onnxruntime":
        return OnnxRuntime(path, intra_op_threads=intra_op_threads, providers=providers,
                           hardware_class=hardware_class, cache_dir=cache_dir)
    if runtime == "litert" and litert_module() is not None:
        return LiteRtRuntime(path, threads=intra_op_threads)
    raise ModelLoadError(f"runtime {runtime!r} is not available on this agent",
                         reason="runtime_unavailable")
