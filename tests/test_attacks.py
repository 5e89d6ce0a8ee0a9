"""The attack suite: one test per attack on the update path.

Each attack is carried out against a real controller, a real Mosquitto and a real
agent serving ``digits:1``. Each test asserts that the bundle (or command) is refused
with the attack's reason AND that the last known good model still serves.

The attacks on the files a server holds run on both transports (``BOTH_TRANSPORTS``):
over MQTT request/response and over HTTP from nginx, with the same refusal.

The attacks are on the pull path (a hostile server or link), so devices pull here:
with broadcast on, ``digits:2``'s model (the same bytes as ``digits:1``'s) would arrive
intact from its earlier broadcast, whatever is done to the stored copy.
Attacks on broadcast blocks are in ``test_broadcast.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from _support import job_of, register_digits, wait_deployment, wait_devices_known
from tuf.api.metadata import Metadata, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edgefleet.contract import (
    MANIFEST_MAX_BYTES,
    Command,
    DeviceTopic,
    Manifest,
    Signed,
    TargetTrust,
    TensorSpec,
    bundle_paths,
    device_topic,
)
from edgefleet.controller import TrustExpiry, TrustRepository, init_keys
from edgefleet.controller.keys import rotate_keys
from edgefleet.simulations.fleet import wait_until

pytestmark = pytest.mark.pull_only


# the attacks on what the server holds, run on each transport: the same refusal over
# MQTT and over HTTP (nginx serving the controller's repository folder)
BOTH_TRANSPORTS = pytest.mark.parametrize("transport", ["mqtt", "http"])


@pytest.fixture
def serving(controller, make_fleet, agent_transport, request):
    """One agent already serving digits:1; digits:2 registered, not yet deployed. The
    same model in both: the agent must download v2's files, not copy v1's, for the
    server's copy to be what is attacked."""
    fleet = make_fleet(1, reuse_local_files=False, **agent_transport)
    wait_devices_known(controller, fleet.ids)
    v1 = register_digits(controller)
    dep = wait_deployment(controller, controller.deploy("digits", v1["version"])["id"])
    assert dep["state"] == "succeeded"
    if agent_transport:  # v1's files came from nginx, not over MQTT
        assert "GET /targets/bundles/digits/1/" in request.getfixturevalue(
            "repository_nginx").access_log
    v2 = register_digits(controller)
    return fleet, fleet.agents[fleet.ids[0]], v2


def _still_serving_v1(agent, evalset) -> None:
    assert agent.active.version == 1
    assert agent.predict(evalset["x"][:1]).model.version == 1


def _rejected(controller, agent, version, reason, evalset):
    """Deploy ``version``; the device must refuse it with ``reason`` and keep serving v1."""
    dep = wait_deployment(controller, controller.deploy("digits", version)["id"])
    job = job_of(dep, agent.config.device_id)
    assert dep["state"] == "rolled_back"  # the default: a breached wave is rolled back
    assert job["reason"] == reason, job
    assert job["state"] == "reverted"  # the retained desired state points back at v1
    _still_serving_v1(agent, evalset)
    assert not agent.store.find("digits", version)  # nothing of it was installed
    return job


def _stored(controller, target: str):
    """The file the controller serves for a target path."""
    info = controller.repo.targets.signed.targets[target]
    directory, _, base = target.rpartition("/")
    return controller.repo.targets_dir / directory / f"{info.hashes['sha256']}.{base}"


def _model_target(version: int) -> str:
    return bundle_paths("digits", version, "model.onnx")[1]


def _one_targets_key(controller, monkeypatch):
    """An attacker who stole one of the two targets keys (and the online snapshot and
    timestamp keys) publishes targets metadata signed by that key alone."""
    keys = controller.repo._signers.signers
    monkeypatch.setitem(keys, "targets", keys["targets"][:1])


