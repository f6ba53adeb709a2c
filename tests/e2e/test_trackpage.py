"""The public tracking page in Chromium on a phone: the tenant's branding (name, colour, a logo
from another origin under the page's policy, support link), the progress steps in order with the
current one marked, origin and destination, and the styled, localized pages of an unknown (404)
and a revoked (410) link."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import RunEnv, Server, Tenant, wait_for
from tests.e2e.test_dashboard_browser import chromium_page, iso
from trackd import db, tenant_store

PHONE = {"width": 390, "height": 844}
BRAND_COLOUR = "#c2410c"
LOGO = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="120" height="32"><rect width="120" height="32" fill="#fff"/></svg>'
)


class _Logo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/svg+xml")
        self.send_header("Content-Length", str(len(LOGO)))
        self.end_headers()
        self.wfile.write(LOGO)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def logo_url() -> Iterator[str]:
    """A logo served from an origin other than trackd's, as a tenant's CDN would."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Logo)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/logo.svg"
    httpd.shutdown()
    httpd.server_close()


async def _branded_tenant(dsn: str, name: str, logo: str) -> dict[str, str]:
    """A tenant made in process (no CLI start-up), branded as `trackd tenant set` does."""
    pool = await db.open_pool(dsn, 1)
    try:
        made = await tenant_store.create_tenant(pool, name, None)
        brand = {"brand_name": "Acme Parcels", "brand_colour": BRAND_COLOUR, "brand_logo_url": logo}
        await tenant_store.update_settings(pool, name, {**brand, "support_url": "https://acme.example/help"})
    finally:
        await pool.close()
    return made


@pytest.fixture
def acme(testenv: RunEnv, server: Server, logo_url: str) -> Iterator[Tenant]:
    made = asyncio.run(_branded_tenant(testenv.dsn, f"tp{secrets.token_hex(3)}", logo_url))
    headers = {"Authorization": f"Bearer {made['api_key']}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        yield Tenant(made["tenant"], made["api_key"], made["ingest_secret"], http)


def branded_shipment(tenant: Tenant) -> tuple[str, str]:
    """(shipment id, tracking link path) of a shipment Shanghai -> Rotterdam in customs paperwork."""
    number = f"TP-{tenant.name.upper()}"
    created = tenant.http.post(
        "/v1/shipments",
        json={
            "tracking_number": number,
            "carrier": "Acme Ocean",
            "legs": [
                {
                    "mode": "sea",
                    "origin": {"name": "Shanghai", "country": "CN", "lat": 31.23, "lon": 121.47},
                    "destination": {"name": "Rotterdam", "country": "NL", "lat": 51.95, "lon": 4.14},
                }
            ],
        },
    )
    assert created.status_code == 201, created.text
    sid: str = created.json()["id"]
    t0 = datetime.now(UTC) - timedelta(days=20)
    codes = ["booked", "picked_up", "departed", "arrived", "customs_submitted"]
    events = [
        {"shipment": number, "occurred_at": iso(t0 + timedelta(days=i * 4)), "milestone": {"code": code}}
        for i, code in enumerate(codes)
    ]
    assert tenant.http.post("/v1/events", json=events).status_code == 202
    link = tenant.http.post(f"/v1/shipments/{sid}/share")
    assert link.status_code == 201, link.text
    path = f"/track/{link.json()['token']}"
    assert wait_for(lambda: tenant.http.get(f"/v1/shipments/{sid}").json()["status"] == "customs", timeout=10)
    return sid, path


STEPS_JS = """() => [...document.querySelectorAll('.steps li')].map((li) => ({
  step: li.dataset.step, state: li.className, current: li.getAttribute('aria-current'),
  name: li.querySelector('.name').textContent}))"""


def test_tracking_page_on_a_phone(server: Server, acme: Tenant) -> None:
    sid, path = branded_shipment(acme)
    violations: list[str] = []
    with chromium_page() as page:
        page.set_viewport_size(PHONE)
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.set_extra_http_headers({"Accept-Language": "en-GB,en;q=0.9"})
        answer = page.goto(server.url + path)
        assert answer is not None
        assert answer.status == 200

        steps = page.evaluate(STEPS_JS)
        assert [s["step"] for s in steps] == [
            "ordered",
            "booked",
            "in_transit",
            "customs",
            "out_for_delivery",
            "delivered",
        ]
        assert [s["name"] for s in steps] == [
            "Ordered",
            "Booked",
            "In transit",
            "Customs",
            "Out for delivery",
            "Delivered",
        ]
        assert [s["state"] for s in steps] == ["step done"] * 3 + ["step current"] + ["step todo"] * 2
        assert [s["current"] for s in steps] == [None, None, None, "step", None, None]
        # The current step is drawn in the brand's colour; steps to come are not.
        rgb = "rgb(194, 65, 12)"
        assert page.eval_on_selector(".step.current .dot", "e => getComputedStyle(e).borderTopColor") == rgb
        assert page.eval_on_selector(".step.todo .dot", "e => getComputedStyle(e).borderTopColor") != rgb
        assert page.eval_on_selector("#brand", "e => getComputedStyle(e).backgroundColor") == rgb

        assert page.inner_text("#origin") == "Shanghai, China"
        assert page.inner_text("#destination") == "Rotterdam, Netherlands"
        assert page.get_attribute("#brand img.logo", "alt") == "Acme Parcels"
        page.wait_for_function("() => document.querySelector('#brand img.logo').naturalWidth === 120", timeout=5000)
        assert page.get_attribute("#support", "href") == "https://acme.example/help"
        assert page.inner_text("#support") == "Contact Acme Parcels"
        assert page.title() == f"Acme Parcels · Shipment tracking · TP-{acme.name.upper()}"
        assert "Amsterdam time (" in page.inner_text("#zone")
        # Laid out for the phone: nothing wider than the screen.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]

        page.set_extra_http_headers({"Accept-Language": "de-DE,de;q=0.9"})
        unknown = page.goto(server.url + "/track/no-such-link")
        assert unknown is not None
        assert unknown.status == 404
        assert page.get_attribute("html", "lang") == "de"
        assert page.inner_text("#ended h1") == "Sendungslink nicht gefunden"
        assert page.eval_on_selector("#ended", "e => getComputedStyle(e).borderTopLeftRadius") == "12px"  # styled
        assert page.query_selector("#brand") is None  # nobody's link: no one's branding

        token = path.rsplit("/", 1)[1]
        assert acme.http.delete(f"/v1/shipments/{sid}/share/{token}").status_code == 204
        gone = page.goto(server.url + path)
        assert gone is not None
        assert gone.status == 410
        assert page.inner_text("#ended h1") == "Dieser Sendungslink ist abgelaufen"
        assert page.inner_text("#brand") == ""  # the logo alone, as on the live page
        assert page.get_attribute("#brand img.logo", "alt") == "Acme Parcels"
        assert page.inner_text("#support") == "Acme Parcels kontaktieren"
    assert violations == []
