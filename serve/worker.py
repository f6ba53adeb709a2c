"""The `worker` role: time-based rules, retention, outbox upkeep, notification delivery and the
pull of DCSA feeds (`ingest.poller`).

Each job takes an advisory lock for its run, so many workers share the work without doing it twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from api.deps import AppState
from ingest.poller import Poller
from notify import ssrf
from notify.delivery import Deliverer
from trackd import quarantine_store, retention_store, store

log = logging.getLogger("trackd.worker")
RETENTION_LOCK = 7_242_019_010
TICK_LOCK = 7_242_019_011


class Worker:
    def __init__(self, state: AppState, tick_s: float = 30.0, retention_s: float = 3600.0) -> None:
        self.state = state
        self.tick_s = tick_s
        self.retention_s = retention_s

    async def run(self, stop: asyncio.Event) -> None:
        jobs: list[Awaitable[None]] = [
            self._every(stop, self.tick_s, self.tick_rules, "rules"),
            self._every(stop, self.retention_s, self.retention, "retention"),
        ]
        jobs.append(Deliverer(self.state).run(stop))
        allow_private = self.state.settings.webhook_allow_private
        jobs.append(Poller(self.state, guard=lambda url: ssrf.check_url(url, allow_private)).run(stop))
        await asyncio.gather(*jobs)

    async def _every(self, stop: asyncio.Event, period: float, job: Callable[[], Awaitable[Any]], name: str) -> None:
        while not stop.is_set():
            try:
                await job()
            except Exception as exc:
                log.warning("%s job failed: %s", name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            try:
                await asyncio.wait_for(stop.wait(), period)
            except TimeoutError:
                pass

    async def tick_rules(self) -> int:
        """Re-evaluate open shipments so time-based rules (no signal, dwell) fire with no event."""
        async with store.transaction(self.state.pool) as conn:
            if not await store.try_job_lock(conn, TICK_LOCK):
                return 0
            n: int = await self.state.evaluator.tick(conn, self.state.clock())
        return n

    async def retention(self) -> None:
        """Each tenant's events and positions past its retention (in batches), then the outbox and
        the unattributed sample."""
        s = self.state.settings
        if await retention_store.purge(self.state.pool, s.retention_days, RETENTION_LOCK) is None:
            return
        async with store.transaction(self.state.pool) as conn:
            if not await store.try_job_lock(conn, RETENTION_LOCK):
                return
            await store.purge_history(conn, s.outbox_retention_hours)
            await quarantine_store.purge_quarantine_sample(conn)
