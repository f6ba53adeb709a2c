"""Exception rules: what is wrong with a shipment now, as raise/clear changes against what is open.

`evaluate` is pure and idempotent: called again with the same facts and the changes it
returned applied to `open`, it returns nothing. Time-based rules (`no_signal`, `long_dwell`,
`demurrage_risk`) look only at `now` and the last facts, so a scheduled call with no new event
raises them.
Once a shipment is delivered, returned or cancelled nothing new is raised and the watch rules
clear; `delivery_failed` clears only on delivery.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from trackd import eta as eta_engine
from trackd import geo, routing
from trackd import release as rel
from trackd.codes import FINAL_STATUSES, ExceptionKind, Milestone, Mode, Status
from trackd.errors import ValidationError
from trackd.shipment import Eta, Leg, OpenException, StatusState, route_geojson

K = ExceptionKind
DELAY_TOLERANCE = timedelta(hours=2)
NO_SIGNAL_AFTER = {
    Mode.ROAD: timedelta(hours=2),
    Mode.RAIL: timedelta(hours=6),
    Mode.AIR: timedelta(hours=12),
    Mode.SEA: timedelta(hours=24),
}
CORRIDOR_KM = {Mode.ROAD: 50.0, Mode.RAIL: 50.0, Mode.SEA: 300.0, Mode.AIR: 200.0}
PLANNED_CORRIDOR_KM = {Mode.ROAD: 15.0, Mode.RAIL: 15.0, Mode.SEA: 100.0, Mode.AIR: 200.0}
STATIONARY_M = 500.0
# Usual stop between nodes when nothing is learned: a driver's daily rest, a rail yard, an
# anchorage wait, a missed connection. Long dwell is twice the usual stop.
EN_ROUTE_DWELL_H = {Mode.ROAD: 6.0, Mode.RAIL: 12.0, Mode.SEA: 24.0, Mode.AIR: 12.0}
LONG_DWELL_FACTOR = 2.0
MOVING = frozenset({Status.IN_TRANSIT, Status.OUT_FOR_DELIVERY})
_M = Milestone
ARRIVING = frozenset({_M.ARRIVED, _M.DISCHARGED, _M.GATE_IN, _M.AT_FACILITY, _M.CUSTOMS_HOLD})
LEAVING = frozenset({Milestone.DEPARTED, Milestone.GATE_OUT, Milestone.PICKED_UP, Milestone.LOADED})


@dataclass(frozen=True, slots=True)
class RuleChange:
    action: Literal["raise", "clear"]
    kind: ExceptionKind
    at: datetime
    detail: str | None = None


def _mode(journey: eta_engine.Journey, now: datetime) -> Mode | None:
    """The mode of the leg being travelled (or about to be), else the shipment's main mode."""
    legs = eta_engine.resolved_legs(journey.shipment)
    prog = eta_engine.locate(journey, now)
    if legs and prog is not None:
        i = prog.leg if prog.leg is not None else min(prog.node or 0, len(legs) - 1)
        return legs[i][0].mode
    return journey.shipment.main_mode


def _no_signal(
    journey: eta_engine.Journey, now: datetime, last_event_at: datetime | None, status: StatusState
) -> tuple[bool, datetime, str]:
    limit = NO_SIGNAL_AFTER[_mode(journey, now) or Mode.ROAD]
    if last_event_at is None or status.status not in MOVING:
        return False, last_event_at or now, "signal resumed"
    silent = now - last_event_at
    if silent >= limit:
        return True, last_event_at + limit, f"no event for {eta_engine.hours(silent):.1f} h while moving"
    return False, last_event_at, "signal resumed"


def _dwell(
    journey: eta_engine.Journey, stats: eta_engine.LaneStats, now: datetime, status: StatusState
) -> tuple[bool, datetime, str]:
    """Stationary (fixes within 500 m since the journey began, or an arrival milestone with no
    departure since) for longer than twice the usual dwell at that kind of place."""
    pos = journey.position
    pos_since = eta_engine.stationary_since(journey, STATIONARY_M)
    if pos is not None and pos_since == pos.at and not (pos.speed_kmh is not None and pos.speed_kmh < 1.0):
        pos_since = None  # one fix alone does not show a stop (and silence is no_signal's business)
    ms_since = None
    for at, code, _ in reversed(journey.milestones):
        if code in LEAVING:
            break
        if code in ARRIVING:
            ms_since = at
    fix_is_newer = pos is not None and (not journey.milestones or pos.at >= journey.milestones[-1][0])
    if pos is not None and any(code in LEAVING and at > pos.at for at, code, _ in journey.milestones):
        pos_since = None  # it left after its last fix (trackers sleep in flight): that fix shows no stop
    began = next((at for at, code, _ in journey.milestones if code not in eta_engine.NOT_PROGRESS), None)
    if pos_since is not None and began is not None and pos_since < began:
        pos_since = began  # waiting to be picked up is no stop in transit
    since = pos_since if fix_is_newer or ms_since is None else ms_since
    moved_at = pos.at if pos is not None else now
    if since is None or status.status not in (*MOVING, Status.CUSTOMS):
        return False, moved_at, "moving again"
    usual = _usual_dwell_h(journey, stats, now, status)
    stayed = eta_engine.hours(now - since)
    if stayed > LONG_DWELL_FACTOR * usual:
        at = since + timedelta(hours=LONG_DWELL_FACTOR * usual)
        return True, at, f"stationary for {stayed:.1f} h (usual {usual:.1f} h)"
    return False, moved_at, "moving again"


