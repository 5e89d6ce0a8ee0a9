"""The benchmark suite: every benchmark runs quick and reports real rows; runs are kept,
compared with the previous one, and a missed target says by how much.

Not a timed test: the figures are not asserted against their targets here.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.simulations.bench import (
    BENCHMARKS,
    compare,
    console,
    main,
    make_result,
    render,
    run_benchmarks,
    verdict,
)
from edgefleet.simulations.bench._digits import MODEL

ROW = {"benchmark": str, "figure": (int, float), "unit": str, "baseline": (int, float),
       "ratio": (int, float), "target": str}


@pytest.fixture(scope="module")
def quick() -> dict[str, dict[str, Any]]:
    """The whole suite once, at its quick size, with a 2 s sustained ingest."""
    rows = run_benchmarks(BENCHMARKS, "tiny", duration=2.0)
    return {r["benchmark"]: r for r in rows}


def test_every_benchmark_runs_quick_and_reports_figure_baseline_ratio_target(quick):
    assert {r["module"] for r in quick.values()} == set(BENCHMARKS)
    for name, row in quick.items():
        assert "error" not in row, (name, row.get("traceback"))
        if row.get("skipped"):  # only a peer that lives in its own environment may skip
            assert row["module"] == "kserve_peer" and "kserve" in row["skipped"], name
            continue
        for key, kind in ROW.items():
            assert isinstance(row[key], kind), (name, key, row.get(key))
        assert row["passed"] in (True, False, None)
        assert row["figure"] > 0 and row["baseline"] > 0, name
        assert row["ratio"] == pytest.approx(row["figure"] / row["baseline"], rel=0.02), name
        json.dumps(row)  # what the runner saves
    table = render(list(quick.values()))
    for name in quick:
        assert name in table


def test_the_optimizer_compares_int8_and_tflite_with_fp32_onnx_of_the_same_run(quick):
    size = quick["optimizer.onnx-int8.size"]
    assert size["baseline"] == MODEL.stat().st_size
    assert size["figure"] < size["baseline"]
    p50 = quick["optimizer.onnx-int8.p50"]
    acc = quick["optimizer.onnx-int8.accuracy"]
    assert 0 < p50["baseline"] < 10_000 and 0.5 < acc["baseline"] <= 1.0
    if size["tflite"] == "measured":  # ai-edge-litert and ai-edge-quantizer installed
        assert quick["optimizer.tflite-int8.p50"]["baseline"] == p50["baseline"]


def test_agent_cold_start_and_rss_are_medians_of_real_processes_and_their_bare_baseline(quick):
    cold, rss = quick["agent_cold_start"], quick["agent_rss"]
    assert cold["baseline"] == pytest.approx(statistics.median(cold["bare_s"]), abs=1e-3)
    assert cold["figure"] == pytest.approx(statistics.median(cold["agent_s"]), abs=1e-3)
    assert len(cold["agent_s"]) == cold["rounds"]
    assert rss["figure"] > 20 and rss["baseline"] > 20  # MiB: real interpreters
    assert cold["notes"] and "import" in cold["notes"][0]


def test_sustained_ingest_stores_every_summary_once_and_reports_each_window(quick):
    held = quick["ingest_sustained"]["sustained"]
    assert held["duration_s"] == 2.0
    assert held["sent"] > 0
    assert held["sent"] == held["acked"] == held["stored"] == held["distinct_stored"]
    assert held["missing"] == held["streams_with_gaps"] == held["store_lost"] == 0
    assert len(held["window_rates"]) == round(2.0 / held["window_s"])
    assert quick["ingest_sustained"]["figure"] == min(held["window_rates"])
    assert quick["ingest_sustained"]["baseline"] == quick["ingest"]["baseline"] \
        == quick["ingest"]["baseline_sqlite"]["per_s"]
    assert set(held["cpu_percent"]) == {"controller", "publisher", "mosquitto"}


def test_the_rollout_row_comes_from_edgefleet_simulate(quick):
    row = quick["rollout"]
    assert row["unit"] == "s" and row["devices"] == 10
    assert row["figure"] > row["baseline"] > 0  # a rollout does more than a raw fan-out
    assert row["passed"] == (row["figure"] <= 10.0 and row["ratio"] <= row["ratio_target"])
    cpu = quick["rollout.controller_cpu"]
    assert cpu["unit"] == "ms/device" and cpu["figure"] > 0 and cpu["baseline"] > 0
    assert cpu["passed"] == (cpu["figure"] <= 1.0) and cpu["by_thread_s"]
    out = quick["rollout.bytes_out"]
    assert out["transport"] == "broadcast" and out["waves"] == 1
    # the bundle once, plus each device's timestamp and root probe
    assert out["baseline"] > 0 and out["figure"] > out["baseline"]
    assert out["passed"] == (out["ratio"] <= 1.2)


def test_the_console_pages_are_timed_with_the_fleet_in_the_store_against_the_json_api(quick):
    devices, overview = quick["console.devices"], quick["console.overview"]
    assert devices["devices_in_store"] == console.SIZES["tiny"]
    ms = devices["median_ms"]
    assert devices["baseline"] == overview["baseline"] == ms["api"]
    assert devices["figure"] == max(ms["devices"], ms["devices_filtered"])
    assert devices["slower_url"] in (devices["urls"]["devices"],
                                     devices["urls"]["devices_filtered"])
    assert overview["figure"] == ms["overview"]
    for row in (devices, overview):
        assert row["unit"] == "ms" and row["target_value"] == 200 and row["target_op"] == "<="
        assert row["passed"] == (row["figure"] <= 200)
        assert f"{console.SIZES['tiny']:,} devices" in row["why"]
    # the filtered deep page exists at this size and its devices were found on it
    assert devices["filtered_matching"] > console.PAGE_SIZE
    assert "status=online&class=rpi5" in devices["urls"]["devices_filtered"]
    assert set(devices["store_ms"]) == {"device_page", "device_page_filtered",
                                        "fleet_counts", "list_devices"}


def test_a_console_page_that_does_not_show_the_fleet_fails_the_benchmark():
    class Page:
        status_code, text = 200, "<h1>Devices <span>0 matching</span></h1>"

    with pytest.raises(AssertionError, match="does not show"):
        console._check_page(Page(), "/ui/devices", "500 matching")
    Page.status_code = 303
    with pytest.raises(AssertionError):
        console._check_page(Page(), "/ui/devices")


def test_a_missed_target_says_by_how_much_and_why():
    slow = make_result("ingest", figure=4_000, unit="summaries/s", baseline=20_000, ratio=0.2,
                       target=">= 5,000 summaries/s", passed=False, target_value=5_000,
                       target_op=">=", why="publisher and controller share 2 cores")
    heavy = make_result("predict_overhead", figure=12.1, unit="us", baseline=10.0, ratio=1.21,
                        target="<= 1.10x", passed=False, target_value=1.10,
                        target_of="ratio", target_op="<=", why="telemetry costs 1.5 us")
    ok = make_result("buffer_write", figure=2e5, unit="records/s", baseline=3e5, ratio=0.67,
                     target=">= 100,000", passed=True, target_value=1e5, target_op=">=")
    assert verdict(slow) == "missed by 20.0%"
    assert verdict(heavy) == "missed by 10.0%"
    assert verdict(ok) == "pass"
    table = render([slow, heavy, ok])
    assert "ingest: missed by 20.0% (figure 4,000 vs target >= 5,000 summaries/s): " \
           "publisher and controller share 2 cores" in table
    assert "predict_overhead: missed by 10.0% (ratio 1.21" in table
    with pytest.raises(ValueError):
        make_result("x", figure=1, unit="", baseline=1, ratio=1, target="", passed=None,
                    target_op=">")


def test_the_change_since_the_previous_run_knows_which_way_is_better():
    now = [make_result("ingest", figure=5_500, unit="/s", baseline=1, ratio=5_500, target="",
                       passed=True, target_value=5_000, target_op=">="),
           make_result("agent_cold_start", figure=0.6, unit="s", baseline=0.1, ratio=6,
                       target="-", passed=None, target_op="<="),
           make_result("new_one", figure=1, unit="", baseline=1, ratio=1, target="",
                       passed=None)]
    compare(now, {"results": [{"benchmark": "ingest", "figure": 5_000, "ratio": 0.25},
                              {"benchmark": "agent_cold_start", "figure": 0.5}]})
    assert now[0]["vs_previous"] == {"figure": 5_000, "ratio": 0.25, "change_pct": 10.0,
                                     "better": True}
    assert now[1]["vs_previous"]["change_pct"] == 20.0
    assert now[1]["vs_previous"]["better"] is False
    assert "vs_previous" not in now[2]
    table = render(now)
    assert "+10.0% (better)" in table and "+20.0% (worse)" in table


def test_each_run_is_kept_and_compared_with_the_previous_run_of_the_same_size(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["summary_bytes", "--quick", "--out", str(out)]) == 0
    first = json.loads((out / "latest.json").read_text())
    capsys.readouterr()
    assert main(["summary_bytes", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    second = json.loads((out / "latest.json").read_text())
    history = sorted(p for p in out.glob("*.json") if p.name != "latest.json")
    assert len(history) == 2 and all(p.name.endswith("-tiny.json") for p in history)
    assert json.loads(history[-1].read_text()) == second
    (row,) = second["results"]
    assert row["vs_previous"]["figure"] == first["results"][0]["figure"]
    assert "vs previous" in printed and str(history[0]) in printed
    assert "%" in printed.split("summary_bytes", 1)[1].splitlines()[0]
    # an explicit file, e.g. a run kept from another machine; --json prints the report
    crafted = tmp_path / "old.json"
    crafted.write_text(json.dumps({"size": "full", "results": [
        {"benchmark": "summary_bytes", "figure": row["figure"] * 2, "ratio": 0.01}]}))
    assert main(["summary_bytes", "--quick", "--out", str(out), "--compare", str(crafted),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["compared_with"] == str(crafted)
    change = report["results"][0]["vs_previous"]["change_pct"]
    assert change == pytest.approx(100 * (report["results"][0]["figure"] / (2 * row["figure"])
                                          - 1), abs=0.01)


def test_edgefleet_bench_runs_named_benchmarks_and_reports_a_broken_one(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "summary_bytes", "--quick", "--no-compare",
                                 "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["size"] == "tiny" and "compared_with" not in report
    assert [r["benchmark"] for r in report["results"]] == ["summary_bytes"]
    bad = runner.invoke(app, ["bench", "no_such_benchmark", "--out", str(tmp_path)])
    assert bad.exit_code == 2
    (broken,) = run_benchmarks(["no_such_benchmark"], "tiny")
    assert "error" in broken and "error" in render([broken])