# -- signatures ---------------------------------------------------------------------------
def test_arbitrary_install_signed_by_unknown_key_is_rejected(controller, serving, evalset,
                                                             tmp_path):
    _fleet, agent, v2 = serving
    controller.registry.ensure_bundle("digits", v2["version"])
    # Write access to the repository but not the keys: everything re-signed by a rogue root.
    init_keys(tmp_path / "rogue-keys")
    rogue = TrustRepository(tmp_path / "rogue", tmp_path / "rogue-keys")
    for role in ("targets", "snapshot", "timestamp"):
        getattr(rogue, role).signed.version = getattr(controller.repo, role).signed.version + 10
    rogue.add_targets({p: _stored(controller, p).read_bytes()
                       for p in controller.repo.targets.signed.targets},
                      custom={p: dict(i.custom or {})
                              for p, i in controller.repo.targets.signed.targets.items()})
    for f in (tmp_path / "rogue" / "metadata").iterdir():
        if not f.name.endswith("root.json"):
            (controller.repo.metadata_dir / f.name).write_bytes(f.read_bytes())

    _rejected(controller, agent, v2["version"], "untrusted_signature", evalset)


def test_below_threshold_signatures_are_rejected(controller, serving, evalset, monkeypatch):
    _fleet, agent, v2 = serving
    assert controller.repo.root.signed.roles["targets"].threshold == 2
    _one_targets_key(controller, monkeypatch)
    controller.registry.ensure_bundle("digits", v2["version"])  # 1 of 2 signatures

    _rejected(controller, agent, v2["version"], "untrusted_signature", evalset)


def test_one_keys_signature_counted_twice_is_rejected(controller, serving, evalset,
                                                      monkeypatch):
    _fleet, agent, v2 = serving
    repo = controller.repo
    _one_targets_key(controller, monkeypatch)
    controller.registry.ensure_bundle("digits", v2["version"])
    # the one signature, listed twice, to make two of two
    path = repo.metadata_dir / f"{repo.targets.signed.version}.targets.json"
    doc = json.loads(path.read_bytes())
    doc["signatures"] = doc["signatures"] * 2
    path.write_bytes(json.dumps(doc).encode())
    repo._publish(targets_changed=False)  # snapshot and timestamp over the forged file

    _rejected(controller, agent, v2["version"], "duplicate_signature", evalset)


# -- rollback and freeze ------------------------------------------------------------------
def test_rollback_to_a_lower_version_is_rejected(controller, serving, evalset):
    fleet, agent, v2 = serving
    dep = wait_deployment(controller, controller.deploy("digits", v2["version"])["id"])
    assert dep["state"] == "succeeded"
    agent = fleet.restart_agent(agent.config.device_id)  # trusted state survives a restart
    fleet.wait_connected()

    dep = wait_deployment(controller, controller.deploy("digits", 1)["id"])
    assert job_of(dep, agent.config.device_id)["reason"] == "version_rollback"
    assert agent.active.version == v2["version"]
    assert agent.predict(evalset["x"][:1]).model.version == v2["version"]


@BOTH_TRANSPORTS
def test_rollback_of_trust_metadata_across_a_restart_is_rejected(controller, serving, evalset):
    fleet, agent, v2 = serving
    old_timestamp = (controller.repo.metadata_dir / "timestamp.json").read_bytes()
    controller.registry.ensure_bundle("digits", v2["version"])
    agent.updater.refresh()  # the device now trusts the newer timestamp
    agent = fleet.restart_agent(agent.config.device_id)
    fleet.wait_connected()
    # replay the older (still unexpired, validly signed) timestamp
    (controller.repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)

    _rejected(controller, agent, v2["version"], "metadata_rollback", evalset)


def test_release_counter_rollback_is_refused_even_when_the_controller_orders_it(
        controller, make_fleet, evalset):
    """A compromised controller orders a rollback past a security release: refused, also
    after a restart (Uptane's release counter)."""
    fleet = make_fleet(1)
    agent = fleet.agents[fleet.ids[0]]
    wait_devices_known(controller, fleet.ids)
    register_digits(controller)
    assert wait_deployment(controller, controller.deploy("digits", 1)["id"])[
        "state"] == "succeeded"
    fixed = controller.registry.register(
        "digits", _stored(controller, _model_target(1)).read_bytes(), security_release=True)
    assert fixed["release_counter"] == 2
    dep = wait_deployment(controller, controller.deploy("digits", fixed["version"])["id"])
    assert dep["state"] == "succeeded"
    agent = fleet.restart_agent(agent.config.device_id)
    fleet.wait_connected()
    assert agent.store.release_floor("digits") == 2

    controller.orchestrator.act(dep["id"], "rollback", "mallory")  # allow_downgrade to v1
    dep = wait_deployment(controller, dep["id"])
    job = job_of(dep, agent.config.device_id)
    assert job["state"] == "revert_failed" and job["detail"].startswith("counter_rollback"), job
    assert agent.active.version == fixed["version"]
    assert agent.predict(evalset["x"][:1]).model.version == fixed["version"]


