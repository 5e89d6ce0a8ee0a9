"""Peer comparison: edgefleet's optimizer and Olive's ONNX static quantization on the zoo.

A benchmark run outside CI, in its own virtualenv (Olive pulls torch, transformers and
optuna, none of which edgefleet needs)::

    python3 -m venv .venv-olive
    .venv-olive/bin/pip install -e '.[all]'
    .venv-olive/bin/pip install torch==2.13.0   # a CPU build (see docs/benchmarks.md)
    .venv-olive/bin/pip install olive-ai requests  # olive-ai 0.13.0 imports requests
    .venv-olive/bin/python simulations/peers/olive_zoo.py --out olive-zoo-results

In one run, for every ONNX model of ``edgefleet.simulations.zoo`` (``external-data``
folded into one file first, so both tools read the same self-contained model):

- edgefleet: ``optimize_samples`` on the zoo's calibration and eval sets, as the
  registry runs it (latency 100 interleaved single-sample runs, 10 warm-up, one thread);
- Olive: the ``OnnxStaticQuantization`` pass with its defaults (QDQ, int8 weights and
  activations, MinMax, per-tensor, ORT pre-processing) through ``olive.workflows.run``,
  calibrated on the same calibration calls edgefleet uses (the same ``.npz``, up to 256
  samples, 16 rows per call where the batch axis is free); its int8 file is then
  measured by edgefleet's own ``compare`` against the same fp32 file, with the same
  quality gate and latency rules, and ``quantized_summary`` says what really runs int8.

Olive "would ship" when its file has quantized nodes and at least 5 % of the weights in
int8 (edgefleet's own threshold), its outputs are finite, it passes the quality gate and
it is faster than fp32 beyond the 95 % bound. A failure of either tool is recorded with
its stage, the exception type and message. Writes ``olive_zoo.json`` in ``--out`` and
prints a markdown table. ``--olive-options JSON`` runs the pass with other options
(e.g. ``{"activation_type": "uint8"}``); ``--models`` takes a subset of the zoo.
"""

from __future__ import annotations

import os

os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")  # see _silence_olive_telemetry

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import onnx  # noqa: E402

from edgefleet.optimizer import (  # noqa: E402
    OptimizeTarget,
    Samples,
    detect_task,
    inline_external_data,
    inspect_model,
    optimize_samples,
)
from edgefleet.optimizer._graph import MIN_INT8_SHARE, quantized_summary  # noqa: E402
from edgefleet.optimizer._measure import compare  # noqa: E402
from edgefleet.simulations.bench.optimizer_zoo import zoo_inputs  # noqa: E402
from edgefleet.simulations.zoo import build_zoo  # noqa: E402

_LATENCY_RUNS, _WARMUP_RUNS = 100, 10
_CALIBRATION_LIMIT, _CALIBRATION_ROWS = 256, 16  # as edgefleet.optimizer._measure.FeedsReader
_OLIVE_PASS = "OnnxStaticQuantization"

# The calibration calls of the model being quantized, handed to Olive's registered
# dataset below; one model at a time, so a module-level slot is enough for a script.
_CALIBRATION_CALLS: dict[str, list[dict[str, Any]]] = {}


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    cause = exc.__cause__
    if cause is not None:
        text += f" (caused by {type(cause).__name__}: {' '.join(str(cause).split())})"
    return f"{type(exc).__name__}: {text[:400]}"


def _silence_olive_telemetry() -> None:
    """Olive 0.13.0 logs a heartbeat (device id, OS) when its telemetry starts, *before*
    it reads ``OLIVE_DISABLE_TELEMETRY``; where it cannot send it, it queues it under
    ``~/.cache/Microsoft`` for later. Drop the heartbeat, so the opt-out means it."""
    from olive.telemetry import telemetry

    telemetry.Telemetry._log_heartbeat = lambda self, metadata=None: None  # type: ignore[method-assign]


def _register_olive_data() -> None:
    """Register a dataset and a dataloader with Olive that yield prepared feeds."""
    from olive.data.registry import Registry

    @Registry.register_dataset("edgefleet_calibration_calls")
    def _calls(key: str) -> list[dict[str, Any]]:
        return _CALIBRATION_CALLS[key]

    @Registry.register_dataloader("edgefleet_calls_as_batches")
    def _batches(dataset: list[dict[str, Any]]) -> _CountedCalls:
        # every element already is one call's feeds by input name: no re-batching
        return _CountedCalls(dataset)


