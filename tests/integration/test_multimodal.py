"""A multimodal journey through the real carrier transports: truck to the port (X12 214), ocean
(DCSA Track & Trace v3: gate in, load, departure, arrival, discharge), a customs hold and release
(DCSA HOLD/RELS on the customs document), and the last mile (AfterShip: out for delivery, delivered).

The shipment ends with the right status history and milestones whatever order the deliveries come
in, and a DCSA retraction puts the state back to what the events without the retracted one give.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Server, Tenant


@dataclass(frozen=True)
class Ids:
    """The identifiers of one journey; every journey of the module has its own."""

    n: int

    @property
    def tracking(self) -> str:
        return f"ACME-PO-{self.n}"  # the order number: the shipment's tracking number

    @property
    def pro(self) -> str:
        return f"PRO{self.n}0093"  # the trucker's PRO number (X12 B1001)

    @property
    def bol(self) -> str:
        return f"BOLMM{self.n}"  # the inland bill of lading (X12 B1002)

    @property
    def trd(self) -> str:
        return f"MAEU26{self.n}871"  # the ocean transport document (DCSA TRD)

    @property
    def bkg(self) -> str:
        return f"26{self.n}871"  # the carrier booking (DCSA BKG)

    @property
    def container(self) -> str:
        return f"MSKU{self.n}04"

    @property
    def parcel(self) -> str:
        return f"003404341882{self.n}234"  # the last-mile parcel (AfterShip tracking_number)

    def references(self) -> list[str]:
        """As a user types them: matching ignores case, spaces and hyphens."""
        p, t, c, q = self.pro, self.trd, self.container, self.parcel
        return [
            f"{p[:3].lower()} {p[3:7]}-{p[7:]}",
            f"{t[:4].lower()}-{t[4:8]} {t[8:]}",
            f"{c[:4]} {c[4:8]}-{c[8:]}",
            f"{q[:4]} {q[4:8]} {q[8:12]} {q[12:16]} {q[16:]}",
        ]


_SERIALS = itertools.count(secrets.randbelow(80000) + 10000)


def new_ids() -> Ids:
    return Ids(next(_SERIALS))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- the carriers' payloads -----------------------------------------------------------------------------


def x12(ids: Ids, control: int, statuses: list[tuple[str, str, str, str]]) -> bytes:
    """An X12 214 interchange, one LX loop per (AT7 code, CCYYMMDD, HHMM, MS1 city*state*country)."""
    isa = (
        f"ISA*00*          *00*          *02*ODFL           *ZZ*ACMEIMPORTS    *261021*1600*U*00401*{control:09d}*0*P*>"
    )
    assert len(isa) == 105
    body = [f"ST*214*{control % 10000:04d}", f"B10*{ids.pro}*{ids.bol}*ODFL", f"L11*{ids.tracking}*PO"]
    for n, (code, day, clock, place) in enumerate(statuses, 1):
        body += [f"LX*{n}", f"AT7*{code}*NS***{day}*{clock}*LT", f"MS1*{place}", "MS2*ODFL*T77120"]
    body.append(f"SE*{len(body) + 1}*{control % 10000:04d}")
    segments = [
        isa,
        f"GS*QM*ODFL*ACMEIMPORTS*20261021*1600*{control}*X*004010",
        *body,
        f"GE*1*{control}",
        f"IEA*1*{control:09d}",
    ]
    return ("~\n".join(segments) + "~\n").encode()


_TYPE_FIELD = {
    "TRANSPORT": "transportEventTypeCode",
    "EQUIPMENT": "equipmentEventTypeCode",
    "SHIPMENT": "shipmentEventTypeCode",
}
_PORTS = {"USEWR": "Port Newark Container Terminal", "DEHAM": "Hamburg, Container Terminal Burchardkai"}


def dcsa(
    ids: Ids,
    event_type: str,
    code: str,
    when: str,
    *,
    port: str | None = None,
    classifier: str = "ACT",
    created: str | None = None,
    mode: str = "VESSEL",
    reason: str | None = None,
) -> dict[str, Any]:
    """One DCSA v3 event ({metadata, payload}), about this journey's booking and container."""
    payload: dict[str, Any] = {
        "eventType": event_type,
        "eventClassifierCode": classifier,
        "eventDateTime": when,
        _TYPE_FIELD[event_type]: code,
        "relatedDocumentReferences": [{"type": "BKG", "value": ids.bkg}, {"type": "TRD", "value": ids.trd}],
    }
    if event_type == "EQUIPMENT":
        payload |= {
            "equipmentReference": ids.container,
            "ISOEquipmentCode": "45G1",
            "emptyIndicatorCode": "LADEN",
            "references": [{"type": "EQ", "value": ids.container}],
        }
    if port is not None:
        call: dict[str, Any] = {
            "transportCallReference": f"TC-{port}",
            "modeOfTransport": mode,
            "location": {"locationType": "UNLO", "locationName": _PORTS[port], "UNLocationCode": port},
        }
        if mode == "VESSEL":
            call |= {
                "carrierServiceCode": "TA2",
                "carrierExportVoyageNumber": "643W",
                "vessel": {
                    "vesselIMONumber": "9778791",
                    "name": "Maersk Elba",
                    "flag": "DK",
                    "operatorCarrierCode": "MAEU",
                    "operatorCarrierCodeListProvider": "NMFTA",
                },
            }
        payload["transportCall"] = call
    if event_type == "SHIPMENT":  # a customs hold/release is about the customs document of the TRD
        payload |= {"documentTypeCode": "CUS", "documentReference": ids.trd, "reason": reason}
    return {
        "metadata": {
            "eventID": str(uuid.uuid4()),
            "eventCreatedDateTime": created or when,
            "eventType": event_type,
            "publisher": {"partyName": "Maersk", "carrierCode": "MAEU", "carrierCodeListProvider": "SMDG"},
            "publisherRole": "CA",
        },
        "payload": payload,
    }