@BOTH_TRANSPORTS
def test_indefinite_freeze_with_a_replayed_expired_timestamp_is_rejected(controller, serving,
                                                                          evalset):
    _fleet, agent, v2 = serving
    repo = controller.repo
    repo.expiry = TrustExpiry(timestamp_s=2)
    assert repo.refresh(min_remaining_fraction=2.0)  # a timestamp valid for 2 s
    agent.updater.refresh()
    frozen = (repo.metadata_dir / "timestamp.json").read_bytes()
    repo.expiry = TrustExpiry()
    controller.registry.ensure_bundle("digits", v2["version"])
    # the attacker keeps serving the last timestamp the device saw, hiding the new one
    (repo.metadata_dir / "timestamp.json").write_bytes(frozen)
    expires = Metadata[Timestamp].from_bytes(frozen).signed.expires.timestamp()
    time.sleep(max(0.0, expires - time.time()) + 0.2)  # until the frozen timestamp expires

    _rejected(controller, agent, v2["version"], "expired_metadata", evalset)
    # the device says so: it serves what it has and installs nothing new
    assert agent.status()["trust"]["state"] == "expired"
    wait_until(lambda: controller.store.get_device(agent.config.device_id)["hw"].get(
        "trust", {}).get("state") == "expired", 10)


def test_fast_forward_attack_is_recovered_by_rotating_the_timestamp_key(controller, serving,
                                                                         evalset):
    _fleet, agent, v2 = serving
    repo = controller.repo
    # a stolen timestamp key signs a timestamp far in the future of the real one
    stolen = repo._signers["timestamp"][0]
    forged = Metadata[Timestamp].from_bytes((repo.metadata_dir / "timestamp.json").read_bytes())
    forged.signed.version += 1000
    forged.sign(stolen)
    (repo.metadata_dir / "timestamp.json").write_bytes(forged.to_bytes(JSONSerializer()))
    agent.updater.refresh()  # the device accepts it: validly signed

    # every real timestamp now looks like a rollback: the device is frozen
    dep = wait_deployment(controller, controller.deploy("digits", v2["version"])["id"])
    assert job_of(dep, agent.config.device_id)["reason"] == "metadata_rollback"
    _still_serving_v1(agent, evalset)

    # recovery: the root keys (offline) rotate the timestamp key; the controller re-signs
    rotated = rotate_keys(controller.settings.keys_dir, roles=["timestamp"])
    assert rotated["version"] == 2
    assert repo.refresh()
    assert repo.timestamp.signed.version < forged.signed.version
    dep = wait_deployment(controller, controller.deploy("digits", v2["version"])["id"])
    assert dep["state"] == "succeeded", job_of(dep, agent.config.device_id)
    assert agent.predict(evalset["x"][:1]).model.version == v2["version"]


# -- files that do not belong ---------------------------------------------------------------
@pytest.mark.parametrize("role", ["targets", "snapshot"])
def test_mix_and_match_of_metadata_from_two_releases_is_rejected(controller, serving, evalset,
                                                                 role):
    _fleet, agent, v2 = serving
    repo = controller.repo
    old_version = getattr(repo, role).signed.version
    old = (repo.metadata_dir / f"{old_version}.{role}.json").read_bytes()
    controller.registry.ensure_bundle("digits", v2["version"])
    # the new release's file name, the old release's (validly signed) content
    new_version = getattr(repo, role).signed.version
    (repo.metadata_dir / f"{new_version}.{role}.json").write_bytes(old)

    _rejected(controller, agent, v2["version"], "metadata_mismatch", evalset)


@BOTH_TRANSPORTS
@pytest.mark.parametrize("file", ["model", "timestamp"])
def test_endless_data_is_rejected(controller, serving, evalset, file):
    _fleet, agent, v2 = serving
    controller.registry.ensure_bundle("digits", v2["version"])
    if file == "model":
        path = _stored(controller, _model_target(v2["version"]))
    else:
        path = controller.repo.metadata_dir / "timestamp.json"
    with open(path, "ab") as fh:  # more bytes than were signed, as far as it goes
        fh.write(b" " * (2 * 1024 * 1024))

    _rejected(controller, agent, v2["version"], "length_exceeded", evalset)


