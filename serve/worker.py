"""The `worker` role: time-based rules, retention, outbox upkeep and notification delivery.

Each job takes an advisory lock for its run, so many workers share the work without doing it twice.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from api.deps import AppState
from trackd import store

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
        try:
            hooks: Any = importlib.import_module("notify.delivery")
        except ModuleNotFoundError:
            hooks = None
        if hooks is not None:
            jobs.append(hooks.Deliverer(self.state).run(stop))
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
        ev: Any = self.state.evaluator
        if ev is None:
            return 0
        async with store.transaction(self.state.pool) as conn:
            got = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (TICK_LOCK,))).fetchone()
            if not got or not got["ok"]:
                return 0
            n: int = await ev.tick(conn, self.state.pipeline.clock())
        return n

    async def retention(self) -> None:
        s = self.state.settings
        async with store.transaction(self.state.pool) as conn:
            got = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (RETENTION_LOCK,))).fetchone()
            if not got or not got["ok"]:
                return
            ts = await (await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).fetchone()
            if ts is None:  # TimescaleDB's retention policy does this where it runs
                for table in ("events", "positions"):
                    await conn.execute(
                        f"DELETE FROM {table} WHERE occurred_at < now() - make_interval(days => %s)",
                        (s.retention_days,),
                    )
            await conn.execute(
                "DELETE FROM outbox o USING relay_marks m WHERE o.tenant_id = m.tenant_id AND o.seq <= m.seq"
                " AND o.created_at < now() - make_interval(hours => %s)",
                (s.outbox_retention_hours,),
            )
