"""Recurrent and multi-output ONNX models: CRNN recognizer, stateful VAD, GRU tagger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ._data import (
    audio_chunk,
    clustered_features,
    relabel,
    save_npz,
    speech_stream,
    text_lines,
    tokens,
)
from ._graph import (
    OnnxGraph,
    classifier_head,
    run_model,
    save_onnx,
    session,
    standard_head,
    value_info,
)
from ._recipe import Built, Recipe, eval_rng, label_rng

__all__ = ["RECIPES"]

CHARSET = ("<blank>", *"0123456789", *"abcdefghijklmnopqrstuvwxyz")
ACTIVITY_LABELS = ("idle", "walking", "running", "cycling", "driving")
VAD_CHUNK = 512
VAD_STATE = (2, 1, 64)
TRUNK_WIDTH = 512  # of the multi-head MLP
CRNN_CHANNELS = 128
CRNN_HIDDEN = 64


def _rnn_weights(g: OnnxGraph, directions: int, gates: int, hidden: int,
                 inputs: int) -> list[str]:
    """``W, R, B`` initializers of an ONNX LSTM/GRU, uniform ±1/sqrt(hidden)."""
    lim = 1.0 / np.sqrt(hidden)
    shapes = ((directions, gates * hidden, inputs), (directions, gates * hidden, hidden),
              (directions, 2 * gates * hidden))
    return [g.init(f"rnn.{part}", g.rng.uniform(-lim, lim, shape))
            for part, shape in zip("WRB", shapes, strict=True)]


def _sample_crnn(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": text_lines(n, 128, rng)}


def build_crnn(recipe: Recipe, out_dir: Path) -> Built:
    """Conv stack collapsing height → [T, batch, C] → BiLSTM → Constant MatMul → LogSoftmax."""
    g = OnnxGraph(recipe.name, recipe.seed)
    inputs = [value_info("x", "float32", ["batch", 1, 32, "width"])]
    h = g.op("MaxPool", [g.relu_conv("x", 1, 32)], kernel_shape=[2, 2], strides=[2, 2])
    h = g.op("MaxPool", [g.relu_conv(h, 32, 64)], kernel_shape=[2, 2], strides=[2, 2])
    h = g.op("MaxPool", [g.relu_conv(h, 64, CRNN_CHANNELS)], kernel_shape=[2, 1],
             strides=[2, 1])
    h = g.relu_conv(h, CRNN_CHANNELS, CRNN_CHANNELS, (4, 1), pad=0)  # [B, C, 1, W/4]
    shape = g.op("Shape", [h])
    batch = g.op("Gather", [shape, g.init("index.batch", [0], "int64")], axis=0)
    steps = g.op("Gather", [shape, g.init("index.time", [3], "int64")], axis=0)
    target = g.op("Concat", [batch, g.init("channels", [CRNN_CHANNELS], "int64"), steps], axis=0)
    seq = g.op("Transpose", [g.op("Reshape", [h, target])], perm=[2, 0, 1])  # [T, B, C]
    hidden = CRNN_HIDDEN
    y = g.op("LSTM", [seq, *_rnn_weights(g, 2, 4, hidden, CRNN_CHANNELS)], hidden_size=hidden,
             direction="bidirectional")                              # [T, 2, B, H]
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3])
    y = g.op("Reshape", [y, g.init("shape.tbc", [0, 0, 2 * hidden], "int64")])
    calibration = _sample_crnn(16, eval_rng(recipe, calibration=True))
    feats = g.probe(inputs, y, 12, calibration).reshape(-1, 2 * hidden)
    offset = np.zeros(len(CHARSET))
    offset[0] = 2.0  # CTC outputs are mostly blank
    w, b = standard_head(feats, len(CHARSET), g.rng, scale=3.0, offset=offset)
    logits = g.op("Add", [g.op("MatMul", [y, g.constant("head.weight", w)]),
                          g.init("head.bias", b)])
    g.op("LogSoftmax", [logits], "logits", axis=2)
    model = g.model(inputs, [value_info("logits", "float32", ["time", "batch", len(CHARSET)])],
                    12, recipe.notes)
    path = save_onnx(model, out_dir / f"{recipe.name}.onnx")
    ev = save_npz(out_dir / f"{recipe.name}.eval.npz", _sample_crnn(64, eval_rng(recipe)))
    cal = save_npz(out_dir / f"{recipe.name}.calibration.npz", calibration)
    return Built(path, ev, cal, 12)


def _sample_vad(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    del n  # one stream, batch fixed at 1
    return {"input": speech_stream(1, VAD_CHUNK, rng)[:1],
            "state": np.zeros(VAD_STATE, np.float32), "sr": np.array(16000, np.int64)}


def _vad_head(g: OnnxGraph, inputs: list[onnx.ValueInfoProto], last: str,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(W[64, 1], b)`` putting voiced chunks near logit +3 and silent ones near -3.

    The direction is the difference of the mean final hidden states of voiced and silent
    chunks (from a zero state), so the untrained recurrent weights still yield a VAD.
    """
    run = session(g.model(inputs, [value_info(last, "float32", None)], 16))
    means = []
    for voiced in (True, False):
        hidden = [run.run(None, {"input": audio_chunk(VAD_CHUNK, rng, voiced=voiced)[None],
                                 "state": np.zeros(VAD_STATE, np.float32),
                                 "sr": np.array(16000, np.int64)})[0][0] for _ in range(24)]
        means.append(np.mean(hidden, axis=0))
    direction = means[0] - means[1]
    scale = 6.0 / float(direction @ direction)
    center = float((means[0] + means[1]) @ direction) / 2.0
    return (direction * scale).reshape(64, 1).astype(np.float32), \
        np.array([-center * scale], np.float32)


