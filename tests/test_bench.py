"""Smoke test of the benchmarks: each runs at its smallest size and reports a full row.

Not a timed test: the figures are not asserted against their targets here.
"""

from __future__ import annotations

import importlib
import json

import pytest

from edgefleet.simulations.bench import BENCHMARKS, main, render, run_benchmarks

ROW = {"benchmark": str, "figure": (int, float), "unit": str, "baseline": (int, float),
       "ratio": (int, float), "target": str, "passed": bool}


def test_every_registered_benchmark_runs_small_and_reports_figure_baseline_ratio_target():
    for name in BENCHMARKS:
        module = importlib.import_module(f"edgefleet.simulations.bench.{name}")
        smallest = next(iter(module.SIZES))
        (result,) = run_benchmarks([name], smallest)
        assert "error" not in result, result.get("traceback")
        for key, kind in ROW.items():
            assert isinstance(result[key], kind), (name, key, result.get(key))
        assert result["figure"] > 0 and result["baseline"] > 0
        assert result["ratio"] == pytest.approx(result["figure"] / result["baseline"], rel=0.02)
        assert name in render([result])
        json.dumps(result)  # what the runner saves


def test_the_runner_prints_a_table_saves_json_and_reports_a_broken_benchmark(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["--only", "summary_bytes", "--size", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "summary_bytes" in printed and ("pass" in printed or "MISS" in printed)
    saved = json.loads(out.read_text())
    assert [r["benchmark"] for r in saved["results"]] == ["summary_bytes"]
    (broken,) = run_benchmarks(["no_such_benchmark"], "tiny")
    assert "error" in broken and "error" in render([broken])
