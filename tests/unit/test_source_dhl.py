"""DHL Shipment Tracking - Unified push: status codes, locations, references, the delivery estimate."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest import sources
from ingest.sources import _common as c
from ingest.sources import dhl
from trackd.codes import Classifier, Milestone
from trackd.errors import Unauthorized, ValidationError
from trackd.model import SourceContext
from trackd.state import State, advance

PAYLOADS = Path(__file__).parents[1] / "payloads" / "dhl"
CTX = SourceContext(tenant="acme", received_at=datetime(2024, 6, 1, 16, 0, tzinfo=UTC))


def load(name: str) -> Any:
    return orjson.loads((PAYLOADS / name).read_bytes())


def run(value: Any) -> list[Any]:
    return dhl.normalize(orjson.dumps(value), CTX)


def test_events_become_milestones_of_their_status_code() -> None:
    received, picked, processed, estimate = run(load("push_express_transit.json"))
    assert [e.milestone.code for e in (received, picked, processed)] == [
        Milestone.INFO_RECEIVED,
        Milestone.IN_TRANSIT,
        Milestone.IN_TRANSIT,
    ]
    assert [e.milestone.raw_code for e in (received, picked, processed)] == ["pre-transit", "transit", "transit"]
    assert received.occurred_at == datetime(2024, 5, 29, 9, 40, tzinfo=UTC)
    assert (processed.milestone.location.name, processed.milestone.location.country) == ("LEIPZIG - GERMANY", "DE")
    assert processed.milestone.description == "Processed at LEIPZIG - GERMANY"
    assert received.shipment == "7777777770"
    assert received.refs == ("7777777770", "ACME-PO-88123")
    assert received.carrier == "dhl"
    assert received.event_id == "dhl:7777777770:2024-05-29T09:40:00+00:00:pre-transit"
    assert estimate.milestone.code is Milestone.DELIVERED
    assert estimate.milestone.classifier is Classifier.ESTIMATED
    assert estimate.milestone.raw_code == "estimatedTimeOfDelivery"
    assert estimate.occurred_at == datetime(2024, 6, 3, 18, 0, tzinfo=UTC)
    assert estimate.created_at == CTX.received_at  # made when received


def test_delivered_push() -> None:
    courier, delivered = run(load("push_express_delivered.json"))
    assert courier.milestone.code is Milestone.IN_TRANSIT
    assert delivered.milestone.code is Milestone.DELIVERED
    assert delivered.occurred_at == datetime(2024, 6, 1, 13, 27, tzinfo=UTC)


def test_a_bare_shipment_without_events_gives_its_status_and_the_end_of_its_time_frame() -> None:
    failed, estimate = run(load("push_parcel_status_only.json"))
    assert (failed.milestone.code, failed.milestone.raw_code) == (Milestone.EXCEPTION, "failure")
    assert failed.occurred_at == datetime(2024, 5, 31, 19, 2, tzinfo=UTC)  # no offset: UTC
    assert failed.refs == ("00340434161094042557", "SO-55120")
    assert estimate.milestone.raw_code == "estimatedDeliveryTimeFrame.estimatedThrough"
    assert estimate.occurred_at == datetime(2024, 6, 3, 23, 59, 59, tzinfo=UTC)  # a date: by its end


def test_unknown_is_kept_without_a_code_and_two_scans_at_one_time_both_stay() -> None:
    body = load("push_express_delivered.json")
    body["shipments"][0]["events"][0]["statusCode"] = "unknown"
    body["shipments"][0]["events"].append(copy.deepcopy(body["shipments"][0]["events"][1]))
    unknown, delivered, again = run(body)
    assert (unknown.milestone.code, unknown.milestone.raw_code) == (None, "unknown")
    assert again.event_id == delivered.event_id + ":2"


def test_several_shipments_in_one_push() -> None:
    body = load("push_express_transit.json")
    body["shipments"].append(load("push_parcel_status_only.json"))
    assert [e.shipment for e in run(body)] == ["7777777770"] * 4 + ["00340434161094042557"] * 2


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda b: b["shipments"][0].pop("id"), "shipments[0].id"),
        (lambda b: b["shipments"][0]["events"][1].pop("statusCode"), "shipments[0].events[1].statusCode"),
        (lambda b: b["shipments"][0]["events"][2].update(timestamp="31.05.2024"), "shipments[0].events[2].timestamp"),
        (lambda b: b["shipments"][0]["events"][0].update(timestamp="2024-06-05T00:00:00Z"), "occurred_at"),
        (lambda b: b["shipments"][0].update(estimatedTimeOfDelivery="soon"), "shipments[0].estimatedTimeOfDelivery"),
        (lambda b: b["shipments"][0].update(events={}), "shipments[0].events"),
        (lambda b: b.update(shipments=[]), "shipments"),
        (
            lambda b: b["shipments"][0]["events"][0]["location"]["address"].update(countryCode="DEU"),
            "shipments[0].events[0].location.address.countryCode",
        ),
        (lambda b: b["shipments"][0]["details"].update(references="ACME"), "shipments[0].details.references"),
    ],
)
def test_bad_input_names_the_field(edit: Any, field: str) -> None:
    body = load("push_express_transit.json")
    edit(body)
    with pytest.raises(ValidationError) as err:
        run(body)
    assert field in err.value.field


def test_a_shipment_with_neither_events_nor_status_is_refused() -> None:
    with pytest.raises(ValidationError) as err:
        run({"id": "123", "service": "express"})
    assert err.value.field == "status"


def test_deliveries_authenticate_with_the_secret_in_dhl_api_key() -> None:
    sources.verify("dhl", "is_s3cret", b"{}", {"DHL-API-Key": "is_s3cret"})
    with pytest.raises(Unauthorized):
        sources.verify("dhl", "is_s3cret", b"{}", {"DHL-API-Key": "is_s3cret2"})


def test_references_are_capped_after_repeats_are_dropped() -> None:
    body = load("push_express_transit.json")
    refs = body["shipments"][0]["details"]["references"]
    refs[:] = [{"number": "ACME-PO-88123"}] * 50
    assert {e.refs for e in run(body)} == {("7777777770", "ACME-PO-88123")}
    refs[:] = [{"number": f"PO-{i}"} for i in range(50)]  # with the tracking number, 51
    with pytest.raises(ValidationError) as err:
        run(body)
    assert err.value.field == "shipments[0].details.references[49].number"


def test_a_push_of_more_events_than_a_batch_in_all_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(c, "MAX_BATCH", 100)  # the push's bound; each array keeps its own 10,000
    event = {"timestamp": "2024-05-31T06:12:00Z", "statusCode": "transit"}
    body = {"shipments": [{"id": n, "events": [event] * 51} for n in ("1", "2")]}
    with pytest.raises(ValidationError) as err:
        run(body)
    assert (err.value.field, err.value.detail) == (
        "body",
        "body: gives more than 100 events; at most 100 a request",
    )


def test_the_estimate_received_last_wins_whatever_status_came_with_it() -> None:
    first, later = datetime(2024, 6, 1, 12, 0, tzinfo=UTC), datetime(2024, 6, 1, 16, 0, tzinfo=UTC)
    no_status = load("push_express_transit.json")
    del no_status["shipments"][0]["status"]
    revised = load("push_express_transit.json")  # its status is of 2024-05-31T06:12Z, before `first`
    revised["shipments"][0]["estimatedTimeOfDelivery"] = "2024-06-04T18:00:00Z"
    state = State()
    for body, received_at in ((no_status, first), (revised, later)):
        events = dhl.normalize(orjson.dumps(body), SourceContext(tenant="acme", received_at=received_at))
        state, _ = advance(state, "shp_1", events, received_at)
    assert state.carrier_eta == datetime(2024, 6, 4, 18, 0, tzinfo=UTC)
