"""The API docs (/docs: Swagger UI, /redoc: ReDoc) in Chromium, from the vendored assets alone: every
operation rendered, no request leaving the server's origin, no policy violation."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
from playwright.sync_api import ConsoleMessage, Page, Request

from tests.conftest import Server
from tests.e2e.test_dashboard_browser import chromium_page

WITHIN_MS = 10_000


def operation_count(server: Server) -> int:
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    return sum(len(item) for item in doc["paths"].values())


def watch(page: Page) -> tuple[list[str], list[str]]:
    """The URLs the page requests and the errors its console reports (a CSP violation is one)."""
    requests: list[str] = []
    console: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if isinstance(r, Request) else None)
    page.on(
        "console", lambda m: console.append(m.text) if isinstance(m, ConsoleMessage) and m.type == "error" else None
    )
    return requests, console


def assert_local(server: Server, requests: list[str]) -> None:
    origin = urlsplit(server.url)
    foreign = [u for u in requests if urlsplit(u)[:2] != origin[:2] and not u.startswith(("blob:", "data:"))]
    assert foreign == []
    assert requests  # the watch saw the page at all


PAGES = (
    ("/docs", "#swagger-ui .opblock", "/static/vendor/swagger-ui/swagger-ui-bundle.js"),
    ("/redoc", "[id^='operation/']", "/static/vendor/redoc/redoc.standalone.js"),
)


def test_api_docs_render_offline(server: Server) -> None:
    expected = operation_count(server)
    with chromium_page() as page:
        requests, console = watch(page)
        for path, selector, asset in PAGES:
            requests.clear()
            console.clear()
            page.goto(server.url + path)
            page.wait_for_function(
                "([sel, n]) => document.querySelectorAll(sel).length === n", arg=[selector, expected], timeout=WITHIN_MS
            )
            assert page.locator(selector).count() == expected, path
            assert_local(server, requests)
            assert server.url + asset in requests
            assert server.url + "/openapi.json" in requests
            assert console == [], path
