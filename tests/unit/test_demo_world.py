"""The demo's simulated world keeps its own premises: the forwarder's promises hold for all but about
one shipment in twenty, land legs book the corridor their trackers drive, and an import of the past
sends each carrier estimate's latest revision only."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from lab.feeder import PROMISE_SLACK, thinned
from lab.simulator import HISTORY_CADENCE, Scenario, simulate
from trackd import rules
from trackd.codes import Classifier, EventKind, Mode
from trackd.shipment import route_from_geojson

START = datetime(2026, 3, 2, 8, tzinfo=UTC)


def world(n: int, slack: tuple[float, float] = PROMISE_SLACK) -> list[Scenario]:
    return [
        simulate(i, START + timedelta(hours=5 * i), seed=3, tag="w", cadence=HISTORY_CADENCE, promise_slack=slack)
        for i in range(n)
    ]


def test_about_one_shipment_in_twenty_arrives_after_its_promise() -> None:
    shipments = world(240)
    late = sum(
        1 for s in shipments if s.completed_at > datetime.fromisoformat(s.body["promised_at"].replace("Z", "+00:00"))
    )
    assert 0.01 <= late / len(shipments) <= 0.09, late


def test_land_legs_book_the_corridor_their_trackers_follow() -> None:
    booked = 0
    for s in world(40):
        for plan, body in zip((leg.plan for leg in s.legs), s.body["legs"], strict=True):
            if plan.mode not in (Mode.ROAD, Mode.RAIL):
                assert "route" not in body
                continue
            route = route_from_geojson(body["route"])
            booked += 1
            corridor = rules.PLANNED_CORRIDOR_KM[plan.mode]
            for seg in s.track.segments:
                if seg.mode is plan.mode and seg.path is not None and seg.path.points[-1] == route[-1]:
                    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
                        lat, lon, _ = seg.path.at(seg.km0 + (seg.km1 - seg.km0) * f)
                        assert rules.route_distance_km((lat, lon), route) < corridor
    assert booked >= 20


def test_an_import_sends_the_latest_revision_of_each_estimate() -> None:
    s = next(s for s in world(20) if any(leg.plan.mode is Mode.SEA for leg in s.legs))
    now = s.completed_at
    sent = thinned(list(s.events), now)
    estimates = [ev for ev in s.events if ev.classifier is Classifier.ESTIMATED]
    kept = [ev for ev in sent if ev.classifier is Classifier.ESTIMATED]
    assert len(estimates) > len(kept) > 0
    of = Counter((ev.leg, ev.milestone, ev.place) for ev in kept)
    assert set(of.values()) == {1}
    for ev in kept:  # the one made last of its milestone
        same = [e for e in estimates if (e.leg, e.milestone, e.place) == (ev.leg, ev.milestone, ev.place)]
        assert ev.send_at == max(e.send_at for e in same)
    actual = [ev for ev in s.events if ev.kind is EventKind.MILESTONE and ev.classifier is Classifier.ACTUAL]
    assert [ev for ev in sent if ev.kind is EventKind.MILESTONE and ev.classifier is Classifier.ACTUAL] == actual
