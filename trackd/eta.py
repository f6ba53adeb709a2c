"""The ETA engine: where a shipment is on its legs, how long the rest takes, how sure we are.

Pure: what is known comes in as a `Journey`, history as `LaneStats`, the clock as `now`.
Physics (remaining km / mode speed + expected dwell at the nodes ahead + customs) is blended
toward the lane's learned transit time and the carrier's estimate; the 80 % interval is
split-conformal on past residuals at the same journey stage. docs/eta.md has the long form.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from trackd import geo, places, routing
from trackd.codes import Milestone, Mode
from trackd.model import MAX_ESTIMATE_AHEAD, Location
from trackd.shipment import Eta, Leg, PositionFix, Shipment

_T = TypeVar("_T")
MilestoneRow = tuple[datetime, Milestone, Location | None]

SPEED_KMH = {Mode.SEA: 30.0, Mode.AIR: 750.0, Mode.ROAD: 60.0, Mode.RAIL: 35.0}
AIR_HANDLING_H = 3.0  # taxi, climb and descent, ramp: what cruise speed alone misses
DWELL_PRIOR_H = {Mode.SEA: 72.0, Mode.AIR: 24.0, Mode.RAIL: 12.0, Mode.ROAD: 6.0}
CUSTOMS_H = 24.0
CUSTOMS_HOLD_H = 48.0
FINAL_CODE_H = {  # what is left once these are seen at the destination
    Milestone.OUT_FOR_DELIVERY: 4.0,
    Milestone.AVAILABLE_FOR_PICKUP: 48.0,
    Milestone.DELIVERY_ATTEMPTED: 24.0,
}
# Prior 80 % interval before calibration data: fixed hours + a share of the remaining time.
PRIOR_WIDTH = {  # mode: (floor_h, share below, share above)
    Mode.SEA: (12.0, 0.10, 0.25),
    Mode.AIR: (4.0, 0.15, 0.40),
    Mode.ROAD: (1.0, 0.15, 0.35),
    Mode.RAIL: (4.0, 0.10, 0.30),
}
NODE_RADIUS_KM = 75.0  # a milestone this close to a leg end happened at that node
AT_NODE_KM = 5.0  # a slow position this close to a node is waiting there
LANE_MIN = 5
DWELL_MIN = 5
CAL_MIN = 10
KEEP = {"transit": 200, "dwell": 200, "residuals": 1000}
DEPARTING = frozenset({Milestone.DEPARTED, Milestone.PICKED_UP, Milestone.IN_TRANSIT})
NOT_PROGRESS = frozenset({Milestone.BOOKED, Milestone.INFO_RECEIVED, Milestone.CANCELLED})


def hours(delta: timedelta) -> float:
    return delta.total_seconds() / 3600.0


@dataclass(frozen=True, slots=True)
class Journey:
    """What is known about one shipment at `now`.

    `milestones`: its actual milestones as (occurred_at, code, location), any order.
    `position`: the last fix. `carrier_eta`: the carrier's latest estimated arrival or delivery
    made at `carrier_eta_created_at`. `started_at`: when the journey
    began; derived when not given (first milestone past booking, else first fix, else the
    shipment's `created_at`). `recent_positions`: the last fixes, oldest first, for dwell.
    """

    shipment: Shipment
    milestones: tuple[MilestoneRow, ...] = ()
    position: PositionFix | None = None
    carrier_eta: datetime | None = None
    carrier_eta_created_at: datetime | None = None
    started_at: datetime | None = None
    recent_positions: tuple[PositionFix, ...] = ()  # oldest first, for dwell detection

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(sorted(self.milestones, key=lambda m: m[0])))
        if self.started_at is None:
            firsts = [m[0] for m in self.milestones if m[1] not in NOT_PROGRESS]
            firsts += [p.at for p in (*self.recent_positions, self.position) if p is not None]
            start = min(firsts) if firsts else self.shipment.created_at
            object.__setattr__(self, "started_at", start)

    def delivered_at(self) -> datetime | None:
        return next((t for t, code, _ in reversed(self.milestones) if code is Milestone.DELIVERED), None)


@dataclass(frozen=True, slots=True)
class LaneStats:
    """Learned history. Keys: lanes `lane_key()`, places `places.place_key()`, stages
    `"<mode>:<0..3>"`. Residuals are (actual - predicted, horizon = predicted - computed) hours."""

    transit_h: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    dwell_h: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    residuals: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> LaneStats:
        return cls()


@dataclass(frozen=True, slots=True)
class Forecast:
    computed_at: datetime
    predicted_at: datetime


@dataclass(frozen=True, slots=True)
class CompletedJourney:
    shipment: Shipment
    started_at: datetime
    delivered_at: datetime
    milestones: tuple[MilestoneRow, ...] = ()
    forecasts: tuple[Forecast, ...] = ()  # predictions made during the journey, for calibration


@dataclass(frozen=True, slots=True)
class Progress:
    """Where the shipment is: at node `node` (0 = origin, len(legs) = destination) since
    `anchor`, or travelling leg `leg` with `remaining_km` to go as of `anchor`."""

    anchor: datetime
    node: int | None = None
    leg: int | None = None
    remaining_km: float = 0.0
    final_code: Milestone | None = None


def resolved_legs(shipment: Shipment) -> tuple[routing.ResolvedLeg, ...] | None:
    """Each leg with its end coordinates; None when there are none or one cannot be resolved."""
    return routing.resolve_legs(shipment.legs)


def lane_key(shipment: Shipment) -> str | None:
    if not shipment.legs:
        return None
    first, last = shipment.legs[0].origin, shipment.legs[-1].destination
    mode = shipment.main_mode.value if shipment.main_mode else "-"
    return f"{places.place_key(first)}|{places.place_key(last)}|{mode}|{(shipment.carrier or '').lower()}"


def locate(journey: Journey, now: datetime) -> Progress | None:
    """Where the shipment is on its legs; None when it has no resolvable legs."""
    legs = resolved_legs(journey.shipment)
    if legs is None:
        return None
    prog: Progress | None = None
    rows = [m for m in journey.milestones if m[0] <= now and m[1] not in NOT_PROGRESS]
    for i in range(len(rows) - 1, -1, -1):
        at, code, loc = rows[i]
        p = places.try_resolve(loc)
        if p is None:
            continue
        node = routing.nearest_node(legs, p, NODE_RADIUS_KM)
        if node is not None and code in DEPARTING and node < len(legs):
            leg, _, _ = legs[node]
            prog = Progress(at, leg=node, remaining_km=routing.leg_distance_km(leg))
        elif node is not None:
            first = at  # the dwell began with the first of the milestones in a row at this node
            for t, _, other in reversed(rows[:i]):
                q = places.try_resolve(other)
                if q is None or routing.nearest_node(legs, q, NODE_RADIUS_KM) != node:
                    break
                first = t
            final = code if node == len(legs) and code in FINAL_CODE_H else None
            prog = Progress(first, node=node, final_code=final)
        else:
            leg_i, rem, _ = routing.nearest_leg(legs, p, 0)
            prog = Progress(at, leg=leg_i, remaining_km=rem)
        break
    pos = journey.position
    if pos is not None and pos.at <= now and (prog is None or pos.at >= prog.anchor):
        here = (pos.lat, pos.lon)
        floor = 0 if prog is None else (prog.node if prog.node is not None else prog.leg or 0)
        floor = min(floor, len(legs) - 1)
        node = routing.nearest_node(legs, here, AT_NODE_KM)
        if node is not None and node >= floor and (pos.speed_kmh or 0.0) < 5.0:
            since = prog.anchor if prog is not None and prog.node == node else stationary_since(journey)
            return Progress(since or pos.at, node=node, final_code=prog.final_code if prog else None)
        leg_i, rem, _ = routing.nearest_leg(legs, here, floor)
        return Progress(pos.at, leg=leg_i, remaining_km=rem)
    if prog is None and rows:  # started, but nothing located: assume on the first leg
        departed = next((t for t, c, _ in rows if c in DEPARTING), None)
        if departed is not None:
            return Progress(departed, leg=0, remaining_km=routing.leg_distance_km(legs[0][0]))
        return Progress(rows[0][0], node=0)
    return prog


def stationary_since(journey: Journey, radius_m: float = 500.0) -> datetime | None:
    """Since when the positions have stayed within `radius_m` of the last one (None: no fix)."""
    fixes = [*journey.recent_positions]
    if journey.position is not None and (not fixes or fixes[-1].at < journey.position.at):
        fixes.append(journey.position)
    return geo.stationary_since([(f.at, (f.lat, f.lon)) for f in fixes], radius_m)


def node_dwell_h(legs: tuple[routing.ResolvedLeg, ...], node: int, stats: LaneStats) -> float:
    """Expected dwell at a node: learned median for the place, else a prior by node kind."""
    n = len(legs)
    loc = legs[node - 1][0].destination if node > 0 else legs[0][0].origin  # as `routing.nodes`
    learned = stats.dwell_h.get(places.place_key(loc), ())
    if len(learned) >= DWELL_MIN:
        return _median(learned)
    modes = {legs[i][0].mode for i in (node - 1, node) if 0 <= i < n}
    # the node is as slow as its slowest side: a port, else an airport, a rail terminal, a depot
    kind = next((m for m in (Mode.SEA, Mode.AIR, Mode.RAIL) if m in modes), Mode.ROAD)
    prior = DWELL_PRIOR_H[kind]
    return prior / 2 if node in (0, n) else prior  # an end node has one side of a hand-over


def leg_hours(leg: Leg, km: float, full: bool) -> float:
    return km / SPEED_KMH[leg.mode] + (AIR_HANDLING_H if full and leg.mode is Mode.AIR else 0.0)


def _customs_h(journey: Journey, now: datetime) -> float:
    """Customs time still ahead: once per international journey until released."""
    legs = journey.shipment.legs
    countries = {places.country_of(loc) for leg in legs for loc in (leg.origin, leg.destination)}
    if len(countries - {None}) < 2:
        return 0.0
    for at, code, _ in reversed(journey.milestones):
        if code is Milestone.CUSTOMS_RELEASED or code is Milestone.DELIVERED:
            return 0.0
        if code in (Milestone.CUSTOMS_SUBMITTED, Milestone.CUSTOMS_HOLD):
            total = CUSTOMS_HOLD_H if code is Milestone.CUSTOMS_HOLD else CUSTOMS_H
            return max(0.0, total - hours(now - at))
    return CUSTOMS_H


def physics(journey: Journey, stats: LaneStats, now: datetime) -> datetime | None:
    """Arrival from position, distances, mode speeds and node dwell; None without legs."""
    legs = resolved_legs(journey.shipment)
    if legs is None:
        return None
    prog = locate(journey, now) or Progress(now, node=0)  # not started: waiting at the origin
    if prog.node is not None:
        if prog.final_code is not None:
            current = FINAL_CODE_H[prog.final_code]
        else:
            current = node_dwell_h(legs, prog.node, stats)
        return _finish(journey, legs, stats, now, max(prog.anchor + timedelta(hours=current), now), prog.node)
    assert prog.leg is not None
    leg = legs[prog.leg][0]
    full = prog.remaining_km >= routing.leg_distance_km(leg) * 0.99
    arrive = max(prog.anchor + timedelta(hours=leg_hours(leg, prog.remaining_km, full)), now)
    leave = arrive + timedelta(hours=node_dwell_h(legs, prog.leg + 1, stats))
    return _finish(journey, legs, stats, now, leave, prog.leg + 1)


def _finish(
    journey: Journey,
    legs: tuple[routing.ResolvedLeg, ...],
    stats: LaneStats,
    now: datetime,
    at: datetime,
    node: int,
) -> datetime:
    """`at` is the moment the shipment leaves node `node`; add the legs and nodes after it."""
    total = _customs_h(journey, now)
    for i in range(node, len(legs)):
        leg = legs[i][0]
        total += leg_hours(leg, routing.leg_distance_km(leg), True) + node_dwell_h(legs, i + 1, stats)
    return at + timedelta(hours=total)


def _median(xs: Iterable[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def conformal_bounds(scores: list[float], lo: float = 0.1, hi: float = 0.9) -> tuple[float, float]:
    """Split-conformal quantiles with the (n+1) finite-sample correction."""
    s = sorted(scores)
    n = len(s)
    k_lo = max(1, math.floor((n + 1) * lo))
    k_hi = min(n, math.ceil((n + 1) * hi))
    return s[k_lo - 1], s[k_hi - 1]


def stage_of(elapsed_h: float, horizon_h: float) -> int:
    """Journey stage 0..3 by the share elapsed: 0-25, 25-50, 50-75, 75-100 %."""
    total = elapsed_h + horizon_h
    frac = elapsed_h / total if total > 0 else 1.0
    return min(3, max(0, int(frac * 4)))


def _score(residual_h: float, horizon_h: float) -> float:
    return residual_h / max(horizon_h, 1.0)


def interval(mode: Mode | None, stats: LaneStats, elapsed_h: float, horizon_h: float) -> tuple[float, float]:
    """(hours below, hours above) the prediction for the stated 80 % interval."""
    stage = stage_of(elapsed_h, horizon_h)
    key = f"{mode.value if mode else 'any'}:{stage}"
    pairs = list(stats.residuals.get(key, ()))
    if len(pairs) < CAL_MIN:
        pairs = [p for k, v in stats.residuals.items() if k.endswith(f":{stage}") for p in v]
    h = max(horizon_h, 1.0)
    if len(pairs) >= CAL_MIN:
        q_lo, q_hi = conformal_bounds([_score(r, hz) for r, hz in pairs])
        return max(0.0, -q_lo * h), max(0.0, q_hi * h)
    floor, below, above = PRIOR_WIDTH[mode or Mode.ROAD]
    return floor + below * horizon_h, floor + above * horizon_h


def carrier_weight(carrier_eta: datetime, now: datetime) -> float:
    """0.5 when the carrier's estimate is far off, rising to 0.9 as it nears (e-folding 48 h);
    0.3 once it has passed without delivery, since it has then proven wrong."""
    ahead = hours(carrier_eta - now)
    if ahead < 0:
        return 0.3
    return 0.5 + 0.4 * math.exp(-ahead / 48.0)


def predict(journey: Journey, stats: LaneStats, now: datetime) -> Eta | None:
    """The ETA at `now`; None when nothing can be said. Once delivered, the delivery time."""
    shipment = journey.shipment
    carrier_eta = journey.carrier_eta
    if carrier_eta is not None and carrier_eta - now > MAX_ESTIMATE_AHEAD:
        carrier_eta = None  # refused at ingest; one kept from before that is not believed either
    delivered = journey.delivered_at()
    if delivered is not None and delivered <= now:
        at = delivered
        return Eta(at, at, at, "delivered", now, carrier_eta, shipment.promised_at)
    start = journey.started_at or now
    base = physics(journey, stats, now)
    methods: list[str] = []
    if base is not None:
        methods.append("physics")
        lane = stats.transit_h.get(lane_key(shipment) or "", ())
        if len(lane) >= LANE_MIN:
            elapsed = max(0.0, hours(now - start))
            frac = elapsed / max(elapsed + hours(base - now), 1e-9)
            w = len(lane) / (len(lane) + LANE_MIN) * (1.0 - frac)
            lane_at = max(start + timedelta(hours=_median(lane)), now)
            base = base + (lane_at - base) * w
            methods.append("lane")
    if carrier_eta is not None:
        carrier_at = max(carrier_eta, now)
        if base is None:
            base = carrier_at
        else:
            base = base + (carrier_at - base) * carrier_weight(carrier_eta, now)
        methods.append("carrier")
    if base is None:
        return None
    base = max(base, now)
    horizon = hours(base - now)
    below, above = interval(shipment.main_mode, stats, max(0.0, hours(now - start)), horizon)
    earliest = max(now, base - timedelta(hours=below))
    latest = later(base, above)
    return Eta(base, earliest, latest, "+".join(methods), now, carrier_eta, shipment.promised_at)


def later(at: datetime, h: float) -> datetime:
    """`at` plus `h` hours, or the last representable time where that would overflow."""
    try:
        return at + timedelta(hours=h)
    except OverflowError:
        return datetime.max.replace(tzinfo=at.tzinfo)


def eta_changed(old: Eta | None, new: Eta, threshold: timedelta = timedelta(minutes=15)) -> bool:
    """Whether `new` is worth an `eta.changed`: the prediction moved by `threshold`, or a bound
    of the interval moved by the larger of `threshold` and a tenth of the old interval's width
    (bounds drift a little on every recomputation as the horizon shrinks)."""
    if old is None:
        return True
    if abs(new.predicted_at - old.predicted_at) >= threshold:
        return True
    material = max(threshold, (old.latest - old.earliest) / 10)
    return abs(new.earliest - old.earliest) >= material or abs(new.latest - old.latest) >= material


def _append(table: Mapping[str, tuple[_T, ...]], key: str, items: Iterable[_T], keep: int) -> dict[str, tuple[_T, ...]]:
    out = dict(table)
    out[key] = (*table.get(key, ()), *items)[-keep:]
    return out


def learn(stats: LaneStats, completed: CompletedJourney) -> LaneStats:
    """`stats` with one more completed journey: its transit, dwells and forecast residuals."""
    s = completed.shipment
    transit = dict(stats.transit_h)
    key = lane_key(s)
    if key is not None:
        transit = _append(stats.transit_h, key, [hours(completed.delivered_at - completed.started_at)], KEEP["transit"])
    dwell = dict(stats.dwell_h)
    for place, h in places.dwells(completed.milestones):
        dwell = _append(dwell, place, [h], KEEP["dwell"])
    residuals = dict(stats.residuals)
    mode = s.main_mode.value if s.main_mode else "any"
    for f in completed.forecasts:
        horizon = hours(f.predicted_at - f.computed_at)
        stage = stage_of(max(0.0, hours(f.computed_at - completed.started_at)), max(0.0, horizon))
        sample = (hours(completed.delivered_at - f.predicted_at), horizon)
        residuals = _append(residuals, f"{mode}:{stage}", [sample], KEEP["residuals"])
    return LaneStats(transit, dwell, residuals)
