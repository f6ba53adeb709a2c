"""Load generators for `trackd bench`, each run in its own process (so it is scheduled apart from
the servers it measures) and reporting one dict on a queue.

Events are trackd position events for the run's shipments, one millisecond apart from `base`, so
that every event is unique and its index can be read back from its `occurred_at`. Each shipment
drives like a vehicle at 60 km/h from its own random start: what a fleet of trackers sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import multiprocessing as mp
import random
import time
from array import array
from typing import Any

from ingest import mqtt_codec, mqtt_conn

EVENT = b'{"occurred_at":%.3f,"shipment":"%s","position":{"lat":%.4f,"lon":%.4f,"speed_kmh":%.1f}}'


class Events:
    """Position events for `trackings`; event `n` occurs `n` ms after `base` (epoch seconds), for a
    random shipment, which has moved on at 60 km/h since its previous event."""

    def __init__(self, trackings: list[str], base: float, seed: int = 1) -> None:
        self.trackings = [t.encode() for t in trackings]
        self.base = base
        self.rng = random.Random(seed)
        self.where = [(self.rng.uniform(-50, 60), self.rng.uniform(-170, 170), 0.0) for _ in trackings]

    def one(self, n: int) -> bytes:
        r, at = self.rng, self.base + n / 1000
        i = r.randrange(len(self.trackings))
        lat, lon, last = self.where[i]
        if last:  # 60 km/h is about 0.00015 degrees a second, here in a random direction
            step, angle = min(at - last, 3600.0) * 0.00015, r.uniform(0, 2 * math.pi)
            lat = max(-80.0, min(80.0, lat + step * math.cos(angle)))
            lon = (lon + step * math.sin(angle) + 180) % 360 - 180
        self.where[i] = (lat, lon, at)
        return EVENT % (at, self.trackings[i], lat, lon, 60.0)

    def batch(self, first: int, count: int) -> bytes:
        return b"[" + b",".join(self.one(n) for n in range(first, first + count)) + b"]"


class HttpConn:
    """A minimal HTTP/1.1 keep-alive client: the load generator must cost the machine little."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """The response status. A kept-alive connection the server closed while idle (nothing read
        back) is opened again and the request sent once more, as HTTP clients do."""
        reused = self.writer is not None
        try:
            return await self._post(path, body, headers)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            self.close()
            return await self._post(path, body, headers)

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        for line in raw.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def signed_headers(secret: str, body: bytes) -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Trackd-Signature": f"sha256={sig}"}


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


# -- webhook ingest ------------------------------------------------------------------------------
def webhook_sender(conf: dict[str, Any], out: Any) -> None:
    """Signed native batches of `batch` events from `connections` connections, spread over the
    servers' `ports`, for `duration` s. Counts the events of each 202 (durable when answered)."""
    out.put(_run(_webhook(conf)))


async def _webhook(conf: dict[str, Any]) -> dict[str, Any]:
    events = Events(conf["trackings"], conf["base"])
    path, secret, size = f"/v1/ingest/{conf['tenant']}/native", conf["secret"], conf["batch"]
    counter = 0
    acked = errors = 0
    first = last = 0.0
    end = time.monotonic() + conf["duration"]

    async def worker(port: int) -> None:
        nonlocal counter, acked, errors, first, last
        conn = HttpConn("127.0.0.1", port)
        try:
            while time.monotonic() < end:
                start, counter = counter, counter + size
                body = events.batch(start, size)
                if not first:
                    first = time.monotonic()
                try:
                    status = await conn.post(path, body, signed_headers(secret, body))
                except (OSError, asyncio.IncompleteReadError):
                    conn.close()
                    conn, status = HttpConn("127.0.0.1", port), 0
                if status == 202:
                    acked += size
                    last = time.monotonic()
                else:
                    errors += 1
        finally:
            conn.close()

    ports: list[int] = conf["ports"]
    await asyncio.gather(*(worker(ports[i % len(ports)]) for i in range(conf["connections"])))
    return {"sent": counter, "acked": acked, "errors": errors, "first": first, "last": last}


