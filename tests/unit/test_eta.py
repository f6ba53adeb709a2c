"""The ETA engine: physics, lane and carrier blending, the interval, learning, change detection."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from trackd import eta, eta_learn, geo
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
    assert out.p_late is None  # no promise
    late = eta.predict(
        eta.Journey(road(promised_at=T0 + h(3)), milestones=delivered.milestones), eta.LaneStats.empty(), T0 + h(5)
    )
    assert late is not None
    assert late.p_late == 1.0  # delivered an hour after the promise: known
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


def test_lane_history_takes_over_from_physics_by_precision() -> None:
    route = eta.route_key(road())
    assert route == "0.00,0.00|0.00,1.00|road"
    physics = END_DWELL_H + ROAD_H + END_DWELL_H
    now_h = eta_learn.epoch_h(T0)
    one = eta.LaneStats(tails={f"{route}|start": ((now_h - 24, 20.0),)})
    alone = eta.predict(eta.Journey(road()), one, T0)
    assert alone is not None
    assert alone.method == "physics"  # one journey is not enough history to speak
    five = eta.LaneStats(tails={f"{route}|start": tuple((now_h - 24 * k, 20.0) for k in range(1, 6))})
    out = eta.predict(eta.Journey(road()), five, T0)
    assert out is not None
    assert out.method == "physics+lane"
    # precision weights: physics errs by 0.5 x its horizon + 12 h, five equal journeys by 0.5 h
    w_phys, w_lane = 1 / (0.5 * physics + 12) ** 2, 1 / 0.5**2
    assert hours_after(out.predicted_at) == pytest.approx((w_phys * physics + w_lane * 20) / (w_phys + w_lane))


def test_tail_follows_a_regime_change_and_conditions_on_the_wait() -> None:
    now_h = eta_learn.epoch_h(T0)
    before = [(now_h - 24 * 60, 10.0)] * 5  # two months ago, the lane took 10 h
    after = [(now_h - 24, 30.0)] * 2  # since yesterday, 30 h
    learned = eta_learn.tail([*before, *after], now_h, 0.0)
    assert learned is not None
    assert learned[0] == 30.0
    # already waited 12 h: only the journeys that took longer count, 30 - 12 to go
    waited = eta_learn.tail([*before, *after], now_h, 12.0)
    assert waited is not None
    assert waited[0] == 18.0
    assert eta_learn.tail(before, now_h, 0.0) is None  # all faded below 1.5 journeys of weight


def test_carrier_estimate_corrected_by_its_learned_bias() -> None:
    bare = Shipment("s2", "TN2", carrier="Slow", mode=Mode.AIR, created_at=T0)
    now_h = eta_learn.epoch_h(T0)
    # this carrier's estimates 2-7 days ahead have come in 10 % of their lead time early
    stats = eta.LaneStats(carrier={"*|*|2": tuple((now_h - 24, 10.0, 100.0) for _ in range(5))})
    j = eta.Journey(bare, carrier_eta=T0 + h(100), carrier_eta_created_at=T0)
    out = eta.predict(j, stats, T0)
    assert out is not None
    assert out.method == "carrier"
    assert hours_after(out.predicted_at) == pytest.approx(110)
    assert out.carrier_eta == T0 + h(100)
    # before any record the estimate is taken as it is
    plain = eta.predict(j, eta.LaneStats.empty(), T0)
    assert plain is not None
    assert plain.predicted_at == T0 + h(100)
    # learned from forecasts that carried the estimate: keyed per carrier and route, route, all
    done = eta.CompletedJourney(road(), T0, T0 + h(10), (), (eta.Forecast(T0, T0 + h(9), carrier_eta=T0 + h(8)),))
    learned = eta.learn(eta.LaneStats.empty(), done)
    sample = ((eta_learn.epoch_h(T0 + h(8)) + 2, 2.0, 8.0),)
    assert learned.carrier == {
        "acme|0.00,0.00|0.00,1.00|road|0": sample,
        "*|0.00,0.00|0.00,1.00|road|0": sample,
        "*|*|0": sample,
    }


def test_weighted_conformal_interval_and_p_late() -> None:
    scores = eta_learn.Scores([s / 10 for s in range(-1, 9)])
    assert scores.quantile(0.5) == pytest.approx(0.3, abs=0.11)
    lo, hi = scores.conformal()
    assert (lo, hi) == (-0.1, 0.8)  # ten scores: the correction reaches the extremes
    assert [eta.stage_of(e, 100 - e) for e in (0, 25, 37.5, 50, 75, 90)] == [0, 0, 1, 1, 2, 3]
    # residual / (horizon + 6 h) of -0.1 .. +0.8 at stage 0 for road
    pairs = tuple((s / 10 * 16.0, 10.0) for s in range(-1, 9))
    stats = eta.LaneStats(residuals={"road:0": pairs})
    below, above = eta.interval(Mode.ROAD, stats, 0.0, 20.0)
    assert (below, above) == pytest.approx((0.1 * 26, 0.8 * 26))
    assert eta.interval(Mode.RAIL, stats, 0.0, 20.0) == (below, above)  # pooled across modes
    # recent scores count more: a shift in the last fifty moves the upper bound
    shifted = eta_learn.Scores([0.0] * 300 + [1.0] * 50)
    assert shifted.conformal()[1] == 1.0
    promised = road(promised_at=T0 + h(10))
    out = eta.predict(eta.Journey(promised), stats, T0)
    assert out is not None
    # predicted 8.32 h, promise 10 h: late when the error exceeds 1.68 h = 0.118 of (8.32 + 6) h
    assert out.p_late == pytest.approx(0.7, abs=0.1)
    assert eta.predict(eta.Journey(road()), stats, T0).p_late is None  # type: ignore[union-attr]
    prior = eta.predict(eta.Journey(promised), eta.LaneStats.empty(), T0)
    assert prior is not None
    assert prior.p_late is not None
    assert 0.01 < prior.p_late < 0.5  # the prior interval puts the promise above the prediction
    assert out.to_dict()["p_late"] == round(out.p_late, 3)
    assert out.to_dict()["revision"] == 0


def test_progress_uses_the_speed_made_good_on_the_leg() -> None:
    route = eta.route_key(road())
    now_h = eta_learn.epoch_h(T0)
    stats = eta.LaneStats(tails={f"{route}|1:arrived": tuple((now_h - 24, 2.0) for _ in range(5))})
    picked = ((T0, Milestone.PICKED_UP, A),)
    # a quarter of the way after 2 h: 30 km/h made good (a 6 h prior at 60 km/h pulls it up a little)
    fix = PositionFix(0.0, 0.25, T0 + h(2), speed_kmh=30)
    out = eta.predict(eta.Journey(road(), milestones=picked, position=fix), stats, T0 + h(2))
    assert out is not None
    assert "progress" in out.method
    km = DEG_KM * 1.25
    speed = (km * 0.25 + 60 * 6) / (2 + 6)
    legs = eta.resolved_legs(road())
    assert legs is not None
    progress = eta._progress(
        legs,
        eta.Journey(road(), milestones=picked, position=fix),
        stats,
        T0 + h(2),
        route or "",
        eta.locate(eta.Journey(road(), milestones=picked, position=fix), T0 + h(2)),
    )
    assert progress is not None
    assert progress.ahead_h == pytest.approx(km * 0.75 / speed + 2.0, rel=1e-3)


def test_fast_projection_matches_routing() -> None:
    from trackd import eta_path, routing

    leg = Leg(Mode.SEA, Location(unlocode="CNSHA"), Location(unlocode="USLAX"))
    legs = routing.resolve_legs((leg,))
    assert legs is not None
    _, a, b = legs[0]
    path = routing.sea_path(a, b)
    for i in range(0, len(path) - 1, max(1, len(path) // 7)):
        p = ((path[i][0] + path[i + 1][0]) / 2 + 0.3, (path[i][1] + path[i + 1][1]) / 2 - 0.2)
        assert eta_path.remaining_km(leg, a, b, p) == pytest.approx(routing.remaining_km(leg, p), abs=1e-6)


def test_learn_adds_anchor_tails_dwell_and_stage_residuals() -> None:
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
    at = eta_learn.epoch_h(T0 + h(10))
    route = eta.route_key(s)
    # hours from the start and from the first time each milestone was seen at a node to delivery
    assert stats.tails == {
        f"{route}|start": ((at, 10.0),),
        f"{route}|0:picked_up": ((at, 10.0),),
        f"{route}|0:gate_in": ((at, 9.0),),
        f"{route}|1:arrived": ((at, 9.0),),
    }
    assert stats.dwell_h == {"0.00,0.00": (1.0,)}
    # computed 1 h in with 7 h to go: stage 0; 6 h in with 3 h to go: stage 2
    assert stats.residuals == {"road:0": ((2.0, 7.0),), "road:2": ((1.0, 3.0),)}
    assert stats.carrier == {}  # no forecast carried a carrier estimate
    again = eta.learn(stats, done)
    assert again.tails[f"{route}|start"] == ((at, 10.0), (at, 10.0))
    assert stats.tails[f"{route}|start"] == ((at, 10.0),)  # the old value is untouched


def test_eta_changed() -> None:
    old = Eta(T0 + h(10), T0 + h(9), T0 + h(12), "physics", T0)
    assert eta.eta_changed(None, old)
    assert not eta.eta_changed(old, Eta(T0 + h(10.2), T0 + h(9), T0 + h(12), "physics", T0))
    assert eta.eta_changed(old, Eta(T0 + h(10.25), T0 + h(9), T0 + h(12), "physics", T0))
    assert not eta.eta_changed(old, Eta(T0 + h(10), T0 + h(9.2), T0 + h(12), "physics", T0))
    assert eta.eta_changed(old, Eta(T0 + h(10), T0 + h(9), T0 + h(13), "physics", T0))
    assert eta.eta_changed(old, Eta(T0 + h(10.1), T0 + h(9), T0 + h(12), "x", T0), timedelta(minutes=5))
