"""The event write path: events, positions, shipment state and stream messages in one transaction.

Callers hold the transaction (`store.transaction`); everything here runs on its connection. A batch
is written with a handful of set-based statements whatever its size. Stream messages get their
`seq` from the tenant row at the very end, so the row lock that orders them is held briefly, and
commit order equals seq order per tenant.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from trackd import crossings, place_store
from trackd.codes import Classifier, EventKind, Milestone, Mode, Status
from trackd.errors import ValidationError
from trackd.messages import Message, status_changed
from trackd.messages import position as position_message
from trackd.model import Event, Location, MilestoneInfo, Position, Sensor
from trackd.shipment import Eta, PositionFix, StatusState
from trackd.state import State, advance, rebuild_status, trail
from trackd.store import Conn, Row, tuples


class Evaluator(Protocol):
    """ETA, rules and emissions: (connection, shipment row, state before the batch, folded state, now)
    -> (state, messages)."""

    async def __call__(
        self, conn: Conn, row: Row, before: State, state: State, now: datetime, /
    ) -> tuple[State, list[Message]]: ...


# Batches travel as one JSON document: one parameter, decoded by PostgreSQL, whatever the size. The
# same statement finds each event's shipment (the one it names by id, when the tenant's; else the first
# of its identifiers that names one, the oldest shipment winning a shared identifier; else the shipment
# its device was attached to when the event occurred) and writes the position rows of the events it
# inserted (not of duplicates).
EVENTS_CTE = """
WITH e AS (
  SELECT r.*, COALESCE(
    (SELECT s.id FROM shipments s WHERE s.id = r.named_shipment AND s.tenant_id = %(tenant)s),
    (SELECT k.shipment_id FROM unnest(r.match_keys) WITH ORDINALITY AS mk(key, ord)
       JOIN shipment_keys k ON k.tenant_id = %(tenant)s AND k.key = mk.key
     ORDER BY mk.ord, k.created_at, k.shipment_id LIMIT 1),
    (SELECT a.shipment_id FROM device_attachments a
     WHERE r.device_id IS NOT NULL AND a.tenant_id = %(tenant)s AND a.device_id = r.device_id
       AND a.from_at <= r.occurred_at AND (a.until_at IS NULL OR r.occurred_at < a.until_at)
     ORDER BY a.from_at DESC LIMIT 1)) AS shipment_id
  FROM jsonb_to_recordset(%(rows)s::jsonb)
       AS r(event_id text, occurred_at timestamptz, created_at timestamptz, device_id text, source text,
            kind text, code text, raw_code text, classifier text, match_keys text[], retracts text, data jsonb,
            raw jsonb, named_shipment text)
), ins AS (
  INSERT INTO events (tenant_id, event_id, occurred_at, received_at, created_at, shipment_id, device_id,
                      source, kind, code, raw_code, classifier, match_keys, retracts, data, raw)
  SELECT %(tenant)s, e.event_id, e.occurred_at, %(received_at)s, e.created_at, e.shipment_id, e.device_id,
         e.source, e.kind, e.code, e.raw_code, e.classifier, COALESCE(e.match_keys, '{}'), e.retracts, e.data, e.raw
  FROM e
  ON CONFLICT DO NOTHING
  RETURNING event_id, occurred_at, shipment_id, device_id, kind, data, retracts
), pos AS (
  INSERT INTO positions (tenant_id, shipment_id, device_id, occurred_at, event_id, lat, lon, speed_kmh,
                         heading, accuracy_m, altitude_m)
  SELECT %(tenant)s, shipment_id, device_id, occurred_at, event_id, (data ->> 'lat')::float8,
         (data ->> 'lon')::float8, (data ->> 'speed_kmh')::float8, (data ->> 'heading')::float8,
         (data ->> 'accuracy_m')::float8, (data ->> 'altitude_m')::float8
  FROM ins WHERE kind = 'position'
)"""
INSERT_EVENTS = f"{EVENTS_CTE}\nSELECT event_id, shipment_id FROM ins"
# The same, and in the same statement what `LOCK_STATES` does for the shipments the new events
# belong to: one round trip fewer for a batch without retractions. Rows of `ins` come with nulls
# after the shipment id; rows of the lock with a null event id.
INSERT_EVENTS_LOCKING = f"""{EVENTS_CTE}, lk AS (
  SELECT st.shipment_id, st.xmin::text AS sx, st.version::bigint AS sv, s.xmin::text AS hx, s.version::bigint AS hv
  FROM shipment_state st JOIN shipments s ON s.id = st.shipment_id
  WHERE st.shipment_id IN (SELECT shipment_id FROM ins WHERE retracts IS NULL)
  ORDER BY st.shipment_id FOR UPDATE OF st
)
SELECT event_id, shipment_id, NULL::text, NULL::bigint, NULL::text, NULL::bigint FROM ins
UNION ALL SELECT NULL, shipment_id, sx, sv, hx, hv FROM lk"""

# Locks a batch's state rows (in id order, so concurrent writers cannot deadlock) and reads only
# what tells whether the in-memory copy is still current.
LOCK_STATES = """
SELECT st.shipment_id, st.xmin::text, st.version::bigint, s.xmin::text, s.version::bigint
FROM shipment_state st JOIN shipments s ON s.id = st.shipment_id
WHERE st.shipment_id = ANY(%s) ORDER BY st.shipment_id FOR UPDATE OF st
"""

STATE_COLUMNS = (
    "status", "substatus", "status_at", "last_lat", "last_lon", "last_speed_kmh", "last_heading", "last_position_at",
    "last_event_at", "last_sensor", "carrier_eta", "carrier_eta_created_at", "eta", "exceptions", "emissions",
    "delivered_at", "started_at", "milestones", "recent_positions", "release",
)  # fmt: skip
LOAD_STATES = f"""
SELECT s.*, {", ".join("st." + c for c in STATE_COLUMNS)}
FROM shipment_state st JOIN shipments s ON s.id = st.shipment_id
WHERE st.shipment_id = ANY(%s)
"""

# Every state row of a batch in one statement. A jsonb column sent as null keeps its stored value,
# so an unchanged trail, milestone or exception list is not written (and re-TOASTed) again. The ids
# come a second time as an array, for the planner: it counts 100 rows for any `jsonb_to_recordset`,
# and against 100 primary-key lookups a hash join over the whole table (10,000 shipments: 1,200
# pages, 4-5 ms of a 1-row batch, most of the database's CPU under load) looked as cheap; with
# `= ANY` of the ids it looks up the rows by key (0.07 ms).
UPDATE_STATES = """
UPDATE shipment_state st SET status = b.status, substatus = b.substatus, status_at = b.status_at,
  last_lat = b.lat, last_lon = b.lon, last_speed_kmh = b.speed, last_heading = b.heading,
  last_position_at = b.pos_at, last_event_at = b.last_event_at, last_sensor = b.last_sensor,
  carrier_eta = b.carrier_eta, carrier_eta_created_at = b.carrier_eta_created_at, eta = b.eta,
  exceptions = COALESCE(b.exceptions, st.exceptions), emissions = COALESCE(b.emissions, st.emissions),
  delivered_at = b.delivered_at, started_at = b.started_at, milestones = COALESCE(b.milestones, st.milestones),
  recent_positions = COALESCE(b.recent, st.recent_positions), release = b.release, updated_at = now(),
  version = st.version + 1
