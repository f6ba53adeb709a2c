"""One websocket's side of the hub (`Session`): its subscriptions, cursor and bounded queue, and
the per-tenant index (`TenantSessions`) the hub routes with. Only the hub changes them; the gateway's
relay calls `Session.next_batch()` and `Session.push()`.

This module does not import the hub. What a session needs from the hub is the `HubLink` protocol
(its limits, clock and shared encoder, and the few calls a session makes back); the hub drives a
session only through the public methods of `Session` and `TenantSessions`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from stream import protocol
from stream.protocol import BBox, Message, Selector

CLOSE_TRY_AGAIN_LATER = 1013
TOO_FAR_BEHIND = "too far behind; reconnect with resume_from"


class HubLink(Protocol):
    """What a session needs from the hub that owns it; `stream.hub.Hub` is the implementation."""

    @property
    def queue_limit(self) -> int:
        """The undroppable backlog a session may keep; ten times it held during a subscribe closes it."""
        ...

    @property
    def coalesce_at(self) -> int:
        """Queued entries from which a session is behind (its positions are then coalesced)."""
        ...

    @property
    def lag_s(self) -> float:
        """Seconds a queue may stay non-empty before its session is behind."""
        ...

    def now(self) -> float:
        """The hub's monotonic clock, in seconds."""
        ...

    def encode(self, msg: Message) -> str | None:
        """`msg` as the stream sends it (None: it is not sent), encoded once for every session."""
        ...

    def check_backlog(self, session: Session) -> None:
        """The session's undroppable backlog changed: the hub closes it if it stays over the limit."""
        ...

    def flush_at_tick(self, session: Session) -> None:
        """The session gathered positions: the next tick flushes them as one `positions` message."""
        ...

    def close(self, session: Session, code: int, reason: str) -> None:
        """Close the session at once; it gets nothing more."""
        ...

    def wake(self) -> None:
        """A tenant's cursor was just anchored: the bus reader has it to read."""
        ...


class SessionClosed(Exception):
    """The hub closed this session; the relay closes the socket with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


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
    """A tick's positions for a map session, latest per shipment; items may be coalesced away."""

    __slots__ = ("items",)

    def __init__(self, items: dict[str, Message]) -> None:
        super().__init__()
        self.items = items


class TenantSessions:
    """One tenant's sessions here, indexed for routing, and where its shipments were last seen."""

    def __init__(self, tenant_id: int) -> None:
        self.id = tenant_id
        self.cursor: int | None = None  # highest seq dispatched; None until a session anchors it
        self.sessions: set[Session] = set()
        self.by_ship: dict[str, set[Session]] = {}
        self.all: set[Session] = set()
        self.boxed: set[Session] = set()
        self.holding: set[Session] = set()
        self.where: dict[str, tuple[int, float, float]] = {}  # shipment -> (seq, lat, lon)

    def anchor(self, seq: int) -> None:
        """Start the tenant's cursor at `seq`; sessions that were holding without one hold from it."""
        self.cursor = seq
        for s in self.holding:
            if s._held_from is None:
                s._held_from = seq

    def observe(self, msg: Message) -> None:
        """Remember where a message places its shipment (for `bbox` routing)."""
        sid = msg.get("shipment_id")
        loc = protocol.location_of(msg)
        if loc is None or not isinstance(sid, str):
            return
        seq = int(msg["seq"])
        seen = self.where.get(sid)
        if seen is None or seen[0] < seq:
            self.where[sid] = (seq, loc[0], loc[1])

    def learn(self, seq: int, shipments: Iterable[Message]) -> None:
        """Remember where a snapshot at `seq` places its shipments."""
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
        """Where a message happens: its own position, else where its shipment was last seen."""
        loc = protocol.location_of(msg)
        if loc is not None:
            return loc
        seen = self.where.get(msg.get("shipment_id") or "")
        return (seen[1], seen[2]) if seen else None


