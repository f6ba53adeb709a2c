"""Outbound webhooks: Standard Webhooks signing, body shape, backoff, decisions, ordering, one send."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import httpx
import orjson
import pytest
import standardwebhooks

from notify import delivery as hooks
from notify import ssrf
from notify.hook_store import Attempt
from trackd import keys

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MESSAGE = {
    "seq": 41,
    "type": "status.changed",
    "shipment_id": "shp_1",
    "occurred_at": "2026-11-01T11:59:00+00:00",
    "status": "delivered",
    "substatus": None,
    "previous_status": "out_for_delivery",
}


def test_body_is_type_timestamp_and_the_message_without_seq() -> None:
    body = orjson.loads(hooks.message_body("status.changed", MESSAGE))
    assert body == {
        "type": "status.changed",
        "timestamp": MESSAGE["occurred_at"],
        "data": {k: v for k, v in MESSAGE.items() if k != "seq"},
    }
    assert orjson.loads(hooks.message_body("delivered", MESSAGE))["type"] == "delivered"


def test_signature_verifies_with_the_standardwebhooks_package() -> None:
    secret = keys.new_webhook_secret()
    body = hooks.message_body("status.changed", MESSAGE)
    now = int(datetime.now(UTC).timestamp())
    headers = hooks.request_headers("msg_abc123", now, body, [secret])
    assert headers["webhook-signature"].startswith("v1,")
    assert standardwebhooks.Webhook(secret).verify(body, headers) == orjson.loads(body)
    # byte for byte the package's own signature
    expected = standardwebhooks.Webhook(secret).sign("msg_abc123", datetime.fromtimestamp(now, UTC), body.decode())
    assert headers["webhook-signature"] == expected
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(keys.new_webhook_secret()).verify(body, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(body.replace(b"delivered", b"returned"), headers)


def test_during_rotation_both_secrets_verify() -> None:
    new, old = keys.new_webhook_secret(), keys.new_webhook_secret()
    body = hooks.message_body("status.changed", MESSAGE)
    headers = hooks.request_headers("msg_rot", int(datetime.now(UTC).timestamp()), body, [new, old])
    sigs = headers["webhook-signature"].split(" ")
    assert len(sigs) == 2
    assert all(s.startswith("v1,") for s in sigs)
    for secret in (new, old):
        standardwebhooks.Webhook(secret).verify(body, headers)


def test_backoff_follows_the_schedule_with_bounded_jitter() -> None:
    schedule = [5.0, 300.0, 1800.0]
    rng = random.Random(7)
    for tries, base in enumerate(schedule, start=1):
        samples = [hooks.backoff(schedule, tries, rng) for _ in range(2000)]
        values = [s for s in samples if s is not None]
        assert len(values) == 2000
        assert min(values) >= base * (1 - hooks.JITTER)
        assert max(values) <= base * (1 + hooks.JITTER)
        assert min(values) < base * 0.95
        assert max(values) > base * 1.05
    assert hooks.backoff(schedule, 4, rng) is None
    assert hooks.backoff(schedule, 0, rng) is None
    assert hooks.backoff([], 1, rng) is None


def test_decide_success_retry_give_up_and_disable() -> None:
    rng, schedule = random.Random(1), [10.0, 20.0]
    ok = hooks.decide(Attempt(T0, 204, 12, None), 0, schedule, None, rng)
    assert (ok.status, ok.tries, ok.disable_reason) == ("succeeded", 1, None)
    fail = Attempt(T0, 500, 30, "HTTP 500")
    first = hooks.decide(fail, 0, schedule, None, rng)
    assert first.status == "pending"
    assert first.tries == 1
    assert timedelta(seconds=8.5) <= first.next_attempt_at - T0 <= timedelta(seconds=11.5)
    second = hooks.decide(fail, 1, schedule, T0, rng)
    assert second.status == "pending"
    assert timedelta(seconds=17) <= second.next_attempt_at - T0 <= timedelta(seconds=23)
    assert hooks.decide(fail, 2, schedule, T0, rng).status == "failed"
    assert hooks.decide(Attempt(T0, 302, 5, "HTTP 302: redirect"), 0, schedule, None, rng).status == "pending"
    later = Attempt(T0 + timedelta(days=3, minutes=1), 503, 9, "HTTP 503")
    gone = hooks.decide(later, 0, schedule, T0, rng)
    assert gone.disable_reason is not None
    assert "HTTP 503" in gone.disable_reason
    assert hooks.decide(later, 0, schedule, T0 + timedelta(hours=1), rng).disable_reason is None
    assert hooks.decide(later, 0, schedule, T0, rng, disable_after_s=10 * 86400).disable_reason is None


def test_ordering_only_the_earliest_pending_per_shipment_goes() -> None:
    P = hooks.Pending
    pending = [
        P("d3", "wh1", "shp_a", 3, 1, T0),
        P("d1", "wh1", "shp_a", 1, 1, T0 + timedelta(minutes=5)),  # retrying: blocks d3 and d2
        P("d2", "wh1", "shp_a", 2, 1, T0),
        P("d4", "wh1", "shp_b", 4, 1, T0),  # another shipment: independent
        P("d5", "wh2", "shp_a", 3, 1, T0),  # another endpoint: independent
        P("d6", "wh1", "shp_c", 6, 2, T0),  # the `delivered` copy waits for the status change
        P("d7", "wh1", "shp_c", 6, 1, T0 + timedelta(seconds=1)),
    ]
    assert hooks.sendable(pending, T0) == ["d4", "d5"]
    assert hooks.sendable(pending, T0 + timedelta(seconds=1)) == ["d4", "d5", "d7"]
    assert set(hooks.sendable(pending, T0 + timedelta(minutes=5))) == {"d1", "d4", "d5", "d7"}
    assert hooks.sendable([p for p in pending if p.id not in {"d1", "d7"}], T0) == ["d2", "d4", "d5", "d6"]


async def _no_dns(host: str) -> list[str]:
    raise AssertionError("literal hosts are not resolved")


async def test_send_signs_pins_and_records() -> None:
    secret = keys.new_webhook_secret()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        body = hooks.message_body("status.changed", MESSAGE)
        now = datetime.now(UTC)
        got = await hooks.send(client, "http://127.0.0.1:9/hook", "msg_1", body, [secret], now, allow_private=True)
    assert got.ok
    assert got.status_code == 200
    assert got.response_body == "ok"
    assert got.error is None
    (req,) = seen
    assert req.headers["webhook-id"] == "msg_1"
    assert req.headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert req.content == body
    standardwebhooks.Webhook(secret).verify(req.content, dict(req.headers))


async def test_send_failures_are_attempts_not_exceptions() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/big":
            return httpx.Response(500, content=b"x" * 5000)
        if request.url.path == "/redirect":
            return httpx.Response(302, headers={"location": "http://169.254.169.254/"})
        raise httpx.ReadTimeout("slow", request=request)

    secret = keys.new_webhook_secret()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:

        async def go(url: str, allow: bool = True, resolver: ssrf.Resolver = _no_dns) -> Attempt:
            return await hooks.send(client, url, "m", b"{}", [secret], T0, allow_private=allow, resolver=resolver)

        big = await go("http://127.0.0.1/big")
        assert (big.status_code, big.error) == (500, "HTTP 500")
        assert big.response_body is not None
        assert len(big.response_body) == 1024
        moved = await go("http://127.0.0.1/redirect")
        assert moved.status_code == 302
        assert moved.error is not None
        assert "not followed" in moved.error
        slow = await go("http://127.0.0.1/slow")
        assert slow.status_code is None
        assert slow.error is not None
        assert slow.error.startswith("timeout")
        assert calls == ["/big", "/redirect", "/slow"]  # the redirect was not followed

        async def rebound(host: str) -> list[str]:
            return ["10.0.0.5"]

        refused = await go("https://hooks.example.com/in", allow=False, resolver=rebound)
        assert refused.status_code is None
        assert refused.error is not None
        assert "refused" in refused.error
        assert "10.0.0.5" in refused.error
        metadata = await go("http://169.254.169.254/latest/", allow=True)
        assert metadata.error is not None
        assert "metadata" in metadata.error
    assert len(calls) == 3  # refused destinations are never contacted


def test_jitter_spreads_a_burst() -> None:
    rng = random.Random(3)
    delays = sorted(hooks.backoff([60.0], 1, rng) or 0.0 for _ in range(50))
    assert all(b - a < 10 for a, b in pairwise(delays))
    assert delays[-1] - delays[0] > 6