FROM jsonb_to_recordset(%(states)s::jsonb)
     AS b(id text, status text, substatus text, status_at timestamptz, lat float8, lon float8, speed float8,
          heading float8, pos_at timestamptz, last_event_at timestamptz, last_sensor jsonb, carrier_eta timestamptz,
          carrier_eta_created_at timestamptz, eta jsonb, exceptions jsonb, emissions jsonb, delivered_at timestamptz,
          started_at timestamptz, milestones jsonb, recent jsonb, release jsonb)
WHERE st.shipment_id = b.id AND st.shipment_id = ANY(%(ids)s::text[])
RETURNING st.shipment_id, st.xmin::text AS x, st.version::bigint AS v
"""

# Takes the next seqs from the tenant row (whose lock, held to commit, orders commits by seq) and
# writes the messages with them; `base` is the seq before the first (no row when there are none).
OUTBOX = """
t AS (UPDATE tenants SET seq = seq + %(n)s WHERE id = %(tenant)s AND %(n)s > 0 RETURNING seq - %(n)s AS base),
ins AS (
  INSERT INTO outbox (tenant_id, seq, type, shipment_id, occurred_at, payload)
  SELECT %(tenant)s, t.base + m.ord, m.type, m.shipment_id, m.occurred_at,
         m.payload || jsonb_build_object('seq', t.base + m.ord)
  FROM t, jsonb_to_recordset(%(rows)s::jsonb)
       AS m(ord bigint, type text, shipment_id text, occurred_at timestamptz, payload jsonb)
)"""
INSERT_OUTBOX = f"WITH {OUTBOX} SELECT base FROM t"
# A batch's states and its messages in one statement: the saved rows' tokens, then the base seq.
SAVE_AND_EMIT = f"""WITH saved AS ({UPDATE_STATES}), {OUTBOX}
SELECT shipment_id, x, v FROM saved UNION ALL SELECT NULL, NULL, base FROM t"""


@dataclass(slots=True)
class WriteResult:
    accepted: int = 0
    stored: int = 0
    duplicates: int = 0
    unknown_codes: list[tuple[str, str]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    new_ids: set[str] = field(default_factory=set)  # event ids stored by this write


def _dumps(v: Any) -> str:
    return orjson.dumps(v, default=str).decode()


def state_from_row(r: Row) -> State:
    last = None
    if r.get("last_lat") is not None:
        last = PositionFix(r["last_lat"], r["last_lon"], r["last_position_at"], r["last_speed_kmh"], r["last_heading"])
    return State(
        status=StatusState(Status(r["status"]), r["substatus"], r["status_at"]),
        last=last,
        last_event_at=r["last_event_at"],
        last_sensor=r["last_sensor"],
        carrier_eta=r["carrier_eta"],
        carrier_eta_created_at=r["carrier_eta_created_at"],
        delivered_at=r["delivered_at"],
        started_at=r["started_at"],
        milestones=tuple(r["milestones"] or ()),
        eta=r["eta"],
        exceptions=tuple(r["exceptions"] or ()),
        emissions=r.get("emissions"),
        recent=tuple(
            PositionFix(p["lat"], p["lon"], datetime.fromisoformat(p["at"]), p.get("speed_kmh"), p.get("heading"))
            for p in r.get("recent_positions") or ()
        ),
        release=r.get("release"),
    )


def final_codes(row: Row) -> frozenset[str]:
    legs = row.get("legs") or []
    if not legs:
        return frozenset()
    dest = legs[-1].get("destination") or {}
    return frozenset(c for c in (dest.get("unlocode"), dest.get("iata")) if c)


def event_from_row(r: Row) -> Event:
    """An event as stored, back to its canonical value (for adoption and replay)."""
    kind, data = EventKind(r["kind"]), r["data"]
    position = milestone = sensor = None
    if kind is EventKind.POSITION:
        position = Position(**data)
    elif kind is EventKind.SENSOR:
        sensor = Sensor(**data)
    else:
        loc = Location(**data["location"]) if data.get("location") else None
        milestone = MilestoneInfo(
            code=Milestone(r["code"]) if r["code"] else None,
            classifier=Classifier(r["classifier"] or "actual"),
            location=loc,
            mode=Mode(data["mode"]) if data.get("mode") else None,
            raw_code=r["raw_code"],
        )
    return Event(
        event_id=r["event_id"],
        source=r["source"],
        occurred_at=r["occurred_at"],
        kind=kind,
        position=position,
        milestone=milestone,
        sensor=sensor,
        device=r["device_id"],
        shipment=r["shipment_id"],
        created_at=r["created_at"],
        retracts=r["retracts"],
    )


async def insert_events(
    conn: Conn, tenant_id: int, events: list[Event], received_at: datetime, locked: list[tuple[Any, ...]] | None = None
) -> dict[str, str | None]:
    """Store the events that are new, each with its shipment; returns {event id: shipment id} of those.
    Given a list as `locked`, also locks the state rows of the new events' shipments (those of
    retractions aside) and appends them to it, as `LOCK_STATES` returns them."""
    rows = []
    for e in events:
        ms = e.milestone
        rows.append(
            {
                "event_id": e.event_id,
                "occurred_at": e.occurred_at,
                "created_at": e.created_at,
                "device_id": e.device,
                "source": e.source,
                "kind": e.kind.value,
                "code": ms.code.value if ms and ms.code else None,
                "raw_code": ms.raw_code if ms else None,
                "classifier": ms.classifier.value if ms else None,
                "match_keys": e.match_keys(),
                "retracts": e.retracts,
                "data": e.data(),
                "raw": e.raw,
                "named_shipment": e.shipment_id,
            }
        )
    doc = _dumps(rows).replace("\\u0000", "")
    params = {"tenant": tenant_id, "received_at": received_at, "rows": doc}
    if locked is None:
        return {r[0]: r[1] for r in await tuples(conn, INSERT_EVENTS, params)}
    new: dict[str, str | None] = {}
    for r in await tuples(conn, INSERT_EVENTS_LOCKING, params):
        if r[0] is None:
            locked.append((r[1], *r[2:]))
        else:
            new[r[0]] = r[1]
    return new


# An event id `<family>@v<UTC time>` is one version of the event `<family>` (DCSA 3.0.0: the eventID
# and its eventUpdatedDateTime): the latest version stands and every other is retracted, whatever
# the order they arrive in. A version that itself withdraws (`retracts`) leaves none standing.
_VERSIONED = re.compile(r"^(.+)@v(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)$")
VERSION_FIRST = datetime(1, 1, 1, tzinfo=UTC)
VERSION_LAST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
# Served by the index of migrations/013_dcsa_sources.sql (same expression and predicate).
VERSIONS = (
    "SELECT event_id FROM events WHERE tenant_id = %s AND event_id LIKE '%%@v%%'"
    r" AND substring(event_id from '^(.+)@v\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$') = ANY(%s)"
)


def versioned_id(family: str, at: datetime) -> str:
    """The id of the version of `family` issued `at` (ids of one family sort as their times)."""
    return f"{family}@v{at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec='microseconds')}Z"


async def superseded(conn: Conn, tenant_id: int, event_ids: list[str]) -> list[str]:
    """The versions that `event_ids` (just stored) and the stored versions of their families leave
    behind: all but each family's latest."""
    families = {m.group(1) for m in map(_VERSIONED.match, event_ids) if m}
    if not families:
        return []
    rows = await tuples(conn, VERSIONS, (tenant_id, sorted(families)))
    latest: dict[str, str] = {}
    for (event_id,) in rows:
        m = _VERSIONED.match(event_id)
        if m and m.group(2) > latest.get(m.group(1), ""):
            latest[m.group(1)] = m.group(2)
    return [eid for (eid,) in rows if (m := _VERSIONED.match(eid)) and m.group(2) != latest[m.group(1)]]


