"""Simulated cross-border shipments: what trackd would hear about them, and when.

`simulate(index, start, seed=...)` builds one `Scenario` deterministically from the seed: the
`POST /v1/shipments` body, a GPS tracker, and the time-ordered `PlannedEvent`s (device positions
and sensor readings over MQTT, carrier milestones and estimates over each leg's webhook feed,
customs through the broker's native feed). `history(n, seed, start)` plays `n` staggered
scenarios as the JSON lines `trackd eta-eval --events` reads. Pure: no I/O, no clock reads.
"""

from __future__ import annotations

import heapq
import itertools
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from lab.simulator_lanes import LANES, Lane, LegPlan, leg_path
from lab.simulator_legs import Journey, run_leg
from lab.simulator_track import HISTORY_CADENCE, LIVE_CADENCE, Builder, Cadence, PlannedEvent, Track
from trackd.codes import EventKind, Milestone, Mode

__all__ = [
    "HISTORY_CADENCE",
    "LIVE_CADENCE",
    "LegRun",
    "PlannedEvent",
    "Scenario",
    "history",
    "iso",
    "lane_of",
    "native_event",
    "scenarios",
    "simulate",
]

SEA_LINES = {  # carrier: (SCAC, container owner code, vessels)
    "Maersk": ("MAEU", "MSKU", ("MAERSK HANGZHOU", "MAERSK ESSEN")),
    "MSC": ("MSCU", "MEDU", ("MSC GULSUN", "MSC ANNA")),
    "CMA CGM": ("CMDU", "CMAU", ("CMA CGM MARCO POLO", "CMA CGM JULES VERNE")),
    "COSCO": ("COSU", "CSNU", ("COSCO SHIPPING UNIVERSE", "COSCO SHIPPING TAURUS")),
    "Hapag-Lloyd": ("HLCU", "HLXU", ("BERLIN EXPRESS", "HAMBURG EXPRESS")),
    "ONE": ("ONEY", "ONEU", ("ONE INNOVATION", "ONE APUS")),
    "Evergreen": ("EGLV", "EGHU", ("EVER ACE", "EVER GIVEN")),
    "HMM": ("HDMU", "HMMU", ("HMM ALGECIRAS", "HMM OSLO")),
}
AIRLINES = {"Cathay Cargo": ("160", "CX"), "Lufthansa Cargo": ("020", "LH"), "Singapore Airlines Cargo": ("618", "SQ")}
PROMISE_SLACK = (0.08, 0.12)  # a tight quote, sometimes optimistic
REEFER_CARGO = {
    "frozen seafood": (-25.0, -18.0),
    "fresh produce": (2.0, 8.0),
    "avocados": (5.0, 8.0),
    "pharmaceuticals": (2.0, 8.0),
}


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def container_number(rng: random.Random, owner: str) -> str:
    """An ISO 6346 container number with its check digit."""
    values = {ch: v for ch, v in zip(string.ascii_uppercase, [v for v in range(10, 39) if v % 11], strict=False)}
    serial = _digits(rng, 6)
    total = sum((values[c] if c.isalpha() else int(c)) * 2**i for i, c in enumerate(owner + serial))
    return f"{owner}{serial}{total % 11 % 10}"


def imo_number(rng: random.Random) -> str:
    six = str(rng.randint(9_100_000, 9_999_999))[:6]
    return six + str(sum(int(c) * w for c, w in zip(six, range(7, 1, -1), strict=True)) % 10)


def mmsi_number(imo: str) -> str:
    """The vessel's MMSI (9 digits, a Danish MID), drawn from its IMO number so that a vessel keeps it."""
    return f"219{int(imo) % 1_000_000:06d}"


def awb_number(rng: random.Random, prefix: str) -> str:
    serial = rng.randint(1_000_000, 9_999_999)
    return f"{prefix}-{serial}{serial % 7}"


def usps_number(rng: random.Random) -> str:
    """A 22-digit USPS Intelligent Mail package barcode (Ground Advantage), with its mod-10 check digit."""
    body = "9400111" + _digits(rng, 14)
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str(-total % 10)


