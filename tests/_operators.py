"""Helpers for the operator-security scenarios: a controller without a broker, tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _support import TOKEN

from edgefleet.contract import Clock
from edgefleet.controller import FleetController, Settings

ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def offline_controller(root: Path, trust_root: Path, *, clock: Clock | None = None,
                       **settings: Any) -> FleetController:
    """A real controller (store, registry, API) that is not started: no broker, no threads.

    Enough for every API call that does not send anything to a device.
    """
    return FleetController(Settings(db_url=f"sqlite:///{root / 'ctl.db'}",
                                    keys_dir=trust_root.parent, data_dir=root / "ctl",
                                    admin_token=TOKEN, **settings), clock=clock)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_token(client: Any, name: str, role: str, **body: Any) -> dict[str, Any]:
    """Create a token through the API as the bootstrap admin; returns the answer."""
    resp = client.post("/v1/tokens", headers=ADMIN, json={"name": name, "role": role, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]
