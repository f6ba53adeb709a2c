"""A delivery quote before booking (`POST /v1/promise`): from the lane's completed journeys.

The lane is the route of `eta.route_key` (first origin, last destination, main mode). With
`PROMISE_MIN` or more of the tenant's completed journeys on it, the quote is the recency-weighted
10/50/90 % of their door-to-door times (widened by weighted conformal's finite-sample correction);
otherwise a stated prior: the physics estimate of the whole journey with the prior 80 % interval.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from trackd import eta, eta_learn
from trackd.errors import ValidationError
from trackd.shipment import Shipment

PROMISE_MIN = 3
CONFIDENCE = 0.8


def quote(shipment: Shipment, stats: eta.LaneStats, ship_at: datetime, now: datetime) -> dict[str, Any]:
    """`{earliest, likely, latest, confidence, basis: {journeys, lane}}` for goods leaving at `ship_at`."""
    route = eta.route_key(shipment)
    if route is None or eta.resolved_legs(shipment) is None:
        raise ValidationError("legs", "need an origin and a destination that can be located")
    samples = stats.tails.get(f"{route}|{eta.START}", ())
    if len(samples) >= PROMISE_MIN:
        now_h = eta_learn.epoch_h(now)
        pairs = [(d, eta_learn.recency(now_h - t)) for t, d in samples]
        pad = 1.0 / (sum(w for _, w in pairs) + 1.0)
        lo, mid, hi = (eta_learn.wquantile(pairs, q) for q in (max(0.1 - pad, 0.0), 0.5, min(0.9 + pad, 1.0)))
        journeys = len(samples)
    else:
        at = eta.physics(eta.Journey(shipment, started_at=ship_at), eta.LaneStats.empty(), ship_at)
        assert at is not None  # the legs resolve
        mid = eta.hours(at - ship_at)
        below, above = eta.interval(shipment.main_mode, eta.LaneStats.empty(), 0.0, mid)
        lo, hi, journeys = mid - below, mid + above, 0

    def after(h: float) -> str:
        return (ship_at + timedelta(hours=max(h, 0.0))).isoformat()

    return {
        "earliest": after(lo),
        "likely": after(mid),
        "latest": after(hi),
        "confidence": CONFIDENCE,
        "basis": {"journeys": journeys, "lane": route},
    }
