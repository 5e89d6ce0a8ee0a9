"""LiteRT flatbuffers written directly with the schema classes (no TensorFlow).

``tflite-face-fixed`` has a batch fixed at 1 in both shape and shape signature, two
heads and a RESHAPE to ``[1, 16, 4]``; ``tflite-seg-dynamic`` declares batch ``-1`` in
its signature, so a runtime has to ``resize_tensor_input`` before a batch of 4.
Constant buffers are 16-byte aligned, as the TFLite converter writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._data import images, save_npz, write_atomic
from ._recipe import Built, Recipe, eval_rng

__all__ = ["RECIPES"]


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


class _Writer:
    """Tensors, buffers and operators of a one-subgraph LiteRT model."""

    def __init__(self, seed: int) -> None:
        s = self.s = _schema()
        self.rng = np.random.default_rng(seed)
        self.buffers: list[Any] = [s.BufferT()]  # buffer 0: the empty sentinel
        self.tensors: list[Any] = []
        self.operators: list[Any] = []
        self.codes: list[int] = []

    def tensor(self, name: str, shape: Sequence[int], signature: Sequence[int] | None = None,
               data: np.ndarray | None = None) -> int:
        """Add a tensor (a constant when ``data`` is given); returns its index."""
        s = self.s
        t = s.TensorT()
        t.name = name.encode()
        t.shape = list(shape)
        t.shapeSignature = list(signature if signature is not None else shape)
        t.type = s.TensorType.INT32 if data is not None and data.dtype == np.int32 \
            else s.TensorType.FLOAT32
        t.buffer = 0
        if data is not None:
            self.buffers.append(_AlignedBuffer(np.ascontiguousarray(data).tobytes()))
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: Sequence[int], outputs: Sequence[int],
           options: Any = None, options_type: int = 0) -> None:
        """Add a builtin operator."""
        if code not in self.codes:
            self.codes.append(code)
        o = self.s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes.index(code), list(inputs), list(outputs)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)

    def conv(self, x: int, name: str, cin: int, cout: int, kernel: int, stride: int,
             out_shape: Sequence[int], signature: Sequence[int], relu: bool) -> int:
        """CONV_2D (SAME padding) with He-initialized ``[cout, k, k, cin]`` weights."""
        s = self.s
        fan_in = kernel * kernel * cin
        w = self.rng.standard_normal((cout, kernel, kernel, cin)) * np.sqrt(2.0 / fan_in)
        wt = self.tensor(f"{name}/weights", w.shape, data=w.astype(np.float32))
        bt = self.tensor(f"{name}/bias", [cout], data=np.zeros(cout, np.float32))
        out = self.tensor(name, out_shape, signature)
        opts = s.Conv2DOptionsT()
        opts.padding = s.Padding.SAME
        opts.strideW = opts.strideH = stride
        opts.dilationWFactor = opts.dilationHFactor = 1
        opts.fusedActivationFunction = (s.ActivationFunctionType.RELU if relu
                                        else s.ActivationFunctionType.NONE)
        self.op(s.BuiltinOperator.CONV_2D, [x, wt, bt], [out], opts,
                s.BuiltinOptions.Conv2DOptions)
        return out

    def dense(self, x: int, name: str, cin: int, cout: int, gain: float) -> int:
        """FULLY_CONNECTED with ``[cout, cin]`` weights, output ``[1, cout]``."""
        s = self.s
        w = self.rng.standard_normal((cout, cin)) * np.sqrt(gain / cin)
        wt = self.tensor(f"{name}/weights", w.shape, data=w.astype(np.float32))
        bt = self.tensor(f"{name}/bias", [cout], data=np.zeros(cout, np.float32))
        out = self.tensor(name, [1, cout])
        opts = s.FullyConnectedOptionsT()
        opts.fusedActivationFunction = s.ActivationFunctionType.NONE
        self.op(s.BuiltinOperator.FULLY_CONNECTED, [x, wt, bt], [out], opts,
                s.BuiltinOptions.FullyConnectedOptions)
        return out

    def reshape(self, x: int, name: str, shape: Sequence[int]) -> int:
        """RESHAPE to a fixed ``shape`` (given as both input tensor and option)."""
        s = self.s
        st = self.tensor(f"{name}/shape", [len(shape)], data=np.asarray(shape, np.int32))
        out = self.tensor(name, shape)
        opts = s.ReshapeOptionsT()
        opts.newShape = list(shape)
        self.op(s.BuiltinOperator.RESHAPE, [x, st], [out], opts,
                s.BuiltinOptions.ReshapeOptions)
        return out

    def finish(self, inputs: Sequence[int], outputs: Sequence[int], description: str) -> bytes:
        """The model's flatbuffer bytes."""
        import flatbuffers

        s = self.s
        codes = []
        for code in self.codes:
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            codes.append(oc)
        graph = s.SubGraphT()
        graph.tensors, graph.operators = self.tensors, self.operators
        graph.inputs, graph.outputs, graph.name = list(inputs), list(outputs), b"main"
        model = s.ModelT()
        model.version, model.operatorCodes, model.subgraphs = 3, codes, [graph]
        model.buffers, model.description = self.buffers, description.encode()
        builder = flatbuffers.Builder(1 << 16)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


