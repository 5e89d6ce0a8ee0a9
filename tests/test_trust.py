"""Bundles that must not install: each is rejected with its reason, the old model keeps serving."""

from __future__ import annotations

import shutil
import time

import pytest
from _support import job_of, register_digits, wait_deployment, wait_devices_known

from edgefleet.contract import ManualClock
from edgefleet.controller import TrustRepository, init_keys


@pytest.fixture
def serving(controller, make_fleet):
    """One agent already serving digits:1 (fp32); digits:2 registered, not yet deployed."""
    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    v1 = register_digits(controller)
    dep = wait_deployment(controller, controller.deploy("digits", v1["version"])["id"])
    assert dep["state"] == "succeeded"
    v2 = register_digits(controller)
    return fleet.agents[fleet.ids[0]], v1, v2


def _rejected(controller, agent, version, reason, evalset):
    dep = wait_deployment(controller, controller.deploy("digits", version)["id"])
    job = job_of(dep, agent.config.device_id)
    assert dep["state"] == "rolled_back"  # the default: a breached wave is rolled back
    assert job["reason"] == reason, job
    assert job["state"] == "reverted"  # the retained desired state points back at v1
    # the last known good model still serves
    assert agent.active.version == 1
    assert agent.predict(evalset["x"][:1]).model.version == 1
    return job


def test_tampered_model_file_is_rejected_and_old_model_keeps_serving(controller, serving,
                                                                     evalset):
    agent, _v1, v2 = serving
    controller.registry.ensure_bundle("digits", v2["version"])
    stored = next((controller.repo.targets_dir / "bundles/digits/2").glob("*.model.onnx"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit on the server's disk
    stored.write_bytes(bytes(data))

    _rejected(controller, agent, v2["version"], "tampered_file", evalset)


def test_bundle_signed_by_unknown_key_is_rejected(controller, serving, evalset, tmp_path):
    agent, _v1, v2 = serving
    controller.registry.ensure_bundle("digits", v2["version"])
    # An attacker with write access to the repository but not the keys re-signs everything.
    init_keys(tmp_path / "rogue-keys")
    rogue = TrustRepository(tmp_path / "rogue", tmp_path / "rogue-keys")
    rogue.targets.signed.version = controller.repo.targets.signed.version + 10
    rogue.snapshot.signed.version = controller.repo.snapshot.signed.version + 10
    rogue.timestamp.signed.version = controller.repo.timestamp.signed.version + 10
    rogue.add_targets({p: (controller.repo.targets_dir / p).parent.joinpath(
        f"{info.hashes['sha256']}.{p.rsplit('/', 1)[1]}").read_bytes()
        for p, info in controller.repo.targets.signed.targets.items()})
    for f in (tmp_path / "rogue" / "metadata").iterdir():
        if not f.name.endswith("root.json"):
            shutil.copyfile(f, controller.repo.metadata_dir / f.name)

    _rejected(controller, agent, v2["version"], "untrusted_signature", evalset)


def test_expired_metadata_is_rejected(controller, serving, evalset):
    agent, _v1, v2 = serving
    controller.registry.ensure_bundle("digits", v2["version"])
    # Re-sign as if two days ago: the one-day timestamp is already expired.
    controller.repo.clock = ManualClock(time.time() - 2 * 86400)
    assert controller.repo.refresh(min_remaining_fraction=2.0)

    _rejected(controller, agent, v2["version"], "expired_metadata", evalset)


def test_lower_version_is_rejected(controller, make_fleet, evalset):
    fleet = make_fleet(1)
    agent = fleet.agents[fleet.ids[0]]
    wait_devices_known(controller, fleet.ids)
    v1 = register_digits(controller)
    v2 = register_digits(controller)
    assert wait_deployment(controller, controller.deploy("digits", v2["version"])["id"])[
        "state"] == "succeeded"

    dep = wait_deployment(controller, controller.deploy("digits", v1["version"])["id"])
    job = job_of(dep, agent.config.device_id)
    assert job["reason"] == "version_rollback"
    assert agent.active.version == v2["version"]
    assert agent.predict(evalset["x"][:1]).model.version == v2["version"]

