"""Prometheus /metrics: valid exposition format, and figures that match the fleet."""

from __future__ import annotations

import shutil
import subprocess

from _support import TOKEN, register_digits, wait_deployment, wait_devices_known
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.controller.api import create_app
from edgefleet.simulations.fleet import wait_until


def _scrape(client: TestClient) -> tuple[str, dict[tuple[str, tuple], float]]:
    resp = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(resp.text):  # the parser is the check
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return resp.text, samples


def test_metrics_describe_the_fleet_in_valid_exposition_format(controller, make_fleet, evalset):
    fleet = make_fleet(2, summary_window_s=1.0)
    wait_devices_known(controller, fleet.ids)
    v1 = register_digits(controller)
    assert wait_deployment(controller, controller.deploy("digits", v1["version"])["id"])[
        "state"] == "succeeded"
    for agent in fleet.agents.values():
        for row in evalset["x"][:20]:
            agent.predict(row[None, :])
    wait_until(lambda: controller.counters["summaries_stored"] >= 2, 15)

    with TestClient(create_app(controller)) as client:
        assert client.get("/metrics").status_code == 401  # scraping needs a viewer token
        text, samples = _scrape(client)

    assert samples[("edgefleet_devices", (("state", "online"),))] == 2
    assert samples[("edgefleet_devices_by_model", (("model", "digits"), ("version", "1")))] == 2
    assert samples[("edgefleet_deployments", (("state", "succeeded"),))] == 1
    stored = samples[("edgefleet_controller_events_total", (("event", "summaries_stored"),))]
    assert stored >= 2
    inferences = samples[("edgefleet_model_inferences", (("model", "digits"), ("version", "1")))]
    assert inferences >= 2
    p95 = samples[("edgefleet_model_latency_seconds",
                   (("model", "digits"), ("percentile", "95"), ("version", "1")))]
    assert 0 < p95 < 1
    # the reference checker (Debian's prometheus package; scripts/test installs it)
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus package"
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
