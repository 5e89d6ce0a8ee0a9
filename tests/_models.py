"""Small real models for rollout scenarios, trained on scikit-learn's digits at test time.

All share the example model's signature (``pixels`` [batch, 64] → ``probs`` [batch, 10]).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_SCRIPT = Path(__file__).resolve().parents[1] / "simulations/assets/digits/train_digits.py"


def _trainer():  # the committed training script, loaded as a module
    spec = importlib.util.spec_from_file_location("train_digits", _SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train_small(hidden: tuple[int, ...], seed: int, max_iter: int = 300) -> onnx.ModelProto:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    t = _trainer()
    x_train, _x, y_train, _y = t.load_split()
    clf = MLPClassifier(hidden_layer_sizes=hidden, random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    return t.to_onnx(clf)


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))


def broken(model: onnx.ModelProto) -> onnx.ModelProto:
    """Same network with its output classes shifted by one: confidently wrong."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    last = max(int(i.name[2:].split(".")[0])
               for i in m.graph.initializer if i.name.startswith("fc"))
    w, b = _init(m, f"fc{last}.weight"), _init(m, f"fc{last}.bias")
    _set_init(m, f"fc{last}.weight", np.roll(w, 1, axis=1))
    _set_init(m, f"fc{last}.bias", np.roll(b, 1))
    return m


def slowed(model: onnx.ModelProto, width: int, depth: int = 1) -> onnx.ModelProto:
    """Same answers, more work: a branch of ``depth`` square layers (sharing one weight,
    so the file stays small) whose result is multiplied by zero."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    rng = np.random.default_rng(0)
    g.initializer.extend([
        numpy_helper.from_array(rng.normal(0, 0.1, (64, width)).astype(np.float32), "slow.w"),
        numpy_helper.from_array(rng.normal(0, 0.03, (width, width)).astype(np.float32),
                                "slow.sq"),
        numpy_helper.from_array(rng.normal(0, 0.1, (width, 10)).astype(np.float32), "slow.w2"),
        numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "slow.zero"),
    ])
    softmax = next(n for n in g.node if n.op_type == "Softmax")
    logits = softmax.input[0]
    g.node.extend([
        helper.make_node("MatMul", ["pixels", "slow.w"], ["slow.h"]),
        helper.make_node("Relu", ["slow.h"], ["slow.r0"]),
    ])
    for i in range(depth):
        g.node.extend([
            helper.make_node("MatMul", [f"slow.r{i}", "slow.sq"], [f"slow.h{i + 1}"]),
            helper.make_node("Relu", [f"slow.h{i + 1}"], [f"slow.r{i + 1}"]),
        ])
    g.node.extend([
        helper.make_node("MatMul", [f"slow.r{depth}", "slow.w2"], ["slow.o"]),
        helper.make_node("Mul", ["slow.o", "slow.zero"], ["slow.z"]),
        helper.make_node("Add", [logits, "slow.z"], ["slow.logits"]),
    ])
    softmax.input[0] = "slow.logits"
    # keep the graph topologically sorted: move the softmax last
    nodes = [n for n in g.node if n is not softmax] + [softmax]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


__all__ = ["TensorProto", "broken", "save", "slowed", "train_small"]
