"""Vessels and the shipments on them, for the ais role: which MMSIs and IMO numbers sea legs name,
and the MMSI that AIS static data gave a vessel known by its IMO number only (migration 014)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

from trackd.codes import FINAL_STATUSES, Status
from trackd.store import tuples

log = logging.getLogger("trackd.ais")

CHANNEL = "trackd_vessels"  # notified when a shipment's vessels or a vessel's MMSI change
_OVER = sorted(s.value for s in (*FINAL_STATUSES, Status.EXPIRED))

# Every vessel of a sea leg of a shipment still under way, with the MMSI that AIS static data
# recorded for its IMO number when the leg names no MMSI. The partial index of migration 014 keeps
# this to the shipments that name a vessel.
_LINKS = """
SELECT s.tenant_id, t.name, s.id, s.tracking_number, v.mmsi, v.imo, known.mmsi
FROM shipments s
JOIN tenants t ON t.id = s.tenant_id
JOIN shipment_state st ON st.shipment_id = s.id
CROSS JOIN LATERAL jsonb_to_recordset(jsonb_path_query_array(s.legs, '$[*] ? (@.mode == "sea").vessel'))
     AS v(mmsi integer, imo integer)
LEFT JOIN vessels known ON v.mmsi IS NULL AND known.imo = v.imo
WHERE s.legs @? '$[*].vessel' AND st.status <> ALL(%s) AND (v.mmsi IS NOT NULL OR v.imo IS NOT NULL)
"""

# Many IMO numbers in one statement: one notification on `CHANNEL` however many change.
_RECORD = """
INSERT INTO vessels (imo, mmsi, name) SELECT * FROM unnest(%s::integer[], %s::integer[], %s::text[])
ON CONFLICT (imo) DO UPDATE SET mmsi = EXCLUDED.mmsi, name = COALESCE(EXCLUDED.name, vessels.name), updated_at = now()
WHERE vessels.mmsi IS DISTINCT FROM EXCLUDED.mmsi OR vessels.name IS DISTINCT FROM EXCLUDED.name
"""


@dataclass(frozen=True, slots=True)
class Link:
    """A shipment on a vessel, named by the leg's `mmsi` and/or `imo`; `imo_mmsi` is the MMSI that
    AIS static data gave that IMO number, when the leg names no MMSI."""

    tenant_id: int
    tenant: str
    shipment_id: str
    tracking_number: str
    mmsi: int | None
    imo: int | None
    imo_mmsi: int | None = None


async def listen(conn: AsyncConnection[Any]) -> None:
    """Subscribe an autocommit connection to the changes of the links."""
    await conn.execute(f"LISTEN {CHANNEL}")


async def links(conn: AsyncConnection[Any]) -> list[Link]:
    """Every vessel link of every tenant's shipments that are not delivered, returned, cancelled or
    expired."""
    return [Link(*row) for row in await tuples(conn, _LINKS, (_OVER,))]


async def record_mmsis(conn: AsyncConnection[Any], learnt: dict[int, tuple[int, str | None]]) -> None:
    """Keep the MMSI (and name) AIS static data gave for each IMO number: {imo: (mmsi, name)}."""
    imos = sorted(learnt)
    await conn.execute(_RECORD, (imos, [learnt[i][0] for i in imos], [learnt[i][1] for i in imos]))


async def follow_links(dsn: str, apply: Callable[[list[Link]], None], refresh_s: float, debounce_s: float) -> None:
    """Hand `apply` every link at once, again `debounce_s` after each change notified on `CHANNEL`
    (changes meanwhile are covered by the same read), and at least every `refresh_s` (for shipments
    that reached a final status). Runs until cancelled; a lost connection is opened again."""
    backoff = 0.5
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await listen(conn)
                backoff = 0.5
                while True:
                    async for _ in conn.notifies(timeout=0):
                        pass
                    apply(await links(conn))
                    async for _ in conn.notifies(timeout=refresh_s, stop_after=1):
                        pass
                    await asyncio.sleep(debounce_s)
        except (psycopg.Error, OSError) as exc:
            log.warning("ais: reading the vessel links: %s", str(exc).strip().splitlines()[0] if str(exc) else exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
