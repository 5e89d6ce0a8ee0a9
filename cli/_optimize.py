"""``model optimize``, ``model optimization`` and ``model optimizations``: optimization jobs.

The controller optimizes as a job (docs/operations.md, "Optimization jobs"). ``optimize``
queues one, then follows it (``GET /v1/optimizations/{id}`` every ``POLL_S``) with its
newest progress message on a status line, and prints the child version once it
succeeded; ``--no-wait`` prints the job and returns.
"""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Any, Final

import typer

from ._admin import JsonOpt, TokenOpt, UrlOpt, split_ref
from ._client import ApiClient
from ._output import console, emit, fail, table, when

__all__ = ["POLL_S", "register_optimize"]

POLL_S: Final = 0.5  # seconds between two looks at a job
FINISHED: Final = ("succeeded", "failed")

TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=0, help="Stop waiting after this many seconds (0: never); the job "
                             "carries on, and the command exits 2.")]


def follow(client: ApiClient, job: dict[str, Any], *, timeout_s: float,
           label: str | None) -> dict[str, Any]:
    """Look at a job every ``POLL_S`` until it has finished; return its last view.

    ``label``: show a status line (``label: newest progress message``); None: quiet.
    Exits 2 (``fail``) when the job has not finished within ``timeout_s`` (0: no limit).
    """
    deadline = time.monotonic() + timeout_s if timeout_s else None
    status = console.status(label) if label is not None else contextlib.nullcontext()
    with status as line:
        while job["state"] not in FINISHED:
            if deadline is not None and time.monotonic() >= deadline:
                fail(f"optimization {job['id']} is still {job['state']} after {timeout_s:g} s; "
                     f"it carries on: `edgefleet model optimization {job['id']} --wait` "
                     "follows it", code=2)
            time.sleep(POLL_S)
            job = client.call("GET", f"/v1/optimizations/{job['id']}")
            if line is not None:
                said = job["progress"][-1]["message"] if job["progress"] else \
                    "waiting for a worker" if job["state"] == "queued" else job["state"]
                line.update(f"{label}: {said}")
    return job


def failure_line(job: dict[str, Any]) -> str:
    """``optimize failed at <stage>: <Type>: <message>`` for a failed job."""
    err = job["error"] or {}
    return (f"optimize failed at {err.get('stage', 'optimize')}: "
            f"{err.get('type', 'Error')}: {err.get('message', '')}")


def show_child(name: str, version: int, row: dict[str, Any]) -> None:
    """The child version an optimization made: sizes, accuracy, latency and the choice."""
    rep = row["report"]
    onnx = rep.get("onnx", rep)
    def quality(k: str) -> str:
        if onnx[k].get("accuracy") is not None:
            return f"{onnx[k]['accuracy']:.4f}"
        fid = onnx.get("quality") or {}
        low = min((f["sqnr_db"] for f in fid.values() if isinstance(f, dict)), default=None)
        return "reference" if k == "fp32" else (f"SQNR {low:.1f} dB" if low is not None else "-")
    table(f"{name}:{version} → {name}:{row['version']} ({onnx['method']} tried, "
          f"{rep.get('shipped', row.get('variant'))} shipped)",
          ["", "size bytes", "accuracy" if onnx.get("metric", "top1") == "top1" else "fidelity",
           "p50 ms", "p95 ms"],
          [(k, f"{onnx[k]['size_bytes']:,}", quality(k), f"{onnx[k]['p50_ms']:.4f}",
            f"{onnx[k]['p95_ms']:.4f}") for k in ("fp32", "int8") if onnx.get(k)])
    for change in onnx.get("plan") or []:
        console.print(f"plan: {change}")
    if "classes" not in rep:
        console.print(f"shipped: [bold]{rep['shipped']}[/bold] — {rep.get('reason', '')}")
        return
    if rep["tflite"].get("why"):
        console.print(f".tflite: {rep['tflite']['why']}")
    table(f"variant per class (this machine: {rep['machine_class']})",
          ["class", "variant", "runtime", "precision", "basis", "why"],
          [(c["hardware_class"], c["variant"], c["runtime"], c["precision"], c["basis"],
            c["why"]) for c in rep["classes"]])


def show_job(job: dict[str, Any]) -> None:
    """A job for people: state, times, request, progress, then the result or the error."""
    console.print(f"[bold]{job['id']}[/bold] {job['model']}:{job['version']} — "
                  f"[bold]{job['state']}[/bold] (by {job['created_by']})")
    console.print(f"created {when(job['created_at'])}, started {when(job['started_at'])}, "
                  f"finished {when(job['finished_at'])}")
    req = job["request"]
    console.print(f"method {req['method']}, sparsity {req['sparsity']}, budget "
                  f"{req['accuracy_budget_pt']} pt"
                  + (f", classes {', '.join(req['hardware_classes'])}"
                     if req.get("hardware_classes") else ""))
    if job["progress"]:
        dropped = job.get("progress_dropped") or 0
        table("progress" + (f" ({dropped} earlier messages not kept)" if dropped else ""),
              ["time", "message"], [(when(p["ts"]), p["message"]) for p in job["progress"]])
    if job["state"] == "succeeded" and job["result"]:
        show_child(job["model"], job["version"], job["result"])
    elif job["state"] == "failed":
        reason = (job["error"] or {}).get("reason")
        console.print(f"[red]{failure_line(job)}[/red]" + (f" ({reason})" if reason else ""),
                      highlight=False)


