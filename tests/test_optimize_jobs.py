"""Optimization runs as a job: queued at once, followed by its progress, ended with the
child version or with where and why it failed; bounded queue, bounded history."""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

import pytest
from _support import ASSETS, TOKEN, register_digits, wait_optimization
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.contract import ManualClock, NotFoundError, OptimizationError, RegistryError
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer
from edgefleet.controller.optimizations import (
    PROGRESS_MAX,
    QUEUE_FULL,
    STOPPED,
    OptimizationJob,
    OptimizationJobs,
    failure,
    next_runnable,
)
from edgefleet.optimizer import OptimizeTarget
from edgefleet.simulations.fleet import wait_until

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(controller):
    with TestClient(create_app(controller), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def cli(controller):
    server = ApiServer(create_app(controller))
    server.start()
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, list(args), env={"EDGEFLEET_URL": server.url,
                                                   "EDGEFLEET_TOKEN": TOKEN, "COLUMNS": "200"})

    yield run
    server.stop()


class Gate:
    """Stands in for ``Registry.optimize``: says one progress message, then waits for the
    test to open it; then runs ``then`` (the real optimize, a raise, or a cheap answer)."""

    def __init__(self, then: Any) -> None:
        self.open = threading.Event()
        self.entered = threading.Semaphore(0)
        self.then = then

    def __call__(self, name: str, version: int, target: OptimizeTarget, progress=None,
                 **kwargs: Any) -> dict[str, Any]:
        progress("held by the test")
        self.entered.release()
        assert self.open.wait(60), "the test never opened the gate"
        return self.then(name, version, target, progress, **kwargs)  # type: ignore[no-any-return]


