"""Admin commands: thin layers over the controller's HTTP API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._client import ApiClient
from ._output import JsonOpt, console, emit, fail, table

__all__ = ["devices_app", "model_app", "split_ref"]

UrlOpt = Annotated[str | None, typer.Option("--url", help="Controller URL (env EDGEFLEET_URL).")]
TokenOpt = Annotated[str | None, typer.Option("--token",
                                              help="API token (env EDGEFLEET_TOKEN).")]

model_app = typer.Typer(help="Register, list and optimize model versions.", no_args_is_help=True)
devices_app = typer.Typer(help="The fleet's devices.", no_args_is_help=True)


def _model_bytes(model: Path) -> bytes:
    """The model file as the controller takes it: one self-contained file (an ONNX model
    whose weights sit in external data files beside it is folded into one)."""
    data = model.read_bytes()
    if data[4:8] == b"TFL3" or b"location" not in data:  # .tflite, or no external data
        return data
    try:
        from edgefleet.optimizer import external_data_files, inline_external_data
    except ImportError:  # an admin machine without the optimizer extra
        return data
    from edgefleet.contract import OptimizationError

    try:
        if not external_data_files(model):
            return data
        return inline_external_data(model)
    except OptimizationError as exc:
        fail(str(exc))


def _input_kinds(values: list[str] | None) -> dict[str, str]:
    kinds = {}
    for item in values or []:
        name, sep, kind = item.rpartition("=")
        if not sep or not name or not kind:
            fail(f"--input-kind {item!r}: expected NAME=KIND, e.g. image=image")
        kinds[name] = kind
    return kinds


@model_app.command("register")
def model_register(
    name: Annotated[str, typer.Argument(help="Model name, e.g. digits.")],
    model: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False,
        help="The .onnx or .tflite file (an ONNX model's external data files, beside it, "
             "are folded in).")],
    eval_set: Annotated[Path | None, typer.Option(
        "--eval", exists=True,
        help=".npz: one array per model input, keyed by input name (x for a single-input "
             "model), samples on the first axis; y = integer labels.")] = None,
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", exists=True, help=".npz like --eval, labels not needed.")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels or a JSON file.")]
    = None,
    task: Annotated[str | None, typer.Option(
        help="classification | detection | segmentation | sequence | embedding | other "
             "(default: detected from the outputs); decides how drift is profiled.")] = None,
    input_kind: Annotated[list[str] | None, typer.Option(
        "--input-kind", help="NAME=KIND where detection would be wrong (repeat); KIND: image, "
                             "audio, tokens, tabular, stats, mask, skip.")] = None,
    hardware_class: Annotated[list[str] | None, typer.Option(
        "--hardware-class", help="Device class it is for (repeat; none: any). Signed: "
                                 "other devices refuse it.")] = None,
    security_release: Annotated[bool, typer.Option(
        help="Raise the release counter: devices that ran this version refuse every "
             "earlier one afterwards.")] = False,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Register a new version of a model; its eval and calibration data are checked
    against the model's inputs now (see docs/models.md for the formats)."""
    label_list: list[str] = []
    if labels:
        p = Path(labels)
        label_list = json.loads(p.read_text()) if p.exists() else labels.split(",")
    files = {"model": (model.name, _model_bytes(model))}
    if eval_set:
        files["eval_set"] = (eval_set.name, eval_set.read_bytes())
    if calibration:
        files["calibration"] = (calibration.name, calibration.read_bytes())
    data = {"name": name, "labels": json.dumps(label_list)}
    if task:
        data["task"] = task
    kinds = _input_kinds(input_kind)
    if kinds:
        data["input_kinds"] = json.dumps(kinds)
    if hardware_class:
        data["hardware_classes"] = json.dumps(hardware_class)
    if security_release:
        data["security_release"] = "true"
    row = ApiClient(url, token).call("POST", "/v1/models", files=files, data=data)
    if not emit(row, as_json):
        console.print(f"registered [bold]{row['name']}:{row['version']}[/bold] "
                      f"({row['size_bytes']:,} bytes, sha256 {row['sha256'][:12]}…)")


@model_app.command("add-variant")
def model_add_variant(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION the variant belongs to.")],
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                          help="The .onnx or .tflite file.")],
    variant: Annotated[str, typer.Option(help="Variant name, e.g. int8 or tflite-int8.")],
    hardware_class: Annotated[list[str], typer.Option(
        "--hardware-class", help="Class(es) that get this file (repeat).")],
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Give a version another file for some hardware classes; they get it, others refuse it."""
    name, _, version = ref.partition(":")
    if not version.isdigit():
        fail(f"expected NAME:VERSION, got {ref!r}")
    row = ApiClient(url, token).call(
        "POST", f"/v1/models/{name}/{version}/variants",
        files={"model": (model.name, model.read_bytes())},
        data={"variant": variant, "hardware_classes": json.dumps(hardware_class)})
    if not emit(row, as_json):
        console.print(f"{name}:{version} variant [bold]{row['variant']}[/bold] "
                      f"({row['runtime']}, {row['size_bytes']:,} bytes) for "
                      f"{', '.join(row['hardware_classes'])}")


@model_app.command("list")
def model_list(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List model versions with their lineage."""
    rows = ApiClient(url, token).call("GET", "/v1/models")
    if not emit(rows, as_json):
        table("model versions", ["name", "version", "parent", "variant", "size", "accuracy"],
              [(r["name"], r["version"], r["parent"], r["variant"], f"{r['size_bytes']:,}",
                (r["metrics"] or {}).get("accuracy")) for r in rows])


def split_ref(ref: str) -> tuple[str, int]:
    name, _, version = ref.partition(":")
    if not name or not version.isdigit():
        fail(f"expected NAME:VERSION, got {ref!r}")
    return name, int(version)


@devices_app.command("list")
def devices_list(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List devices: online state, active model, agent version, tags."""
    rows = ApiClient(url, token).call("GET", "/v1/devices")
    if not emit(rows, as_json):
        table("devices", ["id", "online", "active", "last good", "agent", "tags"],
              [(d["id"], "yes" if d["online"] else "no",
                f"{d['active']['name']}:{d['active']['version']}" if d["active"] else "-",
                f"{d['last_good']['name']}:{d['last_good']['version']}" if d["last_good"]
                else "-", d["agent_version"],
                ",".join(f"{k}={v}" for k, v in (d["tags"] or {}).items())) for d in rows])
