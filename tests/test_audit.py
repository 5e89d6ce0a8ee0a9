"""The audit log: a hash chain that reports any edit, deletion or reordering of its entries.

First the pure chain rules (Hypothesis: random chains, random tampering), then the real
store (concurrent appends, anchors), then someone editing the SQLite file behind the
controller's back, seen through the API and the CLI.
"""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from _operators import ADMIN, create_token, offline_controller
from _support import TOKEN
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgefleet.cli import app as cli_app
from edgefleet.controller.api import create_app
from edgefleet.controller.audit import GENESIS, Anchor, chain_entry, verify_chain
from edgefleet.controller.http import ApiServer
from edgefleet.controller.store import Store

# -- the chain, pure -------------------------------------------------------------------------
texts = st.text(min_size=1, max_size=12)
details = st.dictionaries(st.text(max_size=8), st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.none(), st.lists(st.integers(), max_size=3)), max_size=4)
records = st.tuples(texts, texts, texts, details,
                    st.floats(min_value=1e9, max_value=2e9, allow_nan=False))


def build(items) -> list[dict]:
    chain, head = [], (0, GENESIS)
    for actor, action, target, detail, ts in items:
        entry = chain_entry(*head, ts=ts, actor=actor, action=action, target=target,
                            detail=detail)
        chain.append(entry)
        head = (entry["seq"], entry["hash"])
    return chain


def head_anchor(chain, exact=True) -> Anchor:
    return Anchor("head", chain[-1]["seq"], chain[-1]["hash"], exact=exact)


@given(st.lists(records, min_size=1, max_size=25))
def test_an_untouched_chain_verifies(items):
    chain = build(items)
    result = verify_chain(chain, [head_anchor(chain), head_anchor(chain, exact=False)])
    assert (result.ok, result.entries, result.head_seq, result.first_bad_seq) == \
        (True, len(chain), len(chain), None)


@given(st.lists(records, min_size=1, max_size=25), st.data())
def test_changing_any_field_of_any_entry_is_found_at_that_entry(items, data):
    chain = build(items)
    i = data.draw(st.integers(0, len(chain) - 1))
    field = data.draw(st.sampled_from(["ts", "actor", "action", "target", "detail",
                                       "prev_hash", "hash"]))
    entry = chain[i]
    entry[field] = {"ts": entry["ts"] + 1.0, "detail": {**entry["detail"], "forged": True},
                    "prev_hash": "f" * 64 if entry["prev_hash"] != "f" * 64 else "e" * 64,
                    "hash": "f" * 64 if entry["hash"] != "f" * 64 else "e" * 64,
                    }.get(field, str(entry[field]) + "x")
    result = verify_chain(chain)
    assert not result.ok and result.first_bad_seq == i + 1, result


@given(st.lists(records, min_size=2, max_size=25), st.data())
def test_deleting_any_entry_is_found_and_the_last_one_through_the_anchor(items, data):
    chain = build(items)
    anchor = head_anchor(chain)
    i = data.draw(st.integers(0, len(chain) - 1))
    del chain[i]
    result = verify_chain(chain, [anchor])
    assert not result.ok and result.first_bad_seq == i + 1, result
    if i == len(chain):  # the last one: without an anchor, a shorter chain looks fine
        assert verify_chain(chain).ok
        assert "deleted" in result.reason


@given(st.lists(records, min_size=2, max_size=25), st.data())
def test_swapping_two_entries_is_found_at_the_first(items, data):
    chain = build(items)
    i, j = sorted(data.draw(st.lists(st.integers(0, len(chain) - 1), min_size=2, max_size=2,
                                     unique=True)))
    chain[i], chain[j] = chain[j], chain[i]
    result = verify_chain(chain, [head_anchor(chain)])
    assert not result.ok and result.first_bad_seq == i + 1, result


@given(st.lists(records, min_size=2, max_size=25), st.data())
def test_a_rewritten_history_is_caught_by_an_anchor_kept_elsewhere(items, data):
    chain = build(items)
    anchor = head_anchor(chain, exact=False)
    i = data.draw(st.integers(0, len(chain) - 1))
    forged = [dict(e) for e in chain]
    forged[i]["actor"] += "-framed"  # then every later hash recomputed by the forger
    forged = build([(e["actor"], e["action"], e["target"], e["detail"], e["ts"])
                    for e in forged])
    assert verify_chain(forged).ok  # a consistent forgery, as far as the chain goes
    result = verify_chain(forged, [anchor])
    assert not result.ok and "rewritten" in result.reason


@settings(max_examples=30)
@given(st.lists(records, min_size=2, max_size=10), st.data())
def test_entries_added_past_an_exact_head_are_reported(items, data):
    chain = build(items)
    k = data.draw(st.integers(1, len(chain) - 1))
    result = verify_chain(chain, [Anchor("head record", k, chain[k - 1]["hash"], exact=True)])
    assert not result.ok and result.first_bad_seq == k + 1


# -- the store -------------------------------------------------------------------------------
def test_concurrent_appends_form_one_chain(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}", audit_anchor=tmp_path / "head.json")
    errors = []

    def writer(n: int) -> None:
        try:
            for i in range(20):
                if i % 2:
                    store.add_event(f"dep-{n}", "wave_started", "orchestrator", wave=i)
                else:
                    store.audit.append(f"user-{n}", "POST /v1/x", f"/v1/x/{i}", {"i": i})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    entries = store.audit.entries(limit=1000)
    assert [e["seq"] for e in entries] == list(range(1, 121))
    assert store.audit.verify().ok
    assert json.loads((tmp_path / "head.json").read_text()) == \
        {"seq": 120, "hash": entries[-1]["hash"]}
    events = [e for e in entries if e["action"] == "deployment.wave_started"]
    assert len(events) == 60 and {e["actor"] for e in events} == {"orchestrator"}


