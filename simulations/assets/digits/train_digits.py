"""Train the example digits classifier and export it as an fp32 ONNX model.

The model is a small multi-layer perceptron over scikit-learn's bundled 8x8 digits
(no download). It is written with ``onnx.helper`` as plain ``MatMul + Add + Relu``
layers ending in ``Softmax`` (no ``Gemm``), so dynamic int8 quantization of MatMul
applies to every layer.

Outputs, next to this script (or in ``--out-dir``):

- ``digits.onnx``: the fp32 model. Input ``pixels`` float32 ``[batch, 64]`` with
  values ``pixel / 16`` in ``[0, 1]``; output ``probs`` float32 ``[batch, 10]``.
- ``calibration.npz``: ``x``, unlabeled training samples for static calibration.
- ``eval.npz``: ``x`` (float32) and ``y`` (int64), the held-out labelled test split.
- ``digits.json``: labels, signature, eval accuracy and training details.

Run with ``python train_digits.py``; the result is deterministic for a given
scikit-learn/numpy version.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

SEED = 0
HIDDEN = (512, 512)
TEST_FRACTION = 0.25
CALIBRATION_SAMPLES = 200
OPSET = 17
IR_VERSION = 9  # readable by onnxruntime >= 1.15 on devices
INPUT_NAME = "pixels"
OUTPUT_NAME = "probs"
LABELS = [str(d) for d in range(10)]


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load the digits and split them into a stratified train/test pair.

    Returns:
        ``(x_train, x_test, y_train, y_test)``; ``x`` float32 in ``[0, 1]``,
        ``y`` int64.
    """
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SEED
    )
    return x_train, x_test, y_train, y_test


def train(x_train: np.ndarray, y_train: np.ndarray) -> MLPClassifier:
    """Fit the MLP with fixed seeds.

    Args:
        x_train: float32 ``[n, 64]`` scaled pixels.
        y_train: int64 ``[n]`` digit labels.

    Returns:
        The fitted classifier.
    """
    clf = MLPClassifier(
        hidden_layer_sizes=HIDDEN,
        activation="relu",
        solver="adam",
        alpha=1e-4,
        batch_size=64,
        learning_rate_init=1e-3,
        max_iter=300,
        shuffle=True,
        random_state=SEED,
    )
    clf.fit(x_train, y_train)
    return clf


def to_onnx(clf: MLPClassifier) -> onnx.ModelProto:
    """Write the fitted MLP as an ONNX graph of MatMul/Add/Relu and a Softmax.

    Args:
        clf: a fitted ``MLPClassifier`` with ReLU hidden layers.

    Returns:
        The checked ONNX model.

    Raises:
        onnx.checker.ValidationError: if the built graph is not valid ONNX.
    """
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    current = INPUT_NAME
    n_layers = len(clf.coefs_)
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        w_name, b_name = f"fc{i}.weight", f"fc{i}.bias"
        inits.append(numpy_helper.from_array(np.asarray(w, dtype=np.float32), w_name))
        inits.append(numpy_helper.from_array(np.asarray(b, dtype=np.float32), b_name))
        mm, add = f"fc{i}.matmul", f"fc{i}.add"
        nodes.append(helper.make_node("MatMul", [current, w_name], [mm], name=mm))
        last = i == n_layers - 1
        add_out = "logits" if last else add
        nodes.append(helper.make_node("Add", [mm, b_name], [add_out], name=add))
        if last:
            nodes.append(
                helper.make_node("Softmax", [add_out], [OUTPUT_NAME], axis=-1, name="softmax")
            )
        else:
            relu = f"fc{i}.relu"
            nodes.append(helper.make_node("Relu", [add_out], [relu], name=relu))
            current = relu
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgefleet-train-digits",
        ir_version=IR_VERSION,
    )
    model.doc_string = "8x8 digits MLP; input pixels/16 in [0,1]; output softmax probabilities."
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the exported model under onnxruntime.

    Args:
        model_path: the ONNX file.
        x: float32 ``[n, 64]`` inputs.
        y: int64 ``[n]`` labels.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    probs = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    return float(np.mean(np.argmax(probs, axis=1) == y))


def main(out_dir: Path) -> dict[str, object]:
    """Train, export and write every asset into ``out_dir``.

    Args:
        out_dir: destination folder (created if missing).

    Returns:
        The metadata written to ``digits.json``.

    Raises:
        RuntimeError: if the ONNX export disagrees with scikit-learn's predictions.
    """
    np.random.seed(SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = load_split()
    clf = train(x_train, y_train)
    sk_accuracy = float(clf.score(x_test, y_test))

    model_path = out_dir / "digits.onnx"
    onnx.save_model(to_onnx(clf), str(model_path))
    accuracy = onnx_accuracy(model_path, x_test, y_test)
    if abs(accuracy - sk_accuracy) > 1e-9:
        raise RuntimeError(f"ONNX accuracy {accuracy} != scikit-learn accuracy {sk_accuracy}")

    rng = np.random.default_rng(SEED)
    calib_idx = np.sort(rng.choice(len(x_train), size=CALIBRATION_SAMPLES, replace=False))
    np.savez_compressed(out_dir / "calibration.npz", x=x_train[calib_idx])
    np.savez_compressed(out_dir / "eval.npz", x=x_test, y=y_test)

    meta: dict[str, object] = {
        "name": "digits-mlp",
        "description": "Handwritten digit classifier over scikit-learn's 8x8 digits.",
        "labels": LABELS,
        "inputs": [{"name": INPUT_NAME, "shape": ["batch", 64], "datatype": "FP32"}],
        "outputs": [{"name": OUTPUT_NAME, "shape": ["batch", 10], "datatype": "FP32"}],
        "preprocessing": "8x8 grey pixels (0..16) flattened row-major, divided by 16",
        "postprocessing": "softmax probabilities; argmax is the digit",
        "eval": {
            "accuracy": round(accuracy, 6),
            "samples": int(len(y_test)),
            "split": f"stratified {TEST_FRACTION:.0%} test split, random_state={SEED}",
        },
        "training": {
            "dataset": "sklearn.datasets.load_digits",
            "train_samples": int(len(y_train)),
            "calibration_samples": CALIBRATION_SAMPLES,
            "architecture": "64-" + "-".join(str(h) for h in HIDDEN) + "-10 MLP, ReLU, softmax",
            "trainer": "sklearn.neural_network.MLPClassifier (adam)",
            "epochs": int(clf.n_iter_),
            "seed": SEED,
            "scikit_learn": sklearn.__version__,
            "opset": OPSET,
        },
    }
    (out_dir / "digits.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    result = main(args.out_dir)
    print(json.dumps(result["eval"], indent=2))