def parcel_number(rng: random.Random, carrier: str) -> str:
    if carrier.lower() == "ups":
        alnum = string.ascii_uppercase + string.digits
        return "1Z" + "".join(rng.choice(alnum) for _ in range(6)) + "03" + _digits(rng, 8)
    if carrier.lower() in ("fedex",):
        return _digits(rng, 12)
    if carrier.lower() == "usps":
        return usps_number(rng)
    if carrier == "DPDUK":
        return "15" + _digits(rng, 12)
    return _digits(rng, 10)


@dataclass(frozen=True, slots=True)
class LegRun:
    """One leg as this shipment runs it: the carrier drawn and its identifiers."""

    plan: LegPlan
    carrier: str
    ids: dict[str, str] = field(hash=False)


@dataclass(frozen=True, slots=True)
class Scenario:
    index: int
    shipment_id: str
    tracking_number: str
    carrier: str
    lane: str
    body: dict[str, Any] = field(hash=False)  # POST /v1/shipments, without "devices"
    device_id: str
    device_key: str
    device_source: str  # native | owntracks
    start: datetime
    legs: tuple[LegRun, ...]
    events: tuple[PlannedEvent, ...]
    outcome: Milestone  # delivered or returned
    flags: frozenset[str]
    track: Track = field(hash=False, compare=False, repr=False)  # where the tracker is at any instant

    @property
    def completed_at(self) -> datetime:
        return self.events[-1].send_at

    def event_id(self, ev: PlannedEvent) -> str:
        return f"{self.shipment_id}-{ev.seq}"


def _legs(rng: random.Random, lane: Lane, po: str) -> tuple[LegRun, ...]:
    out: list[LegRun] = []
    container = ""
    for plan in lane.legs:
        carrier = rng.choice(plan.carriers)
        ids: dict[str, str] = {"po": po}
        if plan.mode is Mode.SEA:
            scac, owner, vessels = SEA_LINES[carrier]
            container = container_number(rng, owner)
            ids |= {
                "scac": scac,
                "container": container,
                "booking": _digits(rng, 9),
                "bl": scac + _digits(rng, 10),
                "vessel": rng.choice(vessels),
                "imo": imo_number(rng),
                "voyage": f"{rng.randint(100, 499)}{rng.choice('WE')}",
                "service": rng.choice(("AE7", "FAL1", "NEU4", "TP6", "PSW2")),
            }
        elif plan.mode is Mode.AIR:
            prefix, code = AIRLINES[carrier]
            ids |= {
                "awb": awb_number(rng, prefix),
                "flight": f"{code}{rng.randint(100, 999)}",
                "hawb": "HAWB" + _digits(rng, 8),
            }
        elif plan.source == "x12-214":
            ids |= {
                "scac": carrier,
                "pro": _digits(rng, 10),
                "bol": "BOL" + _digits(rng, 8),
                "equipment": container or _digits(rng, 6),
                "equipment_kind": "CN" if container else "TL",
            }
        else:
            ids |= {"tracking": parcel_number(rng, carrier), "tracker": "trk_" + rng.randbytes(16).hex()}
        if plan.mode is Mode.SEA:
            ids["mmsi"] = mmsi_number(ids["imo"])
        out.append(LegRun(plan, carrier, ids))
    return tuple(out)


def _leg_body(leg: LegRun) -> dict[str, Any]:
    """A leg as the shipment's body has it; a sea leg names its vessel, a road or rail leg books
    its corridor as the planned `route` (trackd has no road or rail graph to compute it)."""
    p = leg.plan
    out: dict[str, Any] = {
        "mode": p.mode.value,
        "origin": p.from_place.location(),
        "destination": p.to_place.location(),
    }
    if p.mode in (Mode.ROAD, Mode.RAIL):
        path = leg_path(p.mode, p.origin, p.destination)
        out["route"] = {"type": "LineString", "coordinates": [[lon, lat] for lat, lon in path.points]}
    if p.mode is Mode.SEA:
        out["vessel"] = {"imo": int(leg.ids["imo"]), "mmsi": int(leg.ids["mmsi"]), "name": leg.ids["vessel"]}
    return out


