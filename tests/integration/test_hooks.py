"""Notification hooks end to end: real PostgreSQL, real worker processes, a real receiver on 127.0.0.1.

Every worker of the run (the session server's too) may deliver any delivery, so assertions hold for
any of them: receivers deduplicate by `webhook-id`, counts are compared with the attempts log.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import standardwebhooks

from tests.conftest import RunEnv, Server, free_port, wait_for, wait_healthy

Respond = Callable[[dict[str, Any], int], tuple[int, float]]  # (request, nth time this id) -> (status, delay)


class Receiver:
    """A threaded HTTP server on loopback that records every webhook it is sent."""

    def __init__(self, respond: Respond | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.respond = respond or (lambda _req, _n: (200, 0.0))
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                try:
                    body = self.rfile.read(int(self.headers.get("content-length") or 0))
                    req = {"id": self.headers["webhook-id"], "headers": dict(self.headers), "body": body}
                    req["json"] = orjson.loads(body)
                    with receiver.lock:
                        receiver.requests.append(req)
                        nth = sum(1 for r in receiver.requests if r["id"] == req["id"])
                    status, delay = receiver.respond(req, nth)
                    time.sleep(delay)
                    self.send_response(status)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender went away

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def ids(self) -> list[str]:
        with self.lock:
            return [r["id"] for r in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def start_worker(te: RunEnv, tmp: Path) -> subprocess.Popen[bytes]:
    """A worker-only process (no HTTP), ready once it logs that its roles run."""
    log = tmp / f"worker-{secrets.token_hex(4)}.log"
    proc = te.spawn("serve", "--roles", "worker", extra={"TRACKD_LOG_LEVEL": "info"}, log=log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        return "running roles worker" in log.read_text()

    try:
        wait_for(ready, timeout=90, interval=0.1)
    except BaseException:
        _stop([proc])
        raise
    return proc


def start(te: RunEnv, tmp: Path, roles: str, extra: dict[str, str]) -> Server:
    """Like `start_server`, with more patience for a busy machine."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    proc = te.spawn("serve", "--roles", roles, extra={"TRACKD_HTTP_PORT": str(port), **extra}, log=log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=90)
    except BaseException:
        _stop([proc])
        raise
    return Server(f"http://127.0.0.1:{port}", proc, log)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass
class Fleet:
    """This module's own processes, besides the session server (which runs every role)."""

    fast: Server  # api + worker with a short retry schedule
    strict: Server  # api with TRACKD_WEBHOOK_ALLOW_PRIVATE=0
    worker: subprocess.Popen[bytes]  # one more worker (tests/faults SIGKILLs one of its own)
    tenants: tuple[Any, Any]