class _AlignedBuffer:
    """Packs like the schema's ``BufferT``, but its bytes start on a 16-byte boundary."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def Pack(self, builder: Any) -> int:
        s = _schema()
        builder.StartVector(1, len(self.data), 16)
        builder.head -= len(self.data)
        builder.Bytes[builder.head:builder.head + len(self.data)] = self.data
        builder.vectorNumElems = len(self.data)
        vector = builder.EndVector()
        s.BufferStart(builder)
        s.BufferAddData(builder, vector)
        return int(s.BufferEnd(builder))


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _sample_face(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"image": _nhwc(images(n, 64, 64, rng)) * 2.0 - 1.0}


def build_face(recipe: Recipe, out_dir: Path) -> Built:
    """Fixed batch 1: two stride-2 CONV_2D, flatten, box and score FULLY_CONNECTED heads."""
    w = _Writer(recipe.seed)
    s = w.s
    image = w.tensor("image", [1, 64, 64, 3])
    h = w.conv(image, "conv1", 3, 8, 3, 2, [1, 32, 32, 8], [1, 32, 32, 8], relu=True)
    h = w.conv(h, "conv2", 8, 8, 3, 2, [1, 16, 16, 8], [1, 16, 16, 8], relu=True)
    flat = w.reshape(h, "flatten", [1, 16 * 16 * 8])
    boxes = w.reshape(w.dense(flat, "box_head", 2048, 64, 1.0), "boxes", [1, 16, 4])
    logits = w.dense(flat, "score_head", 2048, 16, 6.0)
    scores = w.tensor("scores", [1, 16])
    w.op(s.BuiltinOperator.LOGISTIC, [logits], [scores])
    path = out_dir / f"{recipe.name}.tflite"
    write_atomic(path, w.finish([image], [boxes, scores], recipe.notes))
    ev = save_npz(out_dir / f"{recipe.name}.eval.npz", _sample_face(24, eval_rng(recipe)))
    cal = save_npz(out_dir / f"{recipe.name}.calibration.npz",
                   _sample_face(16, eval_rng(recipe, calibration=True)))
    return Built(path, ev, cal, None)


def _sample_seg(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"image": _nhwc(images(n, 32, 32, rng))}


def build_seg(recipe: Recipe, out_dir: Path) -> Built:
    """Dynamic batch: CONV_2D ×2, 1×1 CONV_2D to 3 classes, SOFTMAX over the last axis."""
    w = _Writer(recipe.seed)
    s = w.s
    sig8, sig3 = [-1, 32, 32, 8], [-1, 32, 32, 3]
    image = w.tensor("image", [1, 32, 32, 3], sig3)
    h = w.conv(image, "conv1", 3, 8, 3, 1, [1, 32, 32, 8], sig8, relu=True)
    h = w.conv(h, "conv2", 8, 8, 3, 1, [1, 32, 32, 8], sig8, relu=True)
    logits = w.conv(h, "classifier", 8, 3, 1, 1, [1, 32, 32, 3], sig3, relu=False)
    probs = w.tensor("probs", [1, 32, 32, 3], sig3)
    opts = s.SoftmaxOptionsT()
    opts.beta = 1.0
    w.op(s.BuiltinOperator.SOFTMAX, [logits], [probs], opts, s.BuiltinOptions.SoftmaxOptions)
    path = out_dir / f"{recipe.name}.tflite"
    write_atomic(path, w.finish([image], [probs], recipe.notes))
    ev = save_npz(out_dir / f"{recipe.name}.eval.npz", _sample_seg(32, eval_rng(recipe)))
    cal = save_npz(out_dir / f"{recipe.name}.calibration.npz",
                   _sample_seg(16, eval_rng(recipe, calibration=True)))
    return Built(path, ev, cal, None)


RECIPES = (
    Recipe("tflite-face-fixed", "litert", "detection", (),
           "LiteRT NHWC fixed batch 1: CONV_2D, RESHAPE, two FULLY_CONNECTED heads, LOGISTIC",
           31, False, build_face, _sample_face),
    Recipe("tflite-seg-dynamic", "litert", "segmentation", ("background", "foreground", "edge"),
           "LiteRT NHWC batch -1 in shape_signature: needs resize_tensor_input, SOFTMAX", 32,
           True, build_seg, _sample_seg),
)
