"""Reads and CRUD for the API, every query scoped to one tenant. Driver errors stop here.

The event write path lives in `ledger.py`; both share the shipment JSON shape built here.
"""

from __future__ import annotations

import base64
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, tuple_row
from psycopg_pool import AsyncConnectionPool

from trackd import keys
from trackd.errors import ConfigError, Conflict, Unavailable, ValidationError
from trackd.model import ref_key

Conn = AsyncConnection[DictRow]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Tenant:
    id: int
    name: str


async def tuples(conn: AsyncConnection[Any], query: str, params: Any) -> list[Any]:
    """Rows as tuples: for the many-row reads of a batch, dicts cost more than the query."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


@asynccontextmanager
async def transaction(pool: AsyncConnectionPool, wait_s: float | None = None) -> AsyncIterator[Conn]:
    """One connection (waiting up to `wait_s` for one, else the pool's timeout) and one transaction;
    driver errors become trackd errors here."""
    try:
        async with pool.connection(timeout=wait_s) as conn, conn.transaction():
            yield conn  # type: ignore[misc]
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(f"already exists: {exc.diag.constraint_name or 'unique key'}") from None
    except psycopg.errors.ForeignKeyViolation as exc:
        raise ValidationError("", f"refers to something that does not exist ({exc.diag.constraint_name})") from None
    except (psycopg.OperationalError, psycopg.errors.AdminShutdown, psycopg.InterfaceError) as exc:
        raise Unavailable(f"database unavailable: {str(exc).strip().splitlines()[0] if str(exc) else ''}") from None
    except TimeoutError:
        raise Unavailable("database unavailable: no connection within the timeout") from None
    except psycopg.DataError as exc:
        raise ValidationError("", str(exc).splitlines()[0]) from None


def new_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):011x}{secrets.token_hex(5)}"


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([str(p) for p in parts])).decode().rstrip("=")


def decode_cursor(cursor: str, n: int) -> list[str]:
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise ValidationError("cursor", "is not a cursor this API gave") from None
    if not isinstance(parts, list) or len(parts) != n or not all(isinstance(p, str) for p in parts):
        raise ValidationError("cursor", "is not a cursor this API gave")
    return parts


# A keyset order: (SQL expression, key in the row, cast of the cursor's value) per column.
Order = tuple[tuple[str, str, str], ...]
BY_CREATED_DESC: Order = (("created_at", "created_at", "timestamptz"), ("id", "id", "text"))


def _cursor_value(part: str, cast: str) -> Any:
    try:
        if cast == "timestamptz":
            return datetime.fromisoformat(part)
        if cast == "bigint":
            return int(part)
    except ValueError:
        raise ValidationError("cursor", "is not a cursor this API gave") from None
    return part


async def keyset_page(
    conn: Conn,
    query: str,
    where: list[str],
    args: list[Any],
    order: Order,
    limit: int,
    cursor: str | None,
    *,
    descending: bool = False,
) -> tuple[list[Row], str | None]:
    """Up to `limit` rows of `query` (a SELECT without WHERE) matching `where`, in `order`, after
    `cursor`; and the cursor of the next page, or None when this is the last."""
    if cursor:
        parts = decode_cursor(cursor, len(order))
        columns = ", ".join(expr for expr, _, _ in order)
        values = ", ".join(f"%s::{cast}" for _, _, cast in order)
        where = [*where, f"({columns}) {'<' if descending else '>'} ({values})"]
        args = [*args, *(_cursor_value(v, cast) for v, (_, _, cast) in zip(parts, order, strict=True))]
    direction = " DESC" if descending else ""
    sql = f"{query} WHERE {' AND '.join(where)} ORDER BY {', '.join(e + direction for e, _, _ in order)} LIMIT %s"
    rows = await (await conn.execute(sql, [*args, limit + 1])).fetchall()
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(*(iso(last[k]) if cast == "timestamptz" else last[k] for _, k, cast in order))


def iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None


# -- tenants -------------------------------------------------------------------------------------

_TENANT_CACHE: dict[bytes, tuple[float, Tenant, float]] = {}  # digest -> (cached until, tenant, key valid until)
_SECRET_CACHE: dict[str, tuple[float, IngestSecrets]] = {}
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


# -- shipments -----------------------------------------------------------------------------------

SHIPMENT_SELECT = """
SELECT s.*, st.status, st.substatus, st.last_lat, st.last_lon, st.last_speed_kmh, st.last_heading,
       st.last_position_at, st.eta, st.exceptions, st.emissions,
       GREATEST(s.updated_at, st.updated_at) AS changed_at,
       COALESCE((SELECT array_agg(DISTINCT a.device_id) FROM device_attachments a
                 WHERE a.shipment_id = s.id AND (a.until_at IS NULL OR a.until_at > now())), '{}') AS devices
FROM shipments s JOIN shipment_state st ON st.shipment_id = s.id
"""


def shipment_json(r: Row) -> dict[str, Any]:
    last = None
    if r.get("last_lat") is not None:
        last = {
            "lat": r["last_lat"],
            "lon": r["last_lon"],
            "at": iso(r["last_position_at"]),
            "speed_kmh": r["last_speed_kmh"],
            "heading": r["last_heading"],
        }
    trange = None
    if r.get("temperature_min_c") is not None:
        trange = [r["temperature_min_c"], r["temperature_max_c"]]
    return {
        "id": r["id"],
        "tracking_number": r["tracking_number"],
        "carrier": r["carrier"],
        "references": list(r["references"] or []),
        "mode": r["mode"],
        "legs": r["legs"] or [],
        "promised_at": iso(r["promised_at"]),
        "weight_kg": r["weight_kg"],
        "temperature_range_c": trange,
        "devices": sorted(r.get("devices") or []),
        "status": r["status"],
        "substatus": r["substatus"],
        "last_position": last,
        "eta": r["eta"],
        "exceptions": r["exceptions"] or [],
        "emissions": r["emissions"],
        "created_at": iso(r["created_at"]),
        "updated_at": iso(r.get("changed_at") or r["updated_at"]),
    }


async def get_shipment(conn: Conn, tenant_id: int, shipment_id: str) -> dict[str, Any] | None:
    row = await (
        await conn.execute(SHIPMENT_SELECT + " WHERE s.tenant_id = %s AND s.id = %s", (tenant_id, shipment_id))
    ).fetchone()
    return shipment_json(row) if row else None


async def list_shipments(
    conn: Conn, tenant_id: int, filters: dict[str, Any], limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    where: list[str] = ["s.tenant_id = %s"]
    args: list[Any] = [tenant_id]
    if filters.get("status"):
        where.append("st.status = ANY(%s)")
        args.append(filters["status"])
    if filters.get("carrier"):
        where.append("lower(s.carrier) = lower(%s)")
        args.append(filters["carrier"])
    if filters.get("mode"):
        where.append("(s.mode = %s OR s.legs @> %s::jsonb)")
        args.extend([filters["mode"], orjson.dumps([{"mode": filters["mode"]}]).decode()])
    if filters.get("exception"):
        where.append("st.exceptions @> %s::jsonb")
        args.append(orjson.dumps([{"kind": filters["exception"], "cleared_at": None}]).decode())
    if filters.get("q"):
        where.append("(s.ref_keys && %s OR s.tracking_number ILIKE %s)")
        args.extend([[ref_key(filters["q"])], "%" + filters["q"].replace("%", "") + "%"])
    if filters.get("updated_since"):
        where.append("GREATEST(s.updated_at, st.updated_at) >= %s")
        args.append(filters["updated_since"])
    order: Order = (("s.created_at", "created_at", "timestamptz"), ("s.id", "id", "text"))
    rows, nxt = await keyset_page(conn, SHIPMENT_SELECT, where, args, order, limit, cursor, descending=True)
    items = [shipment_json(r) for r in rows]
    return items, nxt


# -- devices -------------------------------------------------------------------------------------


def device_json(r: Row) -> dict[str, Any]:
    return {"id": r["id"], "key": r["key"], "name": r["name"], "created_at": iso(r["created_at"])}


async def list_devices(conn: Conn, tenant_id: int, limit: int, cursor: str | None) -> tuple[list[Row], str | None]:
    order: Order = (("id", "id", "text"),)
    return await keyset_page(conn, "SELECT * FROM devices", ["tenant_id = %s"], [tenant_id], order, limit, cursor)


async def get_device(conn: Conn, tenant_id: int, device_id: str) -> Row | None:
    row: Row | None = await (
        await conn.execute("SELECT * FROM devices WHERE tenant_id = %s AND id = %s", (tenant_id, device_id))
    ).fetchone()
    return row


async def device_for_key(pool: AsyncConnectionPool, key: str) -> tuple[int, str, str] | None:
    """(tenant id, tenant name, device id) for a device key, across tenants (keys are global)."""
    async with transaction(pool) as conn:
        row = await (
            await conn.execute(
                "SELECT d.tenant_id, t.name, d.id FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE d.key = %s",
                (key,),
            )
        ).fetchone()
    return (row["tenant_id"], row["name"], row["id"]) if row else None


# -- quarantine ----------------------------------------------------------------------------------

MAX_QUARANTINE_RAW = 1_000_000
# Input no tenant could be authenticated for (tenant_id NULL, seen by no tenant) is a bounded
# sample: the first SAMPLE_RAW bytes of each, at most SAMPLE_ROWS rows and SAMPLE_BYTES of raw and
# reason in all (the oldest rows go first), none older than SAMPLE_DAYS (the worker's retention).
SAMPLE_RAW = 4096
SAMPLE_ROWS = 1000
SAMPLE_BYTES = 4 * 1024 * 1024
SAMPLE_DAYS = 7
SAMPLE_LOCK = 7_242_019_030  # one sample write at a time, so that the caps hold exactly

_TRIM_SAMPLE = """
DELETE FROM quarantine WHERE tenant_id IS NULL AND id <= (
    SELECT id FROM (
        SELECT id, row_number() OVER w AS n, sum(octet_length(raw) + octet_length(reason)) OVER w AS bytes
        FROM quarantine WHERE tenant_id IS NULL WINDOW w AS (ORDER BY id DESC)
    ) newest_first WHERE n > %s OR bytes > %s ORDER BY id DESC LIMIT 1)
"""


async def quarantine(
    conn: Conn, tenant_id: int | None, source: str, transport: str, reason: str, raw: bytes, size: int | None = None
) -> bool:
    """Keep `raw` (up to 1 MB) with the reason and its real size (`size` when `raw` is only the head of
    what arrived, else its length); whether it was kept.

    Without a tenant it joins the bounded sample (see SAMPLE_*): its first 4 KB are kept and the
    oldest rows are dropped to stay within the caps; while another sample write is in progress it
    is not kept (False) rather than waiting for it.
    """
    sample = tenant_id is None
    kept = raw[: SAMPLE_RAW if sample else MAX_QUARANTINE_RAW]
    text = kept.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    if sample:  # a replacement character takes three bytes: the sample's 4 KB are of the stored text
        text = text.encode()[:SAMPLE_RAW].decode("utf-8", errors="ignore")
    if sample and not await try_job_lock(conn, SAMPLE_LOCK):
        return False
    await conn.execute(
        "INSERT INTO quarantine (tenant_id, source, transport, reason, raw, size) VALUES (%s, %s, %s, %s, %s, %s)",
        (tenant_id, source, transport, reason[:2000], text, len(raw) if size is None else size),
    )
    if sample:
        await conn.execute(_TRIM_SAMPLE, (SAMPLE_ROWS, SAMPLE_BYTES))
    return True


async def quarantine_now(
    pool: AsyncConnectionPool,
    tenant_id: int | None,
    source: str,
    transport: str,
    reason: str,
    raw: bytes,
    size: int | None = None,
) -> bool:
    async with transaction(pool) as conn:
        return await quarantine(conn, tenant_id, source, transport, reason, raw, size)


async def purge_quarantine_sample(conn: Conn, days: int = SAMPLE_DAYS) -> int:
    """Delete the unattributed quarantine rows older than `days`; how many were deleted."""
    cur = await conn.execute(
        "DELETE FROM quarantine WHERE tenant_id IS NULL AND received_at < now() - make_interval(days => %s)", (days,)
    )
    return cur.rowcount


def quarantine_json(r: Row) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "received_at": iso(r["received_at"]),
        "source": r["source"],
        "transport": r["transport"],
        "reason": r["reason"],
        "raw": r["raw"],
        "size": r.get("size"),
    }


# -- stream --------------------------------------------------------------------------------------


async def stream_snapshot(
    pool: AsyncConnectionPool,
    tenant_id: int,
    shipment_ids: list[str] | None,
    bbox: tuple[float, float, float, float] | None,
) -> tuple[int, list[dict[str, Any]]]:
    """The tenant's latest seq and the matching shipments, read from one snapshot."""
    try:
        return await _stream_snapshot(pool, tenant_id, shipment_ids, bbox)
    except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as exc:
        raise Unavailable(f"database unavailable: {str(exc).strip().splitlines()[0] if str(exc) else ''}") from None


async def _stream_snapshot(
    pool: AsyncConnectionPool,
    tenant_id: int,
    shipment_ids: list[str] | None,
    bbox: tuple[float, float, float, float] | None,
) -> tuple[int, list[dict[str, Any]]]:
    async with pool.connection() as raw_conn:
        conn: Conn = raw_conn  # type: ignore[assignment]
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        try:
            async with conn.transaction():
                seq_row = await (await conn.execute("SELECT seq FROM tenants WHERE id = %s", (tenant_id,))).fetchone()
                where: list[str] = ["s.tenant_id = %s"]
                args: list[Any] = [tenant_id]
                if shipment_ids is not None:
                    where.append("s.id = ANY(%s)")
                    args.append(shipment_ids)
                if bbox is not None:
                    west, south, east, north = bbox
                    where.append("st.last_lat BETWEEN %s AND %s")
                    args.extend([south, north])
                    if west <= east:
                        where.append("st.last_lon BETWEEN %s AND %s")
                        args.extend([west, east])
                    else:
                        where.append("(st.last_lon >= %s OR st.last_lon <= %s)")
                        args.extend([west, east])
                rows = await (
                    await conn.execute(SHIPMENT_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY s.id", args)
                ).fetchall()
        finally:
            await conn.set_isolation_level(None)
    return (int(seq_row["seq"]) if seq_row else 0), [shipment_json(r) for r in rows]


async def outbox_after(
    pool: AsyncConnectionPool, tenant_id: int, after_seq: int, limit: int = 10_000
) -> list[dict[str, Any]] | None:
    """Messages after `after_seq` in order, or None when some of them are no longer kept."""
    async with transaction(pool) as conn:
        rows = await (
            await conn.execute(
                "SELECT seq, payload FROM outbox WHERE tenant_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                (tenant_id, after_seq, limit),
            )
        ).fetchall()
        if rows and rows[0]["seq"] != after_seq + 1:
            return None
        if not rows:
            top = await (await conn.execute("SELECT seq FROM tenants WHERE id = %s", (tenant_id,))).fetchone()
            if top and top["seq"] > after_seq:
                return None
    return [r["payload"] for r in rows]


# -- events, positions, ETA history --------------------------------------------------------------


def event_json(r: Row) -> dict[str, Any]:
    return {
        "id": r["event_id"],
        "kind": r["kind"],
        "occurred_at": iso(r["occurred_at"]),
        "received_at": iso(r["received_at"]),
        "created_at": iso(r["created_at"]),
        "source": r["source"],
        "device_id": r["device_id"],
        "code": r["code"],
        "raw_code": r["raw_code"],
        "classifier": r["classifier"],
        "location": (r["data"] or {}).get("location") if r["kind"] == "milestone" else None,
        "retracted": r["retracted_at"] is not None,
        "data": r["data"],
        "raw": r["raw"],
    }


async def shipment_events(
    conn: Conn, tenant_id: int, shipment_id: str, kind: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    where: list[str] = ["tenant_id = %s", "shipment_id = %s"]
    args: list[Any] = [tenant_id, shipment_id]
    if kind:
        where.append("kind = %s")
        args.append(kind)
    order: Order = (("occurred_at", "occurred_at", "timestamptz"), ("event_id", "event_id", "text"))
    rows, nxt = await keyset_page(conn, "SELECT * FROM events", where, args, order, limit, cursor)
    return [event_json(r) for r in rows], nxt


async def shipment_positions(
    conn: Conn, tenant_id: int, shipment_id: str, since: datetime | None, until: datetime | None, limit: int
) -> list[Row]:
    return await (
        await conn.execute(
            "SELECT * FROM (SELECT occurred_at, lat, lon, speed_kmh, heading, device_id FROM positions"
            " WHERE tenant_id = %s AND shipment_id = %s"
            " AND (%s::timestamptz IS NULL OR occurred_at >= %s) AND (%s::timestamptz IS NULL OR occurred_at < %s)"
            " ORDER BY occurred_at DESC LIMIT %s) p ORDER BY occurred_at",
            (tenant_id, shipment_id, since, since, until, until, limit),
        )
    ).fetchall()


async def eta_history(conn: Conn, shipment_id: str) -> list[dict[str, Any]]:
    rows = await (
        await conn.execute(
            "SELECT eta FROM eta_history WHERE shipment_id = %s ORDER BY computed_at LIMIT 5000", (shipment_id,)
        )
    ).fetchall()
    return [r["eta"] for r in rows]


async def list_quarantine(
    conn: Conn, tenant_id: int, limit: int, cursor: str | None, source: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    where: list[str] = ["tenant_id = %s"]
    args: list[Any] = [tenant_id]
    if source:
        where.append("source = %s")
        args.append(source)
    order: Order = (("id", "id", "bigint"),)
    query = "SELECT * FROM quarantine"
    rows, nxt = await keyset_page(conn, query, where, args, order, limit, cursor, descending=True)
    return [quarantine_json(r) for r in rows], nxt


async def try_job_lock(conn: Conn, key: int) -> bool:
    """Take the advisory lock `key` for this transaction if no other worker holds it."""
    row = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (key,))).fetchone()
    return bool(row and row["ok"])


async def purge_history(conn: Conn, retention_days: int, outbox_retention_hours: int) -> None:
    """Delete events and positions past the retention (TimescaleDB's policy does that where it
    runs) and outbox rows every relay has passed, older than `outbox_retention_hours`."""
    ts = await (await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).fetchone()
    if ts is None:
        for table in ("events", "positions"):
            await conn.execute(
                f"DELETE FROM {table} WHERE occurred_at < now() - make_interval(days => %s)", (retention_days,)
            )
    await conn.execute(
        "DELETE FROM outbox o USING relay_marks m WHERE o.tenant_id = m.tenant_id AND o.seq <= m.seq"
        " AND o.created_at < now() - make_interval(hours => %s)",
        (outbox_retention_hours,),
    )
