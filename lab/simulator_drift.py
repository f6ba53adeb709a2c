"""What real years do to the simulator's world: closures, rule changes, congestion, carrier habits.

`Drift(seed, start)` draws one year of disruptions from the seed and `apply(scenarios)` bends each
scenario's timeline through them; everything booked before, after or around them is untouched.

- Canal closure: for four to five months, sea legs between Asia and Europe sail round the Cape,
  9-13 days longer. Positions keep the planned sea-lane path and are spread over the longer
  sailing, so a vessel seems to make slow progress along it.
- Rail corridor closure: for two to four weeks the Los Angeles - Chicago intermodal line is shut;
  trains on it wait where they are until it reopens, then clear a backlog of up to two days.
- Border closure: for three to seven days the Laredo bridge is closed; trucks reaching it wait.
- Customs rule change: from a date in spring, import clearance takes 12-36 h longer (a de minimis
  change: every import is now declared in full).
- Port congestion: each destination port switches between regimes every 3-8 weeks (none half of
  the time, else 1, 2 or 4 days waiting for a berth between arrival and discharge).
- Carrier habits: every carrier's estimates run early or late by its own share of the time to go
  (-12 % to +8 %), and they learn of a delay only once it has begun.

The timeline is bent by stretches `(start, end, extra_h)` on the original clock: an event at `t`
moves by the part of each stretch before it. Waits at one point add a stationary fix every six
hours. Pure and deterministic: no I/O, no clock reads.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from lab.simulator_track import PlannedEvent
from trackd.codes import Classifier, EventKind, Milestone, Mode

if TYPE_CHECKING:
    from lab.simulator import Scenario

M = Milestone
CANAL_PORTS = frozenset({"CNYTN", "CNNGB", "KRPUS", "VNSGN"})  # Asian origins of sea legs
EUROPE_PORTS = frozenset({"NLRTM", "DEHAM", "GBFXT"})
RAIL_CORRIDOR = ("USLAX", "USCHI")
BORDER = "USLRD"
CONGESTED_PORTS = ("NLRTM", "DEHAM", "GBFXT", "USLAX")
CONGESTION_LEVELS_H = (0.0, 0.0, 0.0, 24.0, 48.0, 96.0)
HOLD_FIX_EVERY = timedelta(hours=6)


def _h(x: float) -> timedelta:
    return timedelta(hours=x)


@dataclass(frozen=True, slots=True)
class Stretch:
    """`extra_h` hours spread over `start`..`end` of the original clock (a wait when equal)."""

    start: datetime
    end: datetime
    extra_h: float

    def shift_h(self, t: datetime) -> float:
        if t <= self.start:
            return 0.0
        if t >= self.end:
            return self.extra_h
        return self.extra_h * (t - self.start) / (self.end - self.start)


def _code(place: object) -> str | None:
    return getattr(place, "unlocode", None) or getattr(place, "iata", None)


class Drift:
    """One year of disruptions, drawn from `seed`, starting at `start`."""

    def __init__(self, seed: int, start: datetime) -> None:
        rng = random.Random(f"drift:{seed}")

        def window(first_day: tuple[float, float], days: tuple[float, float]) -> tuple[datetime, datetime]:
            at = start + timedelta(days=rng.uniform(*first_day))
            return at, at + timedelta(days=rng.uniform(*days))

        self.canal = window((50, 90), (120, 150))
        self.rail = window((150, 220), (14, 28))
        self.border = window((100, 300), (3, 7))
        self.customs_from = start + timedelta(days=rng.uniform(110, 170))
        self.congestion: dict[str, list[tuple[datetime, float]]] = {}
        for port in CONGESTED_PORTS:
            at, regimes = start - timedelta(days=30), []
            while at < start + timedelta(days=500):
                regimes.append((at, rng.choice(CONGESTION_LEVELS_H)))
                at += timedelta(days=rng.uniform(21, 56))
            self.congestion[port] = regimes
        self.seed = seed
        self._habits: dict[str, float] = {}

    def habit(self, carrier: str) -> float:
        """The carrier's own estimate error, as a share of the time to go (negative: early)."""
        if carrier not in self._habits:
            self._habits[carrier] = random.Random(f"habit:{self.seed}:{carrier}").uniform(-0.12, 0.08)
        return self._habits[carrier]

    def congestion_h(self, port: str, at: datetime) -> float:
        level = 0.0
        for since, h in self.congestion.get(port, ()):
            if since > at:
                break
            level = h
        return level

    def stretches(self, s: Scenario) -> list[Stretch]:
        """Where and by how much this scenario's timeline is bent."""
        rng = random.Random(f"drift:{self.seed}:{s.shipment_id}")
        actual = [e for e in s.events if e.kind is EventKind.MILESTONE and e.classifier is Classifier.ACTUAL]

        def first(code: Milestone, leg: int) -> datetime | None:
            return next((e.occurred_at for e in actual if e.milestone is code and e.leg == leg), None)

        out: list[Stretch] = []
        for i, run in enumerate(s.legs):
            plan = run.plan
            departed, arrived = first(M.DEPARTED, i), first(M.ARRIVED, i)
            if departed is None or arrived is None:
                continue
            frm, to = plan.origin, plan.destination
            if plan.mode is Mode.SEA:
                closed = self.canal[0] <= departed < self.canal[1]
                if closed and frm in CANAL_PORTS and to in EUROPE_PORTS:
                    out.append(Stretch(departed, arrived, rng.uniform(216, 312)))
                discharged = first(M.DISCHARGED, i)
                wait = self.congestion_h(to, arrived) * rng.uniform(0.6, 1.4)
                if discharged is not None and wait > 0:
                    out.append(Stretch(arrived, discharged, wait))
            elif plan.mode is Mode.RAIL and (frm, to) == RAIL_CORRIDOR:
                shut, reopen = self.rail
                if departed < reopen and arrived > shut:
                    at = max(departed, shut)
                    out.append(Stretch(at, at, (reopen - at).total_seconds() / 3600 + rng.uniform(0, 48)))
            elif plan.mode is Mode.ROAD and to == BORDER:
                shut, reopen = self.border
                if shut <= arrived < reopen:
                    out.append(
                        Stretch(arrived, arrived, (reopen - arrived).total_seconds() / 3600 + rng.uniform(2, 12))
                    )
        released = next((e for e in actual if e.milestone is M.CUSTOMS_RELEASED), None)
        if released is not None and released.occurred_at >= self.customs_from:
            before = [
                e.occurred_at for e in actual if e.milestone is M.ARRIVED and e.occurred_at <= released.occurred_at
            ]
            began = max(before) if before else released.occurred_at - _h(1)
            out.append(Stretch(began, released.occurred_at, rng.uniform(12, 36)))
        return out

    def bend(self, s: Scenario) -> Scenario:
        """The scenario as it runs through this year's disruptions."""
        stretches = self.stretches(s)

        def warp(t: datetime, known_by: datetime | None = None) -> datetime:
            extra = sum(x.shift_h(t) for x in stretches if known_by is None or x.start <= known_by)
            return t + _h(extra)

        events: list[PlannedEvent] = []
        last_fix: PlannedEvent | None = None
        holds = sorted((x for x in stretches if x.start == x.end), key=lambda x: x.start)
        for ev in s.events:
            while holds and ev.occurred_at > holds[0].start and ev.classifier is Classifier.ACTUAL:
                hold = holds.pop(0)
                if last_fix is not None:
                    events += _stationary(last_fix, warp(hold.start), hold.extra_h, len(s.events) + len(events))
            lag = ev.send_at - ev.occurred_at
            if ev.classifier is Classifier.ESTIMATED:
                made = warp(ev.send_at)
                carrier = s.legs[ev.leg or 0].carrier
                ahead_h = max((ev.occurred_at - ev.send_at).total_seconds() / 3600, 0.0)
                est = warp(ev.occurred_at, known_by=ev.send_at) + _h(self.habit(carrier) * ahead_h)
                events.append(replace(ev, send_at=made, occurred_at=max(est, made + timedelta(minutes=30))))
                continue
            at = warp(ev.occurred_at)
            bent = ev if at == ev.occurred_at else replace(ev, occurred_at=at, send_at=at + lag)
            if ev.kind is EventKind.POSITION:
                last_fix = bent
            events.append(bent)
        events.sort(key=lambda e: e.send_at)
        return replace(s, events=tuple(events))

    def apply(self, scenarios: Iterator[Scenario]) -> Iterator[Scenario]:
        for s in scenarios:
            yield self.bend(s)


def _stationary(fix: PlannedEvent, since: datetime, hours: float, seq: int) -> list[PlannedEvent]:
    """A fix every six hours at `fix`'s place while a vehicle waits `hours` from `since`, numbered
    from `seq` on (after the scenario's own events, so event ids stay unique)."""
    out: list[PlannedEvent] = []
    at = since + HOLD_FIX_EVERY
    while at < since + _h(hours):
        out.append(replace(fix, occurred_at=at, send_at=at, speed_kmh=0.0, seq=seq + len(out)))
        at += HOLD_FIX_EVERY
    return out
