"""Carrier push APIs through a real server, signed as the carriers sign: USPS Subscriptions - Tracking
(`X-HMAC`) and FedEx Advanced Integrated Visibility (`fdx-signature`), each a base64 HMAC-SHA256 of
the raw body keyed with the tenant's ingest secret, or, for a USPS envelope, of its
`timestamp + payload` keyed with the secret's first 32 characters.

For each: a signed notification is stored and shows on the shipment with the carrier's times, codes,
places, references and delivery estimate, the delivery with who received it; a wrong or missing
signature, a hex digest, a signature of other bytes and an unknown tenant get the same 401 and store
nothing; a redelivery stores nothing new; malformed input is a 422 naming the field, kept in
quarantine; a FedEx result that carries an error is skipped and the rest of its push stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import RunEnv, Server, Tenant

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
DENIED = {"error": "Unauthorized", "detail": "unknown tenant or bad signature"}


def fixture(source: str, name: str) -> bytes:
    return (PAYLOADS / source / name).read_bytes()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def b64mac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@pytest.fixture(scope="module")
def tenant(make_tenant: Any) -> Tenant:
    """One tenant for the module: each test keeps to its own source and shipments."""
    t: Tenant = make_tenant("carriers")
    return t


@pytest.fixture
def carrier(server: Server) -> Iterator[httpx.Client]:
    """A client with no API key: what USPS or FedEx would send with."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def post(client: httpx.Client, tenant: str, source: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return client.post(
        f"/v1/ingest/{tenant}/{source}", content=body, headers={"content-type": "application/json", **headers}
    )


def count_events(te: RunEnv, tenant: str, source: str) -> int:
    rows = te.sql(
        "SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s AND e.source = %s",
        tenant,
        source,
    )
    return int(rows[0][0])


def milestones(t: Tenant, shipment_id: str) -> list[tuple[Any, ...]]:
    r = t.http.get(f"/v1/shipments/{shipment_id}/events", params={"kind": "milestone", "limit": 500})
    assert r.status_code == 200, r.text
    found = [
        (
            e["code"],
            e["raw_code"],
            e["classifier"],
            at(e["occurred_at"]),
            (e["location"] or {}).get("name"),
            e["data"].get("description"),
        )
        for e in r.json()["items"]
    ]
    return sorted(found, key=lambda m: (m[3], m[1]))


def refused(client: httpx.Client, t: Tenant, source: str, body: bytes, header: str) -> None:
    """Every way of not signing these bytes with this tenant's secret gets the one 401."""
    good = b64mac(t.ingest_secret, body)
    attempts = [
        post(client, t.name, source, body, {header: b64mac(t.ingest_secret + "x", body)}),
        post(client, t.name, source, body, {header: b64mac(t.api_key, body)}),
        post(client, t.name, source, body, {header: hmac.new(t.ingest_secret.encode(), body, "sha256").hexdigest()}),
        post(client, t.name, source, body, {header: b64mac(t.ingest_secret, body + b"\n")}),
        post(client, t.name, source, body, {}),
        post(client, t.name + "zz", source, body, {header: good}),  # unknown tenant, a real signature
    ]
    assert [(r.status_code, r.json()) for r in attempts] == [(401, DENIED)] * 6


