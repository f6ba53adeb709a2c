"""The ais role end to end: a loopback TCP feed replays NMEA sentences encoded with pyais to
`trackd serve --roles api,ais`. Two shipments on one vessel (one booked by MMSI, one by IMO number
only, resolved through type 5 static data) both get its positions, through the write path and into
the stream's outbox; an unknown vessel's positions are stored nowhere; hostile lines are counted;
the role reconnects after the feed drops the connection. Shipments sharing an identifier each get
their vessel's positions once. Then datagrams over UDP, with static data changing an IMO number's
MMSI."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from ingest.ais import AisIngester
from ingest.pipeline import Pipeline
from lab.ais_feed import AisFeed, position_report, static_report
from lab.net import free_port
from tests.conftest import RunEnv, Server, start_server, stop_server, wait_for
from trackd import db
from trackd.assessment import Evaluator
from trackd.settings import load_settings

MMSI, IMO_MMSI, STRANGER, SHARED_MMSI = 366053209, 211000001, 999000001, 477000001
UDP_MMSI, UDP_FIRST, UDP_SECOND = 538000001, 538000002, 538000003
IMO, UDP_IMO = 9074729, 9300013
MIN_INTERVAL_S = 0.5  # positions kept per vessel per this much receipt time: the feed's reconnection is longer
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


@pytest.fixture(scope="module")
def feed() -> Iterator[AisFeed]:
    f = AisFeed()
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def ais_server(testenv: RunEnv, feed: AisFeed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        testenv,
        tmp_path_factory.mktemp("ais"),
        roles="api,ais",
        extra={"TRACKD_AIS_URL": f"tcp://127.0.0.1:{feed.port}", "TRACKD_AIS_MIN_INTERVAL_S": str(MIN_INTERVAL_S)},
    )
    yield srv
    stop_server(srv)


@contextlib.contextmanager
def client(testenv: RunEnv, srv: Server) -> Iterator[httpx.Client]:
    res = testenv.trackd("tenant", "create", f"ais{secrets.token_hex(3)}")
    assert res.returncode == 0, res.stderr
    key = orjson.loads(res.stdout)["api_key"]
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        yield http


def book(
    http: httpx.Client,
    vessel: dict[str, Any] | None,
    tracking_number: str | None = None,
    references: tuple[str, ...] = (),
) -> dict[str, Any]:
    leg: dict[str, Any] = {
        "mode": "sea",
        "origin": {"name": "Rotterdam", "lat": 51.95, "lon": 4.05},
        "destination": {"name": "Singapore", "lat": 1.26, "lon": 103.84},
    }
    if vessel is not None:
        leg["vessel"] = vessel
    number = tracking_number or f"AIS{secrets.token_hex(4)}"
    r = http.post("/v1/shipments", json={"tracking_number": number, "references": list(references), "legs": [leg]})
    assert r.status_code == 201, r.text
    shipment: dict[str, Any] = r.json()
    return shipment


def metric(srv: Server, name: str, outcome: str | None = None) -> float:
    labels = f'{{outcome="{outcome}"}}' if outcome else ""
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", httpx.get(srv.url + "/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def broken_checksum(line: str) -> str:
    return line[:-2] + ("00" if line[-2:] != "00" else "01")


def positions(http: httpx.Client, shipment_id: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/shipments/{shipment_id}/events", params={"kind": "position"})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


@pytest.fixture(scope="module")
def http(testenv: RunEnv, ais_server: Server) -> Iterator[httpx.Client]:
    with client(testenv, ais_server) as c:
        yield c


def test_positions_reach_every_shipment_on_the_vessel_and_the_feed_reconnects(
    testenv: RunEnv, ais_server: Server, feed: AisFeed, http: httpx.Client
) -> None:
    by_imo = book(http, {"imo": f"IMO {IMO}"})  # first: the links read after the next booking hold both
    by_mmsi = book(http, {"mmsi": MMSI, "name": "North Star"})
    unlinked = book(http, None)
    assert by_mmsi["legs"][0]["vessel"] == {"mmsi": MMSI, "name": "North Star"}
    assert by_imo["legs"][0]["vessel"] == {"imo": IMO}
    wrong = http.post(
        "/v1/shipments",
        json={
            "tracking_number": f"AIS{secrets.token_hex(4)}",
            "legs": [{**by_imo["legs"][0], "vessel": {"imo": 9074728}}],
        },
    )
    assert wrong.status_code == 422
    assert "legs.0.vessel.imo" in wrong.json()["detail"]

    wait_for(lambda: feed.clients == 1)
    wait_for(lambda: metric(ais_server, "trackd_ais_linked_vessels") >= 1)
    unlinked_before = metric(ais_server, "trackd_ais_messages_total", "unlinked")
    at = T0
    feed.send(
        [
            *position_report(STRANGER, 10.0, 10.0, at=at),
            "!AIVDM,1,1,,A,garbage*00",
            broken_checksum(position_report(MMSI, 1.0, 1.0)[0]),
            "x" * 5000,
            *static_report(IMO_MMSI, IMO, "SOUTHERN CROSS", seq_id=4),
            *position_report(MMSI, 51.5, 3.5, speed_kn=15.0, course=225.0, at=at),
            *position_report(MMSI, 51.4, 3.4, at=at + timedelta(seconds=5)),  # within the interval: dropped
            *position_report(IMO_MMSI, 36.1, -5.4, speed_kn=12.0, course=90.0, at=at),
        ]
    )
    first = wait_for(lambda: http.get(f"/v1/shipments/{by_imo['id']}").json()["last_position"])
    assert (first["lat"], first["lon"]) == pytest.approx((36.1, -5.4), abs=1e-4)
    got = wait_for(lambda: http.get(f"/v1/shipments/{by_mmsi['id']}").json()["last_position"])
    assert (got["lat"], got["lon"], got["speed_kmh"], got["heading"]) == pytest.approx(
        (51.5, 3.5, 27.78, 225.0), abs=1e-2
    )
    events = positions(http, by_mmsi["id"])
    assert len(events) == 1
    assert datetime.fromisoformat(events[0]["occurred_at"]) == at
    assert (events[0]["source"], events[0]["raw"]["mmsi"], events[0]["raw"]["name"]) == ("ais", MMSI, None)
    assert len(positions(http, by_imo["id"])) == 1
    assert positions(http, unlinked["id"]) == []
    assert testenv.sql("SELECT count(*) FROM events WHERE raw->>'mmsi' = %s", str(STRANGER)) == [(0,)]
    assert testenv.sql("SELECT mmsi, name FROM vessels WHERE imo = %s", IMO) == [(IMO_MMSI, "SOUTHERN CROSS")]
    outbox = testenv.sql(
        "SELECT count(*) FROM outbox WHERE type = 'position' AND shipment_id = ANY(%s)", [by_mmsi["id"], by_imo["id"]]
    )
    assert outbox == [(2,)]
    assert metric(ais_server, "trackd_ais_messages_total", "unlinked") >= unlinked_before + 1
    assert metric(ais_server, "trackd_ais_messages_total", "limited") >= 1
    assert metric(ais_server, "trackd_ais_lines_total", "checksum") >= 1
    assert metric(ais_server, "trackd_ais_lines_total", "malformed") >= 1
    assert metric(ais_server, "trackd_ais_lines_total", "overlong") >= 1

    feed.drop()  # the feed goes away; the role connects again
    wait_for(lambda: feed.accepted >= 2 and feed.clients == 1)
    later = at + timedelta(minutes=5)
    feed.send(position_report(MMSI, 50.0, 2.0, at=later))
    wait_for(lambda: len(positions(http, by_mmsi["id"])) == 2)
    wait_for(lambda: len(positions(http, by_imo["id"])) == 1)
    assert http.get(f"/v1/shipments/{by_mmsi['id']}").json()["last_position"]["lat"] == pytest.approx(50.0, abs=1e-4)


def test_shipments_sharing_an_identifier_each_get_the_vessels_positions_once(
    ais_server: Server, feed: AisFeed, http: httpx.Client
) -> None:
    number = f"AIS{secrets.token_hex(4)}"
    linked = metric(ais_server, "trackd_ais_linked_vessels")
    older = book(http, {"mmsi": SHARED_MMSI}, references=(number,))  # the older wins its identifiers
    newer = book(http, {"mmsi": SHARED_MMSI}, tracking_number=number)
    wait_for(lambda: metric(ais_server, "trackd_ais_linked_vessels") >= linked + 1)
    feed.send(position_report(SHARED_MMSI, 10.5, 20.5, at=T0 + timedelta(minutes=10)))
    wait_for(lambda: len(positions(http, newer["id"])) == 1)
    assert len(positions(http, older["id"])) == 1
    assert http.get(f"/v1/shipments/{older['id']}").json()["last_position"]["lat"] == pytest.approx(10.5, abs=1e-4)


def test_udp_datagrams(testenv: RunEnv, http: httpx.Client) -> None:
    """The role over UDP, run in this process (a server of its own would cost its start-up); static
    data naming a second MMSI for an IMO number right after the first is not followed."""
    shipment = book(http, {"mmsi": UDP_MMSI})
    by_imo = book(http, {"imo": UDP_IMO})
    port = free_port()
    settings = load_settings(database_url=testenv.dsn, ais_url=f"udp://:{port}")  # loopback
    at = T0 + timedelta(minutes=30)

    async def recorded() -> bool:
        return bool(await asyncio.to_thread(testenv.sql, "SELECT 1 FROM vessels WHERE imo = %s", UDP_IMO))

    async def run() -> list[tuple[Any, ...]]:
        pool = await db.open_pool(testenv.dsn, 2)
        ingester = AisIngester(settings, Pipeline(pool, Evaluator(settings)))
        stop = asyncio.Event()
        task = asyncio.create_task(ingester.run(stop))
        try:
            await asyncio.wait_for(ingester.linked.wait(), 10)
            await asyncio.wait_for(ingester.reading.wait(), 10)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                line = position_report(UDP_MMSI, 40.0, 20.0, at=at)[0]
                sock.sendto(line.encode(), ("127.0.0.1", port))  # a datagram's end ends its line
                learnt = [
                    *static_report(UDP_FIRST, UDP_IMO, "FIRST", seq_id=1),
                    *static_report(UDP_SECOND, UDP_IMO, "SECOND", seq_id=2),
                    *position_report(UDP_SECOND, 30.0, 10.0, at=at),
                    *position_report(UDP_FIRST, 35.0, 15.0, at=at),
                ]
                sock.sendto("\r\n".join(learnt).encode(), ("127.0.0.1", port))
            query = "SELECT lat, lon, occurred_at FROM positions WHERE shipment_id = %s"
            for _ in range(200):
                rows = await asyncio.to_thread(testenv.sql, query, shipment["id"])
                if rows and await asyncio.to_thread(testenv.sql, query, by_imo["id"]) and await recorded():
                    return rows
                await asyncio.sleep(0.05)
            return []
        finally:
            stop.set()
            await task
            await pool.close()

    assert asyncio.run(run()) == [(pytest.approx(40.0, abs=1e-4), pytest.approx(20.0, abs=1e-4), at)]
    query = "SELECT lat, lon FROM positions WHERE shipment_id = %s"
    assert testenv.sql(query, by_imo["id"]) == [(pytest.approx(35.0, abs=1e-4), pytest.approx(15.0, abs=1e-4))]
    assert testenv.sql("SELECT mmsi, name FROM vessels WHERE imo = %s", UDP_IMO) == [(UDP_FIRST, "FIRST")]
