"""Places in PostgreSQL: a tenant's own geofences, its place version, and the visits crossings
record. The bundled places are not stored: lists merge them in by id."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from trackd import places
from trackd.errors import Conflict, NotFound, ValidationError
from trackd.places import Geofence
from trackd.store import Conn, Order, Row, decode_cursor, encode_cursor, keyset_page, new_id, tuples

MAX_PLACES = 10_000  # per tenant
KEEP_VISITS = 200  # the most recent visits per place that dwell is learned from
STAY_GAP = timedelta(hours=6)  # a shipment back at a place within this is still on the same stay

# A shipment's completed stays at places (of the tenant, or of one place when `place` is given): its
# visits of one place with less than `gap` between leaving and coming back are one stay (a container
# leaves the terminal's fence and the trucker's pickup there opens a second visit), and a stay of
# no length (a departure milestone alone) is none.
_STAYS = """
v AS (
  SELECT place_id, shipment_id, entered_at, exited_at,
         CASE WHEN entered_at - lag(exited_at) OVER w < %(gap)s THEN 0 ELSE 1 END AS starts
  FROM place_visits
  WHERE tenant_id = %(tenant)s AND exited_at IS NOT NULL AND (%(place)s::text IS NULL OR place_id = %(place)s)
  WINDOW w AS (PARTITION BY place_id, shipment_id ORDER BY entered_at)
), g AS (
  SELECT *, sum(starts) OVER (PARTITION BY place_id, shipment_id ORDER BY entered_at) AS stay FROM v
), stays AS (
  SELECT place_id, min(entered_at) AS entered_at, max(exited_at) AS exited_at
  FROM g GROUP BY place_id, shipment_id, stay HAVING max(exited_at) > min(entered_at)
)"""
BBox = tuple[float, float, float, float]  # west, south, east, north (west > east: across 180)
_COLUMNS = "id, name, kind, geometry, radius_m, unlocode, iata, created_at, updated_at"


def fence_from_row(r: Row) -> Geofence:
    return Geofence(r["id"], r["name"], r["kind"], r["geometry"], r["radius_m"], r["unlocode"], r["iata"])


def place_json(r: Row) -> dict[str, Any]:
    return {**fence_from_row(r).to_dict(), "created_at": r["created_at"], "updated_at": r["updated_at"]}


async def version(conn: Conn, tenant_id: int) -> int:
    rows = await tuples(conn, "SELECT version FROM place_versions WHERE tenant_id = %s", (tenant_id,))
    return int(rows[0][0]) if rows else 0


async def _bump(conn: Conn, tenant_id: int) -> None:
    """Count a change of the tenant's places; the row lock orders a tenant's changes."""
    await conn.execute(
        "INSERT INTO place_versions (tenant_id, version) VALUES (%s, 1)"
        " ON CONFLICT (tenant_id) DO UPDATE SET version = place_versions.version + 1",
        (tenant_id,),
    )


async def tenant_fences(conn: Conn, tenant_id: int) -> list[Geofence]:
    rows = await (
        await conn.execute(f"SELECT {_COLUMNS} FROM places WHERE tenant_id = %s ORDER BY id", (tenant_id,))
    ).fetchall()
    return [fence_from_row(r) for r in rows]


def _params(f: Geofence) -> dict[str, Any]:
    w, s, e, n = f.bbox()
    return {
        "name": f.name, "kind": f.kind, "geometry": orjson.dumps(f.geometry).decode(), "radius_m": f.radius_m,
        "unlocode": f.unlocode, "iata": f.iata, "w": w, "s": s, "e": e, "n": n,
    }  # fmt: skip


async def create_place(conn: Conn, tenant_id: int, fence: Geofence) -> Row:
    """Store a new place under a fresh id (`fence.id` is ignored)."""
    await _bump(conn, tenant_id)
    count = await tuples(conn, "SELECT count(*) FROM places WHERE tenant_id = %s", (tenant_id,))
    if count[0][0] >= MAX_PLACES:
        raise Conflict(f"a tenant has at most {MAX_PLACES:,} places; delete some first")
    params = {**_params(fence), "id": new_id("pl"), "tenant": tenant_id}
    row: Row | None = await (
        await conn.execute(
            "INSERT INTO places (id, tenant_id, name, kind, geometry, radius_m, unlocode, iata, min_lon, min_lat,"
            " max_lon, max_lat) VALUES (%(id)s, %(tenant)s, %(name)s, %(kind)s, %(geometry)s::jsonb, %(radius_m)s,"
            f" %(unlocode)s, %(iata)s, %(w)s, %(s)s, %(e)s, %(n)s) RETURNING {_COLUMNS}",
            params,
        )
    ).fetchone()
    assert row is not None
    return row


async def get_place(conn: Conn, tenant_id: int, place_id: str) -> Row | None:
    row: Row | None = await (
        await conn.execute(f"SELECT {_COLUMNS} FROM places WHERE tenant_id = %s AND id = %s", (tenant_id, place_id))
    ).fetchone()
    return row


async def update_place(conn: Conn, tenant_id: int, fence: Geofence) -> Row:
    params = {**_params(fence), "id": fence.id, "tenant": tenant_id}
    row: Row | None = await (
        await conn.execute(
            "UPDATE places SET name = %(name)s, kind = %(kind)s, geometry = %(geometry)s::jsonb,"
            " radius_m = %(radius_m)s, unlocode = %(unlocode)s, iata = %(iata)s, min_lon = %(w)s, min_lat = %(s)s,"
            " max_lon = %(e)s, max_lat = %(n)s, updated_at = now()"
            f" WHERE tenant_id = %(tenant)s AND id = %(id)s RETURNING {_COLUMNS}",
            params,
        )
    ).fetchone()
    if row is None:
        raise NotFound(f"no place {fence.id!r}")
    await _bump(conn, tenant_id)
    return row


async def delete_place(conn: Conn, tenant_id: int, place_id: str) -> bool:
    """Delete a place and its visits."""
    cur = await conn.execute("DELETE FROM places WHERE tenant_id = %s AND id = %s", (tenant_id, place_id))
    if not cur.rowcount:
        return False
    await _bump(conn, tenant_id)
    await conn.execute("DELETE FROM place_visits WHERE tenant_id = %s AND place_id = %s", (tenant_id, place_id))
    return True


# -- lists: the tenant's places and the bundled ones, by id ---------------------------------------


def _meets(b: BBox, box: BBox) -> bool:
    w, s, e, n = box
    if b[3] < s or b[1] > n:
        return False
    if w <= e:
        return b[2] >= w and b[0] <= e
    return b[2] >= w or b[0] <= e


@lru_cache(maxsize=1)
def _builtin_keys() -> tuple[list[str], list[BBox]]:
    fences = places.builtin_fences()
    return [f.id for f in fences], [f.bbox() for f in fences]


def _builtin_page(after: str | None, limit: int, kinds: Sequence[str], box: BBox | None) -> list[Geofence]:
    fences = places.builtin_fences()
    ids, boxes = _builtin_keys()
    start = bisect.bisect_right(ids, after) if after else 0
    out: list[Geofence] = []
    for i in range(start, len(fences)):
        f = fences[i]
        if (kinds and f.kind not in kinds) or (box is not None and not _meets(boxes[i], box)):
            continue
        out.append(f)
        if len(out) > limit:
            break
    return out


async def list_places(
    conn: Conn,
    tenant_id: int,
    limit: int,
    cursor: str | None,
    *,
    kinds: Sequence[str] = (),
    builtin: bool | None = None,
    box: BBox | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the tenant's places and the bundled ones (`builtin` None: both), ordered by id."""
    after = decode_cursor(cursor, 1)[0] if cursor else None
    merged: list[dict[str, Any]] = []
    if builtin is not True:
        where: list[str] = ["tenant_id = %s"]
        args: list[Any] = [tenant_id]
        if kinds:
            where.append("kind = ANY(%s)")
            args.append(list(kinds))
        if box is not None:
            w, s, e, n = box
            where.append("max_lat >= %s AND min_lat <= %s")
            where.append("max_lon >= %s AND min_lon <= %s" if w <= e else "(max_lon >= %s OR min_lon <= %s)")
            args += [s, n, w, e]
        order: Order = (("id", "id", "text"),)
        rows, _ = await keyset_page(conn, f"SELECT {_COLUMNS} FROM places", where, args, order, limit, cursor)
        merged += [place_json(r) for r in rows]
    if builtin is not False:
        merged += [f.to_dict() for f in _builtin_page(after, limit, kinds, box)]
    merged.sort(key=lambda p: p["id"])
    if len(merged) <= limit:
        return merged, None
    page = merged[:limit]
    return page, encode_cursor(page[-1]["id"])


