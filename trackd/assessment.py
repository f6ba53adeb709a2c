"""ETA, exception rules and emissions, applied to a shipment inside the write transaction.

Called by the ledger for every shipment a batch touches (and by the worker on a schedule, so
time-based rules fire with no event). Pure engines (`eta`, `rules`, `emissions`) decide; this
module only turns rows into their inputs and their outputs into state, history and messages.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from trackd import crossings, emissions, eta, ledger, rules, store
from trackd import messages as msg
from trackd.codes import Milestone, Mode
from trackd.errors import ValidationError
from trackd.messages import Message
from trackd.model import Location
from trackd.settings import Settings
from trackd.shipment import Eta, Leg, OpenException, Shipment
from trackd.state import State
from trackd.store import Conn, Row

log = logging.getLogger("trackd.eta")
STATS_TTL_S = 600.0
STATS_SHIPMENTS = 2000
TICK_BATCH = 500
RECOMPUTE_POSITIONS_AFTER = timedelta(seconds=60)
RECOMPUTE_MOVE_DEG = 0.05  # about 5 km: a bigger jump is always recomputed at once


def _dt(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v else None


def shipment_from_row(r: Row) -> Shipment:
    trange = None
    if r.get("temperature_min_c") is not None:
        trange = (float(r["temperature_min_c"]), float(r["temperature_max_c"]))
    return Shipment(
        id=r["id"],
        tracking_number=r["tracking_number"],
        carrier=r.get("carrier"),
        references=tuple(r.get("references") or ()),
        mode=Mode(r["mode"]) if r.get("mode") else None,
        legs=tuple(Leg.from_dict(x) for x in r.get("legs") or ()),
        promised_at=r.get("promised_at"),
        weight_kg=r.get("weight_kg"),
        temperature_range_c=trange,
        created_at=r.get("created_at"),
    )


def journey_of(shipment: Shipment, s: State) -> eta.Journey:
    milestones = tuple(
        (
            datetime.fromisoformat(m["at"]),
            Milestone(m["code"]),
            Location(**m["location"]) if m.get("location") else None,
        )
        for m in s.milestones
    )
    return eta.Journey(
        shipment=shipment,
        milestones=milestones,
        position=s.last,
        carrier_eta=s.carrier_eta,
        carrier_eta_created_at=s.carrier_eta_created_at,
        recent_positions=s.recent,
    )


def eta_from_dict(d: dict[str, Any] | None) -> Eta | None:
    if not d or not d.get("predicted_at"):
        return None
    return Eta(
        predicted_at=datetime.fromisoformat(d["predicted_at"]),
        earliest=datetime.fromisoformat(d["earliest"]),
        latest=datetime.fromisoformat(d["latest"]),
        method=d.get("method") or "",
        computed_at=datetime.fromisoformat(d["computed_at"]),
        carrier_eta=_dt(d.get("carrier_eta")),
        promised_at=_dt(d.get("promised_at")),
        p_late=d.get("p_late"),
        revision=int(d.get("revision") or 0),
    )


def _forecast(item: list[Any]) -> eta.Forecast:
    computed, predicted, *rest = item
    carrier = rest[0] if rest else None
    return eta.Forecast(datetime.fromisoformat(computed), datetime.fromisoformat(predicted), _dt(carrier))


def learned(rows: list[Row]) -> eta.LaneStats:
    """What the ETA learns from completed journeys (`store.completed_journeys` rows, newest first),
    replayed oldest first; a row that cannot be read is skipped."""
    stats = eta.LaneStats.empty()
    for r in reversed(rows):
        try:
            shipment = shipment_from_row(r)
            fake = State(milestones=tuple(r["milestones"] or ()))
            j = journey_of(shipment, fake)
            raw = r["forecasts"] if isinstance(r["forecasts"], list) else orjson.loads(r["forecasts"])
            started = r["started_at"] or j.started_at or r["created_at"]
            done = eta.CompletedJourney(shipment, started, r["delivered_at"], j.milestones, tuple(map(_forecast, raw)))
            stats = eta.learn(stats, done)
        except (ValidationError, ValueError, KeyError, TypeError) as exc:
            log.debug("history of %s not learned from: %s", r["id"], exc)
    return stats


class Evaluator:
    def __init__(self, settings: Settings) -> None:
        self.threshold = timedelta(minutes=settings.eta_threshold_min)
        self.factors = emissions.load_factors(settings.emission_factors)
        self._stats: dict[int, tuple[float, eta.LaneStats]] = {}
        self._seen: dict[str, float] = {}

    async def stats(self, conn: Conn, tenant_id: int) -> eta.LaneStats:
        """Lane, dwell and calibration history of the tenant's completed shipments (cached)."""
        hit = self._stats.get(tenant_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        stats = learned(await store.completed_journeys(conn, tenant_id, STATS_SHIPMENTS))
        self._stats[tenant_id] = (time.monotonic() + STATS_TTL_S, stats)
        return stats

    def emissions_for(self, shipment: Shipment) -> dict[str, Any] | None:
        try:
            return _emissions_cached(shipment, self.factors)
        except ValidationError:
            return None

    def fresh(self, row: Row, before: State, s: State, now: datetime) -> bool:
        """True when only positions moved, by a few km at most, since an ETA computed under a minute
        ago: the full model then runs on a later batch, which keeps ingest at map scale cheap."""
        if s.milestones != before.milestones or s.last_sensor != before.last_sensor or s.release != before.release:
            return False
        if s.status.status != before.status.status or s.carrier_eta != before.carrier_eta:
            return False
        if s.last is not None:
            if before.last is None:
                return False
            if abs(s.last.lat - before.last.lat) + abs(s.last.lon - before.last.lon) > RECOMPUTE_MOVE_DEG:
                return False
        if s.eta and s.eta.get("computed_at"):
            return bool(now - datetime.fromisoformat(s.eta["computed_at"]) < RECOMPUTE_POSITIONS_AFTER)
        seen = self._seen.get(row["id"])  # no ETA to date it: when this process last looked
        return seen is not None and time.monotonic() - seen < RECOMPUTE_POSITIONS_AFTER.total_seconds()

    async def __call__(
        self, conn: Conn, row: Row, before: State, s: State, now: datetime
    ) -> tuple[State, list[Message]]:
        if self.fresh(row, before, s, now):
            return s, []
        shipment = row.get("_shipment")  # parsed once per cached row
        if shipment is None:
            shipment = row["_shipment"] = shipment_from_row(row)
        messages: list[Message] = []
        sid = shipment.id
        if len(self._seen) > 200_000:
            self._seen.clear()
        self._seen[sid] = time.monotonic()
        s = replace(s, emissions=self.emissions_for(shipment))
        journey = journey_of(shipment, s)
        stats = await self.stats(conn, row["tenant_id"])
        stats = await crossings.with_learned_dwell(conn, row["tenant_id"], stats)  # dwell from place visits
        try:
            new = eta.predict(journey, stats, now)
        except ValidationError:
            new = None
        old = eta_from_dict(s.eta)
        if new is not None:
            if eta.eta_changed(old, new, self.threshold):
                new = replace(new, revision=old.revision + 1 if old is not None else 0)
                messages.append(msg.eta_changed(sid, now, new.to_dict(), old.predicted_at if old else None))
                await ledger.record_eta(conn, sid, new)
                s = replace(s, eta=new.to_dict())
            elif s.eta is not None:
                fresh = new.to_dict()
                s = replace(s, eta={**s.eta, "computed_at": fresh["computed_at"], "p_late": fresh["p_late"]})
        opened = {
            e["kind"]: OpenException(e["kind"], datetime.fromisoformat(e["raised_at"]), None, e.get("detail"))
            for e in s.exceptions
            if e.get("cleared_at") is None
        }
        changes = rules.evaluate(
            journey,
            new or old,
            opened,
            now,
            last_event_at=s.last_event_at,
            last_sensor=s.last_sensor,
            status=s.status,
            stats=stats,
            release=s.release,
        )
        if changes:
            exceptions = [dict(e) for e in s.exceptions]
            for ch in changes:
                if ch.action == "raise":
                    exc = {
                        "kind": ch.kind.value,
                        "raised_at": ch.at.isoformat(),
                        "cleared_at": None,
                        "detail": ch.detail,
                    }
                    exceptions.append(exc)
                    messages.append(msg.exception_changed("raised", sid, ch.at, exc))
                else:
                    for exc in exceptions:
                        if exc["kind"] == ch.kind.value and exc["cleared_at"] is None:
                            exc["cleared_at"] = ch.at.isoformat()
                            messages.append(msg.exception_changed("cleared", sid, ch.at, dict(exc)))
            s = replace(s, exceptions=tuple(exceptions[-100:]))
        return s, messages

    async def tick(self, conn: Conn, now: datetime) -> int:
        """Re-evaluate open shipments with no new event; returns the messages emitted."""
        rows = await ledger.quiet_shipments(conn, now, TICK_BATCH)
        by_tenant: dict[int, dict[str, list[Any]]] = {}
        for r in rows:
            by_tenant.setdefault(r["tenant_id"], {})[r["shipment_id"]] = []
        total = 0
        for tenant_id, shipments in by_tenant.items():
            total += len(await ledger.update_shipments(conn, tenant_id, shipments, now, self, emitting=True))
        return total


_EMISSIONS_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}


def _emissions_cached(shipment: Shipment, factors: emissions.Factors) -> dict[str, Any]:
    key = (shipment.legs, shipment.mode, shipment.weight_kg, id(factors))
    hit = _EMISSIONS_CACHE.get(key)
    if hit is None:
        if len(_EMISSIONS_CACHE) > 10_000:
            _EMISSIONS_CACHE.clear()
        hit = emissions.compute(shipment, factors)
        _EMISSIONS_CACHE[key] = hit
    return hit
