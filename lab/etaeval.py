"""`trackd eta-eval`: replay completed shipments as if live and score the ETA against baselines.

Input lines, in the order things became known, are `{"shipment": <POST /v1/shipments body with
an "id">}` or `{"event": <trackd event JSON>}`. A shipment's outcome is its actual `delivered`
milestone; shipments without one are ignored. Its journey runs from its first event to that
delivery; at 25/50/75/90 % of it each method predicts the delivery from what was known then
(events whose `created_at`, else `occurred_at`, is not later) and, for trackd, from history
learned only from shipments whose delivery was known strictly before that instant.

Methods: `trackd` (`trackd.eta.predict`, with its 80 % interval and `p_late`), `promised` (the
shipment's `promised_at`), `carrier` (the carrier's latest estimate known then, else the promised
date: what a user has without trackd; its own estimates alone are scored apart) and `naive`
(remaining great-circle distance to the destination / the nominal speed of the main mode). The
baselines state no interval and no `p_late`, so their `coverage` and `brier` are null rather than
a misleading 0. A method that has nothing to say for a shipment at a horizon (no promise) is left
out of that horizon's `n`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from trackd import eta, geo, places
from trackd.codes import Classifier, Milestone, Mode
from trackd.errors import ValidationError
from trackd.model import Location, ref_key
from trackd.shipment import Eta, Leg, PositionFix, Shipment
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
    _usable: list[_Event] = field(default_factory=list)  # by the time each became usable
    _usable_at: list[datetime] = field(default_factory=list)

    def known(self, at: datetime) -> list[_Event]:
        """The events known at `at` (an actual one also has to have happened), oldest first."""
        if len(self._usable) != len(self.events):

            def usable_at(e: _Event) -> datetime:
                return max(e.known_at, e.occurred_at) if e.actual else e.known_at

            self._usable = sorted(self.events, key=usable_at)
            self._usable_at = [usable_at(e) for e in self._usable]
        return self._usable[: bisect.bisect_right(self._usable_at, at)]


@dataclass(frozen=True, slots=True)
class Score:
    mae_h: float | None
    coverage: float | None
    n: int
    bias_h: float | None = None
    hit_day: float | None = None
    brier: float | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """Scores per horizon and method. `paired[h][m]` is trackd's own MAE on just the shipments
    where baseline `m` had an answer, so a baseline that only sometimes answers is compared fairly."""

    horizons: dict[str, dict[str, Score]]
    shipments: int
    paired: dict[str, dict[str, float | None]] = field(default_factory=dict)
    late_share: float | None = None  # delivered after the promise, of those with one
    brier_constant: float | None = None  # the Brier score of always saying `late_share`
    revisions: float | None = None  # material changes per shipment over its scored predictions
    # per horizon: the carrier's own estimates where it gave one, and trackd's MAE on those shipments
    carrier_own: dict[str, tuple[Score, float | None]] = field(default_factory=dict)


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


def _time(value: object, name: str) -> datetime:
    """`parse_time`, with a fast path for the plain ISO 8601 UTC times a replay file is made of."""
    if isinstance(value, str) and value.endswith("Z") and len(value) <= 32:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return parse_time(value, name)


_REF_KEYS: dict[str, str] = {}


def _ref_key(identifier: str) -> str:
    key = _REF_KEYS.get(identifier)
    if key is None:
        if len(_REF_KEYS) > 100_000:
            _REF_KEYS.clear()
        key = _REF_KEYS[identifier] = ref_key(identifier)
    return key


def parse_event(d: Mapping[str, Any]) -> _Event | None:
    """The fields the replay needs from a trackd event; None for kinds it does not use."""
    occurred = _time(d.get("occurred_at"), "occurred_at")
    created = _time(d["created_at"], "created_at") if d.get("created_at") is not None else None
    keys = (_ref_key(str(d["shipment"])),) if d.get("shipment") else ()
    device = str(d["device"]) if d.get("device") else None
    known = created or occurred
    if isinstance(d.get("sensor"), Mapping):
        return _Event(known, occurred, keys, device)
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
    known = track.known(at)
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


@dataclass(frozen=True, slots=True)
class Row:
    """One method's answer for one shipment at one horizon, and what happened."""

    predicted: datetime
    actual: datetime
    earliest: datetime | None = None
    latest: datetime | None = None
    p_late: float | None = None
    late: bool | None = None  # delivered after the promise; None without one
    utc_offset: timedelta = timedelta(0)  # of the destination's time zone


