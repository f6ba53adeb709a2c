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

import httpx

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


def http_client(port: int, connections: int) -> httpx.AsyncClient:
    """HTTP/1.1 keep-alive to one local server, at most `connections` at once. An idle connection is
    let go after 4 s, before the server's keep-alive timeout (uvicorn's: 5 s) closes it, so a request
    never goes out on a connection the server is closing; one that fails to connect is tried again."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=4.0)
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        transport=httpx.AsyncHTTPTransport(limits=limits, retries=1),
        timeout=httpx.Timeout(60.0, pool=None),
        trust_env=False,
    )


async def post_status(client: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]) -> int:
    """The response status, 0 when the request failed (connection lost, timeout)."""
    try:
        r = await client.post(path, content=body, headers=headers)
    except httpx.HTTPError:
        return 0
    return r.status_code


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
    ports: list[int] = conf["ports"]
    per_port = -(-conf["connections"] // len(ports))
    clients = [http_client(port, per_port) for port in ports]

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal counter, acked, errors, first, last
        while time.monotonic() < end:
            start, counter = counter, counter + size
            body = events.batch(start, size)
            if not first:
                first = time.monotonic()
            if await post_status(client, path, body, signed_headers(secret, body)) == 202:
                acked += size
                last = time.monotonic()
            else:
                errors += 1

    cpu = time.process_time()
    try:
        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(conf["connections"])))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return {
        "sent": counter,
        "acked": acked,
        "errors": errors,
        "first": first,
        "last": last,
        "cpu_s": time.process_time() - cpu,
    }


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


# -- a paced mix of MQTT and webhook publishes (e2e, hostile) ------------------------------------
PACED_CONNECTIONS = 16  # per server


def paced_publisher(conf: dict[str, Any], out: Any) -> None:
    """`rate` events/s for `duration` s (from `start_at`, a monotonic time, when given): even events
    by MQTT (one per QoS 1 message, on 100 device topics), odd ones in one signed native webhook
    request per 10 ms tick. Reports the send time of every event, and how many of each kind were
    accepted (answered 202, or acknowledged by the broker)."""
    out.put(_run(_paced_publish(conf)))


async def _paced_publish(conf: dict[str, Any]) -> dict[str, Any]:
    events = Events(conf["trackings"], conf["base"], seed=2)
    mq = MqttLoad(conf, f"bench-paced-{conf['run']}")
    await mq.open()
    topics = [conf["topic"].format(device=f"dev{i}").encode() for i in range(100)]
    sent = array("d")
    path, secret = f"/v1/ingest/{conf['tenant']}/native", conf["secret"]
    clients = [http_client(p, PACED_CONNECTIONS) for p in conf["ports"]]
    # Requests beyond the connections wait here, not in httpx's pool, whose every hand-over looks at
    # each queued request: with the servers behind, that cost the load process a core, taken from them.
    gates = [asyncio.Semaphore(PACED_CONNECTIONS) for _ in clients]
    errors: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()
    webhook_acked = 0

    async def post(k: int, body: bytes, n: int) -> None:
        nonlocal webhook_acked
        try:
            async with gates[k]:
                r = await clients[k].post(path, content=body, headers=signed_headers(secret, body))
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        if r.status_code == 202:
            webhook_acked += n
        else:
            errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1

    if conf.get("start_at"):  # a monotonic time given by the bench: begin then (or now, if later)
        await asyncio.sleep(max(0.0, conf["start_at"] - time.monotonic()))
    cpu = time.process_time()
    rate, counter, requests, started = conf["rate"], 0, 0, time.monotonic()
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
            task = asyncio.create_task(post(requests % len(clients), body, len(batch)))
            requests += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.01)
    produced = time.monotonic() - started
    if tasks:
        await asyncio.gather(*tasks)
    await mq.settle(10)
    mq.close()
    await asyncio.gather(*(c.aclose() for c in clients))
    return {
        "sent": sent,
        "produced_s": produced,
        "errors": errors,
        "webhook_acked": webhook_acked,
        "mqtt_acked": mq.acked,
        "mqtt_sent": mq.sent,
        "cpu_s": time.process_time() - cpu,
    }


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
