"""trackd's MQTT connection on asyncio, over the packet codec of ingest/mqtt_codec.py: what the
ingester, the bench's load and the demo feeder need, no more.

Why not a general client: a general client's network thread reads a packet in three or four
`recv` calls and writes each acknowledgement with a `send` of its own, and system calls are most
of what a message costs. Here the event loop reads whatever has arrived in one call, every packet
in it is parsed from that buffer, and the acknowledgements of a stored batch leave in one write.

`Connection` is one connection (TCP or TLS) and its read loop; `open_connection`, `subscribe` and
`keep_alive` drive it. `Publisher` publishes over a connection it opens again whenever it drops
(the demo feeder, tests), `PublisherThread` runs one for synchronous code, and `end_session` ends
a broker's session of a client id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlparse

from ingest.mqtt_codec import (
    BYE,
    CONNACK,
    DISCONNECT,
    HEAD_BYTES,
    OVERSIZED,
    PING,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    Message,
    MqttError,
    Reader,
    connect_packet,
    parse_connack,
    parse_disconnect,
    parse_oversized,
    parse_puback,
    parse_publish,
    parse_suback,
    publish_packet,
    subscribe_packet,
)

log = logging.getLogger("trackd.mqtt")

WAIT_S = 10.0  # for the TCP connection, CONNACK and SUBACK each
# Room in a PUBLISH for its topic, packet id and properties beside a payload of the largest size
# accepted: what the ingester announces as its maximum packet size is that size plus this.
HEADROOM = 64 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def endpoint(url: str) -> Endpoint:
    u = urlparse(url)
    tls = u.scheme == "mqtts"
    return Endpoint(
        u.hostname or "127.0.0.1",
        u.port or (8883 if tls else 1883),
        tls,
        unquote(u.username) if u.username else None,
        unquote(u.password) if u.username and u.password is not None else None,  # 3.1.1: no password alone
    )


class Connection(asyncio.Protocol):
    """One connection to the broker. Packets are handled as they are parsed, on the event loop.

    With `max_payload`, a message whose payload is longer is handed on with `oversize` set and only
    its head, and a PUBLISH longer than `max_payload + HEADROOM` is never buffered whole (the
    reader skips it as it streams in): a message too big to read stops nothing."""

    def __init__(
        self, v5: bool, on_message: Callable[[Message], None], number: int, max_payload: int | None = None
    ) -> None:
        self.v5 = v5
        self.on_message = on_message
        self.number = number
        self.max_payload = max_payload
        self.reader = Reader(None if max_payload is None else max_payload + HEADROOM)
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[tuple[bool, int]] = asyncio.get_running_loop().create_future()
        self.acks: dict[int, asyncio.Future[list[int]]] = {}  # SUBACK futures by packet id
        self.on_puback: Callable[[int], None] | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.heard = asyncio.get_running_loop().time()
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(exc)
        waiting: list[asyncio.Future[Any]] = [self.connack, *self.acks.values()]
        for fut in waiting:
            if not fut.done():
                fut.set_exception(ConnectionError("connection to the broker lost"))
        self.acks.clear()

    def data_received(self, data: bytes) -> None:
        self.heard = asyncio.get_running_loop().time()
        try:
            packets = self.reader.feed(data)
            for kind, flags, body in packets:
                if kind == PUBLISH:
                    topic, payload, qos, pid = parse_publish(flags, body, v5=self.v5)
                    if self.max_payload is not None and len(payload) > self.max_payload:
                        self.on_message(Message(topic, payload[:HEAD_BYTES], qos, pid, self.number, len(payload)))
                    else:
                        self.on_message(Message(topic, payload, qos, pid, self.number))
                elif kind == OVERSIZED:
                    topic, head, qos, pid, size = parse_oversized(flags, body, v5=self.v5)
                    self.on_message(Message(topic, head, qos, pid, self.number, size))
                elif kind == PUBACK:
                    if self.on_puback is not None:
                        self.on_puback(parse_puback(body))
                elif kind == CONNACK:
                    if not self.connack.done():
                        self.connack.set_result(parse_connack(body))
                elif kind == SUBACK:
                    pid, codes = parse_suback(body, v5=self.v5)
                    fut = self.acks.pop(pid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(codes)
                elif kind == DISCONNECT:
                    raise MqttError(f"the broker disconnected us (reason {parse_disconnect(body):#x})")
                elif kind != PINGRESP:
                    raise MqttError(f"unexpected packet type {kind} from the broker")
        except (MqttError, IndexError, struct.error, UnicodeDecodeError) as exc:
            log.warning("MQTT: closing the connection: %s", exc)
            if self.transport is not None:
                self.transport.abort()

    def send(self, data: bytes) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    def close(self) -> None:
        """DISCONNECT, then close once what was written has gone (`lost` is done then)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(BYE)
            self.transport.close()

    def pause(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.heard = asyncio.get_running_loop().time()  # silence while paused was ours
            self.transport.resume_reading()


async def open_connection(
    ep: Endpoint,
    client_id: str,
    *,
    v5: bool,
    clean: bool,
    keepalive: int,
    on_message: Callable[[Message], None],
    number: int = 0,
    session_expiry: int = 0,
    receive_maximum: int = 0,
    max_payload: int | None = None,
) -> tuple[Connection, bool]:
    """A connected, accepted connection and whether the broker still had our session.

    `max_payload`: see `Connection`; over MQTT 5 the broker is also told (maximum packet size
    `max_payload + HEADROOM`), and then does not send larger packets at all."""
    loop = asyncio.get_running_loop()
    ctx = ssl.create_default_context() if ep.tls else None
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: Connection(v5, on_message, number, max_payload), ep.host, ep.port, ssl=ctx),
        WAIT_S,
    )
    conn.send(
        connect_packet(
            client_id,
            v5=v5,
            clean=clean,
            keepalive=keepalive,
            username=ep.username,
            password=ep.password,
            session_expiry=session_expiry,
            receive_maximum=receive_maximum,
            maximum_packet_size=0 if max_payload is None else max_payload + HEADROOM,
        )
    )
    try:
        present, code = await asyncio.wait_for(conn.connack, WAIT_S)
    except BaseException:
        if conn.transport is not None:
            conn.transport.abort()
        raise
    if code:
        if conn.transport is not None:
            conn.transport.abort()
        raise MqttError(f"the broker refused the connection (code {code:#x})")
    return conn, present