@BOTH_TRANSPORTS
def test_tampered_model_file_on_the_server_is_rejected(controller, serving, evalset):
    _fleet, agent, v2 = serving
    controller.registry.ensure_bundle("digits", v2["version"])
    stored = _stored(controller, _model_target(v2["version"]))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    _rejected(controller, agent, v2["version"], "tampered_file", evalset)


@BOTH_TRANSPORTS
@pytest.mark.parametrize("file", ["smoke.npz", "profile.json"])
def test_tampered_data_file_on_the_server_is_rejected(controller, serving, evalset, file):
    _fleet, agent, v2 = serving
    manifest = controller.registry.ensure_bundle("digits", v2["version"])
    stored = _stored(controller, f"{manifest.rsplit('/', 1)[0]}/{file}")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    _rejected(controller, agent, v2["version"], "tampered_file", evalset)


def _sign_inline_manifest(controller, version: int, evalset) -> bytes:
    """Sign a manifest with a thousand eval rows inline, as releases before data files
    did for image models: far above the cap."""
    manifest_path = bundle_paths("digits", version, "model.onnx")[0]
    model = controller.registry.get("digits", version)
    oversized = Manifest(
        name="digits", version=version, runtime="onnxruntime", model_file="model.onnx",
        model_sha256=model["sha256"], model_length=model["size_bytes"],
        inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
        outputs=[TensorSpec("probs", "FP32", ["batch", 10])],
        smoke_test={"input": evalset["x"][:1024].tolist()})
    encoded = oversized.encode()
    trust = TargetTrust(model="digits", version=version).custom()
    model_target = _model_target(version)
    controller.repo.add_targets({manifest_path: encoded,
                                 model_target: Path(model["file"]).read_bytes()},
                                custom={manifest_path: trust, model_target: trust})
    controller.store.mark_bundled("digits", version)
    return encoded


def test_a_manifest_above_the_cap_is_refused_before_download(controller, serving, evalset,
                                                             monkeypatch):
    _fleet, agent, v2 = serving
    encoded = _sign_inline_manifest(controller, v2["version"], evalset)
    assert len(encoded) > MANIFEST_MAX_BYTES
    # a compromised controller serves it as it is (an honest one re-signs it: see
    # test_model_data)
    manifest_path = bundle_paths("digits", v2["version"], "model.onnx")[0]
    monkeypatch.setattr(controller.registry, "ensure_bundle",
                        lambda *_a, **_k: manifest_path)
    fetched = agent.updater.fetcher.bytes_received

    job = _rejected(controller, agent, v2["version"], "manifest_too_large", evalset)
    assert agent.updater.fetcher.bytes_received - fetched < len(encoded)  # never pulled
    assert "65536" in job["detail"] or "cap" in job["detail"]


def test_tampered_chunk_in_flight_is_rejected(controller, serving, evalset, monkeypatch):
    _fleet, agent, v2 = serving
    fetcher = agent.fetcher
    honest = fetcher._source

    def man_in_the_middle(file, offset, count, timeout_s):
        chunk = honest(file, offset, count, timeout_s)
        if file.endswith("model.onnx") and offset == 0 and chunk.data:
            flipped = bytes([chunk.data[0] ^ 0x01]) + chunk.data[1:]
            return dataclasses.replace(chunk, data=flipped)
        return chunk

    monkeypatch.setattr(fetcher, "_source", man_in_the_middle)
    _rejected(controller, agent, v2["version"], "tampered_file", evalset)


def test_bundle_for_another_hardware_class_is_refused_before_download(controller, serving,
                                                                      evalset):
    _fleet, agent, _v2 = serving
    jetson = controller.registry.register(
        "digits", _stored(controller, _model_target(1)).read_bytes(),
        hardware_classes=["jetson-orin"])
    before = agent.fetcher.bytes_received

    _rejected(controller, agent, jetson["version"], "wrong_hardware", evalset)
    # only metadata moved: the model file (~0.3 MB) was never fetched
    assert agent.fetcher.bytes_received - before < jetson["size_bytes"] // 4


