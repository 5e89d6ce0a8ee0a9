"""Drift that means something for the model's kind: an image classifier's devices see a
darker, flatter camera; a text encoder's devices see longer texts full of words the
reference never had. Their windows raise drift alerts on the features that moved
(brightness and contrast; sequence length and unknown-token rate), while devices fed
data like the reference raise none."""

from __future__ import annotations

import numpy as np
import pytest
from _support import wait_deployment, wait_devices_known
from _webhook import Hook, alerting_controller

from edgefleet.contract import ManualClock
from edgefleet.simulations.fleet import wait_until
from edgefleet.simulations.zoo import build_zoo


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def _rows(path, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` eval rows of each input (cycled when there are fewer)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "y"}
    index = np.arange(n) % len(next(iter(arrays.values())))
    return {k: v[index] for k, v in arrays.items()}


def _darker(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = feeds["image"]
    return {"image": (x * 0.35 + 0.05 * x.mean()).astype(x.dtype)}  # darker, less contrast


def _longer_and_unseen(feeds: dict[str, np.ndarray], seen: np.ndarray) -> dict[str, np.ndarray]:
    ids = feeds["input_ids"]
    unseen = np.setdiff1d(np.arange(1, 1000), seen)
    rng = np.random.default_rng(3)
    new = rng.choice(unseen, size=ids.shape).astype(ids.dtype)
    return {"input_ids": new, "attention_mask": np.ones_like(feeds["attention_mask"])}


def test_shifted_images_and_texts_raise_drift_on_the_features_that_moved(
        tmp_path, mosquitto, trust_root, make_fleet, hook):
    zoo = build_zoo(tmp_path / "zoo", ["cnn-classifier", "text-encoder"])
    ctl = alerting_controller(tmp_path, mosquitto.url, trust_root, hook)
    try:
        clock = ManualClock()
        fleet = make_fleet(4, clock=clock, prefix="drift", summary_window_s=60.0)
        wait_devices_known(ctl, fleet.ids)
        img_steady, img_shifted, txt_steady, txt_shifted = fleet.ids
        for name, devices in (("cnn-classifier", [img_steady, img_shifted]),
                              ("text-encoder", [txt_steady, txt_shifted])):
            m = zoo[name]
            row = ctl.registry.register(
                name, m.file.read_bytes(), labels=m.labels, eval_npz=m.eval_npz.read_bytes(),
                calibration_npz=m.calibration_npz.read_bytes() if m.calibration_npz else None)
            dep = wait_deployment(ctl, ctl.deploy(name, row["version"], devices=devices)["id"])
            assert dep["state"] == "succeeded", dep["jobs"]

        images = _rows(zoo["cnn-classifier"].eval_npz, 64)
        texts = _rows(zoo["text-encoder"].eval_npz, 64)
        with np.load(zoo["text-encoder"].calibration_npz) as cal:
            seen = np.union1d(texts["input_ids"], cal["input_ids"])
        streams = {img_steady: images, img_shifted: _darker(images),
                   txt_steady: texts, txt_shifted: _longer_and_unseen(texts, seen)}
        for _ in range(2):  # two windows
            for device, feeds in streams.items():
                agent = fleet.agents[device]
                for i in range(0, 64, 4):
                    agent.predict({k: v[i:i + 4] for k, v in feeds.items()})
            clock.advance(60.0)
            for agent in fleet.agents.values():
                agent.tick()
        wait_until(lambda: all(a.buffer.stats()["summaries_unacked"] == 0
                               for a in fleet.agents.values()), 20)
        wait_until(lambda: {f"drift:device:{img_shifted}",
                            f"drift:device:{txt_shifted}"} <= set(hook.fired()), 10)
        evaluations = ctl.alerts.counters["evaluations"]
        wait_until(lambda: ctl.alerts.counters["evaluations"] >= evaluations + 3, 5)
        scored = {d: [r for r in ctl.store.summaries(d) if r["drift"]] for d in fleet.ids}
    finally:
        ctl.stop()

    fired = set(hook.fired())
    assert f"drift:device:{img_steady}" not in fired
    assert f"drift:device:{txt_steady}" not in fired
    for device in fleet.ids:
        assert scored[device], device  # every device scored its windows
    steady = [r["drift_score"] for d in (img_steady, txt_steady) for r in scored[d]]
    assert max(steady) < 0.1
    # what moved, by name: the camera's brightness/contrast, the texts' length/vocabulary
    img_top = set(scored[img_shifted][-1]["drift"]["top"])
    assert img_top & {"image.brightness", "image.contrast", "image.mean[0]", "image.std[0]"}
    txt_top = scored[txt_shifted][-1]["drift"]["top"]
    assert txt_top["input_ids.length"] > 0.25 and txt_top["input_ids.unknown_rate"] > 0.25
