"""Entering and leaving places, decided by event time inside the write transaction.

A shipment's path is the sequence of its observations in event time: position fixes, and actual
milestones located at a place (by UN/LOCODE or IATA code, or by coordinates). Between two
consecutive observations the straight segment decides: a place the segment crosses is entered and
left at the interpolated times, so a place passed between two sparse fixes counts. What an
observation says of itself is final at its end of the segment (a milestone at NLRTM is in the
port, a `departed` there leaves it). Only observations newer than the shipment's latest one
extend the path: a late, older fix is stored but decides nothing, so it cannot make a false
entered/exited pair.

Matching is one vectorised query of an STR-tree over the prepared place polygons per batch, for
all its segments at once; exact geometry runs only for the few segments whose box meets a place.
Each process keeps one index per tenant (the bundled places and the tenant's own), rebuilt when the
tenant's place version (`place_store`) changes: at once in the process that made the change, and
within `VERSION_CHECK_S` in the others.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
import shapely

from trackd import eta, place_store, places
from trackd import messages as msg
from trackd.codes import Classifier, EventKind, Milestone
from trackd.messages import Message
from trackd.model import Event, Location
from trackd.state import State
from trackd.store import Conn

VERSION_CHECK_S = 1.0
# Completed visits a place needs before its learned dwell replaces the ETA's prior there (as many as
# the ETA wants of any learned dwell); re-read at most every DWELL_TTL_S, at once after this process
# closed a visit of the tenant.
DWELL_VISITS = 5
DWELL_TTL_S = 60.0
LEAVING = frozenset({Milestone.DEPARTED, Milestone.GATE_OUT})  # at the place, then gone from it
EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Crossing:
    at: datetime
    place: int  # index into `Index.fences`
    entered: bool


@dataclass(slots=True)
class Observation:
    """Where a shipment was at `at`: the point, and the places it was in there (`inside`, index
    positions). `exact`: the point was observed (a fix, or a milestone's own coordinates), not the
    bundled point of a code."""

    at: datetime
    lon: float
    lat: float
    inside: frozenset[int] | None = None  # None: by geometry, once the candidates are known
    codes: frozenset[int] = frozenset()  # places named by the observation's codes
    exact: bool = True
    leaving: bool = False


class Index:
    """An STR-tree over the prepared polygons of `fences`, with their codes."""

    def __init__(self, fences: Sequence[places.Geofence], polygons: np.ndarray[Any, Any] | None = None) -> None:
        self.fences = list(fences)
        self.polygons = polygons if polygons is not None else _polygons(self.fences)
        self.tree = shapely.STRtree(self.polygons)
        self.by_code: dict[str, list[int]] = {}
        for i, f in enumerate(self.fences):
            for code in (f.unlocode, f.iata and "IATA:" + f.iata):
                if code:
                    self.by_code.setdefault(code, []).append(i)

    def named(self, loc: Location) -> frozenset[int]:
        """The places a location names by its codes."""
        out: list[int] = []
        if loc.unlocode:
            out += self.by_code.get("".join(loc.unlocode.split()).upper(), ())
        if loc.iata:
            out += self.by_code.get("IATA:" + "".join(loc.iata.split()).upper(), ())
        return frozenset(out)

    def candidates(self, boxes: list[tuple[float, float, float, float]]) -> dict[int, list[int]]:
        """{box index: places whose bounding box meets it}, for the boxes that meet any."""
        if not boxes:
            return {}
        a = np.asarray(boxes, dtype=float)
        hits = self.tree.query(shapely.box(a[:, 0], a[:, 1], a[:, 2], a[:, 3]))
        out: dict[int, list[int]] = {}
        for b, p in zip(hits[0].tolist(), hits[1].tolist(), strict=True):
            out.setdefault(b, []).append(p)
        return out

    def contains(self, place: int, lon: float, lat: float) -> bool:
        return bool(shapely.contains_xy(self.polygons[place], lon, lat))


def _polygons(fences: Sequence[places.Geofence]) -> np.ndarray[Any, Any]:
    """Prepared polygons of `fences`, in order; the circles of Points built in one go."""
    out = np.empty(len(fences), dtype=object)
    centers = [(i, f.center(), f.radius_m) for i, f in enumerate(fences)]
    points = [(i, c, r) for i, c, r in centers if c is not None]
    if points:
        rings = places.circles([c[0] for _, c, _ in points], [c[1] for _, c, _ in points], [r for _, _, r in points])
        out[[i for i, _, _ in points]] = shapely.polygons(rings)
    for i, c, _ in centers:
        if c is None:
            rings = fences[i].rings()
            out[i] = shapely.Polygon(rings[0], rings[1:])
    shapely.prepare(out)
    return out


@lru_cache(maxsize=1)
def builtin_index() -> Index:
    return Index(places.builtin_fences())


def tenant_index(own: Sequence[places.Geofence]) -> Index:
    """The bundled places and a tenant's own (the bundled polygons are shared, not rebuilt)."""
    if not own:
        return builtin_index()
    base = builtin_index()
    return Index([*base.fences, *own], np.concatenate([base.polygons, _polygons(own)]))


# -- the geometry of one segment -----------------------------------------------------------------


def _intervals(a: Observation, b: Observation, polygon: Any) -> list[tuple[float, float]]:
    """The parts of the segment a -> b inside `polygon`, as fractions of its length."""
    line = shapely.LineString([(a.lon, a.lat), (b.lon, b.lat)])
    try:
        inside = shapely.intersection(line, polygon)
    except shapely.errors.GEOSException:  # a degenerate case of the geometry: the ends decide
        return []
    out = []
    for part in shapely.get_parts(inside):
        if not isinstance(part, shapely.LineString) or part.length <= 0:
            continue
        ends = sorted(line.project(shapely.Point(c), normalized=True) for c in (part.coords[0], part.coords[-1]))
        out.append((float(ends[0]), float(ends[1])))
    out.sort()
    merged: list[tuple[float, float]] = []
    for lo, hi in out:
        if merged and lo <= merged[-1][1] + EPS:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def segment(a: Observation, b: Observation, place: int, polygon: Any) -> list[Crossing]:
    """Entering and leaving `place` between a and b, whose `inside` sets are known."""
    assert a.inside is not None
    assert b.inside is not None
    in_a, in_b = place in a.inside, place in b.inside
    dlon = abs(b.lon - a.lon)
    flat = (dlon < EPS and abs(b.lat - a.lat) < EPS) or dlon > 180
    if in_a and in_b and (flat or not (a.exact and b.exact)):
        return []  # there at both ends, and no trustworthy geometry in between
    spans = [] if flat else _intervals(a, b, polygon)
    kept: list[tuple[float, float]] = []
    for lo, hi in spans:
        at_a, at_b = lo <= EPS, hi >= 1 - EPS
        if at_a and not in_a:  # the observation says it was not there
            if at_b and in_b:
                kept.append((1.0, 1.0))
            continue
        if at_b and not in_b:
            if at_a:
                kept.append((0.0, 0.0))
            continue
        kept.append((0.0 if at_a else lo, 1.0 if at_b else hi))
    if in_a and not (kept and kept[0][0] == 0.0):
        kept.insert(0, (0.0, 0.0))
    if in_b and not (kept and kept[-1][1] == 1.0):
        kept.append((1.0, 1.0))
    span = (b.at - a.at).total_seconds()

    def when(f: float) -> datetime:
        return a.at + timedelta(seconds=span * f)

    out = []
    for lo, hi in kept:
        if lo > 0.0:
            out.append(Crossing(when(lo), place, True))
        if hi < 1.0:
            out.append(Crossing(when(hi), place, False))
    return out


# -- a batch -------------------------------------------------------------------------------------


def _milestone_obs(index: Index, at: datetime, code: Milestone, loc: Location) -> list[Observation]:
    named = index.named(loc)
    if loc.lat is not None and loc.lon is not None:
        lon, lat, exact = loc.lon, loc.lat, True
    else:
        point = places.try_resolve(loc)
        if point is None:
            return []
        (lat, lon), exact = point, False
    if not named and not exact:
        return []
    there = Observation(at, lon, lat, codes=named, exact=exact)
    if code not in LEAVING:
        return [there]
    return [there, Observation(at, lon, lat, codes=named, exact=exact, leaving=True)]


def _last_observation(index: Index, s: State) -> Observation | None:
    """The latest observation of a state: its last fix, or a later located milestone."""
    fix = s.last
    for m in reversed(s.milestones):
        if not m.get("location"):
            continue
        at = datetime.fromisoformat(m["at"])
        if fix is not None and at <= fix.at:
            break
        obs = _milestone_obs(index, at, Milestone(m["code"]), Location(**m["location"]))
        if obs:
            return obs[-1]
    return Observation(fix.at, fix.lon, fix.lat) if fix is not None else None


def _new_observations(index: Index, events: list[Event], after: datetime | None) -> list[Observation]:
    out: list[Observation] = []
    for e in events:
        if after is not None and e.occurred_at <= after:
            continue  # late: stored, but the path is decided by newer observations only
        if e.kind is EventKind.POSITION and e.position is not None:
            out.append(Observation(e.occurred_at, e.position.lon, e.position.lat))
        elif e.milestone is not None and e.milestone.location is not None and e.milestone.code is not None:
            if e.milestone.classifier is Classifier.ACTUAL and e.retracts is None:
                out += _milestone_obs(index, e.occurred_at, e.milestone.code, e.milestone.location)
    out.sort(key=lambda o: (o.at, o.leaving))
    return out


def _box(a: Observation, b: Observation) -> list[tuple[float, float, float, float]]:
    if abs(b.lon - a.lon) > 180:  # across the antimeridian: the two ends only
        return [(a.lon, a.lat, a.lon, a.lat), (b.lon, b.lat, b.lon, b.lat)]
    return [(min(a.lon, b.lon), min(a.lat, b.lat), max(a.lon, b.lon), max(a.lat, b.lat))]


@dataclass(slots=True)
class _Path:
    shipment_id: str
    obs: list[Observation]  # the previous observation (if any) first
    fresh_start: bool  # no previous observation: the first one enters what it is in
    near: set[int] = field(default_factory=set)


def _settle(index: Index, o: Observation, near: set[int]) -> None:
    if o.leaving:
        o.inside = frozenset()
        if o.exact:
            o.inside = frozenset(p for p in near if p not in o.codes and index.contains(p, o.lon, o.lat))
        return
    geometric = frozenset(p for p in near if index.contains(p, o.lon, o.lat)) if o.exact else frozenset()
    o.inside = o.codes | geometric


Item = tuple[str, State, list[Event]]


def _one_step(item: Item) -> tuple[float, float, float, float] | None:
    """The box of what a shipment's batch adds after its last fix, when the batch holds only
    positions (the common case, checked without building observations); else None."""
    _, before, events = item
    last = before.last
    if last is None or (before.milestones and datetime.fromisoformat(before.milestones[-1]["at"]) > last.at):
        return None
    w = e = last.lon
    s = n = last.lat
    for ev in events:
        p = ev.position
        if p is None:
            return None
        if ev.occurred_at > last.at:  # older ones decide nothing
            w, e, s, n = min(w, p.lon), max(e, p.lon), min(s, p.lat), max(n, p.lat)
    return (w, s, e, n) if e - w <= 180 else None


def crossings(index: Index, batch: Sequence[Item]) -> list[tuple[str, Crossing]]:
    """(shipment id, crossing) in time order per shipment, for each shipment's `(id, state before
    the batch, the batch's events)`. Shipments that only moved on from their last fix are checked
    against the tree first, by the box of their new fixes, all at once; only those near a place,
    and the rest, build their paths."""
    general: list[Item] = []
    steps: list[Item] = []
    boxes: list[tuple[float, float, float, float]] = []
    for item in batch:
        box = _one_step(item)
        if box is None:
            general.append(item)
        else:
            steps.append(item)
            boxes.append(box)
    general += [steps[i] for i in index.candidates(boxes)]
    return _paths(index, general) if general else []


def _paths(index: Index, batch: Sequence[Item]) -> list[tuple[str, Crossing]]:
    paths: list[_Path] = []
    boxes: list[tuple[float, float, float, float]] = []
    owner: list[int] = []
    for sid, before, events in batch:
        prev = _last_observation(index, before)
        new = _new_observations(index, events, prev.at if prev else None)
        if not new:
            continue
        chain = [prev, *new] if prev is not None else new
        for a, b in itertools.pairwise(chain):
            for box in _box(a, b):
                boxes.append(box)
                owner.append(len(paths))
        if len(chain) == 1:
            boxes.append((chain[0].lon, chain[0].lat, chain[0].lon, chain[0].lat))
            owner.append(len(paths))
        paths.append(_Path(sid, chain, prev is None))
    for box_no, hits in index.candidates(boxes).items():
        paths[owner[box_no]].near.update(hits)
    out: list[tuple[str, Crossing]] = []
    for path in paths:
        codes = set().union(*(o.codes for o in path.obs))
        if not path.near and not codes:
            continue
        near = path.near | codes
        for o in path.obs:
            _settle(index, o, near)
        found: list[Crossing] = []
        first = path.obs[0]
        if path.fresh_start:
            assert first.inside is not None
            found += [Crossing(first.at, p, True) for p in sorted(first.inside)]
        for a, b in itertools.pairwise(path.obs):
            for p in sorted(near):
                found += segment(a, b, p, index.polygons[p])
        found.sort(key=lambda c: c.at)  # stable: per place, the order the segments gave
        out += [(path.shipment_id, c) for c in found]
    return out


# -- in the write transaction --------------------------------------------------------------------


@dataclass(slots=True)
class _Cached:
    version: int
    index: Index
    checked: float


_CACHE: dict[int, _Cached] = {}


def forget(tenant_id: int) -> None:
    """Drop a tenant's index (its places changed in this process)."""
    _CACHE.pop(tenant_id, None)


async def warm() -> Index:
    """The bundled index, built in a thread the first time (a second or so) so that the event loop
    goes on serving meanwhile."""
    if builtin_index.cache_info().currsize:
        return builtin_index()
    return await asyncio.to_thread(builtin_index)


async def index_for(conn: Conn, tenant_id: int) -> Index:
    """The tenant's index, rebuilt when its place version changed."""
    hit = _CACHE.get(tenant_id)
    now = time.monotonic()
    if hit is not None and now - hit.checked < VERSION_CHECK_S:
        return hit.index
    version = await place_store.version(conn, tenant_id)
    if hit is not None and hit.version == version:
        hit.checked = now
        return hit.index
    own = await place_store.tenant_fences(conn, tenant_id)
    await warm()
    index = await asyncio.to_thread(tenant_index, own) if own else builtin_index()
    _CACHE[tenant_id] = cached = _Cached(version, index, now)
    return cached.index


async def detect(conn: Conn, tenant_id: int, batch: Sequence[tuple[str, State, list[Event]]]) -> list[Message]:
    """`place.entered` / `place.exited` for a batch's shipments (id, state before, new events), with
    their visits opened and closed in the same transaction."""
    if not batch:
        return []
    index = await index_for(conn, tenant_id)
    found = crossings(index, batch)
    if not found:
        return []
    messages = []
    for sid, c in found:
        fence = index.fences[c.place]
        messages.append(msg.place_changed("entered" if c.entered else "exited", sid, c.at, fence.summary()))
    await place_store.record_visits(
        conn, tenant_id, [(sid, index.fences[c.place].id, c.at, c.entered) for sid, c in found]
    )
    if any(not c.entered for _, c in found):
        _CLOSED[tenant_id] = _CLOSED.get(tenant_id, 0) + 1
    return messages


# -- learned dwell for the ETA -------------------------------------------------------------------

_CLOSED: dict[int, int] = {}  # per tenant: batches of this process that closed visits
_DWELL: dict[int, tuple[float, int, dict[str, tuple[float, ...]]]] = {}  # expiry, _CLOSED seen, dwell
_MERGED: dict[int, tuple[eta.LaneStats, dict[str, tuple[float, ...]], eta.LaneStats]] = {}


def _dwell_key(place_id: str, unlocode: str | None, iata: str | None) -> str | None:
    """The ETA's key (`places.place_key`) of a place: by its UN/LOCODE, else its IATA code."""
    kind, _, code = place_id.partition(":")
    if kind == "unlocode":
        return code
    if kind == "iata":
        return "IATA:" + code
    if unlocode:
        return unlocode
    return "IATA:" + iata if iata else None


async def learned_dwell(conn: Conn, tenant_id: int) -> dict[str, tuple[float, ...]]:
    """Dwell hours per ETA place key, from the places with `DWELL_VISITS` completed visits or more
    (a place without a code has no key the ETA could ask for)."""
    closed = _CLOSED.get(tenant_id, 0)
    hit = _DWELL.get(tenant_id)
    if hit is not None and hit[0] > time.monotonic() and hit[1] == closed:
        return hit[2]
    out: dict[str, tuple[float, ...]] = {}
    for pid, unlocode, iata, hours in await place_store.dwell_by_place(conn, tenant_id, DWELL_VISITS):
        key = _dwell_key(pid, unlocode, iata)
        if key is not None:
            out[key] = (*out.get(key, ()), *hours)
    _DWELL[tenant_id] = (time.monotonic() + DWELL_TTL_S, closed, out)
    return out


async def with_learned_dwell(conn: Conn, tenant_id: int, stats: eta.LaneStats) -> eta.LaneStats:
    """`stats` with the dwell learned from place visits in place of what milestones taught, per place."""
    dwell = await learned_dwell(conn, tenant_id)
    if not dwell:
        return stats
    hit = _MERGED.get(tenant_id)
    if hit is not None and hit[0] is stats and hit[1] is dwell:
        return hit[2]
    merged = replace(stats, dwell_h={**stats.dwell_h, **dwell})
    _MERGED[tenant_id] = (stats, dwell, merged)
    return merged
