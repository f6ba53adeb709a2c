"""normalize -> one transaction -> publish after commit. Every transport goes through here."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from psycopg_pool import AsyncConnectionPool

from ingest import sources
from trackd import ledger, metrics, store
from trackd.errors import TrackdError, ValidationError
from trackd.model import Event, SourceContext
from trackd.relay import Relay
from trackd.store import Tenant

log = logging.getLogger("trackd.ingest")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Pipeline:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        relay: Relay | None,
        evaluator: ledger.Evaluator | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.pool = pool
        self.relay = relay
        self.evaluator = evaluator
        self.clock = clock

    def normalize(self, source: str, payload: bytes, ctx: SourceContext) -> list[Event]:
        events: list[Event] = sources.get(source).normalize(payload, ctx)
        return events

    async def store_events(self, tenant: Tenant, events: list[Event], transport: str) -> ledger.WriteResult:
        """Write a batch in one transaction; returns only once it is durable."""
        started = time.perf_counter()
        async with store.transaction(self.pool) as conn:
            result = await ledger.write_events(conn, tenant.id, events, self.clock(), self.evaluator)
        if self.relay is not None and result.messages:
            self.relay.nudge()
        metrics.INGEST_SECONDS.labels(transport).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(transport).observe(len(events))
        for source, n in Counter(e.source for e in events).items():
            metrics.EVENTS_ACCEPTED.labels(source, transport).inc(n)
        if events:
            metrics.EVENTS_STORED.labels(events[0].source).inc(result.stored)
            metrics.EVENTS_DUPLICATE.labels(events[0].source).inc(result.duplicates)
        for source, code in result.unknown_codes:
            metrics.UNKNOWN_CODES.labels(source, code[:40]).inc()
        return result

    async def reject(self, tenant_id: int | None, source: str, transport: str, error: TrackdError, raw: bytes) -> None:
        """Keep what could not be understood, with the reason."""
        metrics.QUARANTINED.labels(source, transport).inc()
        await store.quarantine_now(self.pool, tenant_id, source, transport, f"{error.code}: {error.detail}", raw)

    async def ingest(
        self,
        tenant: Tenant,
        source: str,
        payload: bytes,
        ctx: SourceContext,
        transport: str,
        raw: bytes | None = None,
    ) -> ledger.WriteResult:
        """Normalize and store one delivery; bad input is quarantined (`raw`, else the payload)."""
        try:
            events = self.normalize(source, payload, ctx)
        except ValidationError as exc:
            await self.reject(tenant.id, source, transport, exc, payload if raw is None else raw)
            raise
        return await self.store_events(tenant, events, transport)