def score(rows: list[Row]) -> Score:
    """MAE, bias (actual - predicted), share on the right local day and coverage (hours), and the
    Brier score of `p_late`; coverage and Brier are null when a row has no interval or no p_late."""
    if not rows:
        return Score(None, None, 0)
    errors = [eta.hours(r.actual - r.predicted) for r in rows]
    mae = sum(abs(e) for e in errors) / len(rows)
    bias = sum(errors) / len(rows)
    hit = sum(1 for r in rows if (r.predicted + r.utc_offset).date() == (r.actual + r.utc_offset).date()) / len(rows)
    coverage = None
    if all(r.earliest is not None and r.latest is not None for r in rows):
        coverage = sum(
            1 for r in rows if r.earliest is not None and r.latest is not None and r.earliest <= r.actual <= r.latest
        ) / len(rows)
    judged = [(r.p_late, r.late) for r in rows if r.late is not None]
    brier = None
    if judged and all(p is not None for p, _ in judged):
        brier = sum(((p or 0.0) - float(late)) ** 2 for p, late in judged) / len(judged)
    return Score(mae, coverage, len(rows), bias, hit, brier)


def utc_offset(shipment: Shipment) -> timedelta:
    """The destination's offset from UTC, from its longitude (15 degrees an hour)."""
    legs = eta.resolved_legs(shipment)
    if legs is None:
        return timedelta(0)
    return timedelta(hours=round(legs[-1][2][1] / 15.0))


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
    rows: dict[int, dict[str, dict[int, Row]]] = {h: {m: {} for m in METHODS} for h in HORIZONS}
    own: dict[int, dict[int, Row]] = {h: {} for h in HORIZONS}  # the carrier's own estimates alone
    revisions = [0] * len(done)
    last: list[Eta | None] = [None] * len(done)
    stats = eta.LaneStats.empty()
    for at, action, i, h in agenda:
        track, start, end, _ = done[i]
        if action == 1:
            milestones = _journey(track, end).milestones
            completed = eta.CompletedJourney(track.shipment, start, end, milestones, tuple(track.forecasts))
            stats = eta.learn(stats, completed)
            continue
        journey = _journey(track, at)
        promised = track.shipment.promised_at
        late = None if promised is None else end > promised
        offset = utc_offset(track.shipment)
        predicted = eta.predict(journey, stats, at)
        if predicted is not None:
            track.forecasts.append(eta.Forecast(at, predicted.predicted_at, journey.carrier_eta))
            rows[h]["trackd"][i] = Row(
                predicted.predicted_at, end, predicted.earliest, predicted.latest, predicted.p_late, late, offset
            )
            if last[i] is not None and eta.eta_changed(last[i], predicted):
                revisions[i] += 1
            last[i] = predicted
        if promised is not None:
            rows[h]["promised"][i] = Row(promised, end, late=late, utc_offset=offset)
        told = journey.carrier_eta or promised
        if told is not None:
            rows[h]["carrier"][i] = Row(told, end, late=late, utc_offset=offset)
        if journey.carrier_eta is not None:
            own[h][i] = Row(journey.carrier_eta, end, utc_offset=offset)
        guess = naive(journey, at)
        if guess is not None:
            rows[h]["naive"][i] = Row(guess, end, late=late, utc_offset=offset)
    horizons = {str(h): {m: score(list(rows[h][m].values())) for m in METHODS} for h in HORIZONS}
    paired = {
        str(h): {
            m: score([r for i, r in rows[h]["trackd"].items() if i in rows[h][m]]).mae_h
            for m in METHODS
            if m != "trackd"
        }
        for h in HORIZONS
    }
    carrier_own = {
        str(h): (score(list(own[h].values())), score([r for i, r in rows[h]["trackd"].items() if i in own[h]]).mae_h)
        for h in HORIZONS
    }
    outcomes = [end > t.shipment.promised_at for t, _, end, _ in done if t.shipment.promised_at is not None]
    share = sum(outcomes) / len(outcomes) if outcomes else None
    constant = None if share is None else sum((share - float(o)) ** 2 for o in outcomes) / len(outcomes)
    predicted_for = [r for r, p in zip(revisions, last, strict=True) if p is not None]
    per_shipment = sum(predicted_for) / len(predicted_for) if predicted_for else None
    return Report(horizons, len(done), paired, share, constant, per_shipment, carrier_own)


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def to_json(report: Report) -> dict[str, Any]:
    def one(h: str, m: str, s: Score) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mae_h": _round(s.mae_h, 3),
            "coverage": _round(s.coverage, 4),
            "n": s.n,
            "bias_h": _round(s.bias_h, 3),
            "hit_day": _round(s.hit_day, 4),
            "brier": _round(s.brier, 4),
        }
        if m in report.paired.get(h, {}):
            same = report.paired[h][m]
            out["trackd_mae_h_same_shipments"] = _round(same, 3)
        if m == "carrier" and h in report.carrier_own:
            alone, trackd_same = report.carrier_own[h]
            out["own_estimates"] = {
                "n": alone.n,
                "mae_h": _round(alone.mae_h, 3),
                "trackd_mae_h": _round(trackd_same, 3),
            }
        return out

    return {
        "shipments": report.shipments,
        "horizons": {h: {m: one(h, m, s) for m, s in by.items()} for h, by in report.horizons.items()},
        "late": {"share": _round(report.late_share, 4), "brier_constant": _round(report.brier_constant, 4)},
        "revisions": {"per_shipment": _round(report.revisions, 3)},
    }


