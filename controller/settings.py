"""Controller settings: one pydantic ``Settings``, from arguments or ``EDGEFLEET_*`` env vars."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything the controller needs; units are in the names."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", frozen=True)

    db_url: str = "sqlite:///edgefleet-controller.db"
    broker_url: str | None = None  # None: start the embedded broker
    keys_dir: Path = Path("keys")
    data_dir: Path = Path("controller-data")
    admin_token: str = Field(default="", description="bearer token for every API call")
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    client_id: str = "edgefleet-controller"
    mqtt_username: str | None = None  # with a broker that refuses anonymous clients
    mqtt_password: str | None = Field(default=None, repr=False)
    command_ttl_s: float = 3600.0
    trust_refresh_interval_s: float = 300.0
    rollout_tick_s: float = 0.5
    max_upload_bytes: int = 200 * 1024 * 1024

    @field_validator("broker_url")
    @classmethod
    def _mqtt_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("mqtt://", "tcp://")):
            raise ValueError("broker_url must look like mqtt://host:port")
        return v