def build_vad(recipe: Recipe, out_dir: Path) -> Built:
    """Silero-style VAD: chunk + (h, c) state + sample rate in, probability + state out."""
    g = OnnxGraph(recipe.name, recipe.seed)
    inputs = [value_info("input", "float32", [1, "samples"]),
              value_info("state", "float32", list(VAD_STATE)),
              value_info("sr", "int64", [])]
    gain = g.op("Div", [g.op("Cast", ["sr"], to=1), g.init("sr.reference", 16000.0)])
    frames = g.op("Reshape", ["input", g.init("shape.frames", [1, -1, 64], "int64")])
    bank = g.op("MatMul", [frames, g.init("filterbank", g.he((64, 32), 64, 1.0))])
    energy = g.op("Log", [g.op("Add", [g.op("Mul", [g.op("Abs", [bank]),
                                                    g.init("energy.gain", 100.0)]),
                                       g.init("energy.floor", 1.0)])])
    seq = g.op("Transpose", [g.op("Mul", [energy, gain])], perm=[1, 0, 2])  # [T, 1, 32]

    def state_part(k: int) -> str:
        return g.op("Slice", ["state", g.init("slice.start", [k], "int64"),
                              g.init("slice.end", [k + 1], "int64"),
                              g.init("slice.axis", [0], "int64")])

    _, h_n, c_n = g.ops("LSTM", [seq, *_rnn_weights(g, 1, 4, 64, 32), "", state_part(0),
                                 state_part(1)], ["", "lstm_h", "lstm_c"], hidden_size=64)
    g.op("Concat", [h_n, c_n], "stateN", axis=0)
    last = g.op("Reshape", [h_n, g.init("shape.last", [1, 64], "int64")])
    w, b = _vad_head(g, inputs, last, eval_rng(recipe, calibration=True))
    logit = g.op("Add", [g.op("MatMul", [last, g.init("out.weight", w)]),
                         g.init("out.bias", b)])
    g.op("Sigmoid", [logit], "output")
    model = g.model(inputs, [value_info("output", "float32", [1, 1]),
                             value_info("stateN", "float32", list(VAD_STATE))], 16,
                    recipe.notes)
    path = save_onnx(model, out_dir / f"{recipe.name}.onnx")
    # eval rows are consecutive chunks of one stream, each with the state the model
    # returned for the chunk before it, as a device would feed them
    run = session(model)
    chunks = speech_stream(32, VAD_CHUNK, eval_rng(recipe))
    state = np.zeros(VAD_STATE, np.float32)
    states = []
    for chunk in chunks:
        states.append(state)
        _, state = run.run(None, {"input": chunk[None], "state": state,
                                  "sr": np.array(16000, np.int64)})
    ev = save_npz(out_dir / f"{recipe.name}.eval.npz",
                  {"input": chunks[:, None, :], "state": np.stack(states).astype(np.float32),
                   "sr": np.full(len(chunks), 16000, np.int64)})
    return Built(path, ev, None, 16)


def _sample_tagger(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"tokens": tokens(n, 32, 500, rng)[0]}