async def subscribe(conn: Connection, pid: int, filters: list[str], qos: int = 1) -> None:
    fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
    conn.acks[pid] = fut
    conn.send(subscribe_packet(pid, filters, qos, v5=conn.v5))
    codes = await asyncio.wait_for(fut, WAIT_S)
    refused = [f for f, c in zip(filters, codes, strict=False) if c >= 0x80]
    if refused or len(codes) != len(filters):
        raise MqttError(f"subscription refused for {refused or filters}")


async def keep_alive(conn: Connection, keepalive: int) -> None:
    """PINGREQ every half keep-alive; a broker silent for 1.5 keep-alives is gone."""
    loop = asyncio.get_running_loop()
    while not conn.lost.done():
        await asyncio.wait([conn.lost], timeout=keepalive / 2)
        if conn.lost.done():
            return
        if not conn.paused and loop.time() - conn.heard > keepalive * 1.5:  # paused: we are not reading
            log.warning("MQTT: no word from the broker in %.0f s; reconnecting", keepalive * 1.5)
            if conn.transport is not None:
                conn.transport.abort()
            return
        conn.send(PING)


def _ignore(_msg: Message) -> None:
    pass


async def end_session(ep: Endpoint, client_id: str, *, v5: bool = True) -> None:
    """End the broker's session of `client_id`, and what it kept for it: a clean CONNECT, then
    DISCONNECT (v5: no session expiry, so the session ends with the connection)."""
    conn, _ = await open_connection(ep, client_id, v5=v5, clean=True, keepalive=30, on_message=_ignore)
    conn.close()
    await asyncio.wait([conn.lost], timeout=WAIT_S)


@dataclass(slots=True)
class _Outgoing:
    topic: bytes
    payload: bytes
    qos: int
    done: asyncio.Future[None]


