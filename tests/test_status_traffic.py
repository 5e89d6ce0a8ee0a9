"""What a rollout costs per device in messages and writes: step statuses paced on the
device, statuses folded into one transaction per batch on the controller, and a birth
that only announces a change does not send the desired state again."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent._pacing import StatusPacer
from edgefleet.contract import JobState, JobStatus
from edgefleet.controller._statuses import fold, status_fields
from edgefleet.controller.rollout import JOB_SETTLED

STEPS = [JobState.DOWNLOADING, JobState.VERIFYING, JobState.INSTALLING, JobState.ACTIVATED]
ENDS = [JobState.HEALTHY, JobState.FAILED, JobState.ROLLED_BACK]


def _status(job: str, state: str, n: int) -> JobStatus:
    return JobStatus(job=job, deployment="dep", state=state, ts=float(n), model="m",
                     version=2, reason="boom" if state == JobState.FAILED else "",
                     detail=f"#{n}", progress={"bytes": n} if n % 2 else {})


def _one_by_one(rows: dict[tuple[str, str], dict], statuses: list[JobStatus]) -> None:
    """What storing each status on its own does (the rule the batch must equal)."""
    for s in statuses:
        row = rows.setdefault(("dev", s.job), {"state": "pending"})
        if row["state"] not in JOB_SETTLED:
            row.update(status_fields(s))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["dep", "dep.rb", "dep.a"]),
                          st.sampled_from(STEPS + ENDS)), max_size=12))
def test_a_folded_batch_stores_what_its_statuses_one_by_one_would(seq):
    statuses = [_status(job, state, n) for n, (job, state) in enumerate(seq)]
    expected: dict[tuple[str, str], dict] = {}
    _one_by_one(expected, statuses)
    folded: dict[tuple[str, str], dict] = {}
    updates = fold([("dev", s) for s in statuses], JOB_SETTLED)
    for u in updates:
        folded[(u.device, u.job)] = {"state": "pending", **u.fields}
    assert folded == expected
    assert len(updates) == len({s.job for s in statuses})
    assert sum(u.count for u in updates) == len(statuses)


def test_a_failure_after_the_end_is_kept_only_as_the_reason():
    statuses = [_status("dep", JobState.HEALTHY, 0), _status("dep", JobState.FAILED, 1)]
    (u,) = fold([("dev", s) for s in statuses], JOB_SETTLED)
    assert u.fields["state"] == "healthy" and u.settles
    assert u.failure == ("boom", "#1")


def test_a_quick_job_sends_only_its_end_and_a_step_that_lasts_is_seen_when_due():
    sent: list[tuple[str, bytes]] = []
    arrived = threading.Event()

    def publish(job: str, payload: bytes) -> None:
        sent.append((job, payload))
        arrived.set()

    pacer = StatusPacer(publish, interval_s=30.0)
    pacer.send("j1", b"downloading", final=False)  # steps wait, counting from the start
    pacer.send("j1", b"verifying", final=False)
    pacer.send("j1", b"installing", final=False)
    assert sent == []
    pacer.send("j1", b"healthy", final=True)  # an end: at once, and the steps are moot
    assert sent == [("j1", b"healthy")]
    pacer.close()
    assert len(sent) == 1  # nothing was left waiting

    sent.clear()
    arrived.clear()
    pacer = StatusPacer(publish, interval_s=0.2)
    pacer.send("j2", b"downloading", final=False)
    pacer.send("j2", b"installing", final=False)  # a job that lasts: its latest step
    assert arrived.wait(10)
    assert sent == [("j2", b"installing")]
    arrived.clear()
    pacer.send("j2", b"activated", final=False)  # the next one no sooner than interval_s
    assert arrived.wait(10)
    assert sent == [("j2", b"installing"), ("j2", b"activated")]
    pacer.close()


def test_a_step_still_waiting_goes_out_when_the_agent_stops():
    sent: list[bytes] = []
    pacer = StatusPacer(lambda job, payload: sent.append(payload), interval_s=60.0)
    pacer.send("j", b"downloading", final=False)
    pacer.send("j", b"activated", final=False)
    pacer.close()
    assert sent == [b"activated"]  # the latest step


def test_a_step_replaced_before_its_time_is_never_made():
    """A status is made (encoded, the birth it carries read) only when it is sent: the
    steps a job's end replaces cost nothing."""
    from edgefleet.agent._pacing import Lazy

    made: list[str] = []

    def status(state: str) -> Lazy:
        return Lazy(lambda: made.append(state) or state.encode())

    sent: list[bytes] = []
    pacer = StatusPacer(lambda job, payload: sent.append(payload()), interval_s=60.0)
    end = status("healthy")
    for step in ("downloading", "verifying", "activated"):
        pacer.send("j", status(step), final=False)
    pacer.send("j", end, final=True)
    pacer.close()
    assert sent == [b"healthy"] and made == ["healthy"]
    assert end() == b"healthy" and made == ["healthy"]  # made once, then kept


