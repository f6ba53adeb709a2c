"""The planned events of one simulated shipment and the builder that lays them out in time.

A `PlannedEvent` is something that happens (a position fix, a carrier milestone, a carrier
estimate, a sensor reading) plus when and how it reaches trackd: `send_at`, the `transport`
(`mqtt` or `webhook`) and the `source` format. The builder keeps a continuous track of where the
tracker is (stays and moves) and renders position fixes from it at the configured cadence.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from lab.simulator_lanes import LatLon, Path, Place
from trackd.codes import Classifier, EventKind, Milestone, Mode

# Reporting lag of each carrier feed, in minutes (min, max): EDI batches, polling, mailboxes.
SOURCE_LAG_MIN: dict[str, tuple[float, float]] = {
    "dcsa": (5, 240),
    "x12-214": (5, 90),
    "onerecord": (1, 30),
    "aftership": (5, 120),
    "easypost": (2, 60),
    "native": (5, 45),
}


@dataclass(frozen=True, slots=True)
class Cadence:
    """Minutes between device reports: moving by mode, standing still, and sensor readings."""

    road: float = 15
    rail: float = 30
    sea: float = 120
    stay: float = 180
    reefer_sensor: float = 60
    battery: float = 360

    def moving(self, mode: Mode) -> float | None:
        """None for air: trackers sleep in flight."""
        return {Mode.ROAD: self.road, Mode.RAIL: self.rail, Mode.SEA: self.sea}.get(mode)


LIVE_CADENCE = Cadence()
HISTORY_CADENCE = Cadence(road=60, rail=120, sea=360, stay=720, reefer_sensor=180, battery=720)


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One thing the simulation will tell trackd, in the canonical vocabulary.

    For an estimate (`classifier` estimated), `occurred_at` is the estimated time and `send_at`
    when the estimate was made. `seq` orders the scenario's events and keys their ids.
    """

    send_at: datetime
    occurred_at: datetime
    kind: EventKind
    transport: str  # mqtt | webhook
    source: str  # native | owntracks | dcsa | x12-214 | onerecord | aftership | easypost
    seq: int = 0
    leg: int | None = None
    milestone: Milestone | None = None
    classifier: Classifier = Classifier.ACTUAL
    place: Place | None = None
    lat: float | None = None
    lon: float | None = None
    speed_kmh: float | None = None
    heading: float | None = None
    temperature_c: float | None = None
    battery_pct: float | None = None
    detail: str | None = None
    last_free_day: datetime | None = None  # an availability's last free day, which the forwarder enters


@dataclass(slots=True)
class Segment:
    """A stretch of the tracker's track: standing at `point` (`mode` None) or moving along `path`."""

    t0: datetime
    t1: datetime
    mode: Mode | None  # None: standing still
    point: LatLon
    path: Path | None = None
    km0: float = 0.0
    km1: float = 0.0


