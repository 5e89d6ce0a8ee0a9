"""``edgefleet demo --json`` on the embedded defaults: the Quickstart's first command."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_runs_the_whole_loop_and_reports_it_as_json(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgefleet.cli", "demo", "--devices", "3",
                           "--json", "--workdir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    assert [d["id"] for d in report["devices"]] == ["dev-1", "dev-2", "dev-3"]
    opt = report["optimization"]
    for d in report["devices"]:
        assert d["healthy"] is True
        assert d["model_version"] == opt["version"]
        assert d["inferences"] >= 40 and d["accuracy_v2"] >= 0.9
        assert d["summaries_acked"] >= 1
    assert opt["int8"]["size_bytes"] * 3.5 <= opt["fp32"]["size_bytes"]
    assert opt["fp32"]["accuracy"] - opt["int8"]["accuracy"] <= 0.01
    assert opt["shipped"] in ("int8", "fp32") and opt["parent"] == 1
    off = report["offline_check"]
    assert off["device"] == "dev-3" and off["inferences_while_offline"] > 0
    assert off["summaries_replayed"] == off["summaries_while_offline"] >= 1
    assert off["summaries_lost"] == 0
    # the README's promise: well under a minute (about 10 s on an idle 2-core machine, so
    # a loaded one keeps it)
    assert report["elapsed_s"] < 60
