"""Every ingest source through its real transport, fed with the recorded payloads in tests/payloads/.

OwnTracks over MQTT (the real Mosquitto), Traccar Client / OsmAnd over GET and POST /v1/osmand, and
each carrier webhook with its own signature scheme. For each: the events are stored and attached to
the shipment whose identifiers they carry (ignoring case, spaces and hyphens), a bad signature
stores nothing, malformed input is a 4xx kept in quarantine with its reason, a redelivery changes
nothing, and codes trackd does not map are kept raw and counted in /metrics.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ingest.mqtt_conn import PublisherThread, endpoint
from tests.conftest import RunEnv, Server, Tenant, wait_for

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"


def fixture(source: str, name: str) -> bytes:
    return (PAYLOADS / source / name).read_bytes()


def fixture_json(source: str, name: str) -> Any:
    return orjson.loads(fixture(source, name))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- signatures, as each source publishes them --------------------------------------------------------


@dataclass(frozen=True)
class Scheme:
    header: str
    prefix: str
    encoding: str  # "hex" or "base64"

    def sign(self, secret: str, body: bytes) -> str:
        mac = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
        return self.prefix + (mac.hex() if self.encoding == "hex" else base64.b64encode(mac).decode())


NATIVE = Scheme("X-Trackd-Signature", "sha256=", "hex")
SCHEMES = {
    "dcsa": Scheme("Notification-Signature", "sha256=", "hex"),
    "onerecord": NATIVE,
    "x12-214": NATIVE,
    "aftership": Scheme("aftership-hmac-sha256", "", "base64"),
    "easypost": Scheme("X-Hmac-Signature", "hmac-sha256-hex=", "hex"),
}


def deliver(
    t: Tenant, source: str, body: bytes, content_type: str = "application/json", secret: str | None = None
) -> httpx.Response:
    scheme = SCHEMES[source]
    value = scheme.sign(t.ingest_secret if secret is None else secret, body)
    return t.signed(source, body, header=scheme.header, value=value, content_type=content_type)


# -- reading the results back --------------------------------------------------------------------------


def count_events(te: RunEnv, tenant: str, where: str = "TRUE") -> int:
    rows = te.sql(
        f"SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s AND {where}", tenant
    )
    return int(rows[0][0])


def create_shipment(t: Tenant, tracking: str, references: tuple[str, ...] = ()) -> dict[str, Any]:
    r = t.http.post("/v1/shipments", json={"tracking_number": tracking, "references": list(references)})
    assert r.status_code == 201, r.text
    shp: dict[str, Any] = r.json()
    return shp


def events_of(t: Tenant, shipment_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 500, **({"kind": kind} if kind else {})}
    r = t.http.get(f"/v1/shipments/{shipment_id}/events", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def milestones_of(t: Tenant, shipment_id: str) -> list[tuple[str | None, str | None, str | None, datetime]]:
    return [
        (e["code"], e["raw_code"], e["classifier"], at(e["occurred_at"]))
        for e in events_of(t, shipment_id, "milestone")
    ]


def quarantine(t: Tenant, source: str) -> list[dict[str, Any]]:
    r = t.http.get("/v1/quarantine", params={"source": source, "limit": 500})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def view(t: Tenant, shipment_id: str) -> dict[str, Any]:
    """What a redelivery must not change: the state and every event of the shipment."""
    shp = t.http.get(f"/v1/shipments/{shipment_id}").json()
    events = [(e["id"], e["code"], e["occurred_at"], e["retracted"]) for e in events_of(t, shipment_id)]
    return {
        "status": shp["status"],
        "substatus": shp["substatus"],
        "last_position": shp["last_position"],
        "events": events,
    }


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric(server: Server, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when the series does not exist yet)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, value = line.rsplit(" ", 1)
        if dict(_LABEL.findall(series)) == labels:
            return float(value)
    return 0.0


# -- OwnTracks over MQTT -------------------------------------------------------------------------------


class Publisher:
    def __init__(self) -> None:
        self.client = PublisherThread(endpoint("mqtt://127.0.0.1:1883"), f"pub-{secrets.token_hex(4)}")

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).result(5)

    def close(self) -> None:
        self.client.close()


def test_owntracks_over_mqtt(tenant: Tenant, testenv: RunEnv, server: Server) -> None:
    prefix = testenv.env["TRACKD_MQTT_TOPIC_PREFIX"]
    assert tenant.http.post("/v1/devices", json={"id": "truck-42", "key": f"ot-{tenant.name}"}).status_code == 201
    shp = create_shipment(tenant, "OT-TRUCK-42")
    r = tenant.http.post(
        f"/v1/shipments/{shp['id']}/devices", json={"device_id": "truck-42", "from": "2024-05-01T00:00:00Z"}
    )
    assert r.status_code == 201, r.text
    base = f"{prefix}owntracks/{tenant.name}/truck-42"
    hover = fixture_json("owntracks", "transition_enter.json") | {"event": "hover", "tst": 1717239600}
    messages = [
        (base, fixture("owntracks", "location.json")),
        (base, fixture("owntracks", "location_ios.json")),  # its own "topic" names another tenant: ignored
        (base + "/event", fixture("owntracks", "transition_enter.json")),
        (base + "/event", fixture("owntracks", "transition_leave.json")),
        (base + "/event", orjson.dumps(hover)),
        (base, fixture("owntracks", "lwt.json")),
        (base, fixture("owntracks", "card.json")),
        (base, fixture("owntracks", "waypoint.json")),
    ]
    bad_lat = orjson.dumps(fixture_json("owntracks", "location.json") | {"lat": 91.5})
    hover_before = metric(server, "trackd_unknown_codes_total", source="owntracks")
    pub = Publisher()
    try:
        for topic, body in messages:
            pub.send(topic, body)
        pub.send(base, bad_lat)
        pub.send(base, b"not json at all")
        # location: position + battery; location_ios: position; enter, leave, hover: milestones
        wait_for(lambda: count_events(testenv, tenant.name) >= 6)
        wait_for(lambda: len(quarantine(tenant, "owntracks")) >= 2)
        got = tenant.http.get(f"/v1/shipments/{shp['id']}").json()
        assert got["last_position"]["lat"] == pytest.approx(52.37403)
        assert got["last_position"]["lon"] == pytest.approx(4.88969)
        assert got["last_position"]["speed_kmh"] == pytest.approx(64)
        assert at(got["last_position"]["at"]) == at("2024-06-01T11:12:55Z")
        assert got["status"] == "in_transit"
        kinds = sorted(e["kind"] for e in events_of(tenant, shp["id"]))
        assert kinds == ["milestone", "milestone", "milestone", "position", "position", "sensor"]
        sensor = events_of(tenant, shp["id"], "sensor")[0]
        assert sensor["data"]["battery_pct"] == 78
        assert milestones_of(tenant, shp["id"]) == [
            ("arrived", "enter", "actual", at("2024-06-01T10:00:00Z")),
            ("departed", "leave", "actual", at("2024-06-01T10:35:00Z")),
            (None, "hover", "actual", at("2024-06-01T11:00:00Z")),
        ]
        enter = events_of(tenant, shp["id"], "milestone")[0]
        assert enter["location"]["name"] == "Warehouse Venlo"
        assert (enter["source"], enter["device_id"]) == ("owntracks", "truck-42")
        geo = tenant.http.get(f"/v1/shipments/{shp['id']}/positions").json()
        assert [f["geometry"]["coordinates"] for f in geo["features"]] == [[4.47917, 51.9225], [4.88969, 52.37403]]
        assert metric(server, "trackd_unknown_codes_total", source="owntracks") == hover_before + 1

        q = quarantine(tenant, "owntracks")
        assert {i["raw"] for i in q} == {bad_lat.decode(), "not json at all"}
        reasons = {i["raw"]: i["reason"] for i in q}
        assert "lat" in reasons[bad_lat.decode()]
        assert "body" in reasons["not json at all"]

        # Redelivery: the broker hands the same messages over again. A fix from a device attached to
        # nothing is published last, as a marker that the ingester has read everything before it.
        before = view(tenant, shp["id"])
        for topic, body in messages:
            pub.send(topic, body)
        marker = {"_type": "location", "lat": 50.0, "lon": 8.0, "tst": 1717250000}
        pub.send(f"{prefix}owntracks/{tenant.name}/marker", orjson.dumps(marker))
        wait_for(lambda: count_events(testenv, tenant.name, "e.device_id = 'marker'") == 1)
        time.sleep(0.5)
        assert count_events(testenv, tenant.name) == 7
        assert view(tenant, shp["id"]) == before
        assert metric(server, "trackd_unknown_codes_total", source="owntracks") == hover_before + 1
    finally:
        pub.close()


# -- Traccar Client / OsmAnd over HTTP ------------------------------------------------------------------


def test_osmand_query_form_and_json(tenant: Tenant, testenv: RunEnv, server: Server) -> None:
    key = f"osm-{tenant.name}-{secrets.token_hex(3)}"
    fixture_key = "867530912345678"
    assert tenant.http.post("/v1/devices", json={"id": "phone-7", "key": key}).status_code == 201
    shp = create_shipment(tenant, "OSM-PHONE-7")
    r = tenant.http.post(
        f"/v1/shipments/{shp['id']}/devices", json={"device_id": "phone-7", "from": "2024-05-01T00:00:00Z"}
    )
    assert r.status_code == 201, r.text
    osm = httpx.Client(base_url=server.url, timeout=30)

    def query(name: str) -> str:
        return fixture("osmand", name).decode().strip().replace(fixture_key, key)

    client9 = fixture("osmand", "client9.json").replace(fixture_key.encode(), key.encode())
    form = fixture("osmand", "form.txt").strip()
    try:
        sent = [
            osm.get("/v1/osmand?" + query("query.txt")),
            osm.get("/v1/osmand?" + query("query_iso.txt")),
            osm.get("/v1/osmand?" + query("query_ms.txt")),
            osm.post(
                "/v1/osmand",
                params={"id": key},
                content=form,
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            osm.post("/v1/osmand", content=client9, headers={"content-type": "application/json"}),
        ]
        assert [s.status_code for s in sent] == [200] * 5, [s.text for s in sent]
        # query, form and JSON each carry a battery level as well
        assert count_events(testenv, tenant.name) == 8
        got = tenant.http.get(f"/v1/shipments/{shp['id']}").json()
        last = got["last_position"]
        assert (last["lat"], last["lon"]) == (pytest.approx(45.46427), pytest.approx(9.18951))
        assert last["speed_kmh"] == pytest.approx(90.0)  # 25 m/s
        assert at(last["at"]) == at("2024-06-01T11:30:00Z")
        positions = {
            at(e["occurred_at"]): e["data"] for e in events_of(tenant, shp["id"], "position") if e["data"]["speed_kmh"]
        }
        assert positions[at("2024-06-01T11:00:00Z")]["speed_kmh"] == pytest.approx(20 * 1.852)  # knots
        assert positions[at("2024-06-01T11:00:00Z")]["lat"] == pytest.approx(48.8566)
        assert positions[at("2024-06-01T11:06:40Z")]["speed_kmh"] == pytest.approx(10 * 1.852)
        assert positions[at("2024-06-01T11:06:40Z")]["heading"] == pytest.approx(135.5)
        times = sorted(at(e["occurred_at"]) for e in events_of(tenant, shp["id"], "position"))
        # the same fix time in epoch seconds (query.txt) and milliseconds (query_ms.txt)
        assert times == [
            at("2024-06-01T10:50:00Z"),
            at("2024-06-01T11:00:00Z"),
            at("2024-06-01T11:06:40Z"),
            at("2024-06-01T11:06:40Z"),
            at("2024-06-01T11:30:00Z"),
        ]
        batteries = sorted(e["data"]["battery_pct"] for e in events_of(tenant, shp["id"], "sensor"))
        assert batteries == [pytest.approx(42), pytest.approx(64), pytest.approx(75)]
        assert all(e["device_id"] == "phone-7" and e["source"] == "osmand" for e in events_of(tenant, shp["id"]))

        before = view(tenant, shp["id"])
        again = [
            osm.get("/v1/osmand?" + query("query.txt")),
            osm.post("/v1/osmand", content=client9, headers={"content-type": "application/json"}),
            osm.post(
                "/v1/osmand",
                params={"id": key},
                content=form,
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
        ]
        assert [s.status_code for s in again] == [200] * 3
        assert count_events(testenv, tenant.name) == 8
        assert view(tenant, shp["id"]) == before

        bad = osm.get("/v1/osmand", params={"id": key, "lat": "91.2", "lon": "8.6", "timestamp": "1717240000"})
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"] == "ValidationError"
        assert "lat" in bad.json()["detail"]
        no_time = osm.get("/v1/osmand", params={"id": key, "lat": "50.1", "lon": "8.6"})
        assert no_time.status_code == 422
        assert "timestamp" in no_time.json()["detail"]
        broken_json = osm.post(
            "/v1/osmand",
            params={"id": key},
            content=b'{"location": {"coords": ',
            headers={"content-type": "application/json"},
        )
        assert broken_json.status_code == 422
        q = quarantine(tenant, "osmand")
        assert len(q) == 3
        by_raw = {i["raw"]: i["reason"] for i in q}
        assert "lat" in by_raw[f"id={key}&lat=91.2&lon=8.6&timestamp=1717240000"]
        assert "timestamp" in by_raw[f"id={key}&lat=50.1&lon=8.6"]
        assert '{"location": {"coords": ' in by_raw
        assert count_events(testenv, tenant.name) == 8
        assert view(tenant, shp["id"]) == before
        # a deleted device's key stops at once (the server keeps known keys for a while)
        assert tenant.http.delete("/v1/devices/phone-7").status_code == 204
        assert osm.get("/v1/osmand?" + query("query.txt")).status_code == 404
    finally:
        osm.close()


def test_osmand_unknown_or_missing_device_key_is_refused_and_quarantined(testenv: RunEnv, server: Server) -> None:
    stranger = f"unregistered-{secrets.token_hex(6)}"
    with httpx.Client(base_url=server.url, timeout=30) as osm:
        r = osm.get(
            "/v1/osmand?" + fixture("osmand", "query.txt").decode().strip().replace("867530912345678", stranger)
        )
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "NotFound"
        body = fixture("osmand", "client9.json").replace(b"867530912345678", stranger.encode())
        r = osm.post("/v1/osmand", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 404
        missing = osm.get(
            "/v1/osmand", params={"lat": "50.1", "lon": "8.6", "timestamp": "1717240000", "note": stranger}
        )
        assert missing.status_code == 422
        assert "id" in missing.json()["detail"]
    # Nobody can be told which tenant this was for: kept in quarantine without a tenant.
    rows = testenv.sql(
        "SELECT reason, raw FROM quarantine WHERE tenant_id IS NULL AND source = 'osmand' AND raw LIKE %s",
        f"%{stranger}%",
    )
    assert len(rows) == 3, rows
    reasons = sorted(reason for reason, _ in rows)
    assert sum(stranger in reason for reason in reasons) == 2  # the unknown key is named
    assert any(reason.startswith("ValidationError: id") for reason in reasons)
    assert (
        testenv.sql("SELECT count(*) FROM events WHERE device_id IS NULL AND raw::text LIKE %s", f"%{stranger}%")[0][0]
        == 0
    )


# -- carrier webhooks ---------------------------------------------------------------------------------

Milestone = tuple[str | None, str, str, datetime]


def _edit(source: str, name: str, change: Callable[[Any], None]) -> bytes:
    doc = fixture_json(source, name)
    change(doc)
    return orjson.dumps(doc)


def _drop_dcsa_time(doc: dict[str, Any]) -> None:
    del doc["eventDateTime"]


def _drop_onerecord_code(doc: dict[str, Any]) -> None:
    del doc["cargo:eventCode"]


def _bad_checkpoint_time(doc: dict[str, Any]) -> None:
    doc["msg"]["checkpoints"][1]["checkpoint_time"] = "31/05/2024 13:41"


def _bad_detail_time(doc: dict[str, Any]) -> None:
    doc["result"]["tracking_details"][2]["datetime"] = "soon"


def _held(doc: dict[str, Any]) -> None:
    doc["msg"] |= {"tag": "Held", "subtag": "Held_001", "updated_at": "2024-05-31T05:00:00+00:00"}


@dataclass(frozen=True)
class Case:
    source: str
    bodies: tuple[bytes, ...]
    # the tracking number as a user types it -> its references; the last one is created only after
    # the events came in (they wait for it)
    shipments: dict[str, tuple[str, ...]]
    milestones: dict[str, list[Milestone]]
    status: dict[str, tuple[str, str | None]]
    stored: int
    unattached: int = 0
    unknown: tuple[str, ...] = ()
    malformed: bytes = b""
    malformed_status: int = 422
    malformed_field: str = ""
    content_type: str = "application/json"
    ok_status: int = 202


CASES = [
    Case(
        source="dcsa",
        bodies=(
            fixture("dcsa", "v2_events.json"),
            fixture("dcsa", "v2_2_gate_out.json"),
            fixture("dcsa", "v3_events.json"),
            fixture("dcsa", "v3_truck.json"),
        ),
        shipments={"maeu-2405 12345": ("abc 709951",), "msc2405881": (), "Cmdu-Sha 0512793": ()},
        milestones={
            "maeu-2405 12345": [
                ("booked", "CONF", "actual", at("2024-05-16T06:00:00Z")),
                ("loaded", "LOAD", "actual", at("2024-05-19T20:05:00Z")),
                ("departed", "DEPA", "actual", at("2024-05-20T07:12:00Z")),
                ("customs_hold", "HOLD", "actual", at("2024-05-30T17:20:00Z")),
                ("gate_out", "GTOT", "actual", at("2024-05-31T15:47:00Z")),
                ("arrived", "ARRI", "estimated", at("2024-06-09T18:00:00Z")),
            ],
            "Cmdu-Sha 0512793": [
                (None, "ISSU", "actual", at("2024-05-19T04:31:00Z")),
                ("discharged", "DISC", "actual", at("2024-05-22T03:05:00Z")),
                ("arrived", "ARRI", "estimated", at("2024-06-20T05:41:00Z")),
            ],
            "msc2405881": [("departed", "DEPA", "planned", at("2024-06-03T06:00:00Z"))],
        },
        status={
            "maeu-2405 12345": ("in_transit", None),
            "Cmdu-Sha 0512793": ("in_transit", None),
            "msc2405881": ("pending", None),
        },
        stored=11,
        unattached=1,  # the v3 retraction of an event this tenant never had
        unknown=("ISSU",),
        malformed=_edit("dcsa", "v2_2_gate_out.json", _drop_dcsa_time),
        malformed_field="eventDateTime",
        ok_status=204,
    ),
    Case(
        source="onerecord",
        bodies=(
            fixture("onerecord", "dep_compact.json"),
            fixture("onerecord", "graph_arrival.json"),
            fixture("onerecord", "legacy_linked_object.json"),
        ),
        shipments={"020-1234 5675": (), "160 2222-3333": ()},
        milestones={
            "020-1234 5675": [
                ("departed", "DEP", "actual", at("2024-06-01T07:41:00Z")),
                ("delivered", "DLV", "actual", at("2024-06-01T11:15:00Z")),
                ("available_for_pickup", "NFD", "actual", at("2024-06-01T15:00:00Z")),
                ("arrived", "ARR", "estimated", at("2024-06-01T21:35:00Z")),
            ],
            "160 2222-3333": [
                ("picked_up", "RCS", "actual", at("2024-05-31T16:20:00Z")),
                (None, "XYZ", "actual", at("2024-05-31T17:00:00Z")),
            ],
        },
        # NFD is newer than DLV and strong enough to reopen a delivered shipment
        status={"020-1234 5675": ("available_for_pickup", None), "160 2222-3333": ("in_transit", None)},
        stored=6,
        unknown=("XYZ",),
        malformed=_edit("onerecord", "dep_compact.json", _drop_onerecord_code),
        malformed_field="eventCode",
    ),
    Case(
        source="x12-214",
        bodies=(
            fixture("x12-214", "ltl_status.edi"),
            fixture("x12-214", "cross_border.edi"),
            fixture("x12-214", "pipe_separated.edi"),
        ),
        shipments={"1234567890": ("bol-778812",), "rx 44120": (), "mx-555-0012": ()},
        milestones={
            "1234567890": [
                ("departed", "AF", "actual", at("2024-05-31T21:45:00Z")),  # Dallas, local time
                ("at_facility", "X4", "actual", at("2024-06-01T08:10:00Z")),  # Oklahoma City
                ("delivered", "AG", "estimated", at("2024-06-03T22:00:00Z")),  # CT
            ],
            "mx-555-0012": [
                ("delivery_attempted", "AP", "actual", at("2024-05-31T18:00:00Z")),
                ("arrived", "X1", "actual", at("2024-06-01T15:15:00Z")),  # Monterrey, local time
                ("delivered", "D1", "actual", at("2024-06-01T16:02:00Z")),
                (None, "ZZ", "actual", at("2024-06-01T16:10:00Z")),
            ],
            "rx 44120": [
                ("departed", "RL", "actual", at("2024-06-01T08:45:00Z")),  # PT
                ("arrived", "X2", "estimated", at("2024-06-05T02:00:00Z")),  # Toronto, local time
            ],
        },
        status={
            "1234567890": ("in_transit", None),
            "mx-555-0012": ("delivered", None),
            "rx 44120": ("in_transit", None),
        },
        stored=9,
        unknown=("ZZ",),
        malformed=fixture("x12-214", "ltl_status.edi").replace(
            b"AT7*AF*NS***20240531*1645*LT", b"AT7*AF*NS***2024053X*1645*LT"
        ),
        malformed_field="AT705",
        content_type="text/plain",
    ),
    Case(
        source="aftership",
        bodies=(
            fixture("aftership", "delivered_2024.json"),
            fixture("aftership", "tracking_update_legacy.json"),
            fixture("aftership", "pending_no_checkpoints.json"),
            _edit("aftership", "pending_no_checkpoints.json", _held),
        ),
        shipments={"1z999aa1 0123456784": (), "lx 123 456 789 cn": (), "0034-0434-1881-9123-4567": ()},
        milestones={
            "0034-0434-1881-9123-4567": [
                ("out_for_delivery", "OutForDelivery_001", "actual", at("2024-05-31T06:05:00Z")),
                ("delivered", "Delivered_001", "actual", at("2024-05-31T11:41:00Z")),  # Hamburg, local time
                ("delivered", "latest_estimated_delivery.datetime", "estimated", at("2024-05-31T16:00:00Z")),
            ],
            "1z999aa1 0123456784": [
                ("picked_up", "InTransit_002", "actual", at("2024-05-30T22:02:00Z")),  # Louisville, local time
                ("departed", "InTransit_007", "actual", at("2024-05-31T04:41:00Z")),
                ("customs_submitted", "InTransit_006", "actual", at("2024-05-31T14:22:00Z")),
                ("delivered", "expected_delivery", "estimated", at("2024-06-04T23:59:59Z")),
            ],
            "lx 123 456 789 cn": [
                ("info_received", "InfoReceived", "actual", at("2024-05-31T02:00:05Z")),
                (None, "Held", "actual", at("2024-05-31T05:00:00Z")),
            ],
        },
        status={
            "0034-0434-1881-9123-4567": ("delivered", None),
            "1z999aa1 0123456784": ("customs", "customs.submitted"),
            "lx 123 456 789 cn": ("info_received", None),
        },
        stored=9,
        unknown=("Held",),
        malformed=_edit("aftership", "delivered_2024.json", _bad_checkpoint_time),
        malformed_field="checkpoints[1].checkpoint_time",
    ),
    Case(
        source="easypost",
        bodies=(
            fixture("easypost", "tracker_updated.json"),
            fixture("easypost", "batch_created.json"),
            fixture("easypost", "tracker_created.json"),
        ),
        shipments={"9400 1118 9922 3197 4284 90": (), "ez-4000000004": ()},
        milestones={
            "9400 1118 9922 3197 4284 90": [
                ("info_received", "pre_transit", "actual", at("2024-05-29T19:40:00Z")),
                ("departed", "in_transit", "actual", at("2024-05-30T23:17:00Z")),
                ("out_for_delivery", "out_for_delivery", "actual", at("2024-06-01T13:05:00Z")),
                ("delivered", "delivered", "actual", at("2024-06-01T15:02:00Z")),
                ("delivered", "est_delivery_date", "estimated", at("2024-06-01T20:00:00Z")),
            ],
            "ez-4000000004": [
                ("info_received", "pre_transit", "actual", at("2024-05-28T09:00:01Z")),
                ("exception", "failure", "actual", at("2024-05-31T16:40:01Z")),
                ("returned", "return_to_sender", "actual", at("2024-06-01T08:12:01Z")),
                (None, "unknown", "actual", at("2024-06-01T08:30:01Z")),
                ("delivered", "est_delivery_date", "estimated", at("2024-06-05T23:59:59Z")),
            ],
        },
        status={"9400 1118 9922 3197 4284 90": ("delivered", None), "ez-4000000004": ("returned", None)},
        stored=10,
        unknown=("unknown",),
        malformed=_edit("easypost", "tracker_updated.json", _bad_detail_time),
        malformed_field="tracking_details[2].datetime",
    ),
]


@pytest.fixture(scope="module")
def hooks(make_tenant: Any) -> Tenant:
    """One tenant for the webhook tests: the fixtures of different sources share no shipment identifier."""
    t: Tenant = make_tenant("hooks")
    return t


@pytest.mark.parametrize("case", CASES, ids=[c.source for c in CASES])
def test_webhook_source_end_to_end(case: Case, hooks: Tenant, testenv: RunEnv, server: Server) -> None:
    t = hooks
    mine = f"e.source = '{case.source}'"
    names = list(case.shipments)
    shipments = {name: create_shipment(t, name, case.shipments[name]) for name in names[:-1]}

    # A wrong signature (another secret), a missing one, and one over other bytes: 401, nothing kept.
    first = case.bodies[0]
    wrong = deliver(t, case.source, first, case.content_type, secret=t.ingest_secret + "x")
    assert wrong.status_code == 401, wrong.text
    assert wrong.json()["error"] == "Unauthorized"
    missing = t.http.post(
        f"/v1/ingest/{t.name}/{case.source}",
        content=first,
        headers={"content-type": case.content_type, "authorization": ""},
    )
    assert missing.status_code == 401
    scheme = SCHEMES[case.source]
    other = t.signed(
        case.source,
        first + b" ",
        header=scheme.header,
        value=scheme.sign(t.ingest_secret, first),
        content_type=case.content_type,
    )
    assert other.status_code == 401
    assert count_events(testenv, t.name, mine) == 0
    assert quarantine(t, case.source) == []

    unknown_before = metric(server, "trackd_unknown_codes_total", source=case.source)
    stored = 0
    for body in case.bodies:
        r = deliver(t, case.source, body, case.content_type)
        assert r.status_code == case.ok_status, r.text
        if case.ok_status == 204:
            assert r.content == b""
        else:
            stored += r.json()["stored"]
    if case.ok_status != 204:
        assert stored == case.stored
    assert count_events(testenv, t.name, mine) == case.stored
    shipments[names[-1]] = create_shipment(t, names[-1], case.shipments[names[-1]])  # adopts what waited

    for name, shp in shipments.items():
        assert milestones_of(t, shp["id"]) == case.milestones.get(name, []), name
        got = t.http.get(f"/v1/shipments/{shp['id']}").json()
        assert (got["status"], got["substatus"]) == case.status[name], name
        assert {e["source"] for e in events_of(t, shp["id"])} == {case.source}
    assert count_events(testenv, t.name, mine + " AND e.shipment_id IS NULL") == case.unattached
    assert metric(server, "trackd_unknown_codes_total", source=case.source) == unknown_before + len(case.unknown)

    # Redelivery of every payload: accepted, and nothing changes.
    views = {name: view(t, shp["id"]) for name, shp in shipments.items()}
    for body in case.bodies:
        r = deliver(t, case.source, body, case.content_type)
        assert r.status_code == case.ok_status, r.text
        if case.ok_status != 204:
            assert r.json()["stored"] == 0
            assert r.json()["duplicates"] == r.json()["accepted"]
    assert count_events(testenv, t.name, mine) == case.stored
    assert {name: view(t, shp["id"]) for name, shp in shipments.items()} == views
    assert metric(server, "trackd_unknown_codes_total", source=case.source) == unknown_before + len(case.unknown)

    # Malformed: a clear 4xx naming the field, kept in quarantine with the reason.
    bad = deliver(t, case.source, case.malformed, case.content_type)
    assert bad.status_code == case.malformed_status, bad.text
    assert bad.json()["error"] == "ValidationError"
    assert case.malformed_field in bad.json()["detail"]
    q = quarantine(t, case.source)
    assert len(q) == 1
    assert q[0]["raw"] == case.malformed.decode()
    assert case.malformed_field in q[0]["reason"]
    assert count_events(testenv, t.name, mine) == case.stored
    assert {name: view(t, shp["id"]) for name, shp in shipments.items()} == views


def test_non_json_webhook_bodies_are_quarantined(hooks: Tenant, testenv: RunEnv) -> None:
    before = count_events(testenv, hooks.name)
    for source in ("dcsa", "onerecord", "aftership", "easypost"):
        body = b"{not json " + source.encode()
        r = deliver(hooks, source, body)
        assert r.status_code == 422, (source, r.text)
        assert r.json()["error"] == "ValidationError"
        assert "body" in r.json()["detail"]
        kept = [i for i in quarantine(hooks, source) if i["raw"] == body.decode()]
        assert len(kept) == 1
        assert "body" in kept[0]["reason"]
    assert count_events(testenv, hooks.name) == before


LTL = fixture("x12-214", "ltl_status.edi").decode()


@pytest.mark.parametrize(
    ("broken", "segment"),
    [
        (LTL.replace("SE*19*0001", "SE*18*0001"), "SE"),
        (LTL.replace("SE*19*0001", "SE*19*0002"), "SE"),
        (LTL.replace("IEA*1*000000905", "IEA*1*000000906"), "IEA"),
        (LTL.replace("GE*1*905", "GE*2*905"), "GE"),
        (LTL.split("SE*19*0001~")[0], "SE"),
        (LTL.split("IEA*1")[0], "IEA"),
        (LTL.replace("GE*1*905~\n", ""), "GE"),
        (LTL.replace("ISA*00*", "ISB*00*", 1), "ISA"),
        (LTL[:80], "ISA"),
    ],
    ids=["se-count", "se-control", "iea-control", "ge-count", "cut-in-set", "no-iea", "no-ge", "not-isa", "short-isa"],
)
def test_x12_broken_envelope_is_400_naming_the_segment(
    broken: str, segment: str, hooks: Tenant, testenv: RunEnv
) -> None:
    before = count_events(testenv, hooks.name)
    r = deliver(hooks, "x12-214", broken.encode(), "text/plain")
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "MalformedEnvelope"
    assert r.json()["detail"].startswith(segment + ":"), r.json()
    kept = [i for i in quarantine(hooks, "x12-214") if i["raw"] == broken]
    assert len(kept) == 1
    assert kept[0]["reason"].startswith(f"MalformedEnvelope: {segment}:")
    assert count_events(testenv, hooks.name) == before


def test_easypost_events_about_other_objects_store_nothing(hooks: Tenant, testenv: RunEnv) -> None:
    before = count_events(testenv, hooks.name)
    r = deliver(hooks, "easypost", fixture("easypost", "batch_created.json"))
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 0, "stored": 0, "duplicates": 0}
    assert count_events(testenv, hooks.name) == before
