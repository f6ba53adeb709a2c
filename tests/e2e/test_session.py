"""Sign-in that lasts: the session cookie made from the API key (its attributes, what it opens,
cross-site requests refused, sign-out), and in Chromium one sign-in for every tab of a browser, with
a deep link of filters and a shipment that survives a reload."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from playwright.sync_api import Page, sync_playwright

from api.session_token import COOKIE
from tests.conftest import Server, Tenant
from tests.e2e.test_dashboard_browser import CHROMIUM, WITHIN_MS, iso

SEA_LEG = {
    "mode": "sea",
    "origin": {"name": "Singapore", "unlocode": "SGSIN", "lat": 1.26, "lon": 103.84},
    "destination": {"name": "Rotterdam", "unlocode": "NLRTM", "lat": 51.95, "lon": 4.14},
}


def sign_in(server: Server, key: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/session", json={"api_key": key}, headers=headers, timeout=10)


def test_session_cookie(server: Server, tenant: Tenant) -> None:
    assert sign_in(server, "tk_" + "x" * 43).status_code == 401
    assert sign_in(server, tenant.api_key, Origin="https://elsewhere.example").status_code == 401

    res = sign_in(server, tenant.api_key)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["tenant"] == tenant.name
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert timedelta(hours=11, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=12)
    header = res.headers["set-cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in header.split(";")[1:]}
    assert {"httponly", "max-age", "expires", "path", "samesite"} <= attributes
    assert "samesite=strict" in header.lower()
    assert "max-age=43200" in header.lower()
    assert "secure" not in attributes  # plain http here; https answers set it
    value = res.cookies[COOKIE]
    assert tenant.api_key not in value

    host = server.url.removeprefix("http://")
    with httpx.Client(base_url=server.url, cookies={COOKIE: value}, timeout=10) as browser:
        assert browser.get("/v1/session").json()["tenant"] == tenant.name
        assert browser.get("/v1/shipments").status_code == 200
        shipment = {"tracking_number": f"SESS-{tenant.name}", "legs": [SEA_LEG]}
        forged = browser.post("/v1/shipments", json=shipment, headers={"Origin": "https://elsewhere.example"})
        assert forged.status_code == 401, forged.text
        assert browser.post("/v1/shipments", json=shipment).status_code == 401  # no Origin: not a page of ours
        made = browser.post("/v1/shipments", json=shipment, headers={"Origin": f"http://{host}"})
        assert made.status_code == 201, made.text
        out = browser.delete("/v1/session", headers={"Origin": f"http://{host}"})
        assert out.status_code == 204
        cleared = out.headers["set-cookie"].lower()
        assert cleared.startswith(f"{COOKIE}=")
        assert "max-age=0" in cleared

    tampered = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
    assert httpx.get(f"{server.url}/v1/shipments", cookies={COOKIE: tampered}, timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/v1/session", timeout=10).status_code == 401


def shipment(tenant: Tenant, number: str) -> str:
    r = tenant.http.post(
        "/v1/shipments", json={"tracking_number": number, "carrier": "Session Lines", "legs": [SEA_LEG]}
    )
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def connected(page: Page) -> None:
    page.wait_for_selector("#conn-status[data-state=connected]", timeout=10_000)


def test_one_sign_in_and_deep_links(server: Server, tenant: Tenant) -> None:
    prefix = f"DL-{tenant.name.upper()}"
    moving, still, other = (shipment(tenant, f"{prefix}-{n}") for n in ("A1", "A2", "B1"))
    departed = [
        {
            "shipment": f"{prefix}-A1",
            "occurred_at": iso(datetime.now(UTC) - timedelta(hours=1)),
            "milestone": {"code": "departed", "classifier": "actual", "location": {"unlocode": "SGSIN"}},
        }
    ]
    assert tenant.signed("native", orjson.dumps(departed)).status_code == 202
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium chromium-driver)")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            first = context.new_page()
            first.on("pageerror", lambda exc: errors.append(str(exc)))
            first.goto(server.url + "/")
            first.wait_for_selector("#login:not([hidden])", timeout=10_000)
            first.fill("#api-key", tenant.api_key)
            first.click("#login-form button")
            connected(first)
            assert [c["name"] for c in context.cookies()] == [COOKIE]
            assert all(c["httpOnly"] for c in context.cookies())

            # A second tab of the same browser is signed in already, and opens the link it was given.
            second = context.new_page()
            second.on("pageerror", lambda exc: errors.append(str(exc)))
            second.goto(f"{server.url}/#shipment={moving}&status=in_transit&q={prefix}-A")
            connected(second)
            assert second.is_hidden("#login")
            showing(second, moving, f"{prefix}-A1", [moving])
            assert second.input_value("#filter-status") == "in_transit"
            assert second.input_value("#search") == f"{prefix}-A"

            second.reload()
            connected(second)
            showing(second, moving, f"{prefix}-A1", [moving])

            # Changed live, the filters go into the address: a reload keeps them too.
            second.select_option("#filter-status", "")
            second.wait_for_function("() => !location.hash.includes('status=')", timeout=WITHIN_MS)
            second.reload()
            connected(second)
            showing(second, moving, f"{prefix}-A1", [moving, still])
            assert other not in second.evaluate("() => window.trackd.visibleIds()")

            second.click("#sign-out")
            second.wait_for_selector("#login:not([hidden])", timeout=WITHIN_MS)
            third = context.new_page()
            third.goto(server.url + "/")
            third.wait_for_selector("#login:not([hidden])", timeout=10_000)
        finally:
            browser.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def showing(page: Page, selected: str, number: str, visible: list[str]) -> None:
    """The panel shows `selected` (tracking `number`) and the map only `visible`."""
    page.wait_for_function(
        "n => !document.getElementById('panel').hidden && document.getElementById('panel-tracking').textContent === n",
        arg=number,
        timeout=WITHIN_MS,
    )
    page.wait_for_function(
        "ids => JSON.stringify(window.trackd.visibleIds().slice().sort()) === JSON.stringify(ids)",
        arg=sorted(visible),
        timeout=WITHIN_MS,
    )
    assert page.evaluate("() => window.trackd.state.selected") == selected
