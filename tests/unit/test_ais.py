"""AIS from bytes: line splitting, sentence checks, reassembly, decoding, and the reader's fan-out to
the shipments on a vessel (linked by MMSI, or by IMO through type 5 static data), rate limit and
hostile input. Sentences are encoded with pyais."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyais import encode_dict

from ingest.ais import RESOLVE_S, Reader, endpoint
from ingest.ais_codec import (
    MAX_LINE,
    BadLine,
    LineSplitter,
    PositionReport,
    Reassembler,
    StaticReport,
    decode,
    parse,
    peek,
    peek_imo,
    report_time,
)
from lab.ais_feed import Voyage, voyage_sentences
from serve import cli
from trackd import geo
from trackd.codes import Mode
from trackd.errors import ConfigError, ValidationError
from trackd.model import Location
from trackd.settings import load_settings
from trackd.shipment import Leg, Vessel
from trackd.vessel_store import Link

NOW = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
MMSI, OTHER_MMSI, STRANGER = 366053209, 211000001, 999000001
IMO = 9074729  # check digit: 9*7 + 0*6 + 7*5 + 4*4 + 7*3 + 2*2 = 139 -> 9


def nmea(seq_id: int | None = None, channel: str = "A", **fields: Any) -> list[str]:
    return encode_dict(fields, talker_id="AI", sentence_type="VDM", radio_channel=channel, seq_id=seq_id)


def position(mmsi: int = MMSI, **extra: Any) -> list[str]:
    return nmea(type=1, mmsi=mmsi, lat=51.95, lon=4.05, speed=10.0, course=271.5, heading=270, **extra)


def tagged(line: str, at: datetime) -> str:
    tag = f"c:{int(at.timestamp())}"
    return f"\\{tag}*{_xor(tag):02X}\\{line}"


def _xor(text: str) -> int:
    out = 0
    for b in text.encode():
        out ^= b
    return out


def stream(*groups: list[str]) -> bytes:
    return "".join(line + "\r\n" for g in groups for line in g).encode()


def links() -> list[Link]:
    return [
        Link(1, "acme", "shp_a", "TN-A", MMSI, None),
        Link(1, "acme", "shp_b", "TN-B", None, IMO),
        Link(2, "globex", "shp_c", "TN-C", MMSI, IMO),
    ]


def reader(interval_s: float = 60.0) -> Reader:
    r = Reader(interval_s)
    r.set_links(links())
    return r


def events_of(out: Any) -> dict[str, Any]:
    """The events of an output by the id of the shipment they name."""
    return {e.shipment_id: e for _, evs in out.events.values() for e in evs}


# Lines


def test_lines_split_across_reads_and_line_endings() -> None:
    s = LineSplitter()
    assert s.feed(b"!AIVDM,one\r\n!AIV") == [b"!AIVDM,one"]
    assert s.feed(b"DM,two\n\n  \r\n!AIVDM,thr") == [b"!AIVDM,two"]
    assert s.feed(b"ee") == []
    assert s.flush() == [b"!AIVDM,three"]


def test_an_overlong_line_is_skipped_as_it_streams_without_growing_the_buffer() -> None:
    s = LineSplitter()
    assert s.feed(b"ok1\n" + b"x" * (MAX_LINE - 10)) == [b"ok1"]
    for _ in range(1000):  # 1000 reads of one endless line: the buffer never holds it
        assert s.feed(b"y" * 4096) == []
        assert len(s._buf) <= MAX_LINE
    assert s.feed(b"zzz\nok2\n") == [b"ok2"]
    assert s.overlong == 1
    assert s.feed(b"q" * (MAX_LINE + 1) + b"\nok3\n") == [b"ok3"]
    assert s.overlong == 2


# Sentences


def test_parse_checks_framing_checksum_and_tag_block() -> None:
    line = position()[0]
    s = parse(line.encode())
    assert (s.count, s.number, s.channel, s.text, s.tag_time) == (1, 1, "A", line, None)
    at = datetime(2026, 3, 1, 11, 59, 0, tzinfo=UTC)
    assert parse(tagged(line, at).encode()).tag_time == at
    broken = line[:-2] + ("00" if line[-2:] != "00" else "01")
    for bad, outcome in [
        (broken.encode(), "checksum"),
        (b"\\c:1*00\\" + line.encode(), "checksum"),
        (b"garbage", "malformed"),
        (b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47", "malformed"),
        (b"\xff\xfe" + line.encode(), "malformed"),
        (b"!AIVDM,1,1,,A,15M67FOP1sG?d`0E`Ah3QBo5P000,0", "malformed"),
    ]:
        with pytest.raises(BadLine) as err:
            parse(bad)
        assert err.value.outcome == outcome, bad


@pytest.mark.parametrize(
    "fields",
    [
        "AIVDM,0,1,,A,15M67F,0",  # no fragments
        "AIVDM,2,3,,A,15M67F,0",  # fragment 3 of 2
        "AIVDM,1,1,,A,15M67F,7",  # fill bits past 5
        "AIVDM,1,1,12,A,15M67F,0",  # a sequential id is one digit
        "AIVDM,1,1,,AB,15M67F,0",  # a channel is one character
        "AIVDM,1,1,,A,15M6 7F,0",  # outside the six-bit armour
        "GPGGA,1,1,,A,15M67F,0",
    ],
)
def test_parse_refuses_fields_out_of_range(fields: str) -> None:
    with pytest.raises(BadLine, match="malformed"):
        parse(f"!{fields}*{_xor(fields):02X}".encode())


def test_peek_reads_type_and_mmsi_without_decoding() -> None:
    for msg_type, mmsi in [(1, MMSI), (18, 123456789), (27, 1)]:
        assert peek(parse(nmea(type=msg_type, mmsi=mmsi)[0].encode()).payload) == (msg_type, mmsi)
    assert peek("15M6") is None


def test_peek_reads_the_imo_number_of_static_data() -> None:
    first = parse(nmea(seq_id=1, type=5, mmsi=MMSI, imo=IMO, shipname="NORTH STAR")[0].encode()).payload
    assert peek(first) == (5, MMSI)
    assert peek_imo(first) == IMO
    assert peek_imo(parse(nmea(seq_id=1, type=5, mmsi=MMSI)[0].encode()).payload) == 0
    assert peek_imo(first[:11]) is None


# Reassembly


def test_fragments_join_by_sequential_id_and_channel() -> None:
    a = [parse(x.encode()) for x in nmea(seq_id=3, channel="A", type=5, mmsi=MMSI, imo=IMO, shipname="NORTH STAR")]
    b = [parse(x.encode()) for x in nmea(seq_id=3, channel="B", type=5, mmsi=OTHER_MMSI, shipname="SOUTH")]
    assert len(a) == len(b) == 2
    r = Reassembler()
    assert r.add(a[0], 0.0) is None
    assert r.add(b[0], 0.1) is None  # same id, other channel: its own message
    assert r.add(a[1], 0.2) == a
    assert r.add(b[1], 0.3) == b
    assert r.dropped == 0
    report = decode(a)
    assert report == StaticReport(MMSI, 5, IMO, "NORTH STAR")


def test_incomplete_messages_are_dropped_after_the_timeout_or_when_out_of_order() -> None:
    a = [parse(x.encode()) for x in nmea(seq_id=1, type=5, mmsi=MMSI, imo=IMO)]
    r = Reassembler(timeout_s=5.0)
    assert r.add(a[0], 0.0) is None
    assert r.add(a[1], 6.0) is None  # too late: the first fragment was dropped, then this orphan
    assert r.dropped == 2
    assert r.waiting == 0
    assert r.add(a[1], 7.0) is None  # a second fragment with no first
    assert r.dropped == 3
    assert r.add(a[0], 8.0) is None
    assert r.add(a[0], 8.1) is None  # a new first fragment replaces the unfinished one
    assert r.dropped == 4
    assert r.add(a[1], 8.2) == a
    r.add(a[0], 10.0)
    r.expire(15.1)
    assert r.dropped == 5
    assert r.waiting == 0


def test_waiting_messages_are_bounded() -> None:
    r = Reassembler(max_groups=4)
    firsts = [parse(nmea(seq_id=i, type=5, mmsi=MMSI)[0].encode()) for i in range(6)]
    for i, s in enumerate(firsts):
        r.add(s, float(i))
    assert r.waiting == 4
    assert r.dropped == 2


# Decoding


def test_positions_of_every_position_type_in_si_units() -> None:
    cases = [
        (nmea(type=1, mmsi=MMSI, lat=51.95, lon=4.05, speed=10.0, course=271.5, heading=270, second=12), 18.52, 271.5),
        (nmea(type=3, mmsi=MMSI, lat=51.95, lon=4.05, speed=102.3, course=360, heading=90), None, 90.0),
        (nmea(type=18, mmsi=MMSI, lat=51.95, lon=4.05, speed=5.0, course=360, heading=511), 9.26, None),
        (nmea(type=19, mmsi=MMSI, lat=51.95, lon=4.05, speed=5.0, course=10.0, shipname="B"), 9.26, 10.0),
        (nmea(type=27, mmsi=MMSI, lat=51.95, lon=4.05, speed=63, course=511), None, None),
    ]
    for lines, speed_kmh, heading in cases:
        report = decode([parse(x.encode()) for x in lines])
        assert isinstance(report, PositionReport)
        assert (round(report.position.lat, 3), round(report.position.lon, 3)) == (51.95, 4.05)
        assert (report.position.speed_kmh, report.position.heading) == (speed_kmh, heading)
    assert decode([parse(nmea(type=1, mmsi=MMSI, lat=91, lon=181)[0].encode())]) is None
    assert decode([parse(nmea(type=1, mmsi=MMSI, lat=0, lon=0)[0].encode())]) is None


def test_report_time_from_tag_block_else_the_reports_second() -> None:
    lines = position(second=20)
    report = decode([parse(lines[0].encode())])
    assert isinstance(report, PositionReport)
    assert report_time(report, NOW) == NOW.replace(second=20)
    assert report_time(report, NOW.replace(second=10)) == NOW.replace(second=20) - timedelta(minutes=1)
    at = NOW - timedelta(hours=3)
    tagged_report = decode([parse(tagged(lines[0], at).encode())])
    assert isinstance(tagged_report, PositionReport)
    assert report_time(tagged_report, NOW) == at
    for ahead, expected in [
        (timedelta(minutes=4), NOW + timedelta(minutes=4)),  # a receiver's clock a little fast
        (timedelta(minutes=6), NOW.replace(second=20)),  # implausible tags: ignored
        (timedelta(hours=20), NOW.replace(second=20)),
        (timedelta(days=2), NOW.replace(second=20)),
    ]:
        future = decode([parse(tagged(lines[0], NOW + ahead).encode())])
        assert isinstance(future, PositionReport)
        assert report_time(future, NOW) == expected, ahead


# The reader


def test_a_linked_vessels_position_reaches_every_shipment_on_it() -> None:
    r = reader()
    out = r.feed(stream(position(second=20)), 0.0, NOW)
    got = events_of(out)
    assert sorted(got) == ["shp_a", "shp_c"]  # by MMSI in two tenants; shp_b waits for its IMO
    assert sorted(out.events) == [1, 2]
    e = got["shp_a"]
    assert (e.shipment, e.refs, e.match_keys()) == (None, (), ())  # named by id, never by identifier
    assert e.source == "ais"
    assert e.occurred_at == NOW.replace(second=20)
    assert e.event_id == f"ais:{MMSI}:{int(NOW.replace(second=20).timestamp())}:shp_a"
    assert (e.position.lat, e.position.lon, e.position.speed_kmh) == (51.95, 4.05, 18.52)
    assert e.raw["mmsi"] == MMSI
    assert e.raw["nmea"] == position(second=20)
    assert r.counts["kept"] == 1


def test_a_vessel_known_by_imo_gets_its_mmsi_from_static_data() -> None:
    r = reader()
    assert events_of(r.feed(stream(position(OTHER_MMSI)), 0.0, NOW)) == {}
    assert r.counts["unlinked"] == 1
    static = nmea(seq_id=2, type=5, mmsi=OTHER_MMSI, imo=IMO, shipname="NORTH STAR@@@")
    out = r.feed(stream(static, position(OTHER_MMSI)), 1.0, NOW)
    assert out.resolved == [(IMO, OTHER_MMSI, "NORTH STAR")]
    got = events_of(out)
    assert sorted(got) == ["shp_b"]
    assert got["shp_b"].raw["name"] == "NORTH STAR"
    assert got["shp_b"].raw["imo"] == IMO
    # recorded once: the same static data again resolves nothing new
    assert r.feed(stream(nmea(seq_id=4, type=5, mmsi=OTHER_MMSI, imo=IMO)), 2.0, NOW).resolved == []
    # links read again before the MMSI is written keep what was learnt
    r.set_links(links())
    assert sorted(events_of(r.feed(stream(position(OTHER_MMSI)), 70.0, NOW + timedelta(minutes=1)))) == ["shp_b"]
    # once the links are read again with the recorded MMSI, it stays
    r.set_links([Link(1, "acme", "shp_b", "TN-B", None, IMO, OTHER_MMSI)])
    assert sorted(events_of(r.feed(stream(position(OTHER_MMSI)), 140.0, NOW + timedelta(minutes=5)))) == ["shp_b"]


def test_static_data_changing_an_imo_numbers_mmsi_is_followed_at_most_once_per_interval() -> None:
    r = reader()
    resolved = []
    for i in range(80):  # 80 reports in 20 s alternating two MMSIs: one change
        static = nmea(seq_id=i % 10, type=5, mmsi=(OTHER_MMSI, STRANGER)[i % 2], imo=IMO)
        resolved += r.feed(stream(static), i / 4, NOW).resolved
    assert resolved == [(IMO, OTHER_MMSI, None)]
    assert r.imos == {IMO: OTHER_MMSI}
    assert r.linked_vessels == 2
    assert r.feed(stream(nmea(seq_id=1, type=5, mmsi=STRANGER, imo=IMO)), RESOLVE_S, NOW).resolved == [
        (IMO, STRANGER, None)
    ]
    assert sorted(events_of(r.feed(stream(position(STRANGER)), RESOLVE_S, NOW))) == ["shp_b"]
    assert events_of(r.feed(stream(position(OTHER_MMSI)), RESOLVE_S, NOW)) == {}
    assert r.linked_vessels == 2  # MMSI (shp_a, shp_c) and STRANGER (shp_b)


def test_shipments_sharing_an_identifier_each_get_their_own_event() -> None:
    r = Reader(60)
    r.set_links([Link(1, "acme", "shp_old", "TN-1", MMSI, None), Link(1, "acme", "shp_new", "TN-1", None, IMO, MMSI)])
    (tenant, events) = r.feed(stream(position()), 0.0, NOW).events[1]
    assert tenant.name == "acme"
    assert sorted(e.shipment_id for e in events) == ["shp_new", "shp_old"]
    assert len({e.event_id for e in events}) == 2


def test_unknown_vessels_are_skipped_without_decoding() -> None:
    r = reader()
    # while an IMO number waits for its MMSI, a stranger's type 5 naming another IMO is not decoded
    out = r.feed(stream(position(STRANGER), nmea(seq_id=1, type=5, mmsi=STRANGER, imo=1234567)), 0.0, NOW)
    assert out.events == {}
    assert out.resolved == []
    assert r.counts["unlinked"] == 2
    assert r.counts["static"] == 0
    r.feed(stream(nmea(seq_id=2, type=5, mmsi=STRANGER, imo=IMO)), 0.0, NOW)  # the awaited IMO: decoded
    assert r.counts["static"] == 1
    r.set_links([Link(1, "acme", "shp_a", "TN-A", MMSI, None)])  # none waits: a stranger's type 5 is not
    r.feed(stream(nmea(seq_id=1, type=5, mmsi=STRANGER, imo=IMO)), 1.0, NOW)
    assert r.counts["unlinked"] == 3
    assert r.counts["static"] == 1


def test_one_position_per_vessel_per_interval_of_receipt() -> None:
    r = reader(interval_s=60)
    t0 = NOW - timedelta(minutes=10)
    kept = []
    for received_s, tag_s in [(0, 0), (10, 10), (59, 59), (60, 1), (61, 61), (90, 30), (130, 130)]:
        line = tagged(position()[0], t0 + timedelta(seconds=tag_s))
        got = events_of(r.feed(stream([line]), 1000.0 + received_s, NOW + timedelta(seconds=received_s)))
        kept += [e.occurred_at for s, e in got.items() if s == "shp_a"]
    assert kept == [t0, t0 + timedelta(seconds=1), t0 + timedelta(seconds=130)]  # the report's own times
    assert r.counts["kept"] == 3
    assert r.counts["limited"] == 4


def test_a_tag_time_far_ahead_neither_counts_nor_blocks_the_vessel() -> None:
    r = reader(interval_s=60)
    out = r.feed(stream([tagged(position(second=20)[0], NOW + timedelta(hours=20))]), 0.0, NOW)
    assert [e.occurred_at for e in events_of(out).values()] == [NOW.replace(second=20)] * 2
    later = NOW + timedelta(seconds=61)
    out = r.feed(stream([tagged(position()[0], later)]), 61.0, later)
    assert sorted(events_of(out)) == ["shp_a", "shp_c"]
    assert {e.occurred_at for e in events_of(out).values()} == {later}
    assert r.counts["limited"] == 0


def test_names_from_type_24_and_other_types_counted() -> None:
    r = reader()
    r.feed(stream(nmea(type=24, mmsi=MMSI, partno=0, shipname="NORTH STAR")), 0.0, NOW)
    r.feed(stream(nmea(type=4, mmsi=MMSI)), 0.0, NOW)
    out = r.feed(stream(position()), 0.0, NOW)
    assert {e.raw["name"] for e in events_of(out).values()} == {"NORTH STAR"}
    assert r.counts["static"] == 1
    assert r.counts["other_type"] == 1


def test_hostile_lines_are_counted_and_the_rest_read() -> None:
    r = reader()
    line = position()[0]
    junk = [
        "garbage",
        line[:-2] + ("00" if line[-2:] != "00" else "01"),
        "!" + "A" * 5000,
        "\x00\x01\x02",
        "!AIVDM,2,2,7,A,0000,2*" + f"{_xor('AIVDM,2,2,7,A,0000,2'):02X}",
    ]
    out = r.feed(("\n".join(junk) + "\n" + line + "\n").encode(), 0.0, NOW)
    assert sorted(events_of(out)) == ["shp_a", "shp_c"]
    assert {k: v for k, v in r.counts.items() if v} == {
        "malformed": 2,
        "checksum": 1,
        "overlong": 1,
        "sentence": 2,
        "incomplete": 1,
        "kept": 1,
    }


def test_datagrams_are_read_whole_and_a_new_connection_drops_the_half_line() -> None:
    r = reader()
    assert sorted(events_of(r.feed_datagram(position()[0].encode(), 0.0, NOW))) == ["shp_a", "shp_c"]
    r2 = reader()
    r2.feed(position()[0][:20].encode(), 0.0, NOW)
    r2.restart()
    assert sorted(events_of(r2.feed((position()[0] + "\n").encode(), 0.0, NOW))) == ["shp_a", "shp_c"]
    assert r2.counts["malformed"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=120))
def test_random_bytes_never_raise(data: bytes, cut: int) -> None:
    r = reader()
    valid = stream(position(), nmea(seq_id=1, type=5, mmsi=OTHER_MMSI, imo=IMO))
    r.feed(valid[:cut] + data + valid[cut:], 0.0, NOW)
    r.feed_datagram(data, 1.0, NOW)


def test_endpoint_of_the_url() -> None:
    assert endpoint("tcp://feed.example:5631") == ("tcp", "feed.example", 5631)
    assert endpoint("udp://:10110") == ("udp", "127.0.0.1", 10110)  # a UDP port takes anyone's positions
    assert endpoint("udp://0.0.0.0:10110") == ("udp", "0.0.0.0", 10110)
    assert endpoint("udp://10.0.0.5:10110") == ("udp", "10.0.0.5", 10110)


# The vessel of a leg


def test_a_sea_legs_vessel_is_checked() -> None:
    rtm, sin = Location(unlocode="NLRTM", lat=51.95, lon=4.05), Location(unlocode="SGSIN", lat=1.26, lon=103.84)
    v = Vessel.from_dict({"imo": "IMO 9074729", "mmsi": "366053209", "name": " North Star "})
    assert v == Vessel(IMO, MMSI, "North Star")
    leg = Leg(Mode.SEA, rtm, sin, vessel=v)
    assert Leg.from_dict(leg.to_dict()) == leg
    assert leg.to_dict()["vessel"] == {"imo": IMO, "mmsi": MMSI, "name": "North Star"}
    assert "vessel" not in Leg(Mode.SEA, rtm, sin).to_dict()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"imo": 9074728}, "legs.vessel.imo"),  # wrong check digit
        ({"imo": "90747"}, "legs.vessel.imo"),
        ({"mmsi": 36605320}, "legs.vessel.mmsi"),
        ({"mmsi": True}, "legs.vessel.mmsi"),
        ({}, "legs.vessel"),
    ]
    for bad, where in cases:
        with pytest.raises(ValidationError) as err:
            Vessel.from_dict(bad)
        assert err.value.field == where, bad
    with pytest.raises(ValidationError, match="only a sea leg"):
        Leg(Mode.ROAD, rtm, sin, vessel=v)


@pytest.mark.parametrize(
    ("url", "word"),
    [("http://feed:1", "must be tcp://"), ("tcp://:5631", "must be tcp://"), ("tcp://feed", "needs a port")],
)
def test_a_bad_feed_url_is_one_line_naming_the_variable(url: str, word: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(ais_url=url)
    assert str(err.value).startswith("TRACKD_AIS_URL: ")
    assert word in str(err.value)
    assert "\n" not in str(err.value)


def test_the_simulated_feed_is_read_back() -> None:
    t0 = NOW - timedelta(hours=10)
    path = ((51.95, 4.05), (51.0, 2.0), (50.0, -1.0))
    voyage = Voyage(MMSI, IMO, "NORTH STAR", path[0], path[-1], t0, t0 + timedelta(hours=10), path=path)
    before, after = voyage.where(t0 - timedelta(hours=1)), voyage.where(t0 + timedelta(hours=11))
    assert (before[0], before[1]) == (pytest.approx(path[0]), 0.0)
    assert (after[0], after[1]) == (pytest.approx(path[-1]), 0.0)
    (lat, lon), speed_kn, _ = voyage.where(t0 + timedelta(hours=5))
    assert speed_kn == pytest.approx(geo.path_length_km(path) / 10 / 1.852)
    r = Reader(0)
    r.set_links([Link(1, "acme", "shp_b", "TN-B", None, IMO)])
    out = r.feed(stream(voyage_sentences([voyage], t0 + timedelta(hours=5))), 0.0, NOW)
    assert out.resolved == [(IMO, MMSI, "NORTH STAR")]
    (event,) = events_of(out).values()
    assert event.occurred_at == t0 + timedelta(hours=5)
    assert (event.position.lat, event.position.lon) == pytest.approx((lat, lon), abs=1e-4)


def test_the_role_needs_its_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TRACKD_AIS_URL", raising=False)
    assert cli.main(["serve", "--roles", "api,ais"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trackd: TRACKD_AIS_URL: ")
    assert err.count("\n") == 1
    assert "ais" in cli.parse_roles("api,ais")