# -- visits --------------------------------------------------------------------------------------

_RECORD_VISITS = """
WITH closed AS (
  UPDATE place_visits v SET exited_at = c.at
  FROM jsonb_to_recordset(%(closes)s::jsonb) AS c(shipment_id text, place_id text, at timestamptz)
  WHERE v.tenant_id = %(tenant)s AND v.shipment_id = c.shipment_id AND v.place_id = c.place_id
    AND v.shipment_id = ANY(%(closing)s::text[]) AND v.exited_at IS NULL AND v.entered_at <= c.at
)
INSERT INTO place_visits (tenant_id, place_id, shipment_id, entered_at, exited_at)
SELECT %(tenant)s, o.place_id, o.shipment_id, o.entered_at, o.exited_at
FROM jsonb_to_recordset(%(opens)s::jsonb) AS o(shipment_id text, place_id text, entered_at timestamptz,
                                               exited_at timestamptz)
ON CONFLICT DO NOTHING
"""


async def record_visits(conn: Conn, tenant_id: int, crossings: Sequence[tuple[str, str, datetime, bool]]) -> None:
    """Open and close visits for (shipment id, place id, at, entered) in time order per shipment: an
    exit closes the visit its entry opened (in this batch, or an open one stored before)."""
    opened: dict[tuple[str, str], datetime] = {}
    opens: list[dict[str, Any]] = []
    closes: list[dict[str, Any]] = []
    for sid, pid, at, entered in crossings:
        key = (sid, pid)
        if entered:
            opened[key] = at
        elif key in opened:
            opens.append({"shipment_id": sid, "place_id": pid, "entered_at": opened.pop(key), "exited_at": at})
        else:
            closes.append({"shipment_id": sid, "place_id": pid, "at": at})
    opens += [{"shipment_id": s, "place_id": p, "entered_at": at, "exited_at": None} for (s, p), at in opened.items()]
    doc = {
        "tenant": tenant_id,
        "opens": orjson.dumps(opens).decode(),
        "closes": orjson.dumps(closes).decode(),
        "closing": [c["shipment_id"] for c in closes],  # for the planner, as in `ledger.UPDATE_STATES`
    }
    await conn.execute(_RECORD_VISITS, doc)


