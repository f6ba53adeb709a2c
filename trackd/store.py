"""Reads and CRUD for the API, every query scoped to one tenant. Driver errors stop here.

The event write path lives in `ledger.py`; both share the shipment JSON shape built here.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, tuple_row
from psycopg_pool import AsyncConnectionPool

from trackd.errors import Conflict, NotFound, Unavailable, ValidationError
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
    async with connection(pool, wait_s) as conn, conn.transaction():
        yield conn


@asynccontextmanager
async def connection(pool: AsyncConnectionPool, wait_s: float | None = None) -> AsyncIterator[Conn]:
    """One connection, as `transaction` takes it, with no transaction begun here: on a pool of
    autocommit connections (the guest pool) each statement is its own, one round trip."""
    try:
        async with pool.connection(timeout=wait_s) as conn:
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


# -- shipments -----------------------------------------------------------------------------------

SHIPMENT_SELECT = """
SELECT s.*, st.status, st.substatus, st.last_lat, st.last_lon, st.last_speed_kmh, st.last_heading,
       st.last_position_at, st.eta, st.exceptions, st.emissions, st.release,
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
        "release": r.get("release"),
        "created_at": iso(r["created_at"]),
        "updated_at": iso(r.get("changed_at") or r["updated_at"]),
    }


async def get_shipment(conn: Conn, tenant_id: int, shipment_id: str) -> dict[str, Any] | None:
    row = await (
        await conn.execute(SHIPMENT_SELECT + " WHERE s.tenant_id = %s AND s.id = %s", (tenant_id, shipment_id))
    ).fetchone()
    return shipment_json(row) if row else None


async def find_shipments(conn: Conn, tenant_id: int, ident: str, limit: int = 20) -> list[dict[str, Any]]:
    """The tenant's shipments `ident` names, most recent first, at most `limit`: the one with that id,
    else the one with that tracking number (case-insensitive, unique in a tenant), else every one
    whose tracking number or references match it (`ref_key`: case, spaces and hyphens ignored)."""
    for where, arg in (
        ("s.id = %s", ident),
        ("upper(s.tracking_number) = upper(%s)", ident),
        ("s.ref_keys && %s", [ref_key(ident)]),
    ):
        if not arg:
            continue
        rows = await (
            await conn.execute(
                SHIPMENT_SELECT + f" WHERE s.tenant_id = %s AND {where} ORDER BY s.created_at DESC, s.id DESC LIMIT %s",
                (tenant_id, arg, limit),
            )
        ).fetchall()
        if rows:
            return [shipment_json(r) for r in rows]
    return []


async def resolve_shipment(conn: Conn, tenant_id: int, ident: str) -> dict[str, Any]:
    """The one shipment `ident` names (see `find_shipments`); NotFound when none does, Conflict
    naming the ids (most recent first) when several references match and no id or tracking number does."""
    found = await find_shipments(conn, tenant_id, ident, limit=21)
    if not found:
        raise NotFound(f"no shipment {ident!r}")
    if len(found) > 1:
        count = str(len(found)) if len(found) <= 20 else "more than 20"
        raise Conflict(f"{ident!r} matches {count} shipments: {', '.join(s['id'] for s in found[:20])}")
    return found[0]


# `exception` filter terms: `any` (an open exception), `none` (no open exception), or an exception kind.
_OPEN = "EXISTS (SELECT 1 FROM jsonb_array_elements(COALESCE(st.exceptions, '[]')) e WHERE e->>'cleared_at' IS NULL"


def _exception_filter(terms: list[str], args: list[Any]) -> str:
    kinds = [t for t in terms if t not in ("any", "none")]
    alternatives = []
    if "any" in terms:
        alternatives.append(_OPEN + ")")
    if "none" in terms:
        alternatives.append("NOT " + _OPEN + ")")
    if kinds:
        alternatives.append(_OPEN + " AND e->>'kind' = ANY(%s))")
        args.append(kinds)
    return "(" + " OR ".join(alternatives) + ")"


