"""Tenant isolation: another tenant's objects are 404 on every endpoint and never in lists."""

from __future__ import annotations

import orjson


def test_tenant_isolation_on_every_endpoint(make_tenant) -> None:
    a, b = make_tenant("iso"), make_tenant("iso")
    assert a.http.post("/v1/devices", json={"id": "dev-a", "key": f"k-{a.name}"}).status_code == 201
    shp = a.http.post("/v1/shipments", json={"tracking_number": "ISO-1", "devices": ["dev-a"]}).json()
    sid = shp["id"]
    a.http.post(
        "/v1/events",
        json={"occurred_at": "2026-11-01T00:00:00Z", "shipment": "ISO-1", "milestone": {"code": "picked_up"}},
    )
    a.signed("native", b"{broken")  # something in a's quarantine

    for method, path, body in [
        ("GET", f"/v1/shipments/{sid}", None),
        ("PATCH", f"/v1/shipments/{sid}", {"carrier": "x"}),
        ("DELETE", f"/v1/shipments/{sid}", None),
        ("GET", f"/v1/shipments/{sid}/events", None),
        ("GET", f"/v1/shipments/{sid}/positions", None),
        ("GET", f"/v1/shipments/{sid}/eta", None),
        ("POST", f"/v1/shipments/{sid}/devices", {"device_id": "dev-a"}),
        ("POST", f"/v1/shipments/{sid}/share", {}),
        ("GET", "/v1/devices/dev-a", None),
        ("DELETE", "/v1/devices/dev-a", None),
    ]:
        r = b.http.request(method, path, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json()["error"] == "NotFound"

    assert b.http.get("/v1/shipments").json()["items"] == []
    assert b.http.get("/v1/shipments", params={"q": "ISO-1"}).json()["items"] == []
    assert b.http.get("/v1/devices").json()["items"] == []
    assert b.http.get("/v1/quarantine").json()["items"] == []
    # b's events naming a's tracking number never touch a's shipment
    r = b.http.post(
        "/v1/events",
        json={"occurred_at": "2026-11-02T00:00:00Z", "shipment": "ISO-1", "milestone": {"code": "delivered"}},
    )
    assert r.status_code == 202
    assert a.http.get(f"/v1/shipments/{sid}").json()["status"] == "in_transit"
    # b cannot post into a's webhook with its own secret
    body = orjson.dumps(
        {"occurred_at": "2026-11-02T00:00:00Z", "shipment": "ISO-1", "milestone": {"code": "delivered"}}
    )
    from tests.conftest import sign_hex

    r = b.http.post(
        f"/v1/ingest/{a.name}/native",
        content=body,
        headers={"X-Trackd-Signature": "sha256=" + sign_hex(b.ingest_secret, body)},
    )
    assert r.status_code == 401
    assert a.http.get(f"/v1/shipments/{sid}").json()["status"] == "in_transit"
    # and a still sees its own
    assert [s["id"] for s in a.http.get("/v1/shipments").json()["items"]] == [sid]
