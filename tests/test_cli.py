"""The admin CLI over a real controller API: human output by default, --json for scripts."""

from __future__ import annotations

import json
import re

import pytest
from _support import ASSETS, TOKEN, wait_deployment, wait_devices_known
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer


@pytest.fixture
def cli(controller):
    server = ApiServer(create_app(controller))
    server.start()
    runner = CliRunner()

    def run(*args: str, ok: bool = True):
        result = runner.invoke(app, list(args), env={"EDGEFLEET_URL": server.url,
                                                     "EDGEFLEET_TOKEN": TOKEN,
                                                     "COLUMNS": "200"})
        if ok:
            assert result.exit_code == 0, result.output
        return result

    yield run
    server.stop()


def test_admin_drives_register_optimize_deploy_from_the_cli(cli, controller, make_fleet):
    fleet = make_fleet(2, tags={"site": "lab"})
    wait_devices_known(controller, fleet.ids)

    out = cli("model", "register", "digits", str(ASSETS / "digits.onnx"),
              "--eval", str(ASSETS / "eval.npz"), "--calibration", str(ASSETS / "calibration.npz"),
              "--labels", ",".join(str(i) for i in range(10)), "--json")
    assert json.loads(out.stdout)["version"] == 1
    human = cli("model", "optimize", "digits:1")
    assert "shipped" in human.stdout and "fp32" in human.stdout
    # the header says what was tried and what shipped, which may differ
    assert re.search(r"digits:1 → digits:2 \((static|dynamic) tried, (int8|fp32) shipped\)",
                     human.stdout), human.stdout
    models = json.loads(cli("model", "list", "--json").stdout)
    assert [(m["version"], m["parent"]) for m in models] == [(1, None), (2, 1)]

    dep = json.loads(cli("deploy", "digits:2", "--selector", "site=lab", "--wait", "60",
                         "--json").stdout)
    assert dep["state"] == "succeeded" and len(dep["jobs"]) == 2
    shown = cli("deployments", "show", dep["id"])
    assert "healthy" in shown.stdout and dep["id"] in shown.stdout
    devices = json.loads(cli("devices", "list", "--json").stdout)
    assert {d["id"]: d["active"]["version"] for d in devices} == {i: 2 for i in fleet.ids}
    assert "lab" in cli("devices", "list").stdout
    assert json.loads(cli("deployments", "list", "--json").stdout)[0]["id"] == dep["id"]
    wait_deployment(controller, dep["id"])


def test_cli_errors_are_one_line_and_exit_nonzero(cli):
    bad_ref = cli("deploy", "digits", ok=False)
    assert bad_ref.exit_code == 1 and "NAME:VERSION" in bad_ref.output
    missing = cli("deployments", "show", "dep-nope", ok=False)
    assert missing.exit_code == 1 and "404" in missing.output
    wrong_selector = cli("deploy", "digits:1", "--selector", "site", ok=False)
    assert wrong_selector.exit_code == 1 and "key=value" in wrong_selector.output


def test_keys_init_refuses_to_overwrite(tmp_path):
    runner = CliRunner()
    first = runner.invoke(app, ["keys", "init", "--dir", str(tmp_path / "k"), "--json"])
    assert first.exit_code == 0 and json.loads(first.stdout)["trust_root"].endswith("root.json")
    again = runner.invoke(app, ["keys", "init", "--dir", str(tmp_path / "k")])
    assert again.exit_code == 1 and "already holds keys" in again.output


def test_deployments_watch_follows_a_staged_rollout_live(cli, controller, make_fleet):
    fleet = make_fleet(3, tags={"site": "lab"})
    wait_devices_known(controller, fleet.ids)
    cli("model", "register", "digits", str(ASSETS / "digits.onnx"), "--eval",
        str(ASSETS / "eval.npz"))
    dep = json.loads(cli("deploy", "digits:1", "--strategy", "staged", "--waves", "33%,66%,100%",
                         "--health-window", "1s", "--max-failure-rate", "0%",
                         "--wave-timeout", "1m", "--json").stdout)
    assert dep["strategy"] == "staged" and len(dep["waves"]) == 3
    assert dep["policy"]["health_window_s"] == 1.0 and dep["policy"]["wave_timeout_s"] == 60

    lines = cli("deployments", "watch", dep["id"], "--json", "--interval", "0.2",
                "--timeout", "60").stdout.splitlines()
    snapshots = [json.loads(line) for line in lines]
    assert snapshots[-1]["state"] == "succeeded"
    assert len(snapshots) >= 3  # it printed progress, not just the end
    waves_seen = {s["wave"] for s in snapshots}
    assert {1, 2} <= waves_seen
    assert [w["outcome"] for w in snapshots[-1]["waves"]] == ["passed"] * 3
    kinds = [e["kind"] for e in snapshots[-1]["events"]]
    assert kinds[0] == "created" and kinds[-1] == "succeeded"
    assert kinds.count("wave_started") == 3

    human = cli("deployments", "watch", dep["id"], "--interval", "0.2")
    assert "wave 1" in human.stdout and "succeeded" in human.stdout
    shown = cli("deployments", "show", dep["id"])
    assert "timeline" in shown.stdout and "wave_passed" in shown.stdout


def test_rollout_actions_from_the_cli(cli, controller, make_fleet):
    fleet = make_fleet(2)
    wait_devices_known(controller, fleet.ids)
    cli("model", "register", "digits", str(ASSETS / "digits.onnx"), "--eval",
        str(ASSETS / "eval.npz"))
    dep = json.loads(cli("deploy", "digits:1", "--strategy", "staged", "--waves", "50%,100%",
                         "--health-window", "30s", "--json").stdout)
    paused = json.loads(cli("deployments", "pause", dep["id"], "--json").stdout)
    assert paused["state"] == "paused"
    again = cli("deployments", "pause", dep["id"], ok=False)
    assert again.exit_code == 1 and "cannot pause" in again.output
    rolled = json.loads(cli("deployments", "rollback", dep["id"], "--json").stdout)
    assert rolled["state"] in ("rolling_back", "rolled_back")
    assert [e["actor"] for e in rolled["events"] if e["kind"] == "paused"] == ["admin"]
    bad = cli("deploy", "digits:1", "--strategy", "staged", "--waves", "50%,20%", ok=False)
    assert bad.exit_code == 1 and "increasing" in bad.output


def test_broker_config_writes_private_files_and_keeps_existing_passwords(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["broker", "config", "--dir", str(tmp_path / "b"), "-d", "pi-a",
                              "--json"])
    assert out.exit_code == 0, out.output
    creds = json.loads((tmp_path / "b" / "credentials.json").read_text())
    again = runner.invoke(app, ["broker", "config", "--dir", str(tmp_path / "b"), "-d", "pi-b",
                                "--json"])
    assert json.loads(again.stdout)["devices"] == ["pi-a", "pi-b"]
    creds2 = json.loads((tmp_path / "b" / "credentials.json").read_text())
    assert creds2["devices"]["pi-a"] == creds["devices"]["pi-a"]  # not rotated by accident
    assert (tmp_path / "b" / "credentials.json").stat().st_mode & 0o077 == 0
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and f"password_file {tmp_path / 'b'}" in conf
    bad = runner.invoke(app, ["broker", "config", "--dir", str(tmp_path / "b"), "-d", "a/b"])
    assert bad.exit_code == 1
