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
    admin_token: str = Field(default="", repr=False,
                             description="bootstrap admin bearer token (actor name 'admin')")
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    client_id: str = "edgefleet-controller"
    mqtt_username: str | None = None  # with a broker that refuses anonymous clients
    mqtt_password: str | None = Field(default=None, repr=False)
    # provisioning: where the controller keeps Mosquitto's passwd/acl (None: it does not
    # manage the broker's credentials), how to make the broker re-read them, and the
    # broker URL handed to newly provisioned devices (default: broker_url)
    broker_ca_file: Path | None = None  # mqtts:// brokers: CA to verify them with
    broker_auth_dir: Path | None = None
    broker_reload_command: str | None = None
    device_broker_url: str | None = None
    command_ttl_s: float = 3600.0
    trust_refresh_interval_s: float = 300.0
    rollout_tick_s: float = 0.5
    max_upload_bytes: int = 200 * 1024 * 1024
    # deployments to a device with this tag (key=value; "" disables) wait for a second person
    production_tag: str = "env=production"

    @field_validator("production_tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if v and (v.startswith("=") or "=" not in v):
            raise ValueError("production_tag must look like key=value (or be empty)")
        return v

    @field_validator("broker_url")
    @classmethod
    def _mqtt_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("mqtt://", "tcp://", "mqtts://")):
            raise ValueError("broker_url must look like mqtt://host:port or mqtts://host:port")
        return v
