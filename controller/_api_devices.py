"""HTTP routes for device identity: claim tokens, first-boot provisioning, revocation.

``POST /v1/provision`` is the one route a device calls; it is authenticated by the
claim token in its body (``DEVICE`` in ``auth.ROUTES``), not by a bearer role. The
claim-token and revocation routes are for admins. A claim token's secret appears only
in the response that creates it; a device's MQTT password only in the response to its
own provisioning.
"""

# FastAPI reads annotations at runtime, so no "from __future__ import annotations" here.

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from ._api_security import ActorName, note
from ._api_types import JsonInt

if TYPE_CHECKING:
    from .service import FleetController

__all__ = ["add_device_routes"]


class ClaimTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false, "1" not 1
    label: str = Field(min_length=1, max_length=128)
    uses: JsonInt = Field(1, ge=1, le=100_000)
    ttl_s: float = Field(7 * 86400, gt=0, le=400 * 86400)


class ProvisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false, "1" not 1
    claim_token: str = Field(min_length=8, max_length=256)
    public_key: str = Field(min_length=32, max_length=4096)
    proof: str = Field(min_length=8, max_length=512)
    ts: float
    device_id: str | None = Field(None, min_length=1, max_length=64)


def add_device_routes(app: FastAPI, ctl: "FleetController") -> None:
    """Add the identity routes to the controller's app."""

    @app.post("/v1/provision", status_code=201)
    async def provision(request: Request, body: ProvisionBody) -> dict[str, Any]:
        answer = await run_in_threadpool(
            ctl.provision, claim_token=body.claim_token, public_key=body.public_key,
            proof=body.proof, ts=body.ts, device_id=body.device_id)
        note(request, actor=f"device:{answer['device_id']}",
             after={"device": answer["device_id"]})
        return answer

    @app.post("/v1/claim-tokens", status_code=201)
    def create_claim_token(request: Request, actor: ActorName,
                           body: ClaimTokenBody) -> dict[str, Any]:
        created = ctl.provisioner.create_claim_token(label=body.label, uses=body.uses,
                                                     ttl_s=body.ttl_s, created_by=actor)
        note(request, after={k: v for k, v in created.items() if k != "token"})
        return created

    @app.get("/v1/claim-tokens")
    def list_claim_tokens() -> list[dict[str, Any]]:
        return ctl.provisioner.list_claim_tokens()

    @app.delete("/v1/claim-tokens/{token_id}")
    def revoke_claim_token(request: Request, token_id: str) -> dict[str, Any]:
        revoked = ctl.provisioner.revoke_claim_token(token_id)
        note(request, after=revoked)
        return revoked

    @app.post("/v1/devices/{device_id}/revoke")
    def revoke_device(request: Request, actor: ActorName, device_id: str) -> dict[str, Any]:
        before = ctl.provisioner.identity(device_id)
        revoked = ctl.provisioner.revoke_device(device_id, actor=actor)
        note(request, before={"revoked_at": before["revoked_at"]},
             after={"revoked_at": revoked["revoked_at"]})
        return revoked

    @app.get("/v1/devices/{device_id}/identity")
    def device_identity(device_id: str) -> dict[str, Any]:
        return ctl.provisioner.identity(device_id)
