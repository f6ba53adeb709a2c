"""All configuration, from `TRACKD_*` environment variables (and libpq's `PG*`).

Every value is checked here, when the settings are built, so that a bad one stops the process at
start with one line naming the variable (`load_settings`), never later with a traceback or a
retry loop. Messages never repeat a value that may hold a password.
"""

from __future__ import annotations

import math
import os
import re
import socket
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trackd.errors import ConfigError

ROLES = ("api", "mqtt", "worker")  # what `trackd serve` runs by default
OPTIONAL_ROLES = ("ais",)  # run only when named: the ais role needs TRACKD_AIS_URL
MAX_RETRY_STEP_S = 30 * 86400  # one step of the webhook retry schedule
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$|^[0-9A-Fa-f:.%]+$")  # a host name or an IP address


def _port_of(u: SplitResult) -> int | None:
    """The URL's port, or None when it names none; ValueError for anything but 1..65535."""
    try:
        port = u.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    return port


def _split(url: str, expected: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ValueError(f"not a valid URL ({exc}); expected {expected}") from None


class Settings(BaseSettings):
    # No infinities or NaNs: every float below bounds a wait, a rate or a threshold.
    model_config = SettingsConfigDict(env_prefix="TRACKD_", extra="ignore", allow_inf_nan=False)

    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    redis_prefix: str = "trackd"
    mqtt_url: SecretStr | None = None
    mqtt_topic_prefix: str = ""
    mqtt_client_id: str = Field(default_factory=lambda: f"trackd-{socket.gethostname()}", min_length=1)
    # Empty: one persistent subscription per ingester (it survives a broker restart). Set a group
    # name to split the load of several ingesters with an MQTT shared subscription.
    mqtt_share_group: str = ""
    mqtt_protocol: Literal["5", "3.1.1"] = "5"  # 3.1.1 for brokers without MQTT 5
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)
    log_level: str = "info"
    webhook_allow_private: bool = False
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_disable_after_h: float = Field(default=72.0, gt=0, le=8760)
    # Fair delivery (notify/delivery.py): sender slots per worker, in-flight limits across workers,
    # and the per-endpoint circuit breaker (failures in a row, then the first cool-down).
    webhook_senders: int = Field(default=32, ge=1, le=1024)
    webhook_endpoint_concurrency: int = Field(default=2, ge=1, le=64)
    webhook_tenant_concurrency: int = Field(default=8, ge=1, le=1024)
    webhook_breaker_failures: int = Field(default=5, ge=1, le=1000)
    webhook_breaker_cooldown_s: float = Field(default=30.0, gt=0, le=86400)
    secret_key: SecretStr | None = None
    metrics_token: SecretStr | None = None  # set: /metrics wants `Authorization: Bearer <token>`
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=1 << 30)
    max_message_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 27)  # MQTT payloads over it are quarantined
    request_timeout_s: float = Field(default=30.0, gt=0, le=3600)  # to send a whole request (headers and body)
    retention_days: int = Field(default=365, ge=1, le=36500)
    outbox_retention_hours: int = Field(default=48, ge=1, le=8760)
    eta_threshold_min: float = Field(default=15.0, gt=0, le=10080)
    stream_tick_ms: int = Field(default=250, ge=10, le=60000)
    stream_max_sockets_per_tenant: int = Field(default=2500, ge=1, le=1_000_000)  # per api process
    ingest_rate_per_s: float = Field(default=0.0, ge=0, le=1e6)  # 0: unlimited
    emission_factors: str | None = None
    tile_url: str | None = None
    tile_attribution: str | None = None
    pool_size: int = Field(default=10, ge=1, le=1000)
    guest_pool_size: int = Field(default=2, ge=1, le=100)  # for what no tenant is authenticated for
    ais_url: str | None = None  # tcp://host:port (a feed to connect to) or udp://[host]:port (to listen on)
    ais_min_interval_s: float = Field(default=60.0, ge=0, le=86400)  # positions kept per vessel, at most one per

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
        if not steps or any(not math.isfinite(s) or s < 0 or s > MAX_RETRY_STEP_S for s in steps):
            raise ValueError(f"must be comma-separated seconds, each from 0 to {MAX_RETRY_STEP_S}")
        return v

    @field_validator("database_url")
    @classmethod
    def _database(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return v
        from psycopg import Error as PsycopgError
        from psycopg.conninfo import conninfo_to_dict

        expected = "postgresql://user:password@host:port/dbname or libpq key=value pairs"
        try:
            params = conninfo_to_dict(v.get_secret_value())
        except PsycopgError as exc:
            # libpq's message quotes the string, password included: only its kind of fault is kept.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            hint = "; an IPv6 address needs its closing ']'" if "IPv6" in reason else ""
            hint += "; unknown query parameter" if "query parameter" in reason else ""
            hint += "; unknown connection option" if "connection option" in reason else ""
            raise ValueError(f"not a PostgreSQL connection string (expected {expected}){hint}") from None
        for port in str(params.get("port") or "").split(","):
            if port and not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError(f"port {port[:20]!r} is not a number from 1 to 65535")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        expected = "redis://[user:password@]host:port/db, rediss://... or unix:///path"
        u = _split(v.get_secret_value(), expected)
        if u.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(f"must be a redis:// URL ({expected})")
        _port_of(u)
        if u.scheme == "unix":
            if not u.path:
                raise ValueError("unix:// needs the socket's path: unix:///path/to/redis.sock")
        else:
            if not u.hostname:
                raise ValueError(f"names no host ({expected})")
            db = u.path.lstrip("/")
            if db and not db.isdigit():
                raise ValueError("the path must be the database number, e.g. redis://host:6379/0")
        return v

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            u = _split(v.get_secret_value(), "mqtt://user:pass@host:port")
            if u.scheme not in {"mqtt", "mqtts"} or not u.hostname:
                raise ValueError("must be mqtt://user:pass@host:port")
            _port_of(u)
        return v

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _topic_prefix(cls, v: str) -> str:
        if any(c in v for c in "+#\0"):
            raise ValueError("must not hold the MQTT wildcards '+' or '#'")
        return v

    @field_validator("mqtt_share_group")
    @classmethod
    def _share_group(cls, v: str) -> str:
        if any(c in v for c in "/+#\0"):
            raise ValueError("must not hold '/', '+' or '#'")
        return v

    @field_validator("http_host")
    @classmethod
    def _http_host(cls, v: str) -> str:
        if not _HOST.match(v):
            raise ValueError("must be an IP address or a host name, e.g. 127.0.0.1 or 0.0.0.0")
        return v

    @field_validator("emission_factors")
    @classmethod
    def _factors(cls, v: str | None) -> str | None:
        if v:
            from trackd import emissions

            try:
                emissions.load_factors(v)
            except ConfigError as exc:
                raise ValueError(exc.detail.removeprefix("emission factors: ")) from None
        return v or None

    @field_validator("ais_url")
    @classmethod
    def _ais(cls, v: str | None) -> str | None:
        if v:
            u = _split(v, "tcp://host:port or udp://:port")
            if u.scheme not in {"tcp", "udp"} or (u.scheme == "tcp" and not u.hostname) or u.path not in {"", "/"}:
                raise ValueError("must be tcp://host:port (a feed to read) or udp://:port (a port to listen on)")
            if _port_of(u) is None:
                raise ValueError("needs a port: tcp://host:port or udp://:port")
        return v or None

    @field_validator("tile_url")
    @classmethod
    def _tiles(cls, v: str | None) -> str | None:
        if v and (urlsplit(v).scheme not in {"http", "https"} or not all(p in v for p in ("{z}", "{x}", "{y}"))):
            raise ValueError("must be an http(s) tile URL template with {z}, {x} and {y}")
        return v or None

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
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{name}: {message}") from None


def has_database_config() -> bool:
    return bool(os.environ.get("TRACKD_DATABASE_URL") or os.environ.get("PGHOST") or os.environ.get("PGDATABASE"))
