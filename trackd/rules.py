"""Exception rules: what is wrong with a shipment now, as raise/clear changes against what is open.

`evaluate` is pure and idempotent: called again with the same facts and the changes it
returned applied to `open`, it returns nothing. Time-based rules (`no_signal`, `long_dwell`)
look only at `now` and the last facts, so a scheduled call with no new event raises them.
Once a shipment is delivered, returned or cancelled nothing new is raised and the watch rules
clear; `delivery_failed` clears only on delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from trackd import eta as eta_engine
from trackd import geo, routing
from trackd.codes import FINAL_STATUSES, ExceptionKind, Milestone, Mode, Status
from trackd.shipment import Eta, OpenException, StatusState

K = ExceptionKind
DELAY_TOLERANCE = timedelta(hours=2)
NO_SIGNAL_AFTER = {
    Mode.ROAD: timedelta(hours=2),
    Mode.RAIL: timedelta(hours=6),
    Mode.AIR: timedelta(hours=12),
    Mode.SEA: timedelta(hours=24),
}
CORRIDOR_KM = {Mode.ROAD: 50.0, Mode.RAIL: 50.0, Mode.SEA: 300.0, Mode.AIR: 200.0}
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
    """Stationary (fixes within 500 m, or an arrival milestone with no departure since) for
    longer than twice the usual dwell at that kind of place."""
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


def _off_route(journey: eta_engine.Journey) -> tuple[bool, datetime | None, str]:
    pos = journey.position
    legs = eta_engine.resolved_legs(journey.shipment)
    if pos is None or legs is None:
        return False, None, ""
    here = (pos.lat, pos.lon)
    # Off route only when outside every leg's corridor: a fix near any leg of the plan is on it.
    margins = []
    for leg, a, b in legs:
        off = geo.distance_to_path_km(here, routing.path_between(leg.mode, a, b))
        margins.append((off - CORRIDOR_KM[leg.mode], off, leg.mode))
    worst = min(margins)
    if worst[0] > 0:
        return True, pos.at, f"{worst[1]:.0f} km off the {worst[2].value} route"
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
) -> list[RuleChange]:
    """The raise/clear changes that bring `open` (kind -> open exception) in line with the facts.

    `last_event_at` is the time of the shipment's newest event of any kind; `last_sensor` its
    newest sensor reading (`temperature_c`, ..., optionally `at`); `stats` learned dwell.
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
    return out
