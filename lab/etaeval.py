"""`trackd eta-eval`: replay completed shipments as if live and score the ETA against baselines.

Input lines, in the order things became known, are `{"shipment": <POST /v1/shipments body with
an "id">}` or `{"event": <trackd event JSON>}`. A shipment's outcome is its actual `delivered`
milestone; shipments without one are ignored. Its journey runs from its first event to that
delivery; at 25/50/75/90 % of it each method predicts the delivery from what was known then
(events whose `created_at`, else `occurred_at`, is not later) and, for trackd, from history
learned only from shipments whose delivery was known strictly before that instant.

Methods: `trackd` (`trackd.eta.predict`, with its 80 % interval), `promised` (the shipment's
`promised_at`), `carrier` (the carrier's latest estimate known then) and `naive` (remaining
great-circle distance to the destination / the nominal speed of the main mode). The baselines
state no interval, so their `coverage` is null rather than a misleading 0. A method that has
nothing to say for a shipment at a horizon (no promise, no carrier estimate) is left out of
that horizon's `n`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from trackd import eta, geo, places
from trackd.codes import Classifier, Milestone, Mode
from trackd.errors import ValidationError
from trackd.model import Location, ref_key
from trackd.shipment import Leg, PositionFix, Shipment
from trackd.times import number, optional_number, parse_time

HORIZONS = (25, 50, 75, 90)
METHODS = ("trackd", "promised", "carrier", "naive")
RECENT_FIXES = 50


@dataclass(frozen=True, slots=True)
class _Event:
    known_at: datetime
    occurred_at: datetime
    keys: tuple[str, ...]
    device: str | None
    code: Milestone | None = None
    classifier: Classifier = Classifier.ACTUAL
    location: Location | None = None
    fix: PositionFix | None = None

    @property
    def actual(self) -> bool:
        return self.classifier is Classifier.ACTUAL


@dataclass
class _Track:
    shipment: Shipment
    devices: frozenset[str]
    events: list[_Event] = field(default_factory=list)
    forecasts: list[eta.Forecast] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Score:
    mae_h: float | None
    coverage: float | None
    n: int


@dataclass(frozen=True, slots=True)
class Report:
    """Scores per horizon and method. `paired[h][m]` is trackd's own MAE on just the shipments
    where baseline `m` had an answer, so a baseline that only sometimes answers is compared fairly."""

    horizons: dict[str, dict[str, Score]]
    shipments: int
    paired: dict[str, dict[str, float | None]] = field(default_factory=dict)


def _location(d: object, where: str) -> Location | None:
    if d is None:
        return None
    if not isinstance(d, Mapping):
        raise ValidationError(where, "must be an object")
    return Location(
        name=d.get("name"),
        unlocode=d.get("unlocode"),
        iata=d.get("iata"),
        country=d.get("country"),
        lat=optional_number(d.get("lat"), f"{where}.lat"),
        lon=optional_number(d.get("lon"), f"{where}.lon"),
    )


def parse_shipment(body: Mapping[str, Any]) -> tuple[Shipment, frozenset[str]]:
    """A shipment and its device ids from a POST /v1/shipments body carrying an `id`."""
    legs = []
    for i, leg in enumerate(body.get("legs") or ()):
        origin = _location(leg.get("origin"), f"legs[{i}].origin")
        dest = _location(leg.get("destination"), f"legs[{i}].destination")
        if origin is None or dest is None:
            raise ValidationError(f"legs[{i}]", "needs an origin and a destination")
        legs.append(Leg(Mode(leg["mode"]), origin, dest))

    def when(name: str) -> datetime | None:
        return parse_time(body[name], name) if body.get(name) is not None else None

    rng = body.get("temperature_range_c")
    shipment = Shipment(
        id=str(body["id"]),
        tracking_number=str(body.get("tracking_number") or body["id"]),
        carrier=body.get("carrier"),
        references=tuple(body.get("references") or ()),
        mode=Mode(body["mode"]) if body.get("mode") else (legs[0].mode if legs else None),
        legs=tuple(legs),
        promised_at=when("promised_at"),
        weight_kg=optional_number(body.get("weight_kg"), "weight_kg"),
        temperature_range_c=(number(rng[0], "t"), number(rng[1], "t")) if rng else None,
        created_at=when("created_at"),
    )
    return shipment, frozenset(str(d) for d in body.get("devices") or ())


def parse_event(d: Mapping[str, Any]) -> _Event | None:
    """The fields the replay needs from a trackd event; None for kinds it does not use."""
    occurred = parse_time(d.get("occurred_at"), "occurred_at")
    created = parse_time(d["created_at"], "created_at") if d.get("created_at") is not None else None
    keys = tuple(ref_key(str(d[k])) for k in ("shipment",) if d.get(k))
    device = str(d["device"]) if d.get("device") else None
    known = created or occurred
    if isinstance(d.get("position"), Mapping):
        p = d["position"]
        lat, lon = number(p.get("lat"), "position.lat"), number(p.get("lon"), "position.lon")
        fix = PositionFix(lat, lon, occurred, optional_number(p.get("speed_kmh"), "position.speed_kmh"))
        return _Event(known, occurred, keys, device, fix=fix)
    if isinstance(d.get("milestone"), Mapping):
        m = d["milestone"]
        try:
            code = Milestone(m.get("code"))
            classifier = Classifier(m.get("classifier") or "actual")
        except ValueError:
            return None
        loc = _location(m.get("location"), "milestone.location")
        return _Event(known, occurred, keys, device, code, classifier, loc)
    if isinstance(d.get("sensor"), Mapping):
        return _Event(known, occurred, keys, device)
    raise ValidationError("event", "needs a position, milestone or sensor")


def _tracks(lines: Iterable[Mapping[str, Any]]) -> list[_Track]:
    tracks: list[_Track] = []
    events: list[_Event] = []
    for i, line in enumerate(lines):
        try:
            if "shipment" in line:
                shipment, devices = parse_shipment(line["shipment"])
                tracks.append(_Track(shipment, devices))
            elif "event" in line:
                items = line["event"] if isinstance(line["event"], list) else [line["event"]]
                events.extend(e for e in (parse_event(item) for item in items) if e is not None)
            else:
                raise ValidationError("line", 'needs "shipment" or "event"')
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            detail = exc.detail if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
            raise ValidationError(f"line {i + 1}", detail) from None
    by_key = {k: t for t in tracks for k in t.shipment.match_keys()}
    by_device = {dev: t for t in tracks for dev in t.devices}
    for ev in events:
        track = next((by_key[k] for k in ev.keys if k in by_key), None)
        if track is None and ev.device is not None:
            track = by_device.get(ev.device)
        if track is not None:
            track.events.append(ev)
    return tracks


def carrier_estimate(
    estimates: Iterable[tuple[datetime, datetime, Milestone, Location | None]], shipment: Shipment
) -> tuple[datetime, datetime] | None:
    """(estimated arrival, created_at) of the carrier's latest estimate, from rows of
    (created_at, estimated occurred_at, code, location) of estimated milestones: `delivered`
    anywhere, or `arrived`/`discharged`/`available_for_pickup` at the final destination."""
    legs = eta.resolved_legs(shipment)
    end = legs[-1][2] if legs else None
    best: tuple[datetime, datetime] | None = None
    for created, at, code, loc in estimates:
        if code is not Milestone.DELIVERED:
            if code not in (Milestone.ARRIVED, Milestone.DISCHARGED, Milestone.AVAILABLE_FOR_PICKUP):
                continue
            p = places.try_resolve(loc)
            if end is None or p is None or geo.haversine_km(p, end) > eta.NODE_RADIUS_KM:
                continue
        if best is None or created >= best[1]:
            best = (at, created)
    return best


def _journey(track: _Track, at: datetime) -> eta.Journey:
    known = [e for e in track.events if e.known_at <= at and (not e.actual or e.occurred_at <= at)]
    milestones = tuple((e.occurred_at, e.code, e.location) for e in known if e.code is not None and e.actual)
    fixes = sorted((e.fix for e in known if e.fix is not None), key=lambda f: f.at)
    estimates = [(e.known_at, e.occurred_at, e.code, e.location) for e in known if e.code and not e.actual]
    carrier = carrier_estimate(estimates, track.shipment)
    return eta.Journey(
        track.shipment,
        milestones,
        fixes[-1] if fixes else None,
        carrier[0] if carrier else None,
        carrier[1] if carrier else None,
        recent_positions=tuple(fixes[-RECENT_FIXES:]),
    )


def naive(journey: eta.Journey, now: datetime) -> datetime | None:
    """now + remaining great-circle km to the destination / nominal speed of the main mode."""
    legs = eta.resolved_legs(journey.shipment)
    mode = journey.shipment.main_mode
    if legs is None or mode is None:
        return None
    here: geo.LatLon | None = None
    if journey.position is not None:
        here = (journey.position.lat, journey.position.lon)
    for _, _, loc in reversed(journey.milestones):
        if here is not None:
            break
        here = places.try_resolve(loc)
    here = here or legs[0][1]
    return now + timedelta(hours=geo.haversine_km(here, legs[-1][2]) / eta.SPEED_KMH[mode])


def score(rows: list[tuple[datetime, datetime | None, datetime | None, datetime]]) -> Score:
    """MAE (hours) and coverage of (predicted, earliest, latest, actual) rows; coverage is null
    when a row has no interval."""
    if not rows:
        return Score(None, None, 0)
    mae = sum(abs(eta.hours(p - actual)) for p, _, _, actual in rows) / len(rows)
    if any(lo is None or hi is None for _, lo, hi, _ in rows):
        return Score(mae, None, len(rows))
    inside = sum(1 for _, lo, hi, actual in rows if lo is not None and hi is not None and lo <= actual <= hi)
    return Score(mae, inside / len(rows), len(rows))


def evaluate(lines: Iterable[Mapping[str, Any]]) -> Report:
    """Replay `lines` and score every method at every horizon."""
    done: list[tuple[_Track, datetime, datetime, datetime]] = []  # track, start, delivered, known
    for track in _tracks(lines):
        delivered = [e for e in track.events if e.code is Milestone.DELIVERED and e.actual]
        if not delivered:
            continue
        first = min(delivered, key=lambda e: e.occurred_at)
        start = min(e.occurred_at for e in track.events if e.actual)
        if first.occurred_at > start:
            done.append((track, start, first.occurred_at, max(first.known_at, first.occurred_at)))
    # (instant, 0 = predict / 1 = learn: predictions go first at the same instant, track, horizon)
    agenda: list[tuple[datetime, int, int, int]] = []
    for i, (_, start, end, known) in enumerate(done):
        for h in HORIZONS:
            agenda.append((start + (end - start) * (h / 100), 0, i, h))
        agenda.append((known, 1, i, 0))
    agenda.sort()
    rows: dict[int, dict[str, dict[int, tuple[datetime, datetime | None, datetime | None, datetime]]]] = {
        h: {m: {} for m in METHODS} for h in HORIZONS
    }
    stats = eta.LaneStats.empty()
    for at, action, i, h in agenda:
        track, start, end, _ = done[i]
        if action == 1:
            milestones = _journey(track, end).milestones
            completed = eta.CompletedJourney(track.shipment, start, end, milestones, tuple(track.forecasts))
            stats = eta.learn(stats, completed)
            continue
        journey = _journey(track, at)
        predicted = eta.predict(journey, stats, at)
        if predicted is not None:
            track.forecasts.append(eta.Forecast(at, predicted.predicted_at))
            rows[h]["trackd"][i] = (predicted.predicted_at, predicted.earliest, predicted.latest, end)
        if track.shipment.promised_at is not None:
            rows[h]["promised"][i] = (track.shipment.promised_at, None, None, end)
        if journey.carrier_eta is not None:
            rows[h]["carrier"][i] = (journey.carrier_eta, None, None, end)
        guess = naive(journey, at)
        if guess is not None:
            rows[h]["naive"][i] = (guess, None, None, end)
    horizons = {str(h): {m: score(list(rows[h][m].values())) for m in METHODS} for h in HORIZONS}
    paired = {
        str(h): {
            m: score([r for i, r in rows[h]["trackd"].items() if i in rows[h][m]]).mae_h
            for m in METHODS
            if m != "trackd"
        }
        for h in HORIZONS
    }
    return Report(horizons, len(done), paired)


def to_json(report: Report) -> dict[str, Any]:
    def one(h: str, m: str, s: Score) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mae_h": None if s.mae_h is None else round(s.mae_h, 3),
            "coverage": None if s.coverage is None else round(s.coverage, 4),
            "n": s.n,
        }
        if m in report.paired.get(h, {}):
            same = report.paired[h][m]
            out["trackd_mae_h_same_shipments"] = None if same is None else round(same, 3)
        return out

    return {"horizons": {h: {m: one(h, m, s) for m, s in by.items()} for h, by in report.horizons.items()}}


def format_table(report: Report) -> str:
    out = [
        f"{report.shipments} completed shipments; MAE in hours, coverage of the stated 80 % interval;",
        "'trackd same n': trackd's MAE on just the shipments where that baseline had an answer",
        f"{'horizon':>7}  {'method':<9}{'n':>6}{'MAE (h)':>10}{'coverage':>10}{'trackd same n':>15}",
    ]
    for h, by in report.horizons.items():
        for m, s in by.items():
            mae = "-" if s.mae_h is None else f"{s.mae_h:.2f}"
            cov = "-" if s.coverage is None else f"{100 * s.coverage:.1f}%"
            same = report.paired.get(h, {}).get(m)
            paired = "" if m == "trackd" else ("-" if same is None else f"{same:.2f}")
            out.append(f"{h + '%':>7}  {m:<9}{s.n:>6}{mae:>10}{cov:>10}{paired:>15}")
    return "\n".join(out)
