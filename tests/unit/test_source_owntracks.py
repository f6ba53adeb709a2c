"""OwnTracks JSON: positions, battery readings and region transitions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from ingest.sources import owntracks
from trackd.codes import Classifier, EventKind, Milestone
from trackd.errors import ValidationError
from trackd.model import SourceContext

PAYLOADS = Path(__file__).parents[1] / "payloads" / "owntracks"
NOW = datetime(2024, 6, 1, 16, 0, tzinfo=UTC)


def ctx(device: str | None = "truck-7") -> SourceContext:
    return SourceContext(tenant="acme", received_at=NOW, device=device)


def load(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def test_location_gives_position_and_battery_at_the_same_time() -> None:
    position, battery = owntracks.normalize(load("location.json"), ctx())
    assert position.kind is EventKind.POSITION
    assert battery.kind is EventKind.SENSOR
    assert position.occurred_at == battery.occurred_at == datetime(2024, 6, 1, 11, 12, 55, tzinfo=UTC)
    assert position.event_id != battery.event_id
    assert position.device == battery.device == "truck-7"
    assert position.position is not None
    assert (position.position.lat, position.position.lon) == (52.37403, 4.88969)
    assert position.position.speed_kmh == 64.0  # vel is km/h already: no conversion
    assert position.position.heading == 271.0
    assert position.position.accuracy_m == 12.0
    assert position.position.altitude_m == 54.0
    assert battery.sensor is not None
    assert battery.sensor.battery_pct == 78.0
    assert position.raw["tid"] == "T7"


def test_unknown_values_sent_as_minus_one_are_left_out() -> None:
    [position] = owntracks.normalize(load("location_ios.json"), ctx())
    assert position.position is not None
    assert position.position.speed_kmh is None
    assert position.position.heading is None


def test_device_falls_back_to_the_topic_in_the_payload() -> None:
    [position] = owntracks.normalize(load("location_ios.json"), ctx(device=None))
    assert position.device == "truck-42"


def test_without_any_device_the_message_is_refused() -> None:
    with pytest.raises(ValidationError) as err:
        owntracks.normalize(load("location.json"), ctx(device=None))
    assert err.value.field == "device"


@pytest.mark.parametrize(
    ("name", "code"), [("transition_enter.json", Milestone.ARRIVED), ("transition_leave.json", Milestone.DEPARTED)]
)
def test_transitions_are_arrivals_and_departures(name: str, code: Milestone) -> None:
    [event] = owntracks.normalize(load(name), ctx())
    assert event.milestone is not None
    assert event.milestone.code is code
    assert event.milestone.classifier is Classifier.ACTUAL
    assert event.milestone.location is not None
    assert event.milestone.location.name == "Warehouse Venlo"
    assert event.milestone.location.lat is not None


@pytest.mark.parametrize("name", ["lwt.json", "card.json", "waypoint.json"])
def test_other_message_types_carry_no_tracking_data(name: str) -> None:
    assert owntracks.normalize(load(name), ctx()) == []


def test_redelivery_gives_the_same_ids() -> None:
    first = [e.event_id for e in owntracks.normalize(load("location.json"), ctx())]
    assert first == [e.event_id for e in owntracks.normalize(load("location.json"), ctx())]


def test_the_same_fix_from_another_device_is_another_event() -> None:
    [a, _] = owntracks.normalize(load("location.json"), ctx("truck-7"))
    [b, _] = owntracks.normalize(load("location.json"), ctx("truck-8"))
    assert a.event_id != b.event_id


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tst": None}, "tst"),
        ({"lat": 123.0}, "lat"),
        ({"lon": "east"}, "lon"),
        ({"batt": 140}, "batt"),
        ({"tst": 1917240375}, "occurred_at"),
    ],
)
def test_bad_locations_name_the_field(change: dict[str, object], field: str) -> None:
    item = orjson.loads(load("location.json")) | change
    with pytest.raises(ValidationError) as err:
        owntracks.normalize(orjson.dumps(item), ctx())
    assert err.value.field.endswith(field)


def test_a_message_without_type_is_refused() -> None:
    with pytest.raises(ValidationError) as err:
        owntracks.normalize(b'{"lat": 1, "lon": 2}', ctx())
    assert err.value.field == "_type"
