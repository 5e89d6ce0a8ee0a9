"""How a deployment is shown by the API and ``deployments watch --json`` (stable fields)."""

from __future__ import annotations

import collections
from typing import Any

__all__ = ["describe"]


def describe(dep: dict[str, Any]) -> dict[str, Any]:
    """A deployment as the API and ``deployments watch --json`` show it (stable fields)."""
    jobs = dep["jobs"]
    view: dict[str, Any] = {
        "id": dep["id"], "model": dep["model"], "version": dep["version"],
        "strategy": dep["strategy"], "state": dep["state"], "phase": dep["phase"],
        "wave": dep["wave"], "created_at": dep["created_at"], "created_by": dep["created_by"],
        "updated_at": dep["updated_at"], "policy": dep["policy"],
        "approval_required": "approval" in (dep["plan"] or {}),
        "approved_by": dep.get("approved_by"), "approved_at": dep.get("approved_at"),
        "reason": (dep.get("result") or {}).get("reason", ""),
        "metrics": (dep.get("result") or {}).get("metrics", {}),
    }
    if "waves" in (dep["plan"] or {}):
        outcomes = (dep.get("result") or {}).get("waves", {})
        waves = []
        for i, devices in enumerate(dep["plan"]["waves"]):
            states = collections.Counter(j["state"] for j in jobs if j["wave"] == i)
            waves.append({
                "index": i, "devices": len(devices), "healthy": states["healthy"],
                "failed": states["failed"] + states["rolled_back"],
                "silent": states["timed_out"], "reverted": states["reverted"],
                "pending": len(devices) - states["healthy"] - states["failed"]
                - states["rolled_back"] - states["timed_out"] - states["reverted"],
                "outcome": (outcomes.get(str(i)) or {}).get("outcome",
                                                           "waiting" if i > dep["wave"]
                                                           else "running")})
        view["waves"] = waves
    if "arms" in (dep["plan"] or {}):
        view["arms"] = (dep.get("result") or {}).get("arms", {})
    if dep["strategy"] == "shadow":
        view["shadow"] = (dep.get("result") or {}).get("shadow", {})
    view["jobs"] = [{k: j[k] for k in ("device", "state", "reason", "detail", "wave", "arm",
                                       "job", "progress", "from_version", "updated_at")}
                    for j in jobs]
    view["events"] = [{k: e[k] for k in ("ts", "actor", "kind", "detail")}
                      for e in dep.get("events", [])]
    return view
