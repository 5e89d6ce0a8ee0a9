"""Convolutional ONNX models: classifiers, a DB-style text detector, a U-Net, MobileNet."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ._data import imagenet_normalize, images, relabel, save_npz
from ._graph import (
    OnnxGraph,
    bn_from_stats,
    classifier_head,
    run_model,
    save_onnx,
    standard_head,
    value_info,
)
from ._recipe import Built, Recipe, eval_rng, label_rng

__all__ = ["RECIPES"]

CIFAR_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck")
SEG_LABELS = ("background", "road", "vehicle", "person")
MOBILE_LABELS = ("apple", "banana", "bottle", "cup", "keyboard", "mouse", "phone", "plant")
EXTERNAL_LABELS = ("cat", "dog", "bird", "car", "truck", "bicycle")


def _pixels(a: np.ndarray) -> np.ndarray:
    """``[n, c, h, w]`` activations → ``[m, c]`` rows (every 7th pixel)."""
    return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])[::7]


def _head(g: OnnxGraph, inputs: list[onnx.ValueInfoProto], feature: str, opset: int,
          key: str, rows: list[np.ndarray], classes: int, out: str) -> str:
    """``Gemm`` to ``classes`` logits, a trained head for the features of ``rows`` (the
    eval and calibration rows; see ``classifier_head``)."""
    features = g.probe(inputs, feature, opset, {key: np.concatenate(rows)})
    w, b = classifier_head(features, classes, g.rng)
    return g.op("Gemm", [feature, g.init("fc.weight", w), g.init("fc.bias", b)], out)


def _classifier_files(recipe: Recipe, out_dir: Path, model: onnx.ModelProto, key: str,
                      rows: np.ndarray, calibration: np.ndarray) -> tuple[Path, Path]:
    """Eval npz (with ``y`` from the model's own argmax, 10% moved) and calibration npz."""
    scores = run_model(model, {key: rows})[0]
    y = relabel(scores.argmax(axis=1), scores.shape[1], label_rng(recipe))
    ev = save_npz(out_dir / f"{recipe.name}.eval.npz", {key: rows, "y": y})
    cal = save_npz(out_dir / f"{recipe.name}.calibration.npz", {key: calibration})
    return ev, cal


def _sample_cnn(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"image": images(n, 64, 64, rng)}


def build_cnn_classifier(recipe: Recipe, out_dir: Path) -> Built:
    """Conv/Relu/MaxPool ×2 (32, 64 channels) → GlobalAveragePool → Gemm → Softmax, opset 13."""
    g = OnnxGraph(recipe.name, recipe.seed)
    inputs = [value_info("image", "float32", ["batch", 3, 64, 64])]
    h = g.op("MaxPool", [g.relu_conv("image", 3, 32)], kernel_shape=[2, 2], strides=[2, 2])
    h = g.op("MaxPool", [g.relu_conv(h, 32, 64)], kernel_shape=[2, 2], strides=[2, 2])
    feature = g.op("Flatten", [g.op("GlobalAveragePool", [h])], axis=1)
    calibration = images(32, 64, 64, eval_rng(recipe, calibration=True))
    rows = images(64, 64, 64, eval_rng(recipe))
    logits = _head(g, inputs, feature, 13, "image", [rows, calibration], 10, "logits")
    g.op("Softmax", [logits], "probs", axis=1)
    model = g.model(inputs, [value_info("probs", "float32", ["batch", 10])], 13, recipe.notes)
    path = save_onnx(model, out_dir / f"{recipe.name}.onnx")
    ev, cal = _classifier_files(recipe, out_dir, model, "image", rows, calibration)
    return Built(path, ev, cal, 13)


def _sample_detector(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": imagenet_normalize(images(n, 256, 256, rng))}


def build_text_detector(recipe: Recipe, out_dir: Path) -> Built:
    """DB-style: stride-2 convs, FPN merge, Resize (scales) back to full size, Sigmoid."""
    g = OnnxGraph(recipe.name, recipe.seed)
    inputs = [value_info("x", "float32", ["batch", 3, "height", "width"])]
    roi = g.init("resize.roi", np.zeros(0, np.float32))
    up2 = g.init("resize.scales", [1.0, 1.0, 2.0, 2.0])
    c1 = g.relu_conv("x", 3, 16, stride=2)                       # H/2
    c2 = g.relu_conv(g.relu_conv(c1, 16, 32, stride=2), 32, 32)  # H/4
    lateral = g.conv(c2, 32, 16, 1)
    top = g.op("Resize", [lateral, roi, up2], mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    merged = g.op("Add", [top, g.conv(c1, 16, 16, 1)])
    fused = g.relu_conv(merged, 16, 16)
    calibration = imagenet_normalize(images(8, 256, 256, eval_rng(recipe, calibration=True)))
    w, b = standard_head(_pixels(g.probe(inputs, fused, 11, {"x": calibration})), 1, g.rng,
                         scale=1.5, offset=-1.0)
    half = g.conv(fused, 16, 1, 1, weight=w.T.reshape(1, 16, 1, 1), bias=False)
    half = g.op("Add", [half, g.init("head.bias", b.reshape(1, 1, 1, 1))])
    full = g.op("Resize", [half, roi, up2], mode="linear",
                coordinate_transformation_mode="half_pixel")
    g.op("Sigmoid", [full], "maps")
    model = g.model(inputs, [value_info("maps", "float32", ["batch", 1, "height", "width"])],
                    11, recipe.notes)
    path = save_onnx(model, out_dir / f"{recipe.name}.onnx")
    ev = save_npz(out_dir / f"{recipe.name}.eval.npz", _sample_detector(12, eval_rng(recipe)))
    cal = save_npz(out_dir / f"{recipe.name}.calibration.npz", {"x": calibration})
    return Built(path, ev, cal, 11)


def _sample_unet(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"image": images(n, 128, 128, rng)}


def build_unet_segmenter(recipe: Recipe, out_dir: Path) -> Built:
    """Encoder convs + MaxPool, ConvTranspose decoder with skip Concats, 4-class logits."""
    g = OnnxGraph(recipe.name, recipe.seed)
    inputs = [value_info("image", "float32", ["batch", 3, 128, 128])]
    pool: dict[str, Any] = {"kernel_shape": [2, 2], "strides": [2, 2]}
    e1 = g.relu_conv(g.relu_conv("image", 3, 16), 16, 16)          # 128
    e2 = g.relu_conv(g.op("MaxPool", [e1], **pool), 16, 32)        # 64
    mid = g.relu_conv(g.op("MaxPool", [e2], **pool), 32, 64)       # 32

    def up(x: str, cin: int, cout: int) -> str:
        w = g.he((cin, cout, 2, 2), cin)
        b = g.init("up.bias", np.zeros(cout, np.float32))
        return g.op("ConvTranspose", [x, g.init("up.weight", w), b], kernel_shape=[2, 2],
                    strides=[2, 2])

    d2 = g.relu_conv(g.op("Concat", [up(mid, 64, 32), e2], axis=1), 64, 32)  # 64
    d1 = g.relu_conv(g.op("Concat", [up(d2, 32, 16), e1], axis=1), 32, 16)   # 128
    calibration = images(8, 128, 128, eval_rng(recipe, calibration=True))
    w, b = standard_head(_pixels(g.probe(inputs, d1, 13, {"image": calibration})), 4, g.rng,
                         offset=np.array([1.0, 0.0, -0.5, -0.5]))
    logits = g.conv(d1, 16, 4, 1, weight=w.T.reshape(4, 16, 1, 1), bias=False)
    g.op("Add", [logits, g.init("head.bias", b.reshape(1, 4, 1, 1))], "mask_logits")
    model = g.model(inputs, [value_info("mask_logits", "float32", ["batch", 4, 128, 128])], 13,
                    recipe.notes)
    path = save_onnx(model, out_dir / f"{recipe.name}.onnx")
    ev = save_npz(out_dir / f"{recipe.name}.eval.npz", _sample_unet(16, eval_rng(recipe)))
    cal = save_npz(out_dir / f"{recipe.name}.calibration.npz", {"image": calibration})
    return Built(path, ev, cal, 13)


def _sample_mobile(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": imagenet_normalize(images(n, 96, 96, rng))}


def build_mobilenet(recipe: Recipe, out_dir: Path) -> Built:
    """MobileNet-style opset 11: depthwise/pointwise convs, BatchNorm, Clip(0, 6) as ReLU6."""
    g = OnnxGraph(recipe.name, recipe.seed)
    inputs = [value_info("input", "float32", ["batch", 3, 96, 96])]
    calibration = _sample_mobile(32, eval_rng(recipe, calibration=True))
    low, high = g.init("relu6.min", 0.0), g.init("relu6.max", 6.0)

    def block(x: str, cin: int, cout: int, kernel: int, stride: int, group: int) -> str:
        h = g.conv(x, cin, cout, kernel, stride=stride, group=group, bias=False)
        stats = bn_from_stats(g.probe(inputs, h, 11, calibration), g.rng)
        names = [g.init(f"bn.{part}", a) for part, a in zip(("scale", "bias", "mean", "var"),
                                                             stats, strict=True)]
        return g.op("Clip", [g.op("BatchNormalization", [h, *names], epsilon=1e-3), low, high])

    h = block("input", 3, 32, 3, 2, 1)                          # 48
    for cin, cout, stride in ((32, 64, 1), (64, 128, 2), (128, 256, 2)):
        h = block(h, cin, cin, 3, stride, cin)                   # depthwise
        h = block(h, cin, cout, 1, 1, 1)                         # pointwise
    feature = g.op("Flatten", [g.op("GlobalAveragePool", [h])], axis=1)
    rows = _sample_mobile(48, eval_rng(recipe))["input"]
    _head(g, inputs, feature, 11, "input", [rows, calibration["input"]], len(recipe.labels),
          "logits")
    model = g.model(inputs, [value_info("logits", "float32", ["batch", 8])], 11, recipe.notes)
    path = save_onnx(model, out_dir / f"{recipe.name}.onnx")
    ev, cal = _classifier_files(recipe, out_dir, model, "input", rows, calibration["input"])
    return Built(path, ev, cal, 11)


def _sample_external(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"image": images(n, 48, 48, rng)}


def build_external_data(recipe: Recipe, out_dir: Path) -> Built:
    """A conv classifier whose tensors all live in ``<name>.onnx.data`` beside the model."""
    g = OnnxGraph(recipe.name, recipe.seed)
    inputs = [value_info("image", "float32", ["batch", 3, 48, 48])]
    h = g.relu_conv("image", 3, 32, stride=2)
    h = g.relu_conv(g.relu_conv(h, 32, 64, stride=2), 64, 128, stride=2)
    feature = g.op("Flatten", [g.op("GlobalAveragePool", [h])], axis=1)
    hidden = g.op("Relu", [g.op("Gemm", [feature, g.init("fc1.weight", g.he((128, 256), 128)),
                                         g.init("fc1.bias", np.zeros(256, np.float32))])])
    calibration = images(32, 48, 48, eval_rng(recipe, calibration=True))
    rows = images(64, 48, 48, eval_rng(recipe))
    logits = _head(g, inputs, hidden, 13, "image", [rows, calibration], len(recipe.labels),
                   "logits")
    g.op("Softmax", [logits], "probs", axis=1)
    model = g.model(inputs, [value_info("probs", "float32", ["batch", len(recipe.labels)])], 13,
                    recipe.notes)
    onnx.checker.check_model(model, full_check=True)
    ev, cal = _classifier_files(recipe, out_dir, model, "image", rows, calibration)
    path = out_dir / f"{recipe.name}.onnx"
    data_name = f"{recipe.name}.onnx.data"
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".external-"))
    try:  # the data file is appended to, so it is written fresh and then moved in place
        onnx.save_model(model, str(staging / path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=0)
        os.replace(staging / data_name, out_dir / data_name)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    onnx.checker.check_model(str(path))
    return Built(path, ev, cal, 13)


RECIPES = (
    Recipe("cnn-classifier", "onnxruntime", "classification", CIFAR_LABELS,
           "opset-13 CNN classifier, free batch, [0,1] images, softmax probs", 11, True,
           build_cnn_classifier, _sample_cnn),
    Recipe("text-detector", "onnxruntime", "detection", (),
           "opset-11 DB-style detector, dynamic H/W (multiples of 4), Resize with roi/scales",
           12, True, build_text_detector, _sample_detector),
    Recipe("unet-segmenter", "onnxruntime", "segmentation", SEG_LABELS,
           "opset-13 U-Net: MaxPool encoder, ConvTranspose decoder, skip Concat", 13, True,
           build_unet_segmenter, _sample_unet),
    Recipe("mobilenet-opset11", "onnxruntime", "classification", MOBILE_LABELS,
           "opset-11 depthwise convs, BatchNormalization, Clip(min,max inputs) ReLU6, logits",
           18, True, build_mobilenet, _sample_mobile),
    Recipe("external-data", "onnxruntime", "classification", EXTERNAL_LABELS,
           "opset-13 classifier whose weights live in a sibling .onnx.data file", 19, True,
           build_external_data, _sample_external),
)
