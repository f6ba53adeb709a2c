"""AIS over NMEA 0183, pure: bytes in, lines, sentences, whole messages and vessel reports out.

No I/O and no clock reads: the caller passes the receiving time. Every step is bounded: a line
longer than `MAX_LINE` is skipped as it streams in (never buffered whole), at most `MAX_GROUPS`
multi-sentence messages wait for their fragments, each at most `FRAGMENT_TIMEOUT_S`. A sentence's
type and MMSI are read from its first characters without decoding it (`peek`), and a type 5's IMO
number likewise (`peek_imo`), so that a vessel nobody follows costs a checksum and a set lookup or
two; `pyais` decodes only what is kept.
"""

from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyais

from trackd.errors import ValidationError
from trackd.model import Position
from trackd.shipment import imo_valid

MAX_LINE = 512  # an NMEA sentence is at most 82 characters; a tag block adds a few dozen
MAX_GROUPS = 64  # multi-sentence messages waiting for their next fragment
FRAGMENT_TIMEOUT_S = 5.0  # a message whose fragments have not all come within this is dropped
POSITION_TYPES = frozenset({1, 2, 3, 18, 19, 27})
STATIC_TYPES = frozenset({5, 24})
KNOT_KMH = 1.852
EARLIEST_TAG = datetime(2000, 1, 1, tzinfo=UTC)
TAG_AHEAD = timedelta(minutes=5)  # a tag block's time at most this far ahead of its receipt (clock skew)
# `!` talker `VDM` (or `VDO`), fragment count, number, sequential id, channel, payload in the
# six-bit armour, fill bits, `*` checksum.
_SENTENCE = re.compile(
    r"!(?:[A-Z]{2})VD[MO],(?P<count>[1-9]),(?P<number>[1-9]),(?P<seq>[0-9]?),(?P<channel>[A-Z0-9]?),"
    r"(?P<payload>[0-9:;<=>?@A-W`a-w]+),(?P<fill>[0-5])\*(?P<checksum>[0-9A-Fa-f]{2})",
    re.ASCII,
)


class BadLine(Exception):
    """A line that is not a usable AIS sentence; `outcome` is its metric label."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class LineSplitter:
    """Splits a byte stream into lines (LF or CRLF), keeping at most `max_line` bytes of one: a
    longer line is dropped as it arrives and counted in `overlong`."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.overlong = 0
        self._buf = bytearray()
        self._skipping = False  # inside an overlong line: drop up to its end

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._take(data[start:end], lines, ended=True)
            start = end + 1
        self._take(data[start:], lines, ended=False)
        return lines

    def flush(self) -> list[bytes]:
        """The unterminated rest as a line (a datagram's end ends its last line)."""
        lines: list[bytes] = []
        self._take(b"", lines, ended=True)
        return lines

    def _take(self, piece: bytes, lines: list[bytes], *, ended: bool) -> None:
        if self._skipping:
            self._skipping = not ended
            return
        if len(self._buf) + len(piece) > self.max_line:
            self.overlong += 1
            self._buf.clear()
            self._skipping = not ended
            return
        if not ended:
            self._buf += piece
            return
        line = (bytes(self._buf) + piece if self._buf else piece).strip()
        self._buf.clear()
        if line:
            lines.append(line)


@dataclass(frozen=True, slots=True)
class Sentence:
    """One checked `!xxVDM`/`!xxVDO` sentence: fragment `number` of `count`, and the receiver's
    time from its NMEA 4 tag block (`c:`) when it had one."""

    count: int
    number: int
    seq: str
    channel: str
    payload: str
    fill: int
    text: str  # the sentence without its tag block
    tag_time: datetime | None = None


def _checksum_ok(body: str, given: str) -> bool:
    """Whether `given` (two hex digits) is the XOR of `body`'s characters."""
    if len(given) != 2 or not all(c in "0123456789ABCDEFabcdef" for c in given):
        return False
    return functools.reduce(operator.xor, body.encode(), 0) == int(given, 16)


def _tag_time(tag: str) -> datetime | None:
    """The `c:` time of a tag block's body (seconds since 1970, or milliseconds), if any."""
    for part in tag.split(","):
        key, _, value = part.partition(":")
        if key == "c" and value.isdigit() and len(value) <= 13:
            n = int(value)
            return datetime.fromtimestamp(n / 1000 if n > 10**11 else n, UTC)
    return None


def parse(line: bytes) -> Sentence:
    """A line as a sentence; `BadLine("malformed")` or `BadLine("checksum")` otherwise."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise BadLine("malformed") from None
    tag_time = None
    if text.startswith("\\"):
        end = text.find("\\", 1)
        if end < 0:
            raise BadLine("malformed")
        tag, text = text[1:end], text[end + 1 :]
        body, star, given = tag.rpartition("*")
        if star:
            if not _checksum_ok(body, given):
                raise BadLine("checksum")
            tag = body
        tag_time = _tag_time(tag)
    m = _SENTENCE.fullmatch(text)
    if m is None:
        raise BadLine("malformed")
    if not _checksum_ok(text[1:-3], m["checksum"]):
        raise BadLine("checksum")
    n, k = int(m["count"]), int(m["number"])
    if k > n:
        raise BadLine("malformed")
    seq, channel, payload, fill = m["seq"], m["channel"], m["payload"], m["fill"]
    return Sentence(n, k, seq, channel, payload, int(fill), text, tag_time)


def _bits(armoured: str) -> int:
    """Six-bit armoured characters as one integer, the first character's bits the highest."""
    bits = 0
    for ch in armoured:
        v = ord(ch) - 48
        bits = (bits << 6) | (v - 8 if v > 40 else v)
    return bits