def _usual_dwell_h(
    journey: eta_engine.Journey, stats: eta_engine.LaneStats, now: datetime, status: StatusState
) -> float:
    if status.status is Status.CUSTOMS:
        return eta_engine.CUSTOMS_HOLD_H if status.substatus == "customs.hold" else eta_engine.CUSTOMS_H
    legs = eta_engine.resolved_legs(journey.shipment)
    prog = eta_engine.locate(journey, now)
    if legs and prog is not None and prog.node is not None:
        return eta_engine.node_dwell_h(legs, prog.node, stats)
    return EN_ROUTE_DWELL_H[_mode(journey, now) or Mode.ROAD]


ROUTE_CHUNK = 32  # segments per box of a booked route's index


@lru_cache(maxsize=1024)
def _route_boxes(route: tuple[geo.LatLon, ...]) -> tuple[tuple[float, float, float, float, int], ...]:
    """(south, north, west, east, first point) of each run of ROUTE_CHUNK segments; a run that
    crosses the antimeridian spans all longitudes."""
    boxes = []
    for i in range(0, len(route) - 1, ROUTE_CHUNK):
        pts = route[i : i + ROUTE_CHUNK + 1]
        lats, lons = [q[0] for q in pts], [q[1] for q in pts]
        west, east = min(lons), max(lons)
        if east - west > 180:
            west, east = -180.0, 180.0
        boxes.append((min(lats), max(lats), west, east, i))
    return tuple(boxes)


def _box_bound_km(p: geo.LatLon, box: tuple[float, float, float, float, int]) -> float:
    """A lower bound of the great-circle distance from `p` to any point in the box: the latitude
    gap alone, and hav(d) >= cos²(max |lat|) hav(longitude gap)."""
    south, north, west, east, _ = box
    dlat = max(0.0, south - p[0], p[0] - north)
    dlon = 0.0 if west <= p[1] <= east else min(abs(p[1] - west), abs(p[1] - east), 360 - abs(p[1] - west))
    cos_max = math.cos(math.radians(min(90.0, max(abs(p[0]), abs(south), abs(north)))))
    lon_km = 2 * math.asin(min(1.0, cos_max * math.sin(math.radians(min(dlon, 180.0)) / 2))) * geo.EARTH_RADIUS_KM
    return max(math.radians(dlat) * geo.EARTH_RADIUS_KM, lon_km)


def route_distance_km(p: geo.LatLon, route: tuple[geo.LatLon, ...]) -> float:
    """Distance from `p` to a booked route, visiting only the runs of segments that could be
    nearer than the best found so far (a route may have thousands of points)."""
    best = math.inf
    for bound, box in sorted((_box_bound_km(p, box), box) for box in _route_boxes(route)):
        if bound >= best:
            break
        i = box[4]
        for j in range(i, min(i + ROUTE_CHUNK, len(route) - 1)):
            best = min(best, geo.project_on_segment(p, route[j], route[j + 1]).distance_km)
    return best


def planned_path(leg: Leg, a: geo.LatLon, b: geo.LatLon) -> tuple[geo.LatLon, ...]:
    """The leg's planned path: the booked `route`, else the computed one (sea lanes; land and air
    legs the straight line between their ends, whose travel distance is the mode's circuity)."""
    return leg.route or routing.path_between(leg.mode, a, b)


