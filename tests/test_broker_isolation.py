"""Broker isolation with the generated Mosquitto config: each device in its own lane."""

from __future__ import annotations

import os
import secrets
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from _support import TOKEN, register_digits, wait_deployment, wait_devices_known

from edgefleet.controller import FleetController, Settings
from edgefleet.controller.brokerconf import (
    LISTENER_LINES,
    auth_lines,
    password_line,
    render_acl,
    write_broker_config,
)
from edgefleet.simulations.brokers import MosquittoProcess
from edgefleet.simulations.fleet import Fleet, wait_until

CTL_USER = "edgefleet-controller"
BLOB = "ab" * 32  # a broadcast file's name (a sha256)


@pytest.fixture
def secured(tmp_path):
    creds = {d: secrets.token_urlsafe(12) for d in ("pi-a", "pi-b")}
    ctl_pw = secrets.token_urlsafe(12)
    conf_dir = tmp_path / "broker"
    write_broker_config(conf_dir, devices=creds, controller_user=CTL_USER,
                        controller_password=ctl_pw, port=8883)
    # started as root, mosquitto would drop to its own user and lose the 0600 files
    as_root = "user root\n" if os.geteuid() == 0 else ""
    # the generated config's own authentication directives (mosquitto.conf's listener and
    # persistence are the fixture's: a free loopback port, a temporary directory)
    auth = "\n".join([*(line for line in auth_lines(conf_dir) if "anonymous" not in line),
                      *LISTENER_LINES])  # appended after the fixture's one listener
    broker = MosquittoProcess(workdir=tmp_path / "mq", anonymous=False,
                              extra_config=f"{auth}\n{as_root}")
    broker.start()
    yield {"broker": broker, "creds": creds, "ctl_pw": ctl_pw, "dir": conf_dir}
    broker.stop()


def _client(broker: MosquittoProcess, user: str | None, password: str | None,
            client_id: str | None = None):
    """Connect and return (client, connect reason code, received messages)."""
    got: list[tuple[str, bytes]] = []
    done = threading.Event()
    rc: list[int] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                    client_id=client_id or f"t-{secrets.token_hex(3)}", protocol=mqtt.MQTTv311)
    if user is not None:
        c.username_pw_set(user, password)
    c.on_connect = lambda _c, _u, _f, reason, _p=None: (rc.append(reason.value), done.set())
    c.on_message = lambda _c, _u, msg: got.append((msg.topic, bytes(msg.payload)))
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    assert done.wait(5), "no CONNACK"
    return c, rc[0], got


def test_device_cannot_read_or_write_another_devices_topics(secured):
    broker, creds = secured["broker"], secured["creds"]
    ctl, rc, ctl_got = _client(broker, CTL_USER, secured["ctl_pw"])
    a, rc_a, a_got = _client(broker, "pi-a", creds["pi-a"])
    assert rc == 0 and rc_a == 0
    try:
        ctl.subscribe("fleet/v1/dev/+/#", qos=1)
        ctl.subscribe("fleet/v1/blob/#", qos=1)
        a.subscribe("fleet/v1/dev/pi-b/cmd", qos=1)  # B's commands
        a.subscribe("fleet/v1/dev/pi-a/cmd", qos=1)  # its own
        a.subscribe(f"fleet/v1/blob/{BLOB}/+", qos=1)  # broadcast bundle blocks: readable
        threading.Event().wait(0.5)
        ctl.publish(f"fleet/v1/blob/{BLOB}/0", b"block", qos=1, retain=True).wait_for_publish(5)
        a.publish(f"fleet/v1/blob/{BLOB}/65536", b"forged", qos=1,
                  retain=True).wait_for_publish(5)
        ctl.publish("fleet/v1/dev/pi-b/cmd", b"for-b", qos=1).wait_for_publish(5)
        ctl.publish("fleet/v1/dev/pi-a/cmd", b"for-a", qos=1).wait_for_publish(5)
        a.publish("fleet/v1/dev/pi-b/telemetry", b"forged", qos=1).wait_for_publish(5)
        a.publish("fleet/v1/dev/pi-b/job/dep-1/status", b"forged", qos=1).wait_for_publish(5)
        a.publish("fleet/v1/dev/pi-a/cmd", b"self-command", qos=1).wait_for_publish(5)
        a.publish("fleet/v1/ctl/state", b"forged", qos=1).wait_for_publish(5)
        a.publish("fleet/v1/dev/pi-a/telemetry", b"own", qos=1).wait_for_publish(5)
        # the last of each sender's messages arrived: whatever the broker let through
        # before them (B's command, A's forgeries) has arrived too, in order
        wait_until(lambda: ("fleet/v1/dev/pi-a/telemetry", b"own") in ctl_got
                   and any(t.startswith("fleet/v1/blob/") for t, _p in a_got), 10)
    finally:
        for c in (ctl, a):
            c.loop_stop()
            c.disconnect()
    # its own commands and the broadcast, never B's; and it cannot write a block
    assert sorted(a_got) == [("fleet/v1/blob/" + BLOB + "/0", b"block"),
                             ("fleet/v1/dev/pi-a/cmd", b"for-a")]
    forged = [t for t, p in ctl_got if p in (b"forged", b"self-command")]
    assert forged == []  # nothing A wrote outside its lane reached anyone
    assert ("fleet/v1/dev/pi-a/telemetry", b"own") in ctl_got


