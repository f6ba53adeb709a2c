"""SQL for the tenant's event feed (`GET /v1/dcsa/v3/events`): its shipments' stored events with
the shipment's identifiers, in the order they became known.

An event's `updated_at` is when trackd stored it, or when it was retracted: a retraction puts the
event again at the end of the feed, so a consumer that reads on from where it stopped hears of it.
Withdrawal markers are not events of their own and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trackd.model import ref_key
from trackd.store import Conn, Order, Row, keyset_page

FEED_SELECT = """
SELECT e.event_id, e.occurred_at, e.kind, e.code, e.classifier, e.data, e.source, e.retracted_at,
       COALESCE(e.retracted_at, e.received_at) AS updated_at, s.tracking_number, s."references" AS refs
FROM events e JOIN shipments s ON s.id = e.shipment_id
"""
FEED_ORDER: Order = (
    ("COALESCE(e.retracted_at, e.received_at)", "updated_at", "timestamptz"),
    ("e.event_id", "event_id", "text"),
    ("e.occurred_at", "occurred_at", "timestamptz"),
)


@dataclass(frozen=True, slots=True)
class FeedQuery:
    """What to read: events of these kinds or canonical codes (either matches; both empty: all),
    of shipments carrying every one of `references`, updated within [`since`, `until`]. Of sensor
    readings, kind `sensor` selects those with one of `sensor_fields`, kind `door` those with
    `door_field` and none of `sensor_fields`."""

    kinds: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    sensor_fields: tuple[str, ...] = ()
    door_field: str | None = None
    references: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None


async def feed_page(
    conn: Conn, tenant_id: int, q: FeedQuery, limit: int, cursor: str | None
) -> tuple[list[Row], str | None]:
    """A page of the feed and the cursor of the next (None on the last)."""
    where = ["e.tenant_id = %s", "e.retracts IS NULL"]
    args: list[Any] = [tenant_id]
    kinds = [k for k in q.kinds if k not in ("sensor", "door")]
    terms = []
    if kinds:
        terms.append("e.kind = ANY(%s)")
        args.append(kinds)
    if q.codes:
        terms.append("(e.kind = 'milestone' AND e.code = ANY(%s))")
        args.append(list(q.codes))
    if "sensor" in q.kinds:
        terms.append("(e.kind = 'sensor' AND e.data ?| %s)")
        args.append(list(q.sensor_fields))
    if "door" in q.kinds and q.door_field is not None:
        terms.append("(e.kind = 'sensor' AND e.data ? %s AND NOT e.data ?| %s)")
        args += [q.door_field, list(q.sensor_fields)]
    where.append("(" + " OR ".join(terms) + ")" if terms else "false")
    for ref in q.references:
        where.append("e.shipment_id IN (SELECT shipment_id FROM shipment_keys WHERE tenant_id = %s AND key = %s)")
        args += [tenant_id, ref_key(ref)]
    if q.since is not None:
        where.append("COALESCE(e.retracted_at, e.received_at) >= %s")
        args.append(q.since)
    if q.until is not None:
        where.append("COALESCE(e.retracted_at, e.received_at) <= %s")
        args.append(q.until)
    return await keyset_page(conn, FEED_SELECT, where, args, FEED_ORDER, limit, cursor)