# `lateness` filter terms, in the tracking page's words. Open: late once the promise has passed,
# else from `p_late` (below 0.25 on time, from 0.75 late), else (an estimate from before the promise)
# from the promise: late when the prediction is after it, might be late when only the window's end
# is. Delivered: late when delivered after the promise. Without a promise: none of them.
_ENDED = "('delivered', 'returned', 'cancelled', 'expired')"
_P_LATE = "(CASE WHEN jsonb_typeof(st.eta -> 'p_late') = 'number' THEN (st.eta ->> 'p_late')::float8 END)"
_ETA_AT = "(st.eta ->> '{}')::timestamptz"
_LATENESS_WITHIN = {  # each given an open, not yet overdue shipment with a promise
    "on_time": f"({_P_LATE} < 0.25 OR ({_P_LATE} IS NULL AND COALESCE({_ETA_AT.format('predicted_at')},"
    f" {_ETA_AT.format('latest')}) IS NOT NULL AND COALESCE({_ETA_AT.format('predicted_at')} <= s.promised_at, TRUE)"
    f" AND COALESCE({_ETA_AT.format('latest')} <= s.promised_at, TRUE)))",
    "might_be_late": f"({_P_LATE} >= 0.25 AND {_P_LATE} < 0.75 OR ({_P_LATE} IS NULL"
    f" AND COALESCE({_ETA_AT.format('predicted_at')} <= s.promised_at, TRUE)"
    f" AND {_ETA_AT.format('latest')} > s.promised_at))",
    "late": f"({_P_LATE} >= 0.75 OR ({_P_LATE} IS NULL AND {_ETA_AT.format('predicted_at')} > s.promised_at))",
}
_DELIVERED_AT = f"COALESCE(st.delivered_at, {_ETA_AT.format('predicted_at')})"
LATENESS_TERMS = tuple(_LATENESS_WITHIN)


def _lateness_filter(terms: list[str], now: datetime | None, args: list[Any]) -> str:
    """Any of `terms` (each in LATENESS_TERMS) matches; `now` (None: the database's clock) decides
    whether a promise has passed."""
    for t in terms:
        if t not in _LATENESS_WITHIN:
            raise ValidationError("lateness", f"unknown term {t!r} (expected {', '.join(LATENESS_TERMS)})")
    open_ = f"st.status NOT IN {_ENDED}"
    overdue = "s.promised_at < COALESCE(%s::timestamptz, now())"
    alternatives = []
    for term in dict.fromkeys(terms):
        within = _LATENESS_WITHIN[term]
        if term == "late":
            alternatives.append(f"({open_} AND ({overdue} OR {within}))")
            args.append(now)
            alternatives.append(f"(st.status = 'delivered' AND {_DELIVERED_AT} > s.promised_at)")
        else:
            alternatives.append(f"({open_} AND NOT {overdue} AND {within})")
            args.append(now)
            if term == "on_time":
                alternatives.append(f"(st.status = 'delivered' AND {_DELIVERED_AT} <= s.promised_at)")
    return "(s.promised_at IS NOT NULL AND (" + " OR ".join(alternatives) + "))"


async def list_shipments(
    conn: Conn, tenant_id: int, filters: dict[str, Any], limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the tenant's shipments matching `filters` (each optional: `status`, `carrier`,
    `mode`, `exception`, `lateness` (terms, with `now` for when a promise has passed), `eta_after`,
    `eta_before`, `q`, `updated_since`), newest first, and the next page's cursor."""
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
    if filters.get("exception"):  # terms (a list, or comma-separated), any of which matches
        terms = filters["exception"]
        where.append(_exception_filter(terms.split(",") if isinstance(terms, str) else list(terms), args))
    if filters.get("lateness"):  # terms (a list, or comma-separated), any of which matches
        terms = filters["lateness"]
        terms = [t.strip() for t in terms.split(",")] if isinstance(terms, str) else list(terms)
        where.append(_lateness_filter(terms, filters.get("now"), args))
    if filters.get("eta_after"):  # a shipment without a prediction matches neither bound
        where.append(f"{_ETA_AT.format('predicted_at')} >= %s")
        args.append(filters["eta_after"])
    if filters.get("eta_before"):
        where.append(f"{_ETA_AT.format('predicted_at')} < %s")
        args.append(filters["eta_before"])
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