def test_every_status_goes_at_once_with_no_interval():
    sent: list[bytes] = []
    pacer = StatusPacer(lambda job, payload: sent.append(payload), interval_s=0.0)
    for step in (b"a", b"b", b"c"):
        pacer.send("j", step, final=False)
    assert sent == [b"a", b"b", b"c"]


def test_a_job_is_paced_as_the_controller_asks_when_that_is_slower_than_the_device():
    sent: list[bytes] = []
    pacer = StatusPacer(lambda job, payload: sent.append(payload), interval_s=0.0)
    pacer.send("j", b"downloading", final=False, at_least_s=30.0)  # a big wave's pace
    pacer.send("j", b"verifying", final=False, at_least_s=30.0)
    assert sent == []
    pacer.send("j", b"healthy", final=True, at_least_s=30.0)  # an end is never held
    assert sent == [b"healthy"]
    pacer.send("k", b"downloading", final=False)  # another job, no pace asked: at once
    assert sent == [b"healthy", b"downloading"]

    sent.clear()
    pacer = StatusPacer(lambda job, payload: sent.append(payload), interval_s=60.0)
    pacer.send("j", b"downloading", final=False, at_least_s=0.01)  # the device's is longer
    pacer.send("j", b"verifying", final=False, at_least_s=0.01)
    assert sent == []
    pacer.close()
    assert sent == [b"verifying"]


def test_the_pace_a_controller_asks_grows_with_the_wave_and_has_a_ceiling():
    from edgefleet.controller._statuses import STEP_INTERVAL_MAX_S, step_status_interval

    assert step_status_interval(1, 100.0) == 0.0  # a lone device keeps its own pace
    assert step_status_interval(99, 100.0) == 0.0
    assert step_status_interval(1000, 100.0) == 10.0  # 1,000 devices: 100 steps a second
    assert step_status_interval(5000, 100.0) == 50.0
    assert step_status_interval(10**7, 100.0) == STEP_INTERVAL_MAX_S  # still seen