def _main_ids(legs: tuple[LegRun, ...]) -> tuple[str, list[str]]:
    first = legs[0].ids
    number = first.get("bl") or first.get("awb") or first["pro"]
    refs = [first[k] for k in ("container", "booking", "hawb", "bol") if k in first]
    refs += [leg.ids.get("tracking") or leg.ids.get("pro") or "" for leg in legs[1:]]
    refs.append(first["po"])
    return number, [r for r in dict.fromkeys(refs) if r and r != number]


def _promised(rng: random.Random, lane: Lane, start: datetime, slack: tuple[float, float]) -> datetime:
    """The date promised at booking: a nominal transit time with slack (mean, deviation), sometimes optimistic."""
    nominal_h = 0.0
    for plan in lane.legs:
        km = leg_path(plan.mode, plan.origin, plan.destination).length_km
        nominal_h += {
            Mode.SEA: km / 35 + 8 * 24,
            Mode.AIR: km / 840 + 60,
            Mode.RAIL: km / 52 + 72,
            Mode.ROAD: km / 70 * 2.1 + 30,
        }[plan.mode]
    at = start + timedelta(hours=nominal_h * (1 + rng.gauss(*slack)))
    local = at.astimezone(ZoneInfo(lane.legs[-1].to_place.tz))
    return local.replace(hour=18, minute=0, second=0, microsecond=0).astimezone(UTC)


def _lane(rng: random.Random) -> Lane:
    return rng.choices(LANES, weights=[ln.weight for ln in LANES])[0]


def lane_of(index: int, *, seed: int, tag: str = "") -> Lane:
    """The lane of scenario number `index` (what `simulate` draws first), without simulating it."""
    return _lane(random.Random(f"{seed}:{tag}:{index}"))


def simulate(
    index: int,
    start: datetime,
    *,
    seed: int,
    tag: str = "",
    cadence: Cadence = LIVE_CADENCE,
    promise_slack: tuple[float, float] = PROMISE_SLACK,
) -> Scenario:
    """Scenario number `index` of the run `seed`, booked at `start`; the same inputs give the same scenario.

    `tag` namespaces identifiers (shipment, device, tracking numbers) so that runs can share a tenant;
    `promise_slack` is the mean and deviation of the slack the promised date adds to the nominal
    transit time.
    """
    rng = random.Random(f"{seed}:{tag}:{index}")
    lane = _lane(rng)
    perishable = [c for c in lane.cargo if c[0] in REEFER_CARGO]
    reefer = rng.random() < lane.reefer_share
    commodity, lo_kg, hi_kg = rng.choice(perishable if reefer and perishable else lane.cargo)
    temp_range = REEFER_CARGO.get(commodity, (0.0, 4.0)) if reefer else None
    legs = _legs(rng, lane, "PO-" + _digits(rng, 7))
    number, refs = _main_ids(legs)
    device_source = "native" if reefer or rng.random() < 0.6 else "owntracks"
    failures = 0
    if rng.random() < 0.05:
        failures = 2 if rng.random() < 0.15 else 1
    b = Builder(rng, cadence, device_source, start, lane.legs[0].from_place.point)
    j = Journey(
        b,
        rng,
        lane.legs,
        start,
        customs_hold=rng.random() < 0.10,
        failed_attempts=failures,
        bias=rng.choice((0.0, -0.03, -0.06, 0.02)),
    )
    for i in range(len(lane.legs)):
        run_leg(j, i)
    assert j.end is not None
    b.render_positions()
    excursion = None
    if temp_range is not None and rng.random() < 0.15:
        x0 = start + (j.end - start) * rng.uniform(0.15, 0.85)
        excursion = (x0, x0 + timedelta(hours=rng.uniform(2, 10)), rng.uniform(2, 8))
        j.flags.add("temperature_excursion")
    b.render_sensors(start, j.end, temp_range, excursion)
    if reefer:
        j.flags.add("reefer")
    prefix = f"sim-{tag}-" if tag else "sim-"
    body: dict[str, Any] = {
        "tracking_number": number,
        "carrier": legs[0].carrier,
        "references": refs,
        "legs": [_leg_body(leg) for leg in legs],
        "promised_at": iso(_promised(rng, lane, start, promise_slack)),
        "weight_kg": round(rng.uniform(lo_kg, hi_kg), 1),
    }
    if temp_range is not None:
        body["temperature_range_c"] = list(temp_range)
    device_id = f"{prefix.replace('sim-', 'trk-', 1)}{index:05d}"
    return Scenario(
        index=index,
        shipment_id=f"{prefix}{index:05d}",
        tracking_number=number,
        carrier=legs[0].carrier,
        lane=lane.name,
        body=body,
        device_id=device_id,
        device_key=f"{device_id}-{rng.getrandbits(48):012x}",
        device_source=device_source,
        start=start,
        legs=legs,
        events=b.finish(),
        outcome=j.outcome,
        flags=frozenset(j.flags),
        track=b.track(),
    )


