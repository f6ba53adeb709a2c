"""How each kind of leg unfolds in time: ocean, air, trucking (X12), rail and parcel delivery.

Every function advances the journey's builder through one leg, reporting milestones through the
leg's carrier feed, customs through the broker's native feed, and carrier estimates whose error
shrinks as the milestone nears. Durations follow published norms: vessels at 30-40 km/h with
2-5 days of port dwell, trucks at 60-80 km/h in hours-of-service stints, intermodal trains at
45-60 km/h with yard stops, 800-880 km/h flights with airport handling on both ends.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from lab.simulator_lanes import LegPlan, Path, Place, leg_path
from lab.simulator_track import Builder
from trackd.codes import Milestone, Mode

M = Milestone
RELEASE_SHARE = 0.3  # the share of sea legs whose carrier reports the container's release at the terminal
FREE_DAYS = (3, 6)  # free time at the terminal after the container becomes available, in days


def hours(x: float) -> timedelta:
    return timedelta(hours=x)


@dataclass(slots=True)
class Journey:
    """The state shared by the legs of one shipment."""

    b: Builder
    rng: random.Random
    legs: tuple[LegPlan, ...]
    start: datetime
    customs_hold: bool
    failed_attempts: int  # 0, 1, or 2 (a parcel that fails twice goes back to the sender)
    bias: float  # carrier estimate bias: negative is optimistic
    flags: set[str] = field(default_factory=set)
    outcome: Milestone = Milestone.DELIVERED
    end: datetime | None = None
    attempt: tuple[datetime, float] | None = None  # a failed appointment and the delay it caused

    def u(self, lo: float, hi: float) -> float:
        return self.rng.uniform(lo, hi)


def next_local(t: datetime, tz: str, rng: random.Random, start_h: float, end_h: float) -> datetime:
    """A random time between `start_h` and `end_h` local time on the next working day after `t`."""
    zone = ZoneInfo(tz)
    local = t.astimezone(zone)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    for _ in range(8):
        at = day + hours(rng.uniform(start_h, end_h))
        if at > local + hours(0.5) and at.weekday() != 6:
            return at.astimezone(t.tzinfo)
        day = (day + timedelta(days=1, hours=3)).replace(hour=0)
    return t + timedelta(days=1)


def customs(
    j: Journey,
    leg: int,
    place: Place,
    arrived: datetime,
    *,
    submit_h: tuple[float, float],
    clear_h: tuple[float, float],
) -> datetime:
    """Import customs at `place` through the broker's feed; returns the release time."""
    b = j.b
    submitted = max(arrived - hours(j.u(*submit_h)), j.start + hours(1))
    b.milestone(submitted, M.CUSTOMS_SUBMITTED, place, leg, "native")
    if j.customs_hold:
        held = arrived + hours(j.u(1, 8))
        b.milestone(held, M.CUSTOMS_HOLD, place, leg, "native", detail="documentary check and inspection")
        release = held + hours(j.u(24, 72))
        j.flags.add("customs_hold")
    else:
        release = arrived + hours(j.u(*clear_h))
    b.milestone(release, M.CUSTOMS_RELEASED, place, leg, "native")
    return release


def terminal_release(j: Journey, i: int, place: Place, ready: datetime) -> datetime:
    """The carrier's release of a discharged container: a customs examination hold at the terminal
    and its release, then available for pickup with a last free day; returns the availability."""
    b, src = j.b, j.legs[i].source
    held = ready + hours(j.u(1, 6))
    b.milestone(held, M.CUSTOMS_HOLD, place, i, src, detail="customs examination at the terminal")
    cleared = held + hours(j.u(12, 48))
    b.milestone(cleared, M.CUSTOMS_RELEASED, place, i, src, detail="customs examination cleared")
    available = cleared + hours(j.u(0.5, 4))
    zone = ZoneInfo(place.tz)
    last_day = available.astimezone(zone).replace(hour=23, minute=59, second=0, microsecond=0)
    last_day += timedelta(days=j.rng.randint(*FREE_DAYS))
    b.milestone(available, M.AVAILABLE_FOR_PICKUP, place, i, src, last_free_day=last_day.astimezone(available.tzinfo))
    j.flags.add("release")
    return available


