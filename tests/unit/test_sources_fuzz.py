"""Every adapter, fed random bytes or mutated fixtures, returns events or raises ValidationError."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.sources import ADAPTERS, osmand, x12_214  # every registered adapter is fuzzed
from trackd.errors import ValidationError
from trackd.model import Event, SourceContext

PAYLOADS = Path(__file__).parents[1] / "payloads"
NOW = datetime(2024, 6, 1, 16, 0, tzinfo=UTC)
NATIVE_SAMPLE = orjson.dumps(
    [
        {
            "occurred_at": "2024-06-01T10:00:00Z",
            "shipment": "ABC123",
            "milestone": {
                "code": "departed",
                "classifier": "actual",
                "location": {"name": "Rotterdam", "unlocode": "NLRTM"},
            },
        },
        {"occurred_at": 1717236000, "device": "dev-1", "position": {"lat": 51.9, "lon": 4.4, "speed_kmh": 40}},
        {"occurred_at": "2024-06-01T10:05:00+02:00", "device": "dev-1", "sensor": {"temperature_c": 4.5}},
    ]
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fixtures(source: str) -> list[bytes]:
    if source == "native":
        return [NATIVE_SAMPLE]
    return [p.read_bytes() for p in sorted((PAYLOADS / source).iterdir())]


def ctx(params: dict[str, str] | None = None) -> SourceContext:
    return SourceContext(tenant="acme", received_at=NOW, device="dev-1", params=params or {})


def check(call: Callable[[], Any]) -> None:
    try:
        result = call()
    except ValidationError:
        return
    assert isinstance(result, list)
    assert all(isinstance(e, Event) for e in result)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "",
            "ACT",
            "EST",
            "DEP",
            "InTransit",
            "2024-06-01T10:00:00Z",
            "2024-06-01",
            "9999-12-31T23:59:59Z",
            "-1",
            "1e400",
            "nan",
        ]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value, so a mutation can land anywhere."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += paths(child, (*prefix, i))
    return found


def mutate(value: Any, path: tuple[Any, ...], new: Any, delete: bool) -> Any:
    if not path:
        return new
    node = value
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = new
    return value


@pytest.mark.parametrize("source", list(ADAPTERS))
@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes(source: str, data: bytes) -> None:
    check(lambda: ADAPTERS[source].normalize(data, ctx()))


@pytest.mark.parametrize("source", [s for s in ADAPTERS if s != "x12-214"])
@SETTINGS
@given(choice=st.data(), new=json_values, delete=st.booleans())
def test_mutated_json_fixtures(source: str, choice: st.DataObject, new: Any, delete: bool) -> None:
    candidates = [b for b in fixtures(source) if b.lstrip()[:1] in (b"{", b"[")]
    value = orjson.loads(choice.draw(st.sampled_from(candidates)))
    path = choice.draw(st.sampled_from(paths(value)))
    body = orjson.dumps(mutate(value, path, new, delete))
    check(lambda: ADAPTERS[source].normalize(body, ctx()))


@SETTINGS
@given(choice=st.data())
def test_mutated_x12(choice: st.DataObject) -> None:
    text = bytearray(choice.draw(st.sampled_from(fixtures("x12-214"))))
    for _ in range(choice.draw(st.integers(1, 4))):
        at = choice.draw(st.integers(0, len(text) - 1))
        op = choice.draw(st.sampled_from(["replace", "delete", "insert"]))
        byte = choice.draw(st.sampled_from([*list(b"*~|\n0123456789ANSTXZ "), 255]))
        if op == "replace":
            text[at] = byte
        elif op == "delete":
            del text[at]
        else:
            text.insert(at, byte)
    check(lambda: x12_214.normalize(bytes(text), ctx()))


@SETTINGS
@given(choice=st.data(), new=st.text(max_size=20), body=st.binary(max_size=200))
def test_mutated_osmand_queries(choice: st.DataObject, new: str, body: bytes) -> None:
    names = [p.name for p in (PAYLOADS / "osmand").iterdir() if p.suffix == ".txt" and "form" not in p.name]
    params = dict(parse_qsl((PAYLOADS / "osmand" / choice.draw(st.sampled_from(names))).read_text().strip()))
    key = choice.draw(st.sampled_from([*params, "location", "timestamp", "speed"]))
    params[key] = new
    check(lambda: osmand.normalize(b"", ctx(params)))
    check(lambda: osmand.normalize(body, ctx(params)))
    try:
        assert isinstance(osmand.device_key(body, params), str)
    except ValidationError:
        pass
