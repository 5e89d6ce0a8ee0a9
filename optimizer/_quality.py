"""Pure measures and verdicts: how close a candidate is to fp32, and whether it is faster
beyond the noise. Numbers in, numbers and reasons out; nothing here runs a model.

Quality depends on what the model is:

- a **classifier** (first output ``[n, C]`` and labels) is judged by top-1 accuracy
  against the labels (drop within ``accuracy_budget_pt`` points) and reports its
  agreement with fp32's own answers;
- **anything else** (detectors, segmenters, recognizers, encoders, stateful RNNs) by
  fidelity to fp32 per float output: SQNR = 10·log10(Σ ref² / Σ (ref − cand)²) in dB,
  cosine similarity and maximum relative error. The gate is SQNR ≥ ``min_sqnr_db``
  (20 dB by default: the error's energy is 1 % of the signal's, an RMS error of 10 %)
  and cosine ≥ ``min_cosine`` (0.995) on every float output.

Speed is judged on interleaved blocks: each block times both models alternately, the
verdict uses the ratio of the blocks' medians and a 95 % confidence bound on it
(Student's t over the blocks' log-ratios), so "faster" means faster beyond the
variation the blocks themselves show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["classification_quality", "fidelity", "quality_verdict", "speed_verdict"]

# two-sided 95 % Student t quantiles by degrees of freedom (blocks - 1)
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
        10: 2.23, 11: 2.20, 12: 2.18, 14: 2.14, 16: 2.12, 19: 2.09}


def _t95(df: int) -> float:
    best = max((d for d in _T95 if d <= df), default=1)
    return _T95[best] if df < 30 else 2.0


def fidelity(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> dict[str, Any]:
    """SQNR (dB), cosine similarity and max relative error of ``candidate`` against
    ``reference`` (one array per sample, same shapes)."""
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in reference])
    cand = np.concatenate([np.asarray(c, np.float64).ravel() for c in candidate])
    if ref.shape != cand.shape:
        raise ValueError(f"outputs differ in size: {ref.shape} vs {cand.shape}")
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        sqnr = math.inf
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    norms = float(np.linalg.norm(ref) * np.linalg.norm(cand))
    cosine = float(np.dot(ref, cand) / norms) if norms > 0 else float(noise == 0.0)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = float(np.abs(ref - cand).max() / scale) if scale > 0 else 0.0
    return {"sqnr_db": round(sqnr, 3) if math.isfinite(sqnr) else sqnr,
            "cosine": round(cosine, 6), "max_rel_err": round(max_rel, 6)}


def classification_quality(reference: np.ndarray, candidate: np.ndarray,
                           labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy of both against ``labels`` and their agreement (``[n, C]`` scores)."""
    ref_top, cand_top = reference.argmax(axis=1), candidate.argmax(axis=1)
    return {"accuracy_fp32": float(np.mean(ref_top == labels)),
            "accuracy": float(np.mean(cand_top == labels)),
            "agreement": float(np.mean(ref_top == cand_top))}


def quality_verdict(metric: str, values: dict[str, Any], *, accuracy_budget_pt: float,
                    min_sqnr_db: float, min_cosine: float) -> tuple[bool, str]:
    """Whether the quality gate holds, and one sentence saying why.

    Args:
        metric: ``top1`` (``values``: accuracy_fp32, accuracy) or ``fidelity``
            (``values``: output name -> the ``fidelity`` figures).
    """
    if metric == "evaluator":
        drop = (values["fp32"] - values["candidate"]) * 100.0
        ok = drop <= accuracy_budget_pt + 1e-9
        return ok, (f"evaluator score {values['candidate']:.4f} vs fp32 {values['fp32']:.4f}: "
                    f"drop {drop:.2f} pt {'within' if ok else 'exceeds'} budget "
                    f"{accuracy_budget_pt:g} pt")
    if metric == "top1":
        drop = (values["accuracy_fp32"] - values["accuracy"]) * 100.0
        ok = drop <= accuracy_budget_pt + 1e-9
        return ok, (f"top-1 accuracy drop {drop:.2f} pt "
                    f"{'within' if ok else 'exceeds'} budget {accuracy_budget_pt:g} pt")
    worst = [(name, f) for name, f in values.items()
             if f["sqnr_db"] < min_sqnr_db or f["cosine"] < min_cosine]
    if not values:
        return False, "no float output to compare"
    if worst:
        name, f = min(worst, key=lambda item: item[1]["sqnr_db"])
        return False, (f"output {name!r} fidelity SQNR {f['sqnr_db']:.1f} dB, cosine "
                       f"{f['cosine']:.4f} below {min_sqnr_db:g} dB / {min_cosine:g}")
    low = min(f["sqnr_db"] for f in values.values())
    return True, f"every output within fidelity gates (lowest SQNR {low:.1f} dB)"


def speed_verdict(base_blocks: Sequence[np.ndarray],
                  cand_blocks: Sequence[np.ndarray]) -> dict[str, Any]:
    """Candidate/fp32 latency ratio from interleaved blocks, with a 95 % bound.

    Returns:
        ``{"ratio", "ratio_low", "ratio_high", "blocks", "faster", "slower", "why"}``:
        ``faster`` when even the upper bound is below 1, ``slower`` when the lower
        bound is above 1; otherwise the difference is within the noise.
    """
    logs = np.array([math.log(float(np.median(c)) / float(np.median(b)))
                     for b, c in zip(base_blocks, cand_blocks, strict=True)
                     if len(b) and len(c) and np.median(b) > 0 and np.median(c) > 0])
    if len(logs) < 2:
        return {"ratio": None, "ratio_low": None, "ratio_high": None, "blocks": len(logs),
                "faster": False, "slower": False, "why": "too few timing blocks"}
    mean, sd = float(logs.mean()), float(logs.std(ddof=1))
    half = _t95(len(logs) - 1) * sd / math.sqrt(len(logs))
    ratio, low, high = math.exp(mean), math.exp(mean - half), math.exp(mean + half)
    faster, slower = high < 1.0, low > 1.0
    where = "faster" if faster else "slower" if slower else "within the measured noise"
    return {"ratio": round(ratio, 4), "ratio_low": round(low, 4), "ratio_high": round(high, 4),
            "blocks": len(logs), "faster": faster, "slower": slower,
            "why": f"p50 ratio {ratio:.3f} (95% bound {low:.3f}–{high:.3f} over {len(logs)} "
                   f"interleaved blocks): {where}"}
