"""The ``edgefleet`` typer application: every command but the lean ``agent run`` path.

Controller-side imports happen inside the commands that need them, so a device with
only the ``[agent]`` extra can run any agent command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ._admin import devices_app, model_app
from ._bench import register_bench
from ._db import db_app
from ._identity import claim_tokens_app, register_identity
from ._image import image_app
from ._optimize import register_optimize
from ._output import JsonOpt, console, emit, fail, table, when
from ._process import configure_logging, wait_for_signal
from ._rollouts import deployments_app, register_deploy
from ._security import audit_app, tokens_app
from ._simulate import register_simulate
from ._telemetry import alerts_app, telemetry_app

__all__ = ["app"]

app = typer.Typer(help="edgefleet: deploy ML models to fleets of edge devices.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Signing keys and the trust root devices pin.", no_args_is_help=True)
controller_app = typer.Typer(help="Run the controller.", no_args_is_help=True)
agent_app = typer.Typer(help="Run or inspect the device agent.", no_args_is_help=True)
broker_app = typer.Typer(help="MQTT broker configuration.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(keys_app, name="keys")
app.add_typer(controller_app, name="controller")
app.add_typer(agent_app, name="agent")
app.add_typer(model_app, name="model")
app.add_typer(devices_app, name="devices")
app.add_typer(deployments_app, name="deployments")
app.add_typer(tokens_app, name="tokens")
app.add_typer(audit_app, name="audit")
app.add_typer(image_app, name="image")
app.add_typer(claim_tokens_app, name="claim-tokens")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(alerts_app, name="alerts")
app.add_typer(db_app, name="db")
register_identity(devices_app)
register_optimize(model_app)
register_deploy(app)
register_bench(app)
register_simulate(app)



@keys_app.command("init")
def keys_init(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the keys.")],
    force: Annotated[bool, typer.Option(help="Replace existing keys.")] = False,
    root_keys: Annotated[int, typer.Option(help="Root keys to make.")] = 1,
    root_threshold: Annotated[int, typer.Option(help="Root signatures needed.")] = 1,
    targets_keys: Annotated[int, typer.Option(help="Targets keys to make.")] = 1,
    targets_threshold: Annotated[int, typer.Option(help="Targets signatures needed.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Create the fleet's signing keys and the root.json devices pin.

    Root keys go to DIR/offline: move them off the controller after this.
    """
    from edgefleet.controller.keys import KeyPolicy, init_keys

    try:
        policy = KeyPolicy(root_keys=root_keys, root_threshold=root_threshold,
                           targets_keys=targets_keys, targets_threshold=targets_threshold)
        root = init_keys(directory, policy=policy, force=force)
    except (FileExistsError, ValueError) as exc:
        fail(str(exc))
    out = {"keys_dir": str(directory), "trust_root": str(root),
           "offline_keys": str(directory / "offline")}
    if not emit(out, as_json):
        console.print(f"keys written to {directory}; devices pin [bold]{root}[/bold]\n"
                      f"root keys are in {directory / 'offline'}: move them off this machine "
                      f"(`keys rotate` needs them back)")


