"""The benches' websocket clients (`Clients`, used by `trackd bench stream`, `e2e` and `hostile`),
and `trackd bench stream`: websocket fan-out under a fixed event rate, measured end to end.

`Clients` opens websocket clients of one tenant in named groups; each sends its subscribe frames
(waiting for the snapshot of each) and then records, for every position it receives (`position`
frames, and the items of `positions` frames), the event's index and the receipt time
(`time.monotonic()`, the same clock in every process of a run). The producers of every bench make
event `n` occur `n` milliseconds after a `base` time, so the index is read back from `occurred_at`.

`trackd bench stream`: `clients` websocket clients each follow `per_client` of `shipments`
shipments by id, and `map_clients` more follow `all`. Position events are posted to
`POST /v1/events` at `rate` per second for `duration_s`. For every message a client receives, the
latency is the time from the ingest acknowledgement (the 202 of the POST that carried the event)
to its receipt; a message can arrive before the acknowledgement does, which counts as 0. Reported:
delivered messages per second and p50/p99 latency, separately for shipment clients and map clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from lab.bench_figures import percentile
from lab.bench_load import _run

PREFIX = "BENCH-"
TICK_S = 0.01  # the producer posts the events due in each tick as one request
OPEN_TIMEOUT_S = 20.0
OPEN_ATTEMPTS = 3

Subscriptions = Sequence[dict[str, Any]]  # the subscribe ops of one client, without "op"


@dataclass
class Receipts:
    """What one group of clients received: how many frames, and per position (event index,
    receipt time)."""

    frames: int = 0
    idx: array[int] = field(default_factory=lambda: array("q"))
    at: array[float] = field(default_factory=lambda: array("d"))


class Clients:
    """Websocket clients of one tenant, in named groups, spread over `urls`; opened `concurrency`
    at a time (each attempt bounded, tried `OPEN_ATTEMPTS` times)."""

    def __init__(self, urls: Sequence[str], api_key: str, base: float, *, concurrency: int = 8) -> None:
        self.urls = list(urls)
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.base_ms = round(base * 1000)
        self.groups: dict[str, Receipts] = {}
        self._conns: list[ClientConnection] = []
        self._listeners: list[asyncio.Task[None]] = []
        self._gate = asyncio.Semaphore(concurrency)
        self._seen: dict[str, int] = {}  # map clients all get the same items: parse each time once

    def index(self, occurred_at: str) -> int:
        """The event index of an `occurred_at`: its milliseconds after `base`."""
        hit = self._seen.get(occurred_at)
        if hit is None:
            if len(self._seen) > 100_000:
                self._seen.clear()
            ms = round(datetime.fromisoformat(occurred_at).timestamp() * 1000)
            hit = self._seen[occurred_at] = ms - self.base_ms
        return hit

    async def open(self, group: str, clients: Sequence[Subscriptions]) -> None:
        """One client per item of `clients` (its subscribe ops, each answered by a snapshot); each
        listens from its last snapshot on."""
        got = self.groups.setdefault(group, Receipts())
        start = len(self._conns)
        conns = await asyncio.gather(*(self._opened(start + i, ops) for i, ops in enumerate(clients)))
        self._conns.extend(conns)
        self._listeners += [asyncio.create_task(self._listen(c, got)) for c in conns]

    async def _opened(self, i: int, ops: Subscriptions) -> ClientConnection:
        async with self._gate:
            for attempt in range(OPEN_ATTEMPTS):
                try:
                    return await asyncio.wait_for(self._open_one(self.urls[i % len(self.urls)], ops), OPEN_TIMEOUT_S)
                except (TimeoutError, OSError):
                    if attempt == OPEN_ATTEMPTS - 1:
                        raise
            raise AssertionError("unreachable")

    async def _open_one(self, url: str, ops: Subscriptions) -> ClientConnection:
        conn = await connect(url, additional_headers=self.headers, max_size=None, open_timeout=OPEN_TIMEOUT_S)
        try:
            for op in ops:
                await conn.send(orjson.dumps({"op": "subscribe", **op}).decode())
                while orjson.loads(await conn.recv()).get("type") != "snapshot":
                    pass
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _listen(self, conn: ClientConnection, got: Receipts) -> None:
        idx, at = got.idx, got.at
        with contextlib.suppress(Exception):
            async for frame in conn:
                now = time.monotonic()
                msg = orjson.loads(frame)
                got.frames += 1
                kind = msg.get("type")
                if kind == "position":
                    idx.append(self.index(msg["occurred_at"]))
                    at.append(now)
                elif kind == "positions":
                    for item in msg["items"]:
                        idx.append(self.index(item["occurred_at"]))
                        at.append(now)

    async def close(self) -> dict[str, Receipts]:
        """Stop listening, close every client; what each group received."""
        for task in self._listeners:
            task.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._conns), return_exceptions=True)
        self._conns, self._listeners = [], []
        return self.groups


def clients_process(conf: dict[str, Any], ready: Any, stop: Any, out: Any) -> None:
    """`Clients` in a process of its own: `ports`, `api_key`, `base` and `groups` ({name: one list
    of subscribe ops per client}); sets `ready` once every client is subscribed, and after `stop`
    reports {group: Receipts}."""
    out.put(_run(_clients(conf, ready, stop)))


async def _clients(conf: dict[str, Any], ready: Any, stop: Any) -> dict[str, Receipts]:
    urls = [f"ws://127.0.0.1:{p}/v1/stream" for p in conf["ports"]]
    clients = Clients(urls, conf["api_key"], conf["base"])
    try:
        for group, subs in conf["groups"].items():
            await clients.open(group, subs)
        ready.set()
        while not stop.is_set():  # noqa: ASYNC110  # a process-wide event has nothing to await
            await asyncio.sleep(0.05)
    finally:
        got = await clients.close()
    return got


# -- trackd bench stream -------------------------------------------------------------------------
async def _ensure_shipments(http: httpx.AsyncClient, n: int, concurrency: int = 32) -> dict[str, str]:
    """Tracking number -> shipment id for BENCH-00000..; creates the missing ones."""
    found: dict[str, str] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"q": PREFIX, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        r = await http.get("/v1/shipments", params=params)
        r.raise_for_status()
        page = r.json()
        for s in page["items"]:
            if s["tracking_number"].startswith(PREFIX):
                found[s["tracking_number"]] = s["id"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    wanted = [f"{PREFIX}{i:05d}" for i in range(n)]
    missing = [t for t in wanted if t not in found]
    gate = asyncio.Semaphore(concurrency)

    async def create(tracking: str) -> None:
        async with gate:
            r = await http.post("/v1/shipments", json={"tracking_number": tracking, "mode": "road"})
            r.raise_for_status()
            found[tracking] = r.json()["id"]

    await asyncio.gather(*(create(t) for t in missing))
    return {t: found[t] for t in wanted}


async def run(
    base_url: str,
    api_key: str,
    *,
    clients: int = 100,
    shipments: int = 10_000,
    per_client: int = 20,
    map_clients: int = 20,
    rate: float = 200.0,
    duration_s: float = 30.0,
    drain_s: float = 2.0,
    seed: int = 1,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run the benchmark against a running api at `base_url` with a tenant's `api_key`; prints a
    short report to `out` (stdout by default) and returns the numbers."""
    out = out or sys.stdout
    rng = random.Random(seed)
    ws_url = base_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/v1/stream"
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)  # event n occurs n ms after it
    acks: dict[int, float] = {}  # event index -> when the POST that carried it was answered 202
    errors = counter = 0
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:
        ids = await _ensure_shipments(http, shipments)
        trackings = list(ids)
        follow = [rng.sample(list(ids.values()), per_client) for _ in range(clients)]
        ws = Clients([ws_url], api_key, base.timestamp())
        try:
            await ws.open("shipment", [[{"shipments": chosen}] for chosen in follow])
            await ws.open("map", [[{"all": True}] for _ in range(map_clients)])
            posts: set[asyncio.Task[None]] = set()

            async def post(events: list[dict[str, Any]], keys: list[int]) -> None:
                nonlocal errors
                try:
                    r = await http.post("/v1/events", json=events)
                    if r.status_code != 202:
                        errors += 1
                        return
                except httpx.HTTPError:
                    errors += 1
                    return
                now = time.monotonic()
                for key in keys:
                    acks[key] = now

            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < duration_s:
                n = int(rate * elapsed) - counter  # due so far, whatever the sleeps really took
                if n > 0:
                    events, keys = [], []
                    for tracking in rng.sample(trackings, min(n, len(trackings))):
                        counter += 1
                        at = base + timedelta(milliseconds=counter)
                        pos = {"lat": rng.uniform(-60, 70), "lon": rng.uniform(-180, 180), "speed_kmh": 60.0}
                        events.append({"occurred_at": at.isoformat(), "shipment": tracking, "position": pos})
                        keys.append(counter)
                    task = asyncio.create_task(post(events, keys))
                    posts.add(task)
                    task.add_done_callback(posts.discard)
                await asyncio.sleep(TICK_S)
            produced_s = time.monotonic() - started
            if posts:
                await asyncio.gather(*posts)
            await asyncio.sleep(drain_s)
        finally:
            got = await ws.close()

    def summarize(group: str, size: int) -> dict[str, Any]:
        r = got.get(group, Receipts())
        lat = [max(0.0, t - acks[i]) * 1000 for i, t in zip(r.idx, r.at, strict=True) if i in acks]
        return {
            "clients": size,
            "messages": r.frames,
            "positions": len(r.idx),
            "msgs_per_s": r.frames / produced_s,
            "p50_ms": percentile(lat, 0.50),
            "p99_ms": percentile(lat, 0.99),
            "matched": len(lat),
        }

    result: dict[str, Any] = {
        "events": counter,
        "events_per_s": counter / produced_s,
        "post_errors": errors,
        "shipment_clients": summarize("shipment", clients),
        "map_clients": summarize("map", map_clients),
    }
    total = result["shipment_clients"]["messages"] + result["map_clients"]["messages"]
    result["msgs_per_s"] = total / produced_s

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    print(
        f"stream bench: {clients} clients x {per_client} of {shipments} shipments, {map_clients} map clients, "
        f"{result['events_per_s']:.0f} events/s for {produced_s:.0f} s ({errors} failed posts)",
        file=out,
    )
    print(f"delivered: {total} messages, {result['msgs_per_s']:.0f} msgs/s", file=out)
    for name in ("shipment_clients", "map_clients"):
        g = result[name]
        print(
            f"  {name.replace('_', ' ')}: {g['msgs_per_s']:.0f} msgs/s ({g['positions']} positions), "
            f"ack->receipt p50 {ms(g['p50_ms'])}, p99 {ms(g['p99_ms'])}",
            file=out,
        )
    return result
