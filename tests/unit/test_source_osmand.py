"""Traccar Client / OsmAnd: the query (or form) protocol and the JSON form."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
import pytest

from ingest.sources import osmand
from trackd.codes import EventKind
from trackd.errors import ValidationError
from trackd.model import SourceContext

PAYLOADS = Path(__file__).parents[1] / "payloads" / "osmand"
NOW = datetime(2024, 6, 1, 16, 0, tzinfo=UTC)


def query(name: str) -> dict[str, str]:
    return dict(parse_qsl((PAYLOADS / name).read_text().strip()))


def ctx(params: dict[str, str] | None = None, device: str | None = "dev-42") -> SourceContext:
    return SourceContext(tenant="acme", received_at=NOW, device=device, params=params or {})


def test_query_form_speed_is_knots() -> None:
    position, battery = osmand.normalize(b"", ctx(query("query.txt")))
    assert position.kind is EventKind.POSITION
    assert position.position is not None
    assert position.occurred_at == datetime(2024, 6, 1, 11, 6, 40, tzinfo=UTC)
    assert position.position.speed_kmh == pytest.approx(10 * 1.852)
    assert position.position.heading == 135.5
    assert position.position.altitude_m == 112.0
    assert position.position.accuracy_m == 8.5
    assert position.device == "dev-42"
    assert battery.sensor is not None
    assert battery.sensor.battery_pct == 64.0
    assert position.raw["driverUniqueId"] == "D-778"
    assert position.raw["ignition"] == "true"


def test_timestamp_in_milliseconds_equals_seconds() -> None:
    [position] = osmand.normalize(b"", ctx(query("query_ms.txt")))
    assert position.occurred_at == datetime(2024, 6, 1, 11, 6, 40, tzinfo=UTC)
    assert position.position is not None
    assert position.position.speed_kmh == 0.0


def test_iso_timestamp_location_pair_and_heading() -> None:
    [position] = osmand.normalize(b"", ctx(query("query_iso.txt")))
    assert position.occurred_at == datetime(2024, 6, 1, 10, 50, tzinfo=UTC)
    assert position.position is not None
    assert (position.position.lat, position.position.lon, position.position.heading) == (50.11092, 8.68213, 90.0)


def test_form_body_with_plain_date_time() -> None:
    body = (PAYLOADS / "form.txt").read_bytes()
    position, battery = osmand.normalize(body, ctx({"id": "867530912345678"}))
    assert position.occurred_at == datetime(2024, 6, 1, 11, 0, tzinfo=UTC)
    assert position.position is not None
    assert position.position.speed_kmh == pytest.approx(37.04)
    assert battery.sensor is not None
    assert battery.sensor.battery_pct == 75.0


def test_json_form_speed_is_metres_per_second_and_battery_a_fraction() -> None:
    body = (PAYLOADS / "client9.json").read_bytes()
    position, battery = osmand.normalize(body, ctx())
    assert position.occurred_at == datetime(2024, 6, 1, 11, 30, tzinfo=UTC)
    assert position.position is not None
    assert position.position.speed_kmh == pytest.approx(25.0 * 3.6)
    assert position.position.heading == 182.3
    assert battery.sensor is not None
    assert battery.sensor.battery_pct == pytest.approx(42.0)
    assert position.raw["location"]["extras"] == {"trip": "MI-0601"}


@pytest.mark.parametrize(
    ("body", "params", "key"),
    [
        (b"", {"id": "867530912345678"}, "867530912345678"),
        (b"", {"deviceid": "abc"}, "abc"),
        (b"id=from-form&lat=1&lon=2", {}, "from-form"),
        ((PAYLOADS / "client9.json").read_bytes(), {}, "867530912345678"),
    ],
)
def test_device_key(body: bytes, params: dict[str, str], key: str) -> None:
    assert osmand.device_key(body, params) == key


def test_device_key_missing() -> None:
    with pytest.raises(ValidationError) as err:
        osmand.device_key(b"lat=1&lon=2", {})
    assert err.value.field == "id"


def test_no_resolved_device_is_refused() -> None:
    with pytest.raises(ValidationError) as err:
        osmand.normalize(b"", ctx(query("query.txt"), device=None))
    assert err.value.field == "id"


def test_redelivery_gives_the_same_ids() -> None:
    first = osmand.normalize(b"", ctx(query("query.txt")))
    second = osmand.normalize(b"", ctx(query("query.txt")))
    assert [e.event_id for e in first] == [e.event_id for e in second]
    assert first[0].event_id != first[1].event_id


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lat": "north"}, "lat"),
        ({"lat": "95"}, "lat"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": ""}, "timestamp"),
        ({"speed": "fast"}, "speed"),
        ({"batt": "150"}, "batt"),
        ({"timestamp": "2030-01-01T00:00:00Z"}, "occurred_at"),
    ],
)
def test_bad_query_fields_are_named(change: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        osmand.normalize(b"", ctx(query("query.txt") | change))
    assert err.value.field == field


def test_json_without_coordinates_is_refused() -> None:
    body = orjson.loads((PAYLOADS / "client9.json").read_bytes())
    del body["location"]["coords"]["latitude"]
    with pytest.raises(ValidationError) as err:
        osmand.normalize(orjson.dumps(body), ctx())
    assert err.value.field == "location.coords"
