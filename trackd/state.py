"""A shipment's current state, and the pure step that folds new events into it.

`advance` returns the new state and the stream messages the change causes (without `seq`, which
the ledger allocates). Late events never move anything backwards: positions older than the last
one are stored but not shown as the current position; milestones go through `status.transition`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from trackd import messages as msg
from trackd import release as rel
from trackd.codes import Classifier, EventKind, Milestone, Status
from trackd.messages import Message
from trackd.model import Event
from trackd.shipment import PositionFix, StatusState
from trackd.status import replay

CARRIER_ETA_CODES = frozenset({Milestone.DELIVERED, Milestone.ARRIVED})


@dataclass(frozen=True, slots=True)
class State:
    status: StatusState = field(default_factory=StatusState)
    last: PositionFix | None = None
    last_event_at: datetime | None = None
    last_sensor: dict[str, Any] | None = None
    carrier_eta: datetime | None = None
    carrier_eta_created_at: datetime | None = None
    delivered_at: datetime | None = None
    started_at: datetime | None = None
    milestones: tuple[dict[str, Any], ...] = ()
    eta: dict[str, Any] | None = None
    exceptions: tuple[dict[str, Any], ...] = ()
    emissions: dict[str, Any] | None = None
    recent: tuple[PositionFix, ...] = ()  # downsampled trail, oldest first
    release: dict[str, Any] | None = None  # `trackd.release.Release` in its stored form


TRAIL_KEEP = 50
TRAIL_EVERY_S = 600.0
TRAIL_MOVE_DEG = 0.005  # about 500 m


def trail(recent: tuple[PositionFix, ...], fix: PositionFix) -> tuple[PositionFix, ...]:
    if recent:
        last = recent[-1]
        if fix.at <= last.at:
            return recent
        moved = abs(fix.lat - last.lat) + abs(fix.lon - last.lon) >= TRAIL_MOVE_DEG
        if (fix.at - last.at).total_seconds() < TRAIL_EVERY_S and not moved:
            return recent
    return (*recent, fix)[-TRAIL_KEEP:]


def _is_final_destination(event: Event, final_codes: frozenset[str]) -> bool:
    ms = event.milestone
    if ms is None or ms.code is Milestone.DELIVERED:
        return True
    loc = ms.location
    if loc is None or not final_codes:
        return True
    return bool({loc.unlocode, loc.iata} & final_codes)


def advance(
    state: State,
    shipment_id: str,
    events: list[Event],
    received_at: datetime,
    final_codes: frozenset[str] = frozenset(),
) -> tuple[State, list[Message]]:
    """Fold `events` (any order) into `state`. `final_codes`: the last leg's destination codes."""
    messages: list[Message] = []
    s = state
    prev_status = s.status
    replay_needed = False
    # the fields every position moves are kept in locals and set once, after the loop
    last_event_at, started_at, last, recent = s.last_event_at, s.started_at, s.last, s.recent
    release: rel.Release | None = None  # decoded at the first milestone
    release_at = received_at
    for ev in sorted(events, key=lambda e: e.occurred_at):
        at = ev.occurred_at
        if ev.retracts is None and (last_event_at is None or at > last_event_at):
            last_event_at = at
        if ev.kind is EventKind.POSITION and ev.position is not None:
            if started_at is None or at < started_at:
                started_at = at
            if last is None or at >= last.at:
                p = ev.position
                last = PositionFix(p.lat, p.lon, at, p.speed_kmh, p.heading)
                recent = trail(recent, last)
        elif ev.kind is EventKind.SENSOR and ev.sensor is not None:
            if s.last_sensor is None or at.isoformat() >= str(s.last_sensor.get("at", "")):
                s = replace(s, last_sensor={**ev.sensor.to_dict(), "at": at.isoformat()})
        elif ev.milestone is not None:
            ms = ev.milestone
            if ev.retracts is None:
                was = release if release is not None else rel.Release.from_dict(s.release)
                release = rel.fold(was, ev)
                release_at = at if release != was else release_at
            if ms.classifier is Classifier.ESTIMATED and ms.code in CARRIER_ETA_CODES:
                made = ev.created_at or received_at
                if (s.carrier_eta_created_at is None or made >= s.carrier_eta_created_at) and _is_final_destination(
                    ev, final_codes
                ):
                    s = replace(s, carrier_eta=at, carrier_eta_created_at=made)
                continue
            if ms.classifier is not Classifier.ACTUAL or ms.code is None:
                continue
            if started_at is None or at < started_at:
                started_at = at
            entry = {
                "event_id": ev.event_id,
                "code": ms.code.value,
                "at": at.isoformat(),
                "location": ms.location.to_dict() if ms.location else None,
                "mode": ms.mode.value if ms.mode else None,
            }
            s = replace(s, milestones=tuple(sorted((*s.milestones, entry), key=lambda m: m["at"])))
            replay_needed = True
    moved = last is not s.last or recent is not s.recent
    if moved or last_event_at != s.last_event_at or started_at != s.started_at:
        s = replace(s, last_event_at=last_event_at, started_at=started_at, last=last, recent=recent)
    if replay_needed:
        status = rebuild_status(s.milestones)
        s = replace(s, status=status, delivered_at=status.status_at if status.status is Status.DELIVERED else None)
    if s.last is not None and (state.last is None or s.last.at > state.last.at):
        messages.append(msg.position(shipment_id, s.last))
    if (s.status.status, s.status.substatus) != (prev_status.status, prev_status.substatus):
        messages.append(msg.status_changed(shipment_id, prev_status, s.status))
    if release is not None and rel.stored(release) != s.release:
        s = replace(s, release=rel.stored(release))
        messages.append(msg.release_changed(shipment_id, release_at, s.release))
    return s, messages


def rebuild_status(milestones: tuple[dict[str, Any], ...]) -> StatusState:
    """The status replayed from scratch from the kept milestone list (after a retraction)."""
    return replay((datetime.fromisoformat(m["at"]), Milestone(m["code"]), Classifier.ACTUAL) for m in milestones)
