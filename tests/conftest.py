"""Shared fixtures: a real Mosquitto on a free port, real keys, a real controller and agents."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _browser import browser  # noqa: F401 - the fixture, for the console's tests
from _nginx import NginxProcess
from _postgres import fresh_database, unavailable
from _support import ASSETS, TOKEN

from edgefleet.controller import FleetController, Settings, init_keys
from edgefleet.controller.keys import KeyPolicy
from edgefleet.simulations.brokers import MosquittoProcess
from edgefleet.simulations.fleet import Fleet

for _noisy in ("amqtt", "transitions"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    with MosquittoProcess(workdir=tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def trust_root(tmp_path: Path) -> Path:
    # two targets keys, both needed: every test exercises thresholds above one
    return init_keys(tmp_path / "keys", policy=KeyPolicy(targets_keys=2, targets_threshold=2))


@pytest.fixture
def evalset() -> dict[str, np.ndarray]:
    data = np.load(ASSETS / "eval.npz")
    return {"x": data["x"], "y": data["y"]}


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh database on the local PostgreSQL server (tests/_postgres.py)."""
    why = unavailable()
    if why:
        pytest.skip(why)
    with fresh_database() as url:
        yield url


@pytest.fixture
def db_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The controller fixture's store: SQLite, or with EDGEFLEET_TEST_DB=postgresql a fresh
    PostgreSQL database (to run the controller's scenarios on PostgreSQL)."""
    if os.environ.get("EDGEFLEET_TEST_DB", "sqlite") == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'ctl.db'}"


@pytest.fixture
def controller(tmp_path: Path, mosquitto: MosquittoProcess, trust_root: Path,
               db_url: str, request: pytest.FixtureRequest) -> Iterator[FleetController]:
    settings = Settings(db_url=db_url, broker_url=mosquitto.url,
                        keys_dir=trust_root.parent, data_dir=tmp_path / "ctl",
                        admin_token=TOKEN, client_id=f"ctl-{tmp_path.name}"[:60],
                        broadcast=request.node.get_closest_marker("pull_only") is None,
                        serve_repository=request.node.get_closest_marker(
                            "serve_repository") is not None)
    ctl = FleetController(settings)
    ctl.start()
    yield ctl
    ctl.stop()


@pytest.fixture
def make_fleet(tmp_path: Path, mosquitto: MosquittoProcess,
               trust_root: Path) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(size: int = 1, **kwargs: Any) -> Fleet:
        fleet = Fleet(tmp_path / f"fleet{len(fleets)}", mosquitto.url, trust_root, size,
                      prefix=kwargs.pop("prefix", f"dev{len(fleets)}"), **kwargs)
        fleets.append(fleet)
        fleet.start()
        fleet.wait_connected(15)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


@pytest.fixture
def transport() -> str:
    """How agents fetch bundles: ``mqtt`` (the default) or ``http`` (from nginx in front of
    the controller's repository); a test parametrizes it to run on both."""
    return "mqtt"


@pytest.fixture
def repository_nginx(tmp_path: Path, controller: FleetController) -> Iterator[NginxProcess]:
    """A real nginx serving the controller's TUF repository folder over HTTP."""
    with NginxProcess(controller.repo.repo_dir, tmp_path / "nginx") as nginx:
        yield nginx


@pytest.fixture
def agent_transport(transport: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``AgentConfig`` fields that make agents use ``transport``."""
    if transport == "mqtt":
        return {}
    nginx: NginxProcess = request.getfixturevalue("repository_nginx")
    return {"repository_url": nginx.url}