async def retract(conn: Conn, tenant_id: int, event_ids: list[str]) -> dict[str, dict[str, str]]:
    """Mark events retracted, and drop the position rows of retracted fixes; returns {shipment_id:
    {retracted event id: its kind}}."""
    if not event_ids:
        return {}
    rows = await (
        await conn.execute(
            "UPDATE events SET retracted_at = now() WHERE tenant_id = %s AND event_id = ANY(%s)"
            " AND retracted_at IS NULL RETURNING shipment_id, event_id, kind, occurred_at",
            (tenant_id, event_ids),
        )
    ).fetchall()
    fixes = [(r["occurred_at"], r["event_id"]) for r in rows if r["kind"] == "position"]
    if fixes:  # by event, not shipment: the fix of an event no shipment had yet has its row too
        await conn.execute(
            "DELETE FROM positions p USING unnest(%s::timestamptz[], %s::text[]) AS f(at, eid)"
            " WHERE p.tenant_id = %s AND p.occurred_at = f.at AND p.event_id = f.eid",
            ([f[0] for f in fixes], [f[1] for f in fixes], tenant_id),
        )
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["shipment_id"]:
            out.setdefault(r["shipment_id"], {})[r["event_id"]] = r["kind"]
    return out


async def _unretracted(conn: Conn, tenant_id: int, shipment_id: str, state: State, kinds: set[str]) -> State:
    """`state` with its fix, trail and last reading taken again from what stands, after fixes or
    readings (`kinds`) of the shipment were retracted."""
    if "position" in kinds:
        # The trail keeps its points that stand (rebuilt from the latest rows it would shrink to
        # minutes); the last fix is the newest row that stands.
        standing = {
            r["occurred_at"]
            for r in await (
                await conn.execute(
                    "SELECT occurred_at FROM positions WHERE tenant_id = %s AND shipment_id = %s"
                    " AND occurred_at = ANY(%s)",
                    (tenant_id, shipment_id, [p.at for p in state.recent]),
                )
            ).fetchall()
        }
        recent = tuple(p for p in state.recent if p.at in standing)
        row = await (
            await conn.execute(
                "SELECT lat, lon, occurred_at, speed_kmh, heading FROM positions WHERE tenant_id = %s"
                " AND shipment_id = %s ORDER BY occurred_at DESC LIMIT 1",
                (tenant_id, shipment_id),
            )
        ).fetchone()
        last = (
            None
            if row is None
            else PositionFix(row["lat"], row["lon"], row["occurred_at"], row["speed_kmh"], row["heading"])
        )
        if last is not None:
            recent = trail(recent, last)
        state = replace(state, last=last, recent=recent)
        # Visits the withdrawn fixes made after the newest observation that stands are undone.
        located = [datetime.fromisoformat(m["at"]) for m in state.milestones if m.get("location")]
        since = max([*located, *([last.at] if last is not None else [])], default=None)
        await place_store.undo_visits_after(conn, tenant_id, shipment_id, since)
    if "sensor" in kinds:
        row = await (
            await conn.execute(
                "SELECT data, occurred_at FROM events WHERE tenant_id = %s AND shipment_id = %s AND kind = 'sensor'"
                " AND retracted_at IS NULL ORDER BY occurred_at DESC LIMIT 1",
                (tenant_id, shipment_id),
            )
        ).fetchone()
        reading = None if row is None else {**row["data"], "at": row["occurred_at"].isoformat()}
        state = replace(state, last_sensor=reading)
    return state


