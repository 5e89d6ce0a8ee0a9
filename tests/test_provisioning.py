"""Device identity: first boot with a claim token, credentials issued, revocation."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest
from _support import TOKEN, register_digits, wait_deployment, wait_devices_known
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from edgefleet.agent import Agent, load_config
from edgefleet.agent.provision import ProvisioningError, provision_from_config
from edgefleet.cli import app
from edgefleet.contract import DeviceTopic, NotFoundError, RegistryError, SignatureError
from edgefleet.controller import FleetController, Settings, Store
from edgefleet.controller._credential_store import CredentialTransaction
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer
from edgefleet.controller.provisioning import Provisioner, provision_message
from edgefleet.simulations.brokers import MosquittoProcess, free_port
from edgefleet.simulations.fleet import wait_until

CTL_USER = "edgefleet-controller"


@pytest.fixture
def fleet_site(tmp_path, trust_root):
    """A controller that manages a password-protected Mosquitto, and its HTTP API."""
    auth_dir = tmp_path / "broker-auth"
    as_root = "user root\n" if os.geteuid() == 0 else ""  # keep the 0600 files readable
    broker = MosquittoProcess(port=free_port(), workdir=tmp_path / "mq", anonymous=False,
                              extra_config=f"password_file {auth_dir / 'passwd'}\n"
                                           f"acl_file {auth_dir / 'acl'}\n{as_root}")
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'ctl.db'}", broker_url=broker.url,
                        keys_dir=trust_root.parent, data_dir=tmp_path / "ctl",
                        admin_token=TOKEN, mqtt_username=CTL_USER,
                        mqtt_password=secrets.token_urlsafe(16), broker_auth_dir=auth_dir)
    ctl = FleetController(settings, broker_reload=broker.reload)
    ctl.provisioner.sync_broker()  # the files exist before the broker reads them
    broker.start()
    ctl.start()
    api = ApiServer(create_app(ctl))
    api.start()
    yield {"ctl": ctl, "api": api, "broker": broker, "root": trust_root, "auth": auth_dir}
    api.stop()
    ctl.stop()
    broker.stop()


def _call(api, method, path, body=None, token=TOKEN):
    req = urllib.request.Request(f"{api.url}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _device_files(tmp_path, site, name, token, **extra):
    """An image's files: agent.toml, the claim token, the pinned root."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "claim-token").write_text(token + "\n")
    lines = [f'state_dir = "{folder / "state"}"', f'trust_root = "{site["root"]}"',
             f'provision_url = "{site["api"].url}"', 'claim_token_file = "claim-token"',
             "api_port = 0", *[f"{k} = {json.dumps(v)}" for k, v in extra.items()]]
    (folder / "agent.toml").write_text("\n".join(lines) + "\n")
    return folder / "agent.toml"


def _connack(broker, user, password) -> int:
    rc: list[int] = []
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{secrets.token_hex(3)}")
    c.username_pw_set(user, password)
    c.on_connect = lambda _c, _u, _f, reason, _p=None: (rc.append(reason.value), done.set())
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        assert done.wait(5), "no CONNACK"
        return rc[0]
    finally:
        c.loop_stop()
        c.disconnect()


