"""The stream's wire format: client operations in, server messages out."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream import protocol
from stream.protocol import BBox, Ping, ProtocolError, Selector, Subscribe, Unsubscribe


def _parse(obj: Any) -> protocol.Op:
    return protocol.parse(orjson.dumps(obj))


def test_subscribe_shipments() -> None:
    op = _parse({"op": "subscribe", "shipments": ["shp_1", "shp_2", "shp_1"]})
    assert op == Subscribe(Selector(shipments=frozenset({"shp_1", "shp_2"})))


def test_subscribe_all_with_resume_from_text_frame() -> None:
    op = protocol.parse('{"op": "subscribe", "all": true, "resume_from": 41}')
    assert op == Subscribe(Selector(all=True), resume_from=41)


def test_subscribe_bbox() -> None:
    op = _parse({"op": "subscribe", "bbox": [-10, 35, 30.5, 60]})
    assert op == Subscribe(Selector(bbox=BBox(-10.0, 35.0, 30.5, 60.0)))


def test_unsubscribe_and_ping() -> None:
    assert _parse({"op": "unsubscribe", "all": True}) == Unsubscribe(Selector(all=True))
    assert _parse({"op": "unsubscribe", "shipments": ["a"]}) == Unsubscribe(Selector(shipments=frozenset({"a"})))
    assert _parse({"op": "ping"}) == Ping()


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        (b"{not json", "MalformedMessage", "JSON"),
        (b"[1, 2]", "MalformedMessage", "object"),
        (b'{"shipments": ["a"]}', "MalformedMessage", "op"),
        (b'{"op": "dance"}', "UnknownOp", "dance"),
        (b'{"op": "subscribe"}', "ValidationError", "exactly one"),
        (b'{"op": "subscribe", "all": true, "shipments": ["a"]}', "ValidationError", "exactly one"),
        (b'{"op": "subscribe", "all": false}', "ValidationError", "all"),
        (b'{"op": "subscribe", "shipments": []}', "ValidationError", "shipments"),
        (b'{"op": "subscribe", "shipments": "shp_1"}', "ValidationError", "shipments"),
        (b'{"op": "subscribe", "shipments": ["a", 7]}', "ValidationError", "shipments[1]"),
        (b'{"op": "subscribe", "bbox": [0, 0, 1]}', "ValidationError", "bbox"),
        (b'{"op": "subscribe", "bbox": [0, 0, 1, "2"]}', "ValidationError", "bbox.north"),
        (b'{"op": "subscribe", "bbox": [-181, 0, 1, 2]}', "ValidationError", "bbox.west"),
        (b'{"op": "subscribe", "bbox": [0, -91, 1, 2]}', "ValidationError", "bbox.south"),
        (b'{"op": "subscribe", "bbox": [0, 10, 1, 5]}', "ValidationError", "south"),
        (b'{"op": "subscribe", "bbox": [0, 0, true, 5]}', "ValidationError", "bbox.east"),
        (b'{"op": "subscribe", "all": true, "resume_from": -1}', "ValidationError", "resume_from"),
        (b'{"op": "subscribe", "all": true, "resume_from": "7"}', "ValidationError", "resume_from"),
        (b'{"op": "subscribe", "all": true, "resume_from": true}', "ValidationError", "resume_from"),
        (b'{"op": "unsubscribe", "all": true, "resume_from": 3}', "ValidationError", "resume_from"),
        (b'{"op": "subscribe", "all": true, "shipment": ["a"]}', "ValidationError", "shipment"),
        (b'{"op": "ping", "x": 1}', "ValidationError", "x"),
        (b"\xff\xfe", "MalformedMessage", "JSON"),
    ],
)
def test_bad_frames_name_the_problem(frame: bytes, code: str, words: str) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.parse(frame)
    assert err.value.code == code
    assert words in err.value.detail


def test_too_large_frame() -> None:
    frame = orjson.dumps({"op": "subscribe", "shipments": ["x" * 100] * 900})
    with pytest.raises(ProtocolError) as err:
        protocol.parse(frame)
    assert err.value.code == "MessageTooLarge"


def test_bbox_contains_and_antimeridian() -> None:
    europe = BBox(-10, 35, 30, 60)
    assert europe.contains(48.8, 2.3)
    assert not europe.contains(40.7, -74.0)
    pacific = BBox(170, -20, -170, 20)  # west > east: crosses the antimeridian
    assert pacific.contains(0, 175)
    assert pacific.contains(0, -175)
    assert pacific.contains(0, 180)
    assert not pacific.contains(0, 0)
    assert not pacific.contains(30, 175)


def test_encoders() -> None:
    snap = orjson.loads(protocol.snapshot(7, [{"id": "a"}]))
    assert snap == {"type": "snapshot", "seq": 7, "shipments": [{"id": "a"}]}
    assert orjson.loads(protocol.snapshot(7, [], reset=True))["reset"] is True
    assert orjson.loads(protocol.pong()) == {"type": "pong"}
    assert orjson.loads(protocol.error("UnknownOp", "x")) == {"type": "error", "error": "UnknownOp", "detail": "x"}
    pos = {"type": "position", "seq": 3, "shipment_id": "a", "occurred_at": "2024-05-01T00:00:00Z"}
    pos |= {"lat": 1.0, "lon": 2.0, "speed_kmh": 3.0, "heading": None}
    assert orjson.loads(protocol.message(pos) or "") == pos
    assert protocol.message({"type": "internal.thing", "seq": 4}) is None


def test_positions_batch_takes_highest_seq() -> None:
    a = {"type": "position", "seq": 9, "shipment_id": "a", "lat": 1, "lon": 2, "occurred_at": "t9"}
    b = {"type": "position", "seq": 5, "shipment_id": "b", "lat": 3, "lon": 4, "speed_kmh": 10, "heading": 90}
    b["occurred_at"] = "t5"
    out = orjson.loads(protocol.positions([a, b]))
    assert out["type"] == "positions"
    assert out["seq"] == 9
    assert out["occurred_at"] == "t9"
    assert [i["shipment_id"] for i in out["items"]] == ["b", "a"]
    assert out["items"][0] == {
        "shipment_id": "b",
        "lat": 3,
        "lon": 4,
        "speed_kmh": 10,
        "heading": 90,
        "occurred_at": "t5",
    }


def test_location_of() -> None:
    assert protocol.location_of({"type": "position", "lat": 1, "lon": 2}) == (1.0, 2.0)
    ship = {"type": "shipment.updated", "shipment": {"last_position": {"lat": 5, "lon": 6}}}
    assert protocol.location_of(ship) == (5.0, 6.0)
    assert protocol.location_of({"type": "shipment.created", "shipment": {"last_position": None}}) is None
    assert protocol.location_of({"type": "status.changed", "status": "delivered"}) is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
_ops = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "ping", "pong", ""])},
    optional={
        "shipments": st.lists(st.text(max_size=5), max_size=3) | _json,
        "all": st.booleans() | _json,
        "bbox": st.lists(st.floats() | st.integers(-300, 300), min_size=3, max_size=5) | _json,
        "resume_from": st.integers(-5, 10**12) | _json,
        "extra": _json,
    },
)


def _only_op_or_protocol_error(frame: str | bytes) -> None:
    op: protocol.Op | ProtocolError
    try:
        op = protocol.parse(frame)
    except ProtocolError as exc:
        op = exc
    if isinstance(op, ProtocolError):
        assert op.code in {"MalformedMessage", "UnknownOp", "ValidationError", "MessageTooLarge"}
        assert op.detail
    else:
        assert isinstance(op, Subscribe | Unsubscribe | Ping)


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_an_op_or_protocol_error(frame: bytes) -> None:
    _only_op_or_protocol_error(frame)


@settings(max_examples=100, deadline=None, database=None)
@given(st.text(max_size=100))
def test_random_text_gives_an_op_or_protocol_error(frame: str) -> None:
    _only_op_or_protocol_error(frame)


@settings(max_examples=150, deadline=None, database=None)
@given(_json | _ops)
def test_random_json_gives_an_op_or_protocol_error(obj: Any) -> None:
    _only_op_or_protocol_error(json.dumps(obj))


def test_positions_items_are_encoded_once_and_never_confused() -> None:
    items = protocol._Items(size=2)
    msgs = [{"type": "position", "seq": i, "shipment_id": f"s{i}", "lat": i, "lon": 0.5} for i in range(3)]
    for m in msgs * 2:  # the third empties the full cache; each message still gets its own item
        assert orjson.loads(items(m)) == protocol.position_item(m)
    one = {"type": "position", "seq": 7, "shipment_id": "old", "lat": 1.0, "lon": 1.0}
    items(one)
    del one  # the cache holds it, so a new message cannot take its identity and its item
    new = {"type": "position", "seq": 7, "shipment_id": "new", "lat": 2.0, "lon": 2.0}
    assert orjson.loads(items(new))["shipment_id"] == "new"
    batch = [msgs[2], msgs[0]]
    expected = {"type": "positions", "seq": 2, "items": [protocol.position_item(m) for m in (msgs[0], msgs[2])]}
    assert orjson.loads(protocol.positions(batch)) == {**expected, "occurred_at": None}
