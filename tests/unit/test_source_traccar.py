"""Traccar position and event forwarding: positions, readings, geofence milestones, alarms, refusals."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest import sources
from ingest.signatures import HeaderSecret
from ingest.sources import traccar
from trackd.codes import EventKind, Milestone
from trackd.errors import ValidationError
from trackd.model import SourceContext

PAYLOADS = Path(__file__).parents[1] / "payloads" / "traccar"
CTX = SourceContext(tenant="acme", received_at=datetime(2024, 6, 1, 16, 30, tzinfo=UTC))
UNIQUE_ID = "356307042441013"


def load(name: str) -> Any:
    return orjson.loads((PAYLOADS / name).read_bytes())


def run(value: Any) -> list[Any]:
    return traccar.normalize(orjson.dumps(value), CTX)


def test_position_forward_is_a_position_and_a_reading_of_the_unique_id() -> None:
    fix, reading = run(load("position.json"))
    assert (fix.kind, reading.kind) == (EventKind.POSITION, EventKind.SENSOR)
    assert fix.device == reading.device == UNIQUE_ID
    assert fix.shipment is None
    assert fix.refs == ()
    assert fix.occurred_at == reading.occurred_at == datetime(2024, 6, 1, 10, 15, 30, tzinfo=UTC)  # fixTime
    assert (fix.position.lat, fix.position.lon) == (51.92251, 4.47917)
    assert fix.position.speed_kmh == pytest.approx(27.0 * 1.852)  # knots
    assert (fix.position.heading, fix.position.altitude_m) == (118.0, 12.0)
    assert fix.position.accuracy_m is None  # Traccar's 0: unknown
    assert (reading.sensor.battery_pct, reading.sensor.temperature_c) == (87.0, 6.5)
    assert fix.raw["protocol"] == "teltonika"


def test_geofence_events_are_arrived_and_departed_at_the_geofence() -> None:
    fix, arrived = run(load("event_geofence_enter.json"))
    assert fix.kind is EventKind.POSITION
    assert arrived.milestone.code is Milestone.ARRIVED
    assert arrived.milestone.raw_code == "geofenceEnter"
    assert arrived.milestone.location.name == "Maasvlakte II terminal"
    assert (arrived.milestone.location.lat, arrived.milestone.location.lon) == (51.95342, 4.05217)
    assert arrived.occurred_at == datetime(2024, 6, 1, 11, 2, 10, tzinfo=UTC)
    assert arrived.device == UNIQUE_ID
    events = run(load("event_geofence_exit.json"))
    assert [e.kind for e in events] == [EventKind.POSITION, EventKind.SENSOR, EventKind.MILESTONE]
    assert events[-1].milestone.code is Milestone.DEPARTED


def test_an_alarm_is_kept_without_a_code() -> None:
    fix, alarm = run(load("event_alarm.json"))
    assert alarm.milestone.code is None
    assert alarm.milestone.raw_code == "alarm:tampering"
    assert fix.position.accuracy_m == 6.0


def test_device_events_give_only_their_position_which_the_position_forward_already_gave() -> None:
    assert run(load("event_device_offline.json")) == []
    from_event = run(load("event_ignition_on.json"))
    from_position = run(load("position.json"))
    assert [e.event_id for e in from_event] == [e.event_id for e in from_position]  # a duplicate, not a copy


def test_a_position_without_a_fix_gives_its_reading_only() -> None:
    body = load("position.json")
    body["position"]["valid"] = False
    (reading,) = run(body)
    assert reading.kind is EventKind.SENSOR


def test_an_unknown_event_type_is_kept_raw() -> None:
    body = load("event_geofence_enter.json")
    body["event"]["type"] = "cargoDoorOpened"
    _fix, event = run(body)
    assert (event.milestone.code, event.milestone.raw_code) == (None, "cargoDoorOpened")


def _edit(name: str, path: tuple[str, ...], value: Any) -> Any:
    body = copy.deepcopy(load(name))
    node = body
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("name", "path", "value", "field"),
    [
        ("position.json", ("device", "uniqueId"), KeyError, "device.uniqueId"),
        ("position.json", ("device",), "356307042441013", "device"),
        ("position.json", ("position", "latitude"), 123.0, "position.lat"),
        ("position.json", ("position", "longitude"), "east", "position.longitude"),
        ("position.json", ("position", "fixTime"), "yesterday", "position.fixTime"),
        ("position.json", ("position", "fixTime"), "2024-06-03T10:00:00.000+00:00", "position.occurred_at"),
        ("position.json", ("position", "speed"), True, "position.speed"),
        ("position.json", ("position", "attributes", "batteryLevel"), 187, "position.attributes.batteryLevel"),
        ("position.json", ("position",), KeyError, "position"),
        ("event_alarm.json", ("event", "type"), KeyError, "event.type"),
        ("event_alarm.json", ("event", "eventTime"), KeyError, "event.eventTime"),
        ("event_geofence_enter.json", ("geofence",), [7], "geofence"),
    ],
)
def test_bad_input_names_the_field(name: str, path: tuple[str, ...], value: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        run(_edit(name, path, value))
    assert err.value.field == field


def test_non_json_and_non_objects_are_refused() -> None:
    for body in (b"lat=1&lon=2", b"[]", b'"x"'):
        with pytest.raises(ValidationError):
            traccar.normalize(body, CTX)


def test_deliveries_authenticate_with_the_secret_as_a_bearer_token() -> None:
    scheme = sources.get("traccar").signature
    assert scheme == HeaderSecret("Authorization", "Bearer ")
    body = b'{"position": {}}'
    sources.verify("traccar", "is_s3cret", body, {"Authorization": "Bearer is_s3cret"})
    sources.verify("traccar", "is_s3cret", body, {"authorization": "bearer  is_s3cret "})
    assert scheme.sign("is_s3cret", body) == "Bearer is_s3cret"
