"""Controller settings: one pydantic ``Settings``, from arguments or ``EDGEFLEET_*`` env vars."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything the controller needs; units are in the names."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", frozen=True)

    db_url: str = "sqlite:///edgefleet-controller.db"
    # bring the store's schema to this controller's at start (off: a store behind is
    # refused until `edgefleet db upgrade` runs; for upgrades an operator schedules)
    db_auto_upgrade: bool = True
    broker_url: str | None = None  # None: start the embedded broker
    keys_dir: Path = Path("keys")
    data_dir: Path = Path("controller-data")
    # where model files and the signed TUF repository live (docs/operations.md):
    # "directory" = under data_dir (one controller, or replicas sharing it over NFS);
    # "database" = chunked rows in db_url's database (replicas share no filesystem;
    # data_dir then holds only local copies and this replica's own files)
    file_store: str = "directory"
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
    # job step statuses (downloading, verifying…) the controller asks a batch of desired
    # states to stay under, per second: a wave of n devices reports a step at most every
    # n / step_status_rate s (never more often than a device's own setting); a job's end
    # is never held back
    step_status_rate: float = Field(100.0, gt=0)
    # bundle files go out once, retained on fleet/v1/blob/{sha256}/…, for every device of
    # a wave to take (off: each device pulls every block); cleared broadcast_ttl_s after
    # their bundle was last sent
    broadcast: bool = True
    broadcast_ttl_s: float = Field(3600.0, gt=0)
    # GET /v1/repository/{file}: the TUF repository read-only over HTTP, without a token,
    # for devices with a repository_url (docs/security.md says why that is safe); off:
    # the route answers 404
    serve_repository: bool = False
    # replicas (docs/operations.md): MQTT 5 shared subscriptions in this group ("": one
    # controller); one replica at a time leads (rollouts, alerts, retention, re-signing)
    share_group: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,64}$")
    max_upload_bytes: int = 200 * 1024 * 1024
    # /docs, /redoc and /openapi.json without a token: the API's shape is what the open
    # source already says; False serves none of them
    public_api_docs: bool = True
    # deployments to a device with this tag (key=value; "" disables) wait for a second person
    production_tag: str = "env=production"

    # optimization jobs (docs/operations.md, "Optimization jobs"): off the request path
    optimize_workers: int = Field(1, ge=1, le=64)  # threads running optimizations
    optimize_queue_max: int = Field(16, ge=1)  # jobs waiting; beyond: POST answers 429
    # "module:function" evaluators optimize may be asked to run: code on this machine,
    # so only those an admin lists here (e.g. ["mytasks.metrics:map50"])
    optimize_evaluators: list[str] = Field(default_factory=list)
    optimize_history_max: int = Field(100, ge=1)  # finished jobs kept in memory

    # telemetry ingest (docs/alerts-and-queries.md): bounded queue, batched transactions
    telemetry_queue_max: int = Field(100_000, ge=1)  # summaries waiting; beyond: not acked
    telemetry_batch_max: int = Field(2000, ge=1)  # summaries per transaction
    telemetry_batch_wait_s: float = Field(0.05, ge=0)  # a batch waits this long to fill
    telemetry_gap_timeout_s: float = Field(30.0, ge=0)  # a seq gap holds back at most this
    # retention: raw summaries → hourly rollups → deleted
    telemetry_raw_retention_s: float = Field(7 * 86400.0, gt=0)
    telemetry_rollup_retention_s: float = Field(90 * 86400.0, gt=0)
    telemetry_maintenance_interval_s: float = Field(300.0, gt=0)
    # alerts: evaluated every alert_interval_s, sent to alert_webhook_url (None: not sent)
    alert_interval_s: float = Field(15.0, gt=0)
    alert_webhook_url: str | None = None
    alert_webhook_queue_max: int = Field(1000, ge=1)
    alert_webhook_max_attempts: int = Field(5, ge=1)
    alert_webhook_backoff_s: float = Field(1.0, ge=0)
    alert_cooldown_s: float = Field(900.0, ge=0)  # per alert key, between two messages
    alert_drift_warn: float = Field(0.1, gt=0)  # PSI: max(psi_mean, psi_predictions)
    alert_drift_alert: float = Field(0.25, gt=0)
    alert_drift_window_s: float = Field(900.0, gt=0)  # windows received this recently
    alert_cohort_tags: list[str] = Field(default_factory=list)  # cohorts also by these tags
    alert_latency_ratio: float = Field(1.2, gt=1)  # p95 of a version / the previous one's
    alert_latency_window_s: float = Field(900.0, gt=0)
    alert_latency_baseline_s: float = Field(86400.0, gt=0)
    alert_latency_min_count: int = Field(200, ge=1)
    alert_latency_interval_s: float = Field(300.0, gt=0)  # the latency rule reads a day
    alert_offline_after_s: float = Field(600.0, gt=0)
    alert_buffer_ratio: float = Field(0.9, gt=0, le=1)
    alert_rollback_window_s: float = Field(3600.0, gt=0)

    @field_validator("file_store")
    @classmethod
    def _file_store(cls, v: str) -> str:
        if v not in ("directory", "database"):
            raise ValueError(f"file_store (EDGEFLEET_FILE_STORE) is {v!r}: expected "
                             "'directory' or 'database'")
        return v

    @field_validator("production_tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if v and (v.startswith("=") or "=" not in v):
            raise ValueError("production_tag must look like key=value (or be empty)")
        return v

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("alert_webhook_url must be an http(s):// URL")
        return v

    @model_validator(mode="after")
    def _drift_levels(self) -> Settings:
        if self.alert_drift_warn > self.alert_drift_alert:
            raise ValueError("alert_drift_warn must not exceed alert_drift_alert")
        return self

    @field_validator("broker_url")
    @classmethod
    def _mqtt_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("mqtt://", "tcp://", "mqtts://")):
            raise ValueError("broker_url must look like mqtt://host:port or mqtts://host:port")
        return v
