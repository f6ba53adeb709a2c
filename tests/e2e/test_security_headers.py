"""Security headers on every answer, content security policies the pages actually run under (in
Chromium), and the per-tenant cap on stream sockets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import RunEnv, Server, Tenant, start_server, stop_server
from tests.e2e.test_dashboard_browser import chromium_page

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def shared_page(tenant: Tenant) -> str:
    """The tracking page path of a shipment with a route to draw."""
    number = f"CSP-{tenant.name}"
    r = tenant.http.post(
        "/v1/shipments",
        json={
            "tracking_number": number,
            "legs": [
                {
                    "mode": "road",
                    "origin": {"name": "Lyon", "country": "FR", "lat": 45.76, "lon": 4.84},
                    "destination": {"name": "Milan", "country": "IT", "lat": 45.46, "lon": 9.19},
                }
            ],
        },
    )
    assert r.status_code == 201, r.text
    events = [
        {
            "occurred_at": (T0 + timedelta(minutes=i)).isoformat(),
            "shipment": number,
            "position": {"lat": 45.7 - i * 0.01, "lon": 5.0 + i * 0.05},
        }
        for i in range(20)
    ]
    assert tenant.http.post("/v1/events", json=events).status_code == 202
    link = tenant.http.post(f"/v1/shipments/{r.json()['id']}/share").json()
    return f"/track/{link['token']}"


def test_every_answer_carries_the_security_headers(server: Server, tenant: Tenant) -> None:
    page = shared_page(tenant)
    with httpx.Client(base_url=server.url, timeout=10) as public:
        for path in ("/", "/healthz", "/v1/shipments", page, "/track/not-a-token"):
            r = public.get(path)
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["x-frame-options"] == "DENY", path
            assert r.headers["referrer-policy"] == "no-referrer", path
        dashboard = public.get("/").headers["content-security-policy"]
        assert "script-src 'self';" in dashboard
        assert "frame-ancestors 'none'" in dashboard
        track = public.get(page).headers["content-security-policy"]
        assert "script-src 'self' 'sha256-" in track
        assert "'unsafe-inline'" not in track.split("script-src", 1)[1].split(";", 1)[0]
        assert "content-security-policy" not in public.get("/healthz").headers  # JSON needs none


def test_the_tracking_page_map_runs_under_its_policy(server: Server, tenant: Tenant) -> None:
    path = shared_page(tenant)
    violations: list[str] = []
    with chromium_page() as page:
        page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
        page.goto(server.url + path)
        page.wait_for_selector("#route-map.leaflet-container", timeout=10_000)
        page.wait_for_selector("#route-map canvas", state="attached", timeout=10_000)  # drawn by the inline script
    assert violations == []


def test_the_dashboard_runs_under_its_policy(server: Server, tenant: Tenant) -> None:
    violations: list[str] = []
    with chromium_page() as page:
        page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
        page.goto(server.url + "/")
        page.wait_for_selector(".leaflet-container", timeout=10_000)
    assert violations == []


def test_a_tenant_gets_at_most_its_share_of_stream_sockets(testenv: RunEnv, tmp_path: Path, make_tenant: Any) -> None:
    srv = start_server(testenv, tmp_path, roles="api", extra={"TRACKD_STREAM_MAX_SOCKETS_PER_TENANT": "3"})
    try:
        greedy, other = make_tenant("ws"), make_tenant("ws")
        url = srv.url.replace("http://", "ws://") + "/v1/stream"
        held = [connect(url, additional_headers={"Authorization": f"Bearer {greedy.api_key}"}) for _ in range(3)]
        try:
            with pytest.raises(InvalidStatus) as refused:
                connect(url, additional_headers={"Authorization": f"Bearer {greedy.api_key}"})
            assert refused.value.response.status_code == 429
            with connect(url, additional_headers={"Authorization": f"Bearer {other.api_key}"}) as ws:
                ws.send('{"op": "ping"}')
                assert "pong" in str(ws.recv(timeout=5))
        finally:
            for ws in held:
                ws.close()
        with connect(url, additional_headers={"Authorization": f"Bearer {greedy.api_key}"}) as again:
            again.send('{"op": "ping"}')
            assert "pong" in str(again.recv(timeout=5))  # a closed socket frees its place
    finally:
        stop_server(srv)
