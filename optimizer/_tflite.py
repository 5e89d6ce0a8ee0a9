"""A ``.tflite`` variant of a dense ONNX model, written without TensorFlow.

``onnx_to_tflite`` translates the graphs edgefleet's small classifiers are made of —
a chain of ``MatMul`` (or ``Gemm``) + ``Add`` with optional ``Relu``, ending in an
optional ``Softmax`` — into a LiteRT flatbuffer of ``FULLY_CONNECTED`` operators
(with fused ReLU) and ``SOFTMAX``, using the schema classes ``ai-edge-litert`` ships.
Any other graph raises ``OptimizationError`` naming the operator it cannot map:
converting arbitrary models needs the full TensorFlow/ai-edge-torch toolchain, which
is deliberately not a dependency.

Weights are copied exactly, so the float ``.tflite`` computes what the ONNX model
computes (checked against onnxruntime by the tests). An int8 variant is made from the
float one with ai-edge-quantizer (``quantize_tflite``), also without TensorFlow.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.contract import OptimizationError, datatypes

__all__ = ["TfliteRunner", "inspect_tflite", "is_tflite", "onnx_to_tflite", "quantize_tflite",
           "run_tflite", "time_tflite"]


def _dense_chain(model: Any) -> tuple[str, str, list[tuple[np.ndarray, np.ndarray, bool]], bool]:
    """``(input name, output name, [(W[in,out], b, relu)], softmax)`` or OptimizationError."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = list(model.graph.node)
    layers: list[tuple[np.ndarray, np.ndarray, bool]] = []
    softmax = False
    i = 0
    while i < len(nodes):
        node = nodes[i]
        if node.op_type == "Gemm":
            attrs = {a.name: a for a in node.attribute}
            w = init[node.input[1]]
            if "transB" in attrs and attrs["transB"].i:
                w = w.T
            b = init[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[1], w.dtype)
            i += 1
        elif node.op_type == "MatMul" and i + 1 < len(nodes) and nodes[i + 1].op_type == "Add":
            add = nodes[i + 1]
            biases = [init[n] for n in add.input if n in init]
            if node.input[1] not in init or not biases:
                raise OptimizationError("MatMul/Add without constant weights cannot be mapped "
                                        "to FULLY_CONNECTED")
            w, b = init[node.input[1]], biases[0]
            i += 2
        elif node.op_type == "Softmax" and i == len(nodes) - 1 and layers:
            softmax = True
            i += 1
            continue
        else:
            raise OptimizationError(f"the .tflite writer maps dense MLPs only; cannot map "
                                    f"{node.op_type} ({node.name or 'unnamed'})")
        relu = i < len(nodes) and nodes[i].op_type == "Relu"
        i += int(relu)
        layers.append((np.asarray(w, np.float32), np.asarray(b, np.float32).ravel(), relu))
    if not layers:
        raise OptimizationError("no dense layer to convert")
    return model.graph.input[0].name, model.graph.output[0].name, layers, softmax


def onnx_to_tflite(onnx_path: Path, out_path: Path) -> Path:
    """Write a float32 ``.tflite`` equivalent of a dense ONNX classifier.

    Raises:
        OptimizationError: the graph is not a dense chain this writer can map, or
            ``ai-edge-litert`` (for its schema) is not installed.
    """
    import flatbuffers
    import onnx

    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError as exc:
        raise OptimizationError("writing .tflite needs ai-edge-litert "
                                "(pip install 'edgefleet[tflite]')") from exc
    in_name, out_name, layers, softmax = _dense_chain(onnx.load(str(onnx_path)))

    buffers = [s.BufferT()]  # buffer 0: the empty sentinel every model starts with
    tensors: list[Any] = []

    def tensor(name: str, shape: list[int], data: np.ndarray | None = None) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type = name.encode(), shape, s.TensorType.FLOAT32
        t.shapeSignature = [-1 if d == 1 and i == 0 and data is None else d
                            for i, d in enumerate(shape)]
        t.buffer = 0
        if data is not None:
            b = s.BufferT()
            b.data = np.ascontiguousarray(data, dtype=np.float32).tobytes()
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    fc, sm = s.OperatorCodeT(), s.OperatorCodeT()
    fc.builtinCode = fc.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    sm.builtinCode = sm.deprecatedBuiltinCode = s.BuiltinOperator.SOFTMAX
    fc.version = sm.version = 1
    ops = []
    current = tensor(in_name, [1, layers[0][0].shape[0]])
    first = current
    for k, (w, b, relu) in enumerate(layers):
        last = k == len(layers) - 1
        name = out_name if last and not softmax else f"dense{k}"
        wt = tensor(f"dense{k}.weight", list(w.T.shape), w.T)  # TFLite: [out, in]
        bt = tensor(f"dense{k}.bias", [len(b)], b)
        out = tensor(name if not (last and softmax) else "logits", [1, w.shape[1]])
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [current, wt, bt], [out]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = s.FullyConnectedOptionsT()
        op.builtinOptions.fusedActivationFunction = (
            s.ActivationFunctionType.RELU if relu else s.ActivationFunctionType.NONE)
        ops.append(op)
        current = out
    if softmax:
        out = tensor(out_name, [1, layers[-1][0].shape[1]])
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 1, [current], [out]
        op.builtinOptionsType = s.BuiltinOptions.SoftmaxOptions
        op.builtinOptions = s.SoftmaxOptionsT()
        op.builtinOptions.beta = 1.0
        ops.append(op)
        current = out
    graph = s.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [first], [current], ops
    graph.name = b"main"
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [fc, sm], [graph], \
        buffers
    model.description = b"edgefleet: dense ONNX model written as LiteRT"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out_path.write_bytes(bytes(builder.Output()))
    return out_path


