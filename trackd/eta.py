"""The ETA engine: where a shipment is on its legs, how long the rest takes, how sure we are.

Pure: what is known comes in as a `Journey`, history as `LaneStats`, the clock as `now`.
Candidates (physics, the lane's learned time from the newest milestone, the rest of the leg at
the speed made good, the carrier's estimate corrected by its learned bias) are combined by their
learned precision; the 80 % interval and `p_late` come from recency-weighted conformal residuals
at the same mode and journey stage. docs/eta.md has the long form.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TypeVar

from trackd import eta_learn, eta_path, geo, places, routing
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
DWELL_MIN = 5
CAL_MIN = 10
KEEP = {"dwell": 200, "residuals": 600, "tails": 60, "carrier": 200}
DEPARTING = frozenset({Milestone.DEPARTED, Milestone.PICKED_UP, Milestone.IN_TRANSIT})
ARRIVING = (Milestone.ARRIVED, Milestone.AT_FACILITY)  # what starts the learned time from a node
START = "start"  # the anchor before any milestone at a node
STAGE_EDGES = (0.375, 0.625, 0.825)
SCORE_FLOOR_H = 6.0  # residual scores are per (horizon + 6 h): short horizons still err by hours
PHYSICS_SIGMA = (0.5, 12.0)  # the physics prior errs by half the time to go, plus 12 h
SPEED_PRIOR_H = 6.0  # the mode's speed counts as this many hours of observed progress
Z80 = 1.2816  # the normal quantile of a two-sided 80 % interval
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
    """Learned history. Keys: places `places.place_key()`, stages
    `"<mode>:<0..3>"`, tails `"<route_key()>|<anchor>"`, carrier bias
    `"<carrier or *>|<route_key() or *>|<horizon bucket>"`. Residuals are (actual - predicted,
    horizon = predicted - computed) hours; tails (completed at, hours from the anchor to delivery)
    and carrier samples (completed at, actual - estimate, hours the estimate looked ahead), with
    times as `eta_learn.epoch_h`."""

    dwell_h: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    residuals: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    tails: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    carrier: Mapping[str, tuple[tuple[float, float, float], ...]] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> LaneStats:
        return cls()


@dataclass(frozen=True, slots=True)
class Forecast:
    """A prediction made during a journey, and the carrier's estimate it had then."""

    computed_at: datetime
    predicted_at: datetime
    carrier_eta: datetime | None = None


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


@lru_cache(maxsize=4096)
def leg_km(leg: Leg) -> float:
    """The leg's travel distance (`routing.leg_distance_km`), cached: it is asked on every prediction."""
    return routing.leg_distance_km(leg)


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
            prog = Progress(at, leg=node, remaining_km=leg_km(leg))
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
            leg_i, rem, _ = eta_path.nearest_leg(legs, p, 0)
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
        leg_i, rem, _ = eta_path.nearest_leg(legs, here, floor)
        return Progress(pos.at, leg=leg_i, remaining_km=rem)
    if prog is None and rows:  # started, but nothing located: assume on the first leg
        departed = next((t for t, c, _ in rows if c in DEPARTING), None)
        if departed is not None:
            return Progress(departed, leg=0, remaining_km=leg_km(legs[0][0]))
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
    return _physics(journey, legs, stats, now, locate(journey, now))


def _physics(
    journey: Journey, legs: tuple[routing.ResolvedLeg, ...], stats: LaneStats, now: datetime, located: Progress | None
) -> datetime:
    prog = located or Progress(now, node=0)  # not started: waiting at the origin
    if prog.node is not None:
        if prog.final_code is not None:
            current = FINAL_CODE_H[prog.final_code]
        else:
            current = node_dwell_h(legs, prog.node, stats)
        return _finish(journey, legs, stats, now, max(prog.anchor + timedelta(hours=current), now), prog.node)
    assert prog.leg is not None
    leg = legs[prog.leg][0]
    full = prog.remaining_km >= leg_km(leg) * 0.99
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
        total += leg_hours(leg, leg_km(leg), True) + node_dwell_h(legs, i + 1, stats)
    return at + timedelta(hours=total)


