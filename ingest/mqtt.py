"""The MQTT ingester: QoS 1, a persistent session (optionally a shared subscription), acks after commit.

The connection runs on the event loop (ingest/mqtt_conn.py): whatever the broker sent is read in
one call and parsed from that buffer, messages are written in batches through the pipeline, and
acknowledged only once their transaction has committed, a batch's acknowledgements in one write.
A message redelivered after a crash or a reconnect has the same event ids, so it is stored once.

One message cannot hold up the others. A message that cannot be understood, or whose payload is
over `TRACKD_MAX_MESSAGE_BYTES` (never read whole: the connection skips it as it streams in, and
over MQTT 5 the broker is told the limit and does not send it), goes to quarantine (no one can be
answered) and is then acknowledged. A tenant's messages that fail to store together are bisected
until the failing one is alone; it is quarantined and the rest stored. Only a database that does
not answer leaves a batch unacknowledged, retried until it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ingest import mqtt_codec, mqtt_conn
from ingest.mqtt_codec import Message, MqttError
from ingest.mqtt_conn import Connection
from ingest.pipeline import Pipeline, Rejection, halves, unexpected
from trackd import metrics, ratelimit, store, tenant_store
from trackd.errors import TrackdError, Unavailable, ValidationError, detached
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
# A message that fails alone while the database answers is tried this often before quarantine.
ALONE_TRIES = 3
ALONE_WAIT_S = 0.5
# A batch that fails for a reason of ours, not of one message, is tried this often before its
# messages are quarantined (so that none stays unacknowledged for ever).
BATCH_TRIES = 3
# The address unattributed MQTT input is sampled under (`ratelimit.may_sample`): it all comes
# through the broker.
SAMPLE_ADDRESS = "mqtt"


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A message read, with its events, waiting to be stored."""

    msg: Message
    source: str
    events: list[Event]


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
                        max_payload=self.settings.max_message_bytes,
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
        found = await tenant_store.tenant_with_secret(self.pipeline.pool, name, self._secret_key())
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
        """Store a batch, then acknowledge it. Its slot is given back once its valid messages are
        stored: keeping its unreadable ones aside (quarantine) holds up only its acknowledgements,
        never the next batch (what is unacknowledged stays within the broker's receive maximum)."""
        held = True

        def stored() -> None:
            nonlocal held
            if held:
                held = False
                slots.release()

        try:
            backoff, failures = 0.2, 0
            kept: set[int] = set()  # the messages quarantined: once, though the batch is tried again
            while True:
                try:
                    if failures < BATCH_TRIES:
                        await self._handle(batch, kept, stored)
                    else:
                        await self._quarantine_batch(batch, kept)
                    break
                except (Unavailable, OSError) as exc:
                    log.warning("MQTT batch not stored, will retry (messages stay unacked): %s", exc)
                except Exception:  # not one message's doing (those are quarantined alone)
                    failures += 1
                    log.exception("MQTT batch of %d messages not stored (attempt %d)", len(batch), failures)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            if before is not None:
                await asyncio.wait([before])  # acknowledgements go in the order of the messages
            conn = self.conn
            if conn is not None:
                # On the connection they came on only: after a reconnect the broker sends what was
                # not acknowledged again, and the copies are stored once and acknowledged then.
                acks = [mqtt_codec.puback_packet(m.pid) for m in batch if m.qos and m.conn == conn.number]
                if acks:
                    conn.send(b"".join(acks))
        finally:
            stored()

    async def _handle(self, batch: list[Message], kept: set[int], stored: Callable[[], None] = lambda: None) -> None:
        """Store a batch; what cannot be understood or stored is quarantined message by message (and
        its id added to `kept`), the rest stored (then `stored` is called). Raises `Unavailable` (or
        OSError) only while the database does not answer."""
        now = self.pipeline.clock()
        per_tenant: dict[str, tuple[store.Tenant, list[_Parsed]]] = {}
        # Kept aside after the batch's valid messages are stored, all in one transaction: poison in a
        # batch must not hold up its valid messages by a commit of its own each.
        rejects: list[tuple[Message, int | None, str, TrackdError]] = []
        for item in batch:
            r = route(item.topic, self.settings.mqtt_topic_prefix)
            if r is None or id(item) in kept:
                continue
            tenant = await self._tenant(r.tenant)
            if item.oversize:
                limit = self.settings.max_message_bytes
                too_big = ValidationError(
                    "body",
                    f"message of {item.oversize} bytes is over the {limit}-byte limit (TRACKD_MAX_MESSAGE_BYTES)",
                )
                rejects.append((item, tenant.id if tenant else None, r.source, too_big))
                continue
            if tenant is None:
                unknown = ValidationError("topic", f"unknown tenant {r.tenant!r} in {item.topic}")
                rejects.append((item, None, r.source, unknown))
                continue
            ctx = SourceContext(tenant=tenant.name, received_at=now, device=r.device)
            try:
                events = self.pipeline.normalize(r.source, item.payload, ctx)
            except TrackdError as exc:
                rejects.append((item, tenant.id, r.source, detached(exc)))
                continue
            except Exception as exc:  # an adapter's fault: logged once, the message kept
                log.exception("MQTT: the message on %s could not be read; quarantined", item.topic)
                rejects.append((item, tenant.id, r.source, unexpected(exc)))
                continue
            if events:
                per_tenant.setdefault(tenant.name, (tenant, []))[1].append(_Parsed(item, r.source, events))
        for tenant, parsed in per_tenant.values():
            await self._store(tenant, parsed, kept)
        stored()
        await self._quarantine_all(rejects, kept)

    async def _quarantine_all(
        self, rejects: list[tuple[Message, int | None, str, TrackdError]], kept: set[int]
    ) -> None:
        """Keep the batch's unreadable messages aside in one transaction (one by one if that fails)."""
        todo = self._sampled([r for r in rejects if id(r[0]) not in kept], kept)
        if not todo:
            return
        try:
            await self.pipeline.reject_many(
                [
                    Rejection(tenant_id, source, error, m.payload, m.oversize or None)
                    for m, tenant_id, source, error in todo
                ],
                "mqtt",
            )
        except (Unavailable, OSError):
            raise
        except Exception:  # one of them broke the transaction: each on its own, logged where it fails
            for m, tenant_id, source, error in todo:
                await self._quarantine(m, kept, tenant_id, source, error)
            return
        kept.update(id(m) for m, *_ in todo)

    @staticmethod
    def _sampled(
        rejects: list[tuple[Message, int | None, str, TrackdError]], kept: set[int]
    ) -> list[tuple[Message, int | None, str, TrackdError]]:
        """`rejects` less those of no tenant (an unknown tenant's topic) that the quarantine sample
        may not keep now: as unattributed HTTP input, at most `ratelimit.may_sample` allows, with
        the broker as their one address. The rest are counted and acknowledged (added to `kept`)."""
        out = []
        for r in rejects:
            if r[1] is None:
                keep = ratelimit.may_sample(SAMPLE_ADDRESS)
                metrics.UNATTRIBUTED.labels(r[2], "sampled" if keep else "dropped").inc()
                if not keep:
                    kept.add(id(r[0]))
                    continue
            out.append(r)
        return out

    async def _store(self, tenant: store.Tenant, parsed: list[_Parsed], kept: set[int]) -> None:
        """Store a tenant's messages in one go; when that fails (and the database answers), bisect
        until the failing message is alone, and quarantine it with its error."""
        failure = await self._try_store(tenant, parsed)
        if failure is None:
            return
        if len(parsed) > 1:
            for part in halves(parsed):
                await self._store(tenant, part, kept)
            return
        for _ in range(ALONE_TRIES - 1):  # a database error may pass; an error of the data does not
            if not isinstance(failure, Unavailable | OSError):
                break
            await asyncio.sleep(ALONE_WAIT_S)
            failure = await self._try_store(tenant, parsed)
            if failure is None:
                return
        one = parsed[0]
        if isinstance(failure, TrackdError) and not isinstance(failure, Unavailable):
            error = failure
        else:
            log.error("MQTT: the message on %s could not be stored; quarantined", one.msg.topic, exc_info=failure)
            error = unexpected(failure)
        await self._quarantine(one.msg, kept, tenant.id, one.source, error)

    async def _try_store(self, tenant: store.Tenant, parsed: list[_Parsed]) -> Exception | None:
        """None once stored, else the error; raised instead when the database does not answer."""
        try:
            await self.pipeline.store_events(tenant, [e for p in parsed for e in p.events], "mqtt")
        except (Unavailable, OSError) as exc:
            if not await self.pipeline.answers():
                raise
            return exc
        except Exception as exc:
            return exc
        return None

    async def _quarantine(
        self, item: Message, kept: set[int], tenant_id: int | None, source: str, error: TrackdError
    ) -> None:
        """Keep a message aside (it is acknowledged after) and add it to `kept`. Only `Unavailable`
        stops that."""
        try:
            await self.pipeline.reject(tenant_id, source, "mqtt", error, item.payload, item.oversize or None)
        except (Unavailable, OSError):
            raise
        except Exception:  # the record of it is this line; the message must not block the rest
            log.exception("MQTT: a message on %s (%s) could not be quarantined; dropped", item.topic, error.detail)
        kept.add(id(item))

    async def _quarantine_batch(self, batch: list[Message], kept: set[int]) -> None:
        """The last resort for a batch that keeps failing as a whole: every message to quarantine."""
        failed = TrackdError("could not be processed with its batch; the error has been logged")
        for item in batch:
            r = route(item.topic, self.settings.mqtt_topic_prefix)
            if r is not None and id(item) not in kept:
                tenant = await self._tenant(r.tenant)
                for m, tenant_id, source, error in self._sampled(
                    [(item, tenant.id if tenant else None, r.source, failed)], kept
                ):
                    await self._quarantine(m, kept, tenant_id, source, error)