def peek(payload: str) -> tuple[int, int] | None:
    """The message type and MMSI (bits 0-5 and 8-37) from a first fragment's first seven
    characters, or None when it is too short to hold them."""
    if len(payload) < 7:
        return None
    bits = _bits(payload[:7])  # 42 bits
    return bits >> 36, (bits >> 4) & 0x3FFFFFFF


def peek_imo(payload: str) -> int | None:
    """The IMO number field of a type 5 (bits 40-69, unchecked) from its first fragment's first
    twelve characters, or None when it is too short to hold it."""
    if len(payload) < 12:
        return None
    return (_bits(payload[:12]) >> 2) & 0x3FFFFFFF  # 72 bits


@dataclass(slots=True)
class _Group:
    parts: list[Sentence]
    started: float


class Reassembler:
    """Joins the fragments of multi-sentence messages, by sequential message id and channel. A
    fragment out of order, a group replaced by a new first fragment, or one not completed within
    `timeout_s` is dropped; `dropped` counts the fragments thrown away so."""

    def __init__(self, timeout_s: float = FRAGMENT_TIMEOUT_S, max_groups: int = MAX_GROUPS) -> None:
        self.timeout_s = timeout_s
        self.max_groups = max_groups
        self.dropped = 0
        self._groups: dict[tuple[str, str], _Group] = {}

    def add(self, s: Sentence, now: float) -> list[Sentence] | None:
        """The whole message once `s` completes it, else None."""
        if s.count == 1:
            return [s]
        self.expire(now)
        key = (s.seq, s.channel)
        group = self._groups.get(key)
        if s.number == 1:
            if group is not None:
                self.dropped += len(group.parts)
            elif len(self._groups) >= self.max_groups:
                oldest = min(self._groups, key=lambda k: self._groups[k].started)
                self.dropped += len(self._groups.pop(oldest).parts)
            self._groups[key] = _Group([s], now)
            return None
        if group is None or group.parts[0].count != s.count or len(group.parts) + 1 != s.number:
            self.dropped += 1 + (len(self._groups.pop(key).parts) if group is not None else 0)
            return None
        group.parts.append(s)
        if s.number < s.count:
            return None
        del self._groups[key]
        return group.parts

    def expire(self, now: float) -> None:
        for key in [k for k, g in self._groups.items() if now - g.started > self.timeout_s]:
            self.dropped += len(self._groups.pop(key).parts)

    @property
    def waiting(self) -> int:
        return len(self._groups)


@dataclass(frozen=True, slots=True)
class PositionReport:
    mmsi: int
    msg_type: int
    position: Position
    second: int | None  # the UTC second of the report (types 1-3, 18, 19), when given
    tag_time: datetime | None
    nmea: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StaticReport:
    mmsi: int
    msg_type: int
    imo: int | None  # type 5 only, when it is a valid IMO number
    name: str | None


def _number(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def decode(parts: list[Sentence]) -> PositionReport | StaticReport | None:
    """A whole message as a report: a position (None when it has none: lat 91 or lon 181, the 0,0
    of a receiver without a fix) or static data; None for other message types.
    `BadLine("undecodable")` when pyais cannot read it."""
    try:
        d = pyais.decode(*(p.text for p in parts)).asdict()
    except Exception:  # a hostile payload may fail anywhere in the decoder
        raise BadLine("undecodable") from None
    msg_type, mmsi = d.get("msg_type"), d.get("mmsi")
    if not isinstance(msg_type, int) or not isinstance(mmsi, int):
        raise BadLine("undecodable")
    if msg_type in STATIC_TYPES:
        name = d.get("shipname")
        imo = d.get("imo")
        return StaticReport(
            mmsi,
            msg_type,
            imo if msg_type == 5 and isinstance(imo, int) and imo_valid(imo) else None,
            (name.strip(" @") or None) if isinstance(name, str) else None,
        )
    if msg_type not in POSITION_TYPES:
        return None
    lat, lon = _number(d, "lat"), _number(d, "lon")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None
    speed, course, heading = _number(d, "speed"), _number(d, "course"), _number(d, "heading")
    unknown_speed = 63.0 if msg_type == 27 else 102.3  # "not available"; so are a course or heading of 360+
    direction = course if course is not None and 0 <= course < 360 else None
    if direction is None and heading is not None and 0 <= heading < 360:
        direction = heading
    try:
        position = Position(
            lat,
            lon,
            speed_kmh=round(speed * KNOT_KMH, 2) if speed is not None and 0 <= speed < unknown_speed else None,
            heading=direction,
        )
    except ValidationError:
        raise BadLine("undecodable") from None
    second = d.get("second")
    return PositionReport(
        mmsi,
        msg_type,
        position,
        second if isinstance(second, int) and 0 <= second <= 59 else None,
        parts[0].tag_time,
        tuple(p.text for p in parts),
    )


def report_time(report: PositionReport, received_at: datetime) -> datetime:
    """When a position was reported: the tag block's time when it is plausible (from 2000 to
    `TAG_AHEAD` past its receipt); else the receipt, set back to the report's UTC second when it
    gave one; else the receipt."""
    if report.tag_time is not None and EARLIEST_TAG <= report.tag_time <= received_at + TAG_AHEAD:
        return report.tag_time
    if report.second is None:
        return received_at
    at = received_at.replace(second=report.second, microsecond=0)
    return at - timedelta(minutes=1) if at > received_at else at
