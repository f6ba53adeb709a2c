"""Per-process fan-out of the bus to the websocket clients connected to this process.

One reader task per process reads the bus for the tenants that have clients here and routes each
message to the clients whose subscriptions match; one tick task turns the positions gathered for
map clients (`all`, `bbox`) into one `positions` message per tick. Each client has a bounded
queue that its relay (the gateway's sender) drains with `Client.next_batch()`; the hub itself
never touches a socket.

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
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from stream import protocol
from stream.protocol import BBox, Message, ProtocolError, Selector, Subscribe
from trackd.bus import Bus, BusUnavailable
from trackd.errors import TrackdError

log = logging.getLogger("trackd.stream")

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013

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


class ClientClosed(Exception):
    """The hub closed this client; the relay closes the socket with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class StreamError(TrackdError):
    code = "StreamUnavailable"
    status = 503


class _Entry:
    __slots__ = ("alive",)

    def __init__(self) -> None:
        self.alive = True


class _Fixed(_Entry):
    """An encoded message that is never dropped (or a control frame without seq)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class _Single(_Entry):
    """One `position` for a shipment followed by id; may be coalesced away."""

    __slots__ = ("sid", "text")

    def __init__(self, sid: str, text: str) -> None:
        super().__init__()
        self.sid = sid
        self.text = text


class _Batch(_Entry):
    """A tick's positions for a map client, latest per shipment; items may be coalesced away."""

    __slots__ = ("items",)

    def __init__(self, items: dict[str, Message]) -> None:
        super().__init__()
        self.items = items


class _Tenant:
    """One tenant's clients here, indexed for routing, and where its shipments were last seen."""

    def __init__(self, tenant_id: int) -> None:
        self.id = tenant_id
        self.cursor: int | None = None  # highest seq dispatched; None until a client anchors it
        self.clients: set[Client] = set()
        self.by_ship: dict[str, set[Client]] = {}
        self.all: set[Client] = set()
        self.boxed: set[Client] = set()
        self.holding: set[Client] = set()
        self.where: dict[str, tuple[int, float, float]] = {}  # shipment -> (seq, lat, lon)

    def observe(self, msg: Message) -> None:
        sid = msg.get("shipment_id")
        loc = protocol.location_of(msg)
        if loc is None or not isinstance(sid, str):
            return
        seq = int(msg["seq"])
        seen = self.where.get(sid)
        if seen is None or seen[0] < seq:
            self.where[sid] = (seq, loc[0], loc[1])

    def learn(self, seq: int, shipments: Iterable[Message]) -> None:
        for s in shipments:
            last = s.get("last_position")
            sid = s.get("id")
            if not isinstance(last, dict) or not isinstance(sid, str):
                continue
            lat, lon = last.get("lat"), last.get("lon")
            if not isinstance(lat, int | float) or not isinstance(lon, int | float):
                continue
            seen = self.where.get(sid)
            if seen is None or seen[0] <= seq:
                self.where[sid] = (seq, float(lat), float(lon))

    def locate(self, msg: Message) -> tuple[float, float] | None:
        loc = protocol.location_of(msg)
        if loc is not None:
            return loc
        seen = self.where.get(msg.get("shipment_id") or "")
        return (seen[1], seen[2]) if seen else None