@dataclass(slots=True)
class Loaded:
    """A shipment's row (its own columns) and its decoded state, as of `token` (database, xmin and
    version of both rows). Shared with later batches: read-only, but for memos such as `_shipment`."""

    row: Row
    state: State
    token: tuple[Any, ...]


class StateCache:
    """Decoded shipment and state rows kept between batches: a batch locks its rows and reads only
    their tokens, and decodes just the rows that changed since (or were never seen). A token names
    the transaction and the update that wrote a row, so a rolled-back write never matches.

    Bounded: beyond `size` shipments, one chosen at random goes. Writes come round in turns (each
    tracker reports every so often), and with one shipment more in turn than fit, evicting the least
    recently written would evict the very one written next, every time: nothing would ever be found
    (another tenant's few shipments were enough to tip 10,000 of them over). At random, most of what
    fits stays found. An entry takes about 10 KB once its trail holds its 50 fixes, so the default
    stays under about 100 MB."""

    def __init__(self, size: int = 10_000, rng: random.Random | None = None) -> None:
        self._size = size
        self._rows: dict[str, tuple[Loaded, int]] = {}  # shipment -> (entry, its place in _ids)
        self._ids: list[str] = []
        self._rng = rng or random.Random()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, shipment_id: str, token: tuple[Any, ...]) -> Loaded | None:
        hit = self._rows.get(shipment_id)
        return hit[0] if hit is not None and hit[0].token == token else None

    def put(self, shipment_id: str, loaded: Loaded) -> None:
        known = self._rows.get(shipment_id)
        if known is not None:
            self._rows[shipment_id] = (loaded, known[1])
            return
        if len(self._ids) >= self._size:
            at = self._rng.randrange(len(self._ids))
            gone, last = self._ids[at], self._ids.pop()
            del self._rows[gone]
            if last != gone:  # the last one takes the evicted one's place
                self._ids[at] = last
                self._rows[last] = (self._rows[last][0], at)
        self._rows[shipment_id] = (loaded, len(self._ids))
        self._ids.append(shipment_id)


