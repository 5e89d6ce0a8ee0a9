"""The edgefleet controller: registry, signing, deployments, ingest and the HTTP API."""

from .service import FleetController, deployment_state, select_devices
from .settings import Settings
from .signing import TrustExpiry, TrustRepository, init_keys
from .store import Store

__all__ = [
    "FleetController",
    "Settings",
    "Store",
    "TrustExpiry",
    "TrustRepository",
    "deployment_state",
    "init_keys",
    "select_devices",
]
