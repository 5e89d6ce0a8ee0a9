"""The console in a real Chromium against a real controller, broker and agents.

With ``EDGEFLEET_SCREENSHOTS=docs/console`` these tests also take the screenshots shown
in docs/console.md (``scripts/console-screenshots`` runs them so).
"""

from __future__ import annotations

import numpy as np
import pytest
from _browser import screenshot, wait_for
from _operators import ADMIN, create_token
from _support import ASSETS, TOKEN, register_digits, wait_deployment, wait_devices_known
from fastapi.testclient import TestClient
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from edgefleet.controller import FleetController, RolloutPolicy, Settings, init_keys
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer
from edgefleet.optimizer import OptimizeTarget
from edgefleet.simulations.brokers import MosquittoProcess
from edgefleet.simulations.fleet import Fleet, wait_until

pytestmark = pytest.mark.slow
N = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    trust_root = init_keys(root / "keys")
    broker = MosquittoProcess(workdir=root / "mq")
    broker.start()
    ctl = FleetController(Settings(
        db_url=f"sqlite:///{root / 'ctl.db'}", broker_url=broker.url, keys_dir=root / "keys",
        data_dir=root / "ctl", admin_token=TOKEN, client_id="console-ctl",
        rollout_tick_s=0.2, production_tag="env=production", alert_interval_s=0.5,
        alert_cohort_tags=["site"]))
    ctl.start()
    fleet = Fleet(root / "fleet", broker.url, trust_root, N, with_links=True,
                  tags={"site": "lab", "env": "production"}, summary_window_s=1.0)
    fleet.start()
    fleet.wait_connected(30)
    wait_devices_known(ctl, fleet.ids, 20)
    first = register_digits(ctl)
    dep = ctl.deploy("digits", first["version"], created_by="setup-a")  # production: 4 eyes
    ctl.orchestrator.act(dep["id"], "approve", "setup-b")
    assert wait_deployment(ctl, dep["id"], 90)["state"] == "succeeded"
    x = np.load(ASSETS / "eval.npz")["x"][:64]
    for _ in range(3):  # a few windows of traffic, so the charts have something to draw
        stored = {d: _stored(ctl, d) for d in fleet.ids}
        for device in fleet.ids:
            fleet.agents[device].predict(x)
        wait_until(lambda s=stored: all(_stored(ctl, d) > s[d] for d in fleet.ids), 30)
    optimized = ctl.registry.optimize("digits", first["version"],
                                      OptimizeTarget(method="auto", latency_runs=50))
    server = ApiServer(create_app(ctl))
    server.start()
    with TestClient(create_app(ctl)) as api:
        tokens = {name: create_token(api, name, role)["token"] for name, role in (
            ("viewer-1", "viewer"), ("operator-1", "operator"), ("operator-2", "operator"))}
    yield {"ctl": ctl, "fleet": fleet, "url": server.url, "tokens": tokens,
           "optimized": optimized}
    server.stop()
    fleet.stop()
    ctl.stop()
    broker.stop()


def _stored(ctl, device: str) -> int:
    return sum(int(r["stored"]) for r in ctl.store.telemetry.streams(device))


def sign_in(driver, env, token: str, path: str = "/ui/") -> None:
    driver.get(env["url"] + path)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "sign-out"))


def sign_out(driver) -> None:
    driver.find_element(By.ID, "sign-out").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "sign-in"))