@dataclass(slots=True)
class Builder:
    """Collects the events of one scenario; `t`/`point` is where the tracker is now."""

    rng: random.Random
    cadence: Cadence
    device_source: str  # native | owntracks
    t: datetime
    point: LatLon
    events: list[PlannedEvent] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)

    def track(self) -> Track:
        return Track(tuple(self.segments))

    # -- where the tracker goes -------------------------------------------------------------
    def stay_until(self, until: datetime) -> None:
        if until > self.t:
            self.segments.append(Segment(self.t, until, None, self.point))
            self.t = until

    def move(self, mode: Mode, path: Path, km0: float, km1: float, hours: float) -> datetime:
        """Travel along `path` from `km0` to `km1` in `hours`; returns the arrival time."""
        end = self.t + timedelta(hours=max(hours, 0.05))
        self.segments.append(Segment(self.t, end, mode, self.point, path, km0, km1))
        lat, lon, _ = path.at(km1)
        self.t, self.point = end, (lat, lon)
        return end

    def drive(self, path: Path, speed_kmh: float, *, stint_h: float, rest_h: tuple[float, float]) -> None:
        """Road travel in driving stints separated by rests (hours-of-service rules)."""
        km, total = 0.0, path.length_km
        while km < total - 1e-6:
            step = min(total - km, speed_kmh * self.rng.uniform(0.8, 1.0) * stint_h)
            self.move(Mode.ROAD, path, km, km + step, step / (speed_kmh * self.rng.uniform(0.9, 1.1)))
            km += step
            if km < total - 1e-6:
                self.stay_until(self.t + timedelta(hours=self.rng.uniform(*rest_h)))

    # -- what is reported -------------------------------------------------------------------
    def milestone(
        self,
        at: datetime,
        code: Milestone,
        place: Place,
        leg: int,
        source: str,
        *,
        detail: str | None = None,
        last_free_day: datetime | None = None,
    ) -> None:
        lo, hi = SOURCE_LAG_MIN[source]
        lag = timedelta(minutes=self.rng.uniform(lo, hi))
        self.events.append(
            PlannedEvent(
                at + lag,
                at,
                EventKind.MILESTONE,
                "webhook",
                source,
                leg=leg,
                milestone=code,
                place=place,
                detail=detail,
                last_free_day=last_free_day,
            )
        )

    def estimate(
        self,
        made_at: datetime,
        actual: datetime,
        code: Milestone,
        place: Place,
        leg: int,
        source: str,
        *,
        unknown_delay_h: float = 0.0,
        bias: float = 0.0,
        detail: str | None = None,
    ) -> None:
        """A carrier estimate made at `made_at` of a milestone that will happen at `actual`.

        The estimate misses delays not yet known (`unknown_delay_h`) and errs in proportion to
        the time still to go, so it sharpens near arrival; `bias` < 0 is an optimistic carrier.
        """
        remaining_h = max((actual - made_at).total_seconds() / 3600, 0.0)
        error_h = self.rng.gauss(bias * remaining_h, 0.06 * remaining_h + 0.5)
        est = actual - timedelta(hours=unknown_delay_h - error_h)
        est = max(est, made_at + timedelta(minutes=30))
        self.events.append(
            PlannedEvent(
                made_at,
                est,
                EventKind.MILESTONE,
                "webhook",
                source,
                leg=leg,
                milestone=code,
                classifier=Classifier.ESTIMATED,
                place=place,
                detail=detail,
            )
        )

    # -- rendering --------------------------------------------------------------------------
    def render_positions(self) -> None:
        """Position fixes from the track: at the mode's cadence moving, sparse standing still."""
        jitter = 0.00025
        for seg in self.segments:
            every = self.cadence.stay if seg.mode is None else self.cadence.moving(seg.mode)
            if every is None:
                continue
            span_h = (seg.t1 - seg.t0).total_seconds() / 3600
            speed = 0.0 if seg.mode is None or span_h <= 0 else abs(seg.km1 - seg.km0) / span_h
            at = seg.t0 + timedelta(minutes=self.rng.uniform(0, every))
            while at < seg.t1:
                if seg.path is None:
                    lat, lon, heading, kmh = seg.point[0], seg.point[1], self.rng.uniform(0, 359), 0.0
                else:
                    f = (at - seg.t0).total_seconds() / 3600 / span_h
                    lat, lon, heading = seg.path.at(seg.km0 + (seg.km1 - seg.km0) * f)
                    kmh = max(speed * self.rng.gauss(1.0, 0.06), 0.0)
                self._fix(at, lat + self.rng.gauss(0, jitter), lon + self.rng.gauss(0, jitter), kmh, heading)
                at += timedelta(minutes=every * self.rng.uniform(0.9, 1.1))

    def _fix(self, at: datetime, lat: float, lon: float, kmh: float, heading: float) -> None:
        self.events.append(
            PlannedEvent(
                at + timedelta(seconds=self.rng.uniform(0, 60)),
                at,
                EventKind.POSITION,
                "mqtt",
                self.device_source,
                lat=max(-90.0, min(90.0, lat)),
                lon=((lon + 180.0) % 360.0) - 180.0,
                speed_kmh=round(kmh, 1),
                heading=round(heading % 360.0, 1),
            )
        )

    def render_sensors(
        self,
        start: datetime,
        end: datetime,
        temp_range: tuple[float, float] | None,
        excursion: tuple[datetime, datetime, float] | None,
    ) -> None:
        """Battery for every tracker; temperature for reefers, with an optional excursion.

        OwnTracks trackers report their battery inside location messages instead.
        """
        battery = self.rng.uniform(80, 100)
        drain = self.rng.uniform(0.02, 0.05)  # percent per hour
        every = self.cadence.reefer_sensor if temp_range else self.cadence.battery
        setpoint = None if temp_range is None else (temp_range[0] + temp_range[1]) / 2
        times = []
        at = start + timedelta(minutes=self.rng.uniform(0, every))
        while at < end:
            times.append(at)
            at += timedelta(minutes=every)
        if excursion is not None:  # the logger records the peak, whatever its reporting interval
            times.append(excursion[0] + (excursion[1] - excursion[0]) / 2)
        for at in sorted(times):
            level = max(battery - drain * (at - start).total_seconds() / 3600, 3.0)
            temp = None
            if temp_range is not None and setpoint is not None:
                temp = setpoint + self.rng.gauss(0, 0.25 * (temp_range[1] - temp_range[0]) / 4)
                if excursion is not None and excursion[0] <= at <= excursion[1]:
                    x0, x1, peak = excursion
                    ramp = min((at - x0).total_seconds(), (x1 - at).total_seconds()) / 3600
                    temp = max(temp, temp_range[1] + peak * min(1.0, ramp))
            if self.device_source == "native":
                self.events.append(
                    PlannedEvent(
                        at + timedelta(seconds=self.rng.uniform(0, 60)),
                        at,
                        EventKind.SENSOR,
                        "mqtt",
                        "native",
                        temperature_c=None if temp is None else round(temp, 2),
                        battery_pct=round(level, 1),
                    )
                )

    def finish(self) -> tuple[PlannedEvent, ...]:
        """Events in the order they are sent, numbered; OwnTracks fixes carry the battery.

        Carriers report milestones to the minute, devices to the second.
        """
        ordered = sorted(enumerate(self.events), key=lambda p: (p[1].send_at, p[0]))
        out = []
        for seq, (_, ev) in enumerate(ordered):
            unit = "minute" if ev.kind is EventKind.MILESTONE else "second"
            battery = ev.battery_pct
            if ev.source == "owntracks" and battery is None:
                battery = self._battery_at(ev.occurred_at)
            out.append(
                replace(
                    ev,
                    seq=seq,
                    occurred_at=_truncate(ev.occurred_at, unit),
                    send_at=_truncate(ev.send_at, "second"),
                    battery_pct=battery,
                )
            )
        return tuple(out)

    def _battery_at(self, at: datetime) -> float:
        return battery_at(self.segments[0].t0 if self.segments else at, at)