def test_after_the_last_entries_are_deleted_new_entries_keep_the_gap(tmp_path):
    url, anchor = f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "head.json"
    store = Store(url, audit_anchor=anchor)
    for i in range(5):
        store.audit.append("alice", "POST /v1/x", "t", {"i": i})
    with sqlite3.connect(tmp_path / "a.db") as db:  # cover the tracks in the database
        db.execute("DELETE FROM audit_log WHERE seq >= 4")
        h3 = db.execute("SELECT hash FROM audit_log WHERE seq = 3").fetchone()[0]
        db.execute("UPDATE audit_head SET seq = 3, hash = ?", (h3,))
    restarted = Store(url, audit_anchor=anchor)  # no memory of the old process
    result = restarted.audit.verify()
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "anchor file" in result.reason
    restarted.audit.append("bob", "POST /v1/x", "t", {})
    assert [e["seq"] for e in restarted.audit.entries()] == [1, 2, 3, 6]
    assert Store(url, audit_anchor=anchor).audit.verify().first_bad_seq == 4
    anchor.unlink()
    gone = Store(url, audit_anchor=anchor).audit.verify()
    assert not gone.ok and "missing" in gone.reason


# -- tampering with the controller's database, seen through the API and the CLI --------------
def _tamper(db_path, how: str) -> None:
    with sqlite3.connect(db_path) as db:
        last = db.execute("SELECT MAX(seq) FROM audit_log").fetchone()[0]
        if how == "modify":
            db.execute("""UPDATE audit_log SET detail = '{"outcome": 201, "after": {"name":
                          "mallory", "role": "viewer"}}' WHERE seq = 2""")
        elif how == "delete-middle":
            db.execute("DELETE FROM audit_log WHERE seq = 2")
        elif how in ("delete-last", "delete-last-and-rewind-head"):
            db.execute("DELETE FROM audit_log WHERE seq = ?", (last,))
        if how == "delete-last-and-rewind-head":
            prev = db.execute("SELECT seq, hash FROM audit_log WHERE seq = ?",
                              (last - 1,)).fetchone()
            db.execute("UPDATE audit_head SET seq = ?, hash = ?", prev)


@pytest.mark.parametrize("how,first_bad", [
    ("modify", 2), ("delete-middle", 2), ("delete-last", 3),
    ("delete-last-and-rewind-head", 3),
])
def test_tampering_with_the_database_is_reported_by_api_and_cli(tmp_path, trust_root, how,
                                                                first_bad):
    ctl = offline_controller(tmp_path, trust_root)
    with TestClient(create_app(ctl)) as client:
        for name in ("alice", "bob", "mallory"):
            create_token(client, name, "operator")
        clean = client.get("/v1/audit/verify", headers=ADMIN).json()
        assert clean == {"ok": True, "entries": 3, "head_seq": 3, "first_bad_seq": None,
                         "reason": ""}
        entries = client.get("/v1/audit", headers=ADMIN).json()
        assert [(e["actor"], e["action"], e["detail"]["outcome"]) for e in entries] == \
            [("admin", "POST /v1/tokens", 201)] * 3
        assert entries[2]["detail"]["after"]["name"] == "mallory"
    _tamper(tmp_path / "ctl.db", how)

    # a controller started afresh on the same files (nothing remembered in memory)
    ctl = offline_controller(tmp_path, trust_root)
    with TestClient(create_app(ctl)) as client:
        report = client.get("/v1/audit/verify", headers=ADMIN).json()
    assert (report["ok"], report["first_bad_seq"]) == (False, first_bad), report

    server = ApiServer(create_app(ctl))
    server.start()
    try:
        env = {"EDGEFLEET_URL": server.url, "EDGEFLEET_TOKEN": TOKEN, "COLUMNS": "200"}
        human = CliRunner().invoke(cli_app, ["audit", "verify"], env=env)
        assert human.exit_code == 2 and f"TAMPERED at entry {first_bad}" in human.stderr
        as_json = CliRunner().invoke(cli_app, ["audit", "verify", "--json"], env=env)
        assert as_json.exit_code == 2
        assert json.loads(as_json.stdout)["first_bad_seq"] == first_bad
    finally:
        server.stop()


def test_audit_list_and_verify_from_the_cli(tmp_path, trust_root):
    ctl = offline_controller(tmp_path, trust_root)
    server = ApiServer(create_app(ctl))
    server.start()
    runner = CliRunner()
    env = {"EDGEFLEET_URL": server.url, "EDGEFLEET_TOKEN": TOKEN, "COLUMNS": "200"}
    try:
        runner.invoke(cli_app, ["tokens", "create", "ivy", "--role", "viewer"], env=env)
        runner.invoke(cli_app, ["deployments", "abort", "dep-nope"], env=env)
        rows = json.loads(runner.invoke(cli_app, ["audit", "list", "--json"], env=env).stdout)
        assert [(r["seq"], r["actor"], r["action"], r["detail"]["outcome"]) for r in rows] == [
            (1, "admin", "POST /v1/tokens", 201),
            (2, "admin", "POST /v1/deployments/{dep_id}/{action}", 404)]
        assert rows[1]["target"] == "/v1/deployments/dep-nope/abort"
        assert "no deployment dep-nope" in rows[1]["detail"]["error"]
        human = runner.invoke(cli_app, ["audit", "list", "--after", "1"], env=env)
        assert "dep-nope" in human.stdout and "POST /v1/tokens" not in human.stdout
        ok = runner.invoke(cli_app, ["audit", "verify"], env=env)
        assert ok.exit_code == 0 and "intact: 2 entries" in ok.stdout
    finally:
        server.stop()