CACHE = StateCache()


async def load_states(
    conn: Conn, shipment_ids: Iterable[str], locked: list[tuple[Any, ...]] | None = None
) -> dict[str, Loaded]:
    """Lock the shipments' state rows for this transaction (unless `locked` holds those rows, as
    `LOCK_STATES` returns them); each with its decoded state."""
    if locked is None:
        locked = await tuples(conn, LOCK_STATES, (sorted(set(shipment_ids)),))
    db = conn.info.dbname
    out: dict[str, Loaded] = {}
    tokens: dict[str, tuple[Any, ...]] = {}
    for sid, sx, sv, hx, hv in locked:
        token = (db, sx, sv, hx, hv)
        hit = CACHE.get(sid, token)
        if hit is None:
            tokens[sid] = token
        else:
            out[sid] = hit
    if tokens:
        for r in await (await conn.execute(LOAD_STATES, (list(tokens),))).fetchall():
            state = state_from_row(r)
            shipment = {k: v for k, v in r.items() if k not in STATE_COLUMNS}
            out[r["id"]] = loaded = Loaded(shipment, state, tokens[r["id"]])
            CACHE.put(r["id"], loaded)
    return dict(sorted(out.items()))


def _outbox_rows(messages: list[Message]) -> str:
    return _dumps(
        [
            {"ord": i, "type": m["type"], "shipment_id": m.get("shipment_id"), "occurred_at": m["occurred_at"],
             "payload": m}
            for i, m in enumerate(messages, 1)
        ]
    )  # fmt: skip


