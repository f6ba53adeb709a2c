"""Publishes committed outbox messages to the bus, in seq order per tenant, after commit; a mark
per tenant (`relay_marks`) records how far.

Any process may relay, one at a time: each keeps a connection of its own, and the one holding the
relay's advisory lock on it is the leader; the others try again every `poll_s`, so a leader that
dies is replaced within that time. A process without the api role tries first; one with it waits
`DEFER_S` before its first try, so where roles run in separate processes the relaying is not on
the event loop that also serves websockets. The leader listens on `trackd_outbox`, which every
transaction that writes outbox messages notifies on commit (migration 007), in whichever process
it ran; it also looks every `poll_s` in case a notification was missed.

A pass is one read (every tenant's messages past its mark) and the bus append: the leader keeps
the marks in memory and writes them at most every `MARKS_EVERY_S` (and when idle), without
waiting for the disk. A mark lost that way makes the next leader publish those messages again,
and the bus skips a seq it already holds.

A tenant's stream on the bus never holds a seq the database has not committed, unless the
database went back: restored from an older backup (the same deployment identity, so the same
keys) under a Redis that kept the streams. The bus would then skip every new message until the
seq caught up, and readers would get messages of the lost history. So the relay compares the
streams with the database when a process starts (`start`, before its hub reads), when it starts
leading, and for each tenant whose stream it has not asked about yet; a stream ahead of the
database is dropped (`Bus.drop`), with one warning and `trackd_stream_resets_total`. Readers find
what it held in the outbox, and the next publish starts a new stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from trackd import metrics
from trackd.bus import Bus, BusUnavailable
from trackd.store import tuples

log = logging.getLogger("trackd.relay")
RELAY_LOCK = 7_242_019_002
CHANNEL = "trackd_outbox"
BATCH = 5000
MARKS_EVERY_S = 1.0
DEFER_S = 1.0
START_CHECK_S = 5.0  # a process's start waits at most this long on the stream check

# The messages past each tenant's mark, tenant by tenant, at most BATCH in all; a tenant whose
# seq is past its mark but has no message left there (retention deleted them) comes as one row
# without a message, so its mark can move to its seq.
PENDING = """
SELECT t.id, t.seq, o.seq, o.payload
FROM tenants t
LEFT JOIN relay_marks m ON m.tenant_id = t.id
LEFT JOIN unnest(%(ids)s::bigint[], %(marks)s::bigint[]) AS k(tenant_id, seq) ON k.tenant_id = t.id
CROSS JOIN LATERAL (SELECT GREATEST(m.seq, k.seq, 0) AS mark) x
LEFT JOIN LATERAL (
  SELECT seq, payload FROM outbox WHERE tenant_id = t.id AND seq > x.mark ORDER BY seq LIMIT %(batch)s
) o ON true
WHERE t.seq > x.mark AND (%(tenant)s::bigint IS NULL OR t.id = %(tenant)s)
ORDER BY t.id, o.seq
LIMIT %(batch)s"""

TENANT_SEQS = "SELECT id, seq FROM tenants WHERE %(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s)"

SET_MARKS = """
INSERT INTO relay_marks (tenant_id, seq)
SELECT * FROM unnest(%s::bigint[], %s::bigint[])
ON CONFLICT (tenant_id) DO UPDATE SET seq = EXCLUDED.seq"""


class Relay:
    def __init__(self, pool: AsyncConnectionPool, bus: Bus, poll_s: float = 0.5, *, defer: bool = False) -> None:
        self._pool = pool
        self._bus = bus
        self._poll_s = poll_s
        self._defer = defer
        self._task: asyncio.Task[None] | None = None
        self.degraded = False
        self.leading = False
        self._marks: dict[int, int] = {}  # tenant -> last seq published, this term
        self._saved: dict[int, int] = {}  # ... as written to relay_marks
        self._saved_at = 0.0
        self._known: set[int] = set()  # tenants whose stream's last seq is in _marks

    async def start(self) -> None:
        """Check every tenant's stream against the database (see the module's docstring), then
        relay in the background. The check is skipped, and done when leading, if the database or
        the bus does not answer within `START_CHECK_S`."""
        try:
            async with asyncio.timeout(START_CHECK_S), self._pool.connection() as conn:
                await self.check_streams(conn)
        except (TimeoutError, BusUnavailable, psycopg.Error) as exc:
            log.info("relay: stream check left to the leader: %s", _first_line(exc))
        self._task = asyncio.create_task(self._run(), name="trackd-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        if self._defer:
            await asyncio.sleep(DEFER_S)
        backoff = 0.1
        while True:
            try:
                conninfo = self._pool.conninfo
                assert isinstance(conninfo, str), "the relay needs the pool's connection string"
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            except psycopg.Error as exc:
                log.warning("relay: %s", _first_line(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                async with conn:
                    await self._follow_then_lead(conn)
                    backoff = 0.1
            except Exception as exc:  # the database went away (or worse): connect again
                log.warning("relay: %s", _first_line(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self.leading = False

    async def _follow_then_lead(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while not (await tuples(conn, "SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,)))[0][0]:  # noqa: ASYNC110
            await asyncio.sleep(self._poll_s)
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(f"LISTEN {CHANNEL}")
        self._new_term()
        self.leading = True
        log.info("relaying the outbox to the bus from this process")
        backoff = 0.1
        checked = False
        while True:
            try:
                if not checked:
                    await self.check_streams(conn)
                    checked = True
                while (n := await self._pass(conn)) >= BATCH:
                    pass
                await self._save_marks(conn, force=not n)
                if self.degraded:
                    log.warning("bus reachable again: stream messages flowing")
                self.degraded = False
                backoff = 0.1
            except BusUnavailable as exc:
                if not self.degraded:
                    log.warning("bus unreachable, keeping messages in the outbox: %s", exc)
                self.degraded = True
                self._known.clear()  # the bus may have restarted empty: ask it again
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            async for _ in conn.notifies(timeout=self._poll_s, stop_after=1):
                pass  # every notification that came meanwhile is taken: one pass covers them all

    async def publish_pending(self, conn: psycopg.AsyncConnection[Any], tenant_id: int | None = None) -> int:
        """One pass on `conn` (for one tenant, or all), from the marks as stored, writing them
        after; returns how many it published. For tools and tests: the caller sees that no other
        relay runs meanwhile."""
        self._new_term()
        n = await self._pass(conn, tenant_id)
        await self._save_marks(conn, force=True)
        return n

    async def check_streams(
        self, conn: psycopg.AsyncConnection[Any], seqs: dict[int, int] | None = None
    ) -> dict[int, int]:
        """Drop the streams that are ahead of the database; returns each tenant's last seq on the
        bus after (0 for a stream dropped). `seqs`: the tenants' seqs as read before calling (all
        tenants, read here, when None).

        The bus is read after the seqs, so a stream ahead of them may only hold messages committed
        meanwhile: those tenants' seqs are read again, and a stream still ahead is dropped if its
        last seq is still the one seen (someone else may have dropped it and published since)."""
        if seqs is None:
            seqs = dict(await tuples(conn, TENANT_SEQS, {"ids": None}))
        heads = await self._bus.heads(list(seqs))
        ahead = [t for t, head in heads.items() if head > seqs[t]]
        if not ahead:
            return heads
        now = dict(await tuples(conn, TENANT_SEQS, {"ids": ahead}))
        reset: list[str] = []
        for tid in ahead:
            if tid not in now or heads[tid] <= now[tid]:
                continue
            if await self._bus.drop(tid, heads[tid]):
                metrics.STREAM_RESETS.inc()
                reset.append(f"tenant {tid}: bus at {heads[tid]}, database at {now[tid]}")
                heads[tid] = 0
            else:
                del heads[tid]  # changed meanwhile: the publish asks the bus itself
        if reset:
            more = f" and {len(reset) - 5} more" if len(reset) > 5 else ""
            log.warning(
                "stream reset: the bus was ahead of the database (restored from an older backup?); dropped"
                " %d tenant stream(s), new messages flow again (%s%s)",
                len(reset),
                "; ".join(reset[:5]),
                more,
            )
        return heads

    def _new_term(self) -> None:
        self._marks, self._saved, self._known = {}, {}, set()

    async def _save_marks(self, conn: psycopg.AsyncConnection[Any], *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at < MARKS_EVERY_S:
            return
        changed = {t: seq for t, seq in self._marks.items() if self._saved.get(t) != seq}
        if changed:
            await conn.execute(SET_MARKS, (list(changed), list(changed.values())))
            self._saved.update(changed)
        self._saved_at = now

    async def _pass(self, conn: psycopg.AsyncConnection[Any], tenant_id: int | None = None) -> int:
        """Publish one batch of the messages past each tenant's mark; returns how many.

        A tenant's messages commit in seq order (its row lock orders them), so the committed
        `tenants.seq` above the mark says there is more, and everything up to it is readable."""
        params = {"batch": BATCH, "ids": list(self._marks), "marks": list(self._marks.values()), "tenant": tenant_id}
        rows = await tuples(conn, PENDING, params)
        by_tenant: dict[int, list[Any]] = {}
        for tid, top, seq, payload in rows:
            if seq is None:  # all up to `top` is committed, so what is missing was deleted: move on
                self._marks[tid] = top
            else:
                by_tenant.setdefault(tid, []).append(payload)
        unknown = {tid: int(top) for tid, top, _seq, _payload in rows if tid in by_tenant and tid not in self._known}
        heads = await self.check_streams(conn, unknown) if unknown else {}
        for tid, payloads in by_tenant.items():
            known = self._marks.get(tid) if tid in self._known else heads.get(tid)
            await self._bus.publish(tid, payloads, known)
            self._marks[tid] = int(payloads[-1]["seq"])
            self._known.add(tid)
        return sum(len(p) for p in by_tenant.values())


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