def register_optimize(model_app: typer.Typer) -> None:
    """Add ``optimize``, ``optimization`` and ``optimizations`` to the model group."""

    @model_app.command("optimize")
    def model_optimize(
        ref: Annotated[str, typer.Argument(help="NAME:VERSION to optimize.")],
        method: Annotated[str, typer.Option(help="auto | static | dynamic | none")] = "auto",
        sparsity: Annotated[float, typer.Option(help="Magnitude pruning target, 0..1.")] = 0.0,
        budget: Annotated[float, typer.Option(
            help="Classifiers: max top-1 accuracy drop in points.")] = 1.0,
        task: Annotated[str, typer.Option(
            help="classification | detection | segmentation | sequence | embedding | other "
                 "(default: as registered, else detected); classifiers with labels are "
                 "judged by top-1, others by fidelity to fp32 (docs/optimizer.md).")] = "",
        min_sqnr: Annotated[float, typer.Option(
            help="Fidelity gate: every float output's SQNR vs fp32, dB.")] = 20.0,
        fallback: Annotated[bool, typer.Option(
            help="Keep the most sensitive nodes in float when int8 misses the gate.")]
        = True,
        evaluator: Annotated[str, typer.Option(
            help="module:function scoring outputs against labels (higher is better); must "
                 "be in the controller's optimize_evaluators.")] = "",
        hardware_class: Annotated[list[str] | None, typer.Option(
            "--hardware-class", help="Make a variant per class (repeat: rpi4, rpi5, "
            "jetson-orin, x86-vnni…); each class's choice and why are reported.")] = None,
        no_wait: Annotated[bool, typer.Option(
            "--no-wait", help="Print the queued job and return (follow it with `model "
                              "optimization ID --wait`).")] = False,
        timeout: TimeoutOpt = 1800.0,
        url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Quantize (and optionally prune) a version into a gated child version.

        The controller runs it as a job; this follows the job and shows its progress.
        A failed job exits 1 with the step it failed at.
        """
        name, version = split_ref(ref)
        classes = list(hardware_class or [])
        client = ApiClient(url, token)
        job = client.call("POST", f"/v1/models/{name}/{version}/optimize",
                          json={"method": method, "sparsity": sparsity,
                                "accuracy_budget_pt": budget, "hardware_classes": classes,
                                "task": task, "min_sqnr_db": min_sqnr, "fallback": fallback,
                                "evaluator": evaluator})
        if no_wait:
            if not emit(job, as_json):
                console.print(f"optimization [bold]{job['id']}[/bold] of {ref}: {job['state']}; "
                              f"follow it with `edgefleet model optimization {job['id']} "
                              "--wait`")
            return
        label = None if as_json else (f"optimizing {ref} (quantize, evaluate, gate"
                                      f"{', a variant per class' if classes else ''})")
        job = follow(client, job, timeout_s=timeout, label=label)
        if job["state"] == "failed":
            fail(failure_line(job), reason=(job["error"] or {}).get("reason"))
        row = job["result"]
        if not emit(row, as_json):
            show_child(name, version, row)

    @model_app.command("optimization")
    def model_optimization(
        job_id: Annotated[str, typer.Argument(help="Optimization job id (opt-…).")],
        wait: Annotated[bool, typer.Option(
            "--wait", help="Follow the job until it finishes; exit 1 if it failed.")] = False,
        timeout: TimeoutOpt = 1800.0,
        url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Show an optimization job: state, progress, and the child version or the error."""
        client = ApiClient(url, token)
        job = client.call("GET", f"/v1/optimizations/{job_id}")
        if wait:
            job = follow(client, job, timeout_s=timeout,
                         label=None if as_json else f"optimizing {job['model']}:{job['version']}")
        if not emit(job, as_json):
            show_job(job)
        if wait and job["state"] == "failed":
            raise typer.Exit(1)

    @model_app.command("optimizations")
    def model_optimizations(
        limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")]
        = 20,
        url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Recent optimization jobs, newest first (the controller keeps them in memory)."""
        jobs = ApiClient(url, token).call("GET", "/v1/optimizations", params={"limit": limit})
        if not emit(jobs, as_json):
            table("optimization jobs", ["id", "version", "state", "created", "by", "outcome"],
                  [(j["id"], f"{j['model']}:{j['version']}", j["state"], when(j["created_at"]),
                    j["created_by"],
                    f"{j['model']}:{j['result']['version']}" if j["result"]
                    else failure_line(j) if j["error"] else "")
                   for j in jobs])
