"""Webhook senders are woken when deliveries are queued, not only at their next poll.

Real PostgreSQL and the session server: a statement that queues deliveries notifies
`trackd_deliveries` (and a write that queues none does not), and an idle sender slot that hears
it looks at the queue at once, even with a poll an hour apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool

from notify import delivery as hooks
from notify.hook_store import DELIVERIES_CHANNEL
from tests.conftest import RunEnv
from tests.integration.test_hooks import Receiver, shipment, subscribe
from trackd.settings import Settings


def heard(conn: psycopg.Connection[Any], within_s: float, stop_after: int | None = None) -> list[str]:
    """The payloads of the notifications on the deliveries channel that arrive within `within_s`
    (or until `stop_after` did)."""
    got = conn.notifies(timeout=within_s, stop_after=stop_after)
    return [n.payload for n in got if n.channel == DELIVERIES_CHANNEL]


def position(tracking: str) -> dict[str, Any]:
    return {"occurred_at": datetime.now(UTC).isoformat(), "shipment": tracking, "position": {"lat": 1.5, "lon": 2.5}}


def test_queuing_deliveries_notifies_the_senders_and_other_writes_do_not(testenv: RunEnv, make_tenant: Any) -> None:
    subscribed, other = make_tenant("wk"), make_tenant("wq")
    rec = Receiver()
    try:
        hook = subscribe(subscribed, rec.url, ["position"])
        for t, tracking in ((other, "WQ1"), (subscribed, "WK1")):
            shipment(t, tracking)
        with psycopg.connect(testenv.dsn, autocommit=True) as conn:
            conn.execute(f"LISTEN {DELIVERIES_CHANNEL}")
            r = other.http.post("/v1/events", json=position("WQ1"))  # no subscription: nothing queued
            assert r.status_code == 202, r.text
            assert heard(conn, 1.5) == []
            r = subscribed.http.post("/v1/events", json=position("WK1"))
            assert r.status_code == 202, r.text
            assert heard(conn, 10.0, stop_after=1) == [hook["id"]]  # it names the endpoint
            assert heard(conn, 1.0) == []  # one transaction, one notification
    finally:
        rec.close()


async def until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class Counting(hooks.Deliverer):
    """A deliverer whose slots only count their looks at the queue, finding nothing due."""

    looked = 0

    async def deliver_one(self, client: httpx.AsyncClient) -> bool:
        self.looked += 1
        return False  # nothing due: the slot goes idle again


def test_a_notification_wakes_an_idle_slot_long_before_its_poll(testenv: RunEnv) -> None:
    async def scenario() -> tuple[int, int, bool]:
        async with AsyncConnectionPool(testenv.dsn, min_size=1, max_size=2, open=False) as pool:
            state = SimpleNamespace(pool=pool, settings=Settings(), clock=lambda: datetime.now(UTC))
            async with httpx.AsyncClient() as client:
                sender = Counting(state, client, concurrency=1, poll_s=3600.0)
                stop = asyncio.Event()
                task = asyncio.create_task(sender.run(stop))
                try:
                    assert await until(lambda: sender.hearing, 15.0)
                    await asyncio.sleep(0.5)  # the looks of starting up are over
                    before = sender.looked
                    async with await psycopg.AsyncConnection.connect(testenv.dsn, autocommit=True) as conn:
                        await conn.execute("SELECT pg_notify(%s, '')", (DELIVERIES_CHANNEL,))
                    woken = await until(lambda: sender.looked > before, 10.0)
                    return before, sender.looked, woken
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 15.0)

    before, after, woken = asyncio.run(scenario())
    assert woken, f"no look at the queue after the notification ({before} before)"
    assert after == before + 1  # one notification, one slot woken


def test_a_burst_of_announcements_wakes_one_idle_slot_until_it_looks() -> None:
    state = SimpleNamespace(pool=None, settings=Settings(), clock=lambda: datetime.now(UTC))
    sender = hooks.Deliverer(state, concurrency=3)  # type: ignore[arg-type]  # no pool needed here
    idle = [asyncio.Event() for _ in range(3)]
    sender._idle.extend(idle)
    for _ in range(5):
        sender._announce()
    assert [e.is_set() for e in idle] == [True, False, False]
    sender._waking = 0  # the woken slot looked at the queue (as `_slot` counts it)
    sender._announce()
    assert [e.is_set() for e in idle] == [True, True, False]


def test_a_notification_naming_only_endpoints_at_their_limit_here_wakes_no_slot(testenv: RunEnv) -> None:
    limit = Settings().webhook_endpoint_concurrency

    async def scenario() -> list[int]:
        async with AsyncConnectionPool(testenv.dsn, min_size=1, max_size=2, open=False) as pool:
            state = SimpleNamespace(pool=pool, settings=Settings(), clock=lambda: datetime.now(UTC))
            async with httpx.AsyncClient() as client:
                sender = Counting(state, client, concurrency=1, poll_s=3600.0)
                sender._sending.update({"wh_full": limit, "wh_half": limit - 1})  # as its slots count their sends
                stop = asyncio.Event()
                task = asyncio.create_task(sender.run(stop))
                looks = []
                try:
                    assert await until(lambda: sender.hearing, 15.0)
                    await asyncio.sleep(0.5)  # the looks of starting up are over
                    async with await psycopg.AsyncConnection.connect(testenv.dsn, autocommit=True) as conn:
                        for payload in ("wh_full", "wh_full,wh_half", "wh_full", "wh_full,wh_new", ""):
                            before = sender.looked
                            await conn.execute("SELECT pg_notify(%s, %s)", (DELIVERIES_CHANNEL, payload))
                            await until(lambda: sender.looked > before, 2.0)  # noqa: B023  # awaited here
                            looks.append(sender.looked - before)
                    return looks
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 15.0)

    # only the endpoint at its limit: no look; one below it, one unknown, or none named: one look each
    assert asyncio.run(scenario()) == [0, 1, 0, 1, 1]
