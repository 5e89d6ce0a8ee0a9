"""What a job does with a desired state (``_job_choices.choose``), over the whole choice
table, and which broadcast files its download takes (``blobs_to_take``)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.agent._job_choices import BlobPlan, Choice, Holdings, blobs_to_take, choose
from edgefleet.contract import DesiredState, ModelRef

NAMES = ["digits", "kws"]
SHAS = ["a" * 64, "b" * 64]


def _desired(model: str = "digits", version: int = 2, *, mode: str = "active",
             allow_downgrade: bool = False, broadcast: list[str] | None = None,
             metadata: dict[str, str] | None = None) -> DesiredState:
    return DesiredState(deployment="dep", job="job-1", model=model, version=version,
                        manifest="m", issued_at=1.0, mode=mode, allow_downgrade=allow_downgrade,
                        broadcast=broadcast or [], metadata=metadata or {})


# models from a small pool, so that the one asked for is often active or shadowed; a
# ref of the model and version asked for may carry another sha256
refs = st.builds(ModelRef, name=st.sampled_from(NAMES), version=st.integers(1, 3),
                 sha256=st.sampled_from(SHAS))
desired_states = st.builds(_desired, model=st.sampled_from(NAMES), version=st.integers(1, 3),
                           mode=st.sampled_from(["active", "shadow"]),
                           allow_downgrade=st.booleans())
holdings = st.builds(Holdings, active=st.none() | refs, shadow=st.none() | refs,
                     on_trial=st.booleans(), installed=st.booleans())


def _is(ref: ModelRef | None, d: DesiredState) -> bool:
    return ref is not None and ref.name == d.model and ref.version == d.version


def _expected(d: DesiredState, held: Holdings) -> Choice:
    """The choice table, row by row: each choice and exactly when it is made."""
    active, shadow = d.mode == "active", d.mode == "shadow"
    is_active, is_shadowed = _is(held.active, d), _is(held.shadow, d)
    rows = {
        Choice.HEALTH_WINDOW_RUNNING: active and is_active and held.on_trial,
        Choice.ALREADY_ACTIVE: active and is_active and not held.on_trial,
        Choice.ALREADY_SHADOWING: shadow and is_shadowed,
        Choice.PROMOTE_SHADOW: active and is_shadowed and not is_active,
        Choice.SWITCH_TO_LOCAL: d.allow_downgrade and held.installed
        and not (active and (is_active or is_shadowed)) and not (shadow and is_shadowed),
    }
    rows[Choice.INSTALL] = not any(rows.values())
    (choice,) = [c for c, applies in rows.items() if applies]  # the rows do not overlap
    return choice


@given(d=desired_states, held=holdings)
def test_every_desired_state_gets_the_choice_its_row_of_the_table_names(d, held):
    assert choose(d, held) is _expected(d, held)


@pytest.mark.parametrize(("mode", "is_active", "is_shadowed", "on_trial", "downgrade", "installed"),
                         list(itertools.product(["active", "shadow"], *[[False, True]] * 5)))
def test_each_combination_of_facts_has_one_choice(mode, is_active, is_shadowed, on_trial,
                                                  downgrade, installed):
    d = _desired(mode=mode, allow_downgrade=downgrade)
    other = ModelRef("digits", 1, SHAS[0])
    held = Holdings(active=ModelRef("digits", 2, SHAS[0]) if is_active else other,
                    shadow=ModelRef("digits", 2, SHAS[1]) if is_shadowed else None,
                    on_trial=on_trial, installed=installed)
    assert choose(d, held) is _expected(d, held)


def test_every_choice_is_made_for_some_desired_state():
    made = {choose(_desired(mode=mode, allow_downgrade=downgrade),
                   Holdings(active=active, shadow=shadow, on_trial=on_trial, installed=installed))
            for mode in ("active", "shadow") for downgrade in (False, True)
            for active in (None, ModelRef("digits", 2)) for shadow in (None, ModelRef("digits", 2))
            for on_trial in (False, True) for installed in (False, True)}
    assert made == set(Choice)


def test_a_model_already_active_is_not_downloaded_again():
    held = Holdings(active=ModelRef("digits", 2, SHAS[0]))
    assert choose(_desired(), held) is Choice.ALREADY_ACTIVE
    assert choose(_desired(), Holdings(active=held.active, on_trial=True)) \
        is Choice.HEALTH_WINDOW_RUNNING


def test_a_shadowed_candidate_asked_for_as_active_is_promoted_not_reinstalled():
    held = Holdings(active=ModelRef("digits", 1), shadow=ModelRef("digits", 2))
    assert choose(_desired(), held) is Choice.PROMOTE_SHADOW
    assert choose(_desired(mode="shadow"), held) is Choice.ALREADY_SHADOWING


def test_a_rollback_to_a_model_still_on_disk_switches_without_downloading():
    held = Holdings(active=ModelRef("digits", 3), installed=True)
    assert choose(_desired(allow_downgrade=True), held) is Choice.SWITCH_TO_LOCAL
    # without the controller's allowance an install is a normal one (and refused if older)
    assert choose(_desired(), held) is Choice.INSTALL
    assert choose(_desired(allow_downgrade=True), Holdings(active=held.active)) is Choice.INSTALL


def test_the_same_version_with_another_sha256_counts_as_the_model_asked_for():
    held = Holdings(active=ModelRef("digits", 2, SHAS[1]))
    assert choose(_desired(), held) is Choice.ALREADY_ACTIVE
    assert choose(_desired(version=3), held) is Choice.INSTALL
    assert choose(_desired(model="kws"), held) is Choice.INSTALL


# -- which broadcast files a download takes ----------------------------------------------
hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
metadata_names = st.sampled_from(["metadata/timestamp.json", "metadata/3.snapshot.json",
                                  "metadata/2.targets.json", "metadata/2.root.json"])


@given(files=st.lists(hexes, max_size=6), metadata=st.dictionaries(metadata_names, hexes),
       pulls_only=st.booleans(), data=st.data())
def test_a_download_takes_the_broadcast_files_it_does_not_hold_metadata_first(
        files, metadata, pulls_only, data):
    held = data.draw(st.sets(st.sampled_from(files + list(metadata.values())))
                     if files or metadata else st.just(set()))
    d = _desired(broadcast=files, metadata=metadata)
    plan = blobs_to_take(d, pulls_only=pulls_only, held=held)
    if pulls_only:  # over HTTP(S) or paced: nothing from the broadcast
        assert plan == BlobPlan([], {})
        return
    wanted = [sha for sha in files if sha not in held]
    assert plan.named == (metadata if files else {})
    assert plan.take[len(plan.take) - len(wanted):] == wanted  # the bundle's files, in order
    first = plan.take[:len(plan.take) - len(wanted)]
    assert first == [sha for sha in plan.named.values() if sha not in wanted]
    assert not set(plan.take) & held - set(plan.named.values())  # held files are copied


def test_metadata_is_taken_from_the_broadcast_only_along_with_bundle_files():
    meta = {"metadata/timestamp.json": "c" * 64}
    assert blobs_to_take(_desired(metadata=meta), pulls_only=False) == BlobPlan([], {})
    plan = blobs_to_take(_desired(broadcast=["d" * 64], metadata=meta), pulls_only=False)
    assert plan == BlobPlan(["c" * 64, "d" * 64], meta)
