"""A small ONNX graph builder with seeded weights, and data-dependent initialization.

Random weights alone give models whose outputs are constant, saturated or dead. The
helpers here look at real activations instead (``probe`` runs the partial graph in
onnxruntime on calibration data, single-threaded so the numbers repeat) and set
heads and batch norms from their statistics: logits come out centred with unit-ish
spread, so a classifier's argmax varies over inputs and a sigmoid stays off its rails.

Classifier heads go further and behave as trained ones do (``classifier_head``): a
trained network's features fall into clusters, one per class, and it answers most
inputs with confidence. Here the classes are clusters of the features of the very
rows a model is evaluated on, the head is their nearest-centroid rule, and its scale
makes the softmax confident, so a few percent of numeric noise (int8) does not move
the rows across class borders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._data import write_atomic

__all__ = ["IR_FOR_OPSET", "OnnxGraph", "bn_from_stats", "classifier_head", "run_model",
           "save_onnx", "session", "standard_head", "value_info"]

IR_FOR_OPSET = {11: 6, 12: 7, 13: 7, 16: 8, 17: 8}
"""The IR version exporters wrote alongside each opset."""

_DTYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}


def value_info(name: str, dtype: str, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    """A graph input/output description; string dims are symbolic (``dim_param``)."""
    return helper.make_tensor_value_info(name, _DTYPES[dtype],
                                         None if shape is None else list(shape))


class OnnxGraph:
    """Nodes and initializers under construction, with a seeded weight generator."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    def fresh(self, prefix: str) -> str:
        """A new unique tensor/node name starting with ``prefix``."""
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return f"{prefix}_{n}"

    def init(self, prefix: str, array: np.ndarray | float | int | Sequence[Any],
             dtype: str = "float32") -> str:
        """Add an initializer (``prefix`` made unique) and return its name."""
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def constant(self, prefix: str, array: np.ndarray) -> str:
        """A ``Constant`` node holding ``array`` (not an initializer); returns its output."""
        name = self.fresh(prefix)
        self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_node",
                                           value=numpy_helper.from_array(array, name)))
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None,
           **attrs: Any) -> str:
        """Add a single-output node; returns the output name."""
        return self.ops(op_type, inputs, [out or self.fresh(op_type.lower())], **attrs)[0]

    def ops(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str],
            **attrs: Any) -> list[str]:
        """Add a node with several outputs (``""`` skips an optional one)."""
        name = self.fresh(f"{op_type}_node")
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name,
                                           **attrs))
        return list(outputs)

    def he(self, shape: Sequence[int], fan_in: int, gain: float = 2.0) -> np.ndarray:
        """Normal weights scaled ``sqrt(gain / fan_in)`` (He for ReLU layers)."""
        return (self.rng.standard_normal(tuple(shape)) * np.sqrt(gain / fan_in)).astype(
            np.float32)

    def conv(self, x: str, cin: int, cout: int, kernel: int | tuple[int, int] = 3, *,
             stride: int | tuple[int, int] = 1, pad: int | tuple[int, int] | None = None,
             group: int = 1, bias: bool = True, weight: np.ndarray | None = None) -> str:
        """A ``Conv`` (He-initialized unless ``weight`` is given); 'same' padding default."""
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        if pad is None:
            pad = (kh // 2, kw // 2)
        ph, pw = (pad, pad) if isinstance(pad, int) else pad
        if weight is None:
            weight = self.he((cout, cin // group, kh, kw), cin // group * kh * kw)
        inputs = [x, self.init("conv.weight", weight)]
        if bias:
            inputs.append(self.init("conv.bias", self.rng.normal(0, 0.01, cout)))
        return self.op("Conv", inputs, kernel_shape=[kh, kw], strides=[sh, sw],
                       pads=[ph, pw, ph, pw], group=group)

    def relu_conv(self, x: str, cin: int, cout: int, kernel: int | tuple[int, int] = 3,
                  **kw: Any) -> str:
        """``Relu(Conv(x))``."""
        return self.op("Relu", [self.conv(x, cin, cout, kernel, **kw)])

    def model(self, inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto], opset: int,
              doc: str = "") -> onnx.ModelProto:
        """The graph so far as a model of ``opset`` (IR version as its exporters wrote)."""
        graph = helper.make_graph(list(self.nodes), self.name, list(inputs), list(outputs),
                                  initializer=list(self.initializers))
        graph.doc_string = doc
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="edgefleet-zoo", producer_version="1")
        model.ir_version = IR_FOR_OPSET[opset]
        model.doc_string = doc
        return model

    def probe(self, inputs: Sequence[onnx.ValueInfoProto], tensor: str, opset: int,
              feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The value of intermediate ``tensor`` on ``feeds`` (the graph built so far)."""
        model = self.model(inputs, [helper.make_tensor_value_info(tensor, TensorProto.FLOAT,
                                                                  None)], opset)
        return run_model(model, feeds)[0]


def session(model: onnx.ModelProto) -> Any:
    """An onnxruntime CPU session of an in-memory model on one thread (repeatable numbers)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of an in-memory model (see ``session``)."""
    return [np.asarray(v) for v in session(model).run(None, feeds)]


def standard_head(features: np.ndarray, outputs: int, rng: np.random.Generator,
                  scale: float = 2.0, offset: np.ndarray | float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(W[d, outputs], b)`` whose logits on ``features [n, d]`` have mean ``offset``.

    The features are whitened along their principal directions (at most 8, folded into
    ``W`` and ``b``) and mixed by a random projection, so the logits are nearly
    independent with spread about ``scale``: every class wins on some inputs.
    """
    mean = features.mean(axis=0)
    _, sv, vt = np.linalg.svd(features - mean, full_matrices=False)
    keep = min(8, int((sv > sv[0] * 1e-3).sum()))
    whiten = vt[:keep].T / (sv[:keep] / np.sqrt(len(features)))[None, :]
    proj = rng.standard_normal((keep, outputs)) * (scale / np.sqrt(keep))
    w = whiten @ proj
    b = -mean @ w + offset
    return w.astype(np.float32), np.asarray(b, np.float32)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 100
            ) -> np.ndarray:
    """Centres ``[k, d]`` of ``k``-means on the rows of ``x`` (k-means++ seeding)."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        gap = ((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1).min(axis=1)
        centres.append(x[rng.choice(len(x), p=gap / gap.sum())])
    c = np.asarray(centres)
    for _ in range(iterations):
        nearest = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(axis=1)
        moved = np.array([x[nearest == j].mean(axis=0) if (nearest == j).any() else c[j]
                          for j in range(k)])
        if np.array_equal(moved, c):
            break
        c = moved
    return c


def _border_distance(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each row's distance to the nearest border of its nearest-centre cell."""
    d2 = ((x[:, None] - centres[None]) ** 2).sum(-1)                 # [n, k]
    own = d2.argmin(axis=1)
    apart = np.linalg.norm(centres[own][:, None] - centres[None], axis=-1)
    gap = (d2 - d2[np.arange(len(x)), own][:, None]) / np.maximum(2.0 * apart, 1e-12)
    gap[np.arange(len(x)), own] = np.inf
    return gap.min(axis=1)


def classifier_head(features: np.ndarray, classes: int, rng: np.random.Generator,
                    confident: float = 0.8, restarts: int = 8
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(W[d, classes], b)``: the head of a trained classifier for ``features [n, d]``.

    The classes are ``k``-means clusters of the rows in their principal directions (at
    most 8, not whitened, so the clusters follow the directions the features really
    vary in), and the logits are the nearest-centroid rule ``2 c·x - |c|²`` (linear,
    so a ``Gemm``). Cluster borders run through the gaps between rows; of
    ``restarts`` clusterings the one whose closest row is farthest from a border is
    kept, so every row sits inside its class. The scale puts four rows in five at or
    above ``confident`` softmax probability; the bias centres the logits.
    """
    mean = features.mean(axis=0).astype(np.float64)
    centred = features.astype(np.float64) - mean
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:min(8, int((sv > sv[0] * 1e-3).sum()))].T           # [d, k]
    rms = float(np.sqrt((centred ** 2).sum(axis=1).mean()))
    x = centred @ basis / rms
    runs = [_kmeans(x, classes, rng) for _ in range(restarts)]
    centres = max(runs, key=lambda c: float(_border_distance(x, c).min()))  # [classes, k]
    w = basis @ (2.0 * centres.T) / rms
    b = -(centres ** 2).sum(axis=1)
    logits = centred @ w + b
    b -= logits.mean()
    low, high = 1e-3, 1e3  # the argmax's probability grows with the scale: bisect it
    for _ in range(50):
        z = logits * float(np.sqrt(low * high))
        z = np.exp(z - z.max(axis=1, keepdims=True))
        if np.quantile(1.0 / z.sum(axis=1), 0.2) < confident:
            low = float(np.sqrt(low * high))
        else:
            high = float(np.sqrt(low * high))
    w, b = w * high, b * high
    return w.astype(np.float32), np.asarray(b - mean @ w, np.float32)


def bn_from_stats(x: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """BatchNormalization ``[scale, bias, mean, var]`` from activations ``x [n, c, h, w]``.

    Running statistics are the real ones; scale/bias put the result around 1 ± 1.5 so a
    following ReLU6 neither dies nor clips.
    """
    channels = x.shape[1]
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3)) + 1e-3
    scale = rng.uniform(1.0, 2.0, channels)
    bias = rng.uniform(0.5, 1.5, channels)
    return [np.asarray(a, np.float32) for a in (scale, bias, mean, var)]


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    """Check ``model`` and write it atomically.

    Raises:
        onnx.checker.ValidationError: the model is not valid ONNX.
    """
    onnx.checker.check_model(model, full_check=True)
    write_atomic(path, model.SerializeToString())
    return path
