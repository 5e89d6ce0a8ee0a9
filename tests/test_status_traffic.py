"""What a rollout costs per device in messages and writes: step statuses paced on the
device, statuses folded into one transaction per batch on the controller, and a birth
that only announces a change does not send the desired state again."""

from __future__ import annotations

import threading

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


def test_quick_steps_are_folded_into_the_next_status_and_ends_go_at_once():
    sent: list[tuple[str, bytes]] = []
    arrived = threading.Event()

    def publish(job: str, payload: bytes) -> None:
        sent.append((job, payload))
        arrived.set()

    pacer = StatusPacer(publish, interval_s=30.0)
    pacer.send("j1", b"downloading", final=False)  # a job's first status: at once
    pacer.send("j1", b"verifying", final=False)
    pacer.send("j1", b"installing", final=False)
    assert sent == [("j1", b"downloading")]
    pacer.send("j1", b"healthy", final=True)  # an end: at once, and the steps are moot
    assert sent == [("j1", b"downloading"), ("j1", b"healthy")]
    pacer.close()
    assert len(sent) == 2  # nothing was left waiting

    sent.clear()
    arrived.clear()
    pacer = StatusPacer(publish, interval_s=0.2)
    pacer.send("j2", b"downloading", final=False)
    arrived.clear()
    pacer.send("j2", b"installing", final=False)  # a step that lasts: seen when due
    assert arrived.wait(10)
    assert sent == [("j2", b"downloading"), ("j2", b"installing")]
    pacer.close()


def test_a_step_still_waiting_goes_out_when_the_agent_stops():
    sent: list[bytes] = []
    pacer = StatusPacer(lambda job, payload: sent.append(payload), interval_s=60.0)
    pacer.send("j", b"downloading", final=False)
    pacer.send("j", b"activated", final=False)
    pacer.close()
    assert sent == [b"downloading", b"activated"]


def test_every_status_goes_at_once_with_no_interval():
    sent: list[bytes] = []
    pacer = StatusPacer(lambda job, payload: sent.append(payload), interval_s=0.0)
    for step in (b"a", b"b", b"c"):
        pacer.send("j", step, final=False)
    assert sent == [b"a", b"b", b"c"]


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
