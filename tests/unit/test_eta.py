"""The ETA engine: physics, lane and carrier blending, the interval, learning, change detection."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from trackd import eta, geo
from trackd.codes import Milestone, Mode
from trackd.model import Location
from trackd.shipment import Eta, Leg, PositionFix, Shipment

T0 = datetime(2024, 3, 1, tzinfo=UTC)
DEG_KM = 2 * math.pi * geo.EARTH_RADIUS_KM / 360
ROAD_H = DEG_KM * 1.25 / 60  # one degree by road at 60 km/h: 2.3166 h
END_DWELL_H = 3.0  # half the road node prior at each end
A, B = Location(lat=0, lon=0), Location(lat=0, lon=1)


def h(x: float) -> timedelta:
    return timedelta(hours=x)


def road(**kw: object) -> Shipment:
    return Shipment("s1", "TN1", carrier="acme", legs=(Leg(Mode.ROAD, A, B),), created_at=T0, **kw)  # type: ignore[arg-type]


def hours_after(t: datetime) -> float:
    return (t - T0).total_seconds() / 3600


def test_not_started_is_origin_dwell_plus_travel_plus_end_dwell() -> None:
    out = eta.predict(eta.Journey(road()), eta.LaneStats.empty(), T0)
    assert out is not None
    assert out.method == "physics"
    expected = END_DWELL_H + ROAD_H + END_DWELL_H
    assert hours_after(out.predicted_at) == pytest.approx(expected)
    # prior road interval: 1 h + 15 % of the horizon below, 1 h + 35 % above
    assert hours_after(out.earliest) == pytest.approx(expected - (1 + 0.15 * expected))
    assert hours_after(out.latest) == pytest.approx(expected + 1 + 0.35 * expected)


def test_departed_then_position_half_way() -> None:
    j = eta.Journey(road(), milestones=((T0, Milestone.PICKED_UP, A),))
    out = eta.predict(j, eta.LaneStats.empty(), T0 + h(0.5))
    assert out is not None
    assert hours_after(out.predicted_at) == pytest.approx(ROAD_H + END_DWELL_H)
    fix = PositionFix(0.0, 0.5, T0 + h(1), speed_kmh=60)
    j = eta.Journey(road(), milestones=j.milestones, position=fix)
    out = eta.predict(j, eta.LaneStats.empty(), T0 + h(1))
    assert out is not None
    assert hours_after(out.predicted_at) == pytest.approx(1 + ROAD_H / 2 + END_DWELL_H, rel=1e-4)


def test_late_vehicle_is_never_predicted_in_the_past() -> None:
    j = eta.Journey(road(), milestones=((T0, Milestone.PICKED_UP, A),))
    out = eta.predict(j, eta.LaneStats.empty(), T0 + h(10))
    assert out is not None
    assert hours_after(out.predicted_at) == pytest.approx(10 + END_DWELL_H)
    assert out.earliest >= T0 + h(10)


def test_delivered_no_legs_and_carrier_only() -> None:
    delivered = eta.Journey(road(), milestones=((T0 + h(4), Milestone.DELIVERED, B),))
    out = eta.predict(delivered, eta.LaneStats.empty(), T0 + h(5))
    assert out is not None
    assert out.method == "delivered"
    assert out.predicted_at == out.earliest == out.latest == T0 + h(4)
    bare = Shipment("s2", "TN2", mode=Mode.AIR, created_at=T0)
    assert eta.predict(eta.Journey(bare), eta.LaneStats.empty(), T0) is None
    with_carrier = eta.Journey(bare, carrier_eta=T0 + h(30), carrier_eta_created_at=T0)
    out = eta.predict(with_carrier, eta.LaneStats.empty(), T0)
    assert out is not None
    assert out.method == "carrier"
    assert out.predicted_at == T0 + h(30)
    assert out.carrier_eta == T0 + h(30)


def test_unresolvable_leg_falls_back_to_carrier_or_none() -> None:
    # Leg validation accepts any code; an unknown one cannot be routed
    odd = Shipment("s3", "TN3", legs=(Leg(Mode.ROAD, Location(unlocode="ZZZZZ"), B),), created_at=T0)
    assert eta.predict(eta.Journey(odd), eta.LaneStats.empty(), T0) is None


def test_sea_leg_from_departure() -> None:
    leg = Leg(Mode.SEA, Location(unlocode="CNSHA"), Location(unlocode="USLAX"))
    s = Shipment("s4", "TN4", legs=(leg,), created_at=T0)
    j = eta.Journey(s, milestones=((T0, Milestone.DEPARTED, Location(unlocode="CNSHA")),))
    out = eta.predict(j, eta.LaneStats.empty(), T0)
    assert out is not None
    from trackd import routing

    sail = routing.leg_distance_km(leg) / 30
    # sail + half a port dwell at the far end + customs (CN -> US)
    assert hours_after(out.predicted_at) == pytest.approx(sail + 36 + 24)
    assert 12 * 24 < sail < 17 * 24  # a trans-Pacific crossing takes two weeks or so


def test_hand_over_dwell_and_customs_release() -> None:
    legs = (
        Leg(Mode.ROAD, Location(unlocode="MXMEX"), Location(unlocode="MXNLD")),
        Leg(Mode.ROAD, Location(unlocode="USLRD"), Location(unlocode="USCHI")),
    )
    s = Shipment("s5", "TN5", legs=legs, created_at=T0)
    at_border = ((T0, Milestone.PICKED_UP, legs[0].origin), (T0 + h(20), Milestone.ARRIVED, legs[0].destination))
    before = eta.predict(eta.Journey(s, milestones=at_border), eta.LaneStats.empty(), T0 + h(20))
    released = (*at_border, (T0 + h(22), Milestone.CUSTOMS_RELEASED, legs[0].destination))
    after = eta.predict(eta.Journey(s, milestones=released), eta.LaneStats.empty(), T0 + h(22))
    assert before is not None
    assert after is not None
    assert hours_after(before.predicted_at) - hours_after(after.predicted_at) == pytest.approx(24)
    # learned dwell at the border replaces the 6 h prior once there are five samples
    stats = eta.LaneStats(dwell_h={"MXNLD": (10.0,) * 5})
    learned = eta.predict(eta.Journey(s, milestones=released), stats, T0 + h(22))
    assert learned is not None
    assert hours_after(learned.predicted_at) - hours_after(after.predicted_at) == pytest.approx(4)


def test_lane_blend_needs_five_journeys() -> None:
    key = eta.lane_key(road())
    assert key == "0.00,0.00|0.00,1.00|road|acme"
    physics = END_DWELL_H + ROAD_H + END_DWELL_H
    four = eta.predict(eta.Journey(road()), eta.LaneStats(transit_h={key: (20.0,) * 4}), T0)
    assert four is not None
    assert four.method == "physics"
    five = eta.predict(eta.Journey(road()), eta.LaneStats(transit_h={key: (20.0,) * 5}), T0)
    assert five is not None
    assert five.method == "physics+lane"
    # weight n / (n + 5) x (1 - share elapsed) = 0.5 at the start
    assert hours_after(five.predicted_at) == pytest.approx(physics + (20 - physics) * 0.5)


def test_carrier_blend_weight_grows_as_the_estimate_nears() -> None:
    assert eta.carrier_weight(T0 + h(1000), T0) == pytest.approx(0.5, abs=1e-6)
    assert eta.carrier_weight(T0 + h(48), T0) == pytest.approx(0.5 + 0.4 / math.e)
    assert eta.carrier_weight(T0, T0) == pytest.approx(0.9)
    assert eta.carrier_weight(T0 - h(1), T0) == 0.3
    physics = END_DWELL_H + ROAD_H + END_DWELL_H
    j = eta.Journey(road(), carrier_eta=T0 + h(48), carrier_eta_created_at=T0)
    out = eta.predict(j, eta.LaneStats.empty(), T0)
    assert out is not None
    assert out.method == "physics+carrier"
    w = 0.5 + 0.4 / math.e
    assert hours_after(out.predicted_at) == pytest.approx(physics + (48 - physics) * w)


def test_conformal_bounds_and_calibrated_interval() -> None:
    assert eta.conformal_bounds([float(x) for x in range(1, 10)]) == (1.0, 9.0)
    assert eta.conformal_bounds([float(x) for x in range(1, 20)]) == (2.0, 18.0)
    assert [eta.stage_of(e, 100 - e) for e in (0, 24.9, 25, 60, 99)] == [0, 0, 1, 2, 3]
    # residual / horizon scores of -0.1 .. +0.8 at stage 0 for road
    pairs = tuple((s / 10 * 10.0, 10.0) for s in range(-1, 9))
    stats = eta.LaneStats(residuals={"road:0": pairs})
    below, above = eta.interval(Mode.ROAD, stats, 0.0, 20.0)
    assert (below, above) == pytest.approx((0.1 * 20, 0.8 * 20))
    # other modes at the same stage are pooled when the mode has too few samples
    assert eta.interval(Mode.RAIL, stats, 0.0, 20.0) == (below, above)


def test_learn_adds_transit_dwell_and_stage_residuals() -> None:
    s = road()
    rows = ((T0, Milestone.PICKED_UP, A), (T0 + h(1), Milestone.ARRIVED, B), (T0 + h(3), Milestone.DELIVERED, B))
    done = eta.CompletedJourney(
        s,
        T0,
        T0 + h(10),
        (rows[0], (T0 + h(1), Milestone.GATE_IN, A), rows[1]),
        (eta.Forecast(T0 + h(1), T0 + h(8)), eta.Forecast(T0 + h(6), T0 + h(9))),
    )
    stats = eta.learn(eta.LaneStats.empty(), done)
    assert stats.transit_h == {eta.lane_key(s): (10.0,)}
    assert stats.dwell_h == {"0.00,0.00": (1.0,)}
    # computed 1 h in with 7 h to go: stage 0; 6 h in with 3 h to go: stage 2
    assert stats.residuals == {"road:0": ((2.0, 7.0),), "road:2": ((1.0, 3.0),)}
    again = eta.learn(stats, done)
    assert again.transit_h[eta.lane_key(s) or ""] == (10.0, 10.0)
    assert stats.transit_h[eta.lane_key(s) or ""] == (10.0,)  # the old value is untouched


def test_eta_changed() -> None:
    old = Eta(T0 + h(10), T0 + h(9), T0 + h(12), "physics", T0)
    assert eta.eta_changed(None, old)
    assert not eta.eta_changed(old, Eta(T0 + h(10.2), T0 + h(9), T0 + h(12), "physics", T0))
    assert eta.eta_changed(old, Eta(T0 + h(10.25), T0 + h(9), T0 + h(12), "physics", T0))
    assert not eta.eta_changed(old, Eta(T0 + h(10), T0 + h(9.2), T0 + h(12), "physics", T0))
    assert eta.eta_changed(old, Eta(T0 + h(10), T0 + h(9), T0 + h(13), "physics", T0))
    assert eta.eta_changed(old, Eta(T0 + h(10.1), T0 + h(9), T0 + h(12), "x", T0), timedelta(minutes=5))
