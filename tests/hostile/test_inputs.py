"""The API against hostile input: generated requests on every operation, oversized bodies and
frames, floods, and secrets that must never be stored or logged in the clear."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ROOT, RunEnv, Server, Tenant, sign_hex, start_server, stop_server

PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"


@pytest.fixture(scope="module")
def fuzz_tenant(make_tenant: Any) -> Tenant:
    t: Tenant = make_tenant("fz")
    # something for the generated requests to find besides nothing
    r = t.http.post("/v1/shipments", json={"tracking_number": "FUZZ-1", "references": ["PO-1"]})
    assert r.status_code == 201, r.text
    return t


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


# Every operation of the document in one test item: 15 cases each (about 70 operations), and a
# timeout that covers them all rather than the suite's 120 s per item.
@pytest.mark.timeout(360)
@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_generated_requests_get_no_5xx_and_documented_answers(case: Any, fuzz_tenant: Tenant) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzz_tenant.api_key}"},
        checks=[not_a_server_error, response_schema_conformance],
        timeout=30,
    )


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_bodies_over_the_limit_are_413(tenant: Tenant, testenv: RunEnv) -> None:
    big = 6 * 1024 * 1024  # the default limit is 5 MiB
    declared = tenant.http.post("/v1/events", content=b"[" + b" " * big + b"]")
    assert declared.status_code == 413
    assert declared.json()["error"] == "PayloadTooLarge"
    # no Content-Length: refused once the limit is passed, without reading it all
    for path, headers in [
        ("/v1/events", {}),
        (f"/v1/ingest/{tenant.name}/native", {"X-Trackd-Signature": "sha256=" + "0" * 64, "authorization": ""}),
        ("/v1/shipments", {"content-type": "application/json"}),
    ]:
        r = tenant.http.post(path, content=_chunks(big), headers=headers)
        assert r.status_code == 413, (path, r.status_code, r.text[:200])
        assert r.json()["error"] == "PayloadTooLarge"
    events = testenv.sql(
        "SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s", tenant.name
    )
    assert events[0][0] == 0


async def test_websocket_frames_over_the_limit_close_the_socket(server: Server, tenant: Tenant) -> None:
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    async with connect(url, additional_headers={"Authorization": f"Bearer {tenant.api_key}"}, max_size=None) as conn:
        await conn.send(orjson.dumps({"op": "subscribe", "shipments": ["x" * 100] * 900}).decode())  # ~92 KB
        err = orjson.loads(await asyncio.wait_for(conn.recv(), 10))
        assert (err["type"], err["error"]) == ("error", "MessageTooLarge")

        async def send_too_much() -> None:
            # 2 MiB: over the 1 MiB frame limit. The server may close while the frame is still
            # being written (it reads the length first), so the send itself can see the close.
            await conn.send("{" + " " * (2 << 20) + "}")
            await asyncio.wait_for(conn.recv(), 10)

        with pytest.raises(ConnectionClosed) as closed:
            await send_too_much()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009  # message too big


def test_ingest_rate_limit_is_429_with_retry_after(testenv: RunEnv, tmp_path: Path, make_tenant: Any) -> None:
    t: Tenant = make_tenant("rl")
    srv = start_server(testenv, tmp_path, roles="api", extra={"TRACKD_INGEST_RATE_PER_S": "5"})
    try:
        answers: list[httpx.Response] = []
        started = time.monotonic()
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            for i in range(20):
                body = orjson.dumps(
                    {
                        "event_id": f"rl-{i}",
                        "occurred_at": 1_790_000_000 + i,
                        "device": "d1",
                        "position": {"lat": 1.0, "lon": 2.0},
                    }
                )
                sig = "sha256=" + sign_hex(t.ingest_secret, body)
                answers.append(
                    http.post(
                        f"/v1/ingest/{t.name}/native",
                        content=body,
                        headers={"X-Trackd-Signature": sig, "content-type": "application/json"},
                    )
                )
        elapsed = time.monotonic() - started
        codes = [r.status_code for r in answers]
        assert set(codes) == {202, 429}
        accepted = codes.count(202)
        # a burst of two seconds' worth (10), plus what refilled while the requests ran
        assert 10 <= accepted <= 10 + int(elapsed * 5) + 1
        limited = [r for r in answers if r.status_code == 429]
        assert all(r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1 for r in limited)
        assert {r.json()["error"] for r in limited} == {"RateLimited"}
        stored = testenv.sql(
            "SELECT event_id FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s ORDER BY 1", t.name
        )
        assert sorted(r[0] for r in stored) == sorted(f"rl-{i}" for i, c in enumerate(codes) if c == 202)
    finally:
        stop_server(srv)


def test_no_secret_is_stored_in_the_clear(tenant: Tenant, testenv: RunEnv) -> None:
    (row,) = testenv.sql("SELECT api_key_hash, ingest_secret_enc FROM tenants WHERE name = %s", tenant.name)
    assert bytes(row[0]) == hashlib.sha256(tenant.api_key.encode()).digest()
    assert tenant.ingest_secret not in row[1]
    dump = subprocess.run(
        [PG_DUMP, "--data-only", testenv.dsn], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert tenant.name in dump  # the dump is of the right database
    assert tenant.api_key not in dump
    assert tenant.api_key.removeprefix("tk_") not in dump
    assert tenant.ingest_secret not in dump
    assert tenant.ingest_secret.removeprefix("is_") not in dump


def test_secrets_are_compared_in_constant_time() -> None:
    signatures = (ROOT / "ingest" / "signatures.py").read_text()
    keys = (ROOT / "trackd" / "keys.py").read_text()
    assert "hmac.compare_digest(" in signatures
    assert "hmac.compare_digest(" in keys
    store = (ROOT / "trackd" / "tenant_store.py").read_text()  # where tenants and their keys are stored
    assert "keys.same(" in store  # the API key hash is compared through keys.same


async def test_no_secret_in_any_log_line(testenv: RunEnv, tmp_path: Path) -> None:
    password = "s3cretpw"
    dsn = testenv.dsn.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    assert password in dsn
    env = RunEnv(testenv.run_id, dsn, {**testenv.env, "TRACKD_DATABASE_URL": dsn, "TRACKD_LOG_LEVEL": "debug"})
    created = await asyncio.to_thread(env.trackd, "tenant", "create", f"logs{testenv.run_id}")
    assert created.returncode == 0, created.stderr
    t = orjson.loads(created.stdout)
    api_key, secret = t["api_key"], t["ingest_secret"]
    srv = await asyncio.to_thread(start_server, env, tmp_path)
    hook_secrets: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}) as http:
            r = await http.post("/v1/shipments", json={"tracking_number": "LOG-1"})
            assert r.status_code == 201, r.text
            good = orjson.dumps({"occurred_at": 1_790_000_000, "shipment": "LOG-1", "milestone": {"code": "picked_up"}})
            url = f"/v1/ingest/{t['tenant']}/native"
            ok = await http.post(url, content=good, headers={"X-Trackd-Signature": "sha256=" + sign_hex(secret, good)})
            assert ok.status_code == 202, ok.text
            bad = await http.post(url, content=good, headers={"X-Trackd-Signature": "sha256=" + sign_hex("nope", good)})
            assert bad.status_code == 401
            assert (
                await http.post(
                    url,
                    content=b"{not json",
                    headers={"X-Trackd-Signature": "sha256=" + sign_hex(secret, b"{not json")},
                )
            ).status_code in (400, 422)
            assert (await http.get("/v1/shipments", headers={"Authorization": f"Bearer {api_key}x"})).status_code == 401
            hooks = await http.post(
                "/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["status.changed"]}
            )
            if hooks.status_code != 404:  # where the notification hooks are part of the build
                assert hooks.status_code == 201, hooks.text
                hook_secrets.append(hooks.json()["secret"])
        ws = srv.url.replace("http://", "ws://") + f"/v1/stream?token={api_key}"
        async with connect(ws) as conn:
            await conn.send('{"op": "subscribe", "all": true}')
            assert orjson.loads(await asyncio.wait_for(conn.recv(), 10))["type"] == "snapshot"
    finally:
        await asyncio.to_thread(stop_server, srv)
    log = srv.log.read_text()
    assert "DEBUG" in log  # it did log at debug level
    leaks = [
        line
        for line in log.splitlines()
        if any(s in line for s in (api_key, secret, password, "whsec_", *hook_secrets))
    ]
    assert leaks == []
