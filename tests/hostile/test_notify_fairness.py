"""Notification delivery under hostile tenants: a slow endpoint, a broken one, replays repeated.

Real PostgreSQL, the session server (every role, default settings: two deliveries in flight per
endpoint, the breaker opening after five failures in a row for 30 s, retries after 5 s, 300 s, ...)
and real HTTP receivers on 127.0.0.1. Every worker of the run may send any delivery, so the limits
asserted here are the ones that hold across workers. Where a test needs a cool-down or a retry
to be over now, it moves the stored time forward, as a test clock would.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from notify import delivery as hooks
from notify.hook_store import Attempt
from tests.conftest import RunEnv, wait_for
from tests.integration.test_hooks import T0, Receiver, _stop, deliveries, shipment, start_worker, subscribe
from trackd.settings import Settings

PER_ENDPOINT = Settings.model_fields["webhook_endpoint_concurrency"].default
BREAKER_FAILURES = Settings.model_fields["webhook_breaker_failures"].default
COOLDOWN_S = Settings.model_fields["webhook_breaker_cooldown_s"].default
FIRST_RETRY_S = float(Settings.model_fields["webhook_retry_schedule"].default.split(",")[0])
SLOW_S = 10.0  # the slow endpoint's answer time: slow, yet within the 15 s send timeout, so it succeeds
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class Gauge:
    """How many requests an endpoint is answering at once, and the most it ever did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current = 0
        self.most = 0

    def answer(self, status: int, delay: float) -> tuple[int, float]:
        with self.lock:
            self.current += 1
            self.most = max(self.most, self.current)
        try:
            time.sleep(delay)
        finally:
            with self.lock:
                self.current -= 1
        return status, 0.0


def events(tracking: list[str], code: str, at: datetime) -> list[dict[str, Any]]:
    return [{"occurred_at": at.isoformat(), "shipment": t, "milestone": {"code": code}} for t in tracking]


def post(tenant: Any, batch: list[dict[str, Any]]) -> None:
    r = tenant.http.post("/v1/events", json=batch)
    assert r.status_code == 202, r.text


def finished(tenant: Any, webhook_id: str, n: int) -> Any:
    """A predicate: the subscription has `n` deliveries, all succeeded."""

    def check() -> list[dict[str, Any]] | None:
        items = deliveries(tenant, webhook_id)
        return items if len(items) == n and all(d["status"] == "succeeded" for d in items) else None

    return check


def statuses(rec: Receiver, shipment_id: str) -> list[str]:
    """The statuses of every request the receiver got for one shipment, in arrival order."""
    with rec.lock:
        return [r["json"]["data"]["status"] for r in rec.requests if r["json"]["data"]["shipment_id"] == shipment_id]


def webhook(tenant: Any, webhook_id: str) -> dict[str, Any]:
    r = tenant.http.get(f"/v1/webhooks/{webhook_id}")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


# -- the pure rules ------------------------------------------------------------------------------


def test_the_breaker_opens_after_the_threshold_and_backs_off_its_probes() -> None:
    state = hooks.Breaker(0, None)
    for _ in range(4):
        state = hooks.trip(state.failures, False, NOW, 5, 30.0)
        assert state.open_until is None
    opened = hooks.trip(state.failures, False, NOW, 5, 30.0)
    assert opened == hooks.Breaker(5, NOW + timedelta(seconds=30))
    probes = [hooks.trip(5 + k, False, NOW, 5, 30.0).open_until for k in range(8)]
    assert [(p - NOW).total_seconds() for p in probes if p] == [60, 120, 240, 480, 960, 960, 960, 960]
    assert hooks.trip(12, True, NOW, 5, 30.0) == hooks.Breaker(0, None)


def test_a_failed_probe_keeps_its_delivery_due_and_its_tries() -> None:
    rng, schedule = random.Random(5), [10.0, 20.0]
    fail = Attempt(NOW, 503, 4, "HTTP 503")
    probe = hooks.decide(fail, 1, schedule, NOW - timedelta(minutes=5), rng, probe=True)
    assert (probe.status, probe.tries, probe.next_attempt_at, probe.disable_reason) == ("pending", 1, NOW, None)
    last = hooks.decide(fail, 2, schedule, NOW, rng, probe=True)  # past the schedule: still not given up
    assert (last.status, last.tries) == ("pending", 2)
    assert hooks.decide(fail, 2, schedule, NOW, rng).status == "failed"  # the same attempt outside a probe
    gone = hooks.decide(fail, 1, schedule, NOW - timedelta(days=4), rng, probe=True)
    assert gone.disable_reason is not None  # the endpoint is still disabled after days of failures
    assert hooks.decide(Attempt(NOW, 200, 3, None), 1, schedule, NOW, rng, probe=True).status == "succeeded"


# -- against the running service -----------------------------------------------------------------