def retraction(of: dict[str, Any], created: str) -> dict[str, Any]:
    return {
        "metadata": {
            "eventID": str(uuid.uuid4()),
            "eventCreatedDateTime": created,
            "eventType": of["metadata"]["eventType"],
            "retractedEventID": of["metadata"]["eventID"],
            "publisher": {"partyName": "Maersk", "carrierCode": "MAEU", "carrierCodeListProvider": "SMDG"},
            "publisherRole": "CA",
        }
    }


_CHECKPOINTS = {
    "OutForDelivery": (
        "2026-11-11T07:40:00+01:00",
        "OutForDelivery_001",
        "Die Sendung wurde in das Zustellfahrzeug geladen",
    ),
    "Delivered": ("2026-11-11T12:15:00+01:00", "Delivered_001", "Die Sendung wurde erfolgreich zugestellt"),
}


def aftership(ids: Ids, *tags: str) -> bytes:
    """The AfterShip tracking webhook as it stands once the given checkpoints are known."""
    checkpoints = [
        {
            "slug": "dhl-germany",
            "created_at": _CHECKPOINTS[tag][0],
            "checkpoint_time": _CHECKPOINTS[tag][0],
            "location": "Hamburg",
            "city": "Hamburg",
            "country_region": "DEU",
            "message": _CHECKPOINTS[tag][2],
            "tag": tag,
            "subtag": _CHECKPOINTS[tag][1],
            "coordinates": {"latitude": 53.5511, "longitude": 9.9937},
            "zip": "20095",
            "source": "Carrier",
        }
        for tag in tags
    ]
    last = tags[-1]
    return orjson.dumps(
        {
            "event": "tracking_update",
            "event_id": str(uuid.uuid4()),
            "is_tracking_first_tag": len(tags) == 1,
            "msg": {
                "id": "4c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f",
                "tracking_number": ids.parcel,
                "slug": "dhl-germany",
                "active": last != "Delivered",
                "tag": last,
                "subtag": _CHECKPOINTS[last][1],
                "order_number": ids.tracking,
                "checkpoints": checkpoints,
                "latest_estimated_delivery": {
                    "type": "specific",
                    "source": "Carrier EDD",
                    "datetime": "2026-11-11T18:00:00+01:00",
                },
                "created_at": "2026-11-10T09:00:00+00:00",
                "updated_at": _CHECKPOINTS[last][0],
            },
            "ts": int(at(_CHECKPOINTS[last][0]).timestamp()),
        }
    )


