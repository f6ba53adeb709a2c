"""EasyPost webhook Events whose result is a Tracker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.sources import easypost
from trackd.codes import Classifier, Milestone
from trackd.errors import ValidationError
from trackd.model import SourceContext

PAYLOADS = Path(__file__).parents[1] / "payloads" / "easypost"
CTX = SourceContext(tenant="acme", received_at=datetime(2024, 6, 1, 16, 0, tzinfo=UTC))


def load(name: str) -> Any:
    return orjson.loads((PAYLOADS / name).read_bytes())


def run(value: Any) -> list[Any]:
    return easypost.normalize(orjson.dumps(value), CTX)


def test_tracker_updated() -> None:
    label, departed, out, delivered, estimate = run(load("tracker_updated.json"))
    assert label.milestone.code is Milestone.INFO_RECEIVED  # pre_transit
    assert departed.milestone.code is Milestone.DEPARTED  # in_transit / departed_facility
    assert out.milestone.code is Milestone.OUT_FOR_DELIVERY
    assert delivered.milestone.code is Milestone.DELIVERED
    assert delivered.occurred_at == datetime(2024, 6, 1, 15, 2, tzinfo=UTC)
    assert delivered.milestone.location.name == "SAN FRANCISCO, CA"
    assert delivered.milestone.location.country == "US"
    assert delivered.shipment == "9400111899223197428490"
    assert delivered.refs == ("9400111899223197428490",)
    assert delivered.carrier == "USPS"
    assert delivered.event_id == "easypost:9400111899223197428490:2024-06-01T15:02:00Z:delivered"
    assert estimate.milestone.classifier is Classifier.ESTIMATED
    assert estimate.occurred_at == datetime(2024, 6, 1, 20, 0, tzinfo=UTC)
    assert estimate.created_at == datetime(2024, 6, 1, 15, 8, 30, tzinfo=UTC)


def test_failure_return_unknown_and_a_date_only_estimate() -> None:
    pre, failure, returned, unknown, estimate = run(load("tracker_created.json"))
    assert pre.milestone.code is Milestone.INFO_RECEIVED
    assert failure.milestone.code is Milestone.EXCEPTION
    assert returned.milestone.code is Milestone.RETURNED
    assert unknown.milestone.code is None
    assert unknown.milestone.raw_code == "unknown"
    assert estimate.milestone.code is Milestone.DELIVERED
    assert estimate.occurred_at == datetime(2024, 6, 5, 23, 59, 59, tzinfo=UTC)


def test_events_about_other_objects_give_nothing() -> None:
    assert run(load("batch_created.json")) == []


def test_a_bare_tracker_is_accepted() -> None:
    assert len(run(load("tracker_updated.json")["result"])) == 5


def test_redelivery_gives_the_same_ids() -> None:
    assert [e.event_id for e in run(load("tracker_updated.json"))] == [
        e.event_id for e in run(load("tracker_updated.json"))
    ]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("tracking_code",), None, "result.tracking_code"),
        (("tracking_details", 1, "datetime"), "yesterday", "result.tracking_details[1].datetime"),
        (("tracking_details", 1, "status"), None, "result.tracking_details[1].status"),
        (("tracking_details",), {"status": "x"}, "result.tracking_details"),
        (("est_delivery_date",), "next week", "result.est_delivery_date"),
    ],
)
def test_errors_name_the_field(path: tuple[Any, ...], value: Any, field: str) -> None:
    body = load("tracker_updated.json")
    node = body["result"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValidationError) as err:
        run(body)
    assert err.value.field == field


def test_tracker_event_without_a_tracker_is_refused() -> None:
    body = load("tracker_updated.json")
    body["result"] = {"object": "Batch"}
    with pytest.raises(ValidationError) as err:
        run(body)
    assert err.value.field == "result.object"
