"""Settings, signatures, MQTT topic routing, the native normalizer and the state fold."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from datetime import UTC, datetime

import orjson
import pytest

from ingest.mqtt import Route, route, subscriptions
from ingest.sources import native, verify
from trackd.codes import EventKind
from trackd.errors import ConfigError, Unauthorized, ValidationError
from trackd.ledger import Loaded, StateCache
from trackd.model import SourceContext, ref_key
from trackd.settings import load_settings
from trackd.state import State, advance

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
CTX = SourceContext(tenant="acme", received_at=NOW)


def test_settings_defaults_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.http_host == "127.0.0.1"
    assert s.http_port == 8080
    assert s.retry_schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert s.webhook_allow_private is False
    monkeypatch.setenv("TRACKD_HTTP_PORT", "eighty")
    with pytest.raises(ConfigError, match="TRACKD_HTTP_PORT"):
        load_settings()
    monkeypatch.setenv("TRACKD_HTTP_PORT", "8080")
    monkeypatch.setenv("TRACKD_MQTT_URL", "http://broker")
    with pytest.raises(ConfigError, match="TRACKD_MQTT_URL"):
        load_settings()
    monkeypatch.delenv("TRACKD_MQTT_URL")
    monkeypatch.setenv("TRACKD_WEBHOOK_RETRY_SCHEDULE", "5,-1")
    with pytest.raises(ConfigError, match="TRACKD_WEBHOOK_RETRY_SCHEDULE"):
        load_settings()


def test_settings_never_print_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKD_DATABASE_URL", "postgresql://u:hunter2@db/trackd")
    s = load_settings()
    assert "hunter2" not in repr(s)
    assert s.dsn().endswith("@db/trackd")


@pytest.mark.parametrize(
    ("source", "header", "make"),
    [
        ("native", "X-Trackd-Signature", lambda mac: "sha256=" + mac.hex()),
        ("dcsa", "Notification-Signature", lambda mac: "sha256=" + mac.hex()),
        ("easypost", "X-Hmac-Signature", lambda mac: "hmac-sha256-hex=" + mac.hex()),
        ("aftership", "aftership-hmac-sha256", lambda mac: base64.b64encode(mac).decode()),
        ("x12-214", "X-Trackd-Signature", lambda mac: "sha256=" + mac.hex()),
        ("onerecord", "X-Trackd-Signature", lambda mac: "sha256=" + mac.hex()),
    ],
)
def test_each_source_signature_scheme(source: str, header: str, make) -> None:  # type: ignore[no-untyped-def]
    body, secret = b'{"a": 1}', "is_secret"
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    verify(source, secret, body, {header: make(mac)})
    with pytest.raises(Unauthorized):
        verify(source, secret, body + b" ", {header: make(mac)})
    with pytest.raises(Unauthorized, match="missing"):
        verify(source, secret, body, {})


@pytest.mark.parametrize(
    ("topic", "prefix", "expected"),
    [
        ("trackd/acme/devices/truck-1/events", "", Route("native", "acme", "truck-1")),
        ("p1/trackd/acme/devices/truck-1/events", "p1/", Route("native", "acme", "truck-1")),
        ("owntracks/acme/phone", "", Route("owntracks", "acme", "phone")),
        ("owntracks/acme/phone/event", "", Route("owntracks", "acme", "phone")),
        ("owntracks/acme/phone/cmd", "", None),
        ("trackd/acme/devices//events", "", None),
        ("trackd/acme/devices/x/status", "", None),
        ("other/trackd/acme/devices/x/events", "p1/", None),
    ],
)
def test_topic_routing(topic: str, prefix: str, expected: Route | None) -> None:
    assert route(topic, prefix) == expected


def test_shared_subscriptions() -> None:
    assert subscriptions("p/", "g")[0] == "$share/g/p/trackd/+/devices/+/events"


def test_native_event_ids_are_deterministic_and_unknown_fields_kept() -> None:
    body = orjson.dumps({"occurred_at": 1_790_000_000, "device": "d1", "position": {"lat": 1, "lon": 2}, "x": 7})
    a, b = native.normalize(body, CTX), native.normalize(body, CTX)
    assert a[0].event_id == b[0].event_id
    assert a[0].raw["x"] == 7
    assert a[0].kind is EventKind.POSITION


def test_native_estimates_may_look_ahead_but_actuals_may_not() -> None:
    future = "2026-12-20T00:00:00Z"
    est = {"occurred_at": future, "shipment": "A", "milestone": {"code": "delivered", "classifier": "estimated"}}
    assert native.normalize(orjson.dumps(est), CTX)[0].occurred_at.month == 12
    act = {**est, "milestone": {"code": "delivered"}}
    with pytest.raises(ValidationError, match="occurred_at"):
        native.normalize(orjson.dumps(act), CTX)


def test_native_batch_errors_name_the_item() -> None:
    body = orjson.dumps(
        [
            {"occurred_at": "2026-11-01T00:00:00Z", "shipment": "A", "position": {"lat": 1, "lon": 2}},
            {"occurred_at": "2026-11-01T00:00:00Z", "shipment": "A", "position": {"lat": 1, "lon": 200}},
        ]
    )
    with pytest.raises(ValidationError) as exc:
        native.normalize(body, CTX)
    assert exc.value.field == "[1].position.lon"
    assert "[1].position.lon: [1].position.lon" not in exc.value.detail


def test_ref_key_ignores_case_spaces_and_hyphens() -> None:
    assert ref_key("msku 123-4567") == ref_key("MSKU1234567")


def test_state_fold_keeps_the_latest_position_and_emits_once() -> None:
    evs = native.normalize(
        orjson.dumps(
            [
                {"occurred_at": "2026-11-01T02:00:00Z", "shipment": "A", "position": {"lat": 2, "lon": 2}},
                {"occurred_at": "2026-11-01T01:00:00Z", "shipment": "A", "position": {"lat": 1, "lon": 1}},
                {"occurred_at": "2026-11-01T01:30:00Z", "shipment": "A", "milestone": {"code": "departed"}},
            ]
        ),
        CTX,
    )
    s, msgs = advance(State(), "shp_1", evs, NOW)
    assert s.last is not None
    assert s.last.lat == 2
    assert [m["type"] for m in msgs] == ["position", "status.changed"]
    late = native.normalize(
        orjson.dumps({"occurred_at": "2026-11-01T00:00:00Z", "shipment": "A", "position": {"lat": 9, "lon": 9}}), CTX
    )
    s2, msgs2 = advance(s, "shp_1", late, NOW)
    assert s2.last == s.last
    assert msgs2 == []


def test_state_cache_is_bounded_and_matches_tokens() -> None:
    cache = StateCache(size=2, rng=random.Random(7))
    for sid in ("a", "b"):
        cache.put(sid, Loaded({"id": sid}, State(), ("db", "1", 0)))
    cache.put("a", Loaded({"id": "a"}, State(), ("db", "2", 1)))  # written again: replaced in place
    assert len(cache) == 2
    assert cache.get("a", ("db", "1", 0)) is None  # an old token never matches
    hit = cache.get("a", ("db", "2", 1))
    assert hit is not None
    assert hit.row == {"id": "a"}
    cache.put("c", Loaded({"id": "c"}, State(), ("db", "3", 0)))
    assert len(cache) == 2
    assert cache.get("c", ("db", "3", 0)) is not None  # the newest is kept, one of the others went
    kept = [sid for sid, token in (("a", ("db", "2", 1)), ("b", ("db", "1", 0))) if cache.get(sid, token)]
    assert len(kept) == 1


def test_state_cache_keeps_finding_most_shipments_written_in_turns_when_one_more_than_fits() -> None:
    """Trackers report in turns: with one shipment more than fit, evicting the least recently
    written would evict the next one written, every time, and find none."""
    size = 200
    cache = StateCache(size=size, rng=random.Random(1))
    hits = looked = 0
    for turn in range(8):
        for k in range(size + 1):
            sid, token = f"s{k}", ("db", str(k), 0)
            found = cache.get(sid, token) is not None
            if not found:
                cache.put(sid, Loaded({"id": sid}, State(), token))
            if turn >= 2:
                looked += 1
                hits += found
    assert len(cache) == size
    assert hits / looked > 0.9
