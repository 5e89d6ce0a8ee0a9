"""Which nodes quantization hurts most: the accuracy-aware fallback's ranking.

Both models (the prepared fp32 graph and its quantized version) are run on a few
calibration calls with the output of every quantizable node exposed; each node's
*added error* is how much SQNR its output loses compared with the worst of its inputs
(``added_db``). The fallback keeps the nodes with the most added error in float, a few
more at each step, until the quality gate holds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from edgefleet.contract.errors import OptimizationError
from edgefleet.optimizer._quality import fidelity

__all__ = ["QUANTIZABLE_OPS", "name_nodes", "rank_nodes"]

QUANTIZABLE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul",
                             "Concat", "Resize", "MaxPool", "AveragePool",
                             "GlobalAveragePool", "Sigmoid", "Softmax", "Relu", "Clip",
                             "LSTM", "GRU", "Attention", "Transpose", "Reshape"})
_CEILING_DB = 120.0  # an exact tensor's SQNR, so that differences stay finite


def name_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed node of the main graph a unique name (the quantizer excludes
    nodes by name); returns how many were named."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    return named


def _with_outputs(path: Path, tensors: list[str], out: Path) -> None:
    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    onnx.save(model, str(out))


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _db(value: float) -> float:
    return min(value, _CEILING_DB) if math.isfinite(value) or value > 0 else -_CEILING_DB


def rank_nodes(fp32_path: Path, quantized_path: Path, calls: list[dict[str, np.ndarray]],
               work: Path) -> list[dict[str, Any]]:
    """Nodes of the quantized graph, the most harmful first: ``{"node", "op_type",
    "feeders", "sqnr_db", "added_db"}`` each (``feeders``: the nodes whose outputs it
    reads, whose quantization also decides what it sees).

    Each fp32 tensor is compared with what the quantized graph's consumers see: the
    tensor after its QuantizeLinear/DequantizeLinear pair when it has one (the
    quantizer may fold an activation into that pair, so the raw tensor would mislead),
    and each error is charged to the quantized graph's node that produces the tensor,
    which is the node the quantizer can be told to keep in float.

    Raises:
        OptimizationError: a model cannot be run with its tensors exposed.
    """
    model, qmodel = onnx.load(str(fp32_path)), onnx.load(str(quantized_path))
    qproducer = {o: n for n in qmodel.graph.node for o in n.output}
    seen = {t: (t + "_DequantizeLinear_Output" if t + "_DequantizeLinear_Output" in qproducer
                else t) for n in model.graph.node for t in n.output[:1] if t in qproducer}
    # graph inputs are quantized too: their error is where the first nodes start from
    inputs = {i.name: i.name + "_DequantizeLinear_Output" for i in model.graph.input
              if i.name + "_DequantizeLinear_Output" in qproducer}
    a, b = work / "sensitivity-fp32.onnx", work / "sensitivity-int8.onnx"
    try:
        _with_outputs(fp32_path, list(seen), a)
        _with_outputs(quantized_path, [*seen.values(), *inputs.values()], b)
        ref_s, cand_s = _session(a), _session(b)
        ref = [{**dict(zip(seen, ref_s.run(list(seen), c), strict=True)),
                **{i: c[i] for i in inputs}} for c in calls]
        wanted = [*seen.values(), *inputs.values()]
        cand = [dict(zip([*seen, *inputs], cand_s.run(wanted, c), strict=True))
                for c in calls]
    except Exception as exc:  # onnx/onnxruntime raise their own types
        raise OptimizationError(f"sensitivity analysis failed: {type(exc).__name__}: {exc}",
                                reason="sensitivity_failed") from exc
    sqnr = {t: _db(fidelity([r[t] for r in ref], [c[t] for c in cand])["sqnr_db"])
            for t in [*seen, *inputs] if np.asarray(ref[0][t]).dtype.kind == "f"}
    worst: dict[str, dict[str, Any]] = {}
    names = {n.name for n in model.graph.node}
    producer_fp32 = {o: n for n in model.graph.node for o in n.output}
    upstream: dict[str, float] = {}

    def quality_of(t: str, depth: int = 0) -> float:
        """A tensor's SQNR, or, where it was not measured (folded away by the quantizer),
        the worst of what it was computed from."""
        if t in sqnr:
            return sqnr[t]
        if t not in upstream:
            src = producer_fp32.get(t)
            upstream[t] = _CEILING_DB if src is None or depth > 64 else min(
                (quality_of(i, depth + 1) for i in src.input if i), default=_CEILING_DB)
        return upstream[t]

    def excluded_as(node: onnx.NodeProto) -> onnx.NodeProto:
        # the quantizer keeps a node's name (static QDQ, where it may fold the next
        # activation into it) or renames what it rewrote (dynamic): exclude by the name
        # the fp32 graph knows
        producer = qproducer.get(node.output[0]) if node.output else None
        return producer if producer is not None and producer.name in names else node

    for node in model.graph.node:
        out = node.output[0] if node.output else ""
        if out not in sqnr or out not in qproducer:
            continue
        chosen = excluded_as(node)
        before = min((quality_of(i) for i in node.input if i), default=_CEILING_DB)
        feeders = sorted({excluded_as(producer_fp32[i]).name for i in node.input
                          if i in producer_fp32} - {chosen.name})
        entry = {"node": chosen.name, "op_type": chosen.op_type, "feeders": feeders,
                 "sqnr_db": round(sqnr[out], 2), "added_db": round(before - sqnr[out], 2)}
        if entry["added_db"] > worst.get(chosen.name, {"added_db": -math.inf})["added_db"]:
            worst[chosen.name] = entry
    return sorted(worst.values(), key=lambda r: r["added_db"], reverse=True)