class Client:
    """One websocket's side of the hub: its subscriptions, cursor and bounded queue.

    Only the hub changes it; the relay calls `next_batch()` and `push()`.
    """

    def __init__(self, hub: Hub, tenant: _Tenant) -> None:
        self._hub = hub
        self._tenant = tenant
        self.tenant_id = tenant.id
        self.cursor = 0  # highest seq queued (or pending) for this client
        self.shipments: set[str] = set()
        self.all = False
        self.boxes: list[BBox] = []
        self.closed: tuple[int, str] | None = None
        self.coalesced = 0  # positions dropped because a newer one replaced them
        self._queue: deque[_Entry] = deque()
        self._live = 0  # alive entries in the queue
        self._fixed = 0  # undroppable entries in the queue
        self._queued_pos: dict[str, _Single | _Batch] = {}
        self._pending: dict[str, Message] = {}
        self._ready = asyncio.Event()
        self._over_since: float | None = None
        self._held: list[Message] | None = None
        self._held_from: int | None = None
        self._closing: tuple[int, str] | None = None  # close once what is queued has been sent
        self._behind_since: float | None = None  # when the queue last went from empty to not
        self._joining = asyncio.Lock()  # one subscribe at a time

    # -- the relay's side ------------------------------------------------------------------------

    @property
    def subscribed(self) -> bool:
        return bool(self.shipments or self.all or self.boxes)

    @property
    def holding(self) -> bool:
        return self._held is not None

    @property
    def backlog(self) -> int:
        """Undroppable messages waiting to be sent."""
        return self._fixed

    async def next_batch(self, max_frames: int = 256) -> list[str]:
        """The next encoded frames to send, in order; waits for some; raises `ClientClosed`."""
        while True:
            if self.closed is not None:
                raise ClientClosed(*self.closed)
            out: list[str] = []
            while self._queue and len(out) < max_frames:
                entry = self._queue.popleft()
                if entry.alive:
                    out.append(self._take(entry))
            if out:
                if not self._queue:
                    self._behind_since = None
                self._hub._check_slow(self)
                return out
            if self._closing is not None:
                self.closed = self._closing
                raise ClientClosed(*self._closing)
            self._ready.clear()
            await self._ready.wait()

    def push(self, text: str) -> None:
        """Queue a control frame (pong, error) that carries no seq."""
        if self.closed is None:
            self._append(_Fixed(text))
            self._fixed += 1

    # -- queue -----------------------------------------------------------------------------------

    def _take(self, entry: _Entry) -> str:
        self._live -= 1
        if isinstance(entry, _Fixed):
            self._fixed -= 1
            return entry.text
        if isinstance(entry, _Single):
            if self._queued_pos.get(entry.sid) is entry:
                del self._queued_pos[entry.sid]
            return entry.text
        assert isinstance(entry, _Batch)
        for sid in entry.items:
            if self._queued_pos.get(sid) is entry:
                del self._queued_pos[sid]
        return protocol.positions(list(entry.items.values()))

    def _append(self, entry: _Entry) -> None:
        if self._pending and not isinstance(entry, _Batch):
            self._flush_pending()  # the gathered positions have lower seqs: they go first
        if self._behind_since is None:
            self._behind_since = self._hub._clock()
        self._queue.append(entry)
        self._live += 1
        self._ready.set()

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        batch = _Batch(self._pending)
        self._pending = {}
        self._append(batch)
        for sid in batch.items:
            self._queued_pos[sid] = batch

    def _unqueue(self, sid: str) -> None:
        old = self._queued_pos.pop(sid, None)
        if old is None:
            return
        self.coalesced += 1
        if isinstance(old, _Batch):
            old.items.pop(sid, None)
            if old.items:
                return
        old.alive = False
        self._live -= 1

    def _put_fixed(self, text: str) -> None:
        self._append(_Fixed(text))
        self._fixed += 1
        self._hub._check_slow(self)

    def _lagging(self) -> bool:
        """Behind: the queue has not been emptied for `lag_s`, or holds `coalesce_at` entries."""
        if self._live >= self._hub.coalesce_at:
            return True
        since = self._behind_since
        return since is not None and self._hub._clock() - since >= self._hub.lag_s

    def _put_single(self, sid: str, text: str) -> None:
        if sid in self._queued_pos and self._lagging():
            self._unqueue(sid)
        entry = _Single(sid, text)
        self._append(entry)
        self._queued_pos[sid] = entry

    def _put_batched(self, sid: str, msg: Message) -> None:
        # An unsent position from an earlier tick means this client is behind: keep the latest.
        self._unqueue(sid)
        self._pending.pop(sid, None)
        self._pending[sid] = msg
        self._hub._pending.add(self)

    # -- routing ---------------------------------------------------------------------------------

    def _in_boxes(self, loc: tuple[float, float] | None) -> bool:
        return loc is not None and any(b.contains(loc[0], loc[1]) for b in self.boxes)

    def _route(self, msg: Message) -> None:
        seq = int(msg["seq"])
        if seq <= self.cursor:
            return
        sid = msg.get("shipment_id")
        if msg.get("type") == "position":
            if not isinstance(sid, str):
                return
            if sid in self.shipments:
                text = self._hub._encode(msg)
                if text is None:
                    return
                self._put_single(sid, text)
            elif self.all or self._in_boxes(protocol.location_of(msg)):
                self._put_batched(sid, msg)
            else:
                return
        else:
            wanted = self.all or (isinstance(sid, str) and sid in self.shipments)
            if not wanted and not (self.boxes and self._in_boxes(self._tenant.locate(msg))):
                return
            text = self._hub._encode(msg)
            if text is None:
                return
            self._put_fixed(text)
        self.cursor = seq

    def _add(self, selector: Selector) -> None:
        t = self._tenant
        if selector.shipments is not None:
            for sid in selector.shipments:
                self.shipments.add(sid)
                t.by_ship.setdefault(sid, set()).add(self)
        if selector.all:
            self.all = True
            t.all.add(self)
        if selector.bbox is not None:
            if selector.bbox not in self.boxes:
                self.boxes.append(selector.bbox)
            t.boxed.add(self)

    def _remove(self, selector: Selector) -> None:
        t = self._tenant
        if selector.shipments is not None:
            for sid in selector.shipments:
                self.shipments.discard(sid)
                followers = t.by_ship.get(sid)
                if followers is not None:
                    followers.discard(self)
                    if not followers:
                        del t.by_ship[sid]
        if selector.all:
            self.all = False
            t.all.discard(self)
        if selector.bbox is not None:
            with contextlib.suppress(ValueError):
                self.boxes.remove(selector.bbox)
            if not self.boxes:
                t.boxed.discard(self)

    # -- joining the live stream -----------------------------------------------------------------

    def _hold(self) -> None:
        """From now until `_activate`, messages for this client are kept aside, unrouted."""
        self._held = []
        self._held_from = self._tenant.cursor
        self._tenant.holding.add(self)

    def _keep(self, msg: Message) -> None:
        assert self._held is not None
        self._held.append(msg)
        if len(self._held) > 10 * self._hub.queue_limit:
            self._hub._close(self, CLOSE_TRY_AGAIN_LATER, "too far behind; reconnect with resume_from")

    def _unhold(self) -> list[Message]:
        held = self._held or []
        self._held = None
        self._held_from = None
        self._tenant.holding.discard(self)
        return held

    def _release(self) -> None:
        """Give up a subscribe: route what was held with the subscriptions as they are."""
        held = self._unhold()
        if self.closed is not None or self._closing is not None:
            return
        for msg in held:
            self._route(msg)
        self._hub._encoded.clear()

    def _gap(self, seq: int) -> tuple[int, int] | bool | None:
        """What must be fetched to join at snapshot `seq`: a (after, upto] range, None, or False
        when the snapshot is older than what this client was already sent."""
        if seq < self.cursor:
            return False
        t = self._tenant
        if t.cursor is None:
            return None
        start = self._held_from if self._held_from is not None else t.cursor
        if seq < start:
            return (seq, start)  # the hub is past the snapshot: fetch what it already dispatched
        if seq > t.cursor and self.subscribed:
            return (t.cursor, seq)  # existing subscriptions need what comes before the snapshot
        return None

    def _activate(
        self,
        anchor: int,
        selector: Selector,
        extra: list[Message],
        snapshot: str | None,
        ships: list[Message],
    ) -> None:
        """Join the live stream at `anchor`: messages up to it follow the old subscriptions, then the
        snapshot (if any), then messages after it follow old and new subscriptions together."""
        t = self._tenant
        if t.cursor is None:
            self._hub._anchor(t, max([anchor, *(int(m["seq"]) for m in extra)]))
        t.learn(anchor, ships)
        for m in extra:
            t.observe(m)
        merged = {int(m["seq"]): m for m in extra}
        for m in self._unhold():
            merged.setdefault(int(m["seq"]), m)
        joined = False
        for seq in sorted(merged):
            if seq <= self.cursor:
                continue
            if not joined and seq > anchor:
                self._join(anchor, selector, snapshot)
                joined = True
            self._route(merged[seq])
        if not joined:
            self._join(anchor, selector, snapshot)
        self._hub._encoded.clear()

    def _join(self, anchor: int, selector: Selector, snapshot: str | None) -> None:
        self._flush_pending()
        if snapshot is not None:
            self._put_fixed(snapshot)
        self._add(selector)
        self.cursor = max(self.cursor, anchor)


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
        self._tenants: dict[int, _Tenant] = {}
        self._pending: set[Client] = set()
        self._over: set[Client] = set()
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
            for c in list(t.clients):
                self._close(c, CLOSE_GOING_AWAY, "server shutting down")

    # -- clients ---------------------------------------------------------------------------------

    def connect(self, tenant_id: int) -> Client:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = _Tenant(tenant_id)
        client = Client(self, tenant)
        tenant.clients.add(client)
        if self.degraded is not None:
            client.push(protocol.error("StreamDegraded", DEGRADED_DETAIL))
        return client

    def disconnect(self, client: Client) -> None:
        if client.closed is None:
            client.closed = (1000, "")
        self._detach(client)

    async def subscribe(self, client: Client, op: Subscribe, source: Source) -> None:
        """Subscribe: a snapshot then live messages, or with `resume_from` the missed messages then
        live ones (a snapshot with `reset` when they are no longer kept)."""
        if self.source is None:
            self.source = source
        async with client._joining:
            if client.closed is None:
                await self._subscribe(client, op, source)

    async def _subscribe(self, client: Client, op: Subscribe, source: Source) -> None:
        reset = False
        if op.resume_from is not None:
            if await self._resume(client, op, source):
                return
            reset = True
        tenant_id = client.tenant_id
        client._hold()
        try:
            for attempt in range(6):
                seq, ships = await source.snapshot(tenant_id, op.selector)
                if client.closed is not None:
                    return
                gap = client._gap(seq)
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
                if client.closed is not None:
                    return
                client._activate(seq, op.selector, extra, protocol.snapshot(seq, ships, reset=reset), ships)
                return
            raise StreamError("could not line a snapshot up with the live stream; subscribe again")
        finally:
            if client.holding:
                client._release()

    def unsubscribe(self, client: Client, selector: Selector) -> None:
        client._remove(selector)

    def close(self, client: Client, code: int, reason: str, *, drain: bool = False) -> None:
        """Close a client: at once, or with `drain` after what is already queued (such as a last
        error frame) has been sent. It gets nothing new either way."""
        if drain and client.closed is None:
            client._closing = (code, reason)
            client._flush_pending()
            client._ready.set()
            self._detach(client)
        else:
            self._close(client, code, reason)

    async def _resume(self, client: Client, op: Subscribe, source: Source) -> bool:
        assert op.resume_from is not None
        resume_from = op.resume_from
        if client.subscribed and resume_from < client.cursor:
            raise ProtocolError(
                "ValidationError",
                f"resume_from {resume_from} is behind what this connection was already sent "
                f"({client.cursor}); subscribe without it",
            )
        latest, _ = await source.snapshot(client.tenant_id, Selector(shipments=frozenset()))
        if resume_from > latest:
            raise ProtocolError("ValidationError", f"resume_from {resume_from} is ahead of the stream ({latest})")
        client._hold()
        try:
            t = client._tenant
            after = resume_from
            if client.subscribed and t.cursor is not None:
                after = min(after, t.cursor)  # existing subscriptions need what comes before it too
            msgs = await self._fetch(source, client.tenant_id, after, None)
            if msgs is None:
                return False
            if client.closed is None:
                client._activate(resume_from, op.selector, msgs, None, [])
            return True
        finally:
            if client.holding:
                client._release()

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

    def _anchor(self, tenant: _Tenant, seq: int) -> None:
        tenant.cursor = seq
        for c in tenant.holding:
            if c._held_from is None:
                c._held_from = seq
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
                    for c in self._clients():
                        c.push(protocol.error("StreamDegraded", DEGRADED_DETAIL))
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
                    for c in list(t.holding):
                        c._keep(msg)
                for c in self._targets(t, msg):
                    if not c.holding:
                        c._route(msg)
            return None
        finally:
            self._encoded.clear()

    def _targets(self, t: _Tenant, msg: Message) -> list[Client]:
        sid = msg.get("shipment_id")
        out = list(t.all)
        if isinstance(sid, str):
            out.extend(t.by_ship.get(sid, ()))
        if t.boxed:
            loc = t.locate(msg)
            if loc is not None:
                out.extend(c for c in t.boxed if c._in_boxes(loc))
        return out

    def _encode(self, msg: Message) -> str | None:
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
        for c in pending:
            c._flush_pending()
        for c in list(self._over):
            self._check_slow(c)

    def _check_slow(self, client: Client) -> None:
        if client._fixed <= self.queue_limit:
            if client._over_since is not None:
                client._over_since = None
                self._over.discard(client)
            return
        now = self._clock()
        if client._over_since is None:
            client._over_since = now
            self._over.add(client)
        elif now - client._over_since >= self.slow_close_s:
            self._close(client, CLOSE_TRY_AGAIN_LATER, "too far behind; reconnect with resume_from")

    def _close(self, client: Client, code: int, reason: str) -> None:
        if client.closed is None:
            client.closed = (code, reason)
            log.info("stream: closing a client of tenant %s (%s %s)", client.tenant_id, code, reason)
        client._queue.clear()
        client._pending.clear()
        client._ready.set()
        self._detach(client)

    def _detach(self, client: Client) -> None:
        t = client._tenant
        if client in t.clients:
            if client.shipments:
                client._remove(Selector(shipments=frozenset(client.shipments)))
            t.all.discard(client)
            t.boxed.discard(client)
            t.holding.discard(client)
            t.clients.discard(client)
        self._pending.discard(client)
        self._over.discard(client)
        if not t.clients and self._tenants.get(t.id) is t:
            del self._tenants[t.id]

    def _clients(self) -> list[Client]:
        return [c for t in self._tenants.values() for c in t.clients]

    def stats(self) -> dict[str, Any]:
        clients = self._clients()
        return {
            "tenants": len(self._tenants),
            "clients": len(clients),
            "degraded": self.degraded is not None,
            "backlog": sum(c.backlog for c in clients),
            "coalesced": sum(c.coalesced for c in clients),
        }
