"""Per-process fan-out of the bus to the websocket clients connected to this process.

One reader task per process reads the bus for the tenants that have clients here and routes each
message to the clients whose subscriptions match; one tick task turns the positions gathered for
map clients (`all`, `bbox`) into one `positions` message per tick. Each client has a
`stream.session.Session` with a bounded queue that its relay (the gateway's sender) drains with
`Session.next_batch()`; the hub itself never touches a socket. The hub drives a session through
its public methods, and a session calls back only through `stream.session.HubLink`, which the
hub implements (`now`, `encode`, `check_backlog`, `flush_at_tick`, `close`, `wake`).

What a client can rely on:
- after a snapshot of seq S, every message of its subscriptions with seq > S, no gap and no
  duplicate; every message has a larger seq than the one before it (a snapshot's seq is at
  least the previous one, equal when nothing happened in between);
- status, ETA, exception and shipment messages are never dropped; positions are coalesced to the
  latest per shipment once the client falls behind;
- a client whose undroppable backlog stays above `queue_limit` for `slow_close_s` is closed with
  1013 and can come back with `resume_from`;
- messages of one tenant only ever reach that tenant's clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from stream import protocol
from stream.protocol import Message, ProtocolError, Selector, Subscribe
from stream.session import CLOSE_TRY_AGAIN_LATER, TOO_FAR_BEHIND, Session, TenantSessions
from trackd.bus import Bus, BusUnavailable
from trackd.errors import TrackdError

log = logging.getLogger("trackd.stream")

CLOSE_GOING_AWAY = 1001

PAGE = 10_000  # outbox rows per read when backfilling
MAX_BACKFILL = 100_000  # beyond this a resume gets a fresh snapshot instead
DEGRADED_DETAIL = "the message bus is unavailable; live updates pause until it returns and then continue"


class Source(Protocol):
    """The durable side of the stream (the database), for snapshots and resumes."""

    async def snapshot(self, tenant_id: int, selector: Selector) -> tuple[int, list[Message]]:
        """The tenant's latest seq and the shipments the selector matches, read consistently."""
        ...

    async def outbox_after(self, tenant_id: int, after: int, limit: int) -> list[Message] | None:
        """Up to `limit` messages after `after` in seq order, or None if some are no longer kept."""
        ...


class StreamError(TrackdError):
    code = "StreamUnavailable"
    status = 503