class Publisher:
    """Publishes at QoS 0 or 1 (MQTT 3.1.1) over a connection of its own, on the running loop, and
    connects again (with backoff) whenever that drops. What is published while disconnected waits;
    what was sent and not acknowledged when the connection dropped is sent again (DUP) on the next.
    At most `inflight` QoS 1 messages are unacknowledged at a time; the rest wait their turn."""

    def __init__(
        self,
        ep: Endpoint,
        client_id: str,
        *,
        clean: bool = True,
        keepalive: int = 30,
        inflight: int = 100,
        reconnect_s: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        if not 0 < inflight < 0xFFFF:
            raise ValueError("inflight must be between 1 and 65,534")
        self.ep, self.client_id, self.clean, self.keepalive = ep, client_id, clean, keepalive
        self.inflight, self.reconnect_s = inflight, reconnect_s
        self.conn: Connection | None = None
        self.connected = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: deque[_Outgoing] = deque()  # not sent yet
        self._unacked: dict[int, _Outgoing] = {}  # sent at QoS 1, by packet id, in the order sent
        self._pid = 0
        self._kick: asyncio.Future[None] = self._loop.create_future()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task = self._loop.create_task(self._run(), name=f"mqtt-publisher-{client_id}")

    @property
    def pending(self) -> int:
        """Messages the broker does not have yet."""
        return len(self._queue) + len(self._unacked)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[None]:
        """Queue a message. The future is done once the broker has it (its PUBACK; at QoS 0, once
        written), or cancelled if the publisher is closed first. ValueError: MQTT cannot carry it."""
        if qos not in (0, 1):
            raise ValueError("QoS 0 or 1 only")
        if self._closing:
            raise MqttError("the publisher is closed")
        raw = topic.encode()
        if not raw or len(raw) > 0xFFFF:
            raise ValueError("an MQTT topic holds 1 to 65,535 bytes")
        done: asyncio.Future[None] = self._loop.create_future()
        self._queue.append(_Outgoing(raw, payload, qos, done))
        self._idle.clear()
        if not self._kick.done():
            self._kick.set_result(None)
        return done

    async def close(self, grace_s: float = 5.0) -> None:
        """Disconnect once the broker has what was published (or after `grace_s`, connected); what
        it does not have by then is dropped, its futures cancelled."""
        if grace_s > 0 and self.connected.is_set() and not self._idle.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        self._closing = True
        conn = self.conn
        if conn is not None:
            conn.close()
            await asyncio.wait([conn.lost], timeout=WAIT_S)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for m in [*self._queue, *self._unacked.values()]:
            m.done.cancel()
        self._queue.clear()
        self._unacked.clear()
        self._idle.set()

    def _next_pid(self) -> int:
        while True:
            self._pid = self._pid % 0xFFFF + 1
            if self._pid not in self._unacked:
                return self._pid

    def _on_puback(self, pid: int) -> None:
        m = self._unacked.pop(pid, None)
        if m is None:
            return
        if not m.done.done():
            m.done.set_result(None)
        if self._queue and not self._kick.done():
            self._kick.set_result(None)
        elif not self._unacked and not self._queue:
            self._idle.set()

    def _fill(self, conn: Connection) -> None:
        """Send what waits, as far as the in-flight window allows, in one write."""
        if conn.transport is None or conn.transport.is_closing():
            return
        packets: list[bytes] = []
        written: list[_Outgoing] = []
        while self._queue and len(self._unacked) < self.inflight:
            m = self._queue.popleft()
            if m.qos:
                pid = self._next_pid()
                self._unacked[pid] = m
                packets.append(publish_packet(m.topic, m.payload, 1, pid, v5=False))
            else:
                packets.append(publish_packet(m.topic, m.payload, 0, 0, v5=False))
                written.append(m)
        if packets:
            conn.send(b"".join(packets))
        for m in written:
            if not m.done.done():
                m.done.set_result(None)
        if not self._queue and not self._unacked:
            self._idle.set()

    async def _run(self) -> None:
        backoff = self.reconnect_s[0]
        while not self._closing:
            try:
                conn, _ = await open_connection(
                    self.ep, self.client_id, v5=False, clean=self.clean, keepalive=self.keepalive, on_message=_ignore
                )
            except (OSError, TimeoutError, MqttError) as exc:
                reason = str(exc) or type(exc).__name__
                log.info("MQTT publisher %s: no connection (%s); again in %.1f s", self.client_id, reason, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.reconnect_s[1])
                continue
            backoff = self.reconnect_s[0]
            conn.on_puback = self._on_puback
            self.conn = conn
            self.connected.set()
            pinger = self._loop.create_task(keep_alive(conn, self.keepalive))
            try:
                again = [
                    publish_packet(m.topic, m.payload, 1, pid, v5=False, dup=True) for pid, m in self._unacked.items()
                ]
                if again:
                    conn.send(b"".join(again))
                while not conn.lost.done():
                    self._kick = self._loop.create_future()
                    self._fill(conn)
                    ends: list[asyncio.Future[Any]] = [conn.lost, self._kick]
                    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            finally:
                pinger.cancel()
                self.connected.clear()
                self.conn = None
                if conn.transport is not None and not conn.transport.is_closing():
                    conn.transport.abort()  # cancelled, not closed: leave nothing open


class PublisherThread:
    """A `Publisher` for synchronous code: it runs on an event loop in a thread of its own, and
    `publish` answers a concurrent future, done once the broker has the message."""

    def __init__(
        self,
        ep: Endpoint,
        client_id: str,
        *,
        clean: bool = True,
        keepalive: int = 30,
        inflight: int = 100,
        reconnect_s: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mqtt-publisher-{client_id}", daemon=True)
        self._thread.start()

        async def start() -> Publisher:
            return Publisher(
                ep, client_id, clean=clean, keepalive=keepalive, inflight=inflight, reconnect_s=reconnect_s
            )

        self.publisher = asyncio.run_coroutine_threadsafe(start(), self._loop).result()

    @property
    def connected(self) -> bool:
        return self.publisher.connected.is_set()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(self._publish(topic, payload, qos), self._loop)

    async def _publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.publisher.publish(topic, payload, qos)

    def close(self, grace_s: float = 5.0) -> None:
        """`Publisher.close`, then the loop and its thread end."""
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(grace_s), self._loop).result(grace_s + 2 * WAIT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT_S)
            if not self._thread.is_alive():
                self._loop.close()

    async def _shutdown(self, grace_s: float) -> None:
        await self.publisher.close(grace_s)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
