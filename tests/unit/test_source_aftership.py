"""AfterShip tracking webhooks: checkpoints, subtags, local times and the delivery estimate."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.sources import aftership
from trackd.codes import Classifier, Milestone
from trackd.errors import ValidationError
from trackd.model import SourceContext

PAYLOADS = Path(__file__).parents[1] / "payloads" / "aftership"
CTX = SourceContext(tenant="acme", received_at=datetime(2024, 6, 1, 16, 0, tzinfo=UTC))


def load(name: str) -> Any:
    return orjson.loads((PAYLOADS / name).read_bytes())


def run(value: Any) -> list[Any]:
    return aftership.normalize(orjson.dumps(value), CTX)


def test_legacy_webhook_checkpoints() -> None:
    accepted, departed, customs, _estimate = run(load("tracking_update_legacy.json"))
    assert accepted.milestone.code is Milestone.PICKED_UP  # InTransit_002 acceptance scan
    assert accepted.milestone.raw_code == "InTransit_002"
    # 18:02 without an offset, at Louisville (EDT, UTC-4)
    assert accepted.occurred_at == datetime(2024, 5, 30, 22, 2, tzinfo=UTC)
    assert accepted.milestone.location.country == "US"
    assert (accepted.milestone.location.lat, accepted.milestone.location.lon) == (38.2527, -85.7585)
    assert departed.milestone.code is Milestone.DEPARTED
    assert departed.occurred_at == datetime(2024, 5, 31, 4, 41, tzinfo=UTC)
    assert customs.milestone.code is Milestone.CUSTOMS_SUBMITTED
    assert customs.milestone.location.country == "CA"
    assert accepted.event_id == "aftership:1Z999AA10123456784:2024-05-30T18:02:00:InTransit"
    assert accepted.shipment == "1Z999AA10123456784"
    assert set(accepted.refs) == {"1Z999AA10123456784", "ACME-SO-5521", "5521"}
    assert accepted.carrier == "ups"


def test_expected_delivery_is_an_estimated_delivered_milestone() -> None:
    estimate = run(load("tracking_update_legacy.json"))[-1]
    assert estimate.milestone.code is Milestone.DELIVERED
    assert estimate.milestone.classifier is Classifier.ESTIMATED
    assert estimate.occurred_at == datetime(2024, 6, 4, 23, 59, 59, tzinfo=UTC)  # a date: by its end
    assert estimate.created_at == datetime(2024, 5, 31, 14, 40, 3, tzinfo=UTC)  # when it was made


def test_newer_webhook_with_latest_estimate_and_coordinate_objects() -> None:
    out, delivered, estimate = run(load("delivered_2024.json"))
    assert out.milestone.code is Milestone.OUT_FOR_DELIVERY
    assert out.milestone.location.country == "DE"
    assert delivered.milestone.code is Milestone.DELIVERED
    assert delivered.occurred_at == datetime(2024, 5, 31, 11, 41, tzinfo=UTC)  # 13:41 in Hamburg (CEST)
    assert estimate.occurred_at == datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
    assert estimate.milestone.classifier is Classifier.ESTIMATED


def test_tracking_without_checkpoints_gives_its_tag() -> None:
    [event] = run(load("pending_no_checkpoints.json"))
    assert event.milestone.code is Milestone.INFO_RECEIVED
    assert event.occurred_at == datetime(2024, 5, 31, 2, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tag", "subtag", "code"),
    [
        ("AttemptFail", "AttemptFail_001", Milestone.DELIVERY_ATTEMPTED),
        ("Exception", "Exception_004", Milestone.CUSTOMS_HOLD),
        ("Exception", "Exception_011", Milestone.RETURNED),
        ("Exception", "Exception_013", Milestone.EXCEPTION),
        ("AvailableForPickup", None, Milestone.AVAILABLE_FOR_PICKUP),
        ("Pending", None, None),
    ],
)
def test_tags_and_subtags(tag: str, subtag: str | None, code: Milestone | None) -> None:
    body = load("tracking_update_legacy.json")
    body["msg"]["checkpoints"][0] |= {"tag": tag, "subtag": subtag}
    assert run(body)[0].milestone.code is code


def test_two_scans_of_one_tag_at_one_time_both_stay() -> None:
    body = load("tracking_update_legacy.json")
    cps = body["msg"]["checkpoints"]
    cps.append(dict(cps[0], message="Second scan"))
    ids = [e.event_id for e in run(body)]
    assert len(ids) == len(set(ids))
    assert ids == [e.event_id for e in run(body)]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("tracking_number",), None, "msg.tracking_number"),
        (("checkpoints", 0, "checkpoint_time"), "31/05/2024", "msg.checkpoints[0].checkpoint_time"),
        (("checkpoints", 0, "tag"), None, "msg.checkpoints[0].tag"),
        (("checkpoints", 0, "coordinates"), [1.0], "msg.checkpoints[0].coordinates"),
        (("expected_delivery",), "soon", "msg.expected_delivery"),
    ],
)
def test_errors_name_the_field(path: tuple[Any, ...], value: Any, field: str) -> None:
    body = load("tracking_update_legacy.json")
    node = body["msg"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValidationError) as err:
        run(body)
    assert err.value.field == field