def text(driver, element_id: str) -> str:
    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def test_sign_in_and_see_the_fleet_devices_and_a_model(browser, env):
    browser.get(env["url"] + "/ui/devices")
    assert browser.find_elements(By.ID, "token")  # not signed in: the form
    screenshot(browser, "sign-in")
    sign_in(browser, env, TOKEN, "/ui/devices")
    assert browser.current_url.endswith("/ui/devices")  # back where the operator was going
    wait_for(browser, lambda d: f"{N} matching" in text(d, "device-total"))
    ids = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.devices td a")]
    assert ids == sorted(env["fleet"].ids)
    screenshot(browser, "devices")
    browser.find_element(By.LINK_TEXT, "Overview").click()
    wait_for(browser, lambda d: text(d, "online") == str(N))
    assert text(browser, "offline") == "0"
    screenshot(browser, "overview")
    browser.get(env["url"] + f"/ui/devices/{env['fleet'].ids[0]}")
    wait_for(browser, lambda d: "digits v1" in d.find_element(By.TAG_NAME, "main").text)
    assert browser.find_elements(By.CSS_SELECTOR, "figure svg[role=img]")  # the charts
    screenshot(browser, "device")
    browser.get(env["url"] + "/ui/models")
    assert browser.find_elements(By.LINK_TEXT, "v1")
    screenshot(browser, "models")
    browser.get(env["url"] + "/ui/models/digits/1")
    assert "Model card" in browser.page_source and browser.find_elements(By.ID, "save-card")
    signed = text(browser, "bundle-1")  # deployed, so signed: its files as devices fetch them
    model = env["ctl"].registry.get("digits", 1)
    assert model["sha256"] in signed and "manifest" in signed
    screenshot(browser, "model")


def test_a_models_optimization_report_says_what_shipped_and_why(browser, env):
    child = env["optimized"]
    sign_in(browser, env, env["tokens"]["viewer-1"], "/ui/models")
    browser.find_element(By.LINK_TEXT, f"v{child['version']}").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "optimization-report"))
    report = child["report"]
    verdict = text(browser, "verdict")
    assert f"{report['shipped']} ships" in verdict and report["reason"][:40] in verdict
    gates = text(browser, "gates")
    assert all(g.replace("_", " ") in gates for g in report["gates"])
    compare = text(browser, "compare")
    assert "p50 latency (ms)" in compare and "fp32" in compare
    assert "made from" in browser.find_element(By.TAG_NAME, "main").text
    assert not browser.find_elements(By.ID, "save-card")  # a viewer reads the card only
    assert "Not signed yet" in text(browser, "bundle-1")  # never deployed
    screenshot(browser, "optimization-report")


def test_a_drift_alert_appears_after_shifted_inputs(browser, env):
    fleet = env["fleet"]
    sign_in(browser, env, env["tokens"]["operator-1"], "/ui/alerts")
    assert "drift" not in text(browser, "live-alerts")
    x = np.load(ASSETS / "eval.npz")["x"][:160]
    shifted = np.clip(16.0 - x, 0, 16).astype(x.dtype)  # inverted strokes: a new camera
    lab = fleet.ids[:2]

    def drifted() -> bool:
        for device in lab:  # a few windows' worth, until the alert is raised
            for i in range(0, len(shifted), 16):
                fleet.agents[device].predict(shifted[i:i + 16])
        return any(a["kind"].startswith("drift") for a in env["ctl"].alerts.active())
    wait_until(drifted, 60, interval_s=1.0)
    # the open page picks it up by itself (live region), no reload
    wait_for(browser, lambda d: "drift" in text(d, "live-alerts"), timeout=30)
    screenshot(browser, "alerts")
    browser.get(env["url"] + "/ui/telemetry")
    wait_for(browser, lambda d: d.find_elements(By.ID, "drift-1"))
    assert "alert threshold" in browser.find_element(By.ID, "drift-1").get_attribute(
        "innerHTML")
    screenshot(browser, "telemetry")


