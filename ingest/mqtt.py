"""The MQTT ingester: QoS 1, a persistent session (optionally a shared subscription), acks after commit.

paho-mqtt runs its network loop in its own thread (reconnecting with backoff by itself); messages
are handed to asyncio, written in batches through the pipeline, and acknowledged only once their
transaction has committed. A message redelivered after a crash has the same event ids, so it is
stored once. Input that cannot be understood goes to quarantine (no one can be answered) and is
then acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.pipeline import Pipeline
from trackd import store
from trackd.errors import TrackdError, Unavailable, ValidationError
from trackd.model import Event, SourceContext
from trackd.settings import Settings

log = logging.getLogger("trackd.mqtt")
MAX_BATCH = 2000
MAX_WAITING = 50_000
BATCH_WINDOW_S = 0.005
BATCHES_IN_FLIGHT = 4
SESSION_EXPIRY_S = 7 * 24 * 3600


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


@dataclass(slots=True)
class Inbound:
    mid: int
    qos: int
    topic: str
    payload: bytes


class MqttIngester:
    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.queue: asyncio.Queue[Inbound] = asyncio.Queue()
        self._room = threading.Semaphore(MAX_WAITING)
        self._inbox: list[Inbound] = []  # from paho's thread, not yet on the queue
        self._inbox_lock = threading.Lock()
        self._closing = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client: mqtt.Client | None = None
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._tenants: dict[str, tuple[float, store.Tenant | None]] = {}

    # -- paho thread side --------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            log.warning("MQTT connect refused: %s", reason)
            return
        topics = subscriptions(self.settings.mqtt_topic_prefix, self.settings.mqtt_share_group)
        if self.settings.mqtt_protocol == "5":
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        else:
            client.subscribe([(t, 1) for t in topics])
        log.info("MQTT connected as %s", self.settings.mqtt_client_id)
        if self.loop:
            self.loop.call_soon_threadsafe(self.connected.set)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, reasons: Any, _p: Any = None) -> None:
        if all(not r.is_failure for r in reasons) and self.loop:
            log.info("MQTT subscribed")
            self.loop.call_soon_threadsafe(self.subscribed.set)
        elif any(r.is_failure for r in reasons):
            log.error("MQTT subscription refused: %s", reasons)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        log.warning("MQTT disconnected (%s); reconnecting", reason)
        if self.loop:
            self.loop.call_soon_threadsafe(self.connected.clear)
            self.loop.call_soon_threadsafe(self.subscribed.clear)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        item = Inbound(msg.mid, msg.qos, msg.topic, bytes(msg.payload))
        assert self.loop is not None
        # Blocks paho's thread while too much is waiting (backpressure to the broker), but never
        # past shutdown: a message dropped then is unacknowledged, so the broker sends it again.
        while not self._room.acquire(timeout=0.2):
            if self._closing.is_set():
                return
        if self._closing.is_set():
            return
        # Hand over in bunches: one wake-up of the event loop for whatever arrived meanwhile.
        with self._inbox_lock:
            self._inbox.append(item)
            first = len(self._inbox) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self._drain_inbox)
            except RuntimeError:  # the loop has closed
                return

    def _drain_inbox(self) -> None:  # on the event loop
        with self._inbox_lock:
            items, self._inbox = self._inbox, []
        for item in items:
            self.queue.put_nowait(item)

    def _client(self) -> mqtt.Client:
        url = urlparse(self.settings.mqtt())
        v5 = self.settings.mqtt_protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.settings.mqtt_client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        if url.username:
            client.username_pw_set(unquote(url.username), unquote(url.password or ""))
        if url.scheme == "mqtts":
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(1, 30)
        client.max_queued_messages_set(0)
        host, port = url.hostname or "127.0.0.1", url.port or 1883
        if not v5:  # a persistent session is clean_session=False in 3.1.1
            client.connect_async(host, port, keepalive=30)
            return client
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = 1000
        client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
        return client

    # -- asyncio side ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = self._client()
        self.client.loop_start()
        try:
            worker = asyncio.create_task(self._consume())
            await stop.wait()
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        finally:
            self._closing.set()
            self.client.disconnect()
            await asyncio.to_thread(self.client.loop_stop)  # joins paho's thread off the event loop

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
                for _ in batch:
                    self._room.release()
                await slots.acquire()
                previous = asyncio.create_task(self._store_then_ack(batch, previous, slots))
                storing.add(previous)
                previous.add_done_callback(storing.discard)
        finally:
            for task in storing:
                task.cancel()
            await asyncio.gather(*storing, return_exceptions=True)

    async def _store_then_ack(
        self, batch: list[Inbound], before: asyncio.Task[None] | None, slots: asyncio.Semaphore
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
            assert self.client is not None
            if stored:
                for item in batch:
                    if item.qos > 0:
                        self.client.ack(item.mid, item.qos)
        finally:
            slots.release()

    async def _handle(self, batch: list[Inbound]) -> None:
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
