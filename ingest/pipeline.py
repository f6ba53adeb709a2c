"""normalize -> one transaction -> publish after commit. Every transport goes through here.

A tenant's events are written in `PARTS` lanes by shipment reference (or device), one transaction
in flight per lane, so that the lanes' transactions lock different state rows. Deliveries of a
lane that arrive while its write is in flight are written together in its next transaction (group
commit): each caller still returns only once all its events are durable, with its own counts.

A delivery that makes the shared transaction fail cannot fail the others: the group is bisected,
each half written in a transaction of its own (a small one, one delivery at a time), until the
failing delivery is alone; it gets its error and the rest are stored. That holds for errors of the
data, and for a database error while the database answers (`db.ping`): a database that does not
answer fails every caller with `Unavailable` (503, nothing stored, the sender retries). `ingest`
keeps what could not be understood or stored in quarantine, with the reason: the inputs to keep
that wait while a quarantine write is in flight go together in the next one (one statement, one
transaction, one in flight), so that a flood of them costs the valid writes one transaction at a
time, not one each.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from psycopg_pool import AsyncConnectionPool

from ingest import sources
from trackd import db, ledger, metrics, quarantine_store, store
from trackd.errors import TrackdError, Unavailable
from trackd.model import Event, SourceContext
from trackd.store import Tenant
from trackd.times import utcnow

log = logging.getLogger("trackd.ingest")
_T = TypeVar("_T")


GROUP_MAX_EVENTS = 2000  # events of waiting deliveries written in one transaction
# A tenant's events are written in this many lanes, by shipment reference (or device): the lanes'
# transactions lock different state rows, so one lane's insert runs while another's states are
# folded, instead of waiting for its row locks. One transaction in flight per lane.
PARTS = 2
# A writer waits this long for a pooled connection; then its callers get 503 + Retry-After. When the
# database goes away the pool has none to give, and senders should hear so at once, not in 10 s.
CONNECTION_WAIT_S = 2.0
PING_S = 0.5  # after a failed group write: does the database answer at all?
# A failed group of at most this many deliveries is retried one delivery at a time (for so few,
# that takes no more transactions than halving); a larger one is halved.
ALONE_AT = 4
# Inputs kept in quarantine in one transaction at most (and their raw bytes): the deliveries waiting
# beyond that go in the next one (a delivery over it alone goes on its own).
REJECTS_MAX = 1000
REJECTS_MAX_BYTES = 16 << 20


@dataclass(slots=True)
class _Delivery:
    events: list[Event]
    transport: str
    done: asyncio.Future[ledger.WriteResult]


@dataclass(slots=True)
class _Lane:
    """One tenant's deliveries waiting for a writer, and how many writers it has."""

    waiting: deque[_Delivery] = field(default_factory=deque)
    writers: int = 0


