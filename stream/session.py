"""One websocket's side of the hub (`Client`): its subscriptions, cursor and bounded queue, and
the per-tenant index (`TenantClients`) the hub routes with. Only the hub changes them; the gateway's
relay calls `Client.next_batch()` and `Client.push()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from stream import protocol
from stream.protocol import BBox, Message, Selector

if TYPE_CHECKING:
    from stream.hub import Hub

CLOSE_TRY_AGAIN_LATER = 1013


class ClientClosed(Exception):
    """The hub closed this client; the relay closes the socket with `code`."""

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
    """A tick's positions for a map client, latest per shipment; items may be coalesced away."""

    __slots__ = ("items",)

    def __init__(self, items: dict[str, Message]) -> None:
        super().__init__()
        self.items = items


class TenantClients:
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

    def __init__(self, hub: Hub, tenant: TenantClients) -> None:
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