def test_first_boot_provisions_the_device_which_then_deploys_and_can_be_revoked(
        fleet_site, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    ctl, api, broker = fleet_site["ctl"], fleet_site["api"], fleet_site["broker"]
    # the admin makes a one-use claim token straight into the image's file
    runner = CliRunner()
    env = {"EDGEFLEET_URL": api.url, "EDGEFLEET_TOKEN": TOKEN}
    made = runner.invoke(app, ["claim-tokens", "create", "lab batch", "--out",
                               str(tmp_path / "claim-token"), "--json"], env=env)
    assert made.exit_code == 0, made.output
    assert "token" not in json.loads(made.stdout)
    assert stat.S_IMODE((tmp_path / "claim-token").stat().st_mode) == 0o600
    token = {"token": (tmp_path / "claim-token").read_text().strip()}
    assert token["token"].startswith("efc_")
    config = _device_files(tmp_path, fleet_site, "pi-1", token["token"],
                           hardware_class="rpi-arm64")

    identity = provision_from_config(config, deadline_s=30)
    state = config.parent / "state"
    for private in ("identity.json", "device.key"):
        assert stat.S_IMODE((state / private).stat().st_mode) == 0o600
    cfg = load_config(config)
    assert cfg.device_id == identity["device_id"] and cfg.mqtt_password
    assert provision_from_config(config) == identity  # the second boot asks nothing

    agent = Agent(cfg)
    agent.start()
    try:
        assert agent.link.wait_connected(15)
        wait_devices_known(ctl, [cfg.device_id])
        dep = wait_deployment(ctl, ctl.deploy("digits", register_digits(ctl)["version"])["id"])
        assert dep["state"] == "succeeded"

        # secrets stay secret: no password or token hash in what the API shows
        _, shown = _call(api, "GET", f"/v1/devices/{cfg.device_id}/identity")
        _, tokens = _call(api, "GET", "/v1/claim-tokens")
        text = json.dumps([shown, tokens])
        assert cfg.mqtt_password not in text and token["token"] not in text
        assert tokens[0]["state"] == "used" and "hash" not in tokens[0]

        # the one-use token is spent: a second device is refused, and says why
        other = _device_files(tmp_path, fleet_site, "pi-2", token["token"])
        with pytest.raises(ProvisioningError, match="refused"):
            provision_from_config(other, deadline_s=10)

        revoked = runner.invoke(app, ["devices", "revoke", cfg.device_id, "--json"], env=env)
        assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked_at"]
        # the broker refuses the revoked credentials (Mosquitto also drops the session)...
        assert _connack(broker, cfg.device_id, cfg.mqtt_password) != 0
        wait_until(lambda: not agent.link.connected.is_set(), 10)
        refused = agent.link.refused
        wait_until(lambda: agent.link.refused > refused, 30)  # it tried again: refused
        assert not agent.link.connected.is_set()
        # ...and whatever still arrives under its name is heard, never obeyed
        before = ctl.counters["revoked_ignored"]
        ctl.handle(cfg.device_id, DeviceTopic.BIRTH, agent._birth(agent.link.bd_seq))
        assert ctl.counters["revoked_ignored"] == before + 1
    finally:
        agent.stop()
    # no secret in any log line: not the token, the password or the device's private key
    private_key = (state / "device.key").read_text().splitlines()[1]
    for secret in (token["token"], cfg.mqtt_password, private_key):
        assert secret not in caplog.text


def _request(key: Ed25519PrivateKey, device_id: str = "", ts: float | None = None):
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    ts = time.time() if ts is None else ts
    proof = base64.b64encode(key.sign(provision_message(device_id, pem, ts))).decode()
    return {"public_key": pem, "proof": proof, "ts": ts, "device_id": device_id or None}


def test_claim_tokens_are_limited_expiring_revocable_and_bound_to_a_key(controller):
    prov = controller.provisioner
    key = Ed25519PrivateKey.generate()
    twice = prov.create_claim_token(label="two", uses=2, created_by="admin")["token"]

    first = controller.provision(claim_token=twice, **_request(key, "cam-1"))
    assert first["device_id"] == "cam-1" and first["mqtt_username"] == "cam-1"
    # the same device and key again (identity lost, key kept): new password, same id
    again = controller.provision(claim_token=twice, **_request(key, "cam-1"))
    assert again["mqtt_password"] != first["mqtt_password"]
    with pytest.raises(SignatureError) as used_up:
        controller.provision(claim_token=twice, **_request(key, "cam-1"))
    assert used_up.value.reason == "invalid_claim_token"

    fresh = prov.create_claim_token(label="n", uses=5, created_by="admin")
    # another key may not take over a provisioned id
    with pytest.raises(RegistryError) as taken:
        controller.provision(claim_token=fresh["token"],
                             **_request(Ed25519PrivateKey.generate(), "cam-1"))
    assert taken.value.reason == "device_conflict"
    # a proof signed by a key other than the one presented
    forged = _request(Ed25519PrivateKey.generate(), "cam-2")
    forged["proof"] = _request(key, "cam-2")["proof"]
    with pytest.raises(SignatureError) as bad:
        controller.provision(claim_token=fresh["token"], **forged)
    assert bad.value.reason == "invalid_proof"
    with pytest.raises(SignatureError):  # a replayed (stale) proof
        controller.provision(claim_token=fresh["token"],
                             **_request(key, "cam-1", ts=time.time() - 3600))
    derived = controller.provision(claim_token=fresh["token"],
                                   **_request(Ed25519PrivateKey.generate()))
    assert derived["device_id"].startswith("dev-")

    prov.revoke_claim_token(fresh["id"])
    with pytest.raises(SignatureError):
        controller.provision(claim_token=fresh["token"], **_request(Ed25519PrivateKey.generate()))
    expiring = prov.create_claim_token(label="x", ttl_s=0.2, created_by="admin")
    time.sleep(0.3)
    with pytest.raises(SignatureError):
        controller.provision(claim_token=expiring["token"],
                             **_request(Ed25519PrivateKey.generate()))
    assert {t["state"] for t in prov.list_claim_tokens()} == {"used", "revoked", "expired"}

    prov.revoke_device("cam-1", actor="admin")
    with pytest.raises(RegistryError) as revoked:  # a revoked id stays revoked
        controller.provision(claim_token=prov.create_claim_token(label="y", created_by="a")[
            "token"], **_request(key, "cam-1"))
    assert revoked.value.reason == "device_revoked"


def test_a_one_use_claim_token_raced_by_two_replicas_provisions_one_device(db_url,
                                                                          monkeypatch):
    """Replicas share the database, not a lock: when another replica spends a token's last
    use while this one is checking it, this one refuses the device."""
    stores = [Store(db_url), Store(db_url)]
    here, other = Provisioner(stores[0]), Provisioner(stores[1])
    token = here.create_claim_token(label="one", uses=1, created_by="admin")["token"]
    read, raced = CredentialTransaction.credentials, []

    def read_then_race(tx, device):
        row = read(tx, device)
        if not raced:  # the other replica, between this one's check and its spending
            raced.append(device)
            raced.append(other.provision(claim_token=token, broker_url="mqtt://b:1883",
                                         **_request(Ed25519PrivateKey.generate(), "cam-b")))
        return row

    monkeypatch.setattr(CredentialTransaction, "credentials", read_then_race)
    try:
        with pytest.raises(SignatureError) as refused:
            here.provision(claim_token=token, broker_url="mqtt://b:1883",
                           **_request(Ed25519PrivateKey.generate(), "cam-a"))
        assert refused.value.reason == "invalid_claim_token"
        assert raced[0] == "cam-a" and raced[1]["device_id"] == "cam-b"
        assert other.identity("cam-b")["device"] == "cam-b"
        with pytest.raises(NotFoundError):  # nothing of it was stored
            here.identity("cam-a")
        assert [(t["uses_left"], t["state"]) for t in here.list_claim_tokens()] == [(0, "used")]
    finally:
        for store in stores:
            store.engine.dispose()