def _with_seqs(base: int | None, messages: list[Message]) -> list[Message]:
    if base is None:
        raise ValidationError("tenant", "does not exist")
    return [{"seq": base + i, **m} for i, m in enumerate(messages, 1)]


def state_row(shipment_id: str, s: State, before: State | None = None) -> dict[str, Any]:
    """The state as a row for `UPDATE_STATES`; lists equal to `before`'s are left out (kept as stored)."""
    last = s.last

    def changed(new: Any, old: Any) -> Any:
        return None if before is not None and new == old else new

    return {
        "id": shipment_id,
        "status": s.status.status.value,
        "substatus": s.status.substatus,
        "status_at": s.status.status_at,
        "lat": last.lat if last else None,
        "lon": last.lon if last else None,
        "speed": last.speed_kmh if last else None,
        "heading": last.heading if last else None,
        "pos_at": last.at if last else None,
        "last_event_at": s.last_event_at,
        "last_sensor": s.last_sensor,
        "carrier_eta": s.carrier_eta,
        "carrier_eta_created_at": s.carrier_eta_created_at,
        "eta": s.eta,
        "exceptions": changed(list(s.exceptions), before and list(before.exceptions)),
        "emissions": s.emissions,
        "delivered_at": s.delivered_at,
        "started_at": s.started_at,
        "milestones": changed(list(s.milestones), before and list(before.milestones)),
        "recent": None if before is not None and s.recent is before.recent else [p.to_dict() for p in s.recent],
        "release": s.release,
    }


async def emit(conn: Conn, tenant_id: int, messages: list[Message]) -> list[Message]:
    """Give messages their seq and write them to the outbox (same transaction as the change)."""
    if not messages:
        return []
    params = {"n": len(messages), "tenant": tenant_id, "rows": _outbox_rows(messages)}
    got = await tuples(conn, INSERT_OUTBOX, params)
    return _with_seqs(int(got[0][0]) if got else None, messages)


async def update_shipments(
    conn: Conn,
    tenant_id: int,
    by_shipment: dict[str, list[Event]],
    received_at: datetime,
    evaluator: Evaluator | None,
    retracted: dict[str, dict[str, str]] | None = None,
    *,
    emitting: bool = False,
    locked: list[tuple[Any, ...]] | None = None,
) -> list[Message]:
    """Fold events into each shipment's state and save it; returns the messages (without seq), or
    when `emitting` writes them to the outbox in the same statement and returns them with their seq."""
    retracted = retracted or {}
    loaded = await load_states(conn, set(by_shipment) | set(retracted), locked)
    messages: list[Message] = []
    saves: list[dict[str, Any]] = []
    states: dict[str, State] = {}
    for sid, cur in loaded.items():
        row, before = cur.row, cur.state
        state, msgs = advance(before, sid, by_shipment.get(sid, []), received_at, final_codes(row))
        if sid in retracted:
            gone = retracted[sid]
            if kinds := {"position", "sensor"} & set(gone.values()):
                state = await _unretracted(conn, tenant_id, sid, state, kinds)
                if state.last is not None and state.last != before.last and all(m["type"] != "position" for m in msgs):
                    msgs.append(position_message(sid, state.last))  # back to the fix that stands
            kept = tuple(m for m in state.milestones if m.get("event_id") not in gone)
            status = rebuild_status(kept)
            state = replace(
                state,
                milestones=kept,
                status=status,
                delivered_at=status.status_at if status.status.value == "delivered" else None,
            )
            msgs = [m for m in msgs if m["type"] != "status.changed"]
            if (status.status, status.substatus) != (before.status.status, before.status.substatus):
                msgs.append(status_changed(sid, before.status, status))
        if evaluator is not None:
            state, extra = await evaluator(conn, row, before, state, received_at)
            msgs.extend(extra)
        saves.append(state_row(sid, state, before))
        states[sid] = state
        messages.extend(msgs)
    moved = [(sid, cur.state, by_shipment[sid]) for sid, cur in loaded.items() if sid in by_shipment]
    messages.extend(await crossings.detect(conn, tenant_id, moved))  # place.entered / place.exited
    if not saves and not (emitting and messages):
        return messages
    n = len(messages) if emitting else 0
    params = {
        "states": _dumps(saves),
        "ids": [r["id"] for r in saves],
        "n": n,
        "tenant": tenant_id,
        "rows": _outbox_rows(messages) if n else "[]",
    }
    base: int | None = None
    for sid, sx, sv in await tuples(conn, SAVE_AND_EMIT, params):
        if sid is None:
            base = int(sv)
            continue
        old = loaded[sid]
        CACHE.put(sid, Loaded(old.row, states[sid], (old.token[0], sx, sv, *old.token[3:])))
    return _with_seqs(base, messages) if n else messages


