"""The pure cores of telemetry: the mergeable latency sketch and PSI drift scoring."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent.drift import MIN_SAMPLES, DriftWindow, psi
from edgefleet.contract import DDSketch
from edgefleet.optimizer import reference_profile

latencies = st.lists(st.floats(min_value=0.0, max_value=1e5, allow_nan=False), min_size=1,
                     max_size=400)


def _true_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)  # the value of rank floor(q·(n−1)), as the sketch defines it
    return ordered[math.floor(q * (len(ordered) - 1))]


@settings(max_examples=150, deadline=None)
@given(values=latencies, q=st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]))
def test_sketch_quantiles_are_within_the_stated_relative_error(values, q):
    sketch = DDSketch(alpha=0.01).extend(values)
    got, want = sketch.quantile(q), _true_quantile(values, q)
    if want <= 1e-3:
        assert got is not None and got <= 1e-3 * 1.01 + 1e-12
    else:
        assert got is not None and abs(got - want) <= 0.01 * want + 1e-9


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(latencies, min_size=1, max_size=6),
       q=st.sampled_from([0.5, 0.95, 0.99]))
def test_merging_sketches_answers_like_one_sketch_of_everything(parts, q):
    merged = DDSketch()
    for part in parts:  # each device/window sketches its own, through the wire format
        merged.merge(DDSketch.from_dict(json.loads(json.dumps(DDSketch().extend(part)
                                                              .to_dict()))))
    everything = DDSketch().extend(v for part in parts for v in part)
    assert merged.count == everything.count
    assert merged.quantile(q) == pytest.approx(everything.quantile(q))


def test_malformed_sketches_are_refused():
    good = DDSketch().extend([1.0, 2.0]).to_dict()
    for bad in ({**good, "n": 5}, {**good, "c": [1]}, {**good, "c": [-1, 3]},
                {k: v for k, v in good.items() if k != "k"}):
        with pytest.raises(ValueError):
            DDSketch.from_dict(bad)
    with pytest.raises(ValueError):
        DDSketch(alpha=0.01).merge(DDSketch(alpha=0.05))


def test_sketches_stay_bounded_in_size():
    sketch = DDSketch(max_buckets=64).extend(math.exp(i / 10) for i in range(2000))
    assert len(sketch.buckets) <= 64
    assert sketch.quantile(0.99) == pytest.approx(_true_quantile(
        [math.exp(i / 10) for i in range(2000)], 0.99), rel=0.01)


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, size=(2000, 8))
    preds = (x[:, 0] > 0).astype(int)
    return x, reference_profile(x, preds, labels=["neg", "pos"])


def test_unshifted_inputs_score_as_stable(reference):
    x, profile = reference
    rng = np.random.default_rng(1)
    window = DriftWindow(profile)
    fresh = rng.normal(0.0, 1.0, size=(600, 8))
    window.add(fresh)
    scores = window.scores({"neg": int((fresh[:, 0] <= 0).sum()),
                            "pos": int((fresh[:, 0] > 0).sum())})
    assert scores["psi_mean"] < 0.1 and scores["psi_predictions"] < 0.1
    assert window.inputs()["samples"] == 600


@pytest.mark.parametrize(("shift", "at_least"), [(0.5, 0.1), (1.5, 0.25)])
def test_shifted_inputs_score_above_the_thresholds(reference, shift, at_least):
    _x, profile = reference
    rng = np.random.default_rng(2)
    window = DriftWindow(profile)
    window.add(rng.normal(shift, 1.0, size=(600, 8)))
    scores = window.scores()
    assert scores["psi_mean"] >= at_least
    assert window.inputs()["out_of_range"] >= 0


def test_small_windows_and_foreign_shapes_are_not_scored(reference):
    _x, profile = reference
    window = DriftWindow(profile)
    window.add(np.zeros((MIN_SAMPLES - 1, 8)))
    assert window.scores() == {}
    window.add(np.zeros((10, 3)))  # another model's input shape: ignored
    assert window.samples == MIN_SAMPLES - 1
    window.add(np.full((5, 8), np.nan))
    assert window.inputs()["non_finite"] == 5


def test_psi_is_zero_for_identical_shares_and_grows_with_the_shift():
    expected = [0.25, 0.25, 0.25, 0.25]
    assert psi(expected, [25, 25, 25, 25]) == pytest.approx(0.0)
    assert psi(expected, [40, 30, 20, 10]) < psi(expected, [70, 20, 5, 5])
    assert psi(expected, [0, 0, 0, 0]) == 0.0


def test_a_reference_profile_needs_enough_finite_samples():
    with pytest.raises(ValueError):
        reference_profile(np.zeros((5, 3)))
    with pytest.raises(ValueError):
        reference_profile(np.full((50, 3), np.inf))
    wide = reference_profile(np.random.default_rng(0).normal(size=(100, 3000)), max_features=64)
    assert len(wide["extractors"][0]["index"]) == 64


def test_a_profile_of_the_first_format_is_still_scored():
    """Bundles signed before per-kind profiles carried positions of the first input."""
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(400, 4))
    qs = np.linspace(0, 1, 11)[1:-1]
    old = {"version": 1, "bins": 10, "samples": 400,
           "features": {"index": [0, 1, 2, 3],
                        "edges": [np.quantile(ref[:, j], qs).tolist() for j in range(4)],
                        "expected": [[0.1] * 10] * 4},
           "range": {"min": ref.min(axis=0).tolist(), "max": ref.max(axis=0).tolist()}}
    steady, shifted = DriftWindow(old), DriftWindow(old)
    steady.add(rng.normal(size=(200, 4)))
    shifted.add(rng.normal(loc=2.0, size=(200, 4)))
    assert steady.scores()["psi_max"] < 0.25 < shifted.scores()["psi_mean"]
    assert set(shifted.scores()["top"]) <= {f"input[{i}]" for i in range(4)}


def test_half_precision_rows_with_big_values_give_a_finite_summary():
    x = (np.random.default_rng(2).random((200, 16)) * 300).astype(np.float16)
    window = DriftWindow(reference_profile(x.astype(np.float32)))
    window.add(x)  # float16 squares of ~300 overflow float16
    stats = window.inputs()
    assert np.isfinite(stats["mean"]) and np.isfinite(stats["std"]) and stats["std"] > 50
