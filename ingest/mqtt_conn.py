"""A small MQTT 3.1.1 / 5 client on asyncio: what the ingester (and the bench's load) needs, no more.

Why not a general client: a general client's network thread reads a packet in three or four
`recv` calls and writes each acknowledgement with a `send` of its own, and system calls are most
of what a message costs. Here the event loop reads whatever has arrived in one call, every packet
in it is parsed from that buffer, and the acknowledgements of a stored batch leave in one write.

Covered: CONNECT (clean or persistent session, username/password, v5 session expiry and receive
maximum), SUBSCRIBE, PUBLISH in both directions at QoS 0 and 1, PUBACK, PINGREQ keep-alive and
DISCONNECT, over TCP or TLS. Not covered: QoS 2, will messages, v5 authentication exchanges.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlparse

log = logging.getLogger("trackd.mqtt")

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
MAX_PACKET = 16 * 1024 * 1024  # a broker sending more than this in one packet is not one we read
WAIT_S = 10.0  # for the TCP connection, CONNACK and SUBACK each
PING = b"\xc0\x00"
BYE = b"\xe0\x00"


class MqttError(Exception):
    """The broker refused us, or sent what MQTT does not allow."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 0xFFFF:
        raise ValueError("an MQTT string holds at most 65,535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    v5: bool,
    clean: bool,
    keepalive: int,
    username: str | None = None,
    password: str | None = None,
    session_expiry: int = 0,
    receive_maximum: int = 0,
) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _utf8("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", keepalive)
    if v5:
        props = b""
        if session_expiry:
            props += b"\x11" + struct.pack("!I", session_expiry)
        if receive_maximum:
            props += b"\x21" + struct.pack("!H", receive_maximum)
        body += varint(len(props)) + props
    body += _utf8(client_id)
    if username is not None:
        body += _utf8(username)
    if password is not None:
        body += _utf8(password)
    return _packet(CONNECT, 0, body)


def subscribe_packet(pid: int, filters: list[str], qos: int, *, v5: bool) -> bytes:
    body = struct.pack("!H", pid) + (b"\x00" if v5 else b"")
    for f in filters:
        body += _utf8(f) + bytes([qos])
    return _packet(SUBSCRIBE, 0x02, body)


def publish_packet(topic: bytes, payload: bytes, qos: int, pid: int, *, v5: bool, dup: bool = False) -> bytes:
    body = _utf8(topic) + (struct.pack("!H", pid) if qos else b"") + (b"\x00" if v5 else b"") + payload
    return _packet(PUBLISH, (0x08 if dup else 0) | qos << 1, body)


def puback_packet(pid: int) -> bytes:
    """Success, in both versions (a v5 PUBACK without a reason code means success)."""
    return b"\x40\x02" + struct.pack("!H", pid)


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    pid: int
    conn: int  # which connection it came on: an acknowledgement goes back on that one only


def _skip_properties(body: bytes, at: int) -> int:
    """The offset after a v5 property block starting at `at`."""
    length = shift = 0
    while True:
        if at >= len(body):
            raise MqttError("property length runs past the packet")
        byte = body[at]
        at += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if at + length > len(body):
                raise MqttError("properties run past the packet")
            return at + length
        if shift > 21:
            raise MqttError("malformed property length")


class Reader:
    """Splits the bytes of a connection into packets, across reads of any size."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """The whole packets received so far, as (type, flags, body); the rest waits for more."""
        buf = self._buf
        buf += data
        out: list[tuple[int, int, bytes]] = []
        at, end = 0, len(buf)
        while end - at >= 2:
            length, mult, i, complete = 0, 1, at + 1, False
            while i < end:
                byte = buf[i]
                i += 1
                length += (byte & 0x7F) * mult
                if not byte & 0x80:
                    complete = True
                    break
                mult *= 128
                if mult > 128**3:
                    raise MqttError("malformed remaining length")
            if not complete:
                break  # the length itself is not all here yet
            if length > MAX_PACKET:
                raise MqttError(f"packet of {length} bytes is over the {MAX_PACKET}-byte limit")
            if end - i < length:
                break
            first = buf[at]
            out.append((first >> 4, first & 0x0F, bytes(buf[i : i + length])))
            at = i + length
        if at:
            del buf[:at]
        return out


def parse_publish(flags: int, body: bytes, *, v5: bool) -> tuple[str, bytes, int, int]:
    """(topic, payload, qos, packet id) of a PUBLISH packet; MqttError if it is malformed."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MqttError("PUBLISH with QoS 3")
    if len(body) < 2:
        raise MqttError("PUBLISH without a topic")
    n = struct.unpack_from("!H", body)[0]
    at = 2 + n
    if len(body) < at + (2 if qos else 0):
        raise MqttError("PUBLISH shorter than its topic and packet id")
    try:
        topic = body[2:at].decode()
    except UnicodeDecodeError:
        raise MqttError("PUBLISH topic is not UTF-8") from None
    pid = 0
    if qos:
        pid = struct.unpack_from("!H", body, at)[0]
        at += 2
    if v5:
        at = _skip_properties(body, at)
    return topic, body[at:], qos, pid


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
    """One connection to the broker. Packets are handled as they are parsed, on the event loop."""

    def __init__(self, v5: bool, on_message: Callable[[Message], None], number: int) -> None:
        self.v5 = v5
        self.on_message = on_message
        self.number = number
        self.reader = Reader()
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
                    self.on_message(Message(topic, payload, qos, pid, self.number))
                elif kind == PUBACK:
                    if self.on_puback is not None:
                        self.on_puback(struct.unpack_from("!H", body)[0])
                elif kind == CONNACK:
                    if not self.connack.done():
                        self.connack.set_result((bool(body[0] & 0x01), body[1]))
                elif kind == SUBACK:
                    pid = struct.unpack_from("!H", body)[0]
                    at = _skip_properties(body, 2) if self.v5 else 2
                    fut = self.acks.pop(pid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(list(body[at:]))
                elif kind == DISCONNECT:
                    reason = body[0] if body else 0
                    raise MqttError(f"the broker disconnected us (reason {reason:#x})")
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
) -> tuple[Connection, bool]:
    """A connected, accepted connection and whether the broker still had our session."""
    loop = asyncio.get_running_loop()
    ctx = ssl.create_default_context() if ep.tls else None
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: Connection(v5, on_message, number), ep.host, ep.port, ssl=ctx), WAIT_S
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
