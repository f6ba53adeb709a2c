"""MQTT 3.1.1 / 5 packets as bytes, sans I/O: what trackd's connection (ingest/mqtt_conn.py) sends
and reads. No sockets, no event loop, no clock: bytes in, packets out, and packets to bytes.

Covered: CONNECT (clean or persistent session, username/password, v5 session expiry, receive
maximum and maximum packet size), CONNACK, SUBSCRIBE, SUBACK, PUBLISH in both directions at QoS 0
and 1, PUBACK, PINGREQ, PINGRESP and DISCONNECT. Not covered: QoS 2, will messages, v5
authentication exchanges.

A `Reader` given `max_publish` never buffers a PUBLISH longer than that: it keeps the packet's
first bytes (topic, packet id, the head of the payload), drops the rest as it streams in, and hands
the packet on as `OVERSIZED` (read with `parse_oversized`), so that the message can still be
acknowledged and kept aside.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
MAX_PACKET = 16 * 1024 * 1024  # a broker sending more than this in one packet is not one we read
OVERSIZED = 16  # not an MQTT packet type: a PUBLISH over a Reader's `max_publish`, cut short
HEAD_BYTES = 4096  # how much of an oversized message's payload is kept
# What an oversized PUBLISH keeps of its body: the longest topic, the packet id, some v5 properties
# and HEAD_BYTES of payload.
_OVERSIZED_KEEP = 2 + 0xFFFF + 2 + 4096 + HEAD_BYTES
PING = b"\xc0\x00"
BYE = b"\xe0\x00"


class MqttError(Exception):
    """The broker refused us, or sent what MQTT does not allow."""


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    pid: int
    conn: int  # which connection it came on: an acknowledgement goes back on that one only
    # Non-zero: the payload was this many bytes, over the connection's limit, and `payload` holds
    # only its first HEAD_BYTES.
    oversize: int = 0


# -- encoding ------------------------------------------------------------------------------------
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
    maximum_packet_size: int = 0,
) -> bytes:
    """`maximum_packet_size` (v5): the broker must not send us packets larger than this (it drops them)."""
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _utf8("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", keepalive)
    if v5:
        props = b""
        if session_expiry:
            props += b"\x11" + struct.pack("!I", session_expiry)
        if receive_maximum:
            props += b"\x21" + struct.pack("!H", receive_maximum)
        if maximum_packet_size:
            props += b"\x27" + struct.pack("!I", maximum_packet_size)
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


# -- decoding ------------------------------------------------------------------------------------
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
    """Splits the bytes of a connection into packets, across reads of any size.

    Without `max_publish`, a packet longer than MAX_PACKET is an MqttError. With it, a PUBLISH
    whose body is longer than `max_publish` (up to the 256 MB MQTT allows) is not buffered: it
    comes out, once all of it has streamed past, as (OVERSIZED, flags, its body's length as 4 bytes
    + the body's first bytes); other packets keep the MAX_PACKET limit."""

    __slots__ = ("_buf", "_head", "_left", "_max_publish", "_oversized")

    def __init__(self, max_publish: int | None = None) -> None:
        self._buf = bytearray()
        self._max_publish = max_publish
        self._head = bytearray()  # what an oversized PUBLISH being skipped keeps
        self._left = 0  # how many bytes of it have still to stream past
        self._oversized: tuple[int, int] = (0, 0)  # its flags and its body's length

    @property
    def held(self) -> int:
        """How many bytes the reader holds: a partial packet, or the head of one it is skipping."""
        return len(self._buf) + len(self._head)

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """The whole packets received so far, as (type, flags, body); the rest waits for more."""
        out: list[tuple[int, int, bytes]] = []
        if self._left:
            data = self._skip(data, out)
            if self._left:
                return out
        buf = self._buf
        buf += data
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
            first = buf[at]
            if self._max_publish is not None and first >> 4 == PUBLISH and length > self._max_publish:
                # Skip it as it streams in: keep the head, drop the rest.
                self._oversized, self._head = (first & 0x0F, length), bytearray()
                self._left = length
                rest = self._skip(bytes(buf[i:end]), out)
                del buf[:]
                if self._left:
                    return out
                buf += rest
                at, end = 0, len(buf)
                continue
            if length > MAX_PACKET:
                raise MqttError(f"packet of {length} bytes is over the {MAX_PACKET}-byte limit")
            if end - i < length:
                break
            out.append((first >> 4, first & 0x0F, bytes(buf[i : i + length])))
            at = i + length
        if at:
            del buf[:at]
        return out

    def _skip(self, data: bytes, out: list[tuple[int, int, bytes]]) -> bytes:
        """Take what belongs to the oversized PUBLISH being skipped; the bytes after it."""
        n = min(len(data), self._left)
        room = _OVERSIZED_KEEP - len(self._head)
        if room > 0:
            self._head += data[: min(n, room)]
        self._left -= n
        if not self._left:
            flags, length = self._oversized
            out.append((OVERSIZED, flags, struct.pack("!I", length) + bytes(self._head)))
            self._head = bytearray()
        return data[n:]


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


def parse_oversized(flags: int, body: bytes, *, v5: bool) -> tuple[str, bytes, int, int, int]:
    """(topic, first HEAD_BYTES of the payload, qos, packet id, payload length) of an OVERSIZED
    packet from a `Reader`. v5 properties too long for the kept head leave the payload head empty."""
    if len(body) < 4:
        raise MqttError("oversized PUBLISH without its length")
    length: int = struct.unpack_from("!I", body)[0]
    head = body[4:]
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MqttError("PUBLISH with QoS 3")
    if len(head) < 2:
        raise MqttError("PUBLISH without a topic")
    at = 2 + struct.unpack_from("!H", head)[0] + (2 if qos else 0)
    if len(head) < at:
        raise MqttError("PUBLISH shorter than its topic and packet id")
    try:
        topic = head[2 : at - (2 if qos else 0)].decode()
    except UnicodeDecodeError:
        raise MqttError("PUBLISH topic is not UTF-8") from None
    pid: int = struct.unpack_from("!H", head, at - 2)[0] if qos else 0
    if v5:
        try:
            at = _skip_properties(head, at)
        except MqttError:  # longer than what was kept: the payload's start is not known
            return topic, b"", qos, pid, length - at
    return topic, head[at : at + HEAD_BYTES], qos, pid, length - at


def parse_connack(body: bytes) -> tuple[bool, int]:
    """(session present, return or reason code) of a CONNACK packet."""
    if len(body) < 2:
        raise MqttError("CONNACK shorter than 2 bytes")
    return bool(body[0] & 0x01), body[1]


def parse_puback(body: bytes) -> int:
    """The packet id a PUBACK acknowledges (a v5 reason code after it is not read)."""
    if len(body) < 2:
        raise MqttError("PUBACK without a packet id")
    pid: int = struct.unpack_from("!H", body)[0]
    return pid


def parse_suback(body: bytes, *, v5: bool) -> tuple[int, list[int]]:
    """(packet id, one return or reason code per filter) of a SUBACK packet."""
    if len(body) < 2:
        raise MqttError("SUBACK without a packet id")
    pid: int = struct.unpack_from("!H", body)[0]
    at = _skip_properties(body, 2) if v5 else 2
    return pid, list(body[at:])


def parse_disconnect(body: bytes) -> int:
    """The reason code of a (v5) DISCONNECT from the broker; 0 when it has none."""
    return body[0] if body else 0
