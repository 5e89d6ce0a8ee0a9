"""``edgefleet agent run``: the device daemon, with the standard library's argparse.

The rest of the command line is typer and rich; this command is parsed here instead so
the process a device keeps running imports the agent and nothing else (``main`` in
``edgefleet.cli`` routes ``agent run`` here before typer loads). The typer command of the
same name calls ``run`` too, so both behave alike.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._process import configure_logging, wait_for_signal

__all__ = ["main", "run"]


def run(config: Path, *, verbose: bool = False, provision_deadline_s: float = 0.0) -> int:
    """Provision on first boot, serve until SIGTERM/SIGINT; the exit status."""
    configure_logging(verbose)
    from edgefleet.agent import Agent, load_config
    from edgefleet.agent.provision import ProvisioningError, provision_from_config
    from edgefleet.agent.sdnotify import Watchdog, notify

    try:
        # first boot: get an identity with the claim token (no-op once provisioned)
        provision_from_config(config, deadline_s=provision_deadline_s)
        cfg = load_config(config)
        agent = Agent(cfg)
        agent.start()
    except (ValueError, OSError, ProvisioningError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    assert agent.server is not None
    grpc = f", gRPC on {agent.grpc.target}" if agent.grpc is not None else ""
    print(f"agent {cfg.device_id}: serving {agent.active or 'no model yet'} on "
          f"{agent.server.url}{grpc}, broker {cfg.broker_url}", flush=True)
    notify(f"READY=1\nSTATUS=serving on {agent.server.url}")  # no-op outside systemd
    watchdog = Watchdog(agent.alive)  # pings only under WatchdogSec=
    watchdog.start()
    try:
        wait_for_signal()
    finally:
        notify("STOPPING=1")
        watchdog.stop()
        agent.stop()
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="edgefleet agent run",
        description="Run the agent daemon until SIGTERM/SIGINT (provisioning it first if "
                    "needed).")
    parser.add_argument("--config", "-c", type=Path, required=True, help="agent.toml")
    parser.add_argument("--verbose", "-v", action="store_true", help="INFO logs")
    parser.add_argument("--provision-deadline-s", type=float, default=0.0,
                        help="First boot: give up provisioning after this long "
                             "(0: keep trying).")
    args = parser.parse_args(list(argv))
    if not args.config.is_file():
        parser.error(f"--config: {args.config} is not a file")
    return run(args.config, verbose=args.verbose,
               provision_deadline_s=args.provision_deadline_s)