@pytest.fixture(scope="module")
def fleet(testenv: RunEnv, make_tenant: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("hooks")
    with ThreadPoolExecutor(5) as pool:  # processes start slowly: start them together
        fast = pool.submit(start, testenv, tmp, "api,worker", {"TRACKD_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2"})
        strict = pool.submit(start, testenv, tmp, "api", {"TRACKD_WEBHOOK_ALLOW_PRIVATE": "0"})
        worker = pool.submit(start_worker, testenv, tmp)
        a, b = pool.submit(make_tenant, "wa"), pool.submit(make_tenant, "wb")
        futures.wait([fast, strict, worker, a, b])  # type: ignore[arg-type]  # mixed result types
    started = [f.result().proc for f in (fast, strict) if f.exception() is None]
    if worker.exception() is None:
        started.append(worker.result())
    if len(started) < 3 or a.exception() or b.exception():
        _stop(started)
        raise RuntimeError("could not start this module's processes") from next(
            f.exception() for f in (fast, strict, worker, a, b) if f.exception()
        )
    f = Fleet(fast.result(), strict.result(), worker.result(), (a.result(), b.result()))
    yield f
    _stop([f.fast.proc, f.strict.proc, f.worker])


def shipment(t: Any, tracking: str) -> str:
    r = t.http.post("/v1/shipments", json={"tracking_number": tracking})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def milestone(t: Any, tracking: str, code: str, at: datetime) -> None:
    r = t.http.post(
        "/v1/events", json={"occurred_at": at.isoformat(), "shipment": tracking, "milestone": {"code": code}}
    )
    assert r.status_code == 202, r.text


def subscribe(t: Any, url: str, events: list[str], **extra: Any) -> dict[str, Any]:
    r = t.http.post("/v1/webhooks", json={"url": url, "events": events, **extra})
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def deliveries(t: Any, webhook_id: str, status: str | None = None) -> list[dict[str, Any]]:
    params = {"limit": "500", **({"status": status} if status else {})}
    r = t.http.get(f"/v1/webhooks/{webhook_id}/deliveries", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def settled(te: RunEnv, t: Any, webhook_id: str, n: int) -> Callable[[], list[dict[str, Any]] | None]:
    """A predicate: all `n` deliveries finished. Retries another worker scheduled on a long (default)
    schedule are brought forward, as a test clock would."""

    def check() -> list[dict[str, Any]] | None:
        te.sql(
            "WITH u AS (UPDATE webhook_deliveries SET next_attempt_at = now() WHERE webhook_id = %s"
            " AND status = 'pending' AND next_attempt_at > now() + interval '1 second' RETURNING 1)"
            " SELECT count(*) FROM u",
            webhook_id,
        )
        items = deliveries(t, webhook_id)
        done = [d for d in items if d["status"] != "pending"]
        return items if len(items) >= n and len(done) == len(items) else None

    return check


T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def test_crud_validation_and_isolation(fleet: Fleet) -> None:
    b, a = fleet.tenants  # `a` owns the webhooks here; `b` must not see them
    sid = shipment(a, "HOOK-CRUD-1")
    created = subscribe(a, "http://127.0.0.1:9/x", ["status.changed", "delivered"], shipment_ids=[sid])
    assert created["secret"].startswith("whsec_")
    assert created["enabled"] is True
    assert created["shipment_ids"] == [sid]
    wid = created["id"]
    got = a.http.get(f"/v1/webhooks/{wid}").json()
    assert "secret" not in got
    assert got["events"] == ["status.changed", "delivered"]
    second = subscribe(a, "https://127.0.0.1:9/y", ["position"])
    page = a.http.get("/v1/webhooks", params={"limit": 1}).json()
    assert [w["id"] for w in page["items"]] == [second["id"]]
    assert page["next_cursor"]
    rest = a.http.get("/v1/webhooks", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert [w["id"] for w in rest["items"]] == [wid]
    assert rest["next_cursor"] is None
    patched = a.http.patch(f"/v1/webhooks/{wid}", json={"events": ["eta.changed"], "enabled": False})
    assert patched.status_code == 200
    assert patched.json()["events"] == ["eta.changed"]
    assert patched.json()["enabled"] is False
    for bad in (
        {"url": "http://127.0.0.1:9/", "events": ["nope"]},
        {"url": "ftp://127.0.0.1/", "events": ["position"]},
        {"url": "http://127.0.0.1:9/", "events": []},
        {"url": "http://127.0.0.1:9/", "events": ["position"], "shipment_ids": ["shp_missing"]},
    ):
        r = a.http.post("/v1/webhooks", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"] == "ValidationError"
    for method, path in (
        ("GET", f"/v1/webhooks/{wid}"),
        ("PATCH", f"/v1/webhooks/{wid}"),
        ("DELETE", f"/v1/webhooks/{wid}"),
        ("GET", f"/v1/webhooks/{wid}/deliveries"),
        ("POST", f"/v1/webhooks/{wid}/rotate"),
    ):
        r = b.http.request(method, path, json={} if method == "PATCH" else None)
        assert r.status_code == 404, (method, path, r.text)
    assert not {wid, second["id"]} & {
        w["id"] for w in b.http.get("/v1/webhooks", params={"limit": 500}).json()["items"]
    }
    assert a.http.delete(f"/v1/webhooks/{wid}").status_code == 204
    assert a.http.get(f"/v1/webhooks/{wid}").status_code == 404


def test_status_change_is_delivered_signed_and_rotation_signs_twice(
    fleet: Fleet, testenv: RunEnv, receiver: Receiver
) -> None:
    tenant = fleet.tenants[0]
    sid = shipment(tenant, "HOOK-SIGN-1")
    other = shipment(tenant, "HOOK-SIGN-2")
    hook = subscribe(tenant, receiver.url, ["status.changed", "delivered"], shipment_ids=[sid])
    milestone(tenant, "HOOK-SIGN-2", "departed", T0)  # filtered out: another shipment
    milestone(tenant, "HOOK-SIGN-1", "delivered", T0 + timedelta(hours=1))
    items = wait_for(settled(testenv, tenant, hook["id"], 2))
    assert sorted(d["type"] for d in items) == ["delivered", "status.changed"]
    assert all(d["status"] == "succeeded" and len(d["attempts"]) == 1 for d in items)
    assert items[0]["attempts"][0]["status_code"] == 200
    got = wait_for(lambda: receiver.requests if len(receiver.requests) >= 2 else None)
    assert [r["json"]["type"] for r in got] == ["status.changed", "delivered"]  # in order
    for req in got:
        data = standardwebhooks.Webhook(hook["secret"]).verify(req["body"], req["headers"])
        assert data["data"]["shipment_id"] == sid
        assert "seq" not in data["data"]
        assert data["data"]["status"] == "delivered"
        assert data["data"]["type"] == "status.changed"
        assert data["timestamp"] == data["data"]["occurred_at"]
    assert {r["id"] for r in got} == {d["id"] for d in items}
    assert all(r["json"]["data"]["shipment_id"] != other for r in got)

    rotated = tenant.http.post(f"/v1/webhooks/{hook['id']}/rotate")
    assert rotated.status_code == 200
    assert rotated.json()["secret"] != hook["secret"]
    assert rotated.json()["previous_secret_expires_at"]
    milestone(tenant, "HOOK-SIGN-1", "returned", T0 + timedelta(hours=2))
    wait_for(lambda: len(receiver.requests) >= 3)
    last = receiver.requests[-1]
    assert len(last["headers"]["webhook-signature"].split(" ")) == 2
    for secret in (hook["secret"], rotated.json()["secret"]):
        standardwebhooks.Webhook(secret).verify(last["body"], last["headers"])


def test_failing_twice_then_ok_shows_three_attempts(fleet: Fleet, testenv: RunEnv) -> None:
    tenant = fleet.tenants[0]

    def respond(_req: dict[str, Any], nth: int) -> tuple[int, float]:
        return (500, 0.0) if nth <= 2 else (200, 0.0)

    rec = Receiver(respond)
    try:
        sid = shipment(tenant, "HOOK-RETRY-1")
        hook = subscribe(tenant, rec.url, ["status.changed"], shipment_ids=[sid])
        milestone(tenant, "HOOK-RETRY-1", "departed", T0)
        (item,) = wait_for(settled(testenv, tenant, hook["id"], 1), timeout=30)
        assert item["status"] == "succeeded"
        assert [a["status_code"] for a in item["attempts"]] == [500, 500, 200]
        assert [a["error"] for a in item["attempts"]] == ["HTTP 500", "HTTP 500", None]
        assert all(a["latency_ms"] is not None and a["at"] for a in item["attempts"])
        assert rec.ids() == [item["id"]] * 3
        # a manual retry sends it again, same webhook-id
        r = tenant.http.post(f"/v1/webhooks/{hook['id']}/deliveries/{item['id']}/retry")
        assert r.status_code == 202
        wait_for(lambda: len(rec.ids()) == 4)
        assert rec.ids()[-1] == item["id"]
        assert tenant.http.post(f"/v1/webhooks/{hook['id']}/deliveries/msg_nope/retry").status_code == 404
        # replay queues the kept message again as a new delivery
        since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        until = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        r = tenant.http.post(f"/v1/webhooks/{hook['id']}/replay", json={"from": since, "until": until})
        assert r.status_code == 202
        assert r.json() == {"count": 1}
        wait_for(lambda: len(set(rec.ids())) == 2)
        assert len(deliveries(tenant, hook["id"], "succeeded")) in (1, 2)
    finally:
        rec.close()


def test_per_shipment_order_holds_while_an_earlier_message_is_retried(fleet: Fleet, testenv: RunEnv) -> None:
    tenant = fleet.tenants[0]

    def respond(req: dict[str, Any], nth: int) -> tuple[int, float]:
        first = req["json"]["data"]["status"] == "info_received"
        return (500, 0.0) if first and nth <= 2 else (200, 0.0)

    rec = Receiver(respond)
    try:
        sid = shipment(tenant, "HOOK-ORDER-1")
        sid2 = shipment(tenant, "HOOK-ORDER-2")
        hook = subscribe(tenant, rec.url, ["status.changed"], shipment_ids=[sid, sid2])
        for i, code in enumerate(["booked", "departed", "customs_hold", "customs_released"]):
            milestone(tenant, "HOOK-ORDER-1", code, T0 + timedelta(hours=i))
        milestone(tenant, "HOOK-ORDER-2", "departed", T0)
        items = wait_for(settled(testenv, tenant, hook["id"], 5), timeout=30)
        assert all(d["status"] == "succeeded" for d in items)
        mine = [r["json"]["data"] for r in rec.requests if r["json"]["data"]["shipment_id"] == sid]
        assert [(d["status"], d["substatus"]) for d in mine] == [
            ("info_received", None),
            ("info_received", None),
            ("info_received", None),
            ("in_transit", None),
            ("customs", "customs.hold"),
            ("in_transit", "customs.released"),
        ]
        other = [d for d in items if d["shipment_id"] != sid]
        assert len(other) == 1
        assert len(other[0]["attempts"]) == 1
    finally:
        rec.close()


def test_concurrent_workers_never_send_one_attempt_twice(fleet: Fleet, testenv: RunEnv) -> None:
    # worker processes: the session server's, this module's `fast` one and its extra one
    tenant = fleet.tenants[0]
    rec = Receiver(lambda _req, _n: (200, 0.02))
    try:
        n = 30
        sids = [shipment(tenant, f"HOOK-PAR-{i}") for i in range(n)]
        hook = subscribe(tenant, rec.url, ["status.changed", "delivered"], shipment_ids=sids)
        for code, hours in (("departed", 0), ("delivered", 5)):
            batch = [
                {"occurred_at": (T0 + timedelta(hours=hours)).isoformat(), "shipment": f"HOOK-PAR-{i}"}
                | {"milestone": {"code": code}}
                for i in range(n)
            ]
            assert tenant.http.post("/v1/events", json=batch).status_code == 202
        items = wait_for(settled(testenv, tenant, hook["id"], 3 * n), timeout=30)
        assert len(items) == 3 * n
        received = rec.ids()
        assert len(received) == sum(len(d["attempts"]) for d in items) == 3 * n
        for d in items:
            assert d["status"] == "succeeded"
            assert received.count(d["id"]) == len(d["attempts"]) == 1
        for sid in sids:  # and per shipment in order: the status change, then its `delivered` copy
            mine = [r["json"] for r in rec.requests if r["json"]["data"]["shipment_id"] == sid]
            assert [(m["type"], m["data"]["status"]) for m in mine] == [
                ("status.changed", "in_transit"),
                ("status.changed", "delivered"),
                ("delivered", "delivered"),
            ]
    finally:
        rec.close()


def test_private_and_metadata_destinations_are_refused_at_creation(fleet: Fleet) -> None:
    t = fleet.tenants[0]
    before = {w["id"] for w in t.http.get("/v1/webhooks", params={"limit": 500}).json()["items"]}
    with httpx.Client(base_url=fleet.strict.url, headers={"Authorization": f"Bearer {t.api_key}"}, timeout=30) as http:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost:9/hook",
            "http://[::1]/hook",
            "http://10.0.0.1/hook",
            "http://172.16.0.1/hook",
            "http://192.168.1.1/hook",
            "http://100.64.0.1/hook",
            "http://[fe80::1]/hook",
            "http://[::ffff:10.0.0.1]/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.google.internal/computeMetadata/v1/",
        ):
            r = http.post("/v1/webhooks", json={"url": url, "events": ["position"]})
            assert r.status_code == 422, (url, r.text)
            assert r.json()["error"] == "ValidationError"
            assert "refused" in r.json()["detail"], r.text
        # a public literal passes the guard (subscribing sends nothing; disabled, it is never sent to)
        ok = http.post(
            "/v1/webhooks",
            json={"url": "https://93.184.216.34/hook", "events": ["eta.changed"]}
            | {"enabled": False, "shipment_ids": []},
        )
        assert ok.status_code == 201, ok.text
        r = http.patch(f"/v1/webhooks/{ok.json()['id']}", json={"url": "http://10.1.2.3/"})
        assert r.status_code == 422
        assert http.delete(f"/v1/webhooks/{ok.json()['id']}").status_code == 204
    after = {w["id"] for w in t.http.get("/v1/webhooks", params={"limit": 500}).json()["items"]}
    assert after == before


def test_metadata_destination_is_refused_at_delivery(fleet: Fleet, testenv: RunEnv, receiver: Receiver) -> None:
    tenant = fleet.tenants[0]
    sid = shipment(tenant, "HOOK-META-1")
    hook = subscribe(tenant, receiver.url, ["status.changed"], shipment_ids=[sid])
    # what a DNS change or an old row could leave behind: every worker refuses it, whatever its settings
    testenv.sql(
        "WITH u AS (UPDATE webhooks SET url = %s WHERE id = %s RETURNING 1) SELECT count(*) FROM u",
        "http://169.254.169.254/latest/meta-data/",
        hook["id"],
    )
    milestone(tenant, "HOOK-META-1", "departed", T0)

    def attempted() -> dict[str, Any] | None:
        items = deliveries(tenant, hook["id"])
        return items[0] if items and items[0]["attempts"] else None

    item = wait_for(attempted)
    first = item["attempts"][0]
    assert first["status_code"] is None
    assert "refused" in first["error"]
    assert "metadata" in first["error"]
    assert receiver.requests == []
    assert tenant.http.delete(f"/v1/webhooks/{hook['id']}").status_code == 204


def test_an_endpoint_failing_for_days_is_disabled(fleet: Fleet, testenv: RunEnv) -> None:
    tenant = fleet.tenants[0]
    rec = Receiver(lambda _req, _n: (503, 0.0))
    try:
        sid = shipment(tenant, "HOOK-DOWN-1")
        hook = subscribe(tenant, rec.url, ["status.changed"], shipment_ids=[sid])
        testenv.sql(
            "WITH u AS (UPDATE webhooks SET failing_since = now() - interval '4 days' WHERE id = %s RETURNING 1)"
            " SELECT count(*) FROM u",
            hook["id"],
        )
        milestone(tenant, "HOOK-DOWN-1", "departed", T0)
        got = wait_for(lambda: (w := tenant.http.get(f"/v1/webhooks/{hook['id']}").json())["enabled"] is False and w)
        assert "HTTP 503" in got["disabled_reason"]
        (item,) = deliveries(tenant, hook["id"])
        assert item["status"] == "pending"  # kept, sent again once the endpoint is enabled
        again = tenant.http.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": True}).json()
        assert again["enabled"] is True
        assert again["disabled_reason"] is None
        assert tenant.http.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    finally:
        rec.close()