@keys_app.command("rotate")
def keys_rotate(
    directory: Annotated[Path, typer.Option("--dir", help="The keys directory.")],
    role: Annotated[list[str] | None, typer.Option(
        "--role", help="Role whose keys to replace (root, targets, snapshot, timestamp, "
                       "command); repeat for several. None: re-sign the root only.")] = None,
    offline_dir: Annotated[Path | None, typer.Option(
        help="Where the current root keys are (default DIR/offline).")] = None,
    keys: Annotated[int | None, typer.Option(help="New key count for the rotated roles.")] = None,
    threshold: Annotated[int | None, typer.Option(
        help="New threshold for the rotated roles.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sign a new root version with the old and new root keys, replacing role keys.

    A running controller picks it up on its next trust refresh and re-signs its
    metadata; devices follow the root chain on their next update.
    """
    from edgefleet.controller.keys import KeyPolicy, rotate_keys

    policy = None
    if keys is not None or threshold is not None:
        n = keys or threshold or 1
        t = threshold or 1
        policy = KeyPolicy(root_keys=n, root_threshold=t, targets_keys=n, targets_threshold=t)
    try:
        result = rotate_keys(directory, roles=role or [], offline_dir=offline_dir, policy=policy)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if not emit(result, as_json):
        console.print(f"root version {result['version']} signed "
                      f"(rotated: {', '.join(result['rotated']) or 'nothing'}); "
                      f"expires {result['expires']}")


@controller_app.command("serve")
def controller_serve(
    keys: Annotated[Path, typer.Option("--keys", help="Directory from `keys init`.")],
    broker: Annotated[str | None, typer.Option(help="mqtt://host:port; omit for the embedded "
                                                    "broker.")] = None,
    db: Annotated[str, typer.Option(help="SQLAlchemy URL of the store.")]
    = "sqlite:///edgefleet-controller.db",
    data: Annotated[Path, typer.Option(help="Models and signed repository.")]
    = Path("controller-data"),
    host: Annotated[str, typer.Option(help="API listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8080,
    token: Annotated[str | None, typer.Option(
        help="Admin API token (env EDGEFLEET_TOKEN; default: DATA/admin-token, generated).")]
    = None,
    share_group: Annotated[str | None, typer.Option(
        help="Run as one of several replicas: MQTT 5 shared subscriptions in this group, one "
             "leader at a time (needs a broker; PostgreSQL across hosts).")] = None,
    client_id: Annotated[str | None, typer.Option(
        help="MQTT client id; each replica needs its own.")] = None,
    file_store: Annotated[str | None, typer.Option(
        help="Where model files and the signed repository live: 'directory' (under "
             "--data; the default) or 'database' (in --db, so replicas share no "
             "filesystem). Env EDGEFLEET_FILE_STORE.")] = None,
    db_upgrade: Annotated[bool | None, typer.Option(
        "--db-upgrade/--no-db-upgrade",
        help="Upgrade the store's schema at start (default: yes; env "
             "EDGEFLEET_DB_AUTO_UPGRADE). With --no-db-upgrade a store behind is refused "
             "until `edgefleet db upgrade` runs.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the controller: HTTP API + MQTT (+ the embedded broker without --broker)."""
    configure_logging(verbose)
    from edgefleet.contract import EdgefleetError
    from edgefleet.controller import FleetController, Settings
    from edgefleet.controller.api import create_app
    from edgefleet.controller.http import ApiServer

    admin = token or os.environ.get("EDGEFLEET_TOKEN", "") or _stored_token(data)
    if not (keys / "root.json").exists():
        fail(f"no keys in {keys}; run `edgefleet keys init --dir {keys}` first")
    try:
        extra = {k: v for k, v in (("share_group", share_group), ("client_id", client_id),
                                   ("db_auto_upgrade", db_upgrade),
                                   ("file_store", file_store)) if v is not None}
        if extra.get("share_group") and broker is None:
            fail("replicas (--share-group) need a shared broker: give --broker")
        settings = Settings(db_url=db, broker_url=broker, keys_dir=keys, data_dir=data,
                            admin_token=admin, api_host=host, api_port=port, **extra)
        ctl = FleetController(settings)
        ctl.start()
    except (EdgefleetError, ValueError) as exc:
        fail(str(exc))
    try:
        server = ApiServer(create_app(ctl), host, port)
        server.start()
    except (OSError, EdgefleetError) as exc:
        ctl.stop()
        fail(f"cannot serve the API on {host}:{port}: {exc}")
    console.print(f"controller API on {server.url} (OpenAPI: {server.url}/docs), "
                  f"broker {ctl.broker_url}")
    try:
        wait_for_signal()
    finally:
        server.stop()
        ctl.stop()


def _stored_token(data: Path) -> str:
    """The admin token kept in the data directory, generated (0600) on first use."""
    import secrets

    from edgefleet.contract.files import atomic_write

    path = data / "admin-token"
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(24)
    atomic_write(path, value.encode() + b"\n", mode=0o600)
    console.print(f"generated an admin API token in {path} (export EDGEFLEET_TOKEN=$(cat {path}))")
    return value


@broker_app.command("config")
def broker_config(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the files.")],
    device: Annotated[list[str], typer.Option("--device", "-d", help="Device id (repeat).")],
    port: Annotated[int, typer.Option(help="Listener port.")] = 8883,
    controller_user: Annotated[str, typer.Option(help="The controller's MQTT username.")]
    = "edgefleet-controller",
    as_json: JsonOpt = False,
) -> None:
    """Write a Mosquitto config (passwords + per-device ACLs) and credentials.json (0600)."""
    import secrets

    from edgefleet.contract.files import atomic_write
    from edgefleet.controller.brokerconf import write_broker_config

    creds_path = directory / "credentials.json"
    creds = json.loads(creds_path.read_text()) if creds_path.exists() else {"devices": {}}
    creds.setdefault("controller", {"username": controller_user,
                                    "password": secrets.token_urlsafe(18)})
    for d in device:
        creds["devices"].setdefault(d, secrets.token_urlsafe(18))
    try:
        conf = write_broker_config(directory, devices=creds["devices"],
                                   controller_user=creds["controller"]["username"],
                                   controller_password=creds["controller"]["password"],
                                   port=port)
    except ValueError as exc:
        fail(str(exc))
    atomic_write(creds_path, json.dumps(creds, indent=2).encode(), mode=0o600)
    out = {"config": str(conf), "credentials": str(creds_path),
           "devices": sorted(creds["devices"])}
    if not emit(out, as_json):
        console.print(f"wrote {conf} for {len(creds['devices'])} device(s); passwords are in "
                      f"{creds_path} (mode 0600)")


@agent_app.command("run")
def agent_run(
    config: Annotated[Path, typer.Option("--config", "-c", exists=True, dir_okay=False,
                                         help="agent.toml")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    provision_deadline_s: Annotated[float, typer.Option(
        help="First boot: give up provisioning after this long (0: keep trying).")] = 0.0,
) -> None:
    """Run the agent daemon until SIGTERM/SIGINT (provisioning it first if needed).

    ``edgefleet agent run`` from a shell does not come here: ``main`` runs it without
    typer (``_agent_run``); this entry is for callers of ``app`` itself."""
    from ._agent_run import run

    code = run(config, verbose=verbose, provision_deadline_s=provision_deadline_s)
    if code:
        raise typer.Exit(code)


@agent_app.command("status")
def agent_status(
    url: Annotated[str, typer.Option(help="The agent's local API.")] = "http://127.0.0.1:8470",
    as_json: JsonOpt = False,
) -> None:
    """Show a running agent's state: model, connection, buffer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v2/agent/status", timeout=5) as resp:
            status = json.load(resp)
    except OSError as exc:
        fail(f"cannot reach the agent at {url}: {exc}")
    if not emit(status, as_json):
        buf = status["buffer"]
        mib = lambda n: f"{(n or 0) / 1048576:.1f} MiB"  # noqa: E731
        table(f"agent {status['device_id']}", ["", ""], [
            ("connected", status["connected"]),
            ("active", _ref(status["active"])), ("last good", _ref(status["last_good"])),
            ("inferences", status["inferences"]), ("errors", status["errors"]),
            ("buffer", f"{mib(buf.get('bytes'))} of {mib(buf.get('cap_bytes'))}"),
            ("rows", f"{buf['raw_rows']} raw, {buf.get('summaries_stored', '?')} summaries "
                     f"({buf['summaries_unacked']} unsent)"),
            ("oldest unsent summary", when(buf["oldest_unacked_window_end"])),
            ("dropped", buf["dropped"]),
            ("evicted", f"{buf.get('evicted_raw', 0)} raw, "
                        f"{buf.get('evicted_summaries', 0)} summaries")])


def _ref(ref: dict | None) -> str:  # type: ignore[type-arg]
    return f"{ref['name']}:{ref['version']} (sha256 {ref['sha256'][:12]}…)" if ref else "-"


@app.command("demo")
def demo(
    devices: Annotated[int, typer.Option(min=1, max=50, help="Number of agents.")] = 3,
    workdir: Annotated[Path | None, typer.Option(help="Keep state here (default: temp).")]
    = None,
    as_json: JsonOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the whole loop in one process: broker, controller, agents, deploy, offline."""
    configure_logging(verbose)
    from edgefleet.simulations.demo import run_demo

    if as_json:
        report = run_demo(devices, workdir=workdir)
        emit(report, True)
        if not _demo_ok(report):
            raise typer.Exit(1)
        return
    with console.status("starting…") as status:
        def step(message: str) -> None:
            status.update(message)
            console.print(f"• {message}")

        report = run_demo(devices, workdir=workdir, progress=step)
    opt = report["optimization"]
    table("optimization", ["", "size bytes", "accuracy", "p50 ms"],
          [(k, f"{opt[k]['size_bytes']:,}", f"{opt[k]['accuracy']:.4f}", f"{opt[k]['p50_ms']:.4f}")
           for k in ("fp32", "int8")])
    console.print(f"shipped [bold]{opt['shipped']}[/bold] ({opt['method']}): {opt['reason']}")
    table(f"devices — deployment {report['deployment']['id']} {report['deployment']['state']}",
          ["device", "model version", "healthy", "inferences", "v2 accuracy", "summaries acked"],
          [(d["id"], d["model_version"], d["healthy"], d["inferences"], d["accuracy_v2"],
            d["summaries_acked"]) for d in report["devices"]])
    off = report["offline_check"]
    table("offline check", ["device", "inferences offline", "summaries offline", "replayed",
                            "lost"],
          [(off["device"], off["inferences_while_offline"], off["summaries_while_offline"],
            off["summaries_replayed"], off["summaries_lost"])])
    console.print(f"done in {report['elapsed_s']} s")
    if not _demo_ok(report):
        raise typer.Exit(1)


def _demo_ok(report: dict) -> bool:  # type: ignore[type-arg]
    return (all(d["healthy"] for d in report["devices"])
            and report["offline_check"]["summaries_lost"] == 0)
