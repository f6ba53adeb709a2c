"""All configuration, from `TRACKD_*` environment variables (and libpq's `PG*`)."""

from __future__ import annotations

import os
import socket
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trackd.errors import ConfigError

ROLES = ("api", "mqtt", "worker")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACKD_", extra="ignore")

    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    redis_prefix: str = "trackd"
    mqtt_url: SecretStr | None = None
    mqtt_topic_prefix: str = ""
    mqtt_client_id: str = Field(default_factory=lambda: f"trackd-{socket.gethostname()}")
    # Empty: one persistent subscription per ingester (it survives a broker restart). Set a group
    # name to split the load of several ingesters with an MQTT shared subscription.
    mqtt_share_group: str = ""
    mqtt_protocol: Literal["5", "3.1.1"] = "5"  # 3.1.1 for brokers without MQTT 5
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)
    log_level: str = "info"
    webhook_allow_private: bool = False
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_disable_after_h: float = Field(default=72.0, gt=0)
    secret_key: SecretStr | None = None
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    retention_days: int = Field(default=365, ge=1)
    outbox_retention_hours: int = Field(default=48, ge=1)
    eta_threshold_min: float = Field(default=15.0, gt=0)
    stream_tick_ms: int = Field(default=250, ge=10)
    ingest_rate_per_s: float = Field(default=0.0, ge=0)  # 0: unlimited
    emission_factors: str | None = None
    tile_url: str | None = None
    tile_attribution: str | None = None
    pool_size: int = Field(default=10, ge=1)

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be debug, info, warning, error or critical")
        return v.lower()

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        try:
            steps = [float(x) for x in v.split(",") if x.strip()]
        except ValueError:
            raise ValueError("must be comma-separated seconds") from None
        if not steps or any(s < 0 for s in steps):
            raise ValueError("must be comma-separated non-negative seconds")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and urlparse(v.get_secret_value()).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis:// URL")
        return v

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            u = urlparse(v.get_secret_value())
            if u.scheme not in {"mqtt", "mqtts"} or not u.hostname:
                raise ValueError("must be mqtt://user:pass@host:port")
        return v

    @property
    def retry_schedule(self) -> list[float]:
        return [float(x) for x in self.webhook_retry_schedule.split(",") if x.strip()]

    def dsn(self) -> str:
        """The PostgreSQL connection string; empty means libpq's `PG*` variables and defaults."""
        return self.database_url.get_secret_value() if self.database_url else ""

    def redis(self) -> str:
        return self.redis_url.get_secret_value() if self.redis_url else "redis://127.0.0.1:6379/0"

    def mqtt(self) -> str:
        return self.mqtt_url.get_secret_value() if self.mqtt_url else "mqtt://127.0.0.1:1883"


def load_settings(**overrides: object) -> Settings:
    """Build the settings or raise one `ConfigError` naming the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "TRACKD_" + str(err["loc"][0]).upper() if err["loc"] else "TRACKD_*"
        raise ConfigError(f"{name}: {err['msg']}") from None


def has_database_config() -> bool:
    return bool(os.environ.get("TRACKD_DATABASE_URL") or os.environ.get("PGHOST") or os.environ.get("PGDATABASE"))
