"""Exception rules: each one raised once and cleared once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from trackd import eta, rules
from trackd.codes import ExceptionKind, Milestone, Mode, Status
from trackd.model import Location
from trackd.shipment import Eta, Leg, OpenException, PositionFix, Shipment, StatusState

T0 = datetime(2024, 3, 1, tzinfo=UTC)
A, B = Location(lat=0, lon=0), Location(lat=0, lon=2)
MOVING = StatusState(Status.IN_TRANSIT, None, T0)
K = ExceptionKind


def h(x: float) -> timedelta:
    return timedelta(hours=x)


def ship(mode: Mode = Mode.ROAD, **kw: Any) -> Shipment:
    return Shipment("s1", "TN1", legs=(Leg(mode, A, B),), created_at=T0, **kw)


def run(
    journey: eta.Journey,
    now: datetime,
    *,
    open_: dict[str, OpenException] | None = None,
    estimate: Eta | None = None,
    last_event_at: datetime | None = T0,
    sensor: dict[str, Any] | None = None,
    status: StatusState = MOVING,
) -> list[rules.RuleChange]:
    return rules.evaluate(
        journey, estimate, open_ or {}, now, last_event_at=last_event_at, last_sensor=sensor, status=status
    )


def opened(*changes: rules.RuleChange) -> dict[str, OpenException]:
    return {c.kind.value: OpenException(c.kind.value, c.at, None, c.detail) for c in changes if c.action == "raise"}


def kinds(changes: list[rules.RuleChange]) -> list[tuple[str, str]]:
    return [(c.action, c.kind.value) for c in changes]


def started(s: Shipment, **kw: Any) -> eta.Journey:
    return eta.Journey(s, milestones=((T0, Milestone.PICKED_UP, A),), **kw)


def test_delayed_raises_beyond_tolerance_and_clears_when_back() -> None:
    s = ship(promised_at=T0 + h(10))
    late = Eta(T0 + h(12.5), T0 + h(11), T0 + h(14), "physics", T0 + h(1))
    within = Eta(T0 + h(11.5), T0 + h(11), T0 + h(14), "physics", T0 + h(2))
    j = started(s)
    assert run(j, T0 + h(1), estimate=within, last_event_at=T0 + h(1)) == []
    raised = run(j, T0 + h(1), estimate=late, last_event_at=T0 + h(1))
    assert kinds(raised) == [("raise", "delayed")]
    assert raised[0].at == T0 + h(1)
    assert run(j, T0 + h(1), estimate=late, last_event_at=T0 + h(1), open_=opened(*raised)) == []
    cleared = run(j, T0 + h(2), estimate=within, last_event_at=T0 + h(2), open_=opened(*raised))
    assert kinds(cleared) == [("clear", "delayed")]
    assert cleared[0].at == T0 + h(2)


@pytest.mark.parametrize(("mode", "limit"), [(Mode.ROAD, 2), (Mode.RAIL, 6), (Mode.AIR, 12), (Mode.SEA, 24)])
def test_no_signal_per_mode_on_a_schedule(mode: Mode, limit: float) -> None:
    j = started(ship(mode))
    assert run(j, T0 + h(limit - 0.1)) == []
    raised = run(j, T0 + h(limit + 5))
    assert kinds(raised) == [("raise", "no_signal")]
    assert raised[0].at == T0 + h(limit)
    cleared = run(j, T0 + h(limit + 6), last_event_at=T0 + h(limit + 6), open_=opened(*raised))
    assert kinds(cleared) == [("clear", "no_signal")]


def test_no_signal_not_before_first_event_nor_after_delivery() -> None:
    j = eta.Journey(ship())
    pending = StatusState(Status.PENDING)
    assert run(j, T0 + h(100), last_event_at=None, status=pending) == []
    done = StatusState(Status.DELIVERED, None, T0 + h(3))
    delivered = eta.Journey(ship(), milestones=((T0, Milestone.PICKED_UP, A), (T0 + h(3), Milestone.DELIVERED, B)))
    assert run(delivered, T0 + h(100), status=done) == []
    raised = run(started(ship()), T0 + h(5))
    cleared = run(delivered, T0 + h(6), status=done, open_=opened(*raised))
    assert kinds(cleared) == [("clear", "no_signal")]
    assert cleared[0].at == T0 + h(3)


def test_long_dwell_from_positions_en_route() -> None:
    # parked half way, positions within 500 m, reporting every hour (so no no_signal)
    fixes = tuple(PositionFix(0.0, 1.0 + 0.0005 * (i % 2), T0 + h(2 + i), speed_kmh=0) for i in range(14))
    j = started(ship(), position=fixes[-1], recent_positions=fixes)
    now = T0 + h(15)
    assert (
        run(
            eta.Journey(j.shipment, j.milestones, fixes[9], recent_positions=fixes[:10]),
            T0 + h(11),
            last_event_at=T0 + h(11),
        )
        == []
    )
    raised = run(j, now, last_event_at=now)
    # road en-route usual stop 6 h, long dwell after twice that: 2 h + 12 h
    assert kinds(raised) == [("raise", "long_dwell")]
    assert raised[0].at == T0 + h(14)
    moved = PositionFix(0.0, 1.2, T0 + h(16), speed_kmh=60)
    j2 = started(ship(), position=moved, recent_positions=(*fixes, moved))
    cleared = run(j2, T0 + h(16), last_event_at=T0 + h(16), open_=opened(*raised))
    assert kinds(cleared) == [("clear", "long_dwell")]
    assert cleared[0].at == T0 + h(16)


def test_long_dwell_from_milestones_at_a_port_uses_learned_dwell() -> None:
    legs = (
        Leg(Mode.SEA, Location(unlocode="CNSHA"), Location(unlocode="NLRTM")),
        Leg(Mode.ROAD, Location(unlocode="NLRTM"), Location(unlocode="DEBER")),
    )
    s = Shipment("s2", "TN2", legs=legs, created_at=T0)
    rows = ((T0, Milestone.DEPARTED, legs[0].origin), (T0 + h(700), Milestone.DISCHARGED, legs[0].destination))
    j = eta.Journey(s, milestones=rows)
    # prior port dwell 72 h -> long after 144 h; learned 10 h -> long after 20 h
    assert run(j, T0 + h(730), last_event_at=T0 + h(729)) == []
    stats = eta.LaneStats(dwell_h={"NLRTM": (10.0,) * 5})
    raised = rules.evaluate(
        j, None, {}, T0 + h(730), last_event_at=T0 + h(729), last_sensor=None, status=MOVING, stats=stats
    )
    assert kinds(raised) == [("raise", "long_dwell")]
    assert raised[0].at == T0 + h(720)
    gone = eta.Journey(s, milestones=(*rows, (T0 + h(731), Milestone.GATE_OUT, legs[0].destination)))
    cleared = rules.evaluate(
        gone,
        None,
        opened(*raised),
        T0 + h(731),
        last_event_at=T0 + h(731),
        last_sensor=None,
        status=MOVING,
        stats=stats,
    )
    assert kinds(cleared) == [("clear", "long_dwell")]


def test_customs_hold_raises_and_release_clears() -> None:
    j = started(ship())
    hold = StatusState(Status.CUSTOMS, "customs.hold", T0 + h(1))
    raised = run(j, T0 + h(1.5), status=hold, last_event_at=T0 + h(1))
    assert kinds(raised) == [("raise", "customs_hold")]
    assert raised[0].at == T0 + h(1)
    released = StatusState(Status.IN_TRANSIT, "customs.released", T0 + h(5))
    cleared = run(j, T0 + h(5), status=released, last_event_at=T0 + h(5), open_=opened(*raised))
    assert kinds(cleared) == [("clear", "customs_hold")]
    assert cleared[0].at == T0 + h(5)
    submitted = StatusState(Status.CUSTOMS, "customs.submitted", T0 + h(1))
    assert run(j, T0 + h(1.5), status=submitted, last_event_at=T0 + h(1)) == []


@pytest.mark.parametrize(
    ("mode", "off_deg", "expect"),
    [
        (Mode.ROAD, 0.3, False),
        (Mode.ROAD, 0.6, True),  # 33 km / 67 km vs a 50 km corridor
        (Mode.RAIL, 0.6, True),
        (Mode.AIR, 1.5, False),  # 167 km vs 200 km
        (Mode.AIR, 2.0, True),
    ],
)
def test_off_route_corridors(mode: Mode, off_deg: float, expect: bool) -> None:
    fix = PositionFix(off_deg, 1.0, T0 + h(1), speed_kmh=50)
    out = run(started(ship(mode), position=fix), T0 + h(1), last_event_at=T0 + h(1))
    assert kinds(out) == ([("raise", "off_route")] if expect else [])


def test_off_route_sea_uses_the_lane_and_clears_back_on_it() -> None:
    leg = Leg(Mode.SEA, Location(unlocode="SGSIN"), Location(unlocode="NLRTM"))
    s = Shipment("s3", "TN3", legs=(leg,), created_at=T0)
    rows = ((T0, Milestone.DEPARTED, leg.origin),)
    in_lane = PositionFix(12.5, 45.0, T0 + h(200), speed_kmh=30)  # Gulf of Aden: on the lane
    assert run(eta.Journey(s, rows, in_lane), T0 + h(200), last_event_at=T0 + h(200)) == []
    astray = PositionFix(-10.0, 60.0, T0 + h(201), speed_kmh=30)  # middle of the Indian Ocean
    raised = run(eta.Journey(s, rows, astray), T0 + h(201), last_event_at=T0 + h(201))
    assert kinds(raised) == [("raise", "off_route")]
    cleared = run(eta.Journey(s, rows, in_lane), T0 + h(202), last_event_at=T0 + h(202), open_=opened(*raised))
    assert kinds(cleared) == [("clear", "off_route")]


def test_temperature_excursion() -> None:
    s = ship(temperature_range_c=(2.0, 8.0))
    j = started(s)
    assert run(j, T0 + h(1), sensor={"temperature_c": 5.0}, last_event_at=T0 + h(1)) == []
    raised = run(j, T0 + h(1), sensor={"temperature_c": 9.5, "at": T0 + h(0.9)}, last_event_at=T0 + h(1))
    assert kinds(raised) == [("raise", "temperature_excursion")]
    assert raised[0].at == T0 + h(0.9)
    cleared = run(j, T0 + h(2), sensor={"temperature_c": 7.9}, last_event_at=T0 + h(2), open_=opened(*raised))
    assert kinds(cleared) == [("clear", "temperature_excursion")]
    assert run(started(ship()), T0 + h(1), sensor={"temperature_c": 50.0}, last_event_at=T0 + h(1)) == []


def test_delivery_failed_raise_then_delivered_clears() -> None:
    attempt = ((T0, Milestone.PICKED_UP, A), (T0 + h(3), Milestone.DELIVERY_ATTEMPTED, B))
    failed = StatusState(Status.FAILED_ATTEMPT, None, T0 + h(3))
    raised = run(eta.Journey(ship(), attempt), T0 + h(3), status=failed, last_event_at=T0 + h(3))
    assert kinds(raised) == [("raise", "delivery_failed")]
    assert raised[0].at == T0 + h(3)
    done = eta.Journey(ship(), (*attempt, (T0 + h(20), Milestone.DELIVERED, B)))
    delivered = StatusState(Status.DELIVERED, None, T0 + h(20))
    cleared = run(done, T0 + h(20), status=delivered, last_event_at=T0 + h(20), open_=opened(*raised))
    assert kinds(cleared) == [("clear", "delivery_failed")]
    assert cleared[0].at == T0 + h(20)
    returned = StatusState(Status.RETURNED, None, T0 + h(30))
    back = eta.Journey(ship(), (*attempt, (T0 + h(30), Milestone.RETURNED, A)))
    assert run(back, T0 + h(30), status=returned, last_event_at=T0 + h(30), open_=opened(*raised)) == []


def test_final_status_raises_nothing_and_closes_watch_rules() -> None:
    s = ship(promised_at=T0, temperature_range_c=(2.0, 8.0))
    j = eta.Journey(s, ((T0, Milestone.PICKED_UP, A), (T0 + h(9), Milestone.DELIVERED, B)))
    done = StatusState(Status.DELIVERED, None, T0 + h(9))
    at_delivery = Eta(T0 + h(9), T0 + h(9), T0 + h(9), "delivered", T0 + h(10))
    assert run(j, T0 + h(10), estimate=at_delivery, sensor={"temperature_c": 30.0}, status=done) == []
    everything = {
        k.value: OpenException(k.value, T0 + h(1))
        for k in (K.DELAYED, K.TEMPERATURE_EXCURSION, K.OFF_ROUTE, K.LONG_DWELL)
    }
    cleared = run(j, T0 + h(10), estimate=at_delivery, sensor={"temperature_c": 30.0}, status=done, open_=everything)
    assert sorted(kinds(cleared)) == sorted(("clear", k) for k in everything)
    assert all(c.at == T0 + h(9) for c in cleared)
