"""Sign-in that lasts: the session cookie made from the API key (its attributes, what it opens,
cross-site requests refused, sign-out), the websocket it opens from this origin only, and in
Chromium one sign-in for every tab of a browser, whose pages never hold the key, with a deep link of
filters and a shipment that survives a reload."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from playwright.sync_api import Page, WebSocket, sync_playwright
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

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
    assert sorted(body) == ["expires_at", "tenant"]
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
        current = browser.get("/v1/session")
        assert current.json() == body
        assert tenant.api_key not in current.text
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


def stream(server: Server, cookie: str | None = None, origin: str | None = None, token: str = "") -> ClientConnection:
    url = server.url.replace("http://", "ws://") + "/v1/stream" + (f"?token={token}" if token else "")
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else None
    return connect(url, origin=origin, additional_headers=headers, open_timeout=5)


def refused(server: Server, **how: str) -> dict[str, str]:
    """The 401 answer to a handshake, as JSON."""
    with pytest.raises(InvalidStatus) as denied:
        stream(server, **how)
    assert denied.value.response.status_code == 401
    body: dict[str, str] = orjson.loads(denied.value.response.body or b"{}")
    assert body["error"] == "Unauthorized"
    return body


def test_stream_takes_the_cookie_from_this_origin_only(server: Server, tenant: Tenant) -> None:
    sid = shipment(tenant, f"WSC-{tenant.name}")
    cookie = sign_in(server, tenant.api_key).cookies[COOKIE]
    here = server.url

    with stream(server, cookie, origin=here) as ws:
        ws.send('{"op": "subscribe", "all": true}')
        snap = orjson.loads(ws.recv(timeout=5))
        assert snap["type"] == "snapshot"
        assert [s["id"] for s in snap["shipments"]] == [sid]

    # Another site's page (or a client that names no page) cannot use the browser's cookie.
    foreign = refused(server, cookie=cookie, origin="https://elsewhere.example")
    assert "origin" in foreign["detail"]
    assert refused(server, cookie=cookie, origin="null")["detail"] == foreign["detail"]
    assert refused(server, cookie=cookie)["detail"] == foreign["detail"]
    assert "sign in again" in refused(server, cookie=cookie[:-4] + "AAAA", origin=here)["detail"]
    assert "missing" in refused(server, origin=here)["detail"]

    # The API key works as before, from anywhere, and wins over a cookie.
    with stream(server, cookie, origin="https://elsewhere.example", token=tenant.api_key) as ws:
        ws.send('{"op": "ping"}')
        assert orjson.loads(ws.recv(timeout=5)) == {"type": "pong"}
    assert refused(server, cookie=cookie, origin=here, token="tk_" + "x" * 43)["detail"] == "unknown API key"


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
            sockets: list[str] = []

            def watch(ws: WebSocket) -> None:
                sockets.append(ws.url)

            first = context.new_page()
            first.on("pageerror", lambda exc: errors.append(str(exc)))
            first.on("websocket", watch)
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
            second.on("websocket", watch)
            second.goto(f"{server.url}/#shipment={moving}&status=in_transit&q={prefix}-A")
            connected(second)
            assert second.is_hidden("#login")
            # Both tabs stream on the cookie alone: the key is in no socket's address, nor in the page.
            assert len(sockets) == 2
            assert all(url == server.url.replace("http://", "ws://") + "/v1/stream" for url in sockets)
            assert second.evaluate("() => window.trackd.state.tenant") == tenant.name
            session = second.evaluate("() => fetch('v1/session').then((r) => r.text())")
            assert orjson.loads(session)["tenant"] == tenant.name
            assert tenant.api_key not in session
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