async def undo_visits_after(conn: Conn, tenant_id: int, shipment_id: str, since: datetime | None) -> None:
    """Undo a shipment's entries and exits after `since` (its newest observation that stands, None:
    none stands), once the fixes that made them are withdrawn: visits entered later go, visits left
    later are open again."""
    if since is None:
        await conn.execute(
            "DELETE FROM place_visits WHERE tenant_id = %s AND shipment_id = %s", (tenant_id, shipment_id)
        )
        return
    await conn.execute(
        "DELETE FROM place_visits WHERE tenant_id = %s AND shipment_id = %s AND entered_at > %s",
        (tenant_id, shipment_id, since),
    )
    await conn.execute(
        "UPDATE place_visits SET exited_at = NULL WHERE tenant_id = %s AND shipment_id = %s AND exited_at > %s",
        (tenant_id, shipment_id, since),
    )


async def stats(conn: Conn, tenant_id: int, place_id: str) -> dict[str, Any]:
    """`{visits, dwell_h: {p50, p90}}` over the place's completed stays (`_STAYS`)."""
    rows = await tuples(
        conn,
        f"WITH {_STAYS} SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY h),"
        " percentile_cont(0.9) WITHIN GROUP (ORDER BY h)"
        " FROM (SELECT extract(epoch FROM exited_at - entered_at)::float8 / 3600 AS h FROM stays) v",
        {"tenant": tenant_id, "place": place_id, "gap": STAY_GAP},
    )
    n, p50, p90 = rows[0]
    return {"visits": int(n), "dwell_h": {"p50": _hours(p50), "p90": _hours(p90)}}


def _hours(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)


async def dwell_by_place(
    conn: Conn, tenant_id: int, min_visits: int
) -> list[tuple[str, str | None, str | None, list[float]]]:
    """(place id, unlocode, iata, dwell hours newest first) of the places with at least
    `min_visits` completed stays (`_STAYS`); codes of the tenant's own places, None for the bundled ones."""
    rows = await tuples(
        conn,
        f"WITH {_STAYS} SELECT v.place_id, p.unlocode, p.iata, array_agg(v.h ORDER BY v.exited_at DESC) FROM ("
        "  SELECT place_id, exited_at, extract(epoch FROM exited_at - entered_at)::float8 / 3600 AS h,"
        "         row_number() OVER (PARTITION BY place_id ORDER BY exited_at DESC) AS rn FROM stays) v"
        " LEFT JOIN places p ON p.id = v.place_id AND p.tenant_id = %(tenant)s"
        " WHERE v.rn <= %(keep)s GROUP BY v.place_id, p.unlocode, p.iata HAVING count(*) >= %(min)s",
        {"tenant": tenant_id, "place": None, "gap": STAY_GAP, "keep": KEEP_VISITS, "min": min_visits},
    )
    return [(r[0], r[1], r[2], [float(h) for h in r[3]]) for r in rows]


async def shipment_visits(conn: Conn, tenant_id: int, shipment_id: str, limit: int) -> list[Row]:
    """A shipment's latest visits, newest first: place id, entered_at, exited_at (None: still there),
    and the name and kind of a place of the tenant's own (None for a bundled one)."""
    rows: list[Row] = await (
        await conn.execute(
            "SELECT v.place_id, v.entered_at, v.exited_at, p.name, p.kind FROM place_visits v"
            " LEFT JOIN places p ON p.id = v.place_id AND p.tenant_id = v.tenant_id"
            " WHERE v.tenant_id = %s AND v.shipment_id = %s ORDER BY v.entered_at DESC LIMIT %s",
            (tenant_id, shipment_id, limit),
        )
    ).fetchall()
    return rows


def parse_bbox(text: str) -> BBox:
    try:
        w, s, e, n = (float(x) for x in text.split(","))
    except ValueError:
        raise ValidationError("bbox", "must be west,south,east,north") from None
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
        raise ValidationError("bbox", "is outside the world, or south is above north")
    return w, s, e, n
