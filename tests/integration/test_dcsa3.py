"""DCSA Track & Trace 3.0.0 end to end: pushed to the signed webhook, pulled by the worker from a
publisher's `GET /events`, and published by trackd at `GET /v1/dcsa/v3/events`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson
import pytest
from psycopg_pool import AsyncConnectionPool

from ingest.poller import Poller
from serve.cli import main as cli_main
from tests.conftest import RunEnv, Tenant, _drop_database, _make_database, wait_for
from tests.unit.test_dcsa3 import validate
from trackd import db, source_store, store, tenant_store
from trackd.assessment import Evaluator
from trackd.settings import Settings

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads" / "dcsa"
TRD = "MAEU262417530"
PARTY = {"originatingParty": {"partyCode": "ONE", "codeListProvider": "SMDG", "codeListName": "LCL"}}


def load(name: str) -> Any:
    return orjson.loads((PAYLOADS / name).read_bytes())


def event(event_id: str, kind: str, code: str, at: str, updated: str) -> dict[str, Any]:
    fields = {"TRANSPORT": "transportEventTypeCode", "EQUIPMENT": "equipmentEventTypeCode"}
    return {
        "eventRouting": PARTY,
        "eventID": event_id,
        "eventDateTime": at,
        "eventUpdatedDateTime": updated,
        "eventClassification": {"eventTypeCode": kind, "eventClassifierCode": "ACT", fields[kind]: code},
        "shipmentDetails": {"documentReference": {"typeCode": "TRD", "reference": "ONEY-77120"}},
    }


@pytest.fixture(scope="module")
def tenants(make_tenant: Any) -> tuple[Tenant, Tenant]:
    """Two tenants for the module (each test its own shipments): creating one costs a process."""
    return make_tenant("dcsa3"), make_tenant("dcsa3")


def cli(testenv: RunEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """`trackd ...` in this process (a process of its own costs seconds): (exit code, stdout, stderr)."""
    monkeypatch.setenv("TRACKD_DATABASE_URL", testenv.dsn)
    monkeypatch.setenv("TRACKD_WEBHOOK_ALLOW_PRIVATE", "1")
    code = cli_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def push(t: Tenant, *events: dict[str, Any]) -> httpx.Response:
    return t.signed("dcsa", orjson.dumps({"events": list(events)}), header="Notification-Signature")


def new_shipment(t: Tenant, tracking: str, references: list[str] | None = None) -> str:
    res = t.http.post(
        "/v1/shipments", json={"tracking_number": tracking, "references": references or [], "mode": "sea"}
    )
    assert res.status_code == 201, res.text
    sid: str = res.json()["id"]
    return sid


def status(t: Tenant, sid: str) -> str:
    got: str = t.http.get(f"/v1/shipments/{sid}").json()["status"]
    return got


def events_of(t: Tenant, sid: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = t.http.get(f"/v1/shipments/{sid}/events", params={"limit": 500}).json()["items"]
    return items


def test_versions_replace_and_retractions_withdraw_by_event_time(tenants: tuple[Tenant, Tenant]) -> None:
    t = tenants[0]
    sid = new_shipment(t, "ONEY-77120")
    first = [
        event("e1", "EQUIPMENT", "LOAD", "2026-11-20T10:00:00Z", "2026-11-20T10:05:00Z"),
        event("e2", "TRANSPORT", "DEPA", "2026-11-20T12:00:00Z", "2026-11-20T12:05:00Z"),
        event("e3", "EQUIPMENT", "AVPU", "2026-11-28T20:00:00Z", "2026-11-28T20:05:00Z"),
    ]
    res = push(t, *first)
    assert res.status_code == 200, res.text
    assert res.json() == {"accepted": 3, "stored": 3, "duplicates": 0}
    assert status(t, sid) == "available_for_pickup"
    # A later version of e3: a discharge, not yet available for pickup.
    assert push(t, event("e3", "EQUIPMENT", "DISC", "2026-11-28T19:00:00Z", "2026-11-28T21:00:00Z")).status_code == 200
    assert status(t, sid) == "in_transit"
    # An older version arriving late is stored already replaced.
    assert (
        push(t, event("e3", "EQUIPMENT", "AVPU", "2026-11-28T20:00:00Z", "2026-11-28T20:01:00Z")).json()["stored"] == 1
    )
    assert status(t, sid) == "in_transit"
    assert push(t, event("e5", "EQUIPMENT", "AVPU", "2026-11-29T08:00:00Z", "2026-11-29T08:01:00Z")).status_code == 200
    assert status(t, sid) == "available_for_pickup"
    retraction = {
        "eventRouting": PARTY,
        "eventID": "e5",
        "isRetracted": True,
        "eventUpdatedDateTime": "2026-11-29T09:00:00Z",
    }
    assert push(t, retraction).status_code == 200
    assert status(t, sid) == "in_transit"
    stored = {(e["id"].split("/", 1)[1], e["raw_code"], e["occurred_at"], e["retracted"]) for e in events_of(t, sid)}
    assert stored == {
        ("e1@v2026-11-20T10:05:00.000000Z", "LOAD", "2026-11-20T10:00:00+00:00", False),
        ("e2@v2026-11-20T12:05:00.000000Z", "DEPA", "2026-11-20T12:00:00+00:00", False),
        ("e3@v2026-11-28T20:05:00.000000Z", "AVPU", "2026-11-28T20:00:00+00:00", True),
        ("e3@v2026-11-28T21:00:00.000000Z", "DISC", "2026-11-28T19:00:00+00:00", False),
        ("e3@v2026-11-28T20:01:00.000000Z", "AVPU", "2026-11-28T20:00:00+00:00", True),
        ("e5@v2026-11-29T08:01:00.000000Z", "AVPU", "2026-11-29T08:00:00+00:00", True),
    }
    # Redelivery stores nothing; a bad signature nothing either; the older forms still answer 204.
    assert push(t, *first).json() == {"accepted": 3, "stored": 0, "duplicates": 3}
    bad = t.signed("dcsa", orjson.dumps({"events": first}), header="Notification-Signature", value="sha256=00")
    assert bad.status_code == 401
    old = t.signed("dcsa", (PAYLOADS / "v3_events.json").read_bytes(), header="Notification-Signature")
    assert old.status_code == 204


@dataclass
class Carrier:
    """A DCSA publisher's `GET /events`: page 1 names page 2, which fails once; a later pass (asking
    from the latest update) gets the last event again and a revision."""

    events: list[dict[str, Any]]
    revision: dict[str, Any]
    requests: list[tuple[dict[str, str], str | None, str | None]] = field(default_factory=list)
    failed: bool = False

    def page(self, query: dict[str, str]) -> tuple[int, list[dict[str, Any]], str | None]:
        if "eventUpdatedDateTimeMin" in query:
            return 200, [self.events[-1], self.revision], None
        if query.get("cursor") == "page-2":
            if not self.failed:
                self.failed = True
                return 503, [], None
            return 200, self.events[2:], None
        return 200, self.events[:2], "page-2"


@pytest.fixture
def carrier() -> Iterator[tuple[str, Carrier]]:
    doc = load("v3_0_0_events.json")
    state = Carrier(doc["events"], load("v3_0_0_revisions.json")["events"][0])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query))
            state.requests.append((query, self.headers.get("authorization"), self.headers.get("api-version")))
            code, events, cursor = state.page(query) if parts.path == "/dcsa/events" else (404, [], None)
            body = orjson.dumps({"events": events})
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            if cursor:
                self.send_header("Next-Page-Cursor", cursor)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/dcsa", state
    httpd.shutdown()
    httpd.server_close()


def test_the_worker_pulls_pages_backs_off_resumes_and_stores_each_event_once(
    testenv: RunEnv,
    tenants: tuple[Tenant, Tenant],
    carrier: tuple[str, Carrier],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, feed = carrier
    t = tenants[0]
    sid = new_shipment(t, TRD, ["MSKU7304512"])
    code, out, err = cli(
        testenv, monkeypatch, capsys, "source", "add", "dcsa", "--tenant", t.name, "--url", url, "--api-key", "k-123",
        "--interval", "1",
    )  # fmt: skip
    assert code == 0, err
    source = orjson.loads(out)
    assert (source["url"], source["interval_s"], source["has_api_key"]) == (url, 1, True)
    wait_for(lambda: len(feed.requests) >= 4, timeout=20)
    first_page = {"limit": "100"}
    assert feed.requests[:4] == [
        (first_page, "Bearer k-123", "3.0.0"),
        ({**first_page, "cursor": "page-2"}, "Bearer k-123", "3.0.0"),  # 503
        ({**first_page, "cursor": "page-2"}, "Bearer k-123", "3.0.0"),  # after the backoff, the same page
        ({**first_page, "eventUpdatedDateTimeMin": "2026-11-05T03:02:00Z"}, "Bearer k-123", "3.0.0"),
    ]
    got = wait_for(lambda: len(events_of(t, sid)) == 6 and events_of(t, sid))
    by_kind = sorted((e["kind"], e["raw_code"] or "", e["retracted"]) for e in got)
    assert by_kind == [
        ("milestone", "ARRI", False),
        ("milestone", "DEPA", False),
        ("milestone", "DEPA", True),  # replaced by the revision of the later pass
        ("milestone", "LOAD", False),
        ("position", "", False),
        ("sensor", "", False),
    ]
    rows = testenv.sql("SELECT count(*), count(DISTINCT event_id) FROM events WHERE shipment_id = %s", sid)
    assert rows == [(6, 6)]  # the events asked twice are stored once
    shipment = t.http.get(f"/v1/shipments/{sid}").json()
    assert (shipment["status"], shipment["last_position"]["lat"]) == ("in_transit", 5.9102)
    code, out, _ = cli(testenv, monkeypatch, capsys, "source", "list", "--tenant", t.name)
    listed = orjson.loads(out)
    assert [(s["id"], s["failures"], s["last_error"]) for s in listed] == [(source["id"], 0, None)]
    assert listed[0]["events_received"] >= 7
    assert datetime.fromisoformat(listed[0]["updated_since"]) == datetime(2026, 11, 5, 3, 2, tzinfo=UTC)
    assert cli(testenv, monkeypatch, capsys, "source", "remove", source["id"])[:2] == (
        0,
        f'{{"removed":"{source["id"]}"}}\n',
    )
    assert cli(testenv, monkeypatch, capsys, "source", "list", "--tenant", t.name)[1] == "[]\n"
    code, _, err = cli(testenv, monkeypatch, capsys, "source", "remove", source["id"])
    assert (code, "no source" in err) == (1, True)


def test_source_add_refuses_what_it_cannot_poll(
    testenv: RunEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(
        testenv, monkeypatch, capsys, "source", "add", "dcsa", "--tenant", "nobody", "--url", "http://127.0.0.1:9"
    )
    assert (code, "no tenant 'nobody'" in err) == (1, True)
    metadata = "http://169.254.169.254/latest"
    code, _, err = cli(testenv, monkeypatch, capsys, "source", "add", "dcsa", "--tenant", "nobody", "--url", metadata)
    assert (code, "metadata" in err) == (1, True)
    monkeypatch.setenv("TRACKD_WEBHOOK_ALLOW_PRIVATE", "0")
    assert cli_main(["source", "add", "dcsa", "--tenant", "nobody", "--url", "http://10.0.0.1/x"]) == 1
    assert "private" in capsys.readouterr().err


@dataclass
class State:
    pool: AsyncConnectionPool
    settings: Settings
    evaluator: Evaluator
    clock: Any


@pytest.fixture
async def own_db() -> AsyncIterator[tuple[str, AsyncConnectionPool]]:
    _run_id, dsn = _make_database()
    try:
        db.migrate(dsn)
        pool = await db.open_pool(dsn, 4)
        yield dsn, pool
        await pool.close()
    finally:
        _drop_database(dsn)


async def test_a_restarted_worker_resumes_at_the_kept_cursor_and_two_never_poll_at_once(
    own_db: tuple[str, AsyncConnectionPool],
) -> None:
    dsn, pool = own_db
    await tenant_store.create_tenant(pool, "pull", None)
    events = load("v3_0_0_events.json")["events"]
    asked: list[dict[str, str]] = []
    reached, hang = asyncio.Event(), asyncio.Event()

    async def publisher(request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        asked.append(query)
        if query.get("cursor") == "p2":
            if len(asked) == 2:
                reached.set()
                await hang.wait()  # the first worker dies here
            return httpx.Response(200, json={"events": events[2:]})
        return httpx.Response(200, json={"events": events[:2]}, headers={"Next-Page-Cursor": "p2"})

    settings = Settings(database_url=dsn)

    def worker(at: datetime) -> Poller:
        async def guard(url: str) -> Any:
            return type("T", (), {"url": url, "host": "feed.example", "sni_hostname": "feed.example"})()

        return Poller(State(pool, settings, Evaluator(settings), lambda: at), guard, lease_s=60)

    async with store.transaction(pool) as conn:
        box = await tenant_store.box_for(conn, None)
        await source_store.add_source(conn, "pull", "dcsa", "https://feed.example", None, 30, box)
    now = datetime.now(UTC) + timedelta(seconds=1)  # the source is due from when it was added
    async with httpx.AsyncClient(transport=httpx.MockTransport(publisher)) as client:
        task = asyncio.create_task(worker(now).poll_due(client))
        await asyncio.wait_for(reached.wait(), 10)
        assert await worker(now).poll_due(client) == 0  # leased: another worker keeps off
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await worker(now + timedelta(seconds=61)).poll_due(client) == 1  # the dead one's lease lapsed
    assert asked == [{"limit": "100"}, {"limit": "100", "cursor": "p2"}, {"limit": "100", "cursor": "p2"}]
    async with store.transaction(pool) as conn:
        rows = await (await conn.execute("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events")).fetchall()
        (src,) = await source_store.list_sources(conn, "pull")
    assert (rows[0]["n"], rows[0]["d"]) == (5, 5)
    assert (src["events_received"], src["failures"]) == (5, 0)
    assert datetime.fromisoformat(src["updated_since"]) == datetime(2026, 11, 5, 3, 2, tzinfo=UTC)
    assert datetime.fromisoformat(src["next_poll_at"]) == now + timedelta(seconds=61 + 30)


def feed(t: Tenant, **params: Any) -> tuple[list[dict[str, Any]], str | None]:
    res = t.http.get("/v1/dcsa/v3/events", params=params)
    assert res.status_code == 200, res.text
    assert res.headers["api-version"] == "3.0.0"
    body = res.json()
    validate(body, "GetEventsResponse")
    return body["events"], res.headers.get("next-page-cursor")


def test_the_publisher_serves_3_0_0_events_with_filters_and_pages(tenants: tuple[Tenant, Tenant]) -> None:
    other, t = tenants
    new_shipment(t, TRD, ["MSKU7304512", "PO-88412"])
    new_shipment(t, "ONEY-77120")
    assert push(t, *load("v3_0_0_events.json")["events"]).status_code == 200
    assert push(t, *load("v3_0_0_revisions.json")["events"]).status_code == 200
    assert (
        push(t, event("pub-x1", "TRANSPORT", "ARRI", "2026-11-21T10:00:00Z", "2026-11-21T10:05:00Z")).status_code == 200
    )
    every, nxt = feed(t, limit=500)
    assert nxt is None
    kinds = sorted(
        (e["eventClassification"]["eventTypeCode"] if "eventClassification" in e else "RETRACTED") for e in every
    )
    # The retracted estimate and the replaced departure come as retracted; the revision as itself.
    assert kinds == ["EQUIPMENT", "IOT", "REEFER", "RETRACTED", "RETRACTED", "TRANSPORT", "TRANSPORT"]
    mine = [e for e in every if e.get("shipmentDetails", {}).get("documentReference", {}).get("reference") == TRD]
    assert {e["equipmentDetails"]["equipmentReference"] for e in mine} == {"MSKU7304512"}
    reefer = next(e for e in every if e.get("reeferDetails"))
    assert reefer["reeferDetails"]["temperatureProbeMeasurements"][0]["measuredTemperatureValue"] == pytest.approx(5.0)
    pages, cursor, seen = 0, None, []
    while True:
        page, cursor = feed(t, limit=2, **({"cursor": cursor} if cursor else {}))
        pages, seen = pages + 1, seen + page
        if cursor is None:
            break
    assert (pages, [e["eventID"] for e in seen]) == (4, [e["eventID"] for e in every])
    transport, _ = feed(t, eventTypes="TRANSPORT")
    assert len(transport) == 4  # a consumer of TRANSPORT events hears of their retraction too
    live = sorted(e["eventClassification"]["transportEventTypeCode"] for e in transport if not e.get("isRetracted"))
    assert live == ["ARRI", "DEPA"]  # x1's arrival and the revised departure
    assert len(feed(t, transportDocumentReference="ONEY 77120")[0]) == 1
    assert len(feed(t, equipmentReference="MSKU7304512", eventTypes="IOT,REEFER")[0]) == 2
    assert feed(t, carrierBookingReference="NOPE")[0] == []
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert feed(t, eventUpdatedDateTimeMin=later)[0] == []
    assert len(feed(t, **{"eventCreatedDateTime:lte": later})[0]) == len(every)
    assert not [e for e in feed(other, limit=500)[0] if e["eventID"].startswith("dcsa:ONE/pub-")]  # the tenant's own
    bad = t.http.get("/v1/dcsa/v3/events", params={"eventTypes": "CARGO"})
    assert (bad.status_code, bad.json()["error"]) == (422, "ValidationError")
    assert httpx.get(str(t.http.base_url.join("/v1/dcsa/v3/events"))).status_code == 401


def door(event_id: str, code: str, at: str, **located: Any) -> dict[str, Any]:
    out = {
        "eventRouting": PARTY,
        "eventID": event_id,
        "eventDateTime": at,
        "eventUpdatedDateTime": at,
        "eventClassification": {"eventTypeCode": "IOT", "eventClassifierCode": "ACT", "iotEventTypeCode": "DETC"},
        "equipmentDetails": {"equipmentReference": "ONEU4410925"},
        "iotDetails": {"iotEventCode": code},
    }
    if located:
        out["eventLocation"] = {"geoCoordinate": located}
    return out


def test_door_events_are_the_shipments_last_reading_and_published_back(
    testenv: RunEnv, tenants: tuple[Tenant, Tenant]
) -> None:
    t = tenants[1]
    sid = new_shipment(t, "ONEY-DOOR-1", ["ONEU 441092-5"])

    def last_sensor() -> Any:
        ((reading,),) = testenv.sql("SELECT last_sensor FROM shipment_state WHERE shipment_id = %s", sid)
        return reading

    def last_position() -> Any:
        at = t.http.get(f"/v1/shipments/{sid}").json()["last_position"]
        return None if at is None else (at["lat"], at["lon"])

    opened = door("door-1", "DRO", "2026-11-21T10:00:00Z", latitude="51.9500", longitude="4.0500")
    assert push(t, opened).json() == {"accepted": 1, "stored": 1, "duplicates": 0}  # a reading, not a fix
    assert last_sensor() == {"door_open": True, "at": "2026-11-21T10:00:00+00:00"}
    assert last_position() is None
    assert push(t, door("door-2", "DRC", "2026-11-21T10:20:00Z")).json()["stored"] == 1
    assert last_sensor() == {"door_open": False, "at": "2026-11-21T10:20:00+00:00"}
    readings = t.http.get(f"/v1/shipments/{sid}/events", params={"kind": "sensor"}).json()["items"]
    assert sorted((e["data"]["door_open"], e["raw_code"]) for e in readings) == [(False, None), (True, None)]
    # A native tracker's reading, and one that is not a boolean.
    native = {"occurred_at": "2026-11-21T11:00:00Z", "shipment": "ONEY-DOOR-1", "sensor": {"door_open": True}}
    assert t.http.post("/v1/events", json=[native]).status_code == 202
    assert last_sensor() == {"door_open": True, "at": "2026-11-21T11:00:00+00:00"}
    bad = t.http.post("/v1/events", json=[{**native, "sensor": {"door_open": "yes"}}])
    assert (bad.status_code, bad.json()["error"]) == (422, "ValidationError")
    assert "sensor.door_open" in bad.json()["detail"]
    published, _ = feed(t, equipmentReference="ONEU4410925", eventTypes="IOT")
    assert sorted(e["iotDetails"]["iotEventCode"] for e in published) == ["DRC", "DRO", "DRO"]
    assert feed(t, equipmentReference="ONEU4410925", eventTypes="REEFER")[0] == []

    def retraction(event_id: str) -> dict[str, Any]:
        return {
            "eventRouting": PARTY,
            "eventID": event_id,
            "isRetracted": True,
            "eventUpdatedDateTime": "2026-11-21T14:00:00Z",
        }

    # Retracting the latest reading puts back the one that stands.
    assert push(t, door("door-3", "DRO", "2026-11-21T13:00:00Z")).json()["stored"] == 1
    assert last_sensor() == {"door_open": True, "at": "2026-11-21T13:00:00+00:00"}
    assert push(t, retraction("door-3")).status_code == 200
    assert last_sensor() == {"door_open": True, "at": "2026-11-21T11:00:00+00:00"}
    # Retracting the latest fix: the shipment is back at the fix before, and the track loses it.
    for event_id, at, lat in (
        ("loc-1", "2026-11-21T10:30:00Z", "51.9000"),
        ("loc-2", "2026-11-21T12:00:00Z", "52.1000"),
    ):
        assert push(t, door(event_id, "LOC", at, latitude=lat, longitude="4.1000")).json()["stored"] == 1
    assert last_position() == (52.1, 4.1)
    assert push(t, retraction("loc-2")).status_code == 200
    assert last_position() == (51.9, 4.1)
    track = t.http.get(f"/v1/shipments/{sid}/positions").json()["features"]
    assert [f["geometry"]["coordinates"][1] for f in track] == [51.9]
    retracted = {e["id"].split("/", 1)[1] for e in events_of(t, sid) if e["retracted"]}
    assert retracted == {"door-3@v2026-11-21T13:00:00.000000Z", "loc-2@v2026-11-21T12:00:00.000000Z"}


def test_withdrawn_fixes_leave_no_trace(make_tenant: Any, testenv: RunEnv) -> None:
    """A retracted fix goes from the track, the trail and the visits it made, whether it came before
    its shipment, was the latest fix, or was withdrawn in the same body that brought it."""
    t: Tenant = make_tenant("dret")

    def loc(event_id: str, at: datetime, lat: float, lon: float) -> dict[str, Any]:
        return door(event_id, "LOC", at.isoformat(), latitude=f"{lat:.4f}", longitude=f"{lon:.4f}")

    def retraction(event_id: str, at: datetime) -> dict[str, Any]:
        return {"eventRouting": PARTY, "eventID": event_id, "isRetracted": True, "eventUpdatedDateTime": at.isoformat()}

    start = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    # Before its shipment exists: the fix is stored unattached, withdrawn, and never adopted.
    assert push(t, loc("early", start, 40.0, -30.0)).status_code == 200
    assert push(t, retraction("early", start + timedelta(minutes=5))).status_code == 200
    sid = new_shipment(t, "ONEY-RET-1", ["ONEU 441092-5"])

    def track() -> list[tuple[float, float]]:
        features = t.http.get(f"/v1/shipments/{sid}/positions").json()["features"]
        return [tuple(f["geometry"]["coordinates"]) for f in features]

    def trail() -> int:
        ((recent,),) = testenv.sql("SELECT recent_positions FROM shipment_state WHERE shipment_id = %s", sid)
        return len(recent)

    def visits() -> list[str]:
        return [r[0] for r in testenv.sql("SELECT place_id FROM place_visits WHERE shipment_id = %s", sid)]

    def messages(kind: str) -> list[dict[str, Any]]:
        rows = testenv.sql("SELECT payload FROM outbox WHERE shipment_id = %s AND type LIKE %s ORDER BY seq", sid, kind)
        return [r[0] for r in rows]

    assert track() == []
    # Six fixes in the open Atlantic, 20 minutes apart: the trail keeps each.
    at = start + timedelta(hours=1)
    for i in range(6):
        assert push(t, loc(f"sea-{i}", at + timedelta(minutes=20 * i), 48.0, -20.0 + i * 0.2)).status_code == 200
    assert trail() == 6
    assert visits() == []
    # The next one is in the port of Rotterdam: a visit opens. Withdrawn, the shipment is back at sea.
    port = at + timedelta(hours=3)
    assert push(t, loc("port", port, 51.95, 4.14)).status_code == 200
    assert "unlocode:NLRTM" in visits()
    assert push(t, retraction("port", port + timedelta(minutes=5))).status_code == 200
    assert visits() == []
    assert len(track()) == 6
    assert trail() == 6  # not rebuilt from fewer rows
    last = t.http.get(f"/v1/shipments/{sid}").json()["last_position"]
    assert (last["lat"], last["lon"]) == (48.0, -19.0)
    assert messages("position")[-1]["lat"] == 48.0  # the map is told: back to the fix that stands
    # A fix and its retraction in one body: stored withdrawn, folded into nothing.
    places_before, positions_before = len(messages("place.%")), len(messages("position"))
    again = port + timedelta(hours=1)
    assert (
        push(t, loc("twice", again, 51.95, 4.14), retraction("twice", again + timedelta(minutes=1))).status_code == 200
    )
    assert len(track()) == 6
    assert visits() == []
    assert len(messages("place.%")) == places_before
    assert len(messages("position")) == positions_before