@dataclass(slots=True)
class _Rejects:
    """One caller's inputs to keep in quarantine, waiting for the quarantine writer."""

    rows: list[quarantine_store.Kept]
    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input to keep in quarantine: whose, from which source, why, and its bytes (`size`: what
    arrived, when `raw` is only its head)."""

    tenant_id: int | None
    source: str
    error: TrackdError
    raw: bytes
    size: int | None = None


class Pipeline:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        evaluator: ledger.Evaluator | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.pool = pool
        self.evaluator = evaluator
        self.clock = clock
        self._lanes: dict[tuple[int, int], _Lane] = {}
        self._writers: set[asyncio.Task[None]] = set()
        self._rejects: deque[_Rejects] = deque()
        self._rejecter: asyncio.Task[None] | None = None

    def normalize(self, source: str, payload: bytes, ctx: SourceContext) -> list[Event]:
        events: list[Event] = sources.get(source).normalize(payload, ctx)
        return events

    async def store_events(self, tenant: Tenant, events: list[Event], transport: str) -> ledger.WriteResult:
        """Write a delivery (with others of the tenant waiting then); returns once it is durable."""
        parts = split(events)
        if len(parts) == 1:
            part, evs = parts.popitem()
            return await self._enqueue(tenant, part, evs, transport)
        # Every part is settled before the caller hears: an error for any part is the delivery's,
        # the database's own (503) first, and the parts that were stored are found again as
        # duplicates when the sender retries.
        results = await asyncio.gather(
            *(self._enqueue(tenant, p, evs, transport) for p, evs in parts.items()), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = next((e for e in errors if isinstance(e, Unavailable)), errors[0])
            del errors, results  # this frame must not hold what it raises (a cycle, with the whole delivery)
            try:
                raise first
            finally:
                del first
        total = ledger.WriteResult()
        for r in results:
            assert isinstance(r, ledger.WriteResult)
            total.accepted += r.accepted
            total.stored += r.stored
            total.duplicates += r.duplicates
            total.unknown_codes += r.unknown_codes
            total.messages += r.messages
            total.new_ids |= r.new_ids
        return total

    def _enqueue(
        self, tenant: Tenant, part: int, events: list[Event], transport: str
    ) -> asyncio.Future[ledger.WriteResult]:
        delivery = _Delivery(events, transport, asyncio.get_running_loop().create_future())
        key = (tenant.id, part)
        lane = self._lanes.setdefault(key, _Lane())
        lane.waiting.append(delivery)
        if not lane.writers:
            lane.writers += 1
            task = asyncio.create_task(self._write_lane(tenant, key, lane), name=f"trackd-write-{tenant.id}-{part}")
            self._writers.add(task)
            task.add_done_callback(self._writers.discard)
        return delivery.done

    async def _write_lane(self, tenant: Tenant, key: tuple[int, int], lane: _Lane) -> None:
        try:
            await _drain(
                lane.waiting,
                lambda d: (len(d.events), 0),
                (GROUP_MAX_EVENTS, 0),
                lambda group: self._write_group(tenant, group),
                "the delivery was not stored",
            )
        finally:
            lane.writers -= 1
            if not lane.writers and not lane.waiting and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _write_group(self, tenant: Tenant, group: list[_Delivery]) -> None:
        try:
            events = group[0].events if len(group) == 1 else [e for d in group for e in d.events]
            transports = {d.transport for d in group}
            result = await self._write(tenant, events, transports.pop() if len(transports) == 1 else "mixed")
        except Exception as exc:
            if len(group) == 1 or (isinstance(exc, Unavailable) and not await self.answers()):
                for d in group:  # alone, or the database is gone: every caller hears
                    _settle(d, exc=exc)
                return
            # One delivery (or a few) made the transaction fail: bisect until each is alone.
            for part in halves(group):
                await self._write_group(tenant, part)
            return
        claimed: set[str] = set()
        for d in group:
            stored = 0
            for e in d.events:
                if e.event_id in result.new_ids and e.event_id not in claimed:
                    claimed.add(e.event_id)
                    stored += 1
            own = result if len(group) == 1 else ledger.WriteResult(len(d.events), stored, len(d.events) - stored)
            for source, n in Counter(e.source for e in d.events).items():
                metrics.EVENTS_ACCEPTED.labels(source, d.transport).inc(n)
            _settle(d, own)

    async def _write(self, tenant: Tenant, events: list[Event], transport: str) -> ledger.WriteResult:
        started = time.perf_counter()
        async with store.transaction(self.pool, CONNECTION_WAIT_S) as conn:
            result = await ledger.write_events(conn, tenant.id, events, self.clock(), self.evaluator)
        metrics.INGEST_SECONDS.labels(transport).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(transport).observe(len(events))
        stored = Counter(e.source for e in {e.event_id: e for e in events if e.event_id in result.new_ids}.values())
        for source, n in Counter(e.source for e in events).items():
            metrics.EVENTS_STORED.labels(source).inc(stored[source])
            metrics.EVENTS_DUPLICATE.labels(source).inc(n - stored[source])
        for source, n in Counter(source for source, _code in result.unknown_codes).items():
            metrics.UNKNOWN_CODES.labels(source).inc(n)  # the codes themselves are in the events' raw_code
        return result

    async def answers(self) -> bool:
        """Whether the database answers a query now (after a write failed with `Unavailable`)."""
        try:
            await db.ping(self.pool, PING_S)
        except Exception:
            return False
        return True

    async def reject_many(self, rejections: list[Rejection], transport: str) -> None:
        """Keep several inputs that could not be understood; returns once they are durable, with
        those of other callers waiting then (see the module's note). Raises the error of the write
        that held them: `Unavailable` when the database does not answer."""
        if not rejections:
            return
        rows = [
            (r.tenant_id, r.source, transport, f"{r.error.code}: {r.error.detail}", r.raw, r.size) for r in rejections
        ]
        item = _Rejects(rows, asyncio.get_running_loop().create_future())
        self._rejects.append(item)
        if self._rejecter is None:
            self._rejecter = asyncio.create_task(self._write_rejects(), name="trackd-quarantine")
            self._writers.add(self._rejecter)
            self._rejecter.add_done_callback(self._writers.discard)
        await item.done
        for r in rejections:
            metrics.QUARANTINED.labels(r.source, transport).inc()

    async def _write_rejects(self) -> None:
        try:
            await _drain(
                self._rejects,
                lambda w: (len(w.rows), sum(len(r[4]) for r in w.rows)),
                (REJECTS_MAX, REJECTS_MAX_BYTES),
                self._keep,
                "the input was not quarantined",
            )
        finally:
            self._rejecter = None

    async def _keep(self, group: list[_Rejects]) -> None:
        """One transaction for the group; if it fails while the database answers, each caller's in
        one of its own, so that one caller's input cannot fail another's."""
        try:
            async with store.transaction(self.pool) as conn:
                await quarantine_store.quarantine_many(conn, [r for w in group for r in w.rows])
        except Exception as exc:
            if len(group) == 1 or (isinstance(exc, Unavailable) and not await self.answers()):
                for w in group:
                    _settle(w, exc=exc)
                return
            for w in group:
                await self._keep([w])
            return
        for w in group:
            _settle(w, None)

    async def reject(
        self,
        tenant_id: int | None,
        source: str,
        transport: str,
        error: TrackdError,
        raw: bytes,
        size: int | None = None,
    ) -> None:
        """Keep what could not be understood, with the reason (`size`: what arrived, when `raw` is its head)."""
        await self.reject_many([Rejection(tenant_id, source, error, raw, size)], transport)

    async def ingest(
        self,
        tenant: Tenant,
        source: str,
        payload: bytes,
        ctx: SourceContext,
        transport: str,
        raw: bytes | None = None,
    ) -> ledger.WriteResult:
        """Normalize and store one delivery. What cannot be understood or stored is quarantined
        (`raw`, else the payload) and its error raised: a `TrackdError` (4xx) when the input is at
        fault, any other exception when it is unexpected (500, logged by the caller). `Unavailable`
        (the database) quarantines nothing: the sender retries."""
        kept = payload if raw is None else raw
        try:
            events = self.normalize(source, payload, ctx)
        except TrackdError as exc:
            await self.reject(tenant.id, source, transport, exc, kept)
            raise
        except Exception as exc:  # an adapter's fault, not the sender's: kept, then a 500
            await self.reject(tenant.id, source, transport, unexpected(exc), kept)
            raise
        try:
            return await self.store_events(tenant, events, transport)
        except Unavailable:
            raise
        except Exception as exc:
            await self.reject(
                tenant.id, source, transport, exc if isinstance(exc, TrackdError) else unexpected(exc), kept
            )
            raise


def halves(items: list[_T]) -> list[list[_T]]:
    """How a failed group is retried: in halves, or one by one once it is ALONE_AT or fewer."""
    if len(items) <= ALONE_AT:
        return [[item] for item in items]
    half = len(items) // 2
    return [items[:half], items[half:]]


def unexpected(exc: BaseException) -> TrackdError:
    """What quarantine says of an unexpected error (its details are in the log, not shown)."""
    return TrackdError(f"could not be processed ({type(exc).__name__}); the error has been logged")


def split(events: list[Event]) -> dict[int, list[Event]]:
    """A delivery's events by lane, in their order: the same shipment reference (else device) is
    always in the same lane. A delivery of a source that keeps its deliveries whole (DCSA: one
    event may withdraw another), or one that withdraws events, stays whole."""
    if not events or any(e.retracts or _whole(e.source) for e in events):
        return {0: events}
    parts: dict[int, list[Event]] = {}
    for e in events:
        parts.setdefault(lane(e.shipment or (e.refs[0] if e.refs else None) or e.device or ""), []).append(e)
    return parts


def _whole(source: str) -> bool:
    adapter = sources.ADAPTERS.get(source)
    return adapter is not None and adapter.whole


def lane(ref: str) -> int:
    """The write lane of a shipment reference or device id."""
    return zlib.crc32(ref.encode()) % PARTS


_W = TypeVar("_W", _Delivery, _Rejects)


async def _drain(
    waiting: deque[_W],
    weigh: Callable[[_W], tuple[int, int]],
    caps: tuple[int, int],
    write: Callable[[list[_W]], Awaitable[None]],
    lost: str,
) -> None:
    """Write what waits, in groups: the first waiting, with those after it while the group's
    weights stay within `caps`. Cancelled (shutting down), every caller still waiting hears so."""
    while waiting:
        group: list[_W] = [waiting.popleft()]
        total = weigh(group[0])
        while waiting:
            more = weigh(waiting[0])
            grown = (total[0] + more[0], total[1] + more[1])
            if grown[0] > caps[0] or grown[1] > caps[1]:
                break
            group.append(waiting.popleft())
            total = grown
        try:
            await write(group)
        except BaseException:  # nobody may wait for ever
            for d in (*group, *waiting):
                _settle(d, exc=Unavailable(f"server shutting down; {lost}"))
            waiting.clear()
            raise


def _settle(
    d: _Delivery | _Rejects, result: ledger.WriteResult | None = None, exc: BaseException | None = None
) -> None:
    """Hand a caller its outcome, unless it stopped waiting (its input may still be stored)."""
    if d.done.done():
        return
    if exc is not None:
        d.done.set_exception(exc)
    elif isinstance(d, _Rejects):
        d.done.set_result(None)
    else:
        assert result is not None
        d.done.set_result(result)
