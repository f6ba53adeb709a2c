"""`trackd bench stream`: websocket fan-out under a fixed event rate, measured end to end.

`clients` websocket clients each follow `per_client` of `shipments` shipments by id, and
`map_clients` more follow `all`. Position events are posted to `POST /v1/events` at `rate` per
second for `duration_s`. For every message a client receives, the latency is the time from the
ingest acknowledgement (the 202 of the POST that carried the event) to its receipt; a message can
arrive before the acknowledgement does, which counts as 0. Reported: delivered messages per
second and p50/p99 latency, separately for shipment clients and map clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

PREFIX = "BENCH-"
TICK_S = 0.01  # the producer posts the events due in each tick as one request


@dataclass
class _Tally:
    frames: int = 0
    items: int = 0
    receipts: list[tuple[tuple[str, float], float]] = field(default_factory=list)


def _ts(value: Any) -> float:
    return round(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp(), 3)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


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


async def _listen(conn: ClientConnection, tally: _Tally, stop: asyncio.Event) -> None:
    with contextlib.suppress(Exception):
        while not stop.is_set():
            frame = await conn.recv()
            now = time.monotonic()
            msg = orjson.loads(frame)
            tally.frames += 1
            kind = msg.get("type")
            if kind == "position":
                tally.items += 1
                tally.receipts.append(((msg["shipment_id"], _ts(msg["occurred_at"])), now))
            elif kind == "positions":
                for item in msg["items"]:
                    tally.items += 1
                    tally.receipts.append(((item["shipment_id"], _ts(item["occurred_at"])), now))


async def _open(url: str, api_key: str, op: dict[str, Any]) -> ClientConnection:
    conn = await connect(url, additional_headers={"Authorization": f"Bearer {api_key}"}, max_size=None)
    await conn.send(orjson.dumps({"op": "subscribe", **op}).decode())
    while orjson.loads(await conn.recv()).get("type") != "snapshot":
        pass
    return conn


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
    headers = {"Authorization": f"Bearer {api_key}"}
    ws_url = base_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/v1/stream"
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:
        ids = await _ensure_shipments(http, shipments)
        trackings = list(ids)
        follow = [rng.sample(list(ids.values()), per_client) for _ in range(clients)]
        conns: list[ClientConnection] = []
        try:
            for chosen in follow:
                conns.append(await _open(ws_url, api_key, {"shipments": chosen}))
            for _ in range(map_clients):
                conns.append(await _open(ws_url, api_key, {"all": True}))
            tallies = [_Tally() for _ in conns]
            stop = asyncio.Event()
            listeners = [asyncio.create_task(_listen(c, t, stop)) for c, t in zip(conns, tallies, strict=True)]
            acks: dict[tuple[str, float], float] = {}
            errors = 0
            posts: set[asyncio.Task[None]] = set()
            base = datetime.now(UTC) - timedelta(hours=6)
            counter = 0

            async def post(events: list[dict[str, Any]], keys: list[tuple[str, float]]) -> None:
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
                        keys.append((ids[tracking], round(at.timestamp(), 3)))
                    task = asyncio.create_task(post(events, keys))
                    posts.add(task)
                    task.add_done_callback(posts.discard)
                await asyncio.sleep(TICK_S)
            produced_s = time.monotonic() - started
            if posts:
                await asyncio.gather(*posts)
            await asyncio.sleep(drain_s)
            stop.set()
            for task in listeners:
                task.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)
        finally:
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    def summarize(group: list[_Tally]) -> dict[str, Any]:
        lat = [max(0.0, t_recv - acks[key]) * 1000 for t in group for key, t_recv in t.receipts if key in acks]
        frames = sum(t.frames for t in group)
        return {
            "clients": len(group),
            "messages": frames,
            "positions": sum(t.items for t in group),
            "msgs_per_s": frames / produced_s,
            "p50_ms": _pct(lat, 0.50),
            "p99_ms": _pct(lat, 0.99),
            "matched": len(lat),
        }

    result: dict[str, Any] = {
        "events": counter,
        "events_per_s": counter / produced_s,
        "post_errors": errors,
        "shipment_clients": summarize(tallies[:clients]),
        "map_clients": summarize(tallies[clients:]),
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
