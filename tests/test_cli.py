"""The admin CLI over a real controller API: human output by default, --json for scripts."""

from __future__ import annotations

import json

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
