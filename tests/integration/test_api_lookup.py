"""Shipment lookup by tracking number or reference, the exception filter by kind, the CSV export,
and the OpenAPI document (unique operation ids, the bearer scheme, the error schema)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from api import shipments as api_shipments
from tests.conftest import RunEnv, Server, Tenant
from trackd.store import Tenant as StoreTenant

NOW = datetime.now(UTC).replace(microsecond=0)
ROAD = {
    "mode": "road",
    "origin": {"name": "Lyon", "country": "FR", "lat": 45.76, "lon": 4.84},
    "destination": {"name": "Milan", "country": "IT", "lat": 45.46, "lon": 9.19},
}


def create(t: Tenant, number: str, **extra: Any) -> str:
    r = t.http.post("/v1/shipments", json={"tracking_number": number, **extra})
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def milestone(t: Tenant, number: str, code: str) -> None:
    event = {"shipment": number, "occurred_at": (NOW - timedelta(minutes=5)).isoformat(), "milestone": {"code": code}}
    r = t.http.post("/v1/events", json=[event])
    assert r.status_code == 202, r.text


def open_kinds(t: Tenant, sid: str) -> list[str]:
    return sorted(e["kind"] for e in t.http.get(f"/v1/shipments/{sid}").json()["exceptions"] if not e["cleared_at"])


def listed(t: Tenant, **params: str) -> list[str]:
    r = t.http.get("/v1/shipments", params=params)
    assert r.status_code == 200, r.text
    return [s["id"] for s in r.json()["items"]]


def test_lookup_by_id_tracking_number_or_reference(make_tenant: Any) -> None:
    t, other = make_tenant("lk"), make_tenant("lk")
    a = create(t, "LK-100", references=["PO-77"])
    b = create(t, "LK-200", references=["PO 77", "INV-9"])
    for ident in (a, "LK-100", "lk-100", "LK 100", "lk100"):  # id; tracking number in any case, spacing
        r = t.http.get(f"/v1/shipments/{ident}")
        assert r.status_code == 200, (ident, r.text)
        assert r.json()["id"] == a
    r = t.http.get("/v1/shipments/inv9")  # a reference of one shipment only
    assert r.status_code == 200
    assert r.json()["id"] == b

    ambiguous = t.http.get("/v1/shipments/PO-77")
    assert ambiguous.status_code == 409
    body = ambiguous.json()
    assert body["error"] == "Conflict"
    assert body["detail"] == f"'PO-77' matches 2 shipments: {b}, {a}"  # the most recent first

    d = create(t, "PO-77")  # an exact tracking number wins over other shipments' references
    assert t.http.get("/v1/shipments/po-77").json()["id"] == d
    three = t.http.get("/v1/shipments/PO77")  # not exactly a tracking number: every key match counts
    assert three.status_code == 409
    assert three.json()["detail"] == f"'PO77' matches 3 shipments: {d}, {b}, {a}"

    missing = t.http.get("/v1/shipments/NOPE-1")
    assert missing.status_code == 404
    assert missing.json() == {"error": "NotFound", "detail": "no shipment 'NOPE-1'"}
    for ident in (a, "LK-100", "PO-77"):  # scoped to the tenant
        assert other.http.get(f"/v1/shipments/{ident}").status_code == 404

    share = t.http.post("/v1/shipments/lk-100/share")  # the share link takes a tracking number too
    assert share.status_code == 201, share.text
    public = t.http.get(f"/v1/track/{share.json()['token']}", headers={"Authorization": ""})
    assert public.status_code == 200
    assert public.json()["tracking_number"] == "LK-100"
    assert t.http.post("/v1/shipments/PO77/share").status_code == 409
    assert t.http.get(f"/v1/shipments/{a}/events").status_code == 200  # the sub-resources still take the id


def test_exception_filter_by_kind(make_tenant: Any) -> None:
    t = make_tenant("ex")
    held = create(t, "EX-HOLD", legs=[ROAD])
    failed = create(t, "EX-FAIL", legs=[ROAD])
    calm = create(t, "EX-CALM", legs=[ROAD])
    milestone(t, "EX-HOLD", "customs_hold")
    milestone(t, "EX-FAIL", "delivery_attempted")
    assert (open_kinds(t, held), open_kinds(t, failed), open_kinds(t, calm)) == (
        ["customs_hold"],
        ["delivery_failed"],
        [],
    )

    assert listed(t, exception="customs_hold") == [held]
    assert listed(t, exception="delivery_failed") == [failed]
    assert listed(t, exception="customs_hold,delivery_failed") == [failed, held]  # any of them, newest first
    assert listed(t, exception=" customs_hold , delayed ") == [held]
    assert listed(t, exception="any") == [failed, held]
    assert listed(t, exception="none") == [calm]
    assert listed(t, exception="none,customs_hold") == [calm, held]
    assert listed(t, exception="delayed") == []
    assert listed(t, exception="") == [calm, failed, held]  # no terms: no filter

    for value, name in (("stuck", "stuck"), ("any,Delayed", "Delayed")):
        r = t.http.get("/v1/shipments", params={"exception": value})
        assert r.status_code == 422
        assert r.json()["error"] == "ValidationError"
        assert r.json()["detail"].startswith(f"exception: unknown kind {name!r} (expected any, none, delayed, ")


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def test_csv_export(make_tenant: Any, testenv: RunEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    t = make_tenant("cv")
    promised = (NOW + timedelta(days=3)).isoformat()
    first = create(t, "CSV-1", carrier="Haulage", legs=[ROAD], promised_at=promised)
    second = create(t, "=CSV-2", mode="air")  # a formula-like tracking number, no legs
    milestone(t, "CSV-1", "customs_hold")

    r = t.http.get("/v1/shipments.csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="shipments.csv"'
    assert "x-next-cursor" not in r.headers
    rows = rows_of(r.text)
    assert rows[0] == [
        "id",
        "tracking_number",
        "carrier",
        "mode",
        "status",
        "eta_predicted_at",
        "eta_earliest",
        "eta_latest",
        "promised_at",
        "open_exceptions",
        "origin",
        "destination",
        "updated_at",
    ]
    assert len(rows) == 3
    assert [row[0] for row in rows[1:]] == [second, first]
    one = t.http.get(f"/v1/shipments/{first}").json()
    eta = one["eta"]
    assert rows[2] == [
        first,
        "CSV-1",
        "Haulage",
        "road",
        "customs",
        eta["predicted_at"],
        eta["earliest"],
        eta["latest"],
        one["promised_at"],
        "customs_hold",
        "Lyon (FR)",
        "Milan (IT)",
        one["updated_at"],
    ]
    assert rows[1][1:5] == ["'=CSV-2", "", "air", "pending"]
    assert rows[1][9:12] == ["", "", ""]

    only = rows_of(t.http.get("/v1/shipments.csv", params={"exception": "customs_hold"}).text)
    assert [row[0] for row in only[1:]] == [first]
    assert t.http.get("/v1/shipments.csv", params={"exception": "late"}).status_code == 422
    after = t.http.get("/v1/shipments", params={"limit": 1}).json()["next_cursor"]
    rest = rows_of(t.http.get("/v1/shipments.csv", params={"cursor": after}).text)
    assert [row[0] for row in rest[1:]] == [first]  # the list's cursor continues the export
    assert t.http.get("/v1/shipments.csv", headers={"Authorization": ""}).status_code == 401

    # at most CSV_MAX_ROWS rows an answer, read CSV_PAGE at a time; X-Next-Cursor continues
    ids = [*[create(t, f"CAP-{i}") for i in range(3)][::-1], second, first]  # newest first
    ((tenant_id,),) = testenv.sql("SELECT id FROM tenants WHERE name = %s", t.name)
    monkeypatch.setattr(api_shipments, "CSV_MAX_ROWS", 3)
    monkeypatch.setattr(api_shipments, "CSV_PAGE", 2)  # the cap reached over two pages (2 + 1)
    who = StoreTenant(tenant_id, t.name)
    async with await AsyncConnection.connect(testenv.dsn, row_factory=dict_row) as db:
        head = await api_shipments.export_shipments(who, db, {}, None)
        cursor = head.headers["x-next-cursor"]
        tail = await api_shipments.export_shipments(who, db, {}, cursor)
    assert [row[0] for row in rows_of(bytes(head.body).decode())[1:]] == ids[:3]
    assert [row[0] for row in rows_of(bytes(tail.body).decode())[1:]] == ids[3:]
    assert "x-next-cursor" not in tail.headers
    assert t.http.get("/v1/shipments", params={"cursor": cursor}).json()["items"][0]["id"] == ids[3]


PUBLIC = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("post", "/v1/ingest/{tenant}/{source}"),
    ("get", "/v1/osmand"),
    ("post", "/v1/osmand"),
    ("get", "/v1/track/{token}"),
}


def test_openapi_document(server: Server) -> None:
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    ops = [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items()]
    ids = Counter(op["operationId"] for _, _, op in ops)
    assert [i for i, n in ids.items() if n > 1] == []
    assert len(ids) == len(ops)
    assert {ids_ for ids_ in ids if ids_.startswith("osmand")} == {"osmand_get", "osmand_post"}

    assert doc["components"]["securitySchemes"] == {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "the tenant's API key: `Authorization: Bearer tk_...`",
        },
        "session": {
            "type": "apiKey",
            "in": "cookie",
            "name": "trackd_session",
            "description": "a browser's session, set by `POST /v1/session`; changes must come from this origin",
        },
    }
    # every tenant route takes the key or the dashboard's session cookie; the session routes one each
    secured = {(m, p) for m, p, op in ops if op.get("security") == [{"apiKey": []}, {"session": []}]}
    unsecured = {(m, p) for m, p, op in ops if "security" not in op}
    assert unsecured == PUBLIC
    session = {(m, p): op["security"] for m, p, op in ops if p == "/v1/session"}
    assert session == {
        ("post", "/v1/session"): [{"apiKey": []}],
        ("get", "/v1/session"): [{"session": []}],
        ("delete", "/v1/session"): [{"session": []}],
    }
    assert len(secured) == len(ops) - len(PUBLIC) - len(session)
    assert ("get", "/v1/shipments/{shipment_id}") in secured
    assert ("get", "/v1/shipments.csv") in secured

    error = {
        "title": "Error",
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    }
    schemas = doc["components"]["schemas"]
    assert schemas["Error"] == schemas["HTTPValidationError"] == error
    refs = {"#/components/schemas/Error", "#/components/schemas/HTTPValidationError"}
    errors = 0
    for m, p, op in ops:
        for code, answer in op["responses"].items():
            if code.startswith("4"):
                assert answer["content"]["application/json"]["schema"]["$ref"] in refs, (m, p, code)
                errors += 1
        assert ((m, p) in secured or (m, p) in session) == ("401" in op["responses"]), (m, p)
        assert ("{" in p) <= ("404" in op["responses"]), (m, p)
    assert errors > len(ops)
    assert "409" in doc["paths"]["/v1/shipments/{shipment_id}"]["get"]["responses"]
    csv_answer = doc["paths"]["/v1/shipments.csv"]["get"]["responses"]["200"]["content"]
    assert list(csv_answer) == ["text/csv"]
