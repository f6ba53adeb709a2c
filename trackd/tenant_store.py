"""Tenants: their API keys and ingest secrets (kept hashed or encrypted), rotation with a grace
period, and the lookups that authenticate a request (every comparison is constant-time); their
settings: the branding of the public tracking page and the retention of their data."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from trackd import keys
from trackd.errors import ConfigError
from trackd.store import Conn, Row, Tenant, transaction

log = logging.getLogger("trackd.tenants")
_TENANT_CACHE: dict[bytes, tuple[float, Tenant, float]] = {}  # digest -> (cached until, tenant, key valid until)
_SECRET_CACHE: dict[str, tuple[float, IngestSecrets]] = {}
_WARNED: set[tuple[int, str]] = set()  # (tenant id, brand field) already warned of
# Seconds. A key or secret a process has cached stays accepted this long after a rotation ends its
# grace (the cache saves a database read per request; a few seconds is all it needs for that).
_CACHE_TTL = 5.0
# What unknown tenants are checked against, so that they cost what known ones do (never matches).
_DUMMY_SECRET = keys.new_ingest_secret()


@dataclass(frozen=True, slots=True)
class IngestSecrets:
    """A tenant's ingest secret and, during a rotation's grace period, the one it replaced."""

    tenant: Tenant
    current: str
    previous: str | None
    previous_until: float  # time.monotonic() at which `previous` stops being valid

    def candidates(self, now: float) -> tuple[str, str]:
        """Always two secrets to check (a dummy in place of an absent or expired previous one)."""
        return self.current, self.previous if self.previous is not None and now < self.previous_until else _DUMMY_SECRET


async def box_for(conn: Conn, secret_key: str | None) -> keys.SecretBox:
    if secret_key:
        return keys.SecretBox(keys.fernet_for(secret_key))
    await conn.execute(
        "INSERT INTO keyring (name, key) VALUES ('ingest', %s) ON CONFLICT (name) DO NOTHING",
        (keys.generate_keyring_key(),),
    )
    row = await (await conn.execute("SELECT key FROM keyring WHERE name = 'ingest'")).fetchone()
    assert row is not None
    return keys.SecretBox(keys.fernet_for(row["key"]))


async def create_tenant(pool: AsyncConnectionPool, name: str, secret_key: str | None) -> dict[str, str]:
    api_key, ingest_secret = keys.new_api_key(), keys.new_ingest_secret()
    async with transaction(pool) as conn:
        box = await box_for(conn, secret_key)
        await conn.execute(
            "INSERT INTO tenants (name, api_key_hash, ingest_secret_enc) VALUES (%s, %s, %s)",
            (name, keys.hash_key(api_key), box.seal(ingest_secret)),
        )
    return {"tenant": name, "api_key": api_key, "ingest_secret": ingest_secret}


async def rotate_api_key(pool: AsyncConnectionPool, name: str, grace_s: float) -> tuple[str, datetime] | None:
    """A new API key for tenant `name` (None: no such tenant). The key it replaces stays valid for
    `grace_s` seconds, until the returned time; a key replaced earlier and still in its grace ends now."""
    api_key = keys.new_api_key()
    async with transaction(pool) as conn:
        row = await (
            await conn.execute(
                "UPDATE tenants SET previous_api_key_hash = api_key_hash,"
                " previous_api_key_expires_at = now() + make_interval(secs => %s), api_key_hash = %s"
                " WHERE name = %s RETURNING previous_api_key_expires_at",
                (float(grace_s), keys.hash_key(api_key), name),
            )
        ).fetchone()
    _TENANT_CACHE.clear()
    return None if row is None else (api_key, row["previous_api_key_expires_at"])


async def rotate_ingest_secret(
    pool: AsyncConnectionPool, name: str, secret_key: str | None, grace_s: float
) -> tuple[str, datetime] | None:
    """A new ingest secret for tenant `name` (None: no such tenant). Signatures made with the one it
    replaces are accepted for `grace_s` seconds, until the returned time; only one previous secret is kept."""
    secret = keys.new_ingest_secret()
    async with transaction(pool) as conn:
        box = await box_for(conn, secret_key)
        row = await (
            await conn.execute(
                "UPDATE tenants SET previous_ingest_secret_enc = ingest_secret_enc,"
                " previous_ingest_secret_expires_at = now() + make_interval(secs => %s), ingest_secret_enc = %s"
                " WHERE name = %s RETURNING previous_ingest_secret_expires_at",
                (float(grace_s), box.seal(secret), name),
            )
        ).fetchone()
    _SECRET_CACHE.pop(name, None)
    return None if row is None else (secret, row["previous_ingest_secret_expires_at"])


async def tenant_for_api_key(pool: AsyncConnectionPool, api_key: str) -> Tenant | None:
    """The tenant whose API key is `api_key`, or whose previous key it is while that is in its grace."""
    digest = keys.hash_key(api_key)
    now = time.monotonic()
    hit = _TENANT_CACHE.get(digest)
    if hit and hit[0] > now and hit[2] > now:
        return hit[1]
    async with transaction(pool) as conn:
        row = await (
            await conn.execute(
                "SELECT id, name, api_key_hash, previous_api_key_hash,"
                " extract(epoch FROM previous_api_key_expires_at - now())::float8 AS previous_left_s"
                " FROM tenants WHERE api_key_hash = %s"
                " OR (previous_api_key_hash = %s AND previous_api_key_expires_at > now())",
                (digest, digest),
            )
        ).fetchone()
    if row is None:
        return None
    # Both compared, always: how long this takes does not tell which of the two matched.
    current = keys.same(bytes(row["api_key_hash"]), digest)
    previous = keys.same(bytes(row["previous_api_key_hash"] or b""), digest)
    left_s = float(row["previous_left_s"] or 0.0)
    if not (current or (previous and left_s > 0)):
        return None
    tenant = Tenant(row["id"], row["name"])
    _TENANT_CACHE[digest] = (now + _CACHE_TTL, tenant, math.inf if current else now + left_s)
    return tenant


async def _load_secrets(pool: AsyncConnectionPool, name: str, secret_key: str | None) -> IngestSecrets | None:
    """The ingest secrets of tenant `name` from the database (cached), or None. An unknown name
    costs the same reads and a decryption too."""
    async with transaction(pool) as conn:
        row = await (
            await conn.execute(
                "SELECT id, name, ingest_secret_enc, previous_ingest_secret_enc,"
                " extract(epoch FROM previous_ingest_secret_expires_at - now())::float8 AS previous_left_s"
                " FROM tenants WHERE name = %s",
                (name,),
            )
        ).fetchone()
        box = await box_for(conn, secret_key)
    if row is None:
        box.open(box.seal(_DUMMY_SECRET))
        return None
    now, left_s = time.monotonic(), float(row["previous_left_s"] or 0.0)
    previous = None
    if row["previous_ingest_secret_enc"] is not None and left_s > 0:
        try:
            previous = box.open(row["previous_ingest_secret_enc"])
        except ConfigError:  # sealed under an older TRACKD_SECRET_KEY: only the current one works
            previous = None
    found = IngestSecrets(Tenant(row["id"], row["name"]), box.open(row["ingest_secret_enc"]), previous, now + left_s)
    _SECRET_CACHE[name] = (now + _CACHE_TTL, found)
    return found


async def tenant_with_secret(pool: AsyncConnectionPool, name: str, secret_key: str | None) -> tuple[Tenant, str] | None:
    """The tenant called `name` and its current ingest secret (to sign with, or to know it exists).
    Verifying an inbound signature is `tenant_for_signature`, which also accepts the previous one."""
    hit = _SECRET_CACHE.get(name)
    if hit and hit[0] > time.monotonic():
        return hit[1].tenant, hit[1].current
    found = await _load_secrets(pool, name, secret_key)
    return None if found is None else (found.tenant, found.current)


async def tenant_for_signature(
    pool: AsyncConnectionPool, name: str, secret_key: str | None, signed: Callable[[str], bool]
) -> Tenant | None:
    """The tenant called `name` if `signed(secret)` holds for its ingest secret or, during a
    rotation's grace period, for the one before it; else None (unknown tenant or bad signature).

    Neither the answer nor its timing tells an unknown tenant from a bad signature: a failing call
    always runs `signed` four times (two secrets from the cache or dummies, then two from the
    database or dummies) around one database read. The cache is checked first; a signature it does
    not accept is checked against the database, so a secret rotated in another process works at once.
    """
    hit = _SECRET_CACHE.get(name)
    cached = hit[1] if hit and hit[0] > time.monotonic() else None
    if _signed_by_one(signed, cached) and cached is not None:
        return cached.tenant
    fresh = await _load_secrets(pool, name, secret_key)
    if _signed_by_one(signed, fresh) and fresh is not None:
        return fresh.tenant
    return None


def _signed_by_one(signed: Callable[[str], bool], found: IngestSecrets | None) -> bool:
    candidates = found.candidates(time.monotonic()) if found is not None else (_DUMMY_SECRET, _DUMMY_SECRET)
    results = [signed(secret) for secret in candidates]  # both checked, whichever matches
    return any(results)


MAX_BRAND_NAME = 80
MAX_URL = 2048
MAX_RETENTION_DAYS = 36500
# These rules are also the CHECKs of migration 015: nothing the database accepts is refused here.
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME_SPACE = " \t\n\r\f\v"  # what a name is trimmed of (ASCII only, as PostgreSQL sees it)
# Printable ASCII but for the quotes, angle brackets and the backslash (no IRIs: percent-encode).
_URL_CHARS = re.compile(r"[!#-&(-;=?-\[\]-~]+")
_PORT = r"(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_HOST = r"[A-Za-z0-9.-]+"  # a DNS name (IDNs in punycode) or an IPv4 address; no user info
_WEB_URL = re.compile(rf"(?P<scheme>https?)://(?P<host>{_HOST})(?::(?P<port>{_PORT}))?(?:[/?#].*)?", re.DOTALL)


def valid_name(value: object) -> str | None:
    """`value` trimmed when it is a brand name (1-80 characters, no control characters), else None."""
    if not isinstance(value, str):
        return None
    name = value.strip(_NAME_SPACE)
    return name if 1 <= len(name) <= MAX_BRAND_NAME and not _CONTROL.search(name) else None


def valid_colour(value: object) -> str | None:
    """`value` in lower case when it is a colour as `#RRGGBB`, else None."""
    return value.lower() if isinstance(value, str) and _COLOUR.fullmatch(value) else None


def _url_parts(value: object) -> re.Match[str] | None:
    if not isinstance(value, str) or not _URL_CHARS.fullmatch(value):
        return None
    return _WEB_URL.fullmatch(value)


def valid_web_url(value: object) -> str | None:
    """`value` when it is an absolute http(s) URL of at most 2048 characters with a host a policy
    can name (and a port, if any, of 0-65535), else None."""
    return value if isinstance(value, str) and len(value) <= MAX_URL and _url_parts(value) else None


def web_origin(value: object) -> str | None:
    """The origin (`https://host[:port]`, the host in lower case) of a `valid_web_url`, else None."""
    parts = _url_parts(value) if valid_web_url(value) else None
    if parts is None:
        return None
    port = parts["port"]
    return f"{parts['scheme']}://{parts['host'].lower()}" + (f":{int(port)}" if port is not None else "")


def _web_url(option: str, value: str) -> str:
    """`value` if it is a `valid_web_url`, else a ConfigError naming `option`."""
    if _url_parts(value) is None:
        raise ConfigError(f"{option}: an absolute http:// or https:// URL, got {value!r}")
    if len(value) > MAX_URL:
        raise ConfigError(f"{option}: at most {MAX_URL} characters")
    return value


@dataclass(frozen=True, slots=True)
class Brand:
    """How a tenant's public tracking page looks: every field optional (None: trackd's own look).
    Validated on construction: a name of 1-80 characters (trimmed, no control characters), the
    colour `#RRGGBB` (kept lower case), absolute http(s) URLs whose host a policy can name."""

    name: str | None = None
    logo_url: str | None = None
    colour: str | None = None
    support_url: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            name = valid_name(self.name)
            if name is None:
                raise ConfigError(f"--brand-name: 1 to {MAX_BRAND_NAME} characters, no control characters")
            object.__setattr__(self, "name", name)
        if self.colour is not None:
            colour = valid_colour(self.colour)
            if colour is None:
                raise ConfigError(f"--brand-colour: a colour as #RRGGBB, got {self.colour!r}")
            object.__setattr__(self, "colour", colour)
        if self.logo_url is not None:
            _web_url("--brand-logo", self.logo_url)
        if self.support_url is not None:
            _web_url("--support-url", self.support_url)

    @classmethod
    def lenient(cls, name: object, logo_url: object, colour: object, support_url: object) -> tuple[Brand, list[str]]:
        """The brand of these values with each invalid one left out, and the names of those left out."""
        kept = {
            "name": valid_name(name),
            "logo_url": valid_web_url(logo_url),
            "colour": valid_colour(colour),
            "support_url": valid_web_url(support_url),
        }
        given = {"name": name, "logo_url": logo_url, "colour": colour, "support_url": support_url}
        dropped = [field for field, value in given.items() if value is not None and kept[field] is None]
        return cls(**kept), dropped

    def to_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "logo_url": self.logo_url, "colour": self.colour, "support_url": self.support_url}


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """What `trackd tenant set` stores per tenant; `retention_days` None: TRACKD_RETENTION_DAYS."""

    brand: Brand
    retention_days: int | None

    def __post_init__(self) -> None:
        if self.retention_days is not None and not 1 <= self.retention_days <= MAX_RETENTION_DAYS:
            raise ConfigError(f"--retention-days: 1 to {MAX_RETENTION_DAYS}")


SETTING_KEYS = frozenset({"brand_name", "brand_logo_url", "brand_colour", "support_url", "retention_days"})


def _settings_of(row: Row) -> TenantSettings:
    brand = Brand(row["brand_name"], row["brand_logo_url"], row["brand_colour"], row["support_url"])
    return TenantSettings(brand, row["retention_days"])


def check_settings(changes: dict[str, Any]) -> None:
    """Raise a ConfigError for the first setting in `changes` that `update_settings` would refuse."""
    unknown = set(changes) - SETTING_KEYS
    if unknown:
        raise ConfigError(f"unknown tenant settings: {', '.join(sorted(unknown))}")
    _settings_of({key: changes.get(key) for key in SETTING_KEYS})


async def update_settings(pool: AsyncConnectionPool, name: str, changes: dict[str, Any]) -> TenantSettings | None:
    """Set some of tenant `name`'s settings (of `SETTING_KEYS`; a None value clears one) and
    return them all; None when there is no such tenant. The values are validated before any write."""
    check_settings(changes)
    async with transaction(pool) as conn:
        row = await (
            await conn.execute(
                "SELECT brand_name, brand_logo_url, brand_colour, support_url, retention_days"
                " FROM tenants WHERE name = %s FOR UPDATE",
                (name,),
            )
        ).fetchone()
        if row is None:
            return None
        merged = {**row, **changes}
        settings = _settings_of(merged)  # validates the whole result
        await conn.execute(
            "UPDATE tenants SET brand_name = %s, brand_logo_url = %s, brand_colour = %s, support_url = %s,"
            " retention_days = %s WHERE name = %s",
            (*settings.brand.to_dict().values(), settings.retention_days, name),
        )
    return settings


async def brand_for(conn: Conn, tenant_id: int) -> Brand:
    """The tracking-page branding of a tenant (all None when unset or the tenant is gone). Never
    raises for what is stored: a value these rules refuse is left out, with one warning per process."""
    row = await (
        await conn.execute(
            "SELECT brand_name, brand_logo_url, brand_colour, support_url FROM tenants WHERE id = %s", (tenant_id,)
        )
    ).fetchone()
    if row is None:
        return Brand()
    brand, dropped = Brand.lenient(row["brand_name"], row["brand_logo_url"], row["brand_colour"], row["support_url"])
    for field in dropped:
        if (tenant_id, field) not in _WARNED:
            _WARNED.add((tenant_id, field))
            # The value is not logged: a URL can carry a token or credentials.
            log.warning("tenant %s: its stored brand %s is not valid and is left off its pages", tenant_id, field)
    return brand
