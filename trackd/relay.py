"""Publishes committed outbox messages to the bus, in seq order per tenant, after commit; a mark
per tenant (`relay_marks`) records how far.

Any process may relay; an advisory lock makes them take turns, so a message is published by one
of them, in order. Writers `nudge()` after their commit for low latency; a poll catches the rest
(messages left by a process that died, or kept while the bus was down).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from psycopg_pool import AsyncConnectionPool

from trackd.bus import Bus, BusUnavailable
from trackd.store import tuples

log = logging.getLogger("trackd.relay")
RELAY_LOCK = 7_242_019_002
BATCH = 5000


class Relay:
    def __init__(self, pool: AsyncConnectionPool, bus: Bus, poll_s: float = 0.5) -> None:
        self._pool = pool
        self._bus = bus
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.degraded = False

    def nudge(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trackd-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                while await self.publish_pending() >= BATCH:
                    pass
                if self.degraded:
                    log.warning("bus reachable again: stream messages flowing")
                self.degraded = False
                backoff = 0.1
            except BusUnavailable as exc:
                if not self.degraded:
                    log.warning("bus unreachable, keeping messages in the outbox: %s", exc)
                self.degraded = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:  # the database may be down: keep trying
                log.warning("relay: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def publish_pending(self) -> int:
        """Publish one batch of the messages past each tenant's mark; returns how many.

        A tenant's messages commit in seq order (its row lock orders them), so the committed
        `tenants.seq` above the mark says there is more, and everything up to it is readable."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (RELAY_LOCK,))
            behind: list[Any] = await (
                await conn.execute(
                    "SELECT t.id, t.seq AS top, COALESCE(m.seq, 0) AS mark FROM tenants t"
                    " LEFT JOIN relay_marks m ON m.tenant_id = t.id WHERE t.seq > COALESCE(m.seq, 0) ORDER BY t.id"
                )
            ).fetchall()
            total = 0
            for t in behind:
                rows = await tuples(
                    conn,
                    "SELECT seq, payload FROM outbox WHERE tenant_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                    (t["id"], t["mark"], BATCH - total),
                )
                if not rows:  # all up to `top` is committed, so what is missing was deleted: move on
                    await self._mark(conn, t["id"], t["top"])
                    continue
                await self._bus.publish(t["id"], [r[1] for r in rows])
                await self._mark(conn, t["id"], rows[-1][0])
                total += len(rows)
                if total >= BATCH:
                    break
            return total

    @staticmethod
    async def _mark(conn: Any, tenant_id: int, seq: int) -> None:
        await conn.execute(
            "INSERT INTO relay_marks (tenant_id, seq) VALUES (%s, %s)"
            " ON CONFLICT (tenant_id) DO UPDATE SET seq = EXCLUDED.seq",
            (tenant_id, seq),
        )