def _job(client: TestClient, job_id: str) -> dict[str, Any]:
    resp = client.get(f"/v1/optimizations/{job_id}", headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_optimize_answers_202_at_once_and_the_job_ends_with_the_child_version(
        client, controller, monkeypatch):
    register_digits(controller)
    gate = Gate(controller.registry.optimize)  # the real optimizer, once opened
    monkeypatch.setattr(controller.registry, "optimize", gate)
    try:
        resp = client.post("/v1/models/digits/1/optimize", headers=AUTH,
                           json={"method": "auto", "latency_runs": 50})
        # answered while the optimization cannot even have started its work
        assert resp.status_code == 202, resp.text
        queued = resp.json()
        assert resp.headers["location"] == f"/v1/optimizations/{queued['id']}"
        assert queued["state"] in ("queued", "running") and queued["result"] is None
        assert (queued["model"], queued["version"], queued["created_by"]) == ("digits", 1, "admin")
        assert queued["request"] == {"method": "auto", "sparsity": 0.0,
                                     "accuracy_budget_pt": 1.0, "latency_runs": 50,
                                     "hardware_classes": []}

        assert gate.entered.acquire(timeout=30)
        held = _job(client, queued["id"])
        assert held["state"] == "running"
        assert [p["message"] for p in held["progress"]] == ["held by the test"]
    finally:
        gate.open.set()

    wait_optimization(controller, queued["id"])
    done = _job(client, queued["id"])
    assert done["state"] == "succeeded", done["error"]
    messages = [p["message"] for p in done["progress"]]
    # the optimizer's own steps followed the one seen while it was held
    assert messages[0] == "held by the test" and len(messages) > 2 and all(messages)
    stamps = [p["ts"] for p in done["progress"]]
    assert done["created_at"] <= done["started_at"] <= stamps[0]
    assert stamps == sorted(stamps) and stamps[-1] <= done["finished_at"]
    child = done["result"]
    assert (child["name"], child["version"], child["parent"]) == ("digits", 2, 1)
    assert "file" not in child and child["report"]["method"] == "dynamic"
    assert controller.registry.get("digits", 2)["sha256"] == child["sha256"]
    assert done["error"] is None

    listed = client.get("/v1/optimizations", headers=AUTH).json()
    assert [j["id"] for j in listed] == [queued["id"]] and listed[0]["state"] == "succeeded"
    audited = [e for e in controller.store.audit.entries(limit=1000)
               if e["action"] == "POST /v1/models/{name}/{version}/optimize"]
    assert [(e["detail"]["outcome"], e["detail"]["after"]["job"]) for e in audited] == [
        (202, queued["id"])]



def test_a_model_quantized_already_is_refused_at_once_naming_what_it_holds(client, controller,
                                                                          tmp_path):
    # made here rather than taken from an optimization, whose int8 child ships only when
    # it times faster than fp32 (not a given on a loaded machine)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = tmp_path / "digits.int8.onnx"
    quantize_dynamic(str(ASSETS / "digits.onnx"), str(int8), weight_type=QuantType.QInt8)
    row = register_digits(controller, int8)

    again = client.post(f"/v1/models/digits/{row['version']}/optimize", headers=AUTH, json={})
    assert again.status_code == 409 and again.json()["reason"] == "already_quantized"
    assert "DynamicQuantizeLinear" in again.json()["detail"], again.json()
    assert client.get("/v1/optimizations", headers=AUTH).json() == []  # nothing was queued


def test_an_optimization_that_raises_ends_failed_with_where_and_what(
        client, controller, monkeypatch, caplog):
    register_digits(controller)

    def boom(name, version, target, progress=None, **kwargs):
        progress("quantizing (dynamic int8, MatMul/Gemm only)")
        raise ValueError("boom")

    monkeypatch.setattr(controller.registry, "optimize", boom)
    with caplog.at_level(logging.INFO, logger="edgefleet.controller.optimizations"):
        job_id = client.post("/v1/models/digits/1/optimize", headers=AUTH, json={}).json()["id"]
        job = wait_optimization(controller, job_id)
    assert job["state"] == "failed" and job["result"] is None
    assert job["error"] == {"stage": "quantizing (dynamic int8, MatMul/Gemm only)",
                            "type": "ValueError", "message": "boom", "reason": None}
    assert job["finished_at"] >= job["started_at"]
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and job_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the traceback is kept
    assert controller.store.next_version("digits") == 2  # no child version was made


def test_an_optimizer_refusal_keeps_its_reason_and_is_logged_as_a_warning(
        client, controller, monkeypatch, caplog):
    register_digits(controller)

    def refuse(name, version, target, progress=None, **kwargs):
        raise OptimizationError("", reason="nothing_to_quantize")

    monkeypatch.setattr(controller.registry, "optimize", refuse)
    with caplog.at_level(logging.INFO, logger="edgefleet.controller.optimizations"):
        job_id = client.post("/v1/models/digits/1/optimize", headers=AUTH,
                             json={"method": "static"}).json()["id"]
        job = wait_optimization(controller, job_id)
    # it said nothing before failing, and its message was empty: neither is left blank
    assert job["error"] == {"stage": "optimize", "type": "OptimizationError",
                            "message": "OptimizationError", "reason": "nothing_to_quantize"}
    warned = [r for r in caplog.records if job_id in r.getMessage()
              and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "nothing_to_quantize" in warned[0].getMessage()


def test_the_cli_exits_1_saying_where_a_failed_optimization_failed(cli, controller,
                                                                    monkeypatch):
    register_digits(controller)

    def boom(name, version, target, progress=None, **kwargs):
        progress("measuring fp32 and int8 accuracy and latency (interleaved)")
        raise ValueError("boom")

    monkeypatch.setattr(controller.registry, "optimize", boom)
    human = cli("model", "optimize", "digits:1")
    assert human.exit_code == 1
    assert ("error: optimize failed at measuring fp32 and int8 accuracy and latency "
            "(interleaved): ValueError: boom") in human.output
    scripted = cli("model", "optimize", "digits:1", "--json")
    assert scripted.exit_code == 1
    assert json.loads(scripted.stdout) == {
        "error": "optimize failed at measuring fp32 and int8 accuracy and latency "
                 "(interleaved): ValueError: boom", "status": None, "reason": None}


def test_no_wait_returns_the_queued_job_which_can_be_followed_later(cli, controller,
                                                                     monkeypatch):
    register_digits(controller)
    gate = Gate(controller.registry.optimize)
    monkeypatch.setattr(controller.registry, "optimize", gate)
    try:
        out = cli("model", "optimize", "digits:1", "--no-wait", "--json")
        assert out.exit_code == 0, out.output
        job = json.loads(out.stdout)
        assert job["id"].startswith("opt-") and job["state"] in ("queued", "running")
        human = cli("model", "optimize", "digits:1", "--no-wait")  # waits behind the first
        assert human.exit_code == 0, human.output
        second = re.search(r"optimization (opt-\d+-[0-9a-f]+) of digits:1: queued", human.stdout)
        assert second, human.stdout
        assert f"edgefleet model optimization {second[1]} --wait" in human.stdout
    finally:
        gate.open.set()

    followed = cli("model", "optimization", job["id"], "--wait", "--json")
    assert followed.exit_code == 0, followed.output
    done = json.loads(followed.stdout)
    assert done["state"] == "succeeded" and done["result"]["version"] == 2
    shown = cli("model", "optimization", job["id"])
    assert shown.exit_code == 0, shown.output
    assert "succeeded" in shown.stdout and "digits:1 → digits:2" in shown.stdout
    assert "held by the test" in shown.stdout and "shipped" in shown.stdout
    assert wait_optimization(controller, second[1])["result"]["version"] == 3


def test_an_unknown_optimization_job_is_404(client, cli):
    resp = client.get("/v1/optimizations/opt-nope", headers=AUTH)
    assert resp.status_code == 404 and "restarts" in resp.json()["detail"]
    shown = cli("model", "optimization", "opt-nope")
    assert shown.exit_code == 1 and "404" in shown.output


def test_obvious_mistakes_are_refused_before_anything_is_queued(client, controller):
    register_digits(controller)
    controller.registry.register("bare", (ASSETS / "digits.onnx").read_bytes())
    unknown = client.post("/v1/models/digits/9/optimize", headers=AUTH, json={})
    assert unknown.status_code == 404
    no_eval = client.post("/v1/models/bare/1/optimize", headers=AUTH, json={})
    assert (no_eval.status_code, no_eval.json()["reason"]) == (409, "missing_eval_set")
    bad_class = client.post("/v1/models/digits/1/optimize", headers=AUTH,
                            json={"hardware_classes": ["../rpi4"]})
    assert bad_class.status_code == 422
    bad_body = client.post("/v1/models/digits/1/optimize", headers=AUTH,
                           json={"sparsity": 1.5})
    assert bad_body.status_code == 422
    assert client.get("/v1/optimizations", headers=AUTH).json() == []


def test_a_full_queue_answers_429_and_counts_the_refusal(client, controller, monkeypatch):
    register_digits(controller)
    gate = Gate(lambda name, version, *_a, **_k: controller.registry.get(name, version))
    monkeypatch.setattr(controller.registry, "optimize", gate)
    bound = controller.settings.optimize_queue_max
    try:
        first = client.post("/v1/models/digits/1/optimize", headers=AUTH, json={}).json()
        assert gate.entered.acquire(timeout=30)  # the one worker is busy with it
        waiting = [client.post("/v1/models/digits/1/optimize", headers=AUTH, json={})
                   for _ in range(bound)]
        assert [r.status_code for r in waiting] == [202] * bound
        refused = client.post("/v1/models/digits/1/optimize", headers=AUTH, json={})
        assert refused.status_code == 429
        assert refused.json()["reason"] == QUEUE_FULL
        assert f"optimize_queue_max={bound}" in refused.json()["detail"]
        assert controller.counters["optimizations_refused"] == 1
        assert client.get("/v1/stats", headers=AUTH).json()["optimizations_refused"] == 1
        states = [j["state"] for j in client.get("/v1/optimizations", headers=AUTH).json()]
        assert states == ["queued"] * bound + ["running"]  # newest first
    finally:
        gate.open.set()
    ids = [first["id"], *(r.json()["id"] for r in waiting)]
    assert [wait_optimization(controller, i)["state"] for i in ids] == ["succeeded"] * len(ids)


def test_stopping_fails_the_jobs_still_waiting_and_lets_the_running_one_finish(
        controller, monkeypatch):
    register_digits(controller)
    gate = Gate(lambda name, version, *_a, **_k: controller.registry.get(name, version))
    monkeypatch.setattr(controller.registry, "optimize", gate)
    jobs = controller.optimizations
    running = jobs.submit("digits", 1, OptimizeTarget())["id"]
    assert gate.entered.acquire(timeout=30)
    waiting = jobs.submit("digits", 1, OptimizeTarget())["id"]
    stopper = threading.Thread(target=jobs.stop, kwargs={"timeout_s": 30})
    stopper.start()
    try:
        wait_until(lambda: jobs.get(waiting)["state"] == "failed", 10)
        assert jobs.get(running)["state"] == "running"
    finally:
        gate.open.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert jobs.get(running)["state"] == "succeeded"
    assert jobs.get(waiting)["error"]["reason"] == STOPPED
    assert jobs.get(waiting)["started_at"] is None
    with pytest.raises(RegistryError, match="stopping") as refused:
        jobs.submit("digits", 1, OptimizeTarget())
    assert refused.value.reason == STOPPED


def test_jobs_of_one_model_run_one_at_a_time_and_the_history_is_bounded(controller,
                                                                        monkeypatch):
    register_digits(controller)
    controller.registry.register("other", (ASSETS / "digits.onnx").read_bytes(),
                                 eval_npz=(ASSETS / "eval.npz").read_bytes())
    clock = ManualClock(1_800_000_000.0)
    gates = {"digits": Gate(lambda n, v, *_a, **_k: controller.registry.get(n, v)),
             "other": Gate(lambda n, v, *_a, **_k: controller.registry.get(n, v))}

    def chatty(name, version, target, progress=None, **kwargs):
        for i in range(PROGRESS_MAX + 50):
            progress(f"step {i}")
        return gates[name](name, version, target, progress, **kwargs)

    monkeypatch.setattr(controller.registry, "optimize", chatty)
    jobs = OptimizationJobs(controller.registry, clock=clock.time, workers=2, queue_max=4,
                            history_max=2, counters={})
    jobs.start()
    try:
        a = jobs.submit("digits", 1, OptimizeTarget())["id"]
        b = jobs.submit("digits", 1, OptimizeTarget())["id"]
        c = jobs.submit("other", 1, OptimizeTarget())["id"]
        assert gates["digits"].entered.acquire(timeout=30)
        assert gates["other"].entered.acquire(timeout=30)  # the second worker took "other"
        assert [jobs.get(i)["state"] for i in (a, b, c)] == ["running", "queued", "running"]
        clock.advance(5)
        gates["other"].open.set()
        job_c = wait_until(lambda: (j := jobs.get(c))["state"] == "succeeded" and j, 10)
        assert jobs.get(b)["state"] == "queued"  # a free worker, but digits is busy
        gates["digits"].open.set()
        wait_until(lambda: jobs.get(b)["state"] == "succeeded", 10)
    finally:
        for gate in gates.values():
            gate.open.set()
        jobs.stop()
    # kept: the newest PROGRESS_MAX messages, the older ones counted
    assert len(job_c["progress"]) == PROGRESS_MAX and job_c["progress_dropped"] == 51
    assert job_c["progress"][0]["message"] == "step 51"
    assert job_c["progress"][-1]["message"] == "held by the test"
    # every timestamp comes from the injected clock
    assert (job_c["created_at"], job_c["started_at"], job_c["finished_at"]) == (
        1_800_000_000.0, 1_800_000_000.0, 1_800_000_005.0)
    # three finished (c, a, b), two kept: the first to finish is forgotten, and counted
    with pytest.raises(NotFoundError):
        jobs.get(c)
    assert jobs.counters["optimizations_forgotten"] == 1
    assert [j["id"] for j in jobs.recent()] == [b, a]


def test_the_next_job_is_the_oldest_whose_model_is_not_being_optimized():
    def job(i: str, model: str) -> OptimizationJob:
        return OptimizationJob(id=i, model=model, version=1, target=OptimizeTarget(),
                               hardware_classes=[], created_by="admin", created_at=0.0)

    queued = [job("1", "digits"), job("2", "digits"), job("3", "other")]
    assert next_runnable(queued, set()).id == "1"  # type: ignore[union-attr]
    assert next_runnable(queued, {"digits"}).id == "3"  # type: ignore[union-attr]
    assert next_runnable(queued, {"digits", "other"}) is None


def test_a_failure_report_always_says_where_what_and_why():
    assert failure(RuntimeError(), None) == {"stage": "optimize", "type": "RuntimeError",
                                             "message": "RuntimeError", "reason": None}
    assert failure(OptimizationError("no Conv op", reason="unsupported"), "quantizing") == {
        "stage": "quantizing", "type": "OptimizationError", "message": "no Conv op",
        "reason": "unsupported"}
    assert len(failure(ValueError("x" * 10_000), "s")["message"]) == 500