def battery_at(start: datetime, at: datetime) -> float:
    """The battery an OwnTracks phone reports `at`, charged full at `start`."""
    hours = (at - start).total_seconds() / 3600
    return round(max(98.0 - 0.035 * hours - 2 * math.sin(hours / 24), 3.0), 0)


@dataclass(frozen=True, slots=True)
class Fix:
    """Where the tracker is at one instant of its track."""

    lat: float
    lon: float
    speed_kmh: float
    heading: float
    moving: bool


@dataclass(frozen=True, slots=True)
class Track:
    """The whole track of one tracker, to read its position at any instant (for live reports)."""

    segments: tuple[Segment, ...]

    def at(self, t: datetime) -> Fix | None:
        """The fix at `t`; None before the track, after it and in the air (trackers sleep in flight)."""
        i = bisect.bisect_right(self.segments, t, key=lambda seg: seg.t0) - 1
        if i < 0 or t >= self.segments[-1].t1:
            return None
        seg = self.segments[i]
        if seg.mode is Mode.AIR:
            return None
        if seg.path is None or seg.mode is None:
            return Fix(seg.point[0], seg.point[1], 0.0, 0.0, moving=False)
        span_h = (seg.t1 - seg.t0).total_seconds() / 3600
        f = (t - seg.t0).total_seconds() / 3600 / span_h if span_h > 0 else 1.0
        lat, lon, heading = seg.path.at(seg.km0 + (seg.km1 - seg.km0) * f)
        kmh = abs(seg.km1 - seg.km0) / span_h if span_h > 0 else 0.0
        return Fix(lat, ((lon + 180.0) % 360.0) - 180.0, round(kmh, 1), round(heading % 360.0, 1), moving=True)


def _truncate(t: datetime, unit: str) -> datetime:
    return t.replace(second=0, microsecond=0) if unit == "minute" else t.replace(microsecond=0)
