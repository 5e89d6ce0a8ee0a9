"""The edgefleet controller: registry, signing, deployments, ingest and the HTTP API."""

from .rollout import RolloutPolicy
from .service import FleetController, select_devices
from .settings import Settings
from .signing import TrustExpiry, TrustRepository, init_keys
from .store import Store

__all__ = [
    "FleetController",
    "RolloutPolicy",
    "Settings",
    "Store",
    "TrustExpiry",
    "TrustRepository",
    "init_keys",
    "select_devices",
]
