"""Model cards: what a model version is for, what it was made from, where it fails."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from .service import FleetController

__all__ = ["ModelCardBody", "model_card"]


class ModelCardBody(BaseModel):
    """A model version's card: what it is for and what it is not (plain text each)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    intended_use: str = Field("", max_length=4000)
    data: str = Field("", max_length=4000, description="what it was trained and evaluated on")
    metrics: str = Field("", max_length=4000)
    limits: str = Field("", max_length=4000, description="where it must not be relied on")



def model_card(ctl: FleetController, name: str, version: int) -> dict[str, Any]:
    """A version's card as the API and the console show it.

    Raises:
        NotFoundError: no such model version.
    """
    ctl.registry.get(name, version)
    row = ctl.store.console.card(name, version)
    card = {f: "" for f in ModelCardBody.model_fields}
    card.update((row or {}).get("card") or {})
    return {"name": name, "version": version, "card": card,
            "updated_at": row["updated_at"] if row else None,
            "updated_by": row["updated_by"] if row else None}
