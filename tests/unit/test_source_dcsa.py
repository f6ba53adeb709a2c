"""DCSA Track & Trace: v2.2/v2.3 flat events and v3 metadata/payload envelopes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.sources import dcsa
from trackd.codes import Classifier, Milestone, Mode
from trackd.errors import ValidationError
from trackd.model import SourceContext

PAYLOADS = Path(__file__).parents[1] / "payloads" / "dcsa"
NOW = datetime(2024, 6, 1, 16, 0, tzinfo=UTC)
CTX = SourceContext(tenant="acme", received_at=NOW)


def load(name: str) -> Any:
    return orjson.loads((PAYLOADS / name).read_bytes())


def run(value: Any) -> list[Any]:
    return dcsa.normalize(orjson.dumps(value), CTX)


def test_v2_transport_departure() -> None:
    dep = run(load("v2_events.json"))[0]
    assert dep.event_id == "dcsa:5e51e72c-d872-11ea-811c-0f8f10a32ea1"
    assert dep.occurred_at == datetime(2024, 5, 20, 7, 12, tzinfo=UTC)
    assert dep.created_at == datetime(2024, 5, 20, 8, 31, tzinfo=UTC)
    assert dep.milestone.code is Milestone.DEPARTED
    assert dep.milestone.classifier is Classifier.ACTUAL
    assert dep.milestone.mode is Mode.SEA
    loc = dep.milestone.location
    assert (loc.unlocode, loc.country, loc.name, loc.lat, loc.lon) == (
        "NLRTM",
        "NL",
        "Port of Rotterdam",
        51.9225,
        4.47917,
    )
    assert dep.shipment == "MAEU240512345"  # the transport document wins over the booking
    assert set(dep.refs) == {"ABC709951", "MAEU240512345", "FWD-2024-0042"}
    assert dep.carrier == "MAEU"
    assert dep.raw["transportCall"]["vessel"]["vesselName"] == "King of the Seas"


def test_estimated_arrival_is_the_carrier_eta_even_weeks_ahead() -> None:
    eta = run(load("v2_events.json"))[1]
    assert eta.milestone.code is Milestone.ARRIVED
    assert eta.milestone.classifier is Classifier.ESTIMATED
    assert eta.occurred_at == datetime(2024, 6, 9, 18, 0, tzinfo=UTC)
    assert eta.created_at == datetime(2024, 5, 21, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(("index", "code"), [(2, Milestone.LOADED), (3, Milestone.BOOKED), (4, Milestone.CUSTOMS_HOLD)])
def test_v2_equipment_and_shipment_codes(index: int, code: Milestone) -> None:
    assert run(load("v2_events.json"))[index].milestone.code is code


def test_equipment_reference_and_event_location() -> None:
    load_event = run(load("v2_events.json"))[2]
    assert "MSKU7304119" in load_event.refs
    assert "PO-88123" in load_event.refs
    assert load_event.milestone.location.name == "Maasvlakte II, APM Terminals"


def test_v2_2_single_object_with_deprecated_event_type_code() -> None:
    [gate] = dcsa.normalize((PAYLOADS / "v2_2_gate_out.json").read_bytes(), CTX)
    assert gate.milestone.code is Milestone.GATE_OUT
    assert gate.milestone.mode is Mode.ROAD
    assert gate.milestone.location.unlocode == "USEWR"
    assert gate.shipment == "MAEU240512345"
    assert set(gate.refs) == {"MAEU240512345", "ABC709951", "MSKU7304119"}


def test_v3_envelopes() -> None:
    disc, eta, issued, _retraction = run(load("v3_events.json"))
    assert disc.event_id == "dcsa:004a3525-23ae-4cf1-b442-68e6b2e591d8"
    assert disc.milestone.code is Milestone.DISCHARGED
    assert disc.occurred_at == datetime(2024, 5, 22, 3, 5, tzinfo=UTC)
    assert disc.carrier == "CMA"
    assert disc.shipment == "CMDUSHA0512793"
    assert set(disc.refs) == {"SHA0512793", "CMDUSHA0512793", "CMAU4812090"}
    assert eta.milestone.classifier is Classifier.ESTIMATED
    assert eta.milestone.mode is Mode.RAIL
    assert issued.milestone.code is None
    assert issued.milestone.raw_code == "ISSU"


def test_v3_retraction() -> None:
    retraction = run(load("v3_events.json"))[3]
    assert retraction.retracts == "dcsa:957e4966-dad0-4111-9f8f-fb7216c43907"
    assert retraction.event_id == "dcsa:2239d040-78c9-4172-8863-89428af41a0e"
    assert retraction.milestone.code is None
    assert retraction.milestone.raw_code == "RETRACTED"


def test_v3_retraction_that_carries_a_replacement() -> None:
    item = load("v3_events.json")[1]
    item["metadata"]["retractedEventID"] = "957e4966-dad0-4111-9f8f-fb7216c43907"
    [event] = run([item])
    assert event.retracts == "dcsa:957e4966-dad0-4111-9f8f-fb7216c43907"
    assert event.milestone.code is Milestone.ARRIVED


def test_planned_truck_departure_with_geo_location() -> None:
    [dep] = dcsa.normalize((PAYLOADS / "v3_truck.json").read_bytes(), CTX)
    assert dep.milestone.classifier is Classifier.PLANNED
    assert dep.milestone.mode is Mode.ROAD
    assert (dep.milestone.location.lat, dep.milestone.location.lon) == (49.45203, 11.07675)
    assert dep.shipment == "MSC2405881"


def test_unknown_codes_are_kept_not_refused() -> None:
    item = load("v2_events.json")[2] | {"equipmentEventTypeCode": "XRAY"}
    [event] = run([item])
    assert event.milestone.code is None
    assert event.milestone.raw_code == "XRAY"


@pytest.mark.parametrize(
    ("doc_type", "reason", "code"),
    [
        ("TRD", "Freight unpaid", Milestone.EXCEPTION),
        ("TRD", "Held by customs for inspection", Milestone.CUSTOMS_HOLD),
        ("CUS", None, Milestone.CUSTOMS_HOLD),
    ],
)
def test_only_a_customs_hold_is_a_customs_hold(doc_type: str, reason: str | None, code: Milestone) -> None:
    item = load("v2_events.json")[4] | {"documentTypeCode": doc_type, "reason": reason}
    assert run([item])[0].milestone.code is code


def test_events_without_id_get_a_stable_derived_one() -> None:
    item = load("v2_events.json")[0]
    del item["eventID"]
    assert run([item])[0].event_id == run([item])[0].event_id
    assert run([item])[0].event_id.startswith("dcsa:")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda i: i.update(eventClassifierCode="GUESS"), "[1].eventClassifierCode"),
        (lambda i: i.pop("eventDateTime"), "[1].eventDateTime"),
        (lambda i: i.update(eventDateTime="2024-06-01T10:00:00"), "[1].eventDateTime"),
        (lambda i: i.pop("transportEventTypeCode"), "[1].transportEventTypeCode"),
        (lambda i: i.update(eventType="CARGO"), "[1].eventType"),
        (lambda i: i.update(documentReferences=None), "[1].shipment"),
    ],
)
def test_errors_name_the_field(mutate: Any, field: str) -> None:
    items = load("v2_events.json")[:2]
    mutate(items[1])
    with pytest.raises(ValidationError) as err:
        run(items)
    assert err.value.field == field


def test_actual_event_from_the_future_is_refused() -> None:
    item = load("v2_events.json")[0] | {"eventDateTime": "2024-06-05T00:00:00Z"}
    with pytest.raises(ValidationError) as err:
        run([item])
    assert err.value.field == "[0].occurred_at"


def test_empty_and_malformed_bodies() -> None:
    for body in (b"[]", b"{", b'"text"'):
        with pytest.raises(ValidationError):
            dcsa.normalize(body, CTX)