@dataclass(frozen=True)
class Delivery:
    name: str
    source: str
    body: bytes


def journey(ids: Ids) -> dict[str, Delivery]:
    """Every delivery of the journey, in the order the carriers would send them."""
    hold = dcsa(ids, "SHIPMENT", "HOLD", "2026-11-06T10:00:00+01:00", reason="Customs examination ordered")
    rels = dcsa(ids, "SHIPMENT", "RELS", "2026-11-09T14:30:00+01:00", reason="Released by customs")
    disc = dcsa(ids, "EQUIPMENT", "DISC", "2026-11-05T18:45:00+01:00", port="DEHAM")
    parts = [
        Delivery(
            "truck",
            "x12-214",
            x12(ids, ids.n, [("AF", "20261019", "0730", "CHICAGO*IL*US"), ("X1", "20261021", "1510", "NEWARK*NJ*US")]),
        ),
        Delivery(
            "export",
            "dcsa",
            orjson.dumps(
                [
                    dcsa(ids, "EQUIPMENT", "GTIN", "2026-10-22T08:40:00-04:00", port="USEWR"),
                    dcsa(ids, "EQUIPMENT", "LOAD", "2026-10-24T11:15:00-04:00", port="USEWR"),
                    dcsa(ids, "TRANSPORT", "DEPA", "2026-10-24T23:50:00-04:00", port="USEWR"),
                    dcsa(
                        ids,
                        "TRANSPORT",
                        "ARRI",
                        "2026-11-05T06:00:00+01:00",
                        port="DEHAM",
                        classifier="EST",
                        created="2026-10-25T04:10:00Z",
                    ),
                ]
            ),
        ),
        Delivery(
            "import",
            "dcsa",
            orjson.dumps(
                [
                    dcsa(ids, "TRANSPORT", "ARRI", "2026-11-05T09:20:00+01:00", port="DEHAM"),
                    disc,
                ]
            ),
        ),
        Delivery("hold", "dcsa", orjson.dumps([hold])),
        Delivery("release", "dcsa", orjson.dumps([rels])),
        Delivery(
            "gate_out",
            "dcsa",
            orjson.dumps(
                [
                    dcsa(ids, "EQUIPMENT", "GTOT", "2026-11-10T07:05:00+01:00", port="DEHAM", mode="TRUCK"),
                ]
            ),
        ),
        Delivery("out_for_delivery", "aftership", aftership(ids, "OutForDelivery")),
        Delivery("delivered", "aftership", aftership(ids, "OutForDelivery", "Delivered")),
        # for the retraction tests
        Delivery("retract_release", "dcsa", orjson.dumps([retraction(rels, "2026-11-09T16:05:00+01:00")])),
        Delivery("retract_hold", "dcsa", orjson.dumps([retraction(hold, "2026-11-06T11:30:00+01:00")])),
        Delivery("retract_discharge", "dcsa", orjson.dumps([retraction(disc, "2026-11-05T19:30:00+01:00")])),
    ]
    return {d.name: d for d in parts}


IN_ORDER = ["truck", "export", "import", "hold", "release", "gate_out", "out_for_delivery", "delivered"]

MILESTONES = [  # (code, source, occurred_at) of every actual milestone, in event-time order
    ("departed", "x12-214", at("2026-10-19T12:30:00Z")),  # Chicago, local time (CDT)
    ("arrived", "x12-214", at("2026-10-21T19:10:00Z")),  # Newark, local time (EDT)
    ("gate_in", "dcsa", at("2026-10-22T12:40:00Z")),
    ("loaded", "dcsa", at("2026-10-24T15:15:00Z")),
    ("departed", "dcsa", at("2026-10-25T03:50:00Z")),
    ("arrived", "dcsa", at("2026-11-05T08:20:00Z")),
    ("discharged", "dcsa", at("2026-11-05T17:45:00Z")),
    ("customs_hold", "dcsa", at("2026-11-06T09:00:00Z")),
    ("customs_released", "dcsa", at("2026-11-09T13:30:00Z")),
    ("gate_out", "dcsa", at("2026-11-10T06:05:00Z")),
    ("out_for_delivery", "aftership", at("2026-11-11T06:40:00Z")),
    ("delivered", "aftership", at("2026-11-11T11:15:00Z")),
]
ESTIMATES = [
    ("arrived", "dcsa", at("2026-11-05T05:00:00Z")),  # the carrier's ETA at Hamburg
    ("delivered", "aftership", at("2026-11-11T17:00:00Z")),  # the last-mile EDD
]