def quantize_tflite(float_path: Path, out_path: Path) -> Path:
    """An int8-weight variant of a float ``.tflite`` (ai-edge-quantizer, dynamic range:
    int8 weights, float activations; no calibration data and no TensorFlow needed).

    Raises:
        OptimizationError: ai-edge-quantizer is not installed or refuses the model.
    """
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise OptimizationError("int8 .tflite needs ai-edge-quantizer "
                                "(pip install 'edgefleet[tflite]')") from exc
    try:
        # the quantizer prints a summary to stdout, which belongs to the caller (--json)
        with contextlib.redirect_stdout(io.StringIO()):
            q = quantizer.Quantizer(str(float_path))
            q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            q.quantize().export_model(str(out_path), overwrite=True)
    except Exception as exc:  # the quantizer raises plain exceptions of many kinds
        raise OptimizationError(f"ai-edge-quantizer failed on {float_path.name}: {exc}") \
            from exc
    return out_path


def is_tflite(data: bytes) -> bool:
    """Whether ``data`` is a LiteRT flatbuffer (file identifier ``TFL3`` at offset 4)."""
    return len(data) >= 8 and data[4:8] == b"TFL3"



def _interpreter(path: Path) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise OptimizationError("reading .tflite needs ai-edge-litert "
                                "(pip install 'edgefleet[tflite]')") from exc
    try:
        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise OptimizationError(f"not a loadable .tflite model: {exc}") from exc
    return it


def inspect_tflite(path: Path) -> dict[str, Any]:
    """The model's signature in the registry's form (KServe v2 datatype names).

    Raises:
        OptimizationError: not a loadable ``.tflite`` file (or no LiteRT installed).
    """
    it = _interpreter(path)

    def spec(d: dict[str, Any]) -> dict[str, Any]:
        sig = d.get("shape_signature")
        shape = list(sig if sig is not None and len(sig) else d["shape"])
        return {"name": str(d["name"]), "datatype": datatypes.from_numpy(d["dtype"]),
                "shape": [("batch" if i == 0 else f"dim{i}") if v < 0 else int(v)
                          for i, v in enumerate(shape)]}
    return {"inputs": [spec(d) for d in it.get_input_details()],
            "outputs": [spec(d) for d in it.get_output_details()]}


class TfliteRunner:
    """Runs a ``.tflite`` model on named inputs, resizing for dynamic dimensions;
    returns every output by name (the registry's smoke tests and profiles).

    Raises:
        OptimizationError: not a loadable ``.tflite`` file, or a run that fails.
    """

    def __init__(self, path: Path) -> None:
        self._it = _interpreter(path)
        self._in = self._it.get_input_details()
        self._out = self._it.get_output_details()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        it = self._it
        try:
            resized = False
            for d in self._in:
                shape = list(feeds[d["name"]].shape)
                if shape != list(d["shape"]):
                    it.resize_tensor_input(d["index"], shape)
                    resized = True
            if resized:
                it.allocate_tensors()
                self._in = it.get_input_details()
                self._out = it.get_output_details()
            for d in self._in:
                it.set_tensor(d["index"], np.ascontiguousarray(feeds[d["name"]],
                                                               dtype=d["dtype"]))
            it.invoke()
            return {str(d["name"]): np.array(it.get_tensor(d["index"])) for d in self._out}
        except (KeyError, ValueError, RuntimeError) as exc:
            raise OptimizationError(f"LiteRT run failed: {exc}") from exc


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    """The first output of a ``.tflite`` model on batch ``x`` (controller-side checks)."""
    it = _interpreter(path)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=inp["dtype"]))
    it.invoke()
    return np.array(it.get_tensor(it.get_output_details()[0]["index"]))


def time_tflite(path: Path, x: np.ndarray, *, runs: int, warmup: int) -> np.ndarray:
    """Single-sample latencies (ms) of a ``.tflite`` model, cycling through ``x``."""
    it = _interpreter(path)
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]["index"]
    it.resize_tensor_input(inp["index"], [1, *x.shape[1:]])
    it.allocate_tensors()
    samples = [np.ascontiguousarray(x[i : i + 1], dtype=inp["dtype"]) for i in range(len(x))]
    clock = time.perf_counter
    times = np.empty(runs)
    for i in range(warmup + runs):
        t0 = clock()
        it.set_tensor(inp["index"], samples[i % len(samples)])
        it.invoke()
        it.get_tensor(out)
        if i >= warmup:
            times[i - warmup] = (clock() - t0) * 1000.0
    return times
