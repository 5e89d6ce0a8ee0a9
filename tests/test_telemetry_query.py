"""Fleet telemetry answers: merged sketches (not averaged percentiles), rollups, queries."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from _devices import summary
from _operators import ADMIN, offline_controller
from _support import TOKEN
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgefleet.cli import app as cli_app
from edgefleet.contract import DDSketch, ManualClock
from edgefleet.controller.aggregate import ALPHA, Aggregate, hour_of, rollup
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer

BASE = hour_of(1_700_000_000.0)


def _window(values: list[float], seq: int, *, stream: str = "s1", start: float = BASE,
            **fields: object):
    """A summary whose sketch and reported percentiles come from ``values``."""
    pct = {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)}
    return summary(seq, stream=stream, start=start, count=len(values),
                   latency_ms={**pct, "max": max(values)},
                   latency_sketch=DDSketch().extend(values).to_dict(), **fields)


def _close(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return a == b


_ROWS = st.lists(st.fixed_dictionaries({
    "device": st.sampled_from(["a", "b", "c"]),
    "window_start": st.floats(BASE, BASE + 5 * 3600), "historical": st.booleans(),
    "count": st.integers(0, 300), "errors": st.integers(0, 5),
    "errors_by_kind": st.dictionaries(st.sampled_from(["model", "input"]), st.integers(0, 5)),
    "latencies": st.one_of(st.none(), st.lists(st.floats(0.01, 500), min_size=1, max_size=40)),
    "reported_p95": st.floats(0.1, 100),
    "drift": st.one_of(st.just({}), st.fixed_dictionaries({
        "samples": st.integers(50, 500), "psi_mean": st.floats(0, 2),
        "top": st.dictionaries(st.sampled_from([str(i) for i in range(8)]),
                               st.floats(0, 3), max_size=5)})),
}), max_size=30)


@settings(max_examples=120, deadline=None)
@given(_ROWS, st.randoms(use_true_random=False))
def test_rolling_up_then_querying_answers_what_querying_every_window_does(rows, rnd):
    for r in rows:
        r.update(model="digits", version=1, window_end=r["window_start"] + 60,
                 payload={"latency_ms": {"p50": r["reported_p95"] / 2,
                                         "p95": r["reported_p95"]}, "predictions": {"1": 2}},
                 latency_sketch=DDSketch().extend(r["latencies"]).to_dict()
                 if r["latencies"] else None)
    direct = Aggregate()
    for r in rows:
        direct.add_window(r)
    rnd.shuffle(rows)
    cut = rnd.randint(0, len(rows))
    stored = [Aggregate.from_dict(json.loads(json.dumps(a.to_dict())))  # as the DB keeps them
              for a in rollup(rows[:cut]).values()]
    merged = Aggregate()
    for a in stored:
        merged.merge(a)
    for r in rows[cut:]:  # raw windows not rolled up yet
        merged.add_window(r)
    assert _close(merged.answer(), direct.answer())
    assert merged.predictions == direct.predictions


@pytest.fixture
def ctl(tmp_path, trust_root):
    ctl = offline_controller(tmp_path, trust_root, clock=ManualClock(BASE + 3 * 3600))
    for d, site in (("pi-1", "lab"), ("pi-2", "lab"), ("pi-3", "field")):
        ctl.store.upsert_device(d, tags={"site": site})
    return ctl


def test_cohort_p95_is_the_merged_sketch_not_an_average_of_window_p95s(ctl):
    rng = np.random.default_rng(7)
    busy = list(rng.uniform(1.0, 2.0, 1000))  # a busy fast window on pi-1
    quiet = list(rng.uniform(40.0, 60.0, 80))  # a quiet slow one on pi-2
    ctl.ingestor.process([("pi-1", _window(busy, 1), BASE), ("pi-2", _window(quiet, 1), BASE)])

    m = ctl.store.cohort_metrics(["pi-1", "pi-2"], "digits", 1, since=0)

    exact = sorted(busy + quiet)[int(0.95 * (len(busy) + len(quiet) - 1))]
    assert m.count == 1080 and m.p95_ms is not None
    assert abs(m.p95_ms - exact) <= ALPHA * exact
    averaged = (np.percentile(busy, 95) * 1000 + np.percentile(quiet, 95) * 80) / 1080
    assert averaged < 8 < 40 < m.p95_ms  # the old approximation was off by ~6x


def test_summaries_without_a_sketch_fall_back_to_their_reported_p95(ctl):
    old = summary(1, count=100, latency_ms={"p50": 1.0, "p95": 4.0, "p99": 5.0})
    ctl.ingestor.process([("pi-1", old, BASE)])
    assert ctl.store.cohort_metrics(["pi-1"], "digits", 1, since=0).p95_ms == 4.0
    answer = Aggregate().add_window(ctl.store.summaries("pi-1")[0]).answer()
    assert answer["latency_ms"]["source"] == "reported"


def _seed(ctl, *, hours: int = 3) -> None:
    """Two versions, three devices, a window a minute for ``hours``."""
    rng = np.random.default_rng(1)
    items = []
    for d, version, scale in (("pi-1", 1, 1.0), ("pi-2", 1, 1.2), ("pi-3", 2, 3.0)):
        for seq in range(1, hours * 60 + 1):
            values = list(rng.gamma(2.0, scale, 30))
            items.append((d, _window(values, seq, version=version, historical=seq % 10 == 0,
                                     errors=1, errors_by_kind={"model": 1},
                                     drift={"samples": 60, "psi_mean": 0.05 * version,
                                            "top": {"3": 0.2 * version}}), BASE))
    ctl.ingestor.process(items)


def test_old_summaries_roll_up_hourly_and_answer_the_same(ctl):
    _seed(ctl)
    tel = ctl.store.telemetry
    before = tel.aggregate(group_by=("model", "version"))
    whole_hours = tel.aggregate(since=BASE + 3600, until=BASE + 7200)[()].answer()

    done = tel.apply_retention(BASE + 8 * 86400, raw_retention_s=7 * 86400,
                               rollup_retention_s=90 * 86400)

    assert done == {"rolled_up": 3 * 180, "rollups_deleted": 0}
    assert ctl.store.summaries() == []
    assert len(tel.rollup_rows()) == 3 * 3  # device × hour
    after = tel.aggregate(group_by=("model", "version"))
    assert after.keys() == before.keys()
    for key in before:
        assert _close(after[key].answer(), before[key].answer())
    assert _close(tel.aggregate(since=BASE + 3600, until=BASE + 7200)[()].answer(), whole_hours)

    late = _window([9.0] * 10, 181, start=BASE + 30 - 180 * 60, historical=True)  # replayed
    ctl.ingestor.process([("pi-1", late, BASE + 8 * 86400)])
    tel.apply_retention(BASE + 8 * 86400, raw_retention_s=7 * 86400,
                        rollup_retention_s=90 * 86400)
    assert len(tel.rollup_rows()) == 9  # merged into its hour
    v1 = tel.aggregate(group_by=("model", "version"))[("digits", 1)]
    assert v1.count == before[("digits", 1)].count + 10

    assert tel.apply_retention(BASE + 91 * 86400, raw_retention_s=7 * 86400,
                               rollup_retention_s=90 * 86400)["rollups_deleted"] == 9
    assert tel.aggregate() == {}


def test_raw_age_is_by_arrival_so_a_device_with_a_wrong_clock_keeps_its_summaries_raw(ctl):
    ctl.ingestor.process([("pi-1", summary(1, start=0.0), BASE)])  # no RTC, no NTP yet: 1970
    done = ctl.store.telemetry.apply_retention(BASE + 3600, raw_retention_s=7 * 86400,
                                               rollup_retention_s=90 * 86400)
    assert done["rolled_up"] == 0
    assert ctl.store.cohort_metrics(["pi-1"], "digits", 1, since=BASE).count == 100


def test_query_api_answers_by_version_device_selector_deployment_and_time(ctl):
    _seed(ctl, hours=2)
    ctl.store.add_deployment("dep-1", "digits", 2, strategy="all-at-once", policy={}, plan={},
                             targets=[{"device": "pi-3", "wave": 0, "arm": ""}],
                             created_by="admin")
    with ctl.store.engine.begin() as c:  # (created_at is wall time: move it back)
        c.exec_driver_sql("UPDATE deployments SET created_at = ?", (BASE,))
    client = TestClient(create_app(ctl))

    def q(**params: object) -> dict:
        resp = client.get("/v1/telemetry/query", params=params, headers=ADMIN)
        assert resp.status_code == 200, resp.text
        return resp.json()

    by_version = q(group_by="version")
    assert by_version["alpha"] == ALPHA
    assert [g["key"] for g in by_version["groups"]] == [{"model": "digits", "version": 1},
                                                        {"model": "digits", "version": 2}]
    v1, v2 = by_version["groups"]
    assert (v1["devices"], v1["windows"], v1["count"]) == (2, 240, 240 * 30)
    assert v1["errors_by_kind"] == {"model": 240} and v1["historical_share"] == 0.1
    assert v2["latency_ms"]["p95"] > 2 * v1["latency_ms"]["p95"]  # version 2 is slower
    assert v2["drift"]["mean"] == pytest.approx(0.1) and v2["drift"]["top"] == {"3": 0.4}
    assert by_version["total"]["count"] == 360 * 30

    lab = q(selector="site=lab", group_by="device")
    assert [g["key"]["device"] for g in lab["groups"]] == ["pi-1", "pi-2"]
    assert q(deployment="dep-1")["total"]["devices"] == 1
    assert q(deployment="dep-1")["filters"]["version"] == 2
    first_hour = q(since=BASE, until=BASE + 3600, device="pi-1")["total"]
    assert first_hour["windows"] == 60 and first_hour["last_window"] == BASE + 3600
    assert q(model="digits", version=3)["groups"] == []
    bad = client.get("/v1/telemetry/query", params={"selector": "site"}, headers=ADMIN)
    assert bad.status_code == 422 and "key=value" in bad.json()["detail"]
    assert client.get("/v1/telemetry/query", params={"deployment": "nope"},
                      headers=ADMIN).status_code == 404
    rows = client.get("/v1/devices/pi-1/telemetry", params={"limit": 5}, headers=ADMIN).json()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]  # the per-device listing still works
    assert rows[0]["latency_sketch"]["n"] == 30 and "latency_ms" in rows[0]["payload"]


def test_cli_telemetry_query_prints_a_table_and_json(ctl):
    _seed(ctl, hours=1)
    server = ApiServer(create_app(ctl))
    server.start()
    try:
        env = {"EDGEFLEET_URL": server.url, "EDGEFLEET_TOKEN": TOKEN, "COLUMNS": "200"}
        runner = CliRunner()
        since = str(BASE)
        out = runner.invoke(cli_app, ["telemetry", "query", "--model", "digits:1",
                                      "--since", since, "--json"], env=env)
        assert out.exit_code == 0, out.output
        answer = json.loads(out.stdout)
        assert answer["groups"][0]["key"] == {"model": "digits", "version": 1}
        assert answer["filters"]["since"] == BASE
        human = runner.invoke(cli_app, ["telemetry", "query", "--group-by", "device",
                                        "--since", since], env=env)
        assert human.exit_code == 0, human.output
        assert "pi-3" in human.stdout and "p95" in human.stdout and "±1%" in human.stdout
        assert "model 180" in human.stdout  # errors by kind
        bad = runner.invoke(cli_app, ["telemetry", "query", "--since", "yesterday"], env=env)
        assert bad.exit_code == 1 and "not a time" in bad.output
    finally:
        server.stop()


def test_cli_times_read_as_ago_epoch_or_iso():
    from edgefleet.cli._telemetry import parse_when

    now = 1_700_000_000.0
    assert parse_when("2h", now) == now - 7200
    assert parse_when("90", now) == now - 90
    assert parse_when(str(now - 5), now) == now - 5
    assert parse_when("2023-11-14T22:13:20Z", now) == now
    assert abs(parse_when("2023-11-14T22:13:20+00:00", time.time()) - now) < 1e-6
