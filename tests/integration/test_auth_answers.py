"""What answers tell an outsider: device keys are long and a taken one does not say who holds it; an
inbound webhook for an unknown tenant is answered like a bad signature, in about the same time; an
aborted upload is one log line, not a traceback."""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import RunEnv, Server, Tenant, start_server, stop_server, wait_for
from trackd import db, tenant_store

GENERIC_401 = {"error": "Unauthorized", "detail": "unknown tenant or bad signature"}


def test_device_keys_are_at_least_8_characters(make_tenant: Any) -> None:
    tenant: Tenant = make_tenant("dk")
    short = tenant.http.post("/v1/devices", json={"id": "d-7", "key": "k" * 6 + "x"})
    assert short.status_code == 422, short.text
    assert short.json()["error"] == "ValidationError"
    assert "key" in short.json()["detail"]
    exact = tenant.http.post("/v1/devices", json={"id": "d-8", "key": secrets.token_hex(4)})
    assert exact.status_code == 201, exact.text
    made = tenant.http.post("/v1/devices", json={"id": "d-made"})
    assert made.status_code == 201
    assert len(made.json()["key"]) >= 16
    assert [d["id"] for d in tenant.http.get("/v1/devices").json()["items"]].count("d-7") == 0


def test_a_taken_device_key_does_not_tell_who_holds_it(make_tenant: Any) -> None:
    a: Tenant = make_tenant("dk")
    b: Tenant = make_tenant("dk")
    key = f"shared-{secrets.token_hex(8)}"
    assert a.http.post("/v1/devices", json={"id": "one", "key": key}).status_code == 201
    other_tenant = b.http.post("/v1/devices", json={"id": "two", "key": key})
    same_tenant = a.http.post("/v1/devices", json={"id": "three", "key": key})
    assert other_tenant.status_code == 409
    assert same_tenant.status_code == 409
    assert other_tenant.json() == same_tenant.json()
    assert "device key not available" in other_tenant.json()["detail"]
    assert b.http.get("/v1/devices").json()["items"] == []
    assert [d["id"] for d in a.http.get("/v1/devices").json()["items"]] == ["one"]


def _post(server: Server, tenant: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/ingest/{tenant}/native", content=body, headers=headers, timeout=30)


def test_unknown_tenant_is_answered_like_a_bad_signature(testenv: RunEnv, server: Server, make_tenant: Any) -> None:
    tenant: Tenant = make_tenant("eq")
    body = orjson.dumps({"occurred_at": "2026-11-01T00:00:00Z", "shipment": "EQ-1", "position": {"lat": 1, "lon": 2}})
    bad = {"X-Trackd-Signature": "sha256=" + "0" * 64, "content-type": "application/json"}
    answers = [
        _post(server, tenant.name, body, bad),  # a known tenant, a bad signature
        _post(server, tenant.name, body, {"content-type": "application/json"}),  # ... no signature
        _post(server, f"no{secrets.token_hex(4)}", body, bad),  # an unknown tenant
        _post(server, f"no{secrets.token_hex(4)}", body, {"content-type": "application/json"}),
    ]
    assert [r.status_code for r in answers] == [401, 401, 401, 401]
    assert [r.json() for r in answers] == [GENERIC_401] * 4
    assert len({tuple(sorted((k, v) for k, v in r.headers.items() if k not in ("date",))) for r in answers}) == 1
    stored = testenv.sql(
        "SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s", tenant.name
    )
    assert stored[0][0] == 0


async def test_unknown_tenant_costs_what_a_bad_signature_does(testenv: RunEnv) -> None:
    """The work behind the answer is the same, so its time is too: a failing check runs the
    signature check four times and reads the database once, whether the tenant exists or not, with
    its secrets cached or not. (Wall-clock timing over HTTP is too noisy to assert on here.)"""
    pool = await db.open_pool(testenv.dsn, 2)
    try:
        name = f"eq{secrets.token_hex(3)}"
        made = await tenant_store.create_tenant(pool, name, None)
        unknown = f"no{secrets.token_hex(4)}"
        seen: list[str] = []

        def nobody_signed(secret: str) -> bool:
            seen.append(secret)
            return False

        # known and not cached yet, known and cached, unknown, unknown again: how often the real secret is tried
        for who, real in ((name, 1), (name, 2), (unknown, 0), (unknown, 0)):
            seen.clear()
            assert await tenant_store.tenant_for_signature(pool, who, None, nobody_signed) is None
            assert len(seen) == 4, who
            assert seen.count(made["ingest_secret"]) == real, who

        seen.clear()
        found = await tenant_store.tenant_for_signature(
            pool, name, None, lambda s: seen.append(s) or s == made["ingest_secret"]
        )
        assert found is not None
        assert found.name == name
        assert len(seen) == 2  # a good signature from the cache: both candidates, no database read
    finally:
        await pool.close()


def test_an_aborted_upload_is_one_log_line_not_a_traceback(testenv: RunEnv, tmp_path: Path) -> None:
    server = start_server(testenv, tmp_path, roles="api", extra={"TRACKD_LOG_LEVEL": "info"})
    try:
        host, port = server.url.removeprefix("http://").split(":")
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    b"POST /v1/ingest/anyone/native HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"X-Trackd-Signature: sha256=00\r\nContent-Length: 1000000\r\n\r\n" + b"[" * 1000
                )
                time.sleep(0.2)  # the server is reading the body when the client goes away

        def logged() -> list[str]:
            lines = server.log.read_text().splitlines()
            return [line for line in lines if "client disconnected" in line]

        wait_for(lambda: len(logged()) == 3, timeout=10)
        # Still serving, and nothing more than the three lines.
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    finally:
        stop_server(server)
    text = server.log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "ClientDisconnect" not in text
    assert [line for line in text.splitlines() if "client disconnected" in line] == logged()
    assert all("after 1000 bytes" in line and "/v1/ingest/anyone/native" in line for line in logged())
