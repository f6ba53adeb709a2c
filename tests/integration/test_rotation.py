"""`trackd tenant rotate`: a new API key or ingest secret, printed once; during the grace period the
old and the new one both work, after it only the new one."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
import orjson

from tests.conftest import RunEnv, Server, Tenant, sign_hex, wait_for

GRACE_H = 0.001  # 3.6 s: long enough to check both values, short enough to wait out


def rotate(testenv: RunEnv, name: str, what: str, grace_h: float) -> dict[str, Any]:
    r = testenv.trackd("tenant", "rotate", name, what, "--grace-hours", str(grace_h))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1  # one JSON object, once
    out: dict[str, Any] = orjson.loads(r.stdout)
    return out


def shipments_status(server: Server, api_key: str) -> int:
    return httpx.get(
        f"{server.url}/v1/shipments", headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ).status_code


def native_post(server: Server, tenant: str, secret: str, n: int) -> httpx.Response:
    """One position of shipment ROT-1, a new event for each `n`."""
    body = orjson.dumps(
        {"occurred_at": f"2026-11-01T00:00:{n:02d}Z", "shipment": "ROT-1", "position": {"lat": 1 + n / 100, "lon": 2}}
    )
    sig = "sha256=" + sign_hex(secret, body)
    return httpx.post(
        f"{server.url}/v1/ingest/{tenant}/native",
        content=body,
        headers={"X-Trackd-Signature": sig, "content-type": "application/json"},
        timeout=10,
    )


def test_rotated_api_key_works_alongside_the_old_one_until_the_grace_ends(
    testenv: RunEnv, server: Server, make_tenant: Any
) -> None:
    tenant: Tenant = make_tenant("rot")
    assert shipments_status(server, tenant.api_key) == 200
    out = rotate(testenv, tenant.name, "--api-key", GRACE_H)
    assert set(out) == {"tenant", "api_key", "previous_valid_until"}
    assert out["tenant"] == tenant.name
    new = out["api_key"]
    assert new.startswith("tk_")
    assert new != tenant.api_key
    until = datetime.fromisoformat(out["previous_valid_until"])
    assert 0 < until.timestamp() - time.time() <= GRACE_H * 3600 + 1

    assert shipments_status(server, new) == 200
    assert shipments_status(server, tenant.api_key) == 200  # the grace period
    # After it, only the new key (a running process may have cached the old one for a few seconds).
    wait_for(lambda: shipments_status(server, tenant.api_key) == 401, timeout=20, interval=0.2)
    assert time.time() >= until.timestamp()
    assert shipments_status(server, new) == 200
    assert shipments_status(server, tenant.api_key) == 401


def test_api_key_rotated_without_grace_stops_at_once(testenv: RunEnv, server: Server, make_tenant: Any) -> None:
    tenant: Tenant = make_tenant("rot")
    out = rotate(testenv, tenant.name, "--api-key", 0)
    assert shipments_status(server, tenant.api_key) == 401
    assert shipments_status(server, out["api_key"]) == 200
    again = rotate(testenv, tenant.name, "--api-key", 24)
    assert shipments_status(server, again["api_key"]) == 200
    assert shipments_status(server, out["api_key"]) == 200  # the previous one, now in its grace
    assert shipments_status(server, tenant.api_key) == 401  # only one previous key is kept


def test_rotated_ingest_secret_signs_alongside_the_old_one_until_the_grace_ends(
    testenv: RunEnv, server: Server, make_tenant: Any
) -> None:
    tenant: Tenant = make_tenant("rot")
    old = tenant.ingest_secret
    assert tenant.http.post("/v1/shipments", json={"tracking_number": "ROT-1"}).status_code == 201
    assert native_post(server, tenant.name, old, 1).status_code == 202  # the server now caches it
    out = rotate(testenv, tenant.name, "--ingest-secret", GRACE_H)
    assert set(out) == {"tenant", "ingest_secret", "previous_valid_until"}
    new = out["ingest_secret"]
    assert new.startswith("is_")
    assert new != old
    until = datetime.fromisoformat(out["previous_valid_until"])

    assert native_post(server, tenant.name, new, 2).status_code == 202  # at once, despite the cache
    assert native_post(server, tenant.name, old, 3).status_code == 202  # the grace period
    # The server's cache was refreshed by delivery 2, so the old secret ends exactly with its grace.
    time.sleep(max(until.timestamp() - time.time(), 0) + 0.3)
    assert native_post(server, tenant.name, old, 4).status_code == 401
    refused = native_post(server, tenant.name, old, 5)
    assert refused.status_code == 401
    assert refused.json() == {"error": "Unauthorized", "detail": "unknown tenant or bad signature"}
    assert native_post(server, tenant.name, new, 6).status_code == 202
    rows = testenv.sql("SELECT ingest_secret_enc, previous_ingest_secret_enc FROM tenants WHERE name = %s", tenant.name)
    assert new not in rows[0][0]
    assert old not in rows[0][1]  # kept encrypted, like the current one
    events = testenv.sql(
        "SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s", tenant.name
    )
    assert events[0][0] == 4  # deliveries 1, 2, 3 and 6; the refused ones stored nothing


def test_rotate_refuses_bad_arguments(testenv: RunEnv, make_tenant: Any) -> None:
    tenant: Tenant = make_tenant("rot")
    for args, code, word in (
        (("tenant", "rotate", "no-such-tenant", "--api-key"), 1, "no-such-tenant"),
        (("tenant", "rotate", tenant.name), 2, "--api-key"),
        (("tenant", "rotate", tenant.name, "--api-key", "--ingest-secret"), 2, "not allowed"),
        (("tenant", "rotate", tenant.name, "--api-key", "--grace-hours", "-1"), 2, "--grace-hours"),
        (("tenant", "rotate", tenant.name, "--api-key", "--grace-hours", "721"), 2, "--grace-hours"),
    ):
        r = testenv.trackd(*args)
        assert r.returncode == code, (args, r.stderr)
        assert r.stdout == ""
        assert r.stderr.count("\n") == 1, r.stderr
        assert word in r.stderr