# -- control commands ---------------------------------------------------------------------
def _publish_raw(broker_url: str, topic: str, payload: bytes) -> None:
    host, port = broker_url.split("//")[1].split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker")
    client.connect(host, int(port))
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def _deploy_command(controller, device: str, version: int, **fields) -> Command:
    from edgefleet.contract import DesiredState

    now = time.time()
    desired = DesiredState(deployment="dep-x", job=f"dep-x.{device}.evil", model="digits",
                           version=version, manifest="", issued_at=now, device=device)
    return Command(**{"id": f"c{time.monotonic_ns()}", "action": "deploy", "issued_at": now,
                      "expires_at": now + 600, "desired": desired, "device": device, **fields})


@pytest.mark.parametrize("attack", ["replayed", "replayed_after_restart", "expired", "unsigned",
                                    "forged", "for_another_device", "batch_for_another_device",
                                    "batch_payload_swapped", "batch_leaf_moved"])
def test_replayed_forged_or_expired_control_command_is_refused(controller, serving, evalset,
                                                               attack, mosquitto, tmp_path):
    fleet, agent, v2 = serving
    controller.registry.ensure_bundle("digits", v2["version"])
    device = agent.config.device_id
    topic = device_topic(device, DeviceTopic.CMD)
    reason = {"replayed": "replayed_command", "replayed_after_restart": "replayed_command",
              "expired": "expired_command", "unsigned": "unsigned_command",
              "forged": "unknown_command_key", "for_another_device": "wrong_device",
              "batch_for_another_device": "wrong_device",
              "batch_payload_swapped": "untrusted_signature",
              "batch_leaf_moved": "untrusted_signature"}[attack]
    if attack.startswith("replayed"):
        # a genuine command, seen once and acted on ("rebirth" changes nothing)
        captured = controller.repo.sign_command(
            Command(id="once", action="rebirth", issued_at=time.time(),
                    expires_at=time.time() + 600, device=device).encode())
        _publish_raw(mosquitto.url, topic, captured)
        wait_until(lambda: "once" in agent.guard._seen, 10)
        if attack == "replayed_after_restart":
            agent = fleet.restart_agent(device)
            fleet.wait_connected()
        payload = captured
    elif attack == "expired":
        payload = controller.repo.sign_command(_deploy_command(
            controller, device, v2["version"], issued_at=time.time() - 7200,
            expires_at=time.time() - 3600).encode())
    elif attack == "unsigned":
        payload = _deploy_command(controller, device, v2["version"]).encode()
    elif attack == "forged":
        init_keys(tmp_path / "rogue-keys")
        rogue = TrustRepository(tmp_path / "rogue", tmp_path / "rogue-keys")
        payload = rogue.sign_command(_deploy_command(controller, device, v2["version"]).encode())
    elif attack.startswith("batch"):
        # a genuine batch (one signature over several devices' commands), then: another
        # device's envelope replayed here; this device's envelope with another payload in
        # it (the leaf no longer hashes to the signed root); or moved to another leaf
        batch = [_deploy_command(controller, d, v2["version"]).encode()
                 for d in ("someone-else", device, "a-third")]
        envelopes = [Signed.decode(e) for e in controller.repo.sign_commands(batch)]
        assert all(e.batch_path for e in envelopes)
        forged = {"batch_for_another_device": envelopes[0],
                  "batch_payload_swapped": dataclasses.replace(
                      envelopes[1], payload=base64.b64encode(_deploy_command(
                          controller, device, v2["version"]).encode()).decode()),
                  "batch_leaf_moved": dataclasses.replace(envelopes[1], batch_index=0)}[attack]
        payload = forged.encode()
    else:
        payload = controller.repo.sign_command(
            _deploy_command(controller, "someone-else", v2["version"]).encode())

    _publish_raw(mosquitto.url, topic, payload)
    wait_until(lambda: agent.guard.rejected[reason] >= 1, 10)
    assert agent.status()["commands"]["rejected"][reason] >= 1
    # a genuine command sent after it is handled after it, on the same thread: once it is
    # seen, an accepted deploy would have been handed to the job runner
    probe = Command(id=f"probe{time.monotonic_ns()}", action="rebirth", issued_at=time.time(),
                    expires_at=time.time() + 600, device=device)
    _publish_raw(mosquitto.url, topic, controller.repo.sign_command(probe.encode()))
    wait_until(lambda: probe.id in agent.guard._seen, 10)
    assert agent.jobs._wanted is None and agent.jobs.current is None
    assert not agent.store.find("digits", v2["version"])
    _still_serving_v1(agent, evalset)
