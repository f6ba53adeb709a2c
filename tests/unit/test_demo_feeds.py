"""The demo's DHL and Traccar feeds: what `encode()` sends, read back by the `dhl` and `traccar`
adapters with the header each source authenticates with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache

import orjson
import pytest

from ingest import sources
from ingest.sources import dhl, traccar
from lab.carrier_payloads import DHL_CARRIERS, encode
from lab.feeder import Feeder
from lab.simulator import PlannedEvent, Scenario, simulate
from trackd.codes import Classifier, EventKind, Milestone, Mode
from trackd.errors import Unauthorized
from trackd.model import Event, SourceContext, ref_key

START = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
SECRET = "is_demo-s3cret"
# DHL's Unified tracking has five status codes: a scan on the way is `transit`, a failure `failure`.
DHL_READS = {
    Milestone.INFO_RECEIVED: Milestone.INFO_RECEIVED,
    Milestone.DELIVERED: Milestone.DELIVERED,
    Milestone.DELIVERY_ATTEMPTED: Milestone.EXCEPTION,
    Milestone.RETURNED: Milestone.EXCEPTION,
}


@cache
def world() -> tuple[Scenario, ...]:
    return tuple(simulate(i, START, seed=5) for i in range(60))


def both_feeds() -> Scenario:
    """A shipment with a DHL leg that DHL reports itself and a tracker forwarded by Traccar."""
    s = world()[7]
    assert (s.lane, s.legs[-1].carrier) == ("CNYTN-NLRTM-DEBER", "dhl-freight")
    return s


def read(s: Scenario, ev: PlannedEvent, source: str) -> list[Event]:
    d = encode(s, ev, tenant="acme", secret=SECRET)
    assert (d.transport, d.source, d.target) == ("webhook", source, f"/v1/ingest/acme/{source}")
    assert d.headers["Content-Type"] == "application/json"
    sources.verify(source, SECRET, d.body, d.headers)
    with pytest.raises(Unauthorized):
        sources.verify(source, SECRET + "x", d.body, d.headers)
    normalize = dhl.normalize if source == "dhl" else traccar.normalize
    return normalize(d.body, SourceContext(tenant="acme", received_at=ev.send_at + timedelta(seconds=2)))


def test_a_dhl_leg_pushes_unified_tracking_with_the_api_key_header() -> None:
    s = both_feeds()
    leg = s.legs[-1]
    planned = [ev for ev in s.events if ev.leg == len(s.legs) - 1 and ev.kind is EventKind.MILESTONE]
    assert planned
    estimates = 0
    for ev in planned:
        d = encode(s, ev, tenant="acme", secret=SECRET)
        assert d.headers["DHL-API-Key"] == SECRET
        body = orjson.loads(d.body)
        (shipment,) = body["shipments"]
        assert (shipment["id"], shipment["service"]) == (leg.ids["tracking"], "freight")
        events = read(s, ev, "dhl")
        assert all(e.carrier == "dhl" and ref_key(leg.ids["tracking"]) in e.match_keys() for e in events)
        assert ref_key(leg.ids["tracking"]) in {ref_key(r) for r in s.body["references"]}  # lands on the shipment
        assert ev.milestone is not None
        want = DHL_READS.get(ev.milestone, Milestone.IN_TRANSIT)
        if ev.classifier is Classifier.ESTIMATED:
            want, estimates = Milestone.DELIVERED, estimates + 1
        found = [
            e
            for e in events
            if e.milestone is not None
            and (e.milestone.code, e.milestone.classifier, e.occurred_at) == (want, ev.classifier, ev.occurred_at)
        ]
        assert found, (ev.milestone, ev.classifier, [(e.milestone, e.occurred_at) for e in events])
    assert estimates
    last = read(s, planned[-1], "dhl")
    assert sum(e.milestone is not None and e.milestone.classifier is Classifier.ACTUAL for e in last) == sum(
        ev.classifier is Classifier.ACTUAL for ev in planned
    )  # each push carries the leg's history


def test_dhl_reports_half_of_its_shipments_the_aggregators_the_rest() -> None:
    by_source = {"dhl": 0, "aftership": 0, "easypost": 0}
    for s in world():
        if s.legs[-1].carrier.lower() not in DHL_CARRIERS:
            continue
        ev = next(ev for ev in s.events if ev.leg == len(s.legs) - 1 and ev.kind is EventKind.MILESTONE)
        by_source[encode(s, ev, tenant="acme", secret=SECRET).source] += 1
        again = encode(s, ev, tenant="acme", secret=SECRET)  # the same every time
        assert again == encode(s, ev, tenant="acme", secret=SECRET)
    assert by_source["dhl"] >= 3
    assert by_source["aftership"] + by_source["easypost"] >= 3


def mode(s: Scenario, at: datetime) -> Mode | None:
    return next(seg.mode for seg in s.track.segments if seg.t0 <= at < seg.t1)


def test_road_fixes_of_a_traccar_tracker_are_position_forwards_with_the_bearer_secret() -> None:
    s = both_feeds()
    fixes = [ev for ev in s.events if ev.kind is EventKind.POSITION]
    via = [ev for ev in fixes if encode(s, ev, tenant="acme", secret=SECRET).source == "traccar"]
    assert via
    assert all(mode(s, ev.occurred_at) in (Mode.ROAD, None) for ev in via)  # driving, or resting between stints
    assert any(mode(s, ev.occurred_at) is Mode.ROAD for ev in via)
    at_sea = [ev for ev in fixes if ev not in via]
    assert at_sea  # the sea leg's fixes still come over MQTT
    assert {encode(s, ev, tenant="acme", secret=SECRET).transport for ev in at_sea} == {"mqtt"}
    for ev in via:
        d = encode(s, ev, tenant="acme", secret=SECRET)
        assert d.headers["Authorization"] == f"Bearer {SECRET}"
        assert orjson.loads(d.body)["device"]["uniqueId"] == s.device_id
        events = read(s, ev, "traccar")
        (fix,) = [e for e in events if e.position is not None]
        assert (fix.device, fix.occurred_at) == (s.device_id, ev.occurred_at)  # the attached device
        assert fix.position is not None
        assert fix.position.lat == pytest.approx(ev.lat, abs=1e-5)
        assert fix.position.lon == pytest.approx(ev.lon, abs=1e-5)
        assert fix.position.speed_kmh == pytest.approx(ev.speed_kmh or 0.0, abs=0.05)
        assert all(e.milestone is None for e in events)  # an ignition tells a shipment nothing
    readings = [ev for ev in s.events if ev.kind is EventKind.SENSOR]
    assert {encode(s, ev, tenant="acme", secret=SECRET).transport for ev in readings} == {"mqtt"}


def test_the_first_report_after_a_stop_is_the_ignition_event_forward() -> None:
    s = both_feeds()
    starts = [
        seg.t0
        for prev, seg in zip(s.track.segments, s.track.segments[1:], strict=False)
        if seg.mode is Mode.ROAD and prev.mode is None
    ]
    assert starts
    ignitions = 0
    for t0 in starts:
        ping = Feeder.ping_event(s, t0 + timedelta(seconds=40))  # the feeder's live report
        assert ping is not None
        d = encode(s, ping, tenant="acme", secret=SECRET)
        body = orjson.loads(d.body)
        if d.source != "traccar":
            continue
        assert body["event"]["type"] == "ignitionOn"
        assert body["event"]["positionId"] == body["position"]["id"]
        (fix,) = read(s, ping, "traccar")
        assert fix.device == s.device_id
        later = Feeder.ping_event(s, t0 + timedelta(minutes=5))
        assert later is not None
        assert "event" not in orjson.loads(encode(s, later, tenant="acme", secret=SECRET).body)
        ignitions += 1
    assert ignitions


def test_a_third_of_the_trackers_report_through_traccar() -> None:
    forwarded = [
        s
        for s in world()
        if any(
            encode(s, ev, tenant="acme", secret=SECRET).source == "traccar"
            for ev in s.events[:: max(1, len(s.events) // 400)]
        )
    ]
    assert 10 <= len(forwarded) <= 30