def sea(j: Journey, i: int) -> None:
    leg, b = j.legs[i], j.b
    o, d, src = leg.from_place, leg.to_place, leg.source
    path = leg_path(leg.mode, leg.origin, leg.destination)
    length = path.length_km
    if i == 0:
        b.milestone(j.start, M.BOOKED, o, i, src)
    made = [b.t]
    gate_in = b.t + hours(j.u(36, 96))
    b.stay_until(gate_in)
    b.milestone(gate_in, M.GATE_IN, o, i, src)
    loaded = gate_in + hours(j.u(48, 120))  # port dwell: 2-5 days
    b.stay_until(loaded)
    b.milestone(loaded, M.LOADED, o, i, src)
    departed = loaded + hours(j.u(3, 14))
    b.stay_until(departed)
    b.milestone(departed, M.DEPARTED, o, i, src)
    made.append(departed)

    speed = j.u(30, 40)
    stops = [(j.u(0.15, 0.85) * length, "call", j.u(10, 30)) for _ in range(j.rng.randint(0, 2))]
    weather_at: datetime | None = None
    weather_h = 0.0
    if j.rng.random() < 0.08:
        weather_h = j.u(24, 96)
        stops.append((j.u(0.2, 0.8) * length, "weather", weather_h))
        j.flags.add("weather")
    km = 0.0
    for at_km, kind, extra in sorted(stops):
        at_km = max(at_km, km)
        b.move(Mode.SEA, path, km, at_km, (at_km - km) / speed)
        if kind == "call":
            b.stay_until(b.t + hours(extra))
            km = at_km
        else:  # heavy weather: the vessel slows down over a stretch of the route
            weather_at = b.t
            stretch = min(0.05 * length, length - at_km)
            b.move(Mode.SEA, path, at_km, at_km + stretch, stretch / speed + extra)
            km = at_km + stretch
    arrived = b.move(Mode.SEA, path, km, length, (length - km) / speed)
    b.milestone(arrived, M.ARRIVED, d, i, src)

    t = departed + hours(j.u(72, 120))
    while t < arrived - hours(36):
        made.append(t)
        t += hours(j.u(72, 120))
    made.append(arrived - hours(j.u(20, 30)))
    for when in made:
        known = weather_at is not None and when >= weather_at
        b.estimate(
            when,
            arrived,
            M.ARRIVED,
            d,
            i,
            src,
            bias=j.bias,
            unknown_delay_h=0.0 if known or weather_at is None else weather_h,
            detail="weather" if known else None,
        )

    discharged = arrived + hours(j.u(8, 36))
    b.stay_until(discharged)
    b.milestone(discharged, M.DISCHARGED, d, i, src)
    release = discharged
    if i == 0:
        release = customs(j, i, d, arrived, submit_h=(2, 12), clear_h=(1, 12))
    if j.rng.random() < RELEASE_SHARE:
        release = terminal_release(j, i, d, max(discharged, release))
    gate_out = max(discharged, release) + hours(j.u(12, 72))
    b.stay_until(gate_out)
    b.milestone(gate_out, M.GATE_OUT, d, i, src)