def test_a_slow_endpoint_delays_only_its_own_deliveries(make_tenant: Any) -> None:
    a, b = make_tenant("fa"), make_tenant("fb")
    gauge = Gauge()
    slow = Receiver(lambda _req, _n: gauge.answer(200, SLOW_S))
    fast = Receiver()
    try:
        tracking = [f"SLOW-{i}" for i in range(5)]
        sids = [shipment(a, t) for t in tracking]
        hook_a = subscribe(a, slow.url, ["status.changed"], shipment_ids=sids)
        sid_b = shipment(b, "QUICK-1")
        hook_b = subscribe(b, fast.url, ["status.changed"])
        # six deliveries to A's endpoint, five of them sendable at once (the sixth follows SLOW-0's first)
        post(a, events(tracking, "departed", T0))
        post(a, events(tracking[:1], "delivered", T0 + timedelta(hours=1)))
        wait_for(lambda: len(slow.ids()) >= PER_ENDPOINT, timeout=10)  # A's endpoint is busy

        started = time.monotonic()
        post(b, events(["QUICK-1"], "departed", T0))  # a real change of B's, through the API
        wait_for(lambda: fast.ids(), timeout=5)
        assert time.monotonic() - started < 5
        assert len(slow.ids()) == PER_ENDPOINT  # A's first sends are still being answered
        (got,) = fast.requests
        assert got["json"]["data"]["shipment_id"] == sid_b

        # A's deliveries all arrive, never more than the limit at once, in order per shipment
        items = wait_for(finished(a, hook_a["id"], 6), timeout=6 * SLOW_S / PER_ENDPOINT + 30)
        assert sorted(slow.ids()) == sorted(d["id"] for d in items)  # each once
        assert all(len(d["attempts"]) == 1 for d in items)
        assert gauge.most == PER_ENDPOINT
        assert statuses(slow, sids[0]) == ["in_transit", "delivered"]
        for sid in sids[1:]:
            assert statuses(slow, sid) == ["in_transit"]
        (mine,) = wait_for(finished(b, hook_b["id"], 1))
        assert len(mine["attempts"]) == 1
    finally:
        slow.close()
        fast.close()


def test_replaying_three_times_queues_each_message_once(make_tenant: Any) -> None:
    t = make_tenant("rp")
    rec = Receiver()
    try:
        tracking = [f"REPLAY-{i}" for i in range(3)]
        sids = [shipment(t, x) for x in tracking]
        hook = subscribe(t, rec.url, ["status.changed"], shipment_ids=sids)
        post(t, events(tracking, "departed", T0))
        originals = wait_for(finished(t, hook["id"], 3))
        # paused, so that the replayed deliveries stay pending while the replay is repeated
        assert t.http.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": False}).status_code == 200
        span = {
            "from": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
            "until": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
        }

        def replay() -> int:
            r = t.http.post(f"/v1/webhooks/{hook['id']}/replay", json=span)
            assert r.status_code == 202, r.text
            count: int = r.json()["count"]
            return count

        with ThreadPoolExecutor(3) as pool:  # three at once
            counts = sorted(pool.map(lambda _: replay(), range(3)))
        assert counts == [0, 0, 3]
        assert replay() == 0  # and once more, later
        assert len(deliveries(t, hook["id"], "pending")) == 3
        assert t.http.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": True}).status_code == 200

        items = wait_for(finished(t, hook["id"], 6))
        received = rec.ids()
        assert len(received) == len(set(received)) == 6
        assert {d["id"] for d in originals} < set(received)
        for sid in sids:  # every message twice: its first delivery and one replay
            bodies = [r["json"] for r in rec.requests if r["json"]["data"]["shipment_id"] == sid]
            assert len(bodies) == 2
            assert bodies[0] == bodies[1]
        assert all(len(d["attempts"]) == 1 for d in items)
    finally:
        rec.close()


