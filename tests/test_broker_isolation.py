"""Broker isolation with the generated Mosquitto config: each device in its own lane."""

from __future__ import annotations

import os
import secrets
import threading

import paho.mqtt.client as mqtt
import pytest
from _support import TOKEN, register_digits, wait_deployment, wait_devices_known

from edgefleet.controller import FleetController, Settings
from edgefleet.controller.brokerconf import password_line, render_acl, write_broker_config
from edgefleet.simulations.brokers import MosquittoProcess
from edgefleet.simulations.fleet import Fleet

CTL_USER = "edgefleet-controller"


@pytest.fixture
def secured(tmp_path):
    creds = {d: secrets.token_urlsafe(12) for d in ("pi-a", "pi-b")}
    ctl_pw = secrets.token_urlsafe(12)
    conf_dir = tmp_path / "broker"
    write_broker_config(conf_dir, devices=creds, controller_user=CTL_USER,
                        controller_password=ctl_pw, port=8883)
    # started as root, mosquitto would drop to its own user and lose the 0600 files
    as_root = "user root\n" if os.geteuid() == 0 else ""
    broker = MosquittoProcess(workdir=tmp_path / "mq", anonymous=False,
                              extra_config=f"password_file {conf_dir / 'passwd'}\n"
                                           f"acl_file {conf_dir / 'acl'}\n{as_root}")
    broker.start()
    yield {"broker": broker, "creds": creds, "ctl_pw": ctl_pw, "dir": conf_dir}
    broker.stop()


def _client(broker: MosquittoProcess, user: str | None, password: str | None):
    """Connect and return (client, connect reason code, received messages)."""
    got: list[tuple[str, bytes]] = []
    done = threading.Event()
    rc: list[int] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{secrets.token_hex(3)}",
                    protocol=mqtt.MQTTv311)
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
        a.subscribe("fleet/v1/dev/pi-b/cmd", qos=1)  # B's commands
        a.subscribe("fleet/v1/dev/pi-a/cmd", qos=1)  # its own
        threading.Event().wait(0.5)
        ctl.publish("fleet/v1/dev/pi-b/cmd", b"for-b", qos=1).wait_for_publish(5)
        ctl.publish("fleet/v1/dev/pi-a/cmd", b"for-a", qos=1).wait_for_publish(5)
        a.publish("fleet/v1/dev/pi-b/telemetry", b"forged", qos=1).wait_for_publish(5)
        a.publish("fleet/v1/dev/pi-b/job/dep-1/status", b"forged", qos=1).wait_for_publish(5)
        a.publish("fleet/v1/dev/pi-a/cmd", b"self-command", qos=1).wait_for_publish(5)
        a.publish("fleet/v1/ctl/state", b"forged", qos=1).wait_for_publish(5)
        a.publish("fleet/v1/dev/pi-a/telemetry", b"own", qos=1).wait_for_publish(5)
        threading.Event().wait(1.0)
    finally:
        for c in (ctl, a):
            c.loop_stop()
            c.disconnect()
    assert a_got == [("fleet/v1/dev/pi-a/cmd", b"for-a")]  # never B's
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
    broker, creds = secured["broker"], secured["creds"]
    ctl = FleetController(Settings(db_url=f"sqlite:///{tmp_path / 'ctl.db'}",
                                   broker_url=broker.url, keys_dir=trust_root.parent,
                                   data_dir=tmp_path / "ctl", admin_token=TOKEN,
                                   mqtt_username=CTL_USER, mqtt_password=secured["ctl_pw"]))
    ctl.start()
    fleet = Fleet(tmp_path / "fleet", broker.url, trust_root, 0, passwords=creds)
    fleet.ids = ["pi-a", "pi-b"]
    try:
        fleet.start()
        fleet.wait_connected(15)
        wait_devices_known(ctl, fleet.ids)
        row = register_digits(ctl)
        dep = wait_deployment(ctl, ctl.deploy("digits", row["version"])["id"])
        assert dep["state"] == "succeeded"
        assert {a.active.version for a in fleet.agents.values()} == {row["version"]}
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