class Session:
    """One websocket's side of the hub: its subscriptions, cursor and bounded queue.

    Only the hub changes it, with the methods under "the hub's side"; the relay calls
    `next_batch()` and `push()`.
    """

    def __init__(self, hub: HubLink, tenant: TenantSessions) -> None:
        self._hub = hub
        self.tenant = tenant
        self.tenant_id = tenant.id
        self.cursor = 0  # highest seq queued (or pending) for this session
        self.shipments: set[str] = set()
        self.all = False
        self.boxes: list[BBox] = []
        self.closed: tuple[int, str] | None = None
        self.coalesced = 0  # positions dropped because a newer one replaced them
        self.over_since: float | None = None  # the hub's: since when the backlog is over its limit
        self.joining = asyncio.Lock()  # one subscribe at a time; the hub holds it while subscribing
        self._queue: deque[_Entry] = deque()
        self._live = 0  # alive entries in the queue
        self._fixed = 0  # undroppable entries in the queue
        self._queued_pos: dict[str, _Single | _Batch] = {}
        self._pending: dict[str, Message] = {}
        self._ready = asyncio.Event()
        self._held: list[Message] | None = None
        self._held_from: int | None = None
        self._closing: tuple[int, str] | None = None  # close once what is queued has been sent
        self._behind_since: float | None = None  # when the queue last went from empty to not

    # -- the relay's side ------------------------------------------------------------------------

    @property
    def subscribed(self) -> bool:
        return bool(self.shipments or self.all or self.boxes)

    @property
    def holding(self) -> bool:
        """Between `hold()` and `activate()` or `release()`: messages are kept aside, unrouted."""
        return self._held is not None

    @property
    def backlog(self) -> int:
        """Undroppable messages waiting to be sent."""
        return self._fixed

    async def next_batch(self, max_frames: int = 256) -> list[str]:
        """The next encoded frames to send, in order; waits for some; raises `SessionClosed`."""
        while True:
            if self.closed is not None:
                raise SessionClosed(*self.closed)
            out: list[str] = []
            while self._queue and len(out) < max_frames:
                entry = self._queue.popleft()
                if entry.alive:
                    out.append(self._take(entry))
            if out:
                if not self._queue:
                    self._behind_since = None
                self._hub.check_backlog(self)
                return out
            if self._closing is not None:
                self.closed = self._closing
                raise SessionClosed(*self._closing)
            self._ready.clear()
            await self._ready.wait()

    def push(self, text: str) -> None:
        """Queue a control frame (pong, error) that carries no seq."""
        if self.closed is None:
            self._append(_Fixed(text))
            self._fixed += 1

    # -- the hub's side: ticks and closing -------------------------------------------------------

    def flush(self) -> None:
        """Queue the positions gathered since the last tick, as one `positions` message."""
        self._flush_pending()

    def close_now(self, code: int, reason: str) -> bool:
        """Close at once, dropping what is queued; the relay closes the socket with `code`. True
        when this closed it, False when it was closed already."""
        newly = self.closed is None
        if newly:
            self.closed = (code, reason)
        self._queue.clear()
        self._pending.clear()
        self._ready.set()
        return newly

    def close_after_queued(self, code: int, reason: str) -> None:
        """Close once what is already queued, and what was gathered for the tick, has been sent."""
        self._closing = (code, reason)
        self._flush_pending()
        self._ready.set()

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
            self._behind_since = self._hub.now()
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
        self._hub.check_backlog(self)

    def _lagging(self) -> bool:
        """Behind: the queue has not been emptied for `lag_s`, or holds `coalesce_at` entries."""
        if self._live >= self._hub.coalesce_at:
            return True
        since = self._behind_since
        return since is not None and self._hub.now() - since >= self._hub.lag_s

    def _put_single(self, sid: str, text: str) -> None:
        if sid in self._queued_pos and self._lagging():
            self._unqueue(sid)
        entry = _Single(sid, text)
        self._append(entry)
        self._queued_pos[sid] = entry

    def _put_batched(self, sid: str, msg: Message) -> None:
        # An unsent position from an earlier tick means this session is behind: keep the latest.
        self._unqueue(sid)
        self._pending.pop(sid, None)
        self._pending[sid] = msg
        self._hub.flush_at_tick(self)

    # -- the hub's side: routing -----------------------------------------------------------------

    def in_boxes(self, loc: tuple[float, float] | None) -> bool:
        """Whether `loc` is inside one of this session's `bbox` subscriptions."""
        return loc is not None and any(b.contains(loc[0], loc[1]) for b in self.boxes)

    def route(self, msg: Message) -> None:
        """Queue a message if the subscriptions want it and it is newer than what was queued."""
        seq = int(msg["seq"])
        if seq <= self.cursor:
            return
        sid = msg.get("shipment_id")
        if msg.get("type") == "position":
            if not isinstance(sid, str):
                return
            if sid in self.shipments:
                text = self._hub.encode(msg)
                if text is None:
                    return
                self._put_single(sid, text)
            elif self.all or self.in_boxes(protocol.location_of(msg)):
                self._put_batched(sid, msg)
            else:
                return
        else:
            wanted = self.all or (isinstance(sid, str) and sid in self.shipments)
            if not wanted and not (self.boxes and self.in_boxes(self.tenant.locate(msg))):
                return
            text = self._hub.encode(msg)
            if text is None:
                return
            self._put_fixed(text)
        self.cursor = seq

    def _add(self, selector: Selector) -> None:
        t = self.tenant
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

    def remove(self, selector: Selector) -> None:
        """Unsubscribe: take the selector's parts out of the subscriptions and the tenant's index."""
        t = self.tenant
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

    # -- the hub's side: joining the live stream -------------------------------------------------

    def hold(self) -> None:
        """From now until `activate` (or `release`), messages for this session are kept aside."""
        self._held = []
        self._held_from = self.tenant.cursor
        self.tenant.holding.add(self)

    def keep(self, msg: Message) -> None:
        """Keep a message aside while holding; holding too many closes the session (1013)."""
        assert self._held is not None
        self._held.append(msg)
        if len(self._held) > 10 * self._hub.queue_limit:
            self._hub.close(self, CLOSE_TRY_AGAIN_LATER, TOO_FAR_BEHIND)

    def _unhold(self) -> list[Message]:
        held = self._held or []
        self._held = None
        self._held_from = None
        self.tenant.holding.discard(self)
        return held

    def release(self) -> None:
        """Give up a subscribe: route what was held with the subscriptions as they are. (The hub
        forgets the messages it encoded for this afterwards.)"""
        held = self._unhold()
        if self.closed is not None or self._closing is not None:
            return
        for msg in held:
            self.route(msg)

    def gap(self, seq: int) -> tuple[int, int] | bool | None:
        """What must be fetched to join at snapshot `seq`: a (after, upto] range, None, or False
        when the snapshot is older than what this session was already sent."""
        if seq < self.cursor:
            return False
        t = self.tenant
        if t.cursor is None:
            return None
        start = self._held_from if self._held_from is not None else t.cursor
        if seq < start:
            return (seq, start)  # the hub is past the snapshot: fetch what it already dispatched
        if seq > t.cursor and self.subscribed:
            return (t.cursor, seq)  # existing subscriptions need what comes before the snapshot
        return None

    def activate(
        self,
        anchor: int,
        selector: Selector,
        extra: list[Message],
        snapshot: str | None,
        ships: list[Message],
    ) -> None:
        """Join the live stream at `anchor`: messages up to it follow the old subscriptions, then the
        snapshot (if any), then messages after it follow old and new subscriptions together. (The
        hub forgets the messages it encoded for this afterwards.)"""
        t = self.tenant
        if t.cursor is None:
            t.anchor(max([anchor, *(int(m["seq"]) for m in extra)]))
            self._hub.wake()
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
            self.route(merged[seq])
        if not joined:
            self._join(anchor, selector, snapshot)

    def _join(self, anchor: int, selector: Selector, snapshot: str | None) -> None:
        self._flush_pending()
        if snapshot is not None:
            self._put_fixed(snapshot)
        self._add(selector)
        self.cursor = max(self.cursor, anchor)
