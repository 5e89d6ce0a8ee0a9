"""``.tflite`` models through LiteRT (``ai-edge-litert``) or ``tflite-runtime``.

Whichever is installed is used: ``ai_edge_litert.interpreter`` first (LiteRT, the
successor, with wheels for current Pythons), then ``tflite_runtime.interpreter``
(which stops at Python 3.11). An interpreter is not thread-safe and keeps one input
shape at a time, so runs are serialized and the input is resized when the batch size
changes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.contract import ModelError, ModelLoadError, TensorSpec, datatypes

from ._signature import check_feeds

__all__ = ["LiteRtRuntime", "litert_module"]


def litert_module() -> tuple[str, Any] | None:
    """``(name, interpreter module)`` of the LiteRT flavour installed, or None."""
    try:
        from ai_edge_litert import interpreter as litert

        return "ai-edge-litert", litert
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflite

        return "tflite-runtime", tflite
    except ImportError:
        return None


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    shape = list(signature if signature is not None and len(signature) else detail["shape"])
    return TensorSpec(name=str(detail["name"]),
                      datatype=datatypes.from_numpy(detail["dtype"]),
                      shape=[("batch" if i == 0 else f"dim{i}") if d < 0 else int(d)
                             for i, d in enumerate(shape)])


class LiteRtRuntime:
    """A LiteRT interpreter behind the agent's ``Runtime`` interface.

    Args:
        path: the ``.tflite`` file.
        threads: interpreter threads.

    Raises:
        ModelLoadError: no LiteRT installed, or the interpreter refuses the file.
    """

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        found = litert_module()
        if found is None:
            raise ModelLoadError("no LiteRT runtime installed (pip install ai-edge-litert)",
                                 reason="runtime_unavailable")
        self.flavour, module = found
        try:
            self._it = module.Interpreter(model_path=str(path), num_threads=threads)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"LiteRT cannot load {path.name}: {exc}") from exc
        self._in = self._it.get_input_details()
        self._out = self._it.get_output_details()
        self.inputs = [_spec(d) for d in self._in]
        self.outputs = [_spec(d) for d in self._out]
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one call; a dimension the model fixes must be what it says (a fixed batch
        of 1 takes one sample per call), dynamic ones resize the interpreter.

        Raises:
            InputError: feeds that do not match the signature; ModelError if the run fails.
        """
        check_feeds(self.inputs, feeds)
        with self._lock:
            try:
                resized = False
                for d in self._in:
                    shape = list(feeds[d["name"]].shape)
                    if shape != [int(v) for v in d["shape"]]:
                        self._it.resize_tensor_input(d["index"], shape)
                        resized = True
                if resized:
                    self._it.allocate_tensors()
                    self._in = self._it.get_input_details()
                    self._out = self._it.get_output_details()
                for d in self._in:
                    self._it.set_tensor(d["index"], feeds[d["name"]])
                self._it.invoke()
                return {d["name"]: np.array(self._it.get_tensor(d["index"])) for d in self._out}
            except (ValueError, RuntimeError, IndexError) as exc:
                raise ModelError(f"LiteRT run failed: {exc}",
                                 reason="inference_failed") from exc