@pytest.mark.parametrize("rate", [100.0, 0.01])
def test_a_wave_the_controller_paces_sends_its_ends_and_no_steps(controller, make_fleet,
                                                                 monkeypatch, rate):
    """Devices set to send every step at once (``status_interval_s=0``) send only their
    end when the controller asks a slow pace for the wave (two devices at 0.01 steps a
    second: 200 s), and every step when it asks none (two devices at 100 a second)."""
    from _support import register_digits, wait_deployment, wait_devices_known

    from edgefleet.contract import DesiredState, DeviceTopic

    monkeypatch.setattr(controller, "settings",
                        controller.settings.model_copy(update={"step_status_rate": rate}))
    fleet = make_fleet(2, status_interval_s=0.0)
    wait_devices_known(controller, fleet.ids)
    sent: list[tuple[str, bytes]] = []
    for agent in fleet.agents.values():
        publish = agent.link.publish

        def noting(suffix, payload, _publish=publish, **fields):
            sent.append((suffix, payload))
            return _publish(suffix, payload, **fields)

        monkeypatch.setattr(agent.link, "publish", noting)
    dep = wait_deployment(controller, controller.deploy(
        "digits", register_digits(controller)["version"])["id"])
    assert dep["state"] == "succeeded"
    paced = 200.0 if rate < 1 else 0.0
    for device in fleet.ids:
        stored = DesiredState.from_dict(controller.store.get_desired(device)["payload"])
        assert stored.status_interval_s == paced
    states = [JobStatus.decode(p).state for s, p in sent if s == DeviceTopic.JOB_STATUS]
    assert states.count("healthy") == 2
    if paced:
        assert states == ["healthy", "healthy"]
    else:
        assert {"downloading", "activated"} <= set(states)


def test_a_birth_of_the_same_session_updates_the_device_without_sending_again(
        controller, make_fleet):
    from _support import register_digits, wait_deployment, wait_devices_known

    from edgefleet.contract import DeviceTopic

    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    (agent,) = fleet.agents.values()
    dep = wait_deployment(controller, controller.deploy(
        "digits", register_digits(controller)["version"])["id"])
    assert dep["state"] == "succeeded"
    redriven = controller.counters["desired_redriven"]
    announced = controller.counters["births_announced"]
    # the rollout as if the device's end were lost: a new session's birth re-drives,
    # an announcement of the same session does not
    controller.store.update_deployment(dep["id"], state="running")
    controller.store.update_job(dep["id"], agent.config.device_id, state="activated")
    controller.handle(agent.config.device_id, DeviceTopic.BIRTH,
                      agent._birth(agent.link.bd_seq))
    assert controller.records.flush()
    assert controller.counters["births_announced"] == announced + 1
    assert controller.counters["desired_redriven"] == redriven
    controller.handle(agent.config.device_id, DeviceTopic.BIRTH,
                      agent._birth(agent.link.bd_seq + 1))
    assert controller.records.flush()
    assert controller.counters["desired_redriven"] == redriven + 1


