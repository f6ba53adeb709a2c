"""long_dwell when the last fix is older than the newest milestones: a departure reported after the
last fix shows the shipment left (trackers sleep in flight); a stop it reports still counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from trackd import eta, rules
from trackd.codes import ExceptionKind, Milestone, Mode, Status
from trackd.model import Location
from trackd.shipment import Leg, OpenException, PositionFix, Shipment, StatusState

T0 = datetime(2024, 3, 1, tzinfo=UTC)
SIN, JFK = Location(iata="SIN", lat=1.364, lon=103.991), Location(iata="JFK", lat=40.641, lon=-73.778)
MOVING = StatusState(Status.IN_TRANSIT, None, T0)


def h(x: float) -> timedelta:
    return timedelta(hours=x)


def flight() -> Shipment:
    return Shipment("s1", "618-1", legs=(Leg(Mode.AIR, SIN, JFK),), created_at=T0)


def dwell(journey: eta.Journey, now: datetime, open_: dict[str, OpenException] | None = None) -> list[str]:
    changes = rules.evaluate(journey, None, open_ or {}, now, last_event_at=now, last_sensor=None, status=MOVING)
    return [f"{c.action} {c.kind.value}" for c in changes if c.kind is ExceptionKind.LONG_DWELL]


def test_a_departure_after_the_last_fix_is_no_stop() -> None:
    fix = PositionFix(SIN.lat or 0.0, SIN.lon or 0.0, T0 + h(1), speed_kmh=0.0)
    rows = ((T0, Milestone.PICKED_UP, SIN), (T0 + h(20), Milestone.DEPARTED, SIN))
    in_the_air = eta.Journey(flight(), milestones=rows, position=fix, recent_positions=(fix,))
    assert dwell(in_the_air, T0 + h(40)) == []
    # what was raised before the departure was known clears
    stale = {"long_dwell": OpenException("long_dwell", T0 + h(13), None, "stationary")}
    assert dwell(in_the_air, T0 + h(40), stale) == ["clear long_dwell"]


def test_still_waiting_at_the_origin_is_a_long_dwell() -> None:
    """Without the departure the same fix is a stop: the origin airport's usual 12 h, twice over."""
    fix = PositionFix(SIN.lat or 0.0, SIN.lon or 0.0, T0 + h(1), speed_kmh=0.0)
    waiting = eta.Journey(flight(), milestones=((T0, Milestone.PICKED_UP, SIN),), position=fix, recent_positions=(fix,))
    assert dwell(waiting, T0 + h(20)) == []
    assert dwell(waiting, T0 + h(30)) == ["raise long_dwell"]


def test_an_arrival_after_the_last_fix_still_counts() -> None:
    fix = PositionFix(SIN.lat or 0.0, SIN.lon or 0.0, T0 + h(1), speed_kmh=0.0)
    rows = (
        (T0, Milestone.PICKED_UP, SIN),
        (T0 + h(2), Milestone.DEPARTED, SIN),
        (T0 + h(20), Milestone.ARRIVED, JFK),
    )
    landed = eta.Journey(flight(), milestones=rows, position=fix, recent_positions=(fix,))
    assert dwell(landed, T0 + h(30)) == []
    # JFK is the end of the only leg: half the air prior (12 h), long after 24 h on the ground
    assert dwell(landed, T0 + h(45)) == ["raise long_dwell"]


def test_the_stop_starts_when_the_journey_does() -> None:
    """Fixes at the origin from the booking on: the wait for the pickup is no stop in transit."""
    fixes = tuple(PositionFix(SIN.lat or 0.0, SIN.lon or 0.0, T0 + h(i), speed_kmh=0.0) for i in range(0, 40, 2))
    rows = ((T0, Milestone.BOOKED, SIN), (T0 + h(20), Milestone.PICKED_UP, SIN))
    j = eta.Journey(flight(), milestones=rows, position=fixes[-1], recent_positions=fixes)
    assert dwell(j, T0 + h(40)) == []  # 20 h since the pickup, not 40 h since the booking
    later = PositionFix(SIN.lat or 0.0, SIN.lon or 0.0, T0 + h(46), speed_kmh=0.0)
    j = eta.Journey(flight(), milestones=rows, position=later, recent_positions=(*fixes, later))
    raised = rules.evaluate(j, None, {}, T0 + h(46), last_event_at=T0 + h(46), last_sensor=None, status=MOVING)
    assert [(c.action, c.kind.value, c.at) for c in raised] == [("raise", "long_dwell", T0 + h(44))]
