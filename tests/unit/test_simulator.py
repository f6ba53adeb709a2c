"""The shipment simulator and the carrier payload encoders: determinism, timing, formats, signatures."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import itertools
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import cache

import orjson
import pytest

from ingest.sources import dcsa, usps
from lab.carrier_payloads import dcsa3_event, dcsa_event, encode, signature_headers
from lab.carrier_x12 import x12_214
from lab.simulator import HISTORY_CADENCE, Scenario, history, simulate
from lab.simulator_lanes import LANES, Path, haversine_km, leg_path
from trackd import release
from trackd.codes import Classifier, EventKind, Milestone, Mode
from trackd.model import SourceContext
from trackd.shipment import Vessel, imo_valid

START = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
SECRET = "whsec-ünïcode-key"


@cache
def sample(n: int = 40, seed: int = 7) -> tuple[Scenario, ...]:
    return tuple(simulate(i, START, seed=seed) for i in range(n))


@cache
@functools.lru_cache(maxsize=1)
def bulk(n: int = 200) -> tuple[Scenario, ...]:
    return tuple(simulate(i, START, seed=11, cadence=HISTORY_CADENCE) for i in range(n))


def test_same_seed_same_scenario_other_seed_other() -> None:
    a, b = simulate(3, START, seed=7), simulate(3, START, seed=7)
    assert a.body == b.body
    assert a.events == b.events
    assert a.device_id == b.device_id
    c = simulate(3, START, seed=8)
    assert (c.tracking_number, c.events) != (a.tracking_number, a.events)
    tagged = simulate(3, START, seed=7, tag="run2")
    assert tagged.tracking_number != a.tracking_number
    assert "run2" in tagged.device_id


def test_timeline_is_ordered_and_numbered() -> None:
    for s in sample():
        sends = [ev.send_at for ev in s.events]
        assert sends == sorted(sends)
        assert [ev.seq for ev in s.events] == list(range(len(s.events)))
        assert all(ev.send_at >= s.start for ev in s.events)
        for ev in s.events:
            if ev.classifier is Classifier.ACTUAL:
                assert ev.send_at >= ev.occurred_at
            else:  # an estimate is of something still to come
                assert ev.occurred_at > ev.send_at


def _actual_milestones(s: Scenario) -> list[Milestone]:
    return [
        ev.milestone
        for ev in sorted(s.events, key=lambda e: e.occurred_at)
        if ev.milestone is not None and ev.classifier is Classifier.ACTUAL
    ]


def test_every_shipment_ends_delivered_or_returned() -> None:
    outcomes = Counter(s.outcome for s in bulk())
    assert set(outcomes) <= {Milestone.DELIVERED, Milestone.RETURNED}
    for s in bulk():
        codes = _actual_milestones(s)
        assert codes[-1] is s.outcome
        assert codes.count(Milestone.DELIVERED) == (1 if s.outcome is Milestone.DELIVERED else 0)
        if Milestone.BOOKED in codes:
            assert codes[0] is Milestone.BOOKED


def test_positions_move_at_realistic_speeds() -> None:
    limits = {Mode.SEA: 45.0, Mode.ROAD: 95.0, Mode.RAIL: 70.0}
    for s in sample():
        fixes = sorted((ev for ev in s.events if ev.kind is EventKind.POSITION), key=lambda e: e.occurred_at)
        assert fixes, s.lane
        modes = {leg.plan.mode for leg in s.legs}
        cap = 950.0 if Mode.AIR in modes else max(limits[m] for m in modes)
        for a, b in itertools.pairwise(fixes):
            assert a.lat is not None
            assert a.lon is not None
            assert b.lat is not None
            assert b.lon is not None
            hours = (b.occurred_at - a.occurred_at).total_seconds() / 3600
            km = haversine_km((a.lat, a.lon), (b.lat, b.lon))
            assert km <= cap * hours + 1.0, (s.lane, a.occurred_at, km, hours)
            assert b.speed_kmh is not None
            assert b.speed_kmh <= max(limits.values()) * 1.3


def test_durations_and_dwell_are_plausible() -> None:
    for s in bulk():
        days = (s.completed_at - s.start).total_seconds() / 86400
        sea = any(leg.plan.mode is Mode.SEA for leg in s.legs)
        assert (20 < days < 70) if sea else (1 < days < 16), (s.lane, days)
        times = {
            ev.milestone: ev.occurred_at
            for ev in s.events
            if ev.leg == 0 and ev.classifier is Classifier.ACTUAL and ev.milestone
        }
        if sea:
            dwell = times[Milestone.LOADED] - times[Milestone.GATE_IN]
            assert timedelta(days=2) <= dwell <= timedelta(days=5)


def test_incident_rates_match_the_scenario_mix() -> None:
    scenarios = bulk()
    n = len(scenarios)
    rate = Counter(flag for s in scenarios for flag in s.flags)
    assert 0.05 * n < rate["customs_hold"] < 0.16 * n
    assert 0.02 * n < rate["failed_attempt"] < 0.09 * n
    sea = sum(1 for s in scenarios if any(leg.plan.mode is Mode.SEA for leg in s.legs))
    assert 0.02 * sea < rate["weather"] < 0.16 * sea
    assert 0 < rate["temperature_excursion"] < 0.35 * rate["reefer"]


def test_sea_estimates_sharpen_near_arrival() -> None:
    first, last = [], []
    for s in bulk()[:200]:
        arrived = [ev for ev in s.events if ev.leg == 0 and ev.milestone is Milestone.ARRIVED]
        actual = [ev.occurred_at for ev in arrived if ev.classifier is Classifier.ACTUAL]
        estimates = [ev for ev in arrived if ev.classifier is Classifier.ESTIMATED]
        if s.legs[0].plan.mode is not Mode.SEA or not estimates:
            continue
        first.append(abs((estimates[0].occurred_at - actual[0]).total_seconds()) / 3600)
        last.append(abs((estimates[-1].occurred_at - actual[0]).total_seconds()) / 3600)
    assert len(first) > 20
    assert sum(last) / len(last) < sum(first) / len(first) / 3
    assert max(last) < 24


def test_reefer_readings_and_excursions() -> None:
    for s in bulk():
        temps = [ev.temperature_c for ev in s.events if ev.temperature_c is not None]
        if "reefer" not in s.flags:
            assert not temps
            continue
        lo, hi = s.body["temperature_range_c"]
        above = [t for t in temps if t > hi + 1.5]
        assert bool(above) == ("temperature_excursion" in s.flags), s.shipment_id
        assert min(temps) > lo - 3


def test_shipment_body_shape() -> None:
    for s in sample():
        body = s.body
        assert body["tracking_number"] == s.tracking_number
        assert s.tracking_number not in body["references"]
        assert body["legs"][0]["origin"]["name"]
        for leg in body["legs"]:
            assert leg["mode"] in {"sea", "air", "road", "rail"}
            for end in (leg["origin"], leg["destination"]):
                assert {"name", "country", "lat", "lon"} <= set(end)
                assert end.get("unlocode") or end.get("iata")
        promised = datetime.fromisoformat(body["promised_at"])
        assert promised > s.start
        assert body["weight_kg"] > 0


def test_routes_follow_the_network() -> None:
    for lane in LANES:
        for plan in lane.legs:
            path = leg_path(plan.mode, plan.origin, plan.destination)
            direct = haversine_km(plan.from_place.point, plan.to_place.point)
            assert direct <= path.length_km < direct * 2.6, lane.name  # Busan-Hamburg goes by Suez
            assert all(-180 <= lon <= 180 for _, lon in path.points)
    pacific = leg_path(Mode.SEA, "VNSGN", "USLAX")
    steps = [haversine_km(pacific.at(km)[:2], pacific.at(km + 100)[:2]) for km in range(0, 13000, 100)]
    assert max(steps) < 110  # no jump across the globe at the dateline


def test_path_interpolates_across_the_dateline() -> None:
    path = Path(((10.0, 179.5), (10.0, -179.5)))
    lat, lon, _ = path.at(path.length_km / 2)
    assert lat == pytest.approx(10.0, abs=0.01)
    assert abs(lon) == pytest.approx(180.0, abs=0.01)


def _hmac(body: bytes) -> hmac.HMAC:
    return hmac.new(SECRET.encode("utf-8"), body, hashlib.sha256)


def test_signatures_verify() -> None:
    body = b'[{"eventID": "x"}]'
    hexmac = _hmac(body).hexdigest()
    assert signature_headers("native", body, SECRET) == {"X-Trackd-Signature": f"sha256={hexmac}"}
    assert signature_headers("x12-214", body, SECRET) == {"X-Trackd-Signature": f"sha256={hexmac}"}
    assert signature_headers("onerecord", body, SECRET) == {"X-Trackd-Signature": f"sha256={hexmac}"}
    assert signature_headers("dcsa", body, SECRET) == {"Notification-Signature": f"sha256={hexmac}"}
    assert signature_headers("easypost", body, SECRET) == {"X-Hmac-Signature": f"hmac-sha256-hex={hexmac}"}
    b64 = base64.b64encode(_hmac(body).digest()).decode()
    assert signature_headers("aftership", body, SECRET) == {"aftership-hmac-sha256": b64}


@cache
def carried_by(carrier: str, n: int = 200) -> Scenario:
    """The first scenario of seed 7 whose last leg `carrier` carries."""
    return next(s for i in range(n) if (s := simulate(i, START, seed=7)).legs[-1].carrier == carrier)


def test_every_event_encodes_to_a_signed_payload() -> None:
    seen: Counter[str] = Counter()
    for s in (*sample(), carried_by("usps")):
        for ev in s.events:
            d = encode(s, ev, tenant="acme", secret=SECRET, topic_prefix="t1/")
            seen[d.source] += 1
            if d.transport == "mqtt":
                assert d.target in (f"t1/trackd/acme/devices/{s.device_id}/events", f"t1/owntracks/acme/{s.device_id}")
                assert isinstance(json.loads(d.body), dict)
                continue
            assert d.target == f"/v1/ingest/acme/{d.source}"
            assert d.headers.items() >= signature_headers(d.source, d.body, SECRET).items()
            if d.source == "x12-214":
                assert d.headers["Content-Type"] == "text/plain"
                d.body.decode("ascii")
            else:
                payload = json.loads(d.body)
                if d.source == "dcsa" and d.headers["API-Version"] == "3.0.0":
                    assert isinstance(payload, dict)
                    assert len(payload["events"]) == 1
                    seen["dcsa 3.0.0"] += 1
                else:
                    assert isinstance(payload, list if d.source == "dcsa" else dict)
    assert set(seen) == {
        "native",
        "owntracks",
        "dcsa",
        "x12-214",
        "onerecord",
        "aftership",
        "easypost",
        "usps",
        "dhl",
        "traccar",
        "dcsa 3.0.0",
    }


def _x12_events() -> list[tuple[Scenario, int]]:
    return [(s, ev.seq) for s in sample() for ev in s.events if ev.source == "x12-214"]


def test_usps_legs_push_tracking_the_adapter_reads() -> None:
    s = carried_by("usps")
    leg = len(s.legs) - 1
    planned = [ev for ev in s.events if ev.leg == leg and ev.transport == "webhook"]
    assert planned
    for ev in planned:
        d = encode(s, ev, tenant="acme", secret=SECRET)
        assert d.source == "usps"
        tracking = json.loads(d.body)
        assert tracking["trackingNumber"] == s.legs[leg].ids["tracking"]
        assert re.fullmatch(r"9400111\d{15}", tracking["trackingNumber"])
        ctx = SourceContext(tenant="acme", received_at=ev.send_at + timedelta(seconds=2))
        events = usps.normalize(d.body, ctx)
        actual = [e for e in events if e.milestone and e.milestone.classifier is Classifier.ACTUAL]
        known = [p for p in planned if p.seq <= ev.seq and p.classifier is Classifier.ACTUAL]
        assert sorted(e.milestone.code for e in actual if e.milestone) == sorted(
            (p.milestone.value if p.milestone is not Milestone.ARRIVED else "at_facility") for p in known if p.milestone
        )
        assert all(e.carrier == "usps" for e in events)


def test_dcsa_3_0_0_events_read_as_their_v2_2_twins() -> None:
    pairs = [(s, ev) for s in sample() for ev in s.events if ev.source == "dcsa"]
    versions = Counter(encode(s, ev, tenant="acme", secret=SECRET).headers["API-Version"] for s, ev in pairs)
    assert versions["3.0.0"] > 0
    assert versions["2.2.0"] > 0
    for s, ev in pairs:
        ctx = SourceContext(tenant="acme", received_at=ev.send_at + timedelta(seconds=2))
        v3 = dcsa.normalize(orjson.dumps({"events": [dcsa3_event(s, ev)]}), ctx)
        v2 = dcsa.normalize(orjson.dumps([dcsa_event(s, ev)]), ctx)
        assert len(v3) == len(v2) == 1
        a, b = v3[0], v2[0]
        assert a.milestone == b.milestone
        assert (a.occurred_at, a.created_at, a.shipment) == (b.occurred_at, b.created_at, b.shipment)
        assert a.carrier == b.carrier or (b.carrier is None and a.carrier == s.legs[ev.leg or 0].ids["scac"])
        assert set(b.refs) <= set(a.refs)


def test_sea_legs_name_a_valid_vessel() -> None:
    vessels = 0
    for s in sample():
        for leg, body in zip(s.legs, s.body["legs"], strict=True):
            if leg.plan.mode is not Mode.SEA:
                assert "vessel" not in body
                continue
            vessel = Vessel.from_dict(body["vessel"])
            assert vessel.imo is not None
            assert imo_valid(vessel.imo)
            assert str(vessel.imo) == leg.ids["imo"]
            assert vessel.name == leg.ids["vessel"]
            assert vessel.mmsi is not None
            assert 100_000_000 <= vessel.mmsi <= 999_999_999
            vessels += 1
    assert vessels >= 10


def test_x12_envelopes_have_correct_counts() -> None:
    pairs = _x12_events()
    assert pairs
    for s, seq in pairs:
        text = x12_214(s, s.events[seq])
        segments = [seg.strip() for seg in text.split("~") if seg.strip()]
        isa = segments[0]
        assert len(isa) + 1 == 106  # fixed-width interchange header, with its terminator
        el = {seg.split("*")[0]: seg.split("*") for seg in segments}
        assert el["ISA"][13] == el["IEA"][2]
        assert el["GS"][6] == el["GE"][2]
        assert el["ST"][2] == el["SE"][2]
        st, se = [i for i, seg in enumerate(segments) if seg.split("*")[0] in ("ST", "SE")]
        assert int(el["SE"][1]) == se - st + 1
        assert el["GE"][1] == "1"
        assert el["IEA"][1] == "1"
        assert el["AT7"][7] == "LT"
        assert el["B10"][2] == s.tracking_number


def test_parcel_webhooks_carry_their_checkpoints() -> None:
    for s in sample():
        parcel = [ev for ev in s.events if ev.source in ("aftership", "easypost")]
        if not parcel:
            continue
        last = encode(s, parcel[-1], tenant="acme", secret=SECRET)
        payload = json.loads(last.body)
        actual = [ev for ev in parcel if ev.classifier is Classifier.ACTUAL]
        if last.source == "aftership":
            assert len(payload["msg"]["checkpoints"]) == len(actual)
            assert payload["msg"]["tracking_number"] == s.legs[-1].ids["tracking"]
        elif last.source == "dhl":
            assert len(payload["shipments"][0]["events"]) == len(actual)
            assert payload["shipments"][0]["id"] == s.legs[-1].ids["tracking"]
        else:
            assert payload["description"] == "tracker.updated"
            assert len(payload["result"]["tracking_details"]) == len(actual)


def test_history_lines_in_the_order_they_became_known() -> None:
    lines = list(history(12, 3, START))
    shipments = [ln["shipment"] for ln in lines if "shipment" in ln]
    assert len(shipments) == 12
    assert len({s["id"] for s in shipments}) == 12
    known: list[datetime] = []
    seen_numbers: set[str] = set()
    for ln in lines:
        if "shipment" in ln:
            seen_numbers.add(ln["shipment"]["tracking_number"])
            continue
        ev = ln["event"]
        assert ev["shipment"] in seen_numbers  # a shipment is announced before its events
        assert {"event_id", "occurred_at", "shipment"} <= set(ev)
        assert sum(k in ev for k in ("position", "milestone", "sensor")) == 1
        known.append(datetime.fromisoformat(ev.get("created_at") or ev["occurred_at"]))
    assert known == sorted(known)
    delivered = [
        ln
        for ln in lines
        if ln.get("event", {}).get("milestone", {}).get("code") == "delivered"
        and ln["event"]["milestone"]["classifier"] == "actual"
    ]
    assert len(delivered) >= 10
    starts = sorted(datetime.fromisoformat(ln["event"]["occurred_at"]) for ln in delivered)
    assert starts[-1] - starts[0] > timedelta(days=30)  # spread over months


def test_some_sea_legs_plan_a_release_the_adapter_folds_with_a_last_free_day() -> None:
    sea = [s for s in sample() if any(leg.plan.mode is Mode.SEA for leg in s.legs)]
    released = [s for s in sea if "release" in s.flags]
    assert 0 < len(released) < len(sea)  # one in a few container shipments
    for s in released:
        planned = [ev for ev in s.events if ev.source == "dcsa" and ev.classifier is Classifier.ACTUAL]
        codes = [ev.milestone for ev in planned]
        assert codes.count(Milestone.CUSTOMS_HOLD) == codes.count(Milestone.CUSTOMS_RELEASED) == 1
        (available,) = [ev for ev in planned if ev.milestone is Milestone.AVAILABLE_FOR_PICKUP]
        arrived = next(ev for ev in planned if ev.milestone is Milestone.ARRIVED and ev.leg == available.leg)
        gate_out = next(ev for ev in planned if ev.milestone is Milestone.GATE_OUT and ev.leg == available.leg)
        assert arrived.occurred_at < available.occurred_at < gate_out.occurred_at
        assert available.last_free_day is not None
        assert timedelta(days=3) < available.last_free_day - available.occurred_at < timedelta(days=7)
        r = release.Release()
        for ev in planned:
            d = encode(s, ev, tenant="acme", secret=SECRET)
            ctx = SourceContext(tenant="acme", received_at=ev.send_at + timedelta(seconds=2))
            for e in dcsa.normalize(d.body, ctx):
                r = release.fold(r, e)
        r = release.merge(r.to_dict(), {"last_free_day": available.last_free_day}, available.send_at)
        hold = next(ev for ev in planned if ev.milestone is Milestone.CUSTOMS_HOLD)
        cleared = next(ev for ev in planned if ev.milestone is Milestone.CUSTOMS_RELEASED)
        assert r.available_for_pickup_at == available.occurred_at
        assert r.last_free_day == available.last_free_day
        assert [(h.kind, h.since, h.cleared_at) for h in r.holds] == [
            ("customs", hold.occurred_at, cleared.occurred_at)
        ]
