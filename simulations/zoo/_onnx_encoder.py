"""A BERT-style transformer encoder in plain opset-17 ONNX ops (no fused attention)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._data import save_npz, tokens
from ._graph import OnnxGraph, save_onnx, value_info
from ._recipe import Built, Recipe, eval_rng

__all__ = ["RECIPES"]

VOCAB = 1000
DIM = 128
HEADS = 4
MAX_POSITIONS = 64
FFN = 4 * DIM
LAYERS = 2
SEQUENCE = 32


def _sample(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids, mask = tokens(n, SEQUENCE, VOCAB, rng)
    return {"input_ids": ids, "attention_mask": mask}


class _Encoder:
    """Emits the encoder's ops into an ``OnnxGraph``."""

    def __init__(self, g: OnnxGraph) -> None:
        self.g = g

    def dense(self, x: str, cin: int, cout: int) -> str:
        g = self.g
        w = g.init("dense.weight", g.he((cin, cout), cin, 1.0))
        return g.op("Add", [g.op("MatMul", [x, w]), g.init("dense.bias", g.rng.normal(
            0.0, 0.02, cout))])

    def layer_norm(self, x: str, out: str | None = None) -> str:
        g = self.g
        scale = g.init("ln.scale", g.rng.uniform(0.9, 1.1, DIM))
        bias = g.init("ln.bias", g.rng.normal(0.0, 0.02, DIM))
        return g.op("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=1e-5)

    def gelu(self, x: str) -> str:
        g = self.g
        erf = g.op("Erf", [g.op("Div", [x, g.init("gelu.sqrt2", np.sqrt(2.0))])])
        return g.op("Mul", [g.op("Mul", [x, g.init("gelu.half", 0.5)]),
                            g.op("Add", [erf, g.init("gelu.one", 1.0)])])

    def attention(self, h: str, bias: str) -> str:
        g = self.g
        split = g.init("shape.heads", [0, 0, HEADS, DIM // HEADS], "int64")

        def heads(perm: list[int]) -> str:
            return g.op("Transpose", [g.op("Reshape", [self.dense(h, DIM, DIM), split])],
                        perm=perm)

        q, k, v = heads([0, 2, 1, 3]), heads([0, 2, 3, 1]), heads([0, 2, 1, 3])
        scores = g.op("Mul", [g.op("MatMul", [q, k]),
                              g.init("attn.scale", 1.0 / np.sqrt(DIM // HEADS))])
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        merged = g.op("Reshape", [context, g.init("shape.merge", [0, 0, DIM], "int64")])
        return self.dense(merged, DIM, DIM)

    def layer(self, h: str, bias: str, out: str | None = None) -> str:
        g = self.g
        h = self.layer_norm(g.op("Add", [h, self.attention(h, bias)]))
        ffn = self.dense(self.gelu(self.dense(h, DIM, FFN)), FFN, DIM)
        return self.layer_norm(g.op("Add", [h, ffn]), out)


def build_text_encoder(recipe: Recipe, out_dir: Path) -> Built:
    """Embeddings + positions, 2 layers of masked multi-head attention and GELU FFN."""
    g = OnnxGraph(recipe.name, recipe.seed)
    enc = _Encoder(g)
    inputs = [value_info("input_ids", "int64", ["batch", "sequence"]),
              value_info("attention_mask", "int64", ["batch", "sequence"])]
    words = g.op("Gather", [g.init("embeddings.word", g.rng.normal(0.0, 0.5, (VOCAB, DIM))),
                            "input_ids"], axis=0)
    length = g.op("Gather", [g.op("Shape", ["input_ids"]), g.init("index.seq", 1, "int64")],
                  axis=0)
    positions = g.op("Range", [g.init("range.start", 0, "int64"), length,
                               g.init("range.step", 1, "int64")])
    table = g.init("embeddings.position", g.rng.normal(0.0, 0.5, (MAX_POSITIONS, DIM)))
    h = enc.layer_norm(g.op("Add", [words, g.op("Gather", [table, positions], axis=0)]))
    mask = g.op("Cast", ["attention_mask"], to=1)
    hidden = g.op("Mul", [g.op("Sub", [g.init("mask.one", 1.0), mask]),
                          g.init("mask.negative", -10000.0)])
    bias = g.op("Unsqueeze", [hidden, g.init("axes.bias", [1, 2], "int64")])  # [B, 1, 1, S]
    for k in range(LAYERS):
        h = enc.layer(h, bias, "last_hidden_state" if k == LAYERS - 1 else None)
    weights = g.op("Unsqueeze", [mask, g.init("axes.pool", [2], "int64")])   # [B, S, 1]
    axis = g.init("axes.sequence", [1], "int64")
    total = g.op("ReduceSum", [g.op("Mul", [h, weights]), axis], keepdims=0)
    count = g.op("Clip", [g.op("ReduceSum", [mask, axis], keepdims=1),
                          g.init("pool.min", 1e-6)])
    g.op("Div", [total, count], "pooled")
    outputs = [value_info("last_hidden_state", "float32", ["batch", "sequence", DIM]),
               value_info("pooled", "float32", ["batch", DIM])]
    model = g.model(inputs, outputs, 17, recipe.notes)
    path = save_onnx(model, out_dir / f"{recipe.name}.onnx")
    ev = save_npz(out_dir / f"{recipe.name}.eval.npz", _sample(48, eval_rng(recipe)))
    cal = save_npz(out_dir / f"{recipe.name}.calibration.npz",
                   _sample(32, eval_rng(recipe, calibration=True)))
    return Built(path, ev, cal, 17)


RECIPES = (
    Recipe("text-encoder", "onnxruntime", "embedding", (),
           "opset-17 transformer encoder: INT64 ids + mask, LayerNormalization, Erf GELU, "
           "masked mean pooling (sequence <= 64)", 16, True, build_text_encoder, _sample),
)
