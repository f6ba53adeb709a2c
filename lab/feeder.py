"""Plays simulated shipments against a running trackd, through its real ingest paths only.

Devices and shipments are created over the REST API; carrier feeds are signed webhooks; trackers
publish over MQTT (QoS 1). Nothing is written to the database directly.

Event times are simulation times. trackd refuses events from the future, so the simulation clock
starts `backfill` before the wall clock and runs `speed` times faster until it catches up with it,
then follows it: shipments booked during the catch-up arrive with their history, later ones live.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ingest.mqtt_codec import MqttError
from ingest.mqtt_conn import Publisher, endpoint
from lab.carrier_payloads import Delivery, encode
from lab.simulator import Scenario, iso, simulate

ERROR_LINES_PER_MINUTE = 20


@dataclass(slots=True)
class _Stats:
    sent: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_lines: int = 0
    created: int = 0
    completed: int = 0


class Feeder:
    """The scheduler: a heap of planned events keyed by send time, against a simulation clock."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        mqtt_pub: Publisher,
        *,
        tenant: str,
        secret: str,
        seed: int,
        speed: float,
        backfill: timedelta,
        tag: str,
        topic_prefix: str,
        concurrency: int,
        log: Callable[[str], None],
    ) -> None:
        self.http, self.mqtt, self.tenant, self.secret = http, mqtt_pub, tenant, secret
        self.seed, self.speed, self.tag, self.topic_prefix, self.log = seed, speed, tag, topic_prefix, log
        self.wall0 = datetime.now(UTC)
        self.mono0 = time.monotonic()
        self.sim0 = self.wall0 - backfill
        self.stats = _Stats()
        self.heap: list[tuple[datetime, int, int, Scenario]] = []  # (send_at, seq, index, scenario)
        self.starts: list[tuple[datetime, int]] = []
        self.remaining: dict[int, int] = {}
        self.indexes = itertools.count()
        self.order = itertools.count()
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()

    def now(self) -> datetime:
        elapsed = time.monotonic() - self.mono0
        return min(self.sim0 + timedelta(seconds=elapsed * self.speed), self.wall0 + timedelta(seconds=elapsed))

    def caught_up(self, now: datetime) -> bool:
        return now >= self.wall0 + timedelta(seconds=time.monotonic() - self.mono0) - timedelta(seconds=1)

    def plan_start(self, at: datetime) -> None:
        heapq.heappush(self.starts, (at, next(self.indexes)))

    def _error(self, what: str, detail: str) -> None:
        self.stats.errors[what] += 1
        if self.stats.error_lines < ERROR_LINES_PER_MINUTE:
            self.stats.error_lines += 1
            self.log(f"feeder: {what}: {detail}")

    async def _request(self, what: str, path: str, body: dict[str, Any], ok_conflict: bool = False) -> Any:
        try:
            resp = await self.http.post(path, json=body)
        except httpx.HTTPError as exc:
            self._error(what, f"POST {path} failed: {exc!r}")
            return None
        if resp.status_code == 409 and ok_conflict:
            return None
        if resp.status_code >= 400:
            self._error(what, f"POST {path} -> {resp.status_code}: {resp.text[:500]}")
            return None
        return resp.json() if resp.content else None

    async def start_scenario(self, index: int, at: datetime) -> None:
        s = simulate(index, at, seed=self.seed, tag=self.tag)
        await self._request(
            "devices",
            "/v1/devices",
            {"id": s.device_id, "key": s.device_key, "name": f"{s.lane} tracker {index}"},
            ok_conflict=True,
        )
        live = at >= datetime.now(UTC) - timedelta(minutes=5)
        body = {**s.body, "devices": [s.device_id]} if live else s.body
        created = await self._request("shipments", "/v1/shipments", body, ok_conflict=True)
        if not live and isinstance(created, dict) and "id" in created:
            await self._request(
                "shipments",
                f"/v1/shipments/{created['id']}/devices",
                {"device_id": s.device_id, "from": iso(s.start - timedelta(minutes=1))},
            )
        self.stats.created += 1
        self.remaining[index] = len(s.events)
        for ev in s.events:
            heapq.heappush(self.heap, (ev.send_at, ev.seq, index, s))

    async def _post(self, d: Delivery) -> None:
        try:
            resp = await self.http.post(d.target, content=d.body, headers=d.headers)
            if resp.status_code >= 400:
                self._error(d.source, f"POST {d.target} -> {resp.status_code}: {resp.text[:500]}")
            else:
                self.stats.sent[d.source] += 1
        except httpx.HTTPError as exc:
            self._error(d.source, f"POST {d.target} failed: {exc!r}")
        finally:
            self.slots.release()

    async def dispatch(self, s: Scenario, seq: int, index: int) -> None:
        ev = s.events[seq]
        try:
            d = encode(s, ev, tenant=self.tenant, secret=self.secret, topic_prefix=self.topic_prefix)
        except (ValueError, KeyError) as exc:  # a planned event no feed can carry: a simulator bug
            self._error("encode", f"{s.shipment_id} event {seq}: {exc!r}")
        else:
            if d.transport == "mqtt":
                try:  # QoS 1; published while disconnected, it waits for the connection and counts as sent
                    self.mqtt.publish(d.target, d.body, qos=1)
                except (ValueError, MqttError) as exc:
                    self._error(f"mqtt:{d.source}", f"publish to {d.target} failed: {exc}")
                else:
                    self.stats.sent[f"mqtt:{d.source}"] += 1
            else:
                await self.slots.acquire()
                task = asyncio.create_task(self._post(d))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        self.remaining[index] -= 1
        if not self.remaining[index]:
            del self.remaining[index]
            self.stats.completed += 1
            self.plan_start(self.now())

    async def step(self) -> float:
        """Start and send what is due; returns the real seconds until something else is."""
        now = self.now()
        while self.starts and self.starts[0][0] <= now:
            at, index = heapq.heappop(self.starts)
            await self.start_scenario(index, at)
        for _ in range(5000):
            if not self.heap or self.heap[0][0] > now:
                break
            _, seq, index, s = heapq.heappop(self.heap)
            await self.dispatch(s, seq, index)
        nexts = [q[0][0] for q in (self.heap, self.starts) if q]
        if not nexts:
            return 1.0
        rate = 1.0 if self.caught_up(now) else self.speed
        return min(max((min(nexts) - now).total_seconds() / rate, 0.0), 1.0)

    def report(self) -> None:
        st = self.stats
        sent = " ".join(f"{k}={v}" for k, v in sorted(st.sent.items())) or "none"
        errors = " ".join(f"{k}={v}" for k, v in sorted(st.errors.items())) or "none"
        self.log(
            f"feeder: sim {self.now():%Y-%m-%d %H:%M} active={len(self.remaining)} created={st.created} "
            f"completed={st.completed} sent[{sent}] errors[{errors}]"
        )
        st.sent.clear()
        st.errors.clear()
        st.error_lines = 0

    async def drain(self, grace_s: float = 10.0) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace_s)