def air(j: Journey, i: int) -> None:
    leg, b = j.legs[i], j.b
    o, d, src = leg.from_place, leg.to_place, leg.source
    path = leg_path(leg.mode, leg.origin, leg.destination)
    if i == 0:
        b.milestone(j.start, M.BOOKED, o, i, src)
    booked = b.t
    received = b.t + hours(j.u(6, 30))
    b.stay_until(received)
    b.milestone(received, M.PICKED_UP, o, i, src)
    departed = received + hours(j.u(8, 30))  # build-up and airport handling
    offload_h = 0.0
    if j.rng.random() < 0.06:  # offloaded, rebooked on the next flight
        offload_h = j.u(12, 26)
        departed += hours(offload_h)
        j.flags.add("offloaded")
    b.stay_until(departed)
    b.milestone(departed, M.DEPARTED, o, i, src)
    arrived = b.move(Mode.AIR, path, 0.0, path.length_km, path.length_km / j.u(800, 880) + j.u(0.3, 0.8))
    b.milestone(arrived, M.ARRIVED, d, i, src)
    for when in (booked, received, departed):
        b.estimate(
            when,
            arrived,
            M.ARRIVED,
            d,
            i,
            src,
            bias=j.bias / 4,
            unknown_delay_h=offload_h if when < departed - hours(offload_h) else 0.0,
        )
    unloaded = arrived + hours(j.u(2, 6))
    b.stay_until(unloaded)
    b.milestone(unloaded, M.DISCHARGED, d, i, src)
    release = unloaded
    if i == 0:
        release = customs(j, i, d, arrived, submit_h=(1, 4), clear_h=(2, 10))
    b.stay_until(max(unloaded, release) + hours(j.u(1, 6)))


def _deliver_freight(j: Journey, i: int, arrived: datetime, unload_h: tuple[float, float]) -> None:
    """The end of a freight leg at the consignee, with at most one failed appointment."""
    leg, b = j.legs[i], j.b
    d, src = leg.to_place, leg.source
    if j.failed_attempts:
        attempt = arrived + hours(j.u(0.5, 2))
        b.stay_until(attempt)
        b.milestone(attempt, M.DELIVERY_ATTEMPTED, d, i, src, detail="consignee closed")
        j.flags.add("failed_attempt")
        done = next_local(attempt, d.tz, j.rng, 8, 14)
        j.attempt = (attempt, (done - attempt).total_seconds() / 3600)
    else:
        done = arrived + hours(j.u(*unload_h))
    b.stay_until(done)
    b.milestone(done, M.DELIVERED, d, i, src)
    j.end = done


def _freight_estimates(j: Journey, i: int, first: datetime, every_h: float, until: datetime) -> None:
    """Estimated delivery (X12 AG) from departure, every `every_h` hours until arrival."""
    leg, end = j.legs[i], j.end
    assert end is not None
    when = first
    while when < until:
        unknown = j.attempt[1] if j.attempt is not None and when < j.attempt[0] else 0.0
        j.b.estimate(when, end, M.DELIVERED, leg.to_place, i, leg.source, bias=j.bias, unknown_delay_h=unknown)
        when += hours(every_h)


def truck(j: Journey, i: int) -> None:
    leg, b = j.legs[i], j.b
    o, d, src = leg.from_place, leg.to_place, leg.source
    final = i == len(j.legs) - 1
    pickup = b.t + hours(j.u(12, 48) if i == 0 else j.u(1, 8))
    b.stay_until(pickup)
    b.milestone(pickup, M.PICKED_UP, o, i, src)
    departed = pickup + hours(j.u(1, 3))
    b.stay_until(departed)
    b.milestone(departed, M.DEPARTED, o, i, src)
    b.drive(leg_path(leg.mode, leg.origin, leg.destination), j.u(60, 80), stint_h=10.5, rest_h=(9.5, 11))
    if not final and d.unlocode == "USLRD":  # queue at the border bridge
        b.stay_until(b.t + hours(j.u(1, 6)))
    arrived = b.t
    b.milestone(arrived, M.ARRIVED, d, i, src)
    if final:
        _deliver_freight(j, i, arrived, (1, 3))
        _freight_estimates(j, i, departed, 12, arrived)
    elif i == 0:
        release = customs(j, i, d, arrived, submit_h=(0.5, 2), clear_h=(0.5, 4))
        b.stay_until(release)


