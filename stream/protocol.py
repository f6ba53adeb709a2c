"""The websocket stream's wire format, without I/O.

Client operations are parsed and validated here (`parse`), and every server message is encoded
here. The hub and the gateway only move the values and strings this module produces.

Client -> server, one JSON object per frame (text or binary):
    {"op": "subscribe", "shipments": [ids]}          optional "resume_from": seq
    {"op": "subscribe", "all": true}
    {"op": "subscribe", "bbox": [west, south, east, north]}   west > east crosses the antimeridian
    {"op": "unsubscribe", <one selector, as above>}
    {"op": "ping"}
Exactly one selector per subscribe/unsubscribe; several subscriptions on a socket combine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from trackd.errors import TrackdError
from trackd.messages import MESSAGE_TYPES

Message = dict[str, Any]

MAX_FRAME_BYTES = 64 * 1024
MAX_SHIPMENTS = 1000
MAX_ID_CHARS = 200

# Bus message types the stream passes through to clients; others stay internal.
STREAM_TYPES = frozenset(MESSAGE_TYPES)
POSITION_ITEM_FIELDS = ("shipment_id", "lat", "lon", "speed_kmh", "heading", "occurred_at")


class ProtocolError(TrackdError):
    """A client frame that is not a valid operation. `code` is the `error` name sent back."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


# -- operations ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BBox:
    """A lon/lat box; `west > east` is a box that crosses the antimeridian."""

    west: float
    south: float
    east: float
    north: float

    def __post_init__(self) -> None:
        for name in ("west", "south", "east", "north"):
            if not math.isfinite(getattr(self, name)):
                raise ProtocolError("ValidationError", f"bbox.{name}: must be a finite number")
        for name in ("west", "east"):
            if not -180 <= getattr(self, name) <= 180:
                raise ProtocolError("ValidationError", f"bbox.{name}: {getattr(self, name)} is outside [-180, 180]")
        for name in ("south", "north"):
            if not -90 <= getattr(self, name) <= 90:
                raise ProtocolError("ValidationError", f"bbox.{name}: {getattr(self, name)} is outside [-90, 90]")
        if self.south > self.north:
            raise ProtocolError("ValidationError", "bbox: south is above north")

    def contains(self, lat: float, lon: float) -> bool:
        if not self.south <= lat <= self.north:
            return False
        if self.west <= self.east:
            return self.west <= lon <= self.east
        return lon >= self.west or lon <= self.east

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.west, self.south, self.east, self.north)


@dataclass(frozen=True, slots=True)
class Selector:
    """What a subscription follows: some shipments, all of them, or those inside a box."""

    shipments: frozenset[str] | None = None
    all: bool = False
    bbox: BBox | None = None

    def __post_init__(self) -> None:
        given = (self.shipments is not None) + self.all + (self.bbox is not None)
        if given != 1:
            raise ProtocolError("ValidationError", "give exactly one of 'shipments', 'all' or 'bbox'")


@dataclass(frozen=True, slots=True)
class Subscribe:
    selector: Selector
    resume_from: int | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    selector: Selector


@dataclass(frozen=True, slots=True)
class Ping:
    pass


Op = Subscribe | Unsubscribe | Ping

_SELECTOR_KEYS = frozenset({"shipments", "all", "bbox"})
_ALLOWED = {
    "subscribe": frozenset({"op", "resume_from"}) | _SELECTOR_KEYS,
    "unsubscribe": frozenset({"op"}) | _SELECTOR_KEYS,
    "ping": frozenset({"op"}),
}


