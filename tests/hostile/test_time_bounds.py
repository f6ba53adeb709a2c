"""Times far ahead through a real server: refused with a 422 naming the field, and an extreme value
stored before the bounds existed makes no page or endpoint answer 5xx."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ingest import sources
from tests.conftest import ROOT, RunEnv, Tenant

FAR = "9999-12-31T23:30:00Z"


def deliver(t: Tenant, source: str, body: bytes) -> Any:
    scheme = sources.get(source).signature
    assert scheme is not None
    return t.signed(source, body, header=scheme.header, value=scheme.sign(t.ingest_secret, body))


def dcsa_estimate(event_id: str, at: str, classifier: str = "EST") -> bytes:
    item = copy.deepcopy(orjson.loads((ROOT / "tests/payloads/dcsa/v3_events.json").read_bytes())[1])
    item["metadata"]["eventID"] = event_id
    item["metadata"]["eventCreatedDateTime"] = datetime.now(UTC).isoformat()
    item["payload"]["eventClassifierCode"] = classifier
    item["payload"]["eventDateTime"] = at
    return orjson.dumps([item])


def count_events(testenv: RunEnv, tenant: str) -> int:
    rows = testenv.sql("SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s", tenant)
    return int(rows[0][0])


def test_a_year_9999_estimate_is_refused_and_the_tracking_page_still_answers(testenv: RunEnv, tenant: Tenant) -> None:
    shp = tenant.http.post(
        "/v1/shipments",
        json={
            "tracking_number": "CMDUSHA0512793",  # the v3 sample's transport document; it arrives at DEDUI
            "legs": [
                {"mode": "sea", "origin": {"unlocode": "CNSHA"}, "destination": {"unlocode": "NLRTM"}},
                {"mode": "rail", "origin": {"unlocode": "NLRTM"}, "destination": {"unlocode": "DEDUI"}},
            ],
        },
    )
    assert shp.status_code == 201, shp.text
    sid = shp.json()["id"]
    share = tenant.http.post(f"/v1/shipments/{sid}/share", json={})
    assert share.status_code == 201, share.text
    token = share.json()["token"]

    r = deliver(tenant, "dcsa", dcsa_estimate("far-1", FAR))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "ValidationError"
    assert r.json()["detail"].startswith("[0].occurred_at: 9999-12-31T23:30:00+00:00 is more than two years")
    body = orjson.loads((ROOT / "tests/payloads/aftership/delivered_2024.json").read_bytes())
    body["msg"]["latest_estimated_delivery"] = {"type": "specific", "datetime": FAR}
    r = deliver(tenant, "aftership", orjson.dumps(body))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("msg.occurred_at: 9999-12-31T23:30:00+00:00 is more than two years")
    assert count_events(testenv, tenant.name) == 0
    kept = tenant.http.get("/v1/quarantine").json()["items"]
    assert sorted(i["source"] for i in kept) == ["aftership", "dcsa"]
    assert all("more than two years ahead" in i["reason"] for i in kept)

    # A year ahead is an estimate like any other.
    soon = (datetime.now(UTC) + timedelta(days=365)).replace(microsecond=0)
    r = deliver(tenant, "dcsa", dcsa_estimate("soon-1", soon.isoformat()))
    assert r.status_code == 204, r.text
    assert count_events(testenv, tenant.name) == 1
    got = tenant.http.get(f"/v1/shipments/{sid}").json()
    assert datetime.fromisoformat(got["eta"]["carrier_eta"]) == soon

    page = tenant.http.get(f"/track/{token}")
    assert page.status_code == 200, page.text[:300]
    assert "CMDUSHA0512793" in page.text
    assert tenant.http.get(f"/v1/track/{token}").status_code == 200


def test_extreme_times_stored_before_the_bounds_break_no_page(testenv: RunEnv, tenant: Tenant) -> None:
    shp = tenant.http.post(
        "/v1/shipments",
        json={
            "tracking_number": "CMDUSHA0512793",
            "legs": [
                {"mode": "sea", "origin": {"unlocode": "CNSHA"}, "destination": {"unlocode": "NLRTM"}},
                {"mode": "rail", "origin": {"unlocode": "NLRTM"}, "destination": {"unlocode": "DEDUI"}},
            ],
        },
    )
    assert shp.status_code == 201, shp.text
    sid = shp.json()["id"]
    token = tenant.http.post(f"/v1/shipments/{sid}/share", json={}).json()["token"]
    far_eta = {
        "predicted_at": "9999-12-31T23:59:59+00:00",
        "earliest": "6013-07-02T01:44:19+00:00",
        "latest": "9999-12-31T23:59:59.999999+00:00",
        "method": "physics+carrier",
        "computed_at": datetime.now(UTC).isoformat(),
        "carrier_eta": "9999-12-31T23:30:00+00:00",
        "promised_at": None,
    }
    updated = testenv.sql(
        "UPDATE shipment_state SET carrier_eta = %s, carrier_eta_created_at = now(), eta = %s"
        " WHERE shipment_id = %s RETURNING shipment_id",
        datetime(9999, 12, 31, 23, 30, tzinfo=UTC),
        orjson.dumps(far_eta).decode(),
        sid,
    )
    assert updated == [(sid,)]
    for path in (f"/track/{token}", f"/v1/track/{token}", f"/v1/shipments/{sid}", f"/v1/shipments/{sid}/eta"):
        r = tenant.http.get(path, headers={"accept-language": "de"})
        assert r.status_code == 200, (path, r.text[:300])
    assert "9999" in tenant.http.get(f"/track/{token}").text

    # The next event recomputes the ETA: the stored far estimate is not believed, and nothing fails.
    departed = dcsa_estimate("dep-1", (datetime.now(UTC) - timedelta(hours=2)).isoformat(), classifier="ACT")
    r = deliver(tenant, "dcsa", departed)
    assert r.status_code == 204, r.text
    eta = tenant.http.get(f"/v1/shipments/{sid}").json()["eta"]
    assert eta["carrier_eta"] is None
    assert datetime.fromisoformat(eta["latest"]).year < datetime.now(UTC).year + 3
    assert tenant.http.get(f"/track/{token}").status_code == 200
