"""The API docs (/docs: Swagger UI, /redoc: ReDoc) in Chromium, from the vendored assets alone: every
operation rendered, no request leaving the server's origin, no policy violation. And the OpenAPI
document as a client generator reads it: a model for every JSON answer and body, the contract's
fields in the key models, and real answers that match them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
from playwright.sync_api import ConsoleMessage, Page, Request

from tests.conftest import Server, Tenant
from tests.e2e.test_dashboard_browser import chromium_page

WITHIN_MS = 10_000


def operation_count(server: Server) -> int:
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    return sum(len(item) for item in doc["paths"].values())


def watch(page: Page) -> tuple[list[str], list[str]]:
    """The URLs the page requests and the errors its console reports (a CSP violation is one)."""
    requests: list[str] = []
    console: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if isinstance(r, Request) else None)
    page.on(
        "console", lambda m: console.append(m.text) if isinstance(m, ConsoleMessage) and m.type == "error" else None
    )
    return requests, console


def assert_local(server: Server, requests: list[str]) -> None:
    origin = urlsplit(server.url)
    foreign = [u for u in requests if urlsplit(u)[:2] != origin[:2] and not u.startswith(("blob:", "data:"))]
    assert foreign == []
    assert requests  # the watch saw the page at all


PAGES = (
    ("/docs", "#swagger-ui .opblock", "/static/vendor/swagger-ui/swagger-ui-bundle.js"),
    ("/redoc", "[id^='operation/']", "/static/vendor/redoc/redoc.standalone.js"),
)


def test_api_docs_render_offline(server: Server) -> None:
    expected = operation_count(server)
    with chromium_page() as page:
        requests, console = watch(page)
        for path, selector, asset in PAGES:
            requests.clear()
            console.clear()
            page.goto(server.url + path)
            page.wait_for_function(
                "([sel, n]) => document.querySelectorAll(sel).length === n", arg=[selector, expected], timeout=WITHIN_MS
            )
            assert page.locator(selector).count() == expected, path
            assert_local(server, requests)
            assert server.url + asset in requests
            assert server.url + "/openapi.json" in requests
            assert console == [], path


# -- the document as a client generator reads it ----------------------------------------------------


def _typed(schema: dict[str, Any]) -> bool:
    """A schema a generator can make a type of: a $ref, a typed array, an object with properties, or
    a union (a nullable one included) of such."""
    if "$ref" in schema:
        return True
    members = schema.get("anyOf") or schema.get("oneOf")
    if members:
        return all(_typed(m) for m in members if m.get("type") != "null")
    if schema.get("type") == "array":
        return _typed(schema.get("items") or {})
    return schema.get("type") == "object" and bool(schema.get("properties"))


def _model(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _answer(doc: dict[str, Any], method: str, path: str, code: str = "200") -> dict[str, Any]:
    return _model(doc, doc["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"])


def _item(doc: dict[str, Any], page: dict[str, Any]) -> dict[str, Any]:
    assert set(page["required"]) >= {"items", "next_cursor"}
    return _model(doc, page["properties"]["items"]["items"])


def test_every_json_answer_and_body_has_a_model(server: Server) -> None:
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    untyped = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for code, answer in op["responses"].items():
                for media, content in answer.get("content", {}).items():
                    if code.startswith("2") and "json" in media and not _typed(content["schema"]):
                        untyped.append(f"{method.upper()} {path} {code}")
            for media, content in op.get("requestBody", {}).get("content", {}).items():
                if "json" in media and not _typed(content["schema"]):
                    untyped.append(f"{method.upper()} {path} body")
    assert untyped == []
    # not JSON, and not documented as such
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert "content" not in doc["paths"]["/v1/osmand"]["get"]["responses"]["200"]


def test_the_key_models_have_the_contract_fields(server: Server) -> None:
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    shipment = _answer(doc, "get", "/v1/shipments/{shipment_id}")
    assert _answer(doc, "post", "/v1/shipments", "201") == shipment
    assert _item(doc, _answer(doc, "get", "/v1/shipments")) == shipment
    contract = {
        "id", "tracking_number", "carrier", "references", "mode", "legs", "promised_at", "weight_kg",
        "temperature_range_c", "devices", "status", "substatus", "last_position", "eta", "exceptions",
        "emissions", "release", "created_at", "updated_at",
    }  # fmt: skip
    assert set(shipment["required"]) >= contract
    assert shipment["additionalProperties"] is True  # a field added later breaks no client
    status = _model(doc, shipment["properties"]["status"])
    assert set(status["enum"]) == {
        "pending", "info_received", "in_transit", "customs", "out_for_delivery", "failed_attempt",
        "available_for_pickup", "delivered", "exception", "returned", "cancelled", "expired",
    }  # fmt: skip
    leg = _model(doc, shipment["properties"]["legs"]["items"])
    assert set(_model(doc, leg["properties"]["mode"])["enum"]) == {"sea", "air", "road", "rail"}
    assert set(leg["required"]) >= {"mode", "origin", "destination"}
    eta = _model(doc, _answer(doc, "get", "/v1/shipments/{shipment_id}/eta")["items"])
    assert set(eta["properties"]) >= {
        "predicted_at", "earliest", "latest", "carrier_eta", "promised_at", "method", "computed_at", "p_late",
        "revision",
    }  # fmt: skip
    exception = _model(doc, _model(doc, shipment["properties"]["exceptions"])["items"])
    assert set(exception["required"]) >= {"kind", "raised_at", "cleared_at", "detail"}
    assert "delayed" in _model(doc, exception["properties"]["kind"])["enum"]
    device = _answer(doc, "get", "/v1/devices/{device_id}")
    assert set(device["required"]) >= {"id", "key", "name"}
    assert _item(doc, _answer(doc, "get", "/v1/devices")) == device
    quarantined = _item(doc, _answer(doc, "get", "/v1/quarantine"))
    assert set(quarantined["required"]) >= {"id", "received_at", "source", "reason", "raw"}
    delivery = _item(doc, _answer(doc, "get", "/v1/webhooks/{webhook_id}/deliveries"))
    assert set(_model(doc, delivery["properties"]["status"])["enum"]) == {"pending", "succeeded", "failed"}
    attempt = _model(doc, delivery["properties"]["attempts"]["items"])
    assert set(attempt["required"]) >= {"at", "status_code", "latency_ms", "error"}
    assert "secret" in _answer(doc, "post", "/v1/webhooks", "201")["required"]
    assert "secret" not in _answer(doc, "get", "/v1/webhooks/{webhook_id}")["properties"]
    share = _answer(doc, "post", "/v1/shipments/{shipment_id}/share", "201")
    assert set(share["required"]) >= {"token", "url", "expires_at"}
    promise = _answer(doc, "post", "/v1/promise")
    assert set(promise["required"]) >= {"earliest", "likely", "latest", "confidence", "basis"}
    stats = _answer(doc, "get", "/v1/places/{place_id}/stats")
    assert set(stats["required"]) >= {"visits", "dwell_h"}
    place = _answer(doc, "get", "/v1/places/{place_id}")
    assert set(_model(doc, place["properties"]["kind"])["enum"]) == {
        "port", "airport", "terminal", "warehouse", "customs", "border", "depot", "other"
    }  # fmt: skip
    track = _answer(doc, "get", "/v1/track/{token}")
    assert not {"id", "shipment_id", "raw"} & set(track["properties"])  # no internal ids, no raw payloads
    for path in ("/v1/events", "/v1/ingest/{tenant}/{source}"):
        assert set(_answer(doc, "post", path, "202")["required"]) == {"accepted", "stored", "duplicates"}


def _conforms(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """`value` is valid against `schema` of the document (its $refs resolved there)."""
    jsonschema.Draft202012Validator(
        {**schema, "components": doc["components"]}, format_checker=jsonschema.FormatChecker()
    ).validate(value)


def test_a_shipment_with_everything_matches_its_models(server: Server, tenant: Tenant) -> None:
    """What the generated requests seldom reach: a shipment with legs, devices, a position, a
    milestone, an ETA, emissions and a release, read through every route that shows it."""
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    http = tenant.http
    now = datetime.now(UTC)

    def at(hours_ago: int) -> str:
        return (now - timedelta(hours=hours_ago)).isoformat()

    device = http.post("/v1/devices", json={"name": "box 1"})
    assert device.status_code == 201, device.text
    body = {
        "tracking_number": "DOCS-1",
        "carrier": "maersk",
        "references": ["PO-DOCS-1"],
        "legs": [
            {"mode": "road", "origin": {"lat": 31.0, "lon": 121.2}, "destination": {"unlocode": "CNSHA"}},
            {"mode": "sea", "origin": {"unlocode": "CNSHA"}, "destination": {"unlocode": "NLRTM"}},
        ],
        "promised_at": (now + timedelta(days=30)).isoformat(),
        "weight_kg": 1200,
        "temperature_range_c": [2, 8],
    }
    created = http.post("/v1/shipments", json=body)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    attached = http.post(f"/v1/shipments/{sid}/devices", json={"device_id": device.json()["id"], "from": at(5)})
    assert attached.status_code == 201, attached.text
    events = [
        {"event_id": "docs-1", "occurred_at": at(3), "shipment": "DOCS-1",
         "milestone": {"code": "picked_up", "classifier": "actual", "location": {"name": "Kunshan", "country": "CN"}}},
        {"event_id": "docs-2", "occurred_at": at(2), "device": device.json()["id"],
         "position": {"lat": 31.1, "lon": 121.3, "speed_kmh": 40, "heading": 90}},
        {"event_id": "docs-3", "occurred_at": at(1), "device": device.json()["id"],
         "sensor": {"temperature_c": 12.5}},
    ]  # fmt: skip
    accepted = http.post("/v1/events", json=events)
    assert accepted.status_code == 202, accepted.text
    _conforms(doc, doc["paths"]["/v1/events"]["post"]["responses"]["202"]["content"]["application/json"]["schema"],
              accepted.json())  # fmt: skip
    patched = http.patch(
        f"/v1/shipments/{sid}",
        json={"release": {"last_free_day": (now + timedelta(days=35)).isoformat(), "holds": [
            {"kind": "customs", "since": at(4)}]}},
    )  # fmt: skip
    assert patched.status_code == 200, patched.text
    shared = http.post(f"/v1/shipments/{sid}/share", json={})
    assert shared.status_code == 201, shared.text
    token = shared.json()["token"]
    shipment = http.get(f"/v1/shipments/{sid}").json()
    assert all(shipment[k] for k in ("last_position", "eta", "emissions", "release")), shipment
    reads = [
        ("post", "/v1/shipments/{shipment_id}/devices", attached),
        ("post", "/v1/shipments", created),
        ("post", "/v1/devices", device),
        ("post", "/v1/shipments/{shipment_id}/share", shared),
        ("patch", "/v1/shipments/{shipment_id}", patched),
        ("get", "/v1/shipments/{shipment_id}", http.get(f"/v1/shipments/{sid}")),
        ("get", "/v1/shipments", http.get("/v1/shipments", params={"q": "DOCS-1"})),
        ("get", "/v1/shipments/{shipment_id}/events", http.get(f"/v1/shipments/{sid}/events")),
        ("get", "/v1/shipments/{shipment_id}/positions", http.get(f"/v1/shipments/{sid}/positions")),
        ("get", "/v1/shipments/{shipment_id}/route", http.get(f"/v1/shipments/{sid}/route")),
        ("get", "/v1/shipments/{shipment_id}/eta", http.get(f"/v1/shipments/{sid}/eta")),
        ("get", "/v1/devices", http.get("/v1/devices")),
        ("get", "/v1/places", http.get("/v1/places", params={"bbox": "120,30,122,32"})),
        ("get", "/v1/places/visits", http.get("/v1/places/visits", params={"shipment_id": sid})),
        ("get", "/v1/track/{token}", http.get(f"/v1/track/{token}")),
    ]
    for method, path, r in reads:
        code = str(r.status_code)
        assert code in ("200", "201"), (path, r.text)
        schema = doc["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"]
        _conforms(doc, schema, r.json())
    assert len(http.get(f"/v1/shipments/{sid}/events").json()["items"]) == 3
    assert http.get(f"/v1/track/{token}").json()["milestones"]
    assert http.get("/v1/places", params={"bbox": "120,30,122,32"}).json()["items"]  # a bundled place at least