def quarantined(t: Tenant, source: str) -> list[dict[str, Any]]:
    r = t.http.get("/v1/quarantine", params={"source": source, "limit": 50})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_usps_notifications_signed_with_x_hmac(tenant: Tenant, testenv: RunEnv, carrier: httpx.Client) -> None:
    t = tenant
    shp = t.http.post("/v1/shipments", json={"tracking_number": "9400111899223197428490"}).json()
    transit, delivered = fixture("usps", "notification_in_transit.json"), fixture("usps", "notification_delivered.json")

    refused(carrier, t, "usps", transit, "X-HMAC")
    assert count_events(testenv, t.name, "usps") == 0

    for body, n in ((transit, 5), (delivered, 2)):
        r = post(carrier, t.name, "usps", body, {"X-HMAC": b64mac(t.ingest_secret, body)})
        assert r.status_code == 202, r.text
        assert (r.json()["stored"], r.json()["duplicates"]) == (n, 0)
    assert count_events(testenv, t.name, "usps") == 7
    la, ny = "LOS ANGELES, CA 90052", "NEW YORK, NY 10001"
    assert milestones(t, shp["id"]) == [
        ("info_received", "GX", "actual", at("2024-05-28T16:12:00Z"), la, "Shipping Label Created, USPS Awaiting Item"),
        ("picked_up", "03", "actual", at("2024-05-28T22:40:00Z"), la, "USPS picked up item"),
        (
            "at_facility",
            "10",
            "actual",
            at("2024-05-31T04:41:00Z"),
            "CHICAGO IL NETWORK DISTRIBUTION CENTER",
            "Departed USPS Regional Facility",
        ),
        ("in_transit", "NT", "actual", at("2024-05-31T12:00:00Z"), None, "In Transit to Next Facility"),
        ("out_for_delivery", "OF", "actual", at("2024-06-01T10:10:00Z"), ny, "Out for Delivery"),
        (
            "delivered",
            "01",
            "actual",
            at("2024-06-01T18:07:00Z"),
            ny,
            "Delivered, Front Desk/Reception/Mail Room; received by J MORALES",
        ),
        ("delivered", "expectedDeliveryTimeStamp", "estimated", at("2024-06-03T21:00:00Z"), None, None),
    ]
    assert t.http.get(f"/v1/shipments/{shp['id']}").json()["status"] == "delivered"

    again = post(carrier, t.name, "usps", transit, {"X-HMAC": b64mac(t.ingest_secret, transit)})
    assert (again.status_code, again.json()["stored"], again.json()["duplicates"]) == (202, 0, 5)

    bad = orjson.loads(transit)
    bad["trackingEvents"][2]["GMTOffset"] = "-25:00"
    body = orjson.dumps(bad)
    r = post(carrier, t.name, "usps", body, {"X-HMAC": b64mac(t.ingest_secret, body)})
    assert r.status_code == 422, r.text
    assert "trackingEvents[2].GMTOffset" in r.json()["detail"]
    (kept,) = quarantined(t, "usps")
    assert "trackingEvents[2].GMTOffset" in kept["reason"]
    assert count_events(testenv, t.name, "usps") == 7


def test_usps_envelopes_signed_over_timestamp_and_payload(tenant: Tenant, carrier: httpx.Client) -> None:
    """USPS's own form: the envelope's `timestamp + payload` signed with the first 32 characters of
    the ingest secret, in `X-HMAC` or the older `hmac-header`; a stale timestamp is refused."""
    t = tenant
    shp = t.http.post("/v1/shipments", json={"tracking_number": "9434636208303341829035"}).json()
    env = orjson.loads(fixture("usps", "envelope_delivered.json"))

    def stamped(when: datetime) -> tuple[bytes, str]:
        stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        mac = hmac.new(t.ingest_secret[:32].encode(), (stamp + env["payload"]).encode(), hashlib.sha256)
        return orjson.dumps({**env, "timestamp": stamp}), base64.b64encode(mac.digest()).decode()

    body, good = stamped(datetime.now(UTC))
    stale, stale_mac = stamped(datetime.now(UTC) - timedelta(minutes=10))
    attempts = [
        post(carrier, t.name, "usps", body, {"X-HMAC": b64mac(t.ingest_secret, body)}),  # the raw-body form
        post(carrier, t.name, "usps", body, {"X-HMAC": good.swapcase()}),
        post(carrier, t.name, "usps", stale, {"X-HMAC": stale_mac}),
    ]
    assert [(r.status_code, r.json()) for r in attempts] == [(401, DENIED)] * 3

    r = post(carrier, t.name, "usps", body, {"X-HMAC": good})
    assert r.status_code == 202, r.text
    assert (r.json()["stored"], r.json()["duplicates"]) == (2, 0)
    again = post(carrier, t.name, "usps", body, {"hmac-header": good})
    assert (again.status_code, again.json()["stored"], again.json()["duplicates"]) == (202, 0, 2)
    seattle = "SEATTLE, WA 98101"
    assert milestones(t, shp["id"]) == [
        ("out_for_delivery", "OF", "actual", at("2024-06-01T14:02:00Z"), seattle, "Out for Delivery"),
        ("delivered", "01", "actual", at("2024-06-01T18:46:00Z"), seattle, "Delivered, In/At Mailbox"),
    ]


