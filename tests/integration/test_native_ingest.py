"""Native ingest through the signed webhook, POST /v1/events and the shipment state it drives."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import orjson

from tests.conftest import RunEnv
from trackd import store


def _shipment(t, tracking: str, **extra) -> dict:
    r = t.http.post("/v1/shipments", json={"tracking_number": tracking, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def test_signed_batch_of_1000_stored_once_even_when_posted_twice(tenant, testenv: RunEnv) -> None:
    _shipment(tenant, "BATCH-1")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events = [
        {
            "occurred_at": (start + timedelta(seconds=i)).isoformat(),
            "shipment": "BATCH-1",
            "position": {"lat": 10 + i / 1000, "lon": 20 + i / 1000, "speed_kmh": 50},
        }
        for i in range(1000)
    ]
    body = orjson.dumps(events)
    first = tenant.signed("native", body)
    assert first.status_code == 202, first.text
    assert first.json() == {"accepted": 1000, "stored": 1000, "duplicates": 0}
    second = tenant.signed("native", body)
    assert second.status_code == 202
    assert second.json()["stored"] == 0
    (count,) = testenv.sql(
        "SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s", tenant.name
    )[0]
    assert count == 1000
    (positions,) = testenv.sql(
        "SELECT count(*) FROM positions p JOIN tenants t ON t.id = p.tenant_id WHERE t.name = %s", tenant.name
    )[0]
    assert positions == 1000


def test_bad_or_missing_signature_stores_nothing(tenant, testenv: RunEnv) -> None:
    body = orjson.dumps({"occurred_at": "2026-11-01T00:00:00Z", "shipment": "X", "position": {"lat": 1, "lon": 2}})
    bad = tenant.signed("native", body, value="sha256=" + "0" * 64)
    assert bad.status_code == 401
    assert bad.json()["error"] == "Unauthorized"
    missing = tenant.http.post(f"/v1/ingest/{tenant.name}/native", content=body, headers={"authorization": ""})
    assert missing.status_code == 401
    wrong_tenant = tenant.http.post(
        "/v1/ingest/nosuchtenant/native", content=body, headers={"X-Trackd-Signature": "sha256=00"}
    )
    assert wrong_tenant.status_code == 401
    rows = testenv.sql(
        "SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s", tenant.name
    )
    assert rows[0][0] == 0
    q = tenant.http.get("/v1/quarantine").json()
    assert q["items"] == []


def test_out_of_order_events_give_the_right_status(tenant) -> None:
    shp = _shipment(tenant, "ORDER-1")

    def post(code: str, at: str) -> None:
        r = tenant.http.post("/v1/events", json={"occurred_at": at, "shipment": "order-1", "milestone": {"code": code}})
        assert r.status_code == 202, r.text

    post("delivered", "2026-11-05T10:00:00Z")
    post("departed", "2026-11-02T10:00:00Z")  # late and older: never moves it backwards
    post("out_for_delivery", "2026-11-05T08:00:00Z")
    got = tenant.http.get(f"/v1/shipments/{shp['id']}").json()
    assert got["status"] == "delivered"
    post("returned", "2026-11-06T10:00:00Z")  # newer and strong: reopens the final status
    assert tenant.http.get(f"/v1/shipments/{shp['id']}").json()["status"] == "returned"
    post("in_transit", "2026-11-07T10:00:00Z")  # a trailing scan does not reopen a final status
    assert tenant.http.get(f"/v1/shipments/{shp['id']}").json()["status"] == "returned"
    post("customs_hold", "2026-11-01T00:00:00Z")
    got = tenant.http.get(f"/v1/shipments/{shp['id']}").json()
    assert (got["status"], got["substatus"]) == ("returned", None)


def test_estimated_milestone_does_not_move_status(tenant) -> None:
    shp = _shipment(tenant, "EST-1")
    r = tenant.http.post(
        "/v1/events",
        json={
            "occurred_at": "2026-11-20T10:00:00Z",
            "shipment": "EST-1",
            "milestone": {"code": "delivered", "classifier": "estimated"},
        },
    )
    assert r.status_code == 202
    assert tenant.http.get(f"/v1/shipments/{shp['id']}").json()["status"] == "pending"


def test_events_before_the_shipment_exist_are_attached_later(tenant) -> None:
    r = tenant.http.post(
        "/v1/events",
        json=[
            {"occurred_at": "2026-11-02T10:00:00Z", "shipment": "MSKU 123-4567", "milestone": {"code": "loaded"}},
            {"occurred_at": "2026-11-02T11:00:00Z", "shipment": "msku1234567", "position": {"lat": 1.0, "lon": 2.0}},
        ],
    )
    assert r.status_code == 202
    shp = _shipment(tenant, "LATE-1", references=["MSKU1234567"])
    assert shp["status"] == "in_transit"
    assert shp["last_position"]["lat"] == 1.0
    evs = tenant.http.get(f"/v1/shipments/{shp['id']}/events").json()["items"]
    assert [e["kind"] for e in evs] == ["milestone", "position"]
    geo = tenant.http.get(f"/v1/shipments/{shp['id']}/positions").json()
    assert geo["type"] == "FeatureCollection"
    assert geo["features"][0]["geometry"]["coordinates"] == [2.0, 1.0]


def test_device_events_follow_the_attached_shipment(tenant) -> None:
    assert tenant.http.post("/v1/devices", json={"id": "trk-1", "key": f"key-{tenant.name}"}).status_code == 201
    shp = _shipment(tenant, "DEV-1")
    r = tenant.http.post(
        f"/v1/shipments/{shp['id']}/devices",
        json={"device_id": "trk-1", "from": "2026-11-01T00:00:00Z", "until": "2026-11-03T00:00:00Z"},
    )
    assert r.status_code == 201, r.text
    r = tenant.http.post(
        "/v1/events",
        json=[
            {"occurred_at": "2026-11-02T00:00:00Z", "device": "trk-1", "position": {"lat": 5, "lon": 6}},
            {"occurred_at": "2026-11-04T00:00:00Z", "device": "trk-1", "position": {"lat": 7, "lon": 8}},
        ],
    )
    assert r.status_code == 202
    got = tenant.http.get(f"/v1/shipments/{shp['id']}").json()
    assert got["last_position"]["lat"] == 5  # the later fix is outside the attachment window


def test_bad_input_is_a_clear_4xx_and_kept_in_quarantine(tenant) -> None:
    cases = [
        (b"{not json", "body"),
        (
            orjson.dumps({"occurred_at": "2026-11-01T00:00:00Z", "shipment": "A", "position": {"lat": 91, "lon": 0}}),
            "position.lat",
        ),
        (
            orjson.dumps({"occurred_at": "2026-11-01T00:00:00Z", "shipment": "A", "position": {"lat": 0, "lon": 181}}),
            "position.lon",
        ),
        (
            orjson.dumps(
                {
                    "occurred_at": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
                    "shipment": "A",
                    "position": {"lat": 0, "lon": 0},
                }
            ),
            "occurred_at",
        ),
        (
            orjson.dumps({"occurred_at": "2026-11-01T00:00:00Z", "shipment": "A", "milestone": {"code": "teleported"}}),
            "milestone.code",
        ),
        (
            orjson.dumps({"occurred_at": "2026-11-01T00:00:00Z", "shipment": "A", "position": {"lat": "x", "lon": 0}}),
            "position.lat",
        ),
    ]
    for body, field in cases:
        r = tenant.signed("native", body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"] == "ValidationError"
        assert field in r.json()["detail"], (field, r.json())
    items = tenant.http.get("/v1/quarantine", params={"limit": 100}).json()["items"]
    assert len(items) == len(cases)
    assert {i["source"] for i in items} == {"native"}
    assert any(i["raw"] == "{not json" for i in items)
    big = b"[" + b" " * (6 * 1024 * 1024) + b"]"
    r = tenant.signed("native", big)
    assert r.status_code == 413
    assert r.json()["error"] == "PayloadTooLarge"


def _every_page(tenant, path: str) -> list[dict]:
    seen: list[dict] = []
    cursor = None
    while True:
        page = tenant.http.get(path, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def test_every_list_pages_with_its_cursor(tenant) -> None:
    sid = _shipment(tenant, "PAGES-1")["id"]
    fixes = [
        {"occurred_at": f"2026-01-01T00:0{i}:00Z", "shipment": "PAGES-1", "position": {"lat": 1 + i, "lon": 2}}
        for i in range(5)
    ]
    assert tenant.http.post("/v1/events", json=fixes).status_code == 202
    for i in range(5):
        device = {"id": f"pg-{i}", "key": f"k-{tenant.name}-pg{i}"}
        assert tenant.http.post("/v1/devices", json=device).status_code == 201
    for i in range(3):
        assert tenant.signed("native", b"{broken %d" % i).status_code == 422
    for path in (f"/v1/shipments/{sid}/events", "/v1/devices", "/v1/quarantine"):
        whole = tenant.http.get(path, params={"limit": 500}).json()
        assert whole["next_cursor"] is None
        assert len(whole["items"]) >= 3
        assert _every_page(tenant, path) == whole["items"], path
    # a cursor that decodes but holds the wrong kind of value is refused, not sent to the database
    forged = store.encode_cursor("not a time", "x")
    assert tenant.http.get(f"/v1/shipments/{sid}/events", params={"cursor": forged}).status_code == 422
    assert tenant.http.get("/v1/quarantine", params={"cursor": store.encode_cursor("x")}).status_code == 422


def test_pagination_and_filters(tenant) -> None:
    ids = [_shipment(tenant, f"PAGE-{i}", carrier="dhl" if i % 2 else "ups", mode="air")["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = tenant.http.get("/v1/shipments", params=params).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    dhl = tenant.http.get("/v1/shipments", params={"carrier": "DHL", "limit": 500}).json()["items"]
    assert {s["tracking_number"] for s in dhl} == {f"PAGE-{i}" for i in (1, 3, 5)}
    assert tenant.http.get("/v1/shipments", params={"q": "page 4"}).json()["items"][0]["id"] == ids[4]
    assert tenant.http.get("/v1/shipments", params={"limit": 501}).status_code == 422
    assert tenant.http.get("/v1/shipments", params={"cursor": "garbage"}).status_code == 422


def test_patch_and_delete(tenant) -> None:
    shp = _shipment(
        tenant, "PATCH-1", legs=[{"mode": "air", "origin": {"iata": "HKG"}, "destination": {"iata": "FRA"}}]
    )
    assert shp["legs"][0]["origin"]["lat"] is not None
    r = tenant.http.patch(f"/v1/shipments/{shp['id']}", json={"carrier": "lufthansa", "references": ["020-12345678"]})
    assert r.status_code == 200, r.text
    assert r.json()["carrier"] == "lufthansa"
    assert r.json()["legs"][0]["mode"] == "air"
    assert tenant.http.delete(f"/v1/shipments/{shp['id']}").status_code == 204
    assert tenant.http.get(f"/v1/shipments/{shp['id']}").status_code == 404
    bad = tenant.http.post(
        "/v1/shipments",
        json={
            "tracking_number": "X",
            "legs": [{"mode": "sea", "origin": {"unlocode": "ZZZZZ"}, "destination": {"lat": 1, "lon": 2}}],
        },
    )
    assert bad.status_code == 422
    assert "legs.0.origin" in bad.json()["detail"]


def test_health_ready_metrics(server) -> None:
    import httpx

    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ready", ready
    text = httpx.get(server.url + "/metrics").text
    assert "trackd_ingest_seconds" in text
    # the pool's statistics: a running server has handed out connections, and has some
    served = re.search(r'^trackd_db_pool\{pool="main",stat="requests_num"\} (\S+)$', text, re.M)
    size = re.search(r'^trackd_db_pool\{pool="guest",stat="pool_size"\} (\S+)$', text, re.M)
    assert served is not None, text[-2000:]
    assert float(served.group(1)) > 0
    assert size is not None
    assert float(size.group(1)) >= 1
    assert httpx.get(server.url + "/openapi.json").json()["info"]["title"] == "trackd"


def test_unauthorized_without_key(server) -> None:
    import httpx

    r = httpx.get(server.url + "/v1/shipments")
    assert r.status_code == 401
    assert r.json()["error"] == "Unauthorized"
    r = httpx.get(server.url + "/v1/shipments", headers={"Authorization": "Bearer tk_nope"})
    assert r.status_code == 401
