"""Running zoo models on their raw runtimes, and reading their signatures."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Port", "run_litert", "run_onnx", "signature"]

Port = tuple[str, str, list[int | str | None]]
"""``(name, numpy dtype name, shape)``; a free dim is its ``dim_param``, ``None`` or -1."""

_ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


@functools.lru_cache(maxsize=32)
def _session(path: str, mtime_ns: int, size: int) -> Any:
    del mtime_ns, size  # part of the cache key: a rewritten file gets a new session
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs by name of an onnxruntime CPU session on ``feeds``."""
    stat = path.stat()
    session = _session(str(path), stat.st_mtime_ns, stat.st_size)
    names = [o.name for o in session.get_outputs()]
    arrays = {k: np.asarray(v) for k, v in feeds.items()}  # numpy scalars → 0-d arrays
    return dict(zip(names, (np.asarray(v) for v in session.run(names, arrays)), strict=True))


def run_litert(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs by name of a LiteRT interpreter, resized to the feeds' shapes first.

    Raises:
        ValueError: a feed is missing or unknown, or would change a fixed dimension.
    """
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    details = {d["name"]: d for d in it.get_input_details()}
    if set(details) != set(feeds):
        raise ValueError(f"feeds {sorted(feeds)} do not match inputs {sorted(details)}")
    for name, d in details.items():
        shape = list(np.shape(feeds[name]))
        if shape != list(d["shape"]):
            it.resize_tensor_input(d["index"], shape, strict=True)
    it.allocate_tensors()
    for name, d in details.items():
        it.set_tensor(d["index"], np.ascontiguousarray(feeds[name], dtype=d["dtype"]))
    it.invoke()
    return {d["name"]: np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}


def _onnx_ports(values: Any, skip: set[str]) -> list[Port]:
    ports: list[Port] = []
    for v in values:
        if v.name in skip:
            continue
        t = v.type.tensor_type
        dims: list[int | str | None] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in t.shape.dim]
        ports.append((v.name, _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), dims))
    return ports


def signature(path: Path, runtime: str) -> tuple[list[Port], list[Port]]:
    """``(inputs, outputs)`` as declared by the file (external data is not read)."""
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))

        def ports(details: list[dict[str, Any]]) -> list[Port]:
            return [(d["name"], np.dtype(d["dtype"]).name,
                     [int(x) for x in d["shape_signature"]]) for d in details]
        return ports(it.get_input_details()), ports(it.get_output_details())
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return (_onnx_ports(model.graph.input, initializers),
            _onnx_ports(model.graph.output, set()))