async def run(
    base_url: str,
    tenant: str,
    api_key: str,
    ingest_secret: str,
    mqtt_url: str,
    *,
    shipments: int = 300,
    speed: float = 1800.0,
    seed: int = 7,
    stop: asyncio.Event | None = None,
    log: Callable[[str], None] | None = None,
    backfill: timedelta = timedelta(days=45),
    topic_prefix: str = "",
    tag: str | None = None,
    concurrency: int = 32,
    report_every: float = 60.0,
) -> None:
    """Feed `shipments` concurrent simulated shipments to trackd at `base_url` until `stop` is set.

    As a shipment completes, a new one is booked. `tag` namespaces identifiers (default: derived
    from the start time, so reruns against the same tenant do not collide). Errors are logged
    (their count per minute, the first lines with the answer's body); they never end the run.
    """
    say = log or logging.getLogger("trackd.feeder").info
    stop = stop or asyncio.Event()
    tag = tag if tag is not None else _base36(int(time.time()) % 36**6)
    # trackd's own MQTT connection (3.1.1, clean session), which connects again by itself
    publisher = Publisher(endpoint(mqtt_url), f"trackd-feeder-{tag}", inflight=200, reconnect_s=(1.0, 30.0))
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        async with httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=15.0) as http:
            feeder = Feeder(
                http,
                publisher,
                tenant=tenant,
                secret=ingest_secret,
                seed=seed,
                speed=speed,
                backfill=backfill,
                tag=tag,
                topic_prefix=topic_prefix,
                concurrency=concurrency,
                log=say,
            )
            spread = min(backfill, timedelta(days=5)) / max(shipments, 1)
            for k in range(shipments):
                feeder.plan_start(feeder.sim0 + spread * k)
            say(f"feeder: {shipments} shipments from {feeder.sim0:%Y-%m-%d} at x{speed:g} into {base_url}")
            last_report = time.monotonic()
            while not stop.is_set():
                delay = await feeder.step()
                if time.monotonic() - last_report >= report_every:
                    feeder.report()
                    last_report = time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    except TimeoutError:
                        pass
            await feeder.drain()
            feeder.report()
    finally:
        await publisher.close(grace_s=5.0)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out
