"""The MQTT ingester: QoS 1, a persistent session (optionally a shared subscription), acks after commit.

The connection runs on the event loop (ingest/mqtt_conn.py): whatever the broker sent is read in
one call and parsed from that buffer, messages are written in batches through the pipeline, and
acknowledged only once their transaction has committed, a batch's acknowledgements in one write.
A message redelivered after a crash or a reconnect has the same event ids, so it is stored once.
Input that cannot be understood goes to quarantine (no one can be answered) and is then
acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from ingest import mqtt_codec, mqtt_conn
from ingest.mqtt_codec import Message, MqttError
from ingest.mqtt_conn import Connection
from ingest.pipeline import Pipeline
from trackd import store
from trackd.errors import TrackdError, Unavailable, ValidationError
from trackd.model import Event, SourceContext
from trackd.settings import Settings

log = logging.getLogger("trackd.mqtt")
MAX_BATCH = 2000
MAX_WAITING = 50_000  # messages received and not yet in a batch: past this, reading stops
BATCH_WINDOW_S = 0.005
BATCHES_IN_FLIGHT = 4
SESSION_EXPIRY_S = 7 * 24 * 3600
# Unacknowledged messages a v5 broker may send us. Acknowledgements wait for the commit, so this is
# what may be on the way while batches are written; what is past it waits in the broker's queue,
# which a broker with default limits keeps short (Mosquitto: 1,000, then it drops QoS 1 messages).
RECEIVE_MAXIMUM = 20_000
KEEPALIVE_S = 30
RECONNECT_S = (1.0, 30.0)  # the first wait after a lost connection, and the longest


@dataclass(frozen=True, slots=True)
class Route:
    source: str
    tenant: str
    device: str


def route(topic: str, prefix: str = "") -> Route | None:
    """The source, tenant and device of a topic, or None for a topic trackd does not read."""
    if prefix:
        if not topic.startswith(prefix):
            return None
        topic = topic[len(prefix) :]
    parts = topic.split("/")
    if len(parts) == 5 and parts[0] == "trackd" and parts[2] == "devices" and parts[4] == "events":
        if parts[1] and parts[3]:
            return Route("native", parts[1], parts[3])
    if parts[0] == "owntracks" and (len(parts) == 3 or (len(parts) == 4 and parts[3] == "event")):
        if parts[1] and parts[2]:
            return Route("owntracks", parts[1], parts[2])
    return None


def subscriptions(prefix: str, group: str) -> list[str]:
    share = f"$share/{group}/" if group else ""
    return [
        f"{share}{prefix}trackd/+/devices/+/events",
        f"{share}{prefix}owntracks/+/+",
        f"{share}{prefix}owntracks/+/+/event",
    ]


class MqttIngester:
    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.conn: Connection | None = None
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._connections = 0
        self._tenants: dict[str, tuple[float, store.Tenant | None]] = {}

    def _on_message(self, msg: Message) -> None:
        self.queue.put_nowait(msg)
        if self.queue.qsize() >= MAX_WAITING and self.conn is not None:
            self.conn.pause()  # backpressure: the broker holds the rest until we read again

    async def run(self, stop: asyncio.Event) -> None:
        session = asyncio.create_task(self._session(stop), name="mqtt-session")
        worker = asyncio.create_task(self._consume(), name="mqtt-consume")
        try:
            await stop.wait()
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await session

    async def _session(self, stop: asyncio.Event) -> None:
        """Connect, subscribe, keep the connection alive; reconnect with backoff until `stop`."""
        v5 = self.settings.mqtt_protocol == "5"
        ep = mqtt_conn.endpoint(self.settings.mqtt())
        topics = subscriptions(self.settings.mqtt_topic_prefix, self.settings.mqtt_share_group)
        stopping = asyncio.create_task(stop.wait())
        backoff = RECONNECT_S[0]
        try:
            while not stop.is_set():
                self._connections += 1
                conn: Connection | None = None
                reason: object = None
                try:
                    conn, _present = await mqtt_conn.open_connection(
                        ep,
                        self.settings.mqtt_client_id,
                        v5=v5,
                        clean=False,  # a persistent session: what arrives while we are away waits
                        keepalive=KEEPALIVE_S,
                        on_message=self._on_message,
                        number=self._connections,
                        session_expiry=SESSION_EXPIRY_S if v5 else 0,
                        receive_maximum=RECEIVE_MAXIMUM if v5 else 0,
                    )
                    self.conn = conn
                    self.connected.set()
                    log.info("MQTT connected as %s", self.settings.mqtt_client_id)
                    await mqtt_conn.subscribe(conn, 1, topics)
                    self.subscribed.set()
                    log.info("MQTT subscribed")
                    backoff = RECONNECT_S[0]
                    pinger = asyncio.create_task(mqtt_conn.keep_alive(conn, KEEPALIVE_S))
                    ends: list[asyncio.Future[Any]] = [conn.lost, stopping]
                    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
                    pinger.cancel()
                    reason = conn.lost.result() if conn.lost.done() else None
                except MqttError as exc:
                    reason = exc
                    log.error("MQTT: %s", exc)
                except (OSError, TimeoutError) as exc:
                    reason = str(exc) or type(exc).__name__
                except Exception as exc:  # never give up on the broker: log it and connect again
                    reason = exc
                    log.exception("MQTT connection failed")
                finally:
                    self.connected.clear()
                    self.subscribed.clear()
                    if conn is not None and conn.transport is not None:
                        if stop.is_set():
                            conn.send(mqtt_codec.BYE)
                            conn.transport.close()
                        else:
                            conn.transport.abort()
                if stop.is_set():
                    return
                log.warning("MQTT disconnected (%s); reconnecting in %.0f s", reason or "closed", backoff)
                await asyncio.wait([stopping], timeout=backoff)
                backoff = min(backoff * 2, RECONNECT_S[1])
        finally:
            stopping.cancel()

    async def _tenant(self, name: str) -> store.Tenant | None:
        hit = self._tenants.get(name)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        found = await store.tenant_with_secret(self.pipeline.pool, name, self._secret_key())
        tenant = found[0] if found else None
        self._tenants[name] = (time.monotonic() + (30 if tenant else 5), tenant)
        return tenant

    def _secret_key(self) -> str | None:
        return self.settings.secret_key.get_secret_value() if self.settings.secret_key else None

    async def _consume(self) -> None:
        """Gather messages into batches; several batches are stored at once (the pipeline groups
        them), and each is acknowledged once stored, in the order the broker sent them."""
        slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        previous: asyncio.Task[None] | None = None
        storing: set[asyncio.Task[None]] = set()
        try:
            while True:
                batch = [await self.queue.get()]
                deadline = time.monotonic() + BATCH_WINDOW_S
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self.queue.get_nowait())
                    except asyncio.QueueEmpty:
                        if time.monotonic() >= deadline:
                            break
                        await asyncio.sleep(0.001)
                if self.conn is not None and self.conn.paused and self.queue.qsize() < MAX_WAITING // 2:
                    self.conn.resume()
                await slots.acquire()
                previous = asyncio.create_task(self._store_then_ack(batch, previous, slots))
                storing.add(previous)
                previous.add_done_callback(storing.discard)
        finally:
            for task in storing:
                task.cancel()
            await asyncio.gather(*storing, return_exceptions=True)

    async def _store_then_ack(
        self, batch: list[Message], before: asyncio.Task[None] | None, slots: asyncio.Semaphore
    ) -> None:
        try:
            stored, backoff = False, 0.2
            while True:
                try:
                    await self._handle(batch)
                    stored = True
                    break
                except (Unavailable, OSError) as exc:
                    log.warning("MQTT batch not stored, will retry (messages stay unacked): %s", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                except Exception:  # not acknowledged: the broker sends it again after a reconnect
                    log.exception("MQTT batch of %d messages not stored", len(batch))
                    break
            if before is not None:
                await asyncio.wait([before])  # acknowledgements go in the order of the messages
            conn = self.conn
            if stored and conn is not None:
                # On the connection they came on only: after a reconnect the broker sends what was
                # not acknowledged again, and the copies are stored once and acknowledged then.
                acks = [mqtt_codec.puback_packet(m.pid) for m in batch if m.qos and m.conn == conn.number]
                if acks:
                    conn.send(b"".join(acks))
        finally:
            slots.release()

    async def _handle(self, batch: list[Message]) -> None:
        now = self.pipeline.clock()
        per_tenant: dict[str, tuple[store.Tenant, list[Event]]] = {}
        for item in batch:
            r = route(item.topic, self.settings.mqtt_topic_prefix)
            if r is None:
                continue
            tenant = await self._tenant(r.tenant)
            if tenant is None:
                await self.pipeline.reject(
                    None,
                    r.source,
                    "mqtt",
                    ValidationError("topic", f"unknown tenant {r.tenant!r} in {item.topic}"),
                    item.payload,
                )
                continue
            ctx = SourceContext(tenant=tenant.name, received_at=now, device=r.device)
            try:
                events = self.pipeline.normalize(r.source, item.payload, ctx)
            except ValidationError as exc:
                await self.pipeline.reject(tenant.id, r.source, "mqtt", exc, item.payload)
                continue
            except TrackdError as exc:  # pragma: no cover - adapters raise ValidationError only
                await self.pipeline.reject(tenant.id, r.source, "mqtt", exc, item.payload)
                continue
            per_tenant.setdefault(tenant.name, (tenant, []))[1].extend(events)
        for tenant, events in per_tenant.values():
            if events:
                await self.pipeline.store_events(tenant, events, "mqtt")