class _CountedCalls:
    """The calibration calls as Olive's dataloader, counting what Olive really read."""

    read = 0

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self._calls = calls

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Any:
        for feeds in self._calls:
            _CountedCalls.read += 1
            yield feeds


class _LogTail(logging.Handler):
    """Olive logs failures instead of raising in some stages; keep what it warned about."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = " ".join(record.getMessage().split())
        if record.exc_info and record.exc_info[1] is not None:
            msg += f" [{_describe(record.exc_info[1])}]"
        self.lines.append(f"{record.levelname}: {msg[:400]}")


def _quality(metric: str, values: dict[str, Any]) -> dict[str, Any]:
    """One comparable figure: top-1 drop in points, or the lowest SQNR/cosine over outputs."""
    if metric == "top1":
        return {"metric": "top-1 drop pt",
                "value": round((values["accuracy_fp32"] - values["accuracy"]) * 100.0, 2)}
    sqnr = [v["sqnr_db"] for v in values.values() if isinstance(v, dict) and "sqnr_db" in v]
    cos = [v["cosine"] for v in values.values() if isinstance(v, dict) and "cosine" in v]
    return {"metric": "min SQNR dB", "value": round(min(sqnr), 2) if sqnr else None,
            "min_cosine": round(min(cos), 5) if cos else None}


def _run_edgefleet(path: Path, cal: Samples, ev: Samples, out: Path, task: str
                   ) -> dict[str, Any]:
    target = OptimizeTarget(latency_runs=_LATENCY_RUNS, warmup_runs=_WARMUP_RUNS, task=task)
    t0 = time.perf_counter()
    try:
        result = optimize_samples(path, cal, ev, out, target)
    except Exception as exc:  # a failure is a result of the comparison too
        return {"ok": False, "stage": "optimize_samples", "error": _describe(exc),
                "seconds": round(time.perf_counter() - t0, 1)}
    rep = result.report
    q = rep["quantization"] or {}
    steps = rep.get("fallback_steps") or []
    return {
        "ok": True, "seconds": round(time.perf_counter() - t0, 1),
        "shipped": result.shipped, "method": rep["method"], "task": rep["task"],
        "quantized": rep["int8"] is not None,
        "quantized_nodes": q.get("quantized_nodes"), "ops_total": q.get("ops_total"),
        "quantized_ops": q.get("quantized_ops"), "int8_weight_share": q.get("int8_weight_share"),
        "float_nodes": rep["float_nodes"], "plan": rep["plan"],
        "quality": _quality(rep["metric"], rep["quality"]), "quality_raw": rep["quality"],
        "full_int8_step": steps[0] if steps else None,
        "p50_ratio": rep["p50_ratio"], "speed": rep["speed"], "size_ratio": rep["size_ratio"],
        "fp32": rep["fp32"], "int8": rep["int8"], "gates": rep["gates"],
        "reason": rep["reason"],
    }


def _olive_config(path: Path, key: str, out: Path, options: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(path)},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{
            "name": "calibration",
            "load_dataset_config": {"type": "edgefleet_calibration_calls",
                                    "params": {"key": key}},
            "dataloader_config": {"type": "edgefleet_calls_as_batches"},
        }],
        # the pass with its defaults unless --olive-options says otherwise; the
        # calibration data is ours
        "passes": {"quantization": {**(options or {}), "type": _OLIVE_PASS,
                                    "data_config": "calibration"}},
        "host": "local_system", "target": "local_system",
        "evaluate_input_model": False, "clean_cache": True,
        "cache_dir": str(out / "cache"), "output_dir": str(out / "output"),
        "log_severity_level": 2,  # warnings: e.g. pre-processing fell back
    }


def _run_olive(name: str, path: Path, cal: Samples, ev: Samples, sig: dict[str, Any],
               out: Path, task: str, options: dict[str, Any]) -> dict[str, Any]:
    from olive.workflows import run as olive_run

    stage = "calibration data"
    tail = _LogTail()
    logging.getLogger("olive").addHandler(tail)
    t0 = time.perf_counter()
    try:
        _CALIBRATION_CALLS.clear()
        _CountedCalls.read = 0
        _CALIBRATION_CALLS[name] = [f for _, f in cal.batches(_CALIBRATION_ROWS,
                                                              _CALIBRATION_LIMIT)]
        n_calls = len(_CALIBRATION_CALLS[name])
        stage = f"olive.workflows.run ({_OLIVE_PASS})"
        output = olive_run(_olive_config(path, name, out, options))
        stage = "reading Olive's output"
        best = output.get_best_candidate() if output is not None else None
        if best is None or not best.model_path:
            return {"ok": False, "stage": stage, "error": "no output model",
                    "olive_log": tail.lines[-5:], "seconds": round(time.perf_counter() - t0, 1)}
        produced = Path(best.model_path)
        if produced.is_dir():
            produced = next(produced.glob("*.onnx"))
        # one self-contained file, so sizes compare like for like with edgefleet's
        int8_path = out / f"{path.stem}.olive.int8.onnx"
        int8_path.write_bytes(inline_external_data(produced))
        olive_seconds = round(time.perf_counter() - t0, 1)
        stage = "quantized_summary"
        summary = quantized_summary(onnx.load(str(int8_path)))
        stage = "edgefleet compare"
        measured = compare(path, int8_path, ev, sig, task=task,
                           target=OptimizeTarget(latency_runs=_LATENCY_RUNS,
                                                 warmup_runs=_WARMUP_RUNS))
    except Exception as exc:  # a failure is a result of the comparison too
        return {"ok": False, "stage": stage, "error": _describe(exc),
                "calibration_calls_read": _CountedCalls.read,
                "olive_log": tail.lines[-5:], "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        logging.getLogger("olive").removeHandler(tail)
        _CALIBRATION_CALLS.clear()
    quantized = summary["quantized_nodes"] > 0 and \
        summary["int8_weight_share"] >= MIN_INT8_SHARE
    speed = measured["speed"]
    gates = {"quantized": quantized, "finite": measured["finite"],
             "quality": measured["quality_ok"], "faster": bool(speed["faster"])}
    fp32, cand = measured["fp32"], measured["candidate"]
    return {
        "ok": True, "seconds": olive_seconds, "task": task,
        "quantized_nodes": summary["quantized_nodes"], "ops_total": summary["ops_total"],
        "quantized_ops": summary["quantized_ops"],
        "int8_weight_share": summary["int8_weight_share"],
        "quality": _quality(measured["metric"], measured["quality"]),
        "quality_raw": measured["quality"], "quality_why": measured["quality_why"],
        "shapes": measured["shapes"],
        "p50_ratio": speed["ratio"], "speed": speed,
        "size_ratio": fp32["size_bytes"] / cand["size_bytes"] if cand["size_bytes"] else None,
        "fp32": fp32, "int8": cand, "gates": gates,
        "would_ship": all(gates.values()),
        "failed_gates": [g for g, ok in gates.items() if not ok],
        "calibration_calls": n_calls,
        "calibration_calls_read": _CountedCalls.read,
        "olive_log": tail.lines[-5:],
    }


def _versions() -> dict[str, str]:
    found = {}
    for dist in ("olive-ai", "onnxruntime", "onnx", "torch", "numpy", "edgefleet"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _source_state() -> dict[str, Any]:
    """Which edgefleet source built the zoo and ran the optimizer (read-only git queries):
    the zoo's models are data made by code, so the figures belong to that code."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"unknown ({type(exc).__name__})"
        return done.stdout.rstrip("\n")
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--", "simulations/zoo", "optimizer")
            .splitlines()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def _qtext(q: dict[str, Any]) -> str:
    if q["value"] is None:
        return "–"
    if q["metric"] == "top-1 drop pt":
        return f"top-1 drop {q['value']:.1f} pt"
    return f"SQNR {q['value']:.1f} dB"