@pytest.mark.parametrize("user,password", [(None, None), ("pi-a", "wrong"), ("nobody", "x")])
def test_anonymous_and_wrong_credentials_are_refused(secured, user, password):
    c, rc, _ = _client(secured["broker"], user, password)
    c.loop_stop()
    c.disconnect()
    assert rc != 0  # 4/5 (bad credentials / not authorized)


def test_a_revoked_device_can_no_longer_connect(secured):
    broker, creds = secured["broker"], secured["creds"]
    c, rc, _ = _client(broker, "pi-b", creds["pi-b"])
    c.loop_stop()
    c.disconnect()
    assert rc == 0
    write_broker_config(secured["dir"], devices={"pi-a": creds["pi-a"]},
                        controller_user=CTL_USER, controller_password=secured["ctl_pw"])
    broker.reload()
    threading.Event().wait(0.5)
    c, rc, _ = _client(broker, "pi-b", creds["pi-b"])
    c.loop_stop()
    c.disconnect()
    assert rc != 0


def test_agents_and_controller_work_end_to_end_through_the_isolated_broker(secured, tmp_path,
                                                                           trust_root):
    _deploy_through(secured["broker"].url, secured["creds"], secured["ctl_pw"], tmp_path,
                    trust_root)


def _deploy_through(broker_url, creds, ctl_pw, tmp_path, trust_root, **tls):
    """A controller and the devices in ``creds`` deploy digits through the given broker."""
    ctl = FleetController(Settings(db_url=f"sqlite:///{tmp_path / 'ctl.db'}",
                                   broker_url=broker_url, keys_dir=trust_root.parent,
                                   data_dir=tmp_path / "ctl", admin_token=TOKEN,
                                   mqtt_username=CTL_USER, mqtt_password=ctl_pw,
                                   broker_ca_file=tls.get("ca")))
    ctl.start()
    fleet = Fleet(tmp_path / "fleet", broker_url, trust_root, 0, passwords=creds,
                  **({"broker_ca_file": tls["ca"]} if tls else {}))
    fleet.ids = sorted(creds)
    try:
        fleet.start()
        fleet.wait_connected(15)
        wait_devices_known(ctl, fleet.ids)
        row = register_digits(ctl)
        dep = wait_deployment(ctl, ctl.deploy("digits", row["version"])["id"])
        assert dep["state"] == "succeeded"
        assert {a.active.version for a in fleet.agents.values()} == {row["version"]}
        # the devices may read the broadcast blocks: no bundle byte was pulled
        assert ctl.counters["target_bytes_served"] == 0
        assert all(a.fetcher.bytes_from_broadcast > 0 for a in fleet.agents.values())
    finally:
        fleet.stop()
        ctl.stop()


def test_generated_files_are_private_and_hold_no_plain_passwords(secured):
    for name in ("passwd", "acl", "mosquitto.conf"):
        assert (secured["dir"] / name).stat().st_mode & 0o077 == 0
    text = (secured["dir"] / "passwd").read_text()
    assert all(pw not in text for pw in secured["creds"].values())
    assert password_line("u", "p", salt=b"0" * 12).startswith("u:$7$101$")
    acl = render_acl("ctl")
    assert "pattern write fleet/v1/dev/%u/telemetry" in acl
    assert "pattern read fleet/v1/dev/%u/cmd" in acl
    assert "pattern write fleet/v1/dev/%u/cmd" not in acl
    with pytest.raises(ValueError):
        write_broker_config(secured["dir"], devices={"a/b": "x"}, controller_user="ctl",
                            controller_password="y")