def test_a_viewer_finds_no_action_and_a_forged_post_with_its_cookie_is_refused(browser, env):
    ctl = env["ctl"]
    dep = ctl.deploy("digits", 1, selector={"site": "lab"}, created_by="operator-1",
                     policy=RolloutPolicy(strategy="staged", waves=(50.0, 100.0)))
    sign_in(browser, env, env["tokens"]["viewer-1"], f"/ui/deployments/{dep['id']}")
    wait_for(browser, lambda d: "pending approval" in text(d, "dep-state"))
    buttons = [b.get_attribute("id") for b in browser.find_elements(By.TAG_NAME, "button")]
    assert buttons == ["sign-out"], buttons
    browser.get(env["url"] + "/ui/deployments")
    assert not browser.find_elements(By.ID, "new-deployment")
    # the viewer's own browser posts the form a page would have had, CSRF token included
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const csrf = document.querySelector('input[name=csrf]').value;
        fetch(arguments[0], {method: 'POST', credentials: 'same-origin',
              headers: {'Content-Type': 'application/x-www-form-urlencoded'},
              body: 'csrf=' + encodeURIComponent(csrf)}).then(r => done(r.status));
        """, f"/ui/deployments/{dep['id']}/abort")
    assert status == 403
    assert ctl.store.get_deployment(dep["id"])["state"] == "pending_approval"
    ctl.orchestrator.act(dep["id"], "abort", "operator-2")  # (leave the fleet free)


def test_staged_deployment_approved_by_a_second_operator_rolls_back_when_wave_two_breaches(
        browser, env):
    ctl, fleet = env["ctl"], env["fleet"]
    second = register_digits(ctl)  # the same file as a new version: installs quickly
    sign_in(browser, env, env["tokens"]["operator-1"], "/ui/deployments")
    screenshot(browser, "deployments")
    browser.find_element(By.ID, "new-deployment").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "create"))
    browser.find_element(By.ID, "version").send_keys(str(second["version"]))
    browser.find_element(By.ID, "selector").send_keys("site=lab")
    browser.find_element(By.ID, "preview").click()
    wait_for(browser, lambda d: f"{N} devices" in text(d, "reach"))
    for field, value in (("waves", "50 100"), ("wave_timeout_s", "6"),
                         ("max_failure_rate", "0"), ("health_window_s", "0.5")):
        browser.find_element(By.ID, field).send_keys(value)
    Select(browser.find_element(By.ID, "strategy")).select_by_visible_text("staged")
    screenshot(browser, "new-deployment")
    browser.find_element(By.ID, "create").click()
    wait_for(browser, lambda d: "pending approval" in text(d, "dep-state"))
    dep_id = browser.current_url.rsplit("/", 1)[1]
    assert not browser.find_elements(By.ID, "action-approve")  # not for its creator
    plan = ctl.store.get_deployment(dep_id)["plan"]
    assert [len(w) for w in plan["waves"]] == [N // 2, N // 2]
    for device in plan["waves"][1]:  # wave two's devices go silent: its gate will breach
        fleet.stop_agent(device)
    sign_out(browser)

    sign_in(browser, env, env["tokens"]["operator-2"], f"/ui/deployments/{dep_id}")
    browser.find_element(By.ID, "action-approve").click()
    wait_for(browser, lambda d: "Approved by operator-2" in text(d, "approval"))
    # the page follows the rollout live: wave one healthy, wave two silent, rolled back
    wait_for(browser, lambda d: "rolled back" in text(d, "dep-state"), timeout=90)
    assert text(browser, "dep-reason")  # why, on the page
    timeline = text(browser, "timeline")
    assert "wave breached" in timeline and "approved by operator-2" in timeline
    browser.find_element(By.ID, "dep-telemetry").click()
    wait_for(browser, lambda d: dep_id in text(d, "scope"))
    assert f"{N} devices" in text(browser, "scope")
    browser.back()
    wait_for(browser, lambda d: "rolled back" in text(d, "dep-state"))
    gates = text(browser, "live-deployment")
    assert "wave 2 failure rate" in gates and "breached" in gates
    screenshot(browser, "deployment-rolled-back")
    dep = wait_deployment(ctl, dep_id, 30)
    assert dep["state"] == "rolled_back"
    breach = next(e for e in dep["events"] if e["kind"] == "wave_breached")
    assert breach["detail"]["wave"] == 1
    wait_until(lambda: all(fleet.agents[d].active.version == 1 for d in plan["waves"][0]), 30)


def test_the_audit_page_verifies_the_chain(browser, env):
    sign_in(browser, env, env["tokens"]["operator-1"], "/ui/audit")
    assert "Chain verified" in text(browser, "chain")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.audit tbody tr")
    assert len(rows) >= 3  # the tokens made in setup, at least
    screenshot(browser, "audit")
    # a form posted without the session's CSRF token (what another site could make the
    # browser send) is refused, even with the operator's cookie
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/ui/logout', {method: 'POST', credentials: 'same-origin'}).then(
            r => done(r.status));
        """)
    assert status == 403
    browser.refresh()
    assert browser.find_elements(By.ID, "sign-out")  # still signed in
    with TestClient(create_app(env["ctl"])) as api:
        assert api.get("/v1/audit/verify", headers=ADMIN).json()["ok"] is True
