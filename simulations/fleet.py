"""A fleet of real agents in one process: the harness behind the demo and the tests.

Each simulated device is a real ``Agent`` — its own MQTT connection, state
directory, SQLite buffer, TUF metadata and local v2 endpoint. With
``with_links=True`` each agent reaches the broker through its own ``LinkProxy`` so
its network can be taken away (``cut``) and given back (``restore``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgefleet.agent import Agent, AgentConfig
from edgefleet.contract import Clock

from .netem import LinkProxy

__all__ = ["Fleet", "wait_until"]

log = logging.getLogger(__name__)


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise ``TimeoutError`` if not."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s:.1f}s")
        time.sleep(interval_s)


class Fleet:
    """N agents named ``{prefix}-{i}`` under ``root``.

    Args:
        root: parent of the agents' state directories.
        broker_url: where the agents connect (through their proxies if ``with_links``).
        trust_root: the pinned ``root.json``.
        size: number of agents.
        with_links: route each agent through its own cuttable TCP proxy.
        clock: shared clock for telemetry windows (a ``ManualClock`` in tests).
        tags: tags every agent reports.
        passwords: MQTT password per device id (for a broker that refuses anonymous).
        overrides: extra ``AgentConfig`` fields for every agent.
    """

    def __init__(self, root: Path, broker_url: str, trust_root: Path, size: int = 3, *,
                 prefix: str = "dev", with_links: bool = False, clock: Clock | None = None,
                 tags: dict[str, str] | None = None,
                 passwords: dict[str, str] | None = None, **overrides: Any) -> None:
        self.root = root
        self.broker_url = broker_url
        self.trust_root = trust_root
        self.clock = clock
        self.with_links = with_links
        self.tags = tags or {}
        self.passwords = passwords or {}
        self.overrides = overrides
        self.agents: dict[str, Agent] = {}
        self.links: dict[str, LinkProxy] = {}
        self.ids = [f"{prefix}-{i + 1}" for i in range(size)]

    def config_for(self, device_id: str) -> AgentConfig:
        url = self.broker_url
        if self.with_links:
            url = self.links[device_id].url
        fields = {"api_port": 0, "summary_window_s": 60.0, "reconnect_min_s": 0.2,
                  "reconnect_max_s": 2.0, "keepalive_s": 5, **self.overrides}
        return AgentConfig(device_id=device_id, state_dir=self.root / device_id,
                           trust_root=self.trust_root, broker_url=url,
                           mqtt_password=self.passwords.get(device_id),
                           tags=dict(self.tags), **fields)

    def start(self, ids: list[str] | None = None) -> None:
        """Start agents (all by default) without waiting for them to connect."""
        parsed = urlparse(self.broker_url)
        for device_id in ids or self.ids:
            if self.with_links and device_id not in self.links:
                link = LinkProxy(parsed.hostname or "127.0.0.1", parsed.port or 1883)
                link.start()
                self.links[device_id] = link
            agent = Agent(self.config_for(device_id), clock=self.clock)
            agent.start()
            self.agents[device_id] = agent

    def wait_connected(self, timeout_s: float = 15.0, ids: list[str] | None = None) -> None:
        """Raises: TimeoutError if an agent has not connected in time."""
        for device_id in ids or list(self.agents):
            if not self.agents[device_id].link.wait_connected(timeout_s):
                raise TimeoutError(f"{device_id} did not connect within {timeout_s:.0f}s")

    def stop_agent(self, device_id: str) -> None:
        agent = self.agents.pop(device_id)
        agent.stop()

    def restart_agent(self, device_id: str) -> Agent:
        """Stop an agent (if running) and start a new one on the same state directory."""
        if device_id in self.agents:
            self.stop_agent(device_id)
        self.start([device_id])
        return self.agents[device_id]

    def cut(self, device_id: str) -> None:
        """Take one agent's network away (needs ``with_links``)."""
        self.links[device_id].cut()

    def restore(self, device_id: str) -> None:
        self.links[device_id].restore()

    def stop(self) -> None:
        for device_id in list(self.agents):
            try:
                self.stop_agent(device_id)
            except Exception:  # keep stopping the others
                log.exception("stopping %s failed", device_id)
        for link in self.links.values():
            link.stop()
        self.links.clear()

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