def format_table(report: Report) -> str:
    def f(v: float | None, fmt: str, scale: float = 1.0) -> str:
        return "-" if v is None else format(v * scale, fmt)

    out = [
        f"{report.shipments} completed shipments; MAE and bias (actual - predicted) in hours, coverage of the",
        "stated 80 % interval, share delivered on the predicted local day, Brier score of p_late;",
        "'trackd same n': trackd's MAE on just the shipments where that baseline had an answer",
        f"{'horizon':>7}  {'method':<9}{'n':>6}{'MAE (h)':>10}{'bias (h)':>10}{'coverage':>10}{'hit day':>9}"
        f"{'Brier':>7}{'trackd same n':>15}",
    ]
    for h, by in report.horizons.items():
        for m, s in by.items():
            same = report.paired.get(h, {}).get(m)
            paired = "" if m == "trackd" else f(same, ".2f")
            cov = f(s.coverage, ".1f", 100) + ("%" if s.coverage is not None else "")
            hit = f(s.hit_day, ".1f", 100) + ("%" if s.hit_day is not None else "")
            out.append(
                f"{h + '%':>7}  {m:<9}{s.n:>6}{f(s.mae_h, '.2f'):>10}{f(s.bias_h, '.2f'):>10}"
                f"{cov:>10}{hit:>9}{f(s.brier, '.3f'):>7}{paired:>15}"
            )
    for h, (alone, trackd_same) in report.carrier_own.items():
        out.append(
            f"{h + '%':>7}  carrier's own estimates alone: n {alone.n}, MAE {f(alone.mae_h, '.2f')} h"
            f" (trackd on those shipments {f(trackd_same, '.2f')} h)"
        )
    out.append(
        f"late: {f(report.late_share, '.1f', 100)}% of shipments with a promise; Brier of that constant rate "
        f"{f(report.brier_constant, '.3f')}; revisions per shipment {f(report.revisions, '.2f')}"
    )
    return "\n".join(out)
