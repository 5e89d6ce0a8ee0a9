"""An agent killed at any instant restarts into a valid model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from _support import job_of, register_digits, wait_deployment, wait_devices_known

from edgefleet.agent.models import ModelStore
from edgefleet.contract import Manifest
from edgefleet.simulations.brokers import free_port
from edgefleet.simulations.fleet import wait_until


def _spawn_agent(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config",
                             str(config)], stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _ready_model(url: str) -> dict | None:
    try:
        status = httpx.get(f"{url}/v2/agent/status", timeout=2).json()
    except httpx.HTTPError:
        return None
    return status["active"]


def test_agent_killed_mid_install_restarts_into_a_valid_model(controller, mosquitto, trust_root,
                                                               tmp_path, evalset):
    port = free_port()
    state = tmp_path / "pi-kill"
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "pi-kill"\nbroker_url = "{mosquitto.url}"\n'
                      f'state_dir = "{state}"\ntrust_root = "{trust_root}"\napi_port = {port}\n'
                      "chunk_bytes = 16384\nmax_download_bytes_per_s = 400000\n"
                      "reuse_local_files = false\n")  # v2 is v1's model: download it
    url = f"http://127.0.0.1:{port}"
    proc = _spawn_agent(config, tmp_path / "agent.log")
    try:
        wait_devices_known(controller, ["pi-kill"], 30)
        v1 = register_digits(controller)
        assert wait_deployment(controller, controller.deploy("digits", 1)["id"])[
            "state"] == "succeeded"
        v2 = register_digits(controller)
        dep = controller.deploy("digits", v2["version"])
        wait_until(lambda: job_of(controller.store.get_deployment(dep["id"]), "pi-kill")[
            "progress"].get("bytes", 0) > 0, 20, interval_s=0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        # on disk, right after the kill: state.json names a complete, matching model
        store = ModelStore(state)
        active = store.read_state()["active"]
        assert active is not None and active.version == v1["version"]
        assert store.get(active) is not None

        proc = _spawn_agent(config, tmp_path / "agent.log")
        first = wait_until(lambda: _ready_model(url), 20)
        assert first["name"] == "digits"  # serving at once, before any re-download
        body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                            "data": evalset["x"][0].tolist()}]}
        assert httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=5).status_code == 200

        done = wait_deployment(controller, dep["id"], 60)  # and the deploy completes
        assert done["state"] == "succeeded"
        out = httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=5).json()
        assert out["model_version"] == str(v2["version"])
    finally:
        proc.kill()
        proc.wait(10)


def _manifest(version: int, digest: str, length: int) -> Manifest:
    return Manifest(name="m", version=version, runtime="onnxruntime", model_file="model.onnx",
                    model_sha256=digest, model_length=length, inputs=[], outputs=[])


@pytest.mark.parametrize("crash_at", ["model-rename", "state-switch"])
def test_power_loss_during_install_leaves_previous_model_active(tmp_path, crash_at, monkeypatch):
    import hashlib

    from edgefleet.agent import models as models_mod
    from edgefleet.contract import files as files_mod

    store = ModelStore(tmp_path)
    blobs = {v: os.urandom(4096) for v in (1, 2)}
    src = {}
    for v, data in blobs.items():
        src[v] = tmp_path / f"src{v}.onnx"
        src[v].write_bytes(data)
    m1 = _manifest(1, hashlib.sha256(blobs[1]).hexdigest(), 4096)
    store.activate(store.install(m1, m1.encode(), src[1]).ref)
    m2 = _manifest(2, hashlib.sha256(blobs[2]).hexdigest(), 4096)

    class PowerLoss(BaseException):
        pass

    def die(*_a, **_k):
        raise PowerLoss

    if crash_at == "model-rename":
        monkeypatch.setattr(models_mod.os, "replace", die)
        with pytest.raises(PowerLoss):
            store.install(m2, m2.encode(), src[2])
    else:
        installed = store.install(m2, m2.encode(), src[2])
        monkeypatch.setattr(files_mod.os, "replace", die)
        with pytest.raises(PowerLoss):
            store.activate(installed.ref)
    monkeypatch.undo()

    restarted = ModelStore(tmp_path)
    active = restarted.read_state()["active"]
    assert active is not None and active.version == 1
    got = restarted.get(active)
    assert got is not None and got.model_path.read_bytes() == blobs[1]
    assert not list((tmp_path / "models").glob(".staging-*"))


def test_the_store_reads_state_json_again_when_the_file_changes(tmp_path):
    """The store keeps state.json as it last read it; its own writes, and a file put
    back from elsewhere (a restored backup), are what the next read gives."""
    import hashlib

    store = ModelStore(tmp_path)
    blobs = {v: os.urandom(1024) for v in (1, 2)}
    refs = {}
    for v, data in blobs.items():
        (tmp_path / f"src{v}.onnx").write_bytes(data)
        m = _manifest(v, hashlib.sha256(data).hexdigest(), 1024)
        refs[v] = store.install(m, m.encode(), tmp_path / f"src{v}.onnx").ref
    store.activate(refs[1])
    backup = store.state_path.read_bytes()
    store.activate(refs[2])
    store.record_job("job-2", "healthy", 1.0)
    assert store.read_state() == {"active": refs[2], "last_good": refs[1]}
    assert store.finished_jobs()["job-2"]["state"] == "healthy"
    (tmp_path / "restored.json").write_bytes(backup)
    os.replace(tmp_path / "restored.json", store.state_path)
    assert store.read_state() == {"active": refs[1], "last_good": None}
    assert store.finished_jobs() == {}


def test_an_activation_without_health_window_raises_the_release_floor_in_its_write(
        tmp_path, monkeypatch):
    """Healthy at once (no health window): the switch and the floor are one write, so a
    power cut cannot leave one without the other; a floor never goes down."""
    import hashlib

    from edgefleet.contract import files as files_mod

    store = ModelStore(tmp_path)
    refs = {}
    for v in (1, 2):
        data = os.urandom(1024)
        (tmp_path / f"src{v}.onnx").write_bytes(data)
        m = _manifest(v, hashlib.sha256(data).hexdigest(), 1024)
        refs[v] = store.install(m, m.encode(), tmp_path / f"src{v}.onnx").ref
    writes = []
    atomic = files_mod.atomic_write
    monkeypatch.setattr("edgefleet.agent.models.atomic_write",
                        lambda *a, **k: writes.append(a[0]) or atomic(*a, **k))
    store.activate(refs[2], floor=5)
    assert len(writes) == 1 and store.release_floor(refs[2].name) == 5
    store.activate(refs[1], floor=3)
    assert store.read_state()["active"] == refs[1]
    assert store.release_floor(refs[1].name) == 5


@pytest.mark.parametrize("same_filesystem", [True, False])
def test_an_install_of_the_agents_own_download_moves_it_in(tmp_path, monkeypatch,
                                                           same_filesystem):
    import errno
    import hashlib

    from edgefleet.agent import models as models_mod

    store = ModelStore(tmp_path / "state")
    data = os.urandom(4096)
    src = tmp_path / "downloads" / "model.onnx"
    src.parent.mkdir()
    src.write_bytes(data)
    m = _manifest(1, hashlib.sha256(data).hexdigest(), 4096)
    replace = os.replace

    def across_devices(a, b):
        if Path(a) == src:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return replace(a, b)

    if not same_filesystem:
        monkeypatch.setattr(models_mod.os, "replace", across_devices)
    installed = store.install(m, m.encode(), src, move=True)
    assert installed.model_path.read_bytes() == data
    assert src.exists() is not same_filesystem  # moved; copied where it cannot be