def parse(frame: str | bytes) -> Op:
    """The operation in one client frame; anything else raises `ProtocolError` naming the problem."""
    size = len(frame.encode("utf-8", "surrogatepass")) if isinstance(frame, str) else len(frame)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError("MessageTooLarge", f"a frame is at most {MAX_FRAME_BYTES} bytes")
    try:
        data = orjson.loads(frame)
    except (orjson.JSONDecodeError, UnicodeError, ValueError) as exc:
        raise ProtocolError("MalformedMessage", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("MalformedMessage", "a frame must be a JSON object")
    op = data.get("op")
    if not isinstance(op, str):
        raise ProtocolError("MalformedMessage", "'op' is missing or not a string")
    allowed = _ALLOWED.get(op)
    if allowed is None:
        raise ProtocolError("UnknownOp", f"unknown op {op[:40]!r}; expected subscribe, unsubscribe or ping")
    unknown = sorted(k for k in data if k not in allowed)
    if unknown:
        raise ProtocolError("ValidationError", f"unknown field {unknown[0][:40]!r} for op {op!r}")
    if op == "ping":
        return Ping()
    selector = _selector(data)
    if op == "unsubscribe":
        return Unsubscribe(selector)
    return Subscribe(selector, _resume_from(data.get("resume_from")))


def _selector(data: dict[str, Any]) -> Selector:
    present = [k for k in ("shipments", "all", "bbox") if k in data]
    if len(present) != 1:
        raise ProtocolError("ValidationError", "give exactly one of 'shipments', 'all' or 'bbox'")
    key = present[0]
    value = data[key]
    if key == "all":
        if value is not True:
            raise ProtocolError("ValidationError", "all: must be true")
        return Selector(all=True)
    if key == "bbox":
        return Selector(bbox=_bbox(value))
    return Selector(shipments=_shipments(value))


def _shipments(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise ProtocolError("ValidationError", "shipments: must be a non-empty list of shipment ids")
    if len(value) > MAX_SHIPMENTS:
        raise ProtocolError("ValidationError", f"shipments: at most {MAX_SHIPMENTS} ids per subscribe")
    for i, sid in enumerate(value):
        if not isinstance(sid, str) or not sid or len(sid) > MAX_ID_CHARS:
            raise ProtocolError("ValidationError", f"shipments[{i}]: must be a shipment id (a non-empty string)")
    return frozenset(value)


def _bbox(value: Any) -> BBox:
    if not isinstance(value, list) or len(value) != 4:
        raise ProtocolError("ValidationError", "bbox: must be [west, south, east, north]")
    for name, v in zip(("west", "south", "east", "north"), value, strict=True):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ProtocolError("ValidationError", f"bbox.{name}: must be a number")
    return BBox(*(float(v) for v in value))


def _resume_from(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError("ValidationError", "resume_from: must be a non-negative integer seq")
    return value


# -- server messages -----------------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def encode(obj: Message) -> str:
    return orjson.dumps(obj, default=_default).decode()


def snapshot(seq: int, shipments: list[Message], *, reset: bool = False) -> str:
    msg: Message = {"type": "snapshot", "seq": seq, "shipments": shipments}
    if reset:
        msg["reset"] = True
    return encode(msg)


def message(msg: Message) -> str | None:
    """A bus message as the stream sends it, or None for types the stream does not carry."""
    if msg.get("type") not in STREAM_TYPES:
        return None
    return encode(msg)


def position_item(msg: Message) -> Message:
    return {k: msg.get(k) for k in POSITION_ITEM_FIELDS}


class _Items:
    """Encoded `positions` items by bus message: every map client of a tick sends the same items,
    so each is encoded once. Keyed by the message's identity, holding the message so that the
    identity cannot be reused while its entry lives; emptied when full."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._encoded: dict[int, tuple[Message, bytes]] = {}

    def __call__(self, msg: Message) -> bytes:
        hit = self._encoded.get(id(msg))
        if hit is not None and hit[0] is msg:
            return hit[1]
        if len(self._encoded) >= self.size:
            self._encoded.clear()
        text = orjson.dumps(position_item(msg), default=_default)
        self._encoded[id(msg)] = (msg, text)
        return text


_item = _Items()


def positions(msgs: list[Message]) -> str:
    """One `positions` message from position bus messages; its seq is the highest included."""
    ordered = sorted(msgs, key=lambda m: int(m["seq"]))
    top = ordered[-1]
    head = b'{"type":"positions","seq":%d,"items":[' % int(top["seq"])
    tail = b'],"occurred_at":' + orjson.dumps(top.get("occurred_at"), default=_default) + b"}"
    return (head + b",".join([_item(m) for m in ordered]) + tail).decode()


def pong() -> str:
    return '{"type":"pong"}'


def error(code: str, detail: str) -> str:
    return encode({"type": "error", "error": code, "detail": detail})


def location_of(msg: Message) -> tuple[float, float] | None:
    """Where a bus message puts its shipment (lat, lon), if it says."""
    if msg.get("type") == "position":
        lat, lon = msg.get("lat"), msg.get("lon")
    elif isinstance(msg.get("shipment"), dict):
        last = msg["shipment"].get("last_position")
        if not isinstance(last, dict):
            return None
        lat, lon = last.get("lat"), last.get("lon")
    else:
        return None
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in (lat, lon)):
        return None
    return float(lat), float(lon)  # type: ignore[arg-type]