def rail(j: Journey, i: int) -> None:
    leg, b = j.legs[i], j.b
    o, d, src = leg.from_place, leg.to_place, leg.source
    path = leg_path(leg.mode, leg.origin, leg.destination)
    ramp = b.t + hours(j.u(4, 24))
    b.stay_until(ramp)
    b.milestone(ramp, M.PICKED_UP, o, i, src)
    departed = ramp + hours(j.u(12, 36))
    b.stay_until(departed)
    b.milestone(departed, M.DEPARTED, o, i, src)
    speed, km = j.u(45, 60), 0.0
    for at_km in sorted(j.u(0.1, 0.9) * path.length_km for _ in range(j.rng.randint(3, 5))):
        b.move(Mode.RAIL, path, km, at_km, (at_km - km) / speed)
        b.stay_until(b.t + hours(j.u(0.5, 4)))  # crew change, yard work
        km = at_km
    arrived = b.move(Mode.RAIL, path, km, path.length_km, (path.length_km - km) / speed)
    b.milestone(arrived, M.ARRIVED, d, i, src)
    _deliver_freight(j, i, arrived, (12, 48))
    _freight_estimates(j, i, departed, 24, arrived)


def parcel(j: Journey, i: int) -> None:
    """Final delivery by a parcel or groupage carrier: hub, out for delivery, attempts."""
    leg, b = j.legs[i], j.b
    o, d, src = leg.from_place, leg.to_place, leg.source
    pickup = b.t + hours(j.u(1, 10))
    b.stay_until(pickup)
    b.milestone(pickup, M.PICKED_UP, o, i, src)
    departed = pickup + hours(j.u(0.5, 3))
    b.stay_until(departed)
    b.milestone(departed, M.DEPARTED, o, i, src)
    b.drive(leg_path(leg.mode, leg.origin, leg.destination), j.u(60, 80), stint_h=9, rest_h=(9, 11))
    hub = b.t
    b.milestone(hub, M.AT_FACILITY, d, i, src)
    made = [pickup, departed, hub]
    angle, dist = j.u(0, 2 * math.pi), j.u(3, 12)
    home = (
        d.lat + dist / 111.0 * math.cos(angle),
        d.lon + dist / 111.0 * math.sin(angle) / math.cos(math.radians(d.lat)),
    )
    out, back = Path((d.point, home)), Path((home, d.point))
    failures = j.failed_attempts
    attempts: list[datetime] = []
    while True:
        ofd = next_local(b.t, d.tz, j.rng, 7, 9.5)
        b.stay_until(ofd)
        b.milestone(ofd, M.OUT_FOR_DELIVERY, d, i, src)
        made.append(ofd)
        at = b.move(Mode.ROAD, out, 0.0, out.length_km, j.u(1, 7))
        if len(attempts) >= failures:
            b.milestone(at, M.DELIVERED, d, i, src)
            break
        attempts.append(at)
        b.milestone(at, M.DELIVERY_ATTEMPTED, d, i, src, detail="recipient not available")
        j.flags.add("failed_attempt")
        b.move(Mode.ROAD, back, 0.0, back.length_km, j.u(1, 4))
        if len(attempts) == 2:
            returned = b.t + hours(j.u(24, 72))
            b.stay_until(returned)
            b.milestone(returned, M.RETURNED, o, i, src, detail="returned to sender after two attempts")
            j.outcome = M.RETURNED
            break
    j.end = b.t
    final = attempts[-1] if j.outcome is M.RETURNED else b.t
    for when in made:
        pending = sum(1 for a in attempts if a > when)
        b.estimate(when, final, M.DELIVERED, d, i, src, bias=j.bias / 2, unknown_delay_h=24.0 * pending)


def run_leg(j: Journey, i: int) -> None:
    leg = j.legs[i]
    if leg.mode is Mode.SEA:
        sea(j, i)
    elif leg.mode is Mode.AIR:
        air(j, i)
    elif leg.mode is Mode.RAIL:
        rail(j, i)
    elif leg.source in ("aftership", "easypost"):
        parcel(j, i)
    else:
        truck(j, i)