def build_gru_tagger(recipe: Recipe, out_dir: Path) -> Built:
    """Token embeddings → GRU (linear_before_reset, as PyTorch exports) → per-token tags."""
    g = OnnxGraph(recipe.name, recipe.seed)
    inputs = [value_info("tokens", "int64", ["batch", "sequence"])]
    table = g.init("embedding", g.rng.normal(0.0, 1.0, (500, 32)))
    seq = g.op("Transpose", [g.op("Gather", [table, "tokens"], axis=0)], perm=[1, 0, 2])
    y = g.op("GRU", [seq, *_rnn_weights(g, 1, 3, 48, 32)], hidden_size=48,
             linear_before_reset=1)                                  # [S, 1, B, 48]
    y = g.op("Squeeze", [y, g.init("axes.direction", [1], "int64")])
    y = g.op("Transpose", [y], perm=[1, 0, 2])                      # [B, S, 48]
    logits = g.op("Add", [g.op("MatMul", [y, g.init("tag.weight", g.he((48, 6), 48, 6.0))]),
                          g.init("tag.bias", np.zeros(6, np.float32))])
    g.op("Softmax", [logits], "tags", axis=-1)
    model = g.model(inputs, [value_info("tags", "float32", ["batch", "sequence", 6])], 13,
                    recipe.notes)
    path = save_onnx(model, out_dir / f"{recipe.name}.onnx")
    ev = save_npz(out_dir / f"{recipe.name}.eval.npz", _sample_tagger(64, eval_rng(recipe)))
    return Built(path, ev, None, 13)


def _sample_multi(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"features": clustered_features(n, 32, 5, rng)}


def build_multi_head(recipe: Recipe, out_dir: Path) -> Built:
    """Shared MLP trunk (32 → 512 → 512), three heads: Softmax classes, Sigmoid score,
    L2-normalized embedding."""
    g = OnnxGraph(recipe.name, recipe.seed)
    inputs = [value_info("features", "float32", ["batch", 32])]

    def dense(x: str, cin: int, cout: int, gain: float = 2.0) -> str:
        return g.op("Gemm", [x, g.init("dense.weight", g.he((cout, cin), cin, gain)),
                             g.init("dense.bias", np.zeros(cout, np.float32))], transB=1)

    width = TRUNK_WIDTH
    trunk = g.op("Relu", [dense(g.op("Relu", [dense("features", 32, width)]), width, width)])
    calibration = _sample_multi(128, eval_rng(recipe, calibration=True))
    rows = _sample_multi(256, eval_rng(recipe))
    features = g.probe(inputs, trunk, 12,
                       {"features": np.concatenate([rows["features"], calibration["features"]])})
    w, b = classifier_head(features, len(ACTIVITY_LABELS), g.rng)
    classes = g.op("Gemm", [trunk, g.init("class.weight", w), g.init("class.bias", b)])
    g.op("Softmax", [classes], "class_probs", axis=1)
    g.op("Sigmoid", [dense(trunk, width, 1, 0.5)], "score")
    g.op("LpNormalization", [dense(trunk, width, 16, 1.0)], "embedding", axis=1, p=2)
    outputs = [value_info("class_probs", "float32", ["batch", 5]),
               value_info("score", "float32", ["batch", 1]),
               value_info("embedding", "float32", ["batch", 16])]
    model = g.model(inputs, outputs, 12, recipe.notes)
    path = save_onnx(model, out_dir / f"{recipe.name}.onnx")
    y = relabel(run_model(model, rows)[0].argmax(axis=1), 5, label_rng(recipe))
    ev = save_npz(out_dir / f"{recipe.name}.eval.npz", {**rows, "y": y})
    return Built(path, ev, None, 12)


RECIPES = (
    Recipe("crnn-recognizer", "onnxruntime", "sequence", CHARSET,
           "opset-12 CRNN: dynamic width, Shape/Gather/Concat/Reshape, BiLSTM, Constant MatMul "
           "weight, time-major CTC log-probs", 14, True, build_crnn, _sample_crnn),
    Recipe("vad-rnn", "onnxruntime", "stateful",  (),
           "opset-16 stateful VAD: [1,N] audio (N multiple of 64), state in/out, INT64 scalar sr",
           15, False, build_vad, _sample_vad),
    Recipe("multi-head", "onnxruntime", "multi-output", ACTIVITY_LABELS,
           "opset-12 three outputs: class probs, sigmoid score, L2-normalized embedding", 17,
           True, build_multi_head, _sample_multi),
    Recipe("gru-tagger", "onnxruntime", "sequence", (),
           "opset-13 INT64 tokens through Gather + GRU to per-token tag probabilities", 21, True,
           build_gru_tagger, _sample_tagger),
)
