"""The live map in a real browser (Debian's Chromium through Playwright) against a running server:
sign-in, markers from REST and the websocket, the side panel, filters and the connection badge."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.conftest import Server, Tenant

CHROMIUM = "/usr/bin/chromium"
WITHIN_MS = 5000


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A 1280x800 page in headless Chromium; fails (never skips) when Chromium is not installed."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium chromium-driver)")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
        finally:
            browser.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def test_live_map(server: Server, tenant: Tenant) -> None:
    with chromium_page() as page:
        check_live_map(server, tenant, page)


def check_live_map(server: Server, tenant: Tenant, page: Page) -> None:
    number = f"BRW-{tenant.name.upper()}"
    created = tenant.http.post(
        "/v1/shipments",
        json={
            "tracking_number": number,
            "carrier": "Browser Haulage",
            "legs": [
                {
                    "mode": "road",
                    "origin": {"name": "Lyon", "country": "FR", "lat": 45.76, "lon": 4.84},
                    "destination": {"name": "Milan", "country": "IT", "lat": 45.46, "lon": 9.19},
                }
            ],
        },
    )
    assert created.status_code == 201, created.text
    sid = created.json()["id"]

    page.goto(server.url + "/")
    page.fill("#api-key", tenant.api_key)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#conn-status[data-state=connected]", timeout=10_000)
    page.wait_for_function("id => window.trackd.markers.has(id)", arg=sid, timeout=10_000)
    start = page.evaluate("id => window.trackd.markers.get(id).getLatLng()", sid)
    assert abs(start["lat"] - 45.76) < 0.01, start  # drawn at the leg's origin until it reports a position

    page.evaluate("id => window.trackd.select(id)", sid)
    page.wait_for_function("() => !document.getElementById('panel').hidden", timeout=WITHIN_MS)
    assert page.text_content("#panel-tracking") == number

    now = datetime.now(UTC)
    events: list[dict[str, Any]] = [
        {
            "shipment": number,
            "occurred_at": iso(now - timedelta(minutes=2)),
            "milestone": {
                "code": "picked_up",
                "classifier": "actual",
                "location": {"name": "Lyon", "country": "FR", "lat": 45.76, "lon": 4.84},
            },
        },
        {
            "shipment": number,
            "occurred_at": iso(now - timedelta(minutes=1)),
            "position": {"lat": 45.57, "lon": 6.92, "speed_kmh": 84, "heading": 95},
        },
    ]
    res = tenant.signed("native", orjson.dumps(events))
    assert res.status_code == 202, res.text

    page.wait_for_function(
        "id => { const p = window.trackd.markers.get(id).getLatLng();"
        " return Math.abs(p.lat - 45.57) < 1e-6 && Math.abs(p.lng - 6.92) < 1e-6; }",
        arg=sid,
        timeout=WITHIN_MS,
    )
    page.wait_for_selector("#panel-status [data-status=in_transit]", timeout=WITHIN_MS)
    page.wait_for_function(
        "() => /picked up/i.test(document.getElementById('panel-timeline').textContent)", timeout=WITHIN_MS
    )

    page.select_option("#filter-status", "delivered")
    page.wait_for_function("id => !window.trackd.visibleIds().includes(id)", arg=sid, timeout=WITHIN_MS)
    page.select_option("#filter-status", "in_transit")
    page.wait_for_function("id => window.trackd.visibleIds().includes(id)", arg=sid, timeout=WITHIN_MS)

    assert page.get_attribute("#conn-status", "data-state") == "connected"
