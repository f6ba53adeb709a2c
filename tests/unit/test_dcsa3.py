"""DCSA Track & Trace 3.0.0: the adapter from bytes, event versions, and the publisher's mapping
checked against the 3.0.0 schema (tests/payloads/dcsa/tnt_3_0_0_schema.json)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import dcsa as publisher
from ingest import poller
from ingest.sources import dcsa, dcsa3, native
from trackd.codes import Classifier, EventKind, Milestone, Mode
from trackd.errors import ValidationError
from trackd.ledger import VERSION_FIRST, VERSION_LAST, versioned_id
from trackd.model import SourceContext

PAYLOADS = Path(__file__).parents[1] / "payloads" / "dcsa"
NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
CTX = SourceContext(tenant="acme", received_at=NOW)
KEY = "dcsa:MSK/6d2a6f0e-0b51-4c4a-9f0e-2f4f7c1f6a0"


def load(name: str) -> Any:
    return orjson.loads((PAYLOADS / name).read_bytes())


def run(value: Any) -> list[Any]:
    return dcsa.normalize(orjson.dumps(value), CTX)


def strict(node: Any) -> Any:
    """The schema with no properties beyond those it names (a misspelt field fails)."""
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items()}
        if out.get("type") == "object" and "properties" in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


SCHEMA = strict(load("tnt_3_0_0_schema.json"))


def validate(doc: Any, name: str) -> None:
    schema = {**SCHEMA, "$ref": f"#/components/schemas/{name}"}
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(doc)


def test_every_kind_of_event() -> None:
    load_, dep, eta, fix, reefer = run(load("v3_0_0_events.json"))
    assert load_.event_id == KEY + "1@v2026-11-02T00:12:00.000000Z"
    assert load_.milestone.code is Milestone.LOADED
    assert load_.occurred_at == datetime(2026, 11, 2, 0, 10, tzinfo=UTC)
    assert load_.created_at == datetime(2026, 11, 2, 0, 12, tzinfo=UTC)
    assert load_.shipment == "MAEU262417530"  # the transport document wins over booking and container
    assert load_.refs == ("MAEU262417530", "262417530", "PO-88412", "MSKU7304512")
    assert load_.carrier == "MSK"
    assert load_.milestone.mode is Mode.SEA
    loc = load_.milestone.location
    assert (loc.unlocode, loc.country, loc.name) == ("CNYTN", "CN", "Yantian International Container Terminals")
    assert dep.milestone.code is Milestone.DEPARTED
    assert (eta.milestone.code, eta.milestone.classifier) == (Milestone.ARRIVED, Classifier.ESTIMATED)
    assert eta.occurred_at == datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
    assert fix.kind is EventKind.POSITION
    assert (fix.position.lat, fix.position.lon, fix.shipment) == (5.9102, 80.2237, "MSKU7304512")
    assert reefer.kind is EventKind.SENSOR
    # Fahrenheit to Celsius; of the probes, the one farthest from the 2 °C setpoint.
    assert reefer.sensor.temperature_c == pytest.approx(5.0)
    assert reefer.sensor.humidity_pct == 88.5


def test_a_revision_is_a_later_version_and_a_retraction_withdraws_every_version() -> None:
    dep, gone = run(load("v3_0_0_revisions.json"))
    assert dep.event_id == KEY + "2@v2026-11-03T01:00:00.000000Z"
    assert dep.occurred_at == datetime(2026, 11, 2, 14, 5, tzinfo=UTC)
    assert dep.milestone.description == "departure time corrected"
    assert (gone.event_id, gone.retracts, gone.refs) == (
        KEY + "3@v2026-11-03T01:00:00.000000Z",
        KEY + "3",
        (KEY + "3",),
    )
    assert gone.milestone.code is None
    bare = {"eventID": "x-1", "isRetracted": True}
    (final,) = run({"events": [bare]})
    assert final.event_id == versioned_id("dcsa:x-1", VERSION_LAST)
    assert final.occurred_at == NOW


def test_version_ids_sort_as_their_times() -> None:
    times = [VERSION_FIRST, datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), NOW, VERSION_LAST]
    ids = [versioned_id("dcsa:k", t) for t in times]
    assert ids == sorted(ids)
    assert ids[0] == "dcsa:k@v0001-01-01T00:00:00.000000Z"
    offset = datetime(2026, 11, 10, 21, 0, tzinfo=timezone(timedelta(hours=8)))
    assert versioned_id("dcsa:k", offset) == "dcsa:k@v2026-11-10T13:00:00.000000Z"


def test_iot_and_reefer_without_readings_stay_uncoded_milestones() -> None:
    doc = load("v3_0_0_events.json")
    iot, reefer = doc["events"][3], doc["events"][4]
    del iot["eventLocation"]  # a location update without its location
    reefer["eventClassification"]["reeferEventTypeCode"] = "ADJU"
    reefer["reeferDetails"] = {"temperatureUnit": "CEL", "internalSetpointTemperature": -18}
    lost, setpoint = run({"events": [iot, reefer]})
    assert (lost.kind, lost.milestone.code, lost.milestone.raw_code) == (EventKind.MILESTONE, None, "IOT.DETC")
    assert (setpoint.milestone.code, setpoint.milestone.raw_code) == (None, "REEFER.ADJU")


def door_event(code: str, *, located: bool = True) -> dict[str, Any]:
    event: dict[str, Any] = load("v3_0_0_events.json")["events"][3]
    event["iotDetails"]["iotEventCode"] = code
    if not located:
        del event["eventLocation"]
    return event


def test_door_events_are_door_readings() -> None:
    (opened,) = run({"events": [door_event("DRO")]})  # one event: its coordinates stay in the raw event
    assert (opened.kind, opened.sensor.door_open, opened.sensor.temperature_c) == (EventKind.SENSOR, True, None)
    assert opened.event_id == KEY + "4@v2026-11-05T03:02:00.000000Z"
    assert (opened.shipment, opened.occurred_at) == ("MSKU7304512", datetime(2026, 11, 5, 3, 0, tzinfo=UTC))
    assert opened.data() == {"door_open": True}
    assert opened.raw["eventLocation"]["geoCoordinate"]["latitude"] == "5.9102"
    (closed,) = run({"events": [door_event("drc", located=False)]})
    assert (closed.kind, closed.sensor.door_open, closed.data()) == (EventKind.SENSOR, False, {"door_open": False})
    (where,) = run({"events": [door_event("LOC")]})  # a location update stays a position
    assert (where.kind, where.event_id) == (EventKind.POSITION, KEY + "4@v2026-11-05T03:02:00.000000Z")
    unnamed = door_event("DRO")
    del unnamed["eventID"]
    (reading,) = run({"events": [unnamed]})
    assert [e.event_id for e in run({"events": [unnamed]})] == [reading.event_id]  # derived, the same again


def run_native(value: Any) -> list[Any]:
    return native.normalize(orjson.dumps(value), CTX)


def test_native_door_readings() -> None:
    body = {"event_id": "d-1", "occurred_at": "2026-11-05T03:00:00Z", "device": "trk-1", "sensor": {"door_open": True}}
    (opened,) = run_native(body)
    assert (opened.sensor.door_open, opened.data()) == (True, {"door_open": True})
    both = {**body, "sensor": {"door_open": False, "temperature_c": 4.5}}
    assert run_native(both)[0].data() == {"temperature_c": 4.5, "door_open": False}
    for bad in ("true", 1, 0, "open"):
        with pytest.raises(ValidationError, match=r"sensor\.door_open: must be a boolean"):
            run_native({**body, "sensor": {"door_open": bad}})
    with pytest.raises(ValidationError, match=r"\[1\]\.sensor\.door_open"):
        run_native([body, {**body, "sensor": {"door_open": "yes"}}])
    with pytest.raises(ValidationError, match="sensor: needs at least one reading"):
        run_native({**body, "sensor": {"door_open": None}})


@pytest.mark.parametrize(
    ("kind", "code", "want"),
    [
        ("EQUIPMENT", "AVPU", Milestone.AVAILABLE_FOR_PICKUP),
        ("EQUIPMENT", "CUSI", Milestone.CUSTOMS_HOLD),
        ("EQUIPMENT", "CUSR", Milestone.CUSTOMS_RELEASED),
        ("SHIPMENT", "CONF", Milestone.BOOKED),
        ("SHIPMENT", "HOLD", Milestone.EXCEPTION),  # a hold of the transport document, not customs
        ("SHIPMENT", "AMRE", None),
    ],
)
def test_codes(kind: str, code: str, want: Milestone | None) -> None:
    event = load("v3_0_0_events.json")["events"][0]
    event["eventClassification"] = {
        "eventTypeCode": kind,
        "eventClassifierCode": "ACT",
        publisher.TYPE_FIELDS[kind]: code,
    }
    (got,) = run({"events": [event]})
    assert (got.milestone.code, got.milestone.raw_code) == (want, code)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda e: e.pop("eventDateTime"), "events[0].eventDateTime"),
        (
            lambda e: e["eventClassification"].update(eventTypeCode="CARGO"),
            "events[0].eventClassification.eventTypeCode",
        ),
        (lambda e: e["eventClassification"].pop("equipmentEventTypeCode"), "equipmentEventTypeCode"),
        (lambda e: e["eventClassification"].update(eventClassifierCode="MAYBE"), "eventClassifierCode"),
        (lambda e: e.update(isRetracted="yes"), "events[0].isRetracted"),
        (lambda e: e.update(eventUpdatedDateTime="2026-11-02T08:12:00"), "events[0].eventUpdatedDateTime"),
        (lambda e: e["eventLocation"].update(geoCoordinate={"latitude": "95", "longitude": "1"}), "eventLocation.lat"),
        (lambda e: e.update(eventDateTime="2026-11-20T00:00:00Z"), "occurred_at"),  # actual, in the future
    ],
)
def test_refusals_name_the_field(edit: Any, field: str) -> None:
    event = load("v3_0_0_events.json")["events"][0]
    edit(event)
    with pytest.raises(ValidationError) as err:
        run({"events": [event]})
    assert field in err.value.detail


def test_empty_events_and_the_answer() -> None:
    with pytest.raises(ValidationError, match="events: is an empty array"):
        run({"events": []})
    assert dcsa.answer_status((PAYLOADS / "v3_0_0_events.json").read_bytes()) == 200
    assert dcsa.answer_status((PAYLOADS / "v3_events.json").read_bytes()) == 204
    assert dcsa.answer_status((PAYLOADS / "v2_2_gate_out.json").read_bytes()) == 204


def test_the_fixtures_are_3_0_0_bodies() -> None:
    for name in ("v3_0_0_events.json", "v3_0_0_revisions.json"):
        validate(load(name), "PostEventsRequest")


def row(kind: str, data: dict[str, Any], **over: Any) -> dict[str, Any]:
    at = datetime(2026, 11, 2, 13, 30, tzinfo=UTC)
    return {
        "event_id": "dcsa:MSK/e-1@v2026-11-02T13:41:00.000000Z",
        "occurred_at": at,
        "updated_at": at + timedelta(minutes=15),
        "retracted_at": None,
        "kind": kind,
        "code": over.pop("code", None),
        "classifier": over.pop("classifier", "actual" if kind == "milestone" else None),
        "data": data,
        "source": "dcsa",
        "tracking_number": "MAEU262417530",
        "refs": ["MSKU 730451-2", "PO-88412"],
        **over,
    }


ROWS = [
    row(
        "milestone",
        {"code": "departed", "mode": "sea", "location": {"name": "Yantian", "unlocode": "CNYTN"}},
        code="departed",
    ),
    row(
        "milestone", {"code": "arrived", "location": {"lat": 51.9, "lon": 4.1}}, code="arrived", classifier="estimated"
    ),
    row("milestone", {"code": "delivered"}, code="delivered"),
    row("milestone", {"code": "booked"}, code="booked", refs=[]),
    row("position", {"lat": 5.9102, "lon": 80.2237, "speed_kmh": 30.0}),
    row("sensor", {"temperature_c": 4.5, "humidity_pct": 80.0}),
    row("milestone", {"code": "loaded"}, code="loaded", retracted_at=datetime(2026, 11, 3, tzinfo=UTC)),
]


def test_published_events_validate_against_the_3_0_0_schema() -> None:
    events = [publisher.to_dcsa(r) for r in ROWS]
    validate({"events": events}, "GetEventsResponse")
    dep, eta, delivered, booked, fix, reefer, gone = events
    assert dep["eventClassification"] == {
        "eventTypeCode": "TRANSPORT",
        "eventClassifierCode": "ACT",
        "transportEventTypeCode": "DEPA",
    }
    assert dep["eventDateTime"] == "2026-11-02T13:30:00Z"
    assert dep["eventUpdatedDateTime"] == "2026-11-02T13:45:00Z"
    assert dep["eventLocation"] == {"locationName": "Yantian", "UNLocationCode": "CNYTN"}
    assert dep["transportDetails"] == {"transportCall": {"modeOfTransport": "VESSEL"}}
    assert dep["shipmentDetails"] == {
        "documentReference": {"typeCode": "TRD", "reference": "MAEU262417530"},
        "shipmentReferences": [{"typeCode": "CR", "reference": "PO-88412"}],
    }
    assert dep["equipmentDetails"] == {"equipmentReference": "MSKU7304512"}
    assert eta["eventClassification"]["eventClassifierCode"] == "EST"
    assert eta["eventLocation"] == {"geoCoordinate": {"latitude": "51.900000", "longitude": "4.100000"}}
    assert delivered["eventClassification"]["equipmentEventTypeCode"] == "DROP"
    assert "equipmentDetails" not in booked
    assert fix["eventClassification"]["iotEventTypeCode"] == "DETC"
    assert fix["iotDetails"] == {"iotEventCode": "LOC"}
    assert reefer["reeferDetails"] == {
        "temperatureUnit": "CEL",
        "temperatureProbeMeasurements": [{"measuredTemperatureValue": 4.5}],
        "measuredParameters": {"humidityPercentage": 80.0},
    }
    assert gone == {"eventID": ROWS[6]["event_id"], "eventUpdatedDateTime": "2026-11-02T13:45:00Z", "isRetracted": True}


def test_published_events_read_back_through_the_adapter() -> None:
    """What trackd publishes, a trackd that pulls from it reads as the same milestones."""
    events = [publisher.to_dcsa(r) for r in ROWS[:6]]
    got = dcsa.normalize(orjson.dumps({"events": events}), CTX)
    assert [e.kind for e in got] == [EventKind.MILESTONE] * 4 + [EventKind.POSITION, EventKind.SENSOR]
    assert [e.milestone.code for e in got[:4]] == [
        Milestone.DEPARTED,
        Milestone.ARRIVED,
        Milestone.AT_FACILITY,  # DROP: the container dropped off; read back as such
        Milestone.BOOKED,
    ]
    assert all(e.shipment == "MAEU262417530" for e in got)


def test_door_readings_are_published_as_iot_door_events() -> None:
    rows = [
        row("sensor", {"door_open": True}),
        row("sensor", {"door_open": False}),
        row("sensor", {"door_open": True, "temperature_c": 4.5}),  # a measurement first
    ]
    opened, closed, measured = (publisher.to_dcsa(r) for r in rows)
    validate({"events": [opened, closed, measured]}, "GetEventsResponse")
    assert opened["eventClassification"] == {
        "eventTypeCode": "IOT",
        "eventClassifierCode": "ACT",
        "iotEventTypeCode": "DETC",
    }
    assert (opened["iotDetails"], closed["iotDetails"]) == ({"iotEventCode": "DRO"}, {"iotEventCode": "DRC"})
    assert measured["eventClassification"]["eventTypeCode"] == "REEFER"
    back = run({"events": [opened, closed]})
    assert [(e.kind, e.sensor.door_open) for e in back] == [(EventKind.SENSOR, True), (EventKind.SENSOR, False)]


def test_event_type_filters() -> None:
    q = publisher.feed_query(["transport", " IOT"], [None, "MAEU262417530", None], None, None)
    assert (q.kinds, q.codes, q.references) == (("position", "door"), ("departed", "arrived"), ("MAEU262417530",))
    assert (q.sensor_fields, q.door_field) == (("temperature_c", "humidity_pct"), "door_open")
    assert publisher.feed_query(["REEFER"], [], None, None).kinds == ("sensor",)
    every = publisher.feed_query([""], [None, None, None], None, None)
    assert set(every.kinds) == {"position", "door", "sensor"}
    assert set(every.codes) == set(publisher.MILESTONES)
    with pytest.raises(ValidationError, match="'CARGO' is not one of"):
        publisher.feed_query(["CARGO"], [], None, None)
    with pytest.raises(ValidationError, match="eventUpdatedDateTimeMin: must carry a time zone"):
        publisher.feed_query([], [], datetime(2026, 1, 1), None)


def test_poller_backoff_and_progress() -> None:
    assert [poller.backoff_s(30, n) for n in (1, 2, 3, 8, 30)] == [30, 60, 120, 3600, 3600]
    assert poller.first_query(None) == {"limit": "100"}
    assert poller.first_query(datetime(2026, 11, 2, 13, 41, tzinfo=UTC)) == {
        "limit": "100",
        "eventUpdatedDateTimeMin": "2026-11-02T13:41:00Z",
    }
    page = [{"eventUpdatedDateTime": "2026-11-02T21:41:00+08:00"}, {"eventUpdatedDateTime": "bad"}, "x", {}]
    assert poller.latest_update(page, NOW) == datetime(2026, 11, 2, 13, 41, tzinfo=UTC)
    assert poller.latest_update([], NOW) is None
    ahead = [*page, {"eventUpdatedDateTime": "9999-01-01T00:00:00Z"}]
    assert poller.latest_update(ahead, NOW) == NOW  # never past the receiving clock


FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
leaf = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12)
values = st.recursive(
    leaf | st.sampled_from(["ACT", "EST", "IOT", "REEFER", "FAH", "2026-11-02T08:12:00Z", "9999-12-31T00:00:00Z"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


BODIES = [load("v3_0_0_events.json"), load("v3_0_0_revisions.json")]


@FUZZ
@given(choice=st.data(), new=values, delete=st.booleans(), tail=st.binary(max_size=8))
def test_fuzzed_bodies_give_events_or_a_validation_error(
    choice: st.DataObject, new: Any, delete: bool, tail: bytes
) -> None:
    body = copy.deepcopy(choice.draw(st.sampled_from(BODIES)))
    path = choice.draw(st.sampled_from(_paths(body)[1:]))
    node = body
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = new
    raw = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    if choice.draw(st.booleans()):
        raw = raw[: choice.draw(st.integers(0, len(raw)))] + tail
    try:
        events = dcsa.normalize(raw, CTX)
    except ValidationError:
        return
    assert events
    assert all(len(e.event_id) <= 200 for e in events)
    assert dcsa.answer_status(raw) == (200 if dcsa3.is_v3_body(orjson.loads(raw)) else 204)