def _median(xs: Iterable[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def stage_of(elapsed_h: float, horizon_h: float) -> int:
    """Journey stage 0..3 by the share elapsed: under 37.5 %, to 62.5 %, to 82.5 %, beyond (each
    stage centred on one of the quarter marks where journeys are scored)."""
    total = elapsed_h + horizon_h
    frac = elapsed_h / total if total > 0 else 1.0
    return sum(1 for edge in STAGE_EDGES if frac >= edge)


def _score(residual_h: float, horizon_h: float) -> float:
    return residual_h / (max(horizon_h, 0.0) + SCORE_FLOOR_H)


_CAL: dict[tuple[int, int], tuple[object, eta_learn.Scores]] = {}


def _scores(source: object, stage: int, pairs: Iterable[tuple[float, float]]) -> eta_learn.Scores:
    """The weighted scores of `pairs`, cached while `source` (an immutable tuple or table) lives."""
    key = (id(source), stage)
    hit = _CAL.get(key)
    if hit is not None and hit[0] is source:
        return hit[1]
    if len(_CAL) > 512:
        _CAL.clear()
    scores = eta_learn.Scores([_score(r, hz) for r, hz in pairs])
    _CAL[key] = (source, scores)
    return scores


def calibration(mode: Mode | None, stats: LaneStats, stage: int) -> eta_learn.Scores | None:
    """Recency-weighted residual scores of past forecasts at this mode and stage (all modes at the
    stage when the mode has too few); None before `CAL_MIN` of them."""
    pairs = stats.residuals.get(f"{mode.value if mode else 'any'}:{stage}", ())
    if len(pairs) >= CAL_MIN:
        return _scores(pairs, -1, pairs)
    pooled = [v for k, v in stats.residuals.items() if k.endswith(f":{stage}")]
    if sum(len(v) for v in pooled) < CAL_MIN:
        return None
    return _scores(stats.residuals, stage, (p for v in pooled for p in v))


def interval(mode: Mode | None, stats: LaneStats, elapsed_h: float, horizon_h: float) -> tuple[float, float]:
    """(hours below, hours above) the prediction for the stated 80 % interval."""
    scores = calibration(mode, stats, stage_of(elapsed_h, horizon_h))
    if scores is not None:
        q_lo, q_hi = scores.conformal()
        h = max(horizon_h, 0.0) + SCORE_FLOOR_H
        return max(0.0, -q_lo * h), max(0.0, q_hi * h)
    floor, below, above = PRIOR_WIDTH[mode or Mode.ROAD]
    return floor + below * horizon_h, floor + above * horizon_h


def p_late(
    journey: Journey, stats: LaneStats, predicted: datetime, now: datetime, bounds: tuple[float, float]
) -> float | None:
    """Probability that delivery lands after `promised_at`: the share of past errors at this stage
    that would carry the prediction past the promise; before there are any, from the interval."""
    promised = journey.shipment.promised_at
    if promised is None:
        return None
    start = journey.started_at or now
    horizon = hours(predicted - now)
    scores = calibration(journey.shipment.main_mode, stats, stage_of(max(0.0, hours(now - start)), horizon))
    slack = hours(promised - predicted)
    if scores is not None:
        return scores.exceed(slack / (max(horizon, 0.0) + SCORE_FLOOR_H))
    below, above = bounds
    sigma = max(above if slack >= 0 else below, 0.5) / Z80
    return eta_learn.normal_exceed(slack / sigma)


@lru_cache(maxsize=65536)
def node_of(legs: tuple[routing.ResolvedLeg, ...], loc: Location | None) -> int | None:
    """The node (0 = origin .. len(legs)) a milestone at `loc` happened at; None between nodes."""
    p = places.try_resolve(loc)
    return None if p is None else routing.nearest_node(legs, p, NODE_RADIUS_KM)


def anchors(legs: tuple[routing.ResolvedLeg, ...], milestones: Iterable[MilestoneRow]) -> dict[str, datetime]:
    """The first time each `"<node>:<code>"` was seen among `milestones` (oldest first)."""
    out: dict[str, datetime] = {}
    for at, code, loc in milestones:
        if code in NOT_PROGRESS:
            continue
        node = node_of(legs, loc)
        if node is not None:
            out.setdefault(f"{node}:{code.value}", at)
    return out


def _anchor(legs: tuple[routing.ResolvedLeg, ...], journey: Journey, now: datetime) -> tuple[str, datetime]:
    """The newest milestone at a node (`"<node>:<code>"`, first seen), else the start."""
    rows = [m for m in journey.milestones if m[0] <= now]
    seen = anchors(legs, rows)
    for at, code, loc in reversed(rows):
        if code in NOT_PROGRESS:
            continue
        node = node_of(legs, loc)
        if node is not None:
            key = f"{node}:{code.value}"
            return key, seen.get(key, at)
    return START, journey.started_at or now


def route_key(shipment: Shipment) -> str | None:
    """The lane without its carrier: origin, destination, main mode."""
    key = lane_key(shipment)
    return None if key is None else key.rsplit("|", 1)[0]


def _progress(
    legs: tuple[routing.ResolvedLeg, ...],
    journey: Journey,
    stats: LaneStats,
    now: datetime,
    route: str,
    prog: Progress | None,
) -> eta_learn.Estimate | None:
    """On a leg with a fresh fix: the rest of the leg at the speed made good since departure
    (shrunk toward the mode's speed early on), then the lane's learned time from arrival there."""
    pos = journey.position
    if pos is None or prog is None or prog.leg is None or prog.anchor != pos.at:
        return None
    seen = anchors(legs, (m for m in journey.milestones if m[0] <= now))
    left = [seen[k] for k in (f"{prog.leg}:{c.value}" for c in DEPARTING) if k in seen]
    after = None
    for code in ARRIVING:
        after = after or eta_learn.tail(stats.tails.get(f"{route}|{prog.leg + 1}:{code.value}", ()), _h(now), 0.0)
    if not left or after is None:
        return None
    leg = legs[prog.leg][0]
    prior = SPEED_KMH[leg.mode]
    elapsed = max(0.0, hours(pos.at - min(left)))
    covered = max(0.0, leg_km(leg) - prog.remaining_km)
    speed = (covered + prior * SPEED_PRIOR_H) / (elapsed + SPEED_PRIOR_H)
    leg_h = prog.remaining_km / max(speed, 1.0)
    ahead = max(0.0, hours(pos.at - now) + leg_h) + after[0]
    return eta_learn.Estimate("progress", ahead, math.hypot(0.15 * leg_h + 1.0, after[1]))


def _carrier(journey: Journey, stats: LaneStats, carrier_eta: datetime, now: datetime) -> eta_learn.Estimate:
    """The carrier's estimate corrected by its learned bias at this horizon, weighted by its record
    (per carrier and route, else per route, else all carriers; a prior before any)."""
    ahead = hours(carrier_eta - now)
    bucket = eta_learn.horizon_bucket(ahead)
    carrier, route = (journey.shipment.carrier or "").lower(), route_key(journey.shipment) or "*"
    for key in (f"{carrier}|{route}|{bucket}", f"*|{route}|{bucket}", f"*|*|{bucket}"):
        learned = eta_learn.carrier_correction(stats.carrier.get(key, ()), _h(now), ahead)
        if learned is not None:
            return eta_learn.Estimate("carrier", max(ahead + learned[0], 0.0), learned[1])
    if ahead < 0:  # passed without delivery: it has proven wrong
        return eta_learn.Estimate("carrier", 0.0, 24.0)
    return eta_learn.Estimate("carrier", ahead, 0.25 * ahead + 4.0)


def _h(t: datetime) -> float:
    return eta_learn.epoch_h(t)


def predict(journey: Journey, stats: LaneStats, now: datetime) -> Eta | None:
    """The ETA at `now`; None when nothing can be said. Once delivered, the delivery time.

    Candidates, each with its error scale, are combined by precision: physics (a prior that fades
    as history grows), the lane's learned time from the newest milestone given how long it has
    been there, the rest of the current leg at the speed made good plus the lane's time from the
    next node, and the carrier's estimate corrected by its learned bias."""
    shipment = journey.shipment
    carrier_eta = journey.carrier_eta
    if carrier_eta is not None and carrier_eta - now > MAX_ESTIMATE_AHEAD:
        carrier_eta = None  # refused at ingest; one kept from before that is not believed either
    delivered = journey.delivered_at()
    promised = shipment.promised_at
    if delivered is not None and delivered <= now:
        at = delivered
        known = None if promised is None else float(at > promised)
        return Eta(at, at, at, "delivered", now, carrier_eta, promised, known)
    start = journey.started_at or now
    candidates: list[eta_learn.Estimate] = []
    legs = resolved_legs(shipment)
    route = route_key(shipment)
    if legs is not None and route is not None:
        located = locate(journey, now)
        base = _physics(journey, legs, stats, now, located)
        ahead = hours(base - now)
        candidates.append(eta_learn.Estimate("physics", ahead, PHYSICS_SIGMA[0] * ahead + PHYSICS_SIGMA[1]))
        key, since = _anchor(legs, journey, now)
        learned = eta_learn.tail(stats.tails.get(f"{route}|{key}", ()), _h(now), max(0.0, hours(now - since)))
        if learned is not None:
            candidates.append(eta_learn.Estimate("lane", learned[0], learned[1]))
        moving = _progress(legs, journey, stats, now, route, located)
        if moving is not None:
            candidates.append(moving)
    if carrier_eta is not None:
        candidates.append(_carrier(journey, stats, carrier_eta, now))
    if not candidates:
        return None
    if len(candidates) == 1:
        best = later(now, max(candidates[0].ahead_h, 0.0))
    else:
        best = later(now, max(eta_learn.combine(candidates), 0.0))
    horizon = hours(best - now)
    bounds = interval(shipment.main_mode, stats, max(0.0, hours(now - start)), horizon)
    earliest = max(now, best - timedelta(hours=bounds[0]))
    latest = later(best, bounds[1])
    method = "+".join(dict.fromkeys(c.name for c in candidates))
    late = p_late(journey, stats, best, now, bounds)
    return Eta(best, earliest, latest, method, now, carrier_eta, shipment.promised_at, late)


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
    """`stats` with one more completed journey: its dwells, the time from each of its anchors to
    delivery, its carrier estimates' errors and its forecast residuals."""
    s = completed.shipment
    done, done_h = completed.delivered_at, _h(completed.delivered_at)
    dwell = dict(stats.dwell_h)
    for place, h in places.dwells(completed.milestones):
        dwell = _append(dwell, place, [h], KEEP["dwell"])
    tails = dict(stats.tails)
    legs = resolved_legs(s)
    route = route_key(s)
    if legs is not None and route is not None:
        seen = {START: completed.started_at, **anchors(legs, completed.milestones)}
        for anchor, at in seen.items():
            if at <= done:
                tails = _append(tails, f"{route}|{anchor}", [(done_h, hours(done - at))], KEEP["tails"])
    carrier = dict(stats.carrier)
    residuals = dict(stats.residuals)
    mode = s.main_mode.value if s.main_mode else "any"
    names = ((s.carrier or "").lower(), route or "*")
    for f in completed.forecasts:
        horizon = hours(f.predicted_at - f.computed_at)
        stage = stage_of(max(0.0, hours(f.computed_at - completed.started_at)), max(0.0, horizon))
        sample = (hours(done - f.predicted_at), horizon)
        residuals = _append(residuals, f"{mode}:{stage}", [sample], KEEP["residuals"])
        if f.carrier_eta is not None:
            ahead = hours(f.carrier_eta - f.computed_at)
            bucket = eta_learn.horizon_bucket(ahead)
            miss = (done_h, hours(done - f.carrier_eta), ahead)
            for k in (f"{names[0]}|{names[1]}|{bucket}", f"*|{names[1]}|{bucket}", f"*|*|{bucket}"):
                carrier = _append(carrier, k, [miss], KEEP["carrier"])
    return LaneStats(dwell, residuals, tails, carrier)