# -- MQTT ----------------------------------------------------------------------------------------
# The load goes over the same lean connection as the ingester (ingest/mqtt_conn.py): a general
# client's per-packet system calls would make the load generator, not the broker, the ceiling.
class MqttLoad:
    """One QoS 1 publishing connection that counts the broker's PUBACKs (MQTT 3.1.1, which has no
    receive maximum: the broker takes what it is sent, and `inflight` bounds what is unacknowledged)."""

    def __init__(self, conf: dict[str, Any], client_id: str) -> None:
        self.conf, self.client_id = conf, client_id
        self.acked = self.sent = 0
        self.conn: mqtt_conn.Connection | None = None
        self._pid = 0

    async def open(self) -> None:
        ep = mqtt_conn.Endpoint(
            self.conf["host"], self.conf["port"], False, self.conf.get("username"), self.conf.get("password")
        )
        self.conn, _ = await mqtt_conn.open_connection(
            ep, self.client_id, v5=False, clean=True, keepalive=120, on_message=lambda _m: None
        )
        self.conn.on_puback = self._on_puback

    def _on_puback(self, _pid: int) -> None:
        self.acked += 1

    def send(self, packets: bytes) -> None:
        assert self.conn is not None, "open() first"
        self.conn.send(packets)

    def packet(self, topic: bytes, payload: bytes) -> bytes:
        self._pid = self._pid % 65535 + 1
        self.sent += 1
        return mqtt_codec.publish_packet(topic, payload, 1, self._pid, v5=False)

    async def settle(self, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while self.acked < self.sent and time.monotonic() < deadline:  # noqa: ASYNC110  # counted in a callback
            await asyncio.sleep(0.005)

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.send(mqtt_codec.BYE)
            self.conn.transport.close()


def mqtt_publisher(conf: dict[str, Any], consumed: Any, out: Any) -> None:
    """QoS 1 publishes, one event each, for `duration` s (at most `rate`/s when given), never more
    than `window` ahead of `consumed` (the broker drops QoS 1 messages beyond a client's queue)."""
    out.put(_run(_mqtt_publish(conf, consumed)))


async def _mqtt_publish(conf: dict[str, Any], consumed: Any) -> dict[str, Any]:
    events = Events(conf["trackings"], conf["base"])
    pub = MqttLoad(conf, f"bench-pub-{conf['run']}")
    await pub.open()
    topics = [conf["topic"].format(device=f"dev{i}").encode() for i in range(100)]
    window, rate, n, first = conf["window"], conf.get("rate"), 0, 0.0
    inflight = conf.get("inflight", 5000)
    stamp = conf.get("stamp", False)
    start = time.monotonic()
    end = start + conf["duration"]
    try:
        while (now := time.monotonic()) < end:
            room = min(consumed.value + window - n, inflight - (n - pub.acked))
            if rate:  # paced: no more than `rate` per second so far
                room = min(room, int(rate * (now - start)) + 1 - n)
            if room <= 0:
                await asyncio.sleep(0.001)
                continue
            if not first:
                first = time.monotonic()
            chunk = []
            for _ in range(min(room, 200)):
                payload = events.one(n)
                if stamp:
                    payload = b"%.6f|" % time.monotonic() + payload
                chunk.append(pub.packet(topics[n % 100], payload))
                n += 1
            pub.send(b"".join(chunk))
            await asyncio.sleep(0)  # read the acknowledgements that came meanwhile
        await pub.settle(30)
    finally:
        pub.close()
    return {"published": n, "first": first, "last": time.monotonic()}


def raw_subscriber(conf: dict[str, Any], consumed: Any, last_at: Any, ready: Any, stop: Any, out: Any) -> None:
    """The minimal QoS 1 subscriber: counts messages and acknowledges each on receipt (those of one
    read in one write); with `stamp`, also the latency from the publisher's stamp to receipt."""
    out.put(_run(_raw_subscribe(conf, consumed, last_at, ready, stop)))


async def _raw_subscribe(conf: dict[str, Any], consumed: Any, last_at: Any, ready: Any, stop: Any) -> dict[str, Any]:
    lat = array("d")
    stamp = conf.get("stamp", False)
    pending: list[int] = []
    loop = asyncio.get_running_loop()
    conn: Any = None

    def flush() -> None:
        conn.send(b"".join(mqtt_codec.puback_packet(p) for p in pending))
        pending.clear()

    def on_message(msg: Any) -> None:
        now = time.monotonic()
        if stamp:
            lat.append(now - float(msg.payload[: msg.payload.index(b"|")]))
        consumed.value += 1
        last_at.value = now
        pending.append(msg.pid)
        if len(pending) == 1:
            loop.call_soon(flush)

    ep = mqtt_conn.Endpoint(conf["host"], conf["port"], False, conf.get("username"), conf.get("password"))
    conn, _ = await mqtt_conn.open_connection(
        ep,
        f"bench-sub-{conf['run']}",
        v5=True,
        clean=True,
        keepalive=120,
        on_message=on_message,
        receive_maximum=65535,
    )
    await mqtt_conn.subscribe(conn, 1, [conf["filter"]])
    ready.set()
    deadline = time.monotonic() + conf["duration"] + 120
    while not stop.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110  # a process-wide event
        await asyncio.sleep(0.02)
    conn.send(mqtt_codec.BYE)
    conn.transport.close()
    return {"latency_s": lat}


# -- e2e: a paced mix of MQTT and webhook publishes, and websocket clients ---------------------
def e2e_publisher(conf: dict[str, Any], out: Any) -> None:
    """`rate` events/s for `duration` s: even events by MQTT (one per message), odd ones in one
    signed webhook request per 10 ms tick. Reports the send time of every event."""
    out.put(_run(_e2e_publish(conf)))


async def _e2e_publish(conf: dict[str, Any]) -> dict[str, Any]:
    events = Events(conf["trackings"], conf["base"], seed=2)
    mq = MqttLoad(conf, f"bench-e2e-{conf['run']}")
    await mq.open()
    topics = [conf["topic"].format(device=f"dev{i}").encode() for i in range(100)]
    sent = array("d")
    path, secret = f"/v1/ingest/{conf['tenant']}/native", conf["secret"]
    conns = [HttpConn("127.0.0.1", p) for p in conf["ports"] for _ in range(4)]
    idle = list(conns)
    errors: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def post(body: bytes) -> None:
        conn = idle.pop() if idle else HttpConn("127.0.0.1", conf["ports"][0])
        try:
            status = await conn.post(path, body, signed_headers(secret, body))
            if status != 202:
                errors[str(status)] = errors.get(str(status), 0) + 1
            idle.append(conn)
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            conn.close()

    rate, counter, started = conf["rate"], 0, time.monotonic()
    while (elapsed := time.monotonic() - started) < conf["duration"]:
        batch: list[bytes] = []
        packets: list[bytes] = []
        for _ in range(int(rate * elapsed) - counter):
            payload = events.one(counter)
            now = time.monotonic()
            sent.append(now)
            if counter % 2 == 0:
                packets.append(mq.packet(topics[counter % 100], payload))
            else:
                batch.append(payload)
            counter += 1
        if packets:
            mq.send(b"".join(packets))
        if batch:
            body = b"[" + b",".join(batch) + b"]"
            task = asyncio.create_task(post(body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.01)
    produced = time.monotonic() - started
    if tasks:
        await asyncio.gather(*tasks)
    await mq.settle(10)
    mq.close()
    for conn in conns:
        conn.close()
    return {"sent": sent, "produced_s": produced, "errors": errors}


def ws_clients(conf: dict[str, Any], ready: Any, stop: Any, out: Any) -> None:
    """`follow` (lists of shipment ids) clients and `maps` clients of `all`; reports, per group,
    (event index, receipt time) for every position received."""
    out.put(_run(_ws(conf, ready, stop)))


async def _ws(conf: dict[str, Any], ready: Any, stop: Any) -> dict[str, Any]:
    import orjson
    from websockets.asyncio.client import ClientConnection, connect

    base_ms = round(float(conf["base"]) * 1000)
    urls = [f"ws://127.0.0.1:{p}/v1/stream?token={conf['api_key']}" for p in conf["ports"]]
    got: dict[str, tuple[array[int], array[float]]] = {
        "shipment": (array("q"), array("d")),
        "map": (array("q"), array("d")),
    }

    from datetime import datetime

    seen: dict[str, int] = {}  # the map clients all get the same items: parse each time once

    def index(at: str) -> int:
        hit = seen.get(at)
        if hit is None:
            if len(seen) > 100_000:
                seen.clear()
            hit = seen[at] = round(datetime.fromisoformat(at).timestamp() * 1000) - base_ms
        return hit

    async def open_one(i: int, op: dict[str, Any]) -> ClientConnection:
        conn = await connect(urls[i % len(urls)], max_size=None, open_timeout=60)
        await conn.send(orjson.dumps({"op": "subscribe", **op}))
        while orjson.loads(await conn.recv()).get("type") != "snapshot":
            pass
        return conn

    async def listen(conn: ClientConnection, group: str) -> None:
        idx, at = got[group]
        with_items = group == "map"
        async for frame in conn:
            now = time.monotonic()
            msg = orjson.loads(frame)
            kind = msg.get("type")
            if kind == "position":
                idx.append(index(msg["occurred_at"]))
                at.append(now)
            elif kind == "positions" and with_items:
                for item in msg["items"]:
                    idx.append(index(item["occurred_at"]))
                    at.append(now)

    gate = asyncio.Semaphore(8)

    async def opened(i: int, op: dict[str, Any]) -> ClientConnection:
        async with gate:
            for attempt in range(3):
                try:
                    return await asyncio.wait_for(open_one(i, op), 20)
                except (TimeoutError, OSError):
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    follow: list[list[str]] = conf["follow"]
    conns = await asyncio.gather(*(opened(i, {"shipments": ids}) for i, ids in enumerate(follow)))
    maps = await asyncio.gather(*(opened(i, {"all": True}) for i in range(conf["maps"])))
    listeners = [asyncio.create_task(listen(c, "shipment")) for c in conns]
    listeners += [asyncio.create_task(listen(c, "map")) for c in maps]
    ready.set()
    while not stop.is_set():  # noqa: ASYNC110  # a process-wide event has nothing to await
        await asyncio.sleep(0.05)
    for task in listeners:
        task.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)
    await asyncio.gather(*(c.close() for c in [*conns, *maps]), return_exceptions=True)
    return {g: (idx, at) for g, (idx, at) in got.items()}


def raw_broker(conf: dict[str, Any], settle_s: float) -> tuple[dict[str, Any], int, float, dict[str, Any]]:
    """The broker alone: `mqtt_publisher` to a minimal `raw_subscriber`, each in its own process.
    Returns the publisher's report, how many messages arrived (waiting up to `settle_s` for the
    rest), when the last one did, and the subscriber's report."""
    ctx = mp.get_context("spawn")
    consumed: Any = ctx.Value("q", 0, lock=False)
    last_at: Any = ctx.Value("d", 0.0, lock=False)
    ready, stop = ctx.Event(), ctx.Event()
    sub_out: Any = ctx.Queue()
    pub_out: Any = ctx.Queue()
    sub = ctx.Process(target=raw_subscriber, args=(conf, consumed, last_at, ready, stop, sub_out))
    sub.start()
    ready.wait(15)
    pub = ctx.Process(target=mqtt_publisher, args=(conf, consumed, pub_out))
    pub.start()
    res: dict[str, Any] = pub_out.get(timeout=conf["duration"] + 60)
    deadline = time.monotonic() + settle_s
    while consumed.value < res["published"] and time.monotonic() < deadline:
        time.sleep(0.02)
    got = int(consumed.value)
    stop.set()
    sub_res: dict[str, Any] = sub_out.get(timeout=30)
    pub.join(10)
    sub.join(10)
    return res, got, float(last_at.value), sub_res