@pytest.mark.parametrize("controller_reads_births_in_status", [True, False])
def test_an_update_says_what_the_device_runs_in_its_statuses_when_the_controller_reads_it(
        controller, make_fleet, monkeypatch, controller_reads_births_in_status):
    """A controller that sets ``births_in_status`` learns the device's new models from the
    job's statuses and gets no birth of its own; one that does not (an older controller,
    played here by clearing the flag as the device receives it) gets the birth as before."""
    import dataclasses

    from _support import register_digits, wait_deployment, wait_devices_known

    from edgefleet.contract import DeviceTopic, JobStatus

    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    (agent,) = fleet.agents.values()
    device = agent.config.device_id
    sent: list[tuple[str, bytes]] = []
    publish, want = agent.link.publish, agent.inbox._want

    def noting(suffix, payload, **fields):
        sent.append((suffix, payload))
        return publish(suffix, payload, **fields)

    def as_received(desired):
        assert desired.births_in_status  # what this controller sends
        want(dataclasses.replace(desired, births_in_status=controller_reads_births_in_status))

    monkeypatch.setattr(agent.link, "publish", noting)
    monkeypatch.setattr(agent.inbox, "_want", as_received)
    v = register_digits(controller)["version"]
    dep = wait_deployment(controller, controller.deploy("digits", v)["id"])
    assert dep["state"] == "succeeded"
    assert controller.records.flush()
    births = [p for s, p in sent if s == DeviceTopic.BIRTH]
    statuses = [JobStatus.decode(p) for s, p in sent if s == DeviceTopic.JOB_STATUS]
    assert statuses[-1].state == "healthy"
    if controller_reads_births_in_status:
        assert births == []
        carried = statuses[-1].birth
        assert carried is not None and carried.bd_seq == agent.link.bd_seq
        assert carried.active is not None and carried.active.version == v
    else:
        assert len(births) == 1 and all(s.birth is None for s in statuses)
    assert controller.store.get_device(device)["active"]["version"] == v


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_batch_of_statuses_is_stored_at_once_and_the_stale_ones_named(backend, tmp_path,
                                                                        request):
    """Statuses with the same fields run as one statement for all their rows; those whose
    row moved on to another job, or had already ended, come back as not current and
    change nothing."""
    from edgefleet.controller import Store
    from edgefleet.controller._statuses import StatusUpdate

    url = f"sqlite:///{tmp_path / 'ctl.db'}" if backend == "sqlite" \
        else request.getfixturevalue("pg_url")
    store = Store(url)
    devices = [f"dev-{i}" for i in range(6)]
    store.add_deployment("dep-1", "digits", 2, strategy="all-at-once", policy={},
                         plan={"targets": devices}, created_by="admin",
                         targets=[{"device": d, "wave": 0} for d in devices])
    store.update_jobs("dep-1", devices, job="dep-1", state="downloading")
    store.update_jobs("dep-1", ["dev-4"], job="dep-1-rollback")  # moved on to another job
    store.update_jobs("dep-1", ["dev-5"], state="healthy")  # ended already
    healthy = [StatusUpdate("dep-1", d, "dep-1", {"state": "healthy", "reason": "",
                                                  "detail": ""}) for d in devices]
    failed = StatusUpdate("dep-1", "dev-4", "dep-1", {"state": "failed", "reason": "smoke",
                                                      "detail": "bad"},
                          failure=("smoke", "bad"))
    stale = store.apply_statuses([*healthy[:4], failed, healthy[5]], JOB_SETTLED)
    assert sorted(u.device for u in stale) == ["dev-4", "dev-5"]
    rows = {j["device"]: j for j in store.get_deployment("dep-1")["jobs"]}
    assert {d: rows[d]["state"] for d in devices} == {
        "dev-0": "healthy", "dev-1": "healthy", "dev-2": "healthy", "dev-3": "healthy",
        "dev-4": "downloading", "dev-5": "healthy"}
    assert rows["dev-4"]["reason"] == "smoke"  # why it failed, kept on the row it left
    assert store.apply_statuses(healthy[:4], JOB_SETTLED) == healthy[:4]  # ended: no change
    store.engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_births_carried_by_a_batch_of_statuses_are_stored_in_order_for_their_session(
        backend, tmp_path, request):
    """Births that statuses carry are stored in one statement: in the order they came (a
    device's later birth wins), and only for the device's current session."""
    from edgefleet.controller import Store

    url = f"sqlite:///{tmp_path / 'ctl.db'}" if backend == "sqlite" \
        else request.getfixturevalue("pg_url")
    store = Store(url)
    for d in ("dev-0", "dev-1", "dev-2"):
        store.upsert_device(d, bd_seq=7, online=True, agent_version="1", hw={}, tags={})

    def values(version: int) -> dict:
        return {"agent_version": "2", "active": {"name": "m", "version": version,
                                                 "sha256": "0" * 64}}

    done = store.update_sessions([("dev-0", 7, values(2)), ("dev-1", 7, values(2)),
                                  ("dev-0", 7, values(3)),  # later: it wins
                                  ("dev-2", 8, values(2))])  # another session: not taken
    assert done in (3, None)  # None where the driver cannot count an executemany
    got = {d: store.get_device(d) for d in ("dev-0", "dev-1", "dev-2")}
    assert got["dev-0"]["active"]["version"] == 3
    assert got["dev-1"]["active"]["version"] == 2 and got["dev-1"]["agent_version"] == "2"
    assert got["dev-2"]["active"] is None and got["dev-2"]["agent_version"] == "1"
    store.engine.dispose()