def plan_geojson(legs: tuple[Leg, ...]) -> dict[str, Any]:
    """Every leg's planned path as a GeoJSON FeatureCollection (legs whose ends cannot be resolved
    are left out); `properties`: `leg` (its index), `mode`, `planned` (booked rather than computed)."""
    features = []
    for i, leg in enumerate(legs):
        try:
            a, b = routing.endpoints(leg)
        except ValidationError:
            continue
        features.append(
            {
                "type": "Feature",
                "geometry": route_geojson(planned_path(leg, a, b)),
                "properties": {"leg": i, "mode": leg.mode.value, "planned": leg.route is not None},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _off_route(journey: eta_engine.Journey) -> tuple[bool, datetime | None, str]:
    pos = journey.position
    legs = eta_engine.resolved_legs(journey.shipment)
    if pos is None or legs is None:
        return False, None, ""
    here = (pos.lat, pos.lon)
    # Off route only when outside every leg's corridor: a fix near any leg of the plan is on it.
    # A booked route is the path itself, so its corridor is narrower than a computed one's.
    margins = []
    for leg, a, b in legs:
        off = (
            route_distance_km(here, leg.route) if leg.route else geo.distance_to_path_km(here, planned_path(leg, a, b))
        )
        corridor = (PLANNED_CORRIDOR_KM if leg.route else CORRIDOR_KM)[leg.mode]
        margins.append((off - corridor, off, leg.mode, "planned" if leg.route else "computed"))
    worst = min(margins)
    if worst[0] > 0:
        return True, pos.at, f"{worst[1]:.0f} km off the {worst[3]} {worst[2].value} route"
    return False, pos.at, "back on route"


def _temperature(
    journey: eta_engine.Journey, sensor: Mapping[str, Any] | None, now: datetime
) -> tuple[bool | None, datetime, str]:
    rng = journey.shipment.temperature_range_c
    temp = sensor.get("temperature_c") if sensor else None
    if rng is None or sensor is None or not isinstance(temp, int | float):
        return None, now, ""
    at = sensor.get("at")
    at = at if isinstance(at, datetime) else now
    lo, hi = rng
    if temp < lo or temp > hi:
        return True, at, f"{temp:.1f} °C outside [{lo:g}, {hi:g}] °C"
    return False, at, f"{temp:.1f} °C back in range"


def _delivery_failed(journey: eta_engine.Journey) -> tuple[bool, datetime | None, str]:
    attempt = delivered = None
    for at, code, _ in journey.milestones:
        if code is Milestone.DELIVERY_ATTEMPTED:
            attempt = at
        elif code is Milestone.DELIVERED:
            delivered = at
    if attempt is not None and (delivered is None or delivered < attempt):
        return True, attempt, "delivery attempted, not delivered"
    return False, delivered, "delivered"


def evaluate(
    journey: eta_engine.Journey,
    eta: Eta | None,
    open: Mapping[str, OpenException],
    now: datetime,
    *,
    last_event_at: datetime | None,
    last_sensor: Mapping[str, Any] | None,
    status: StatusState,
    stats: eta_engine.LaneStats | None = None,
    release: Mapping[str, Any] | None = None,
) -> list[RuleChange]:
    """The raise/clear changes that bring `open` (kind -> open exception) in line with the facts.

    `last_event_at` is the time of the shipment's newest event of any kind; `last_sensor` its
    newest sensor reading (`temperature_c`, ..., optionally `at`); `stats` learned dwell;
    `release` the ocean release in its stored form (`trackd.release`).
    """
    stats = stats or eta_engine.LaneStats.empty()
    is_open = {k for k, e in open.items() if e.cleared_at is None}
    final = status.status in FINAL_STATUSES
    final_at = status.status_at or now
    out: list[RuleChange] = []

    def decide(
        kind: ExceptionKind, active: bool | None, at: datetime | None, detail: str, *, closes: bool = True
    ) -> None:
        if final and closes:
            active, at, detail = False, final_at, f"shipment {status.status.value}"
        if active is None or at is None:
            return
        if active and not final and kind.value not in is_open:
            out.append(RuleChange("raise", kind, at, detail))
        elif not active and kind.value in is_open:
            out.append(RuleChange("clear", kind, max(at, open[kind.value].raised_at), detail))

    promised = journey.shipment.promised_at
    if eta is not None and promised is not None:
        late = eta.predicted_at - promised
        detail = f"predicted {eta_engine.hours(late):.1f} h after the promised time"
        decide(K.DELAYED, late > DELAY_TOLERANCE, eta.computed_at, detail)
    else:
        decide(K.DELAYED, None, None, "")
    decide(K.NO_SIGNAL, *_no_signal(journey, now, last_event_at, status))
    decide(K.LONG_DWELL, *(_dwell(journey, stats, now, status) if not final else (None, None, "")))
    decide(K.OFF_ROUTE, *(_off_route(journey) if not final else (None, None, "")))
    hold = status.status is Status.CUSTOMS and status.substatus == "customs.hold"
    decide(K.CUSTOMS_HOLD, hold, status.status_at or now, "held by customs" if hold else "released")
    decide(K.TEMPERATURE_EXCURSION, *_temperature(journey, last_sensor, now))
    # A failed attempt stays on record when the shipment is returned or cancelled instead.
    decide(K.DELIVERY_FAILED, *_delivery_failed(journey), closes=status.status is Status.DELIVERED)
    if release is not None or K.DEMURRAGE_RISK.value in is_open:
        rows = ((at, code) for at, code, _ in journey.milestones)
        decide(K.DEMURRAGE_RISK, *rel.demurrage(rel.Release.from_dict(release), rows, now))
    return out
