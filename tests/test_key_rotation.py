"""Key rotation: devices follow the root chain; rotated keys keep working end to end."""

from __future__ import annotations

import json
import stat

from _support import register_digits, wait_deployment, wait_devices_known
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.controller.keys import KeyPolicy, init_keys, load_signers, rotate_keys
from edgefleet.simulations.fleet import wait_until


def test_keys_on_disk_are_private_and_root_keys_stay_offline(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys, policy=KeyPolicy(root_keys=3, root_threshold=2, targets_keys=2,
                                     targets_threshold=2))
    pems = list(keys.rglob("*.pem"))
    assert len(pems) == 3 + 2 + 3  # root ×3 offline; targets ×2, snapshot, timestamp, command
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in pems)
    assert len(list((keys / "offline").glob("root-*.pem"))) == 3
    assert not list((keys / "online").glob("root-*"))  # the controller never reads root keys
    signers = load_signers(keys)
    assert len(signers["targets"]) == 2 and "root" not in signers.signers
    root = json.loads((keys / "root.json").read_text())
    assert root["signed"]["roles"]["root"]["threshold"] == 2
    assert len(root["signatures"]) == 3


def test_rotation_needs_a_threshold_of_the_current_root_keys(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys, policy=KeyPolicy(root_keys=2, root_threshold=2))
    (next((keys / "offline").glob("root-*.pem"))).unlink()  # one root key lost
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "rotate", "--dir", str(keys), "--role", "timestamp"])
    assert result.exit_code != 0 and "1 current root key(s) found, 2 needed" in result.output


def test_devices_follow_root_rotations_and_accept_commands_signed_with_a_new_key(
        controller, make_fleet, evalset):
    fleet = make_fleet(1)
    agent = fleet.agents[fleet.ids[0]]
    wait_devices_known(controller, fleet.ids)
    v1 = register_digits(controller)
    assert wait_deployment(controller, controller.deploy("digits", v1["version"])["id"])[
        "state"] == "succeeded"
    keys = controller.settings.keys_dir

    # two rotations in a row, root keys included: the device must walk 1 → 2 → 3
    rotate_keys(keys, roles=["root", "targets"])
    runner = CliRunner()
    out = runner.invoke(app, ["keys", "rotate", "--dir", str(keys), "--role", "root",
                              "--role", "command", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["version"] == 3
    assert controller.repo.refresh() and controller.repo.root.signed.version == 3

    # the new command key signs the next desired state; the device does not know it yet,
    # fetches the newer root, then accepts it
    v2 = register_digits(controller)
    dep = wait_deployment(controller, controller.deploy("digits", v2["version"])["id"])
    assert dep["state"] == "succeeded", dep["jobs"]
    assert agent.predict(evalset["x"][:1]).model.version == v2["version"]
    trusted = json.loads((agent.config.state_dir / "tuf" / "root.json").read_text())
    assert trusted["signed"]["version"] == 3
    wait_until(lambda: agent.guard.stats()["rejected"].get("unknown_command_key", 0) >= 1, 5)