def _certificates(folder):
    """A CA and a server certificate for 127.0.0.1, made with cryptography."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("edgefleet test CA"))
          .issuer_name(name("edgefleet test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(paths[2], 0o600)
    return paths


@pytest.fixture
def tls_broker(tmp_path):
    """Mosquitto running exactly the generated config, with its TLS listener."""
    import shutil
    import subprocess

    from edgefleet.simulations.brokers import free_port

    ca, cert, key = _certificates(tmp_path / "pki")
    creds = {"pi-a": secrets.token_urlsafe(12)}
    ctl_pw = secrets.token_urlsafe(12)
    port = free_port()
    conf = write_broker_config(tmp_path / "broker", devices=creds, controller_user=CTL_USER,
                               controller_password=ctl_pw, port=port, host="127.0.0.1",
                               tls=(ca, cert, key))
    if os.geteuid() == 0:  # started as root, mosquitto would drop to a user without access
        conf.write_text(conf.read_text() + "user root\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"mosquitto did not start: {proc.stderr.read().decode()[-2000:]}")
    yield {"url": f"mqtts://127.0.0.1:{port}", "port": port, "ca": ca, "creds": creds,
           "ctl_pw": ctl_pw}
    proc.terminate()
    proc.wait(10)


def _tls_connack(port, ca, user, password) -> int | str:
    rc: list[int] = []
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{secrets.token_hex(3)}")
    c.username_pw_set(user, password)
    if ca is not None:
        c.tls_set(ca_certs=str(ca))
    c.on_connect = lambda _c, _u, _f, reason, _p=None: (rc.append(reason.value), done.set())
    try:
        c.connect("127.0.0.1", port)
    except (OSError, ValueError) as exc:  # the TLS handshake itself failed
        return type(exc).__name__
    c.loop_start()
    try:
        return rc[0] if done.wait(3) else "no CONNACK"
    finally:
        c.loop_stop()
        c.disconnect()


def test_the_tls_listener_verifies_both_ways_and_carries_a_whole_deployment(
        tls_broker, tmp_path, trust_root):
    port, ca, creds = tls_broker["port"], tls_broker["ca"], tls_broker["creds"]
    assert _tls_connack(port, ca, "pi-a", creds["pi-a"]) == 0
    assert _tls_connack(port, ca, "pi-a", "wrong") != 0
    assert _tls_connack(port, None, "pi-a", creds["pi-a"]) != 0  # no TLS: no session
    other_ca = _certificates(tmp_path / "other-pki")[0]
    assert _tls_connack(port, other_ca, "pi-a", creds["pi-a"]) != 0  # an impostor broker

    _deploy_through(tls_broker["url"], creds, tls_broker["ctl_pw"], tmp_path, trust_root,
                    ca=ca)


def test_a_device_cannot_take_over_another_clients_session(secured):
    """Under the generated config a client's id is its username: pi-b connecting with
    pi-a's or the controller's client id gets its own, and their sessions stay up."""
    broker, creds = secured["broker"], secured["creds"]
    ctl, rc_ctl, ctl_got = _client(broker, CTL_USER, secured["ctl_pw"], client_id=CTL_USER)
    a, rc_a, _ = _client(broker, "pi-a", creds["pi-a"], client_id="pi-a")
    assert rc_ctl == 0 and rc_a == 0
    dropped = {"ctl": threading.Event(), "pi-a": threading.Event()}
    ctl.on_disconnect = lambda *_a, **_k: dropped["ctl"].set()
    a.on_disconnect = lambda *_a, **_k: dropped["pi-a"].set()
    seen = threading.Event()
    ctl.on_message = lambda _c, _u, msg: seen.set() if msg.topic.endswith("pi-a/birth") \
        else None
    subscribed = threading.Event()
    ctl.on_subscribe = lambda *_a, **_k: subscribed.set()
    ctl.subscribe("fleet/v1/dev/+/birth", qos=1)
    assert subscribed.wait(5)
    try:
        for stolen in ("pi-a", CTL_USER):
            thief, rc_t, _ = _client(broker, "pi-b", creds["pi-b"], client_id=stolen)
            assert rc_t == 0  # connected, but as pi-b
            thief.disconnect()
            thief.loop_stop()
        # the victims' sessions are still the ones that connected first: a message from
        # pi-a reaches the controller through both
        a.publish("fleet/v1/dev/pi-a/birth", b"{}", qos=1).wait_for_publish(5)
        assert seen.wait(5)
        assert not dropped["ctl"].is_set() and not dropped["pi-a"].is_set()
    finally:
        for c in (ctl, a):
            c.disconnect()
            c.loop_stop()