# -- helpers ------------------------------------------------------------------------------------------


def send(t: Tenant, d: Delivery) -> None:
    mac = hmac.new(t.ingest_secret.encode("utf-8"), d.body, hashlib.sha256).digest()
    if d.source == "dcsa":
        r = t.signed("dcsa", d.body, header="Notification-Signature", value="sha256=" + mac.hex())
        assert r.status_code == 204, (d.name, r.text)
    elif d.source == "aftership":
        r = t.signed("aftership", d.body, header="aftership-hmac-sha256", value=base64.b64encode(mac).decode())
        assert r.status_code == 202, (d.name, r.text)
    else:
        r = t.signed(d.source, d.body, value="sha256=" + mac.hex(), content_type="text/plain")
        assert r.status_code == 202, (d.name, r.text)


def create(t: Tenant, ids: Ids) -> dict[str, Any]:
    r = t.http.post(
        "/v1/shipments",
        json={
            "tracking_number": ids.tracking,
            "references": ids.references(),
            "legs": [
                {
                    "mode": "road",
                    "origin": {"name": "Chicago", "lat": 41.8781, "lon": -87.6298},
                    "destination": {"unlocode": "USEWR"},
                },
                {"mode": "sea", "origin": {"unlocode": "USEWR"}, "destination": {"unlocode": "DEHAM"}},
                {
                    "mode": "road",
                    "origin": {"unlocode": "DEHAM"},
                    "destination": {"name": "Hamburg-Altona", "lat": 53.5503, "lon": 9.9353},
                },
            ],
        },
    )
    assert r.status_code == 201, r.text
    shp: dict[str, Any] = r.json()
    return shp


def status(t: Tenant, shipment_id: str) -> tuple[str, str | None]:
    got = t.http.get(f"/v1/shipments/{shipment_id}").json()
    return got["status"], got["substatus"]


def milestone_events(t: Tenant, shipment_id: str) -> list[dict[str, Any]]:
    r = t.http.get(f"/v1/shipments/{shipment_id}/events", params={"kind": "milestone", "limit": 500})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def actual(t: Tenant, shipment_id: str) -> list[tuple[str | None, str, datetime]]:
    return [
        (e["code"], e["source"], at(e["occurred_at"]))
        for e in milestone_events(t, shipment_id)
        if e["classifier"] == "actual" and not e["retracted"]
    ]


def estimated(t: Tenant, shipment_id: str) -> list[tuple[str | None, str, datetime]]:
    return [
        (e["code"], e["source"], at(e["occurred_at"]))
        for e in milestone_events(t, shipment_id)
        if e["classifier"] == "estimated"
    ]


def open_exceptions(t: Tenant, shipment_id: str) -> set[str]:
    got = t.http.get(f"/v1/shipments/{shipment_id}").json()
    return {e["kind"] for e in got["exceptions"] if e["cleared_at"] is None}


@contextmanager
def status_stream(server: Server, t: Tenant, shipment_id: str) -> Iterator[ClientConnection]:
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    with connect(url, additional_headers={"Authorization": f"Bearer {t.api_key}"}, open_timeout=10) as ws:
        ws.send(orjson.dumps({"op": "subscribe", "shipments": [shipment_id]}).decode())
        while orjson.loads(ws.recv(timeout=10))["type"] != "snapshot":
            pass
        yield ws


def status_changes(ws: ClientConnection, until: str) -> list[tuple[str, str | None, str]]:
    out: list[tuple[str, str | None, str]] = []
    while not out or out[-1][0] != until:
        msg = orjson.loads(ws.recv(timeout=15))
        if msg["type"] == "status.changed":
            out.append((msg["status"], msg["substatus"], msg["previous_status"]))
    return out


# -- the tests -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mm(make_tenant: Any) -> Tenant:
    """One tenant for the module: each journey has identifiers and event ids of its own."""
    t: Tenant = make_tenant("mm")
    return t


