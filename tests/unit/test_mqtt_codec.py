"""The MQTT codec of the ingester: packets split anywhere across reads come out whole and exact."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import mqtt_codec
from ingest.mqtt_codec import Message, MqttError, Reader
from ingest.mqtt_conn import Connection, endpoint


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_encoding_is_the_standard_one(n: int, encoded: bytes) -> None:
    assert mqtt_codec.varint(n) == encoded


def test_connect_packet_bytes() -> None:
    # 3.1.1, persistent session, keep-alive 30, user and password
    got = mqtt_codec.connect_packet("c1", v5=False, clean=False, keepalive=30, username="u", password="p")
    body = b"\x00\x04MQTT\x04\xc0\x00\x1e" + b"\x00\x02c1" + b"\x00\x01u" + b"\x00\x01p"
    assert got == b"\x10" + bytes([len(body)]) + body
    # 5, session expiry and receive maximum as properties
    got5 = mqtt_codec.connect_packet("c1", v5=True, clean=False, keepalive=30, session_expiry=3600, receive_maximum=500)
    props = b"\x11\x00\x00\x0e\x10" + b"\x21\x01\xf4"
    body5 = b"\x00\x04MQTT\x05\x00\x00\x1e" + bytes([len(props)]) + props + b"\x00\x02c1"
    assert got5 == b"\x10" + bytes([len(body5)]) + body5


def test_subscribe_and_puback_bytes() -> None:
    assert mqtt_codec.subscribe_packet(7, ["a/+"], 1, v5=False) == b"\x82\x08\x00\x07\x00\x03a/+\x01"
    assert mqtt_codec.subscribe_packet(7, ["a/+"], 1, v5=True) == b"\x82\x09\x00\x07\x00\x00\x03a/+\x01"
    assert mqtt_codec.puback_packet(0x1234) == b"\x40\x02\x12\x34"


@pytest.mark.parametrize("v5", [False, True])
def test_publish_round_trip(v5: bool) -> None:
    raw = mqtt_codec.publish_packet(b"t/x", b'{"a":1}', 1, 42, v5=v5, dup=True)
    [(kind, flags, body)] = Reader().feed(raw)
    assert (kind, flags) == (mqtt_codec.PUBLISH, 0x0A)
    assert mqtt_codec.parse_publish(flags, body, v5=v5) == ("t/x", b'{"a":1}', 1, 42)


def test_v5_publish_properties_are_skipped() -> None:
    props = b"\x02\x00\x00\x00\x3c" + b"\x26\x00\x01k\x00\x01v"  # message expiry, a user property
    body = b"\x00\x01t" + b"\x00\x09" + mqtt_codec.varint(len(props)) + props + b"payload"
    assert mqtt_codec.parse_publish(0x02, body, v5=True) == ("t", b"payload", 1, 9)


def test_qos0_publish_has_no_packet_id() -> None:
    raw = mqtt_codec.publish_packet(b"t", b"x", 0, 0, v5=False)
    assert raw == b"\x30\x04\x00\x01tx"
    [(_, flags, body)] = Reader().feed(raw)
    assert mqtt_codec.parse_publish(flags, body, v5=False) == ("t", b"x", 0, 0)


packets = st.lists(
    st.tuples(st.text(min_size=1, max_size=40), st.binary(max_size=300), st.integers(0, 1), st.integers(1, 65535)),
    min_size=1,
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(packets, st.lists(st.integers(1, 64), min_size=1, max_size=50), st.booleans())
def test_packets_split_anywhere_come_out_whole(items, cuts, v5) -> None:
    stream = b"".join(mqtt_codec.publish_packet(t.encode(), p, q, pid, v5=v5) for t, p, q, pid in items)
    stream += mqtt_codec.PING
    reader, got, at, i = Reader(), [], 0, 0
    while at < len(stream):
        step = cuts[i % len(cuts)]
        got += reader.feed(stream[at : at + step])
        at, i = at + step, i + 1
    assert got[-1][0] == 12  # PINGREQ, whole
    parsed = [mqtt_codec.parse_publish(f, b, v5=v5) for k, f, b in got[:-1]]
    assert parsed == [(t, p, q, pid if q else 0) for t, p, q, pid in items]


def test_large_packet_with_a_four_byte_length() -> None:
    payload = b"x" * 3_000_000
    raw = mqtt_codec.publish_packet(b"big", payload, 1, 1, v5=False)
    reader = Reader()
    assert reader.feed(raw[:4]) == []  # not even the length is complete
    assert reader.feed(raw[4:1000]) == []
    [(_, flags, body)] = reader.feed(raw[1000:])
    assert mqtt_codec.parse_publish(flags, body, v5=False)[1] == payload


def test_malformed_and_oversized_lengths_are_refused() -> None:
    with pytest.raises(MqttError, match="malformed"):
        Reader().feed(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(MqttError, match="limit"):
        Reader().feed(b"\x30" + mqtt_codec.varint(mqtt_codec.MAX_PACKET + 1))


def test_endpoint_from_url() -> None:
    ep = endpoint("mqtts://dev%40x:p%3Ass@broker.example:8884")
    assert (ep.host, ep.port, ep.tls, ep.username, ep.password) == ("broker.example", 8884, True, "dev@x", "p:ss")
    ep = endpoint("mqtt://127.0.0.1")
    assert (ep.port, ep.tls, ep.username, ep.password) == (1883, False, None, None)
    assert endpoint("mqtt://:secret@127.0.0.1").password is None  # a password needs a user name


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_any_bytes_are_packets_or_a_clear_error(data: bytes, v5: bool) -> None:
    """Whatever a broker (or something posing as one) sends, the reader and the PUBLISH parser
    answer packets or MqttError, never another exception."""
    try:
        packets = Reader().feed(data)
    except MqttError:
        return
    for kind, flags, body in packets:
        assert 0 <= kind <= 15
        if kind == mqtt_codec.PUBLISH:
            try:
                topic, payload, _qos, _pid = mqtt_codec.parse_publish(flags, body, v5=v5)
            except MqttError:
                continue
            assert isinstance(topic, str)
            assert len(payload) <= len(body)


def test_truncated_publish_is_refused() -> None:
    with pytest.raises(MqttError, match="shorter"):
        mqtt_codec.parse_publish(0x02, b"\x00\x05ab", v5=False)
    with pytest.raises(MqttError, match="past the packet"):
        mqtt_codec.parse_publish(0x00, b"\x00\x01t\x05ab", v5=True)


def test_connect_announces_the_maximum_packet_size() -> None:
    got = mqtt_codec.connect_packet("c1", v5=True, clean=True, keepalive=30, maximum_packet_size=1_114_112)
    props = b"\x27\x00\x11\x00\x00"
    body = b"\x00\x04MQTT\x05\x02\x00\x1e" + bytes([len(props)]) + props + b"\x00\x02c1"
    assert got == b"\x10" + bytes([len(body)]) + body
    assert b"\x27" not in mqtt_codec.connect_packet("c1", v5=False, clean=True, keepalive=30)[10:]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 70_000), min_size=1, max_size=30), st.booleans(), st.integers(0, 1))
def test_an_oversized_publish_is_skipped_as_it_streams_in(cuts, v5: bool, qos: int) -> None:
    """A PUBLISH over `max_publish` comes out as OVERSIZED with its topic, packet id, payload head
    and size, between the packets before and after it, however the bytes are cut; the reader never
    holds more than the head."""
    big = bytes(range(256)) * 800  # 204,800 bytes
    stream = (
        mqtt_codec.publish_packet(b"a/1", b"before", 1, 1, v5=v5)
        + mqtt_codec.publish_packet(b"a/big", big, qos, 2, v5=v5)
        + mqtt_codec.publish_packet(b"a/2", b"after", 1, 3, v5=v5)
        + mqtt_codec.PING
    )
    reader, got, at, i, most = Reader(max_publish=100_000), [], 0, 0, 0
    while at < len(stream):
        step = cuts[i % len(cuts)]
        got += reader.feed(stream[at : at + step])
        most = max(most, reader.held)
        at, i = at + step, i + 1
    assert [k for k, _, _ in got] == [mqtt_codec.PUBLISH, mqtt_codec.OVERSIZED, mqtt_codec.PUBLISH, mqtt_codec.PINGREQ]
    assert mqtt_codec.parse_publish(got[0][1], got[0][2], v5=v5) == ("a/1", b"before", 1, 1)
    topic, head, q, pid, size = mqtt_codec.parse_oversized(got[1][1], got[1][2], v5=v5)
    assert (topic, head, q, pid, size) == ("a/big", big[: mqtt_codec.HEAD_BYTES], qos, 2 if qos else 0, len(big))
    assert mqtt_codec.parse_publish(got[2][1], got[2][2], v5=v5) == ("a/2", b"after", 1, 3)
    assert most <= 100_000 + 64 * 1024 + 8192  # never the whole 200 KB packet, let alone more
    assert reader.held == 0


def test_twenty_megabytes_pass_through_the_reader_without_being_held() -> None:
    payload = b"x" * 20_000_000
    raw = mqtt_codec.publish_packet(b"t/big", payload, 1, 9, v5=False) + mqtt_codec.PING
    reader, got, most = Reader(max_publish=1 << 20), [], 0
    for at in range(0, len(raw), 256 * 1024):
        got += reader.feed(raw[at : at + 256 * 1024])
        most = max(most, reader.held)
    assert [k for k, _, _ in got] == [mqtt_codec.OVERSIZED, mqtt_codec.PINGREQ]
    assert mqtt_codec.parse_oversized(got[0][1], got[0][2], v5=False)[1:] == (b"x" * 4096, 1, 9, 20_000_000)
    assert most < 256 * 1024
    with pytest.raises(MqttError, match="limit"):  # without max_publish: the old refusal
        Reader().feed(raw[:1000])


def test_an_oversized_v5_publish_with_properties_past_the_head_keeps_topic_and_id() -> None:
    props = b"\x26\x00\x01k" + struct.pack("!H", 60_000) + b"v" * 60_000  # one large user property
    props = props + b"\x26\x00\x01k" + struct.pack("!H", 20_000) + b"w" * 20_000
    body = b"\x00\x01t" + b"\x00\x05" + mqtt_codec.varint(len(props)) + props + b"p" * 10
    raw = b"\x32" + mqtt_codec.varint(len(body)) + body
    [(kind, flags, kept)] = Reader(max_publish=1000).feed(raw)
    assert kind == mqtt_codec.OVERSIZED
    topic, head, qos, pid, _size = mqtt_codec.parse_oversized(flags, kept, v5=True)
    assert (topic, head, qos, pid) == ("t", b"", 1, 5)


async def test_the_connection_marks_messages_over_its_payload_limit() -> None:
    got: list[Message] = []
    conn = Connection(False, got.append, 3, max_payload=1000)
    small = mqtt_codec.publish_packet(b"t", b"y" * 1000, 1, 1, v5=False)
    over = mqtt_codec.publish_packet(b"t", b"z" * 5000, 1, 2, v5=False)  # under the reader's skip size
    skipped = mqtt_codec.publish_packet(b"t", b"s" * 200_000, 1, 3, v5=False)  # over it
    conn.data_received(small + over + skipped)
    assert [(m.pid, m.oversize, len(m.payload), m.conn) for m in got] == [
        (1, 0, 1000, 3),
        (2, 5000, 4096, 3),
        (3, 200_000, 4096, 3),
    ]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.booleans(), st.integers(0, 300))
def test_any_bytes_through_a_skipping_reader_are_packets_or_a_clear_error(data: bytes, v5: bool, limit: int) -> None:
    reader = Reader(max_publish=limit)
    try:
        packets = reader.feed(data[:300]) + reader.feed(data[300:])
    except MqttError:
        return
    for kind, flags, body in packets:
        if kind == mqtt_codec.OVERSIZED:
            (length,) = struct.unpack_from("!I", body)
            assert length > limit
            assert len(body) - 4 == min(length, 2 + 0xFFFF + 2 + 4096 + mqtt_codec.HEAD_BYTES)  # the head only
            try:
                topic, head, _qos, _pid, size = mqtt_codec.parse_oversized(flags, body, v5=v5)
            except MqttError:
                continue
            assert isinstance(topic, str)
            assert len(head) <= mqtt_codec.HEAD_BYTES
            assert 0 <= size <= length
        else:
            assert 0 <= kind <= 15
