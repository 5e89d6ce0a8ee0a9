"""The model zoo end to end: every model — detectors with dynamic H/W, a U-Net, a CRNN with
`Constant`-held weights, a stateful RNN, a transformer encoder, multi-output graphs,
opsets 11 to 17, external data, TFLite with fixed and dynamic batch — registers with
image-sized eval data, deploys to a real agent over a real Mosquitto, passes its smoke
test and answers exactly what its raw runtime answers, in-process, over v2 REST (JSON and binary)
and over v2 gRPC."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from _support import answers_by_path, wait_deployment, wait_devices_known

from edgefleet.contract import MANIFEST_MAX_BYTES, SMOKE_MAX_BYTES
from edgefleet.optimizer import TASKS, inline_external_data
from edgefleet.simulations.zoo import ZOO_NAMES, ZooModel, build_zoo

_V2 = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "uint8": "UINT8"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ZooModel]:
    return build_zoo(tmp_path_factory.mktemp("zoo"))


def register(ctl, m: ZooModel) -> dict:
    """What `edgefleet model register` sends: one file (external data folded in)."""
    data = inline_external_data(m.file) if m.name == "external-data" else m.file.read_bytes()
    return ctl.registry.register(
        m.name, data, labels=m.labels, eval_npz=m.eval_npz.read_bytes(),
        calibration_npz=m.calibration_npz.read_bytes() if m.calibration_npz else None,
        task=m.task if m.task in TASKS else None)


def v2_body(feeds: dict[str, np.ndarray]) -> dict:
    return {"inputs": [{"name": k, "shape": list(v.shape), "datatype": _V2[v.dtype.name],
                        "data": v.ravel().tolist()} for k, v in feeds.items()]}


def infer(url: str, name: str, feeds: dict[str, np.ndarray]) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{name}/infer", json=v2_body(feeds), timeout=30)


def test_the_zoo_covers_what_users_bring(zoo):
    assert len(zoo) >= 10 and set(ZOO_NAMES) == set(zoo)
    assert {11, 12, 13, 17} <= {m.opset for m in zoo.values()}
    assert {m.runtime for m in zoo.values()} == {"onnxruntime", "litert"}


def test_every_zoo_model_deploys_to_a_real_agent_and_serves_what_its_runtime_computes(
        zoo, controller, make_fleet):
    fleet = make_fleet(len(zoo), prefix="zoo", grpc_port=0)
    wait_devices_known(controller, fleet.ids, timeout_s=30)
    devices = dict(zip(zoo, fleet.ids, strict=True))
    deployments = {}
    for name, m in zoo.items():
        row = register(controller, m)
        deployments[name] = controller.deploy(name, row["version"], devices=[devices[name]])["id"]
    for name, dep_id in deployments.items():
        dep = wait_deployment(controller, dep_id, timeout_s=180)
        assert dep["state"] == "succeeded", (name, dep["jobs"])

    for name, m in zoo.items():
        agent = fleet.agents[devices[name]]
        installed = agent.store.get(agent.store.read_state()["active"])
        manifest = installed.manifest
        # the manifest stays small whatever the eval data; the data travels beside it
        assert len(manifest.encode()) <= min(MANIFEST_MAX_BYTES, 16 * 1024), name
        smoke = installed.data_path("smoke")
        assert smoke is not None and smoke.stat().st_size <= SMOKE_MAX_BYTES, name
        with np.load(smoke) as data:
            assert {f"input.{t.name}" for t in manifest.inputs} <= set(data.files), name
            assert {f"output.{t.name}" for t in manifest.outputs} <= set(data.files), name
        assert installed.profile().get("extractors"), name

        # the same answer in-process, over REST (JSON and binary) and over gRPC, bit for
        # bit, and what the raw runtime computes in a session of its own
        feeds = m.feeds(2, seed=5)
        want = m.run_raw(feeds)
        answers = answers_by_path(agent, name, feeds)
        assert set(answers) == {"predict", "rest-json", "rest-binary", "grpc"}
        for path, got in answers.items():
            assert list(got) == list(want), (name, path)
            for out, value in want.items():
                assert got[out].dtype == value.dtype, (name, path, out)
                np.testing.assert_array_equal(got[out], answers["predict"][out],
                                              err_msg=f"{name}:{out} over {path}")
                np.testing.assert_allclose(got[out], value, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{name}:{out}")

        meta = httpx.get(f"{agent.server.url}/v2/models/{name}", timeout=5).json()
        for spec, tensor in zip(meta["inputs"], manifest.inputs, strict=True):
            assert spec["shape"] == [d if isinstance(d, int) else -1 for d in tensor.shape]


def test_image_rows_of_a_detector_stay_out_of_the_manifest(zoo, controller):
    m = zoo["text-detector"]
    assert m.eval_npz.stat().st_size > 8 * 1024 * 1024  # 12 images of 3x256x256
    row = register(controller, m)
    manifest_path = controller.registry.ensure_bundle(m.name, row["version"])
    targets = controller.repo.targets.signed.targets
    assert targets[manifest_path].length < 8 * 1024
    base = manifest_path.rsplit("/", 1)[0]
    assert targets[f"{base}/smoke.npz"].length <= SMOKE_MAX_BYTES
    assert f"{base}/profile.json" in targets


def test_a_fixed_batch_tflite_model_is_advertised_fixed_and_refuses_other_batches(
        zoo, controller, make_fleet):
    m = zoo["tflite-face-fixed"]
    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    row = register(controller, m)
    assert row["signature"]["inputs"][0]["shape"] == [1, 64, 64, 3]
    assert wait_deployment(controller, controller.deploy(m.name, row["version"])["id"]
                           )["state"] == "succeeded"
    (agent,) = fleet.agents.values()
    meta = httpx.get(f"{agent.server.url}/v2/models/{m.name}", timeout=5).json()
    assert meta["inputs"][0]["shape"] == [1, 64, 64, 3]
    one = m.feeds(1)
    two = {k: np.concatenate([v, v]) for k, v in one.items()}
    resp = infer(agent.server.url, m.name, two)
    assert resp.status_code == 400 and "shape [2, 64, 64, 3]" in resp.json()["error"]
    assert infer(agent.server.url, m.name, one).status_code == 200


def test_a_dynamic_batch_tflite_model_serves_any_batch(zoo, controller, make_fleet):
    m = zoo["tflite-seg-dynamic"]
    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    row = register(controller, m)
    assert row["signature"]["inputs"][0]["shape"][0] == "batch"
    assert wait_deployment(controller, controller.deploy(m.name, row["version"])["id"]
                           )["state"] == "succeeded"
    (agent,) = fleet.agents.values()
    for n in (1, 3):
        feeds = m.feeds(n, seed=n)
        resp = infer(agent.server.url, m.name, feeds)
        assert resp.status_code == 200, resp.text
        (out,) = resp.json()["outputs"]
        np.testing.assert_allclose(np.asarray(out["data"]).reshape(out["shape"]),
                                   m.run_raw(feeds)[out["name"]], rtol=1e-5, atol=1e-6)


def test_an_onnx_model_with_external_data_is_refused_alone_and_folded_by_the_cli(zoo,
                                                                                 controller):
    from edgefleet.cli._admin import _model_bytes

    m = zoo["external-data"]
    with pytest.raises(ValueError, match="external data files"):
        controller.registry.register("ext", m.file.read_bytes())
    folded = _model_bytes(m.file)
    assert len(folded) > m.file.stat().st_size + 400_000  # the weights came along
    row = controller.registry.register("ext", folded, eval_npz=m.eval_npz.read_bytes())
    assert row["signature"]["inputs"][0]["name"] == "image"