# Device keys found lately, so that a known device never queues for the pool with unknown ids.
# A deleted device's key stops at once in the process that deleted it, within the TTL in others.
DEVICE_KEY_TTL_S = 30.0
DEVICE_KEYS_KEPT = 10_000
_DEVICE_KEYS: dict[str, tuple[float, tuple[int, str, str]]] = {}


def forget_device_key(key: str) -> None:
    _DEVICE_KEYS.pop(key, None)


def remembered_device(key: str) -> tuple[int, str, str] | None:
    """What `device_for_key` found for `key` within the last `DEVICE_KEY_TTL_S`, with no lookup."""
    hit = _DEVICE_KEYS.get(key)
    return hit[1] if hit is not None and hit[0] > time.monotonic() else None


def seen_device_key(key: str) -> bool:
    """Whether `device_for_key` found `key` at its last lookup in this process (however long ago,
    among the last `DEVICE_KEYS_KEPT`): a device heard before, whose lookup is owed no budget."""
    return key in _DEVICE_KEYS


async def device_for_key(pool: AsyncConnectionPool, key: str) -> tuple[int, str, str] | None:
    """(tenant id, tenant name, device id) for a device key, across tenants (keys are global)."""
    hit = remembered_device(key)
    if hit is not None:
        return hit
    now = time.monotonic()
    found = await _device_for_key(pool, key)
    _DEVICE_KEYS.pop(key, None)
    if found is not None:
        if len(_DEVICE_KEYS) >= DEVICE_KEYS_KEPT:
            del _DEVICE_KEYS[next(iter(_DEVICE_KEYS))]  # the oldest looked up
        _DEVICE_KEYS[key] = (now + DEVICE_KEY_TTL_S, found)
    return found


DEVICE_BY_KEY = "SELECT d.tenant_id, t.name, d.id FROM devices d JOIN tenants t ON t.id = d.tenant_id WHERE d.key = %s"


async def _device_for_key(pool: AsyncConnectionPool, key: str) -> tuple[int, str, str] | None:
    """On the guest pool (autocommit) one round trip, not three: every unknown key a client sends
    costs one lookup."""
    async with connection(pool) as conn:  # elsewhere the pool commits what the statement began
        row = await (await conn.execute(DEVICE_BY_KEY, (key,))).fetchone()
    return (row["tenant_id"], row["name"], row["id"]) if row else None


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


async def completed_journeys(conn: Conn, tenant_id: int, limit: int, *, forecasts: bool = True) -> list[Row]:
    """The tenant's `limit` most recently delivered shipments with their milestones and, with
    `forecasts`, the history of their predictions ([computed_at, predicted_at, carrier_eta]
    triples, oldest first), newest first: what the ETA learns from."""
    history = (
        "COALESCE((SELECT json_agg(json_build_array(h.computed_at, h.predicted_at, h.carrier_eta)"
        " ORDER BY h.computed_at) FROM eta_history h WHERE h.shipment_id = s.id), '[]')"
        if forecasts
        else "'[]'::json"
    )
    rows: list[Row] = await (
        await conn.execute(
            f"SELECT s.*, st.started_at, st.delivered_at, st.milestones, {history} AS forecasts"
            " FROM shipment_state st JOIN shipments s ON s.id = st.shipment_id"
            " WHERE st.tenant_id = %s AND st.delivered_at IS NOT NULL AND st.status = 'delivered'"
            " ORDER BY st.delivered_at DESC LIMIT %s",
            (tenant_id, limit),
        )
    ).fetchall()
    return rows


async def try_job_lock(conn: Conn, key: int) -> bool:
    """Take the advisory lock `key` for this transaction if no other worker holds it."""
    row = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (key,))).fetchone()
    return bool(row and row["ok"])


async def purge_history(conn: Conn, outbox_retention_hours: int) -> None:
    """Delete outbox rows every relay has passed, older than `outbox_retention_hours` (events and
    positions go per tenant, in `retention_store`)."""
    await conn.execute(
        "DELETE FROM outbox o USING relay_marks m WHERE o.tenant_id = m.tenant_id AND o.seq <= m.seq"
        " AND o.created_at < now() - make_interval(hours => %s)",
        (outbox_retention_hours,),
    )