def native_event(s: Scenario, ev: PlannedEvent, *, with_shipment: bool = True) -> dict[str, Any]:
    """The trackd event JSON of a planned event (what eta-eval reads and the native feeds send)."""
    out: dict[str, Any] = {
        "event_id": s.event_id(ev),
        "occurred_at": iso(ev.occurred_at),
        "created_at": iso(ev.send_at),
    }
    if with_shipment:
        out["shipment"] = s.tracking_number
    if ev.kind is EventKind.POSITION:
        out["device"] = s.device_id
        out["position"] = {
            "lat": round(ev.lat or 0.0, 6),
            "lon": round(ev.lon or 0.0, 6),
            "speed_kmh": ev.speed_kmh,
            "heading": ev.heading,
        }
    elif ev.kind is EventKind.SENSOR:
        out["device"] = s.device_id
        out["sensor"] = {
            k: v for k, v in (("temperature_c", ev.temperature_c), ("battery_pct", ev.battery_pct)) if v is not None
        }
    else:
        assert ev.milestone is not None
        leg = s.legs[ev.leg or 0]
        out["carrier"] = leg.carrier
        out["milestone"] = {"code": ev.milestone.value, "classifier": ev.classifier.value, "mode": leg.plan.mode.value}
        if ev.place is not None:
            out["milestone"]["location"] = ev.place.location()
        if ev.detail:
            out["milestone"]["description"] = ev.detail
    return out


def scenarios(
    n: int, seed: int, start: datetime, *, span_days: float = 120.0, tag: str = "", cadence: Cadence = LIVE_CADENCE
) -> Iterator[Scenario]:
    """`n` scenarios booked one after another, spread over about `span_days`."""
    rng = random.Random(f"starts:{seed}:{tag}")
    gap_h = span_days * 24 / max(n, 1)
    at = start
    for i in range(n):
        yield simulate(i, at, seed=seed, tag=tag, cadence=cadence)
        at += timedelta(hours=rng.expovariate(1 / gap_h))


def history(
    n: int,
    seed: int,
    start: datetime,
    *,
    span_days: float = 120.0,
    cadence: Cadence = HISTORY_CADENCE,
    drift: Callable[[Iterator[Scenario]], Iterator[Scenario]] | None = None,
) -> Iterator[dict[str, Any]]:
    """The eta-eval JSON lines of `n` shipments, in the order things became known.

    Each shipment is `{"shipment": body + "id"}` at its booking, then `{"event": ...}` as each
    event is issued (`created_at` for carrier events, `occurred_at` for device events).
    """
    pending = scenarios(n, seed, start, span_days=span_days, cadence=cadence)
    if drift is not None:  # e.g. `simulator_drift.Drift(seed, start).apply`
        pending = drift(pending)
    heap: list[tuple[datetime, int, dict[str, Any], Iterator[tuple[datetime, dict[str, Any]]]]] = []
    order = itertools.count()
    upcoming = next(pending, None)

    def records(s: Scenario) -> Iterator[tuple[datetime, dict[str, Any]]]:
        yield s.start, {"shipment": {"id": s.shipment_id, **s.body}}
        for ev in s.events:
            yield ev.send_at, {"event": native_event(s, ev)}

    while upcoming is not None or heap:
        if upcoming is not None and (not heap or upcoming.start <= heap[0][0]):
            stream = records(upcoming)
            at, rec = next(stream)
            heapq.heappush(heap, (at, next(order), rec, stream))
            upcoming = next(pending, None)
            continue
        _, _, rec, stream = heapq.heappop(heap)
        yield rec
        following = next(stream, None)
        if following is not None:
            heapq.heappush(heap, (following[0], next(order), following[1], stream))
