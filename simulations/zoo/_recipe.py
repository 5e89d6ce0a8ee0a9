"""What a zoo entry is made of: fixed metadata, a builder and a sampler of fresh inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Built", "Recipe", "Sampler", "eval_rng", "feeds_rng", "label_rng"]

Sampler = Callable[[int, np.random.Generator], dict[str, np.ndarray]]
"""``(batch, rng) -> feeds`` of one inference call (batch is 1 for fixed-batch models)."""

_EVAL_STREAM = 101
_CALIBRATION_STREAM = 202
_FEEDS_STREAM = 303
_LABEL_STREAM = 404


@dataclass(frozen=True)
class Built:
    """The files a builder wrote."""

    file: Path
    eval_npz: Path
    calibration_npz: Path | None
    opset: int | None


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is made and fed.

    Attributes:
        name: the model's zoo name, also the stem of its files.
        runtime: ``"onnxruntime"`` or ``"litert"``.
        task: what kind of model it is (see ``ZooModel.task``).
        labels: class names for classifiers and recognizers, else empty.
        notes: one line on what the model exercises.
        seed: the seed of its weights; data seeds derive from it.
        free_batch: whether the first input dimension can take any batch size.
        build: writes the model and its data into a directory.
        sample: fresh feeds for one call.
    """

    name: str
    runtime: str
    task: str
    labels: tuple[str, ...]
    notes: str
    seed: int
    free_batch: bool
    build: Callable[[Recipe, Path], Built]
    sample: Sampler


def eval_rng(recipe: Recipe, calibration: bool = False) -> np.random.Generator:
    """The generator of a recipe's eval (or calibration) rows."""
    return np.random.default_rng([recipe.seed, _CALIBRATION_STREAM if calibration
                                  else _EVAL_STREAM])


def feeds_rng(recipe: Recipe, seed: int) -> np.random.Generator:
    """The generator of ``ZooModel.feeds``: a stream apart from the eval rows'."""
    return np.random.default_rng([recipe.seed, _FEEDS_STREAM, seed])


def label_rng(recipe: Recipe) -> np.random.Generator:
    """The generator that picks which eval labels disagree with the model."""
    return np.random.default_rng([recipe.seed, _LABEL_STREAM])
