"""The FastAPI application of the `api` role: its routers, limits and the static dashboard, over the typed
state that `serve.roles` opens."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import dcsa, devices, errors, health, places, promise, quarantine, session, shipments
from api import schemas as api_schemas
from api.deps import AppState
from api.errors import error_response
from ingest import routes as ingest_routes
from ingest.pipeline import Pipeline
from notify import links
from notify import routes as notify_routes
from stream import gateway
from stream.hub import Hub
from trackd.settings import Settings

log = logging.getLogger("trackd.api")

ROUTERS = (
    ingest_routes.router,  # first: most requests are ingest, and each is matched against the routes in order
    health.router,
    session.router,
    shipments.router,
    promise.router,
    devices.router,
    places.router,
    quarantine.router,
    gateway.router,
    notify_routes.router,
    links.router,
    dcsa.router,
)


def static_dir() -> str:
    return str(resources.files("dashboards") / "static")


class SecurityHeaders:
    """Every answer says: no sniffing, no framing, no referrer (share links carry tokens in their
    URL); an HTML page without a policy of its own gets the dashboard's: its own scripts and
    styles, the configured tile server's images, and the API and stream of this origin."""

    def __init__(self, app: ASGIApp, tile_url: str | None) -> None:
        self.app = app
        tiles = ""
        if tile_url:
            u = urlsplit(tile_url.replace("{s}", "*"))  # Leaflet's {s} subdomains: a CSP host wildcard
            tiles = f" {u.scheme}://{u.netloc}"
        self.policy = (
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
            f" img-src 'self' data: blob:{tiles}; connect-src 'self' ws: wss:;"
            " frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for name, value in (
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ):
                    if name not in names:
                        headers.append((name, value))
                html = any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)
                if html and b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", self.policy))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses a body over `limit` bytes with 413, whether declared (Content-Length) or streamed
    (chunked), without reading more of it than the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            detail = f"body of {int(declared)} bytes is over the {self.limit}-byte limit"
            await error_response(413, "PayloadTooLarge", detail)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise StarletteHTTPException(413, f"body is over the {self.limit}-byte limit")
            return message

        await self.app(scope, limited, send)


def openapi_errors(app: FastAPI) -> None:
    """Document the error answers as they are sent: `{"error", "detail"}` (FastAPI's 422 included),
    with 401 on the routes that take an API key and 404 on those that name an object."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()
            error = {
                "title": "Error",
                "type": "object",
                "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
            }
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["HTTPValidationError"] = schemas["Error"] = error
            for name, component in api_schemas.REQUEST_COMPONENTS.items():
                schemas.setdefault(name, component)
            as_error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            for path, item in schema.get("paths", {}).items():
                for op in item.values():
                    answers = op.setdefault("responses", {})
                    if op.get("security"):
                        answers.setdefault("401", {"description": "missing or unknown API key or session"})
                    if "{" in path:
                        answers.setdefault("404", {"description": "not found (another tenant's objects included)"})
                    for code, answer in answers.items():
                        if code.startswith("4") and "content" not in answer:
                            answer["content"] = as_error
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def docs_page(page: HTMLResponse) -> HTMLResponse:
    """An API docs page (vendored Swagger UI or ReDoc, nothing from elsewhere) under a policy of its
    own: the page's inline scripts by hash, inline styles, and workers from blob: (ReDoc's search)."""
    body = bytes(page.body)
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(m).digest()).decode()}'"
        for m in re.findall(rb"<script>(.*?)</script>", body, re.S)
    )
    policy = (
        f"default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
        " connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    return HTMLResponse(body, headers={"Content-Security-Policy": policy})


def create_app(settings: Settings, state: AppState, pipeline: Pipeline, hub: Hub | None) -> FastAPI:
    """The app, serving over what `serve.roles` opened: the shared state, the ingest pipeline and
    the stream hub (read by `api.deps`, `ingest.routes` and `stream.gateway`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.trackd = state
        app.state.pipeline = pipeline
        app.state.hub = hub
        yield

    app = FastAPI(
        title="trackd",
        version="0.1.0",
        summary="Real-time shipment tracking and visibility",
        lifespan=lifespan,
        docs_url=None,  # served below, from the vendored assets
        redoc_url=None,
    )
    errors.install(app)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders, tile_url=settings.tile_url)

    for router in ROUTERS:
        app.include_router(router)

    openapi_errors(app)
    static = static_dir()
    app.mount("/static", StaticFiles(directory=static, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(f"{static}/index.html", headers={"Cache-Control": "no-cache"})

    vendor, spec = "/static/vendor", app.openapi_url or "/openapi.json"
    swagger = docs_page(
        get_swagger_ui_html(
            openapi_url=spec,
            title="trackd API",
            swagger_js_url=f"{vendor}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{vendor}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{vendor}/swagger-ui/favicon-32x32.png",
        )
    )
    redoc = docs_page(
        get_redoc_html(
            openapi_url=spec,
            title="trackd API",
            redoc_js_url=f"{vendor}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{vendor}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return swagger

    @app.get("/redoc", include_in_schema=False)
    async def redoc_docs() -> Response:
        return redoc

    @app.get("/config.json", include_in_schema=False)
    async def config() -> dict[str, str | None]:
        return {"tile_url": settings.tile_url, "tile_attribution": settings.tile_attribution}

    return app
