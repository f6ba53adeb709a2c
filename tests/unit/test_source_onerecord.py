"""IATA ONE Record LogisticsEvents with air cargo status codes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.sources import onerecord
from trackd.codes import Classifier, Milestone, Mode
from trackd.errors import ValidationError
from trackd.model import SourceContext

PAYLOADS = Path(__file__).parents[1] / "payloads" / "onerecord"
CTX = SourceContext(tenant="acme", received_at=datetime(2024, 6, 1, 16, 0, tzinfo=UTC))


def load(name: str) -> Any:
    return orjson.loads((PAYLOADS / name).read_bytes())


def run(value: Any) -> list[Any]:
    return onerecord.normalize(orjson.dumps(value), CTX)


def test_compact_departure() -> None:
    [dep] = run(load("dep_compact.json"))
    assert dep.milestone.code is Milestone.DEPARTED
    assert dep.milestone.raw_code == "DEP"
    assert dep.milestone.classifier is Classifier.ACTUAL
    assert dep.milestone.mode is Mode.AIR
    assert dep.occurred_at == datetime(2024, 6, 1, 7, 41, tzinfo=UTC)
    assert dep.created_at == datetime(2024, 6, 1, 7, 52, 10, tzinfo=UTC)
    assert dep.shipment == "020-12345675"
    assert dep.carrier == "LH"
    loc = dep.milestone.location
    assert (loc.iata, loc.country, loc.lat, loc.lon) == ("FRA", "DE", 50.0333, 8.5706)
    assert dep.event_id.startswith("onerecord:https://1r.lh-cargo.example/")


def test_graph_with_vocab_estimate_notification_and_delivery() -> None:
    arr, nfd, dlv = run(load("graph_arrival.json"))
    assert arr.milestone.code is Milestone.ARRIVED
    assert arr.milestone.classifier is Classifier.ESTIMATED
    assert arr.shipment == "020-12345675"  # from the Waybill embedded in the Shipment
    assert nfd.milestone.code is Milestone.AVAILABLE_FOR_PICKUP
    assert nfd.occurred_at == datetime(2024, 6, 1, 15, 0, tzinfo=UTC)
    assert nfd.shipment == "020-12345675"  # from the AWB in the object's @id
    assert nfd.milestone.location.unlocode == "USCHI"
    assert dlv.milestone.code is Milestone.DELIVERED
    assert dlv.shipment == "020-12345675"


def test_older_linked_object_form_and_unknown_code() -> None:
    rcs, unknown = run(load("legacy_linked_object.json"))
    assert rcs.milestone.code is Milestone.PICKED_UP
    assert rcs.shipment == "160-22223333"
    assert unknown.milestone.code is None
    assert unknown.milestone.raw_code == "XYZ"


@pytest.mark.parametrize(
    ("code", "milestone"),
    [
        ("DEP", Milestone.DEPARTED),
        ("ARR", Milestone.ARRIVED),
        ("NFD", Milestone.AVAILABLE_FOR_PICKUP),
        ("DLV", Milestone.DELIVERED),
        ("BKD", Milestone.BOOKED),
        ("RCF", Milestone.DISCHARGED),
    ],
)
def test_pinned_status_codes(code: str, milestone: Milestone) -> None:
    item = load("dep_compact.json")
    item["cargo:eventCode"]["cargo:code"] = code
    assert run(item)[0].milestone.code is milestone


def test_redelivery_gives_the_same_ids() -> None:
    assert [e.event_id for e in run(load("graph_arrival.json"))] == [
        e.event_id for e in run(load("graph_arrival.json"))
    ]


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("cargo:eventCode", None, "eventCode"),
        ("cargo:eventDate", "not a date", "eventDate"),
        ("cargo:eventTimeType", {"@id": "cargo:GUESSED"}, "eventTimeType"),
        ("cargo:eventFor", None, "eventFor"),
    ],
)
def test_errors_name_the_field(key: str, value: Any, field: str) -> None:
    item = load("dep_compact.json")
    if value is None:
        del item[key]
    else:
        item[key] = value
    with pytest.raises(ValidationError) as err:
        run(item)
    assert err.value.field == field
