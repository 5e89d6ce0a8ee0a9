"""HTTP routes for deployments: create one with a rollout policy, read it and its
events, approve it (four-eyes) and steer it (``/v1/deployments…``).

The deploy body's ``policy`` is ``rollout.RolloutPolicy`` itself, so the schema and the
checks are one definition; the strategy is the body's own field, beside the policy.
"""

# FastAPI reads annotations at runtime, so no "from __future__ import annotations" here.

from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from starlette.convertors import Convertor, register_url_convertor

from edgefleet.contract import RegistryError

from ._api_security import ActorName, note
from ._api_types import INT64_MAX, JsonInt
from ._views import describe
from .rollout import ACTIONS, STRATEGIES, RolloutPolicy, Strategy

if TYPE_CHECKING:
    from .service import FleetController

__all__ = ["DEPLOYMENT_ACTIONS", "DeployBody", "add_deployment_routes"]


class DeployBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false, "1" not 1
    model: str = Field(min_length=1, max_length=64)
    version: JsonInt = Field(ge=1, le=INT64_MAX)
    devices: list[str] | None = Field(None, min_length=1)
    selector: dict[str, str] | None = None
    strategy: Strategy = "all-at-once"
    policy: RolloutPolicy = Field(
        default_factory=RolloutPolicy,
        description="how it proceeds and what stops it (fields left out keep their defaults)")

    @model_validator(mode="before")
    @classmethod
    def _policy_of_the_strategy(cls, data: Any) -> Any:
        """The policy is judged for the body's strategy (a canary's default waves, the
        one wave of all-at-once), which it does not name itself."""
        if not isinstance(data, dict) or not isinstance(data.get("policy", {}), dict):
            return data  # the schema refuses it
        policy = data.get("policy", {})
        if "strategy" in policy:
            raise PydanticCustomError("value_error", "policy.strategy: the strategy is the "
                                                     "body's own field, beside the policy")
        strategy = data.get("strategy", "all-at-once")
        if strategy not in STRATEGIES:
            return data  # refused as the body's strategy
        return {**data, "policy": {**policy, "strategy": strategy}}


# what ``POST …/{dep_id}/{action}`` does; ``approve`` has a route of its own (four-eyes)
DEPLOYMENT_ACTIONS = tuple(a for a in ACTIONS if a != "approve")


class _ActionConvertor(Convertor[str]):
    """Only a deployment action matches ``{action}``, so ``POST …/{dep_id}/events`` is a
    405 (events are read with GET), not a 422 for an unknown action."""

    regex = "|".join(DEPLOYMENT_ACTIONS)

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("deployment_action", _ActionConvertor())


def add_deployment_routes(app: FastAPI, ctl: "FleetController") -> None:
    """Add the deployment routes to the controller's app."""

    @app.post("/v1/deployments", status_code=201)
    def create_deployment(request: Request, user: ActorName,
                          body: DeployBody) -> dict[str, Any]:
        dep = ctl.deploy(body.model, body.version, devices=body.devices,
                         selector=body.selector, created_by=user, policy=body.policy)
        view = describe(ctl.store.get_deployment(dep["id"], with_events=True))
        note(request, body=body.model_dump(mode="json"),
             after={"id": view["id"], "state": view["state"]})
        return view

    @app.get("/v1/deployments")
    def list_deployments(_: ActorName) -> list[dict[str, Any]]:
        return ctl.store.list_deployments()

    @app.get("/v1/deployments/{dep_id}")
    def get_deployment(_: ActorName, dep_id: str) -> dict[str, Any]:
        return describe(ctl.store.get_deployment(dep_id, with_events=True))

    @app.get("/v1/deployments/{dep_id}/events")
    def deployment_events(_: ActorName, dep_id: str) -> list[dict[str, Any]]:
        ctl.store.get_deployment(dep_id)
        return ctl.store.events(dep_id)

    def act(request: Request, user: str, dep_id: str, action: str) -> dict[str, Any]:
        before = ctl.store.get_deployment(dep_id)["state"]
        view = describe(ctl.orchestrator.act(dep_id, action, user))
        note(request, before={"state": before}, after={"state": view["state"]})
        return view

    @app.post("/v1/deployments/{dep_id}/approve")
    def approve_deployment(request: Request, user: ActorName, dep_id: str) -> dict[str, Any]:
        """Four-eyes: start a deployment to production devices someone else created."""
        try:
            return act(request, user, dep_id, "approve")
        except RegistryError as exc:
            if exc.reason == "four_eyes":
                raise HTTPException(403, str(exc)) from exc
            raise

    @app.post("/v1/deployments/{dep_id}/{action:deployment_action}")
    def deployment_action(request: Request, user: ActorName, dep_id: str,
                          action: Literal[DEPLOYMENT_ACTIONS]) -> dict[str, Any]:  # type: ignore[valid-type]
        return act(request, user, dep_id, action)
