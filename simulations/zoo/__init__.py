"""A model zoo built on the spot: small, realistic models and eval data, no torch, no network.

``build_zoo(out_dir)`` writes, deterministically and in seconds, ONNX graphs (opsets 11,
12, 13, 16 and 17, made with ``onnx.helper``) and LiteRT flatbuffers (written with the
schema classes of ``ai-edge-litert``) with seeded random weights, plus an eval ``.npz``
per model and a calibration ``.npz`` for the image models and the text encoder. The
weights mean nothing; the graphs' shapes, operators, dtypes, dynamic dimensions,
state, multiple outputs and external data are what a deployment system must handle.
Layer widths are those of small production models, so int8 pays off on a CPU as it
does for real ones, and classifier heads are fitted to their eval rows the way
training leaves them: confident, with margins that int8 noise does not cross.

Eval/calibration ``.npz`` (the ``np.savez`` format, no pickles): one array per model
input, keyed by input name, plus ``y`` (int64 labels) for classifiers. An array whose
rank equals its input's holds S rows along the batch axis (only where dim 0 is free or
1); rank + 1 means S whole feeds stacked on a new leading axis (inputs without a batch
axis, such as the VAD's state and its scalar sample rate). All arrays in a file share S.

Models (``ZOO_NAMES``): ``cnn-classifier``, ``text-detector``, ``unet-segmenter``,
``crnn-recognizer``, ``vad-rnn``, ``text-encoder``, ``multi-head``,
``mobilenet-opset11``, ``external-data``, ``tflite-face-fixed``, ``tflite-seg-dynamic``,
``gru-tagger``. ``python -m edgefleet.simulations.zoo OUT_DIR`` builds them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _onnx_encoder, _onnx_sequence, _onnx_vision, _tflite
from ._recipe import Recipe, feeds_rng
from ._runtime import run_litert, run_onnx

__all__ = ["ZOO_NAMES", "ZooModel", "build_zoo"]

_ORDER = ("cnn-classifier", "text-detector", "unet-segmenter", "crnn-recognizer", "vad-rnn",
          "text-encoder", "multi-head", "mobilenet-opset11", "external-data",
          "tflite-face-fixed", "tflite-seg-dynamic", "gru-tagger")
_RECIPES: dict[str, Recipe] = {
    r.name: r for r in (*_onnx_vision.RECIPES, *_onnx_sequence.RECIPES,
                        *_onnx_encoder.RECIPES, *_tflite.RECIPES)}
ZOO_NAMES: tuple[str, ...] = tuple(n for n in _ORDER if n in _RECIPES)


@dataclass(frozen=True)
class ZooModel:
    """One built zoo model and its data.

    Attributes:
        name: zoo name, e.g. ``"text-detector"``.
        file: the model file (``.onnx`` or ``.tflite``); ``external-data`` also needs
            ``<file>.data`` beside it.
        runtime: ``"onnxruntime"`` or ``"litert"``.
        task: ``classification``, ``detection``, ``segmentation``, ``sequence``,
            ``stateful``, ``embedding`` or ``multi-output``.
        eval_npz: eval data in the module's ``.npz`` format.
        calibration_npz: calibration data (same format, no ``y``), or ``None``.
        labels: class names of classifiers, segmenters and recognizers, else empty.
        opset: default-domain opset of an ONNX model, ``None`` for ``.tflite``.
        notes: one line on what the model exercises.
    """

    name: str
    file: Path
    runtime: str
    task: str
    eval_npz: Path
    calibration_npz: Path | None
    labels: list[str]
    opset: int | None
    notes: str

    def feeds(self, n: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Fresh valid inputs for one call, drawn apart from the eval rows.

        Args:
            n: batch size where the model's batch is free; fixed-batch models get 1.
            seed: which fresh draw.

        Raises:
            ValueError: ``n`` is less than 1.
        """
        if n < 1:
            raise ValueError(f"batch must be at least 1, got {n}")
        recipe = _RECIPES[self.name]
        return recipe.sample(n if recipe.free_batch else 1, feeds_rng(recipe, seed))

    def run_raw(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs by name from its own runtime (onnxruntime CPU or LiteRT)."""
        if self.runtime == "litert":
            return run_litert(self.file, feeds)
        return run_onnx(self.file, feeds)


def build_zoo(out_dir: Path, names: list[str] | None = None) -> dict[str, ZooModel]:
    """Build the zoo (or the ``names`` in it) into ``out_dir``; same bytes every time.

    Raises:
        ValueError: a name that is not in ``ZOO_NAMES``.
    """
    wanted = list(ZOO_NAMES if names is None else names)
    unknown = [n for n in wanted if n not in _RECIPES]
    if unknown:
        raise ValueError(f"not in the zoo: {', '.join(unknown)} (known: {', '.join(ZOO_NAMES)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    zoo: dict[str, ZooModel] = {}
    for name in wanted:
        recipe = _RECIPES[name]
        built = recipe.build(recipe, out_dir)
        zoo[name] = ZooModel(name=name, file=built.file, runtime=recipe.runtime,
                             task=recipe.task, eval_npz=built.eval_npz,
                             calibration_npz=built.calibration_npz, labels=list(recipe.labels),
                             opset=built.opset, notes=recipe.notes)
    return zoo
