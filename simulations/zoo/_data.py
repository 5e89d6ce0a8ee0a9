"""Synthetic but structured inputs for the zoo, and byte-stable files to keep them in.

Images are smooth gradients with rectangles and soft blobs (not white noise), text
lines are dark strokes on a light band, audio is sines with envelopes over noise,
token rows are Zipf-distributed ids with right padding and a matching mask. Every
generator takes an explicit ``numpy.random.Generator`` so a seed fixes the output.

``save_npz`` writes the ``np.savez`` format (a stored zip of ``.npy`` members, no
pickles) with fixed timestamps, so the same arrays always give the same bytes.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "audio_chunk", "clustered_features", "images",
           "imagenet_normalize", "relabel", "save_npz", "speech_stream", "text_lines", "tokens",
           "write_atomic"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temp file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an ``.npz`` that ``np.load`` reads without pickles.

    Raises:
        ValueError: an array of object dtype (it would need a pickle).
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            array = np.ascontiguousarray(value)
            if array.dtype.hasobject:
                raise ValueError(f"{key}: object arrays cannot be stored without pickles")
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    write_atomic(path, buf.getvalue())
    return path


def images(n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, 3, height, width]`` float32 scenes in [0, 1]: gradient, boxes, blobs, grain."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= height
    xx /= width
    out = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        base = rng.uniform(0.15, 0.85, (3, 1, 1))
        gx, gy = rng.uniform(-0.5, 0.5, (2, 3, 1, 1))
        img = base + gx * (xx - 0.5) + gy * (yy - 0.5)
        for _ in range(int(rng.integers(2, 6))):
            y0, x0 = int(rng.integers(0, height - 4)), int(rng.integers(0, width - 4))
            hh = int(rng.integers(4, max(5, height // 2)))
            ww = int(rng.integers(4, max(5, width // 2)))
            alpha = rng.uniform(0.5, 1.0)
            patch = img[:, y0:y0 + hh, x0:x0 + ww]
            img[:, y0:y0 + hh, x0:x0 + ww] = (1 - alpha) * patch + alpha * rng.uniform(
                0, 1, (3, 1, 1))
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0.1, 0.9, 2)
            sy, sx = rng.uniform(0.04, 0.2, 2)
            blob = np.exp(-((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2)))
            img += rng.uniform(-0.5, 0.5, (3, 1, 1)) * blob
        img += rng.normal(0.0, 0.02, img.shape)
        out[i] = np.clip(img, 0.0, 1.0)
    return out


def imagenet_normalize(x: np.ndarray) -> np.ndarray:
    """NCHW images in [0, 1] → ImageNet mean/std normalized float32."""
    return ((x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]).astype(np.float32)


def text_lines(n: int, width: int, rng: np.random.Generator, height: int = 32) -> np.ndarray:
    """``[n, 1, height, width]`` float32 in [-1, 1]: glyph-like dark strokes on paper."""
    out = np.empty((n, 1, height, width), np.float32)
    for i in range(n):
        paper = rng.uniform(0.7, 0.95) + rng.uniform(-0.1, 0.1) * np.linspace(0, 1, width)
        img = np.tile(paper.astype(np.float32), (height, 1))
        ink = rng.uniform(0.0, 0.3)
        x = int(rng.integers(1, 6))
        top, bottom = int(rng.integers(4, 9)), int(rng.integers(height - 8, height - 3))
        while x < width - 3:
            glyph = int(rng.integers(3, 9))
            for _ in range(int(rng.integers(1, 4))):
                if rng.random() < 0.6:
                    sx = x + int(rng.integers(0, glyph))
                    img[top:bottom, sx:sx + 2] = ink
                else:
                    sy = int(rng.integers(top, bottom))
                    img[sy:sy + 2, x:x + glyph] = ink
            x += glyph + int(rng.integers(1, 5)) + (int(rng.integers(4, 10))
                                                    if rng.random() < 0.15 else 0)
        img += rng.normal(0.0, 0.03, img.shape).astype(np.float32)
        out[i, 0] = np.clip(img, 0.0, 1.0) * 2.0 - 1.0
    return out


def audio_chunk(samples: int, rng: np.random.Generator, sr: int = 16000,
                voiced: bool = True) -> np.ndarray:
    """One mono chunk, float32 in [-1, 1]: harmonic sines under an envelope plus noise."""
    t = np.arange(samples) / sr
    noise = rng.normal(0.0, rng.uniform(0.002, 0.02), samples)
    if not voiced:
        return noise.astype(np.float32)
    f0 = rng.uniform(90, 300)
    wave = sum(rng.uniform(0.05, 0.3) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6))
               for k in range(1, 5))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 6))
    return np.clip(wave * envelope + noise, -1.0, 1.0).astype(np.float32)


def speech_stream(chunks: int, chunk: int, rng: np.random.Generator,
                  sr: int = 16000) -> np.ndarray:
    """``[chunks, chunk]`` consecutive chunks of a stream alternating speech and silence."""
    rows, voiced = [], bool(rng.random() < 0.5)
    for _ in range(chunks):
        if rng.random() < 0.25:
            voiced = not voiced
        rows.append(audio_chunk(chunk, rng, sr, voiced))
    return np.stack(rows)


def tokens(n: int, sequence: int, vocab: int, rng: np.random.Generator,
           min_length: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` int64 ``[n, sequence]``: [CLS]=1 … [SEP]=2, Zipf ids, pad 0 right."""
    ids = np.zeros((n, sequence), np.int64)
    mask = np.zeros((n, sequence), np.int64)
    lengths = rng.integers(min(min_length, sequence), sequence + 1, n)
    for i, length in enumerate(lengths):
        body = 3 + (rng.zipf(1.3, int(length)) - 1) % (vocab - 3)
        ids[i, :length] = body
        ids[i, 0] = 1
        ids[i, length - 1] = 2
        mask[i, :length] = 1
    return ids, mask


def clustered_features(n: int, dim: int, clusters: int, rng: np.random.Generator,
                       centers_seed: int = 7) -> np.ndarray:
    """``[n, dim]`` float32 tabular rows drawn around fixed cluster centres."""
    centers = np.random.default_rng(centers_seed).normal(0.0, 1.0, (clusters, dim))
    which = rng.integers(0, clusters, n)
    return (centers[which] + rng.normal(0.0, 0.7, (n, dim))).astype(np.float32)


def relabel(predicted: np.ndarray, classes: int, rng: np.random.Generator,
            wrong: float = 0.1) -> np.ndarray:
    """Labels equal to ``predicted`` except a ``wrong`` share moved to another class."""
    y = np.asarray(predicted, np.int64).copy()
    flip = rng.random(len(y)) < wrong
    y[flip] = (y[flip] + rng.integers(1, classes, int(flip.sum()))) % classes
    return y
