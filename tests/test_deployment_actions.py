"""Which operator action applies in which deployment state is one pure rule
(``rollout.action_applies``): the orchestrator refuses exactly what it says does not
apply, for every action, strategy and state, and the console offers only what applies."""

from __future__ import annotations

import itertools

import pytest

from edgefleet.contract import DesiredState, ManualClock, RegistryError
from edgefleet.controller import RolloutPolicy, Store
from edgefleet.controller.orchestrator import Orchestrator
from edgefleet.controller.rollout import ACTIONS, ACTIVE, STRATEGIES, action_applies

STATES = (*ACTIVE, "succeeded", "failed", "aborted", "rolled_back", "dropped")


def test_the_rule_keeps_the_operator_policy():
    for strategy in STRATEGIES:
        assert not any(action_applies(a, strategy, s) for a in ("pause", "resume", "abort",
                                                                 "approve", "promote", "drop")
                       for s in ("succeeded", "failed", "aborted", "rolled_back", "dropped"))
        assert action_applies("abort", strategy, "pending_approval")
        assert not action_applies("rollback", strategy, "pending_approval")  # nothing sent
    assert not action_applies("promote", "staged", "running")  # only shadow and A/B
    assert not action_applies("unknown", "staged", "running")


@pytest.fixture
def orchestrator(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'o.db'}")
    store.upsert_device("d1", online=True, active={"name": "m", "version": 1})
    sent: list[tuple[str, DesiredState]] = []
    orch = Orchestrator(store, sent.extend, lambda m, v, ds: {d: f"{m}/{v}.json" for d in ds},
                        clock=ManualClock(1_700_000_000.0))
    return orch, store


def test_the_orchestrator_refuses_exactly_what_the_rule_says_does_not_apply(orchestrator):
    orch, store = orchestrator
    plan = {"targets": ["d1"], "waves": [["d1"]], "arms": {"new": ["d1"], "control": []},
            "approval": {"devices": ["d1"]}}
    for n, (strategy, state, action) in enumerate(itertools.product(STRATEGIES, STATES,
                                                                    ACTIONS)):
        dep_id = f"dep-{n}"
        policy = RolloutPolicy(strategy=strategy).to_dict()
        store.add_deployment(dep_id, "m", 2, strategy=strategy, policy=policy, plan=plan,
                             targets=[{"device": "d1", "wave": 0}], created_by="alice",
                             state=state)
        try:
            orch.act(dep_id, action, "bob")
            refused = None
        except RegistryError as exc:
            refused = exc.reason
        applies = action_applies(action, strategy, state)
        assert (refused == "invalid_transition") == (not applies), (strategy, state, action)
        if not applies:
            assert store.get_deployment(dep_id)["state"] == state  # nothing changed