def test_a_broken_endpoint_is_paused_then_gets_everything_in_order(make_tenant: Any, testenv: RunEnv) -> None:
    t = make_tenant("cb")
    healthy = threading.Event()
    rec = Receiver(lambda _req, _n: (200 if healthy.is_set() else 503, 0.0))

    def cool_down_over() -> None:  # the test clock: the open circuit's cool-down has passed
        (row,) = testenv.sql(
            "WITH u AS (UPDATE webhooks SET circuit_open_until = now() - interval '1 second'"
            " WHERE id = %s AND circuit_open_until IS NOT NULL RETURNING 1) SELECT count(*) FROM u",
            hook["id"],
        )
        assert row == (1,)

    try:
        tracking = [f"BREAK-{i}" for i in range(BREAKER_FAILURES)]
        sids = [shipment(t, x) for x in tracking]
        hook = subscribe(t, rec.url, ["status.changed"], shipment_ids=sids)
        post(t, events(tracking, "departed", T0))
        post(t, events(tracking, "delivered", T0 + timedelta(hours=1)))  # ten deliveries, five sendable
        opened = wait_for(lambda: webhook(t, hook["id"])["circuit_open_until"], timeout=15)
        opened_at = time.monotonic()
        assert len(rec.ids()) == BREAKER_FAILURES  # each shipment's first message failed once
        wait = (datetime.fromisoformat(opened) - datetime.now(UTC)).total_seconds()
        assert COOLDOWN_S - 5 < wait <= COOLDOWN_S

        # past the retry backoff of those five, the open circuit alone holds them: nothing is sent
        time.sleep(max(0.0, FIRST_RETRY_S * (1 + hooks.JITTER) + 0.5 - (time.monotonic() - opened_at)))
        assert len(rec.ids()) == BREAKER_FAILURES
        items = deliveries(t, hook["id"])
        assert len(items) == 2 * BREAKER_FAILURES
        assert all(d["status"] == "pending" for d in items)  # queued, none given up
        assert sorted(len(d["attempts"]) for d in items) == [0] * BREAKER_FAILURES + [1] * BREAKER_FAILURES

        # the cool-down ends: one probe, which fails; the circuit opens again, for twice as long
        cool_down_over()
        wait_for(lambda: len(rec.ids()) == BREAKER_FAILURES + 1, timeout=10)
        reopened = wait_for(
            lambda: (
                (w := webhook(t, hook["id"])["circuit_open_until"])
                and datetime.fromisoformat(w) > datetime.now(UTC)
                and w
            )
        )
        assert 2 * COOLDOWN_S - 5 < (datetime.fromisoformat(reopened) - datetime.now(UTC)).total_seconds()
        time.sleep(1.0)
        assert len(rec.ids()) == BREAKER_FAILURES + 1  # one probe at a time
        probed = rec.ids()[-1]
        # the failed probe is in the log, and did not use up one of the message's retries
        assert testenv.sql("SELECT tries FROM webhook_deliveries WHERE id = %s", probed) == [(1,)]
        assert [len(d["attempts"]) for d in deliveries(t, hook["id"]) if d["id"] == probed] == [2]

        # the endpoint recovers: the next probe succeeds, the circuit closes, everything follows in order
        healthy.set()
        cool_down_over()
        items = wait_for(finished(t, hook["id"], 2 * BREAKER_FAILURES), timeout=30)
        codes = {d["id"]: [a["status_code"] for a in d["attempts"]] for d in items}  # attempts: oldest first
        assert sorted(codes.values()) == sorted(
            [[200]] * BREAKER_FAILURES + [[503, 200]] * (BREAKER_FAILURES - 1) + [[503, 503, 200]]
        )
        assert codes[probed] == [503, 503, 200]
        assert len(rec.ids()) == sum(len(c) for c in codes.values()) == 3 * BREAKER_FAILURES + 1
        arrivals = [statuses(rec, sid) for sid in sids]  # per shipment: retried until it succeeded, then the next
        assert all(got[-1] == "delivered" and set(got[:-1]) == {"in_transit"} for got in arrivals)
        assert sorted(len(got) for got in arrivals) == [3] * (BREAKER_FAILURES - 1) + [4]
        after = webhook(t, hook["id"])
        assert after["circuit_open_until"] is None
        assert after["enabled"] is True
        assert after["failing_since"] is None
    finally:
        rec.close()


def test_the_endpoint_limit_holds_across_workers(make_tenant: Any, testenv: RunEnv, tmp_path: Path) -> None:
    t = make_tenant("lw")
    extra = start_worker(testenv, tmp_path)  # a second worker process beside the session server's
    gauge = Gauge()
    rec = Receiver(lambda _req, _n: gauge.answer(200, 1.0))
    try:
        tracking = [f"LIMIT-{i}" for i in range(8)]
        sids = [shipment(t, x) for x in tracking]
        hook = subscribe(t, rec.url, ["status.changed"], shipment_ids=sids)
        post(t, events(tracking, "departed", T0))  # eight sendable at once, to 2 x 32 sender slots
        items = wait_for(finished(t, hook["id"], 8), timeout=30)
        assert gauge.most == PER_ENDPOINT
        assert sorted(rec.ids()) == sorted(d["id"] for d in items)
        assert extra.poll() is None
    finally:
        rec.close()
        _stop([extra])


def test_the_breaker_state_is_shown_and_reset_by_enabling(make_tenant: Any, testenv: RunEnv) -> None:
    t = make_tenant("rs")
    sid = shipment(t, "RESET-1")
    hook = subscribe(t, "http://127.0.0.1:9/hook", ["status.changed"], shipment_ids=[sid])
    assert webhook(t, hook["id"])["circuit_open_until"] is None
    testenv.sql(
        "WITH u AS (UPDATE webhooks SET consecutive_failures = 9, circuit_open_until = now() + interval '1 hour'"
        " WHERE id = %s RETURNING 1) SELECT count(*) FROM u",
        hook["id"],
    )
    assert webhook(t, hook["id"])["circuit_open_until"] is not None
    r = t.http.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": True})
    assert r.status_code == 200
    assert r.json()["circuit_open_until"] is None
    assert testenv.sql("SELECT consecutive_failures FROM webhooks WHERE id = %s", hook["id"]) == [(0,)]
    assert t.http.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