def test_multimodal_journey_in_order(mm: Tenant, server: Server) -> None:
    ids = new_ids()
    sid = create(mm, ids)["id"]
    deliveries = journey(ids)
    history: list[tuple[str, str | None]] = []
    with status_stream(server, mm, sid) as ws:
        for name in IN_ORDER:
            send(mm, deliveries[name])
            history.append(status(mm, sid))
        changes = status_changes(ws, until="delivered")
    assert history == [
        ("in_transit", None),  # truck departed Chicago, arrived at the port
        ("in_transit", None),  # gate in, loaded, vessel departed
        ("in_transit", None),  # vessel arrived, container discharged
        ("customs", "customs.hold"),
        ("in_transit", "customs.released"),
        ("in_transit", None),  # gate out at Hamburg
        ("out_for_delivery", None),
        ("delivered", None),
    ]
    assert changes == [
        ("in_transit", None, "pending"),
        ("customs", "customs.hold", "in_transit"),
        ("in_transit", "customs.released", "customs"),
        ("in_transit", None, "in_transit"),
        ("out_for_delivery", None, "in_transit"),
        ("delivered", None, "out_for_delivery"),
    ]
    assert actual(mm, sid) == MILESTONES
    assert estimated(mm, sid) == ESTIMATES
    events = milestone_events(mm, sid)
    modes = {(e["source"], e["data"].get("mode")) for e in events if e["classifier"] == "actual"}
    assert ("x12-214", "road") in modes
    assert ("dcsa", "sea") in modes
    discharged = next(e for e in events if e["code"] == "discharged")
    assert discharged["location"]["unlocode"] == "DEHAM"
    assert discharged["raw"]["payload"]["equipmentReference"] == ids.container
    got = mm.http.get(f"/v1/shipments/{sid}").json()
    holds = [e for e in got["exceptions"] if e["kind"] == "customs_hold"]
    assert len(holds) == 1
    assert at(holds[0]["raised_at"]) == at("2026-11-06T09:00:00Z")
    assert holds[0]["cleared_at"] is not None
    # every carrier's redelivery (AfterShip resends the whole tracking) changes nothing
    before = (status(mm, sid), milestone_events(mm, sid))
    for name in IN_ORDER:
        send(mm, deliveries[name])
    assert (status(mm, sid), milestone_events(mm, sid)) == before


def test_out_of_order_deliveries_give_the_same_journey(mm: Tenant) -> None:
    ids = new_ids()
    deliveries = journey(ids)
    # The customs release before the hold, the truck leg late, the delivery before the ocean leg.
    order = ["release", "truck", "hold", "delivered", "import", "export", "gate_out", "out_for_delivery"]
    sid = create(mm, ids)["id"]
    history = []
    for name in order:
        send(mm, deliveries[name])
        history.append(status(mm, sid))
    assert history == [
        ("in_transit", "customs.released"),
        ("in_transit", "customs.released"),  # the older truck leg does not move it back
        ("in_transit", "customs.released"),  # nor the older hold
        ("delivered", None),
        ("delivered", None),
        ("delivered", None),
        ("delivered", None),
        ("delivered", None),
    ]
    assert actual(mm, sid) == MILESTONES
    assert estimated(mm, sid) == ESTIMATES
    assert "customs_hold" not in open_exceptions(mm, sid)


def test_deliveries_before_the_shipment_exists_give_the_same_journey(mm: Tenant) -> None:
    ids = new_ids()
    deliveries = journey(ids)
    for name in reversed(IN_ORDER):
        send(mm, deliveries[name])
    sid = create(mm, ids)["id"]  # adopts everything that waited for it
    assert status(mm, sid) == ("delivered", None)
    assert actual(mm, sid) == MILESTONES
    assert estimated(mm, sid) == ESTIMATES


def _code(event: dict[str, Any]) -> str | None:
    payload = event.get("payload") or {}
    return next((payload[f] for f in _TYPE_FIELD.values() if f in payload), None)


def replay_without(t: Tenant, names: list[str], code: str) -> tuple[tuple[str, str | None], set[str]]:
    """The state another shipment reaches from the same deliveries with the DCSA `code` event left out."""
    ids = new_ids()
    deliveries = journey(ids)
    sid = create(t, ids)["id"]
    for name in names:
        d = deliveries[name]
        if d.source == "dcsa":
            kept = [e for e in orjson.loads(d.body) if _code(e) != code]
            if not kept:
                continue
            d = Delivery(d.name, d.source, orjson.dumps(kept))
        send(t, d)
    return status(t, sid), open_exceptions(t, sid)