class Hub:
    """The fan-out of one process. Create once, `await start()`, `await stop()` at shutdown."""

    def __init__(
        self,
        bus: Bus,
        *,
        tick_s: float = 0.25,
        queue_limit: int = 2000,
        slow_close_s: float = 5.0,
        coalesce_at: int | None = None,
        lag_s: float = 1.0,
        block_ms: int = 100,
        source: Source | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        # Where missing messages are fetched from; the first `subscribe` supplies it if not given.
        self.source = source
        self.tick_s = tick_s
        self.queue_limit = queue_limit
        self.slow_close_s = slow_close_s
        # A client whose queue has not been empty for `lag_s`, or holds `coalesce_at` entries, is
        # behind: from then on a newer position of a shipment replaces its unsent older one.
        self.coalesce_at = coalesce_at if coalesce_at is not None else queue_limit
        self.lag_s = lag_s
        self.block_ms = block_ms
        self._clock = clock
        self._tenants: dict[int, TenantSessions] = {}
        self._pending: set[Session] = set()
        self._over: set[Session] = set()
        self._encoded: dict[int, str | None] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.degraded: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="stream-hub-reader"),
            asyncio.create_task(self._tick_loop(), name="stream-hub-tick"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for t in list(self._tenants.values()):
            for s in list(t.sessions):
                self._close(s, CLOSE_GOING_AWAY, "server shutting down")

    # -- sessions --------------------------------------------------------------------------------

    def connect(self, tenant_id: int) -> Session:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = TenantSessions(tenant_id)
        session = Session(self, tenant)
        tenant.sessions.add(session)
        if self.degraded is not None:
            session.push(protocol.error("StreamDegraded", DEGRADED_DETAIL))
        return session

    def sockets(self, tenant_id: int) -> int:
        """How many sessions of `tenant_id` this process holds."""
        tenant = self._tenants.get(tenant_id)
        return len(tenant.sessions) if tenant is not None else 0

    def disconnect(self, session: Session) -> None:
        if session.closed is None:
            session.closed = (1000, "")
        self._detach(session)

    async def subscribe(self, session: Session, op: Subscribe, source: Source) -> None:
        """Subscribe: a snapshot then live messages, or with `resume_from` the missed messages then
        live ones (a snapshot with `reset` when they are no longer kept)."""
        if self.source is None:
            self.source = source
        async with session.joining:
            if session.closed is None:
                await self._subscribe(session, op, source)

    async def _subscribe(self, session: Session, op: Subscribe, source: Source) -> None:
        reset = False
        if op.resume_from is not None:
            if await self._resume(session, op, source):
                return
            reset = True
        tenant_id = session.tenant_id
        session.hold()
        try:
            for attempt in range(6):
                seq, ships = await source.snapshot(tenant_id, op.selector)
                if session.closed is not None:
                    return
                gap = session.gap(seq)
                if gap is False:
                    # Read before this client's latest message: a fresh read is newer than it.
                    await asyncio.sleep(0.01 * attempt)
                    continue
                extra: list[Message] = []
                if isinstance(gap, tuple):
                    got = await self._fetch(source, tenant_id, *gap)
                    if got is None:
                        continue
                    extra = got
                if session.closed is not None:
                    return
                session.activate(seq, op.selector, extra, protocol.snapshot(seq, ships, reset=reset), ships)
                self._encoded.clear()
                return
            raise StreamError("could not line a snapshot up with the live stream; subscribe again")
        finally:
            if session.holding:
                session.release()
                self._encoded.clear()

    def unsubscribe(self, session: Session, selector: Selector) -> None:
        session.remove(selector)

    def close(self, session: Session, code: int, reason: str, *, drain: bool = False) -> None:
        """Close a session: at once, or with `drain` after what is already queued (such as a last
        error frame) has been sent. It gets nothing new either way."""
        if drain and session.closed is None:
            session.close_after_queued(code, reason)
            self._detach(session)
        else:
            self._close(session, code, reason)

    async def _resume(self, session: Session, op: Subscribe, source: Source) -> bool:
        assert op.resume_from is not None
        resume_from = op.resume_from
        if session.subscribed and resume_from < session.cursor:
            raise ProtocolError(
                "ValidationError",
                f"resume_from {resume_from} is behind what this connection was already sent "
                f"({session.cursor}); subscribe without it",
            )
        latest, _ = await source.snapshot(session.tenant_id, Selector(shipments=frozenset()))
        if resume_from > latest:
            raise ProtocolError("ValidationError", f"resume_from {resume_from} is ahead of the stream ({latest})")
        session.hold()
        try:
            t = session.tenant
            after = resume_from
            if session.subscribed and t.cursor is not None:
                after = min(after, t.cursor)  # existing subscriptions need what comes before it too
            msgs = await self._fetch(source, session.tenant_id, after, None)
            if msgs is None:
                return False
            if session.closed is None:
                session.activate(resume_from, op.selector, msgs, None, [])
                self._encoded.clear()
            return True
        finally:
            if session.holding:
                session.release()
                self._encoded.clear()

    async def _fetch(self, source: Source, tenant_id: int, after: int, upto: int | None) -> list[Message] | None:
        """Messages in (after, upto] (upto None: all kept), from the bus if it has them all, else
        from the outbox; None when some are no longer kept."""
        if upto is not None:
            if upto <= after:
                return []
            with contextlib.suppress(BusUnavailable):
                got = await self.bus.range(tenant_id, after, upto)
                if got is not None:
                    return got
        out: list[Message] = []
        cursor = after
        while True:
            page = await source.outbox_after(tenant_id, cursor, PAGE)
            if page is None:
                return None
            out.extend(page)
            if not page or len(page) < PAGE or (upto is not None and int(page[-1]["seq"]) >= upto):
                break
            if len(out) > MAX_BACKFILL:
                return None
            cursor = int(page[-1]["seq"])
        if upto is None:
            return out
        if not out or int(out[-1]["seq"]) < upto:
            return None  # not committed as far as the snapshot says: read again
        return [m for m in out if int(m["seq"]) <= upto]

    # -- the reader ------------------------------------------------------------------------------

    def wake(self) -> None:
        """A tenant's cursor was just anchored (by a session joining): read the bus for it now."""
        self._wake.set()

    async def _read_loop(self) -> None:
        backoff = 0.0
        while True:
            cursors = {t.id: t.cursor for t in self._tenants.values() if t.cursor is not None}
            if not cursors:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            try:
                got = await self.bus.read(cursors, self.block_ms)
            except BusUnavailable as exc:
                if self.degraded is None:
                    self.degraded = str(exc) or "unavailable"
                    log.warning("stream: bus unavailable (%s); retrying", self.degraded)
                    for s in self._sessions():
                        s.push(protocol.error("StreamDegraded", DEGRADED_DETAIL))
                backoff = min(5.0, max(0.1, backoff * 2))
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                continue
            except Exception:
                log.exception("stream: bus read failed")
                await asyncio.sleep(1.0)
                continue
            if self.degraded is not None:
                log.warning("stream: bus available again; continuing from the cursors")
                self.degraded = None
            backoff = 0.0
            try:
                await self.deliver(got)
            except Exception:  # a bug must not stop the stream of every client here
                log.exception("stream: dispatch failed")

    async def deliver(self, got: list[tuple[int, Message]]) -> None:
        """Route messages read from the bus to this process's clients. A tenant's seq is gapless, so
        a jump means the bus lost messages (a Redis restarted without them, a trimmed stream): they
        are fetched from the outbox first, so clients see no gap."""
        while got:
            gap = self._dispatch(got, repair=self.source is not None)
            if gap is None:
                return
            index, tenant_id, after, upto = gap
            missing: list[Message] | None = None
            try:
                assert self.source is not None
                missing = await self._fetch(self.source, tenant_id, after, upto)
            except Exception as exc:
                log.warning("stream: could not fetch missing messages: %s", exc)
            if missing:
                self._dispatch([(tenant_id, m) for m in missing], repair=False)
            t = self._tenants.get(tenant_id)
            if t is not None and t.cursor is not None and t.cursor < upto:
                log.warning("stream: tenant %s messages %s..%s are lost to this process", tenant_id, after + 1, upto)
                t.cursor = upto
            got = got[index:]

    def _dispatch(self, got: list[tuple[int, Message]], *, repair: bool) -> tuple[int, int, int, int] | None:
        """Route messages; stop at the first gap in a tenant's seq (when `repair`) and say where."""
        try:
            for index, (tenant_id, msg) in enumerate(got):
                t = self._tenants.get(tenant_id)
                if t is None or t.cursor is None:
                    continue
                seq = int(msg["seq"])
                if seq <= t.cursor:
                    continue
                if repair and seq > t.cursor + 1:
                    return (index, tenant_id, t.cursor, seq - 1)
                t.cursor = seq
                t.observe(msg)
                if t.holding:
                    for s in list(t.holding):
                        s.keep(msg)
                for s in self._targets(t, msg):
                    if not s.holding:
                        s.route(msg)
            return None
        finally:
            self._encoded.clear()

    def _targets(self, t: TenantSessions, msg: Message) -> list[Session]:
        sid = msg.get("shipment_id")
        out = list(t.all)
        if isinstance(sid, str):
            out.extend(t.by_ship.get(sid, ()))
        if t.boxed:
            loc = t.locate(msg)
            if loc is not None:
                out.extend(s for s in t.boxed if s.in_boxes(loc))
        return out

    def encode(self, msg: Message) -> str | None:
        """`msg` as the stream sends it, encoded once for all the sessions it is routed to (until
        the dispatch, or the join, that routes it is over)."""
        key = id(msg)
        if key not in self._encoded:
            self._encoded[key] = protocol.message(msg)
        return self._encoded[key]

    # -- ticks and slow clients ------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self.tick()

    def tick(self) -> None:
        """Send the positions gathered since the last tick; close clients stuck over the limit."""
        pending, self._pending = self._pending, set()
        for s in pending:
            s.flush()
        for s in list(self._over):
            self.check_backlog(s)

    def now(self) -> float:
        """This hub's clock (monotonic seconds)."""
        return self._clock()

    def flush_at_tick(self, session: Session) -> None:
        """The session gathered positions: flush them at the next tick."""
        self._pending.add(session)

    def check_backlog(self, session: Session) -> None:
        """Close a session whose undroppable backlog stays over `queue_limit` for `slow_close_s`."""
        if session.backlog <= self.queue_limit:
            if session.over_since is not None:
                session.over_since = None
                self._over.discard(session)
            return
        now = self._clock()
        if session.over_since is None:
            session.over_since = now
            self._over.add(session)
        elif now - session.over_since >= self.slow_close_s:
            self._close(session, CLOSE_TRY_AGAIN_LATER, TOO_FAR_BEHIND)

    def _close(self, session: Session, code: int, reason: str) -> None:
        if session.close_now(code, reason):
            log.info("stream: closing a client of tenant %s (%s %s)", session.tenant_id, code, reason)
        self._detach(session)

    def _detach(self, session: Session) -> None:
        t = session.tenant
        if session in t.sessions:
            if session.shipments:
                session.remove(Selector(shipments=frozenset(session.shipments)))
            t.all.discard(session)
            t.boxed.discard(session)
            t.holding.discard(session)
            t.sessions.discard(session)
        self._pending.discard(session)
        self._over.discard(session)
        if not t.sessions and self._tenants.get(t.id) is t:
            del self._tenants[t.id]

    def _sessions(self) -> list[Session]:
        return [s for t in self._tenants.values() for s in t.sessions]

    def stats(self) -> dict[str, Any]:
        sessions = self._sessions()
        return {
            "tenants": len(self._tenants),
            "clients": len(sessions),
            "degraded": self.degraded is not None,
            "backlog": sum(s.backlog for s in sessions),
            "coalesced": sum(s.coalesced for s in sessions),
        }
