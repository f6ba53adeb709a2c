"""SQL for public share links: create, resolve, revoke, and the rows a tracking page shows.

A token resolves while it is unexpired (by the caller's clock) and not revoked; revoking records the
database's time, so a revoked link has ended for every process whatever its clock says. What it
shows is scoped to the tenant and shipment it was made for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from trackd import keys
from trackd.store import Conn, Row

POSITION_MODES = ("exact", "coarse", "none")  # how precisely a link shows positions (notify/links.py)


@dataclass(frozen=True, slots=True)
class SharedLink:
    """What a token points to, and whether it still shows it."""

    tenant_id: int
    shipment_id: str
    position: str  # one of POSITION_MODES
    live: bool  # False: expired or revoked


async def create_share(
    conn: Conn, tenant_id: int, shipment_id: str, token: str, expires_at: datetime, position: str = "exact"
) -> None:
    await conn.execute(
        "INSERT INTO share_links (token_hash, tenant_id, shipment_id, expires_at, position_mode)"
        " VALUES (%s, %s, %s, %s, %s)",
        (keys.hash_key(token), tenant_id, shipment_id, expires_at, position),
    )


async def find_link(conn: Conn, token: str, now: datetime) -> SharedLink | None:
    """The link of a token (None: unknown), live unless it has expired by `now` or been revoked."""
    row = await (
        await conn.execute(
            "SELECT tenant_id, shipment_id, position_mode, revoked_at IS NULL AND expires_at > %s AS live"
            " FROM share_links WHERE token_hash = %s",
            (now, keys.hash_key(token)),
        )
    ).fetchone()
    return SharedLink(row["tenant_id"], row["shipment_id"], row["position_mode"], row["live"]) if row else None


async def revoke_share(conn: Conn, tenant_id: int, shipment_id: str, token: str, now: datetime) -> bool:
    """Revoke one live link of the tenant's shipment (False: none such, or it had ended already)."""
    cur = await conn.execute(
        "UPDATE share_links SET revoked_at = now()"
        " WHERE token_hash = %s AND tenant_id = %s AND shipment_id = %s AND revoked_at IS NULL AND expires_at > %s",
        (keys.hash_key(token), tenant_id, shipment_id, now),
    )
    return cur.rowcount == 1


async def revoke_shares(conn: Conn, tenant_id: int, shipment_id: str, now: datetime) -> int:
    """Revoke every live link of the tenant's shipment; returns how many there were."""
    cur = await conn.execute(
        "UPDATE share_links SET revoked_at = now()"
        " WHERE tenant_id = %s AND shipment_id = %s AND revoked_at IS NULL AND expires_at > %s",
        (tenant_id, shipment_id, now),
    )
    return cur.rowcount


async def track_rows(
    conn: Conn, tenant_id: int, shipment_id: str, max_points: int
) -> tuple[Row, list[Row], list[Row]] | None:
    """The shipment with its state, its actual milestones (none retracted) and its positions so
    far, thinned evenly in SQL to at most `max_points` (first and last kept)."""
    shipment = await (
        await conn.execute(
            "SELECT s.tracking_number, s.carrier, s.legs, st.status, st.substatus, st.eta,"
            " GREATEST(s.updated_at, st.updated_at) AS updated_at"
            " FROM shipments s JOIN shipment_state st ON st.shipment_id = s.id WHERE s.tenant_id = %s AND s.id = %s",
            (tenant_id, shipment_id),
        )
    ).fetchone()
    if shipment is None:  # deleted meanwhile (its links go with it)
        return None
    milestones = await (
        await conn.execute(
            "SELECT code, occurred_at, data -> 'location' AS location FROM events"
            " WHERE tenant_id = %s AND shipment_id = %s AND kind = 'milestone' AND classifier = 'actual'"
            " AND code IS NOT NULL AND retracted_at IS NULL AND retracts IS NULL ORDER BY occurred_at, event_id",
            (tenant_id, shipment_id),
        )
    ).fetchall()
    positions = await (
        await conn.execute(
            "SELECT lon, lat FROM (SELECT lon, lat, occurred_at, row_number() OVER w AS n, count(*) OVER () AS total"
            " FROM positions WHERE tenant_id = %s AND shipment_id = %s WINDOW w AS (ORDER BY occurred_at)) p"
            " WHERE total <= %s OR n = total OR (n - 1) %% ceil(total::float8 / %s)::bigint = 0 ORDER BY occurred_at",
            (tenant_id, shipment_id, max_points, max_points),
        )
    ).fetchall()
    return shipment, milestones, positions