def _row_markdown(row: dict[str, Any]) -> str:
    e, o = row["edgefleet"], row["olive"]
    notes = []
    if e["ok"]:
        shipped = f"**{e['shipped']}**" if e["shipped"] == "int8" else e["shipped"]
        e_q = _qtext(e["quality"])
        full = e.get("full_int8_step")
        if full and e["float_nodes"]:
            notes.append(f"edgefleet: {len(e['float_nodes'])} node(s) kept float")
        e_p50 = _fmt(e["p50_ratio"]) if e["quantized"] else "–"
        e_size = _fmt(e["size_ratio"]) if e["quantized"] else "–"
        failed = [g for g, ok in e["gates"].items() if not ok]
        if "quantized" in failed:
            notes.append("edgefleet: " + e["reason"].removeprefix("fp32 ships: quantized (")
                         .split(":")[0])
        elif "faster" in failed:
            notes.append(f"edgefleet not faster (p50 bound {e['speed']['ratio_low']:.3f}–"
                         f"{e['speed']['ratio_high']:.3f})")
        elif failed:
            notes.append("edgefleet fails " + ", ".join(failed))
    else:
        shipped, e_q, e_p50, e_size = "failed", "–", "–", "–"
        notes.append(f"edgefleet failed at {e['stage']}: {e['error'][:200]}")
    if o["ok"]:
        o_ops = f"{o['quantized_nodes']} / {o['ops_total']}, {o['int8_weight_share']:.1%}"
        o_q = _qtext(o["quality"]) + ("" if o["gates"]["quality"] else " (fails gate)")
        ship = "**yes**" if o["would_ship"] else "no (" + ", ".join(o["failed_gates"]) + ")"
        if not o["gates"]["quality"]:
            notes.append(f"Olive quality: {o['quality_why']}")
        if not o["gates"]["faster"] and o["speed"]["ratio"] is not None:
            notes.append(f"Olive p50 bound {o['speed']['ratio_low']:.3f}–"
                         f"{o['speed']['ratio_high']:.3f}")
        cells = [o_ops, o_q, _fmt(o["p50_ratio"]), _fmt(o["size_ratio"]), ship]
    else:
        cells = ["–", "–", "–", "–", "failed"]
        notes.append(f"Olive failed at {o['stage']}: {o['error'][:200]}")
    return "| " + " | ".join([row["model"], shipped, e_q, e_p50, e_size, *cells,
                              "; ".join(notes).replace("|", "/")]) + " |"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | edgefleet shipped | edgefleet quality | edgefleet p50 ratio | "
            "edgefleet size ratio | Olive quantized ops / total, int8 weight share | "
            "Olive quality | Olive p50 ratio | Olive size ratio | Olive would ship | notes |")
    sep = "|" + "---|" * 11
    return "\n".join([head, sep, *(_row_markdown(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the results")
    parser.add_argument("--models", nargs="*", help="zoo names (default: every ONNX model)")
    parser.add_argument("--olive-options", type=json.loads, default={}, metavar="JSON",
                        help="options of Olive's pass instead of its defaults, e.g. "
                             "'{\"activation_type\": \"uint8\"}'")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    _silence_olive_telemetry()
    _register_olive_data()
    source = _source_state()
    started = time.time()
    zoo = build_zoo(out / "zoo", args.models)
    rows = []
    for name, m in zoo.items():
        if m.runtime != "onnxruntime":
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        path, cal, ev, task = zoo_inputs(m, out)
        sig = inspect_model(path)
        edge = _run_edgefleet(path, cal, ev, out / f"edgefleet-{name}", task)
        # compare() is given the task edgefleet judged by, found the same way
        olive = _run_olive(name, path, cal, ev, sig, out / f"olive-{name}",
                           task or detect_task(sig), args.olive_options)
        row = {"model": name, "opset": m.opset, "zoo_task": m.task,
               "sha256": {"model": _sha256(path), "eval": _sha256(m.eval_npz),
                          "calibration": _sha256(m.calibration_npz)
                          if m.calibration_npz else None},
               "calibration": "calibration npz" if m.calibration_npz else "eval npz",
               "edgefleet": edge, "olive": olive}
        rows.append(row)
        print("  " + _row_markdown(row), flush=True)
    summary = {
        "edgefleet_int8": sum(1 for r in rows if r["edgefleet"].get("shipped") == "int8"),
        "olive_would_ship": sum(1 for r in rows if r["olive"].get("would_ship")),
        "edgefleet_failed": sum(1 for r in rows if not r["edgefleet"]["ok"]),
        "olive_failed": sum(1 for r in rows if not r["olive"]["ok"]),
        "models": len(rows)}
    result = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_end": list(os.getloadavg())},
        "versions": _versions(),
        "source": source,
        "settings": {"latency_runs": _LATENCY_RUNS, "warmup_runs": _WARMUP_RUNS,
                     "threads": 1, "olive_pass": _OLIVE_PASS,
                     "olive_options": args.olive_options or "defaults",
                     "calibration_limit": _CALIBRATION_LIMIT,
                     "calibration_rows_per_call": _CALIBRATION_ROWS},
        "summary": summary,
        "rows": rows,
    }
    (out / "olive_zoo.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(markdown_table(rows))
    print()
    print(f"edgefleet ships int8 on {summary['edgefleet_int8']} of {len(rows)} "
          f"({summary['edgefleet_failed']} failed); Olive would ship "
          f"{summary['olive_would_ship']} ({summary['olive_failed']} failed)")
    print(f"versions {result['versions']}; source {source['commit'][:12]}"
          + (f" with uncommitted {source['uncommitted']}" if source["uncommitted"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