def test_retracting_the_release_puts_the_hold_back(mm: Tenant, server: Server) -> None:
    ids = new_ids()
    deliveries = journey(ids)
    names = ["truck", "export", "import", "hold", "release"]
    sid = create(mm, ids)["id"]
    for name in names:
        send(mm, deliveries[name])
    assert status(mm, sid) == ("in_transit", "customs.released")
    with status_stream(server, mm, sid) as ws:
        send(mm, deliveries["retract_release"])
        changes = status_changes(ws, until="customs")
    assert changes == [("customs", "customs.hold", "in_transit")]
    expected_status, expected_open = replay_without(mm, names, "RELS")
    assert expected_status == ("customs", "customs.hold")
    assert status(mm, sid) == expected_status
    assert open_exceptions(mm, sid) == expected_open
    assert "customs_hold" in open_exceptions(mm, sid)
    release = [e for e in milestone_events(mm, sid) if e["code"] == "customs_released"]
    assert [e["retracted"] for e in release] == [True]
    assert actual(mm, sid) == [m for m in MILESTONES if m[2] < at("2026-11-09T00:00:00Z")]

    # Redelivering the retracted event, or the retraction, changes nothing.
    send(mm, deliveries["release"])
    send(mm, deliveries["retract_release"])
    assert status(mm, sid) == expected_status

    # The journey goes on from there.
    for name in ["gate_out", "out_for_delivery", "delivered"]:
        send(mm, deliveries[name])
    assert status(mm, sid) == ("delivered", None)


def test_retracting_the_latest_discharge_restores_the_replay(mm: Tenant) -> None:
    ids = new_ids()
    deliveries = journey(ids)
    names = ["truck", "export", "import"]  # the discharge is the latest status-setting milestone
    sid = create(mm, ids)["id"]
    for name in names:
        send(mm, deliveries[name])
    assert status(mm, sid) == ("in_transit", None)
    send(mm, deliveries["retract_discharge"])
    expected_status, expected_open = replay_without(mm, names, "DISC")
    assert status(mm, sid) == expected_status
    assert open_exceptions(mm, sid) == expected_open
    disc = [e for e in milestone_events(mm, sid) if e["code"] == "discharged"]
    assert [e["retracted"] for e in disc] == [True]
    assert actual(mm, sid) == [m for m in MILESTONES if m[0] != "discharged" and m[2] < at("2026-11-06T00:00:00Z")]


def test_a_retraction_that_arrives_before_its_event(mm: Tenant) -> None:
    ids = new_ids()
    deliveries = journey(ids)
    names = ["truck", "export", "import"]
    sid = create(mm, ids)["id"]
    for name in names:
        send(mm, deliveries[name])
    send(mm, deliveries["retract_hold"])  # the carrier's retraction overtakes the hold itself
    send(mm, deliveries["hold"])
    expected_status, _ = replay_without(mm, [*names, "hold"], "HOLD")
    assert expected_status == ("in_transit", None)
    assert status(mm, sid) == expected_status
    hold = [e for e in milestone_events(mm, sid) if e["code"] == "customs_hold"]
    assert [e["retracted"] for e in hold] == [True]


def test_a_retraction_in_the_same_delivery_as_its_event(mm: Tenant) -> None:
    ids = new_ids()
    deliveries = journey(ids)
    sid = create(mm, ids)["id"]
    for name in ["truck", "export", "import"]:
        send(mm, deliveries[name])
    hold = orjson.loads(deliveries["hold"].body)
    withdrawn = orjson.loads(deliveries["retract_hold"].body)
    send(mm, Delivery("both", "dcsa", orjson.dumps(hold + withdrawn)))
    assert status(mm, sid) == ("in_transit", None)
    assert "customs_hold" not in open_exceptions(mm, sid)
    hold_events = [e for e in milestone_events(mm, sid) if e["code"] == "customs_hold"]
    assert [e["retracted"] for e in hold_events] == [True]