def test_fedex_pushes_signed_with_fdx_signature(tenant: Tenant, testenv: RunEnv, carrier: httpx.Client) -> None:
    t = tenant
    by_po = t.http.post("/v1/shipments", json={"tracking_number": "ACME-PO-4417"}).json()  # found by reference
    shp = t.http.post("/v1/shipments", json={"tracking_number": "286710463050"}).json()
    transit, exception = fixture("fedex", "push_in_transit.json"), fixture("fedex", "push_flat_exception.json")

    refused(carrier, t, "fedex", transit, "fdx-signature")
    wrong_header = post(carrier, t.name, "fedex", transit, {"X-HMAC": b64mac(t.ingest_secret, transit)})
    assert (wrong_header.status_code, wrong_header.json()) == (401, DENIED)
    assert count_events(testenv, t.name, "fedex") == 0

    for body, n in ((transit, 5), (exception, 4)):
        r = post(carrier, t.name, "fedex", body, {"fdx-signature": b64mac(t.ingest_secret, body)})
        assert r.status_code == 202, r.text
        assert (r.json()["stored"], r.json()["duplicates"]) == (n, 0)
    assert count_events(testenv, t.name, "fedex") == 9
    oak, window = "OAKLAND, CA", "between 2024-06-03T10:00:00-04:00 and 2024-06-03T14:00:00-04:00"
    assert milestones(t, by_po["id"]) == [
        ("info_received", "OC", "actual", at("2024-05-28T18:03:00Z"), None, "Shipment information sent to FedEx"),
        ("picked_up", "PU", "actual", at("2024-05-29T23:20:00Z"), oak, "Picked up"),
        ("departed", "DP", "actual", at("2024-05-31T05:45:00Z"), oak, "Departed FedEx location"),
        ("in_transit", "IT", "actual", at("2024-05-31T10:12:00Z"), "MEMPHIS, TN", "On the way"),
        ("delivered", "estimatedDeliveryTimeWindow.window.ends", "estimated", at("2024-06-03T18:00:00Z"), None, window),
    ]
    assert t.http.get(f"/v1/shipments/{by_po['id']}").json()["status"] == "in_transit"
    got = t.http.get(f"/v1/shipments/{shp['id']}").json()
    assert got["status"] == "failed_attempt"
    assert [m[:2] for m in milestones(t, shp["id"])] == [
        ("customs_released", "CC"),
        (None, "DY"),
        ("delivery_attempted", "DE"),
        ("delivered", "dateAndTimes.ESTIMATED_DELIVERY"),
    ]

    delivered = orjson.loads(fixture("fedex", "push_delivered.json"))
    delivered["output"]["completeTrackResults"][0]["trackResults"][0]["additionalTrackingInfo"] = {
        "packageIdentifiers": [{"type": "PURCHASE_ORDER", "values": ["ACME-PO-4417"]}]
    }
    body = orjson.dumps(delivered)
    r = post(carrier, t.name, "fedex", body, {"fdx-signature": b64mac(t.ingest_secret, body)})
    assert (r.status_code, r.json()["stored"]) == (202, 2), r.text
    proof = [m for m in milestones(t, by_po["id"]) if m[1] == "DL"]
    assert proof == [
        ("delivered", "DL", "actual", at("2024-06-01T17:42:00Z"), "NEW YORK, NY", "Delivered; received by R.CHEN")
    ]
    assert t.http.get(f"/v1/shipments/{by_po['id']}").json()["status"] == "delivered"

    again = post(carrier, t.name, "fedex", transit, {"fdx-signature": b64mac(t.ingest_secret, transit)})
    assert (again.status_code, again.json()["stored"], again.json()["duplicates"]) == (202, 0, 5)

    bad = orjson.loads(transit)
    del bad["output"]["completeTrackResults"][0]["trackResults"][0]["scanEvents"][1]["eventType"]
    body = orjson.dumps(bad)
    r = post(carrier, t.name, "fedex", body, {"fdx-signature": b64mac(t.ingest_secret, body)})
    assert r.status_code == 422, r.text
    assert "trackResults[0].scanEvents[1].eventType" in r.json()["detail"]
    assert len(quarantined(t, "fedex")) == 1
    assert count_events(testenv, t.name, "fedex") == 11


def test_fedex_push_with_a_not_found_result_stores_the_others(tenant: Tenant, carrier: httpx.Client) -> None:
    t = tenant
    shp = t.http.post("/v1/shipments", json={"tracking_number": "770412345670"}).json()
    mixed = orjson.loads(fixture("fedex", "push_not_found.json"))
    errors_only = {"output": {"completeTrackResults": mixed["output"]["completeTrackResults"][:1]}}
    for value, n in ((mixed, 2), (errors_only, 0)):
        body = orjson.dumps(value)
        r = post(carrier, t.name, "fedex", body, {"fdx-signature": b64mac(t.ingest_secret, body)})
        assert (r.status_code, r.json()["stored"], r.json()["duplicates"]) == (202, n, 0), r.text
    assert [m[:3] for m in milestones(t, shp["id"])] == [
        ("picked_up", "PU", "actual"),
        ("delivered", "dateAndTimes.ESTIMATED_DELIVERY", "estimated"),
    ]
