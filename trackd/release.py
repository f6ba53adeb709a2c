"""The ocean release of a shipment: its last free day, when it became available for pickup, holds.

A release comes from carrier events (folded in the write path by `fold`) and from the API (`merge`
of a PATCH). `demurrage` is the pure time rule behind the `demurrage_risk` exception: at risk from
24 hours before the last free day until the cargo is picked up. Stored and sent as
`{"last_free_day", "available_for_pickup_at", "holds": [{"kind", "since", "cleared_at"}]}`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from trackd.codes import Classifier, Milestone
from trackd.errors import ValidationError
from trackd.model import Event

HOLD_KINDS = ("customs", "freight", "terminal", "other")
MAX_HOLDS = 50
WARN_BEFORE = timedelta(hours=24)  # demurrage_risk is raised this long before the last free day
PAST_LIMIT = timedelta(days=3653)  # times given by PATCH: at most ten years back...
AHEAD_LIMIT = timedelta(days=731)  # ...and two years ahead
_M = Milestone
PICKUP = frozenset({_M.GATE_OUT, _M.PICKED_UP, _M.DELIVERED})
# A pickup counts only after the sea part: an export gate-out before loading is not the import pickup.
SEA_PART = frozenset({_M.LOADED, _M.DEPARTED, _M.ARRIVED, _M.DISCHARGED})
# Ocean carriers' raw hold and release codes (DCSA shipment events) that are not about customs:
# they arrive as `exception` milestones (HOLD) or unmapped ones (RELS); the kind comes from the reason.
CARRIER_HOLD, CARRIER_RELEASE = "HOLD", "RELS"
_KIND_WORDS = (("customs", "customs"), ("terminal", "terminal"), ("freight", "freight"), ("payment", "freight"))


@dataclass(frozen=True, slots=True)
class Hold:
    kind: str
    since: datetime
    cleared_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in HOLD_KINDS:
            raise ValidationError("kind", f"{self.kind!r} is not one of {', '.join(HOLD_KINDS)}")
        for name in ("since", "cleared_at"):
            at = getattr(self, name)
            if at is not None and at.tzinfo is None:
                raise ValidationError(name, "needs a UTC offset")
        if self.cleared_at is not None and self.cleared_at < self.since:
            raise ValidationError("cleared_at", "is before since")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "since": _iso(self.since), "cleared_at": _iso(self.cleared_at)}


@dataclass(frozen=True, slots=True)
class Release:
    last_free_day: datetime | None = None
    available_for_pickup_at: datetime | None = None
    holds: tuple[Hold, ...] = ()

    def __post_init__(self) -> None:
        for name in ("last_free_day", "available_for_pickup_at"):
            at = getattr(self, name)
            if at is not None and at.tzinfo is None:
                raise ValidationError(name, "needs a UTC offset")
        if len(self.holds) > MAX_HOLDS:
            raise ValidationError("holds", f"at most {MAX_HOLDS}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_free_day": _iso(self.last_free_day),
            "available_for_pickup_at": _iso(self.available_for_pickup_at),
            "holds": [h.to_dict() for h in self.holds],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Release:
        """The stored form (or None: an empty release) back to a value."""
        if not d:
            return cls()
        return cls(
            last_free_day=_dt(d.get("last_free_day")),
            available_for_pickup_at=_dt(d.get("available_for_pickup_at")),
            holds=tuple(Hold(h["kind"], _at(h["since"]), _dt(h.get("cleared_at"))) for h in d.get("holds") or ()),
        )

    def open_holds(self) -> list[Hold]:
        return [h for h in self.holds if h.cleared_at is None]


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None


def _at(v: str) -> datetime:
    return datetime.fromisoformat(v)


def _dt(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v else None


def stored(r: Release) -> dict[str, Any] | None:
    """What the state keeps: None for a release that says nothing."""
    return None if r == Release() else r.to_dict()


# -- from the API --------------------------------------------------------------------------------


def merge(current: Mapping[str, Any] | None, patch: Mapping[str, Any] | None, now: datetime) -> Release:
    """`current` (stored form) with the fields a PATCH gave replaced (`holds` as a whole list); a
    `patch` of None clears the release. Times must carry an offset and lie within ten years back
    and two years ahead of `now`; `ValidationError` naming `release.<field>` otherwise."""
    if patch is None:
        return Release()
    base = Release.from_dict(current)
    changes: dict[str, Any] = {}
    try:
        for name in ("last_free_day", "available_for_pickup_at"):
            if name in patch:
                changes[name] = _bounded(name, patch[name], now)
        if "holds" in patch:
            holds = []
            for i, h in enumerate(patch["holds"] or ()):
                where = f"holds[{i}]"
                since = _bounded(f"{where}.since", h.get("since"), now)
                if since is None:
                    raise ValidationError(f"{where}.since", "is required")
                try:
                    holds.append(
                        Hold(h.get("kind", ""), since, _bounded(f"{where}.cleared_at", h.get("cleared_at"), now))
                    )
                except ValidationError as exc:
                    raise ValidationError(f"{where}.{exc.field}", exc.reason) from None
            changes["holds"] = tuple(holds)
        return replace(base, **changes)
    except ValidationError as exc:
        raise ValidationError(f"release.{exc.field}", exc.reason) from None


def _bounded(name: str, at: datetime | None, now: datetime) -> datetime | None:
    if at is None:
        return None
    if at.tzinfo is None:
        raise ValidationError(name, "needs a UTC offset")
    if not now - PAST_LIMIT <= at <= now + AHEAD_LIMIT:
        raise ValidationError(name, f"{at.isoformat()} is not within ten years back and two years ahead")
    return at


# -- from carrier events -------------------------------------------------------------------------


def hold_kind(reason: str | None) -> str:
    text = (reason or "").lower()
    return next((kind for word, kind in _KIND_WORDS if word in text), "other")


def _open(r: Release, kind: str, at: datetime) -> Release:
    for h in r.holds:
        covered = h.since <= at and (h.cleared_at is None or at <= h.cleared_at)
        if h.kind == kind and covered:
            return r  # the same hold again, or one already known to span this time
    return replace(r, holds=(*r.holds, Hold(kind, at))[-MAX_HOLDS:])


def _clear(r: Release, kinds: Iterable[str], at: datetime) -> Release:
    wanted = set(kinds)
    holds = tuple(
        replace(h, cleared_at=at) if h.kind in wanted and h.cleared_at is None and h.since <= at else h for h in r.holds
    )
    return r if holds == r.holds else replace(r, holds=holds)


def fold(r: Release, ev: Event) -> Release:
    """`r` after one event: an actual `available_for_pickup` sets the availability (the latest
    wins), `customs_hold` / `customs_released` open and clear a customs hold, and a carrier's
    non-customs HOLD / RELS opens or clears a hold of the kind its reason names (freight, terminal,
    else other; a release naming none clears every open non-customs hold)."""
    ms = ev.milestone
    if ms is None or ms.classifier is not Classifier.ACTUAL:
        return r
    at = ev.occurred_at
    if ms.code is _M.AVAILABLE_FOR_PICKUP:
        if r.available_for_pickup_at is None or at > r.available_for_pickup_at:
            return replace(r, available_for_pickup_at=at)
        return r
    if ms.code is _M.CUSTOMS_HOLD:
        return _open(r, "customs", at)
    if ms.code is _M.CUSTOMS_RELEASED:
        return _clear(r, ["customs"], at)
    raw = (ms.raw_code or "").upper()
    if raw == CARRIER_HOLD and ms.code is _M.EXCEPTION:
        return _open(r, hold_kind(ms.description), at)
    if raw == CARRIER_RELEASE and ms.code is None:
        kind = hold_kind(ms.description)
        return _clear(r, ["freight", "terminal", "other"] if kind == "other" else [kind], at)
    return r


# -- the time rule -------------------------------------------------------------------------------


def picked_up_at(r: Release, milestones: Iterable[tuple[datetime, Milestone]]) -> datetime | None:
    """When the cargo was picked up: the first gate-out, pickup or delivery after both its
    availability and the last milestone of the sea part."""
    rows = sorted(milestones, key=lambda m: m[0])
    anchor = r.available_for_pickup_at
    for at, code in rows:
        if code in SEA_PART and (anchor is None or at > anchor):
            anchor = at
    return next((at for at, code in rows if code in PICKUP and (anchor is None or at >= anchor)), None)


def demurrage(
    r: Release, milestones: Iterable[tuple[datetime, Milestone]], now: datetime
) -> tuple[bool, datetime, str]:
    """(at risk, since when or when it ended, detail): at risk from WARN_BEFORE ahead of the last
    free day while the cargo is not picked up."""
    lfd = r.last_free_day
    if lfd is None:
        return False, now, "no last free day"
    picked = picked_up_at(r, milestones)
    if picked is not None:
        return False, picked, "picked up"
    start = lfd - WARN_BEFORE
    if now >= start:
        return True, start, f"last free day {lfd.isoformat()}, not picked up"
    return False, now, "last free day more than 24 h away"