async def write_events(
    conn: Conn, tenant_id: int, events: list[Event], received_at: datetime, evaluator: Evaluator | None = None
) -> WriteResult:
    result = WriteResult(accepted=len(events))
    unique = list({e.event_id: e for e in reversed(events)}.values())[::-1]
    # Without retractions in play (DCSA only), the events statement also locks the state rows.
    locked: list[tuple[Any, ...]] | None = None if any(e.source == "dcsa" or e.retracts for e in unique) else []
    new = await insert_events(conn, tenant_id, unique, received_at, locked)
    result.stored, result.new_ids = len(new), set(new)
    result.duplicates = len(events) - len(new)
    fresh = [(e, new[e.event_id]) for e in unique if e.event_id in new]
    result.unknown_codes = [
        (e.source, e.milestone.raw_code or "")
        for e, _ in fresh
        if e.milestone is not None and e.milestone.code is None and e.retracts is None
    ]
    targets = [e.retracts for e, _ in fresh if e.retracts]
    # A retraction can overtake the event it withdraws: such an event is stored already retracted.
    arriving = [e.event_id for e, _ in fresh if e.retracts is None and e.source == "dcsa"]
    if arriving:
        rows = await (
            await conn.execute(
                "SELECT DISTINCT retracts FROM events WHERE tenant_id = %s AND retracts = ANY(%s)",
                (tenant_id, arriving),
            )
        ).fetchall()
        targets += [r["retracts"] for r in rows]
    targets += await superseded(conn, tenant_id, [e.event_id for e, _ in fresh if e.source == "dcsa"])
    retracted = await retract(conn, tenant_id, targets)
    gone = {eid for ids in retracted.values() for eid in ids}  # stored, and withdrawn at once
    by_shipment: dict[str, list[Event]] = {}
    for e, sid in fresh:
        if sid is not None and e.retracts is None and e.event_id not in gone:
            by_shipment.setdefault(sid, []).append(e)
    if by_shipment or retracted:
        result.messages = await update_shipments(
            conn, tenant_id, by_shipment, received_at, evaluator, retracted, emitting=True, locked=locked
        )
    return result


async def record_eta(conn: Conn, shipment_id: str, prediction: Eta) -> None:
    """Keep a material change of a shipment's ETA in its history."""
    await conn.execute(
        "INSERT INTO eta_history (shipment_id, computed_at, predicted_at, earliest, latest, carrier_eta,"
        " method, eta) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            shipment_id,
            prediction.computed_at,
            prediction.predicted_at,
            prediction.earliest,
            prediction.latest,
            prediction.carrier_eta,
            prediction.method,
            orjson.dumps(prediction.to_dict()).decode(),
        ),
    )


async def quiet_shipments(conn: Conn, now: datetime, limit: int) -> list[Row]:
    """Open shipments quiet for an hour (time-based rules need that much) and not looked at for 10
    minutes, locked for this transaction (others skip them)."""
    rows: list[Row] = await (
        await conn.execute(
            "SELECT shipment_id, tenant_id FROM shipment_state"
            " WHERE status NOT IN ('delivered', 'returned', 'cancelled', 'expired')"
            " AND (last_event_at IS NULL OR last_event_at BETWEEN %s AND %s) AND updated_at < %s"
            " ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (now - timedelta(days=60), now - timedelta(hours=1), now - timedelta(minutes=10), limit),
        )
    ).fetchall()
    return rows
