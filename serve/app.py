"""The FastAPI application of the `api` role: its routers, limits and the static dashboard, over the typed
state that `serve.roles` opens."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import devices, errors, health, quarantine, shipments
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
    health.router,
    shipments.router,
    devices.router,
    quarantine.router,
    ingest_routes.router,
    gateway.router,
    notify_routes.router,
    links.router,
)


def static_dir() -> str:
    return str(resources.files("dashboards") / "static")


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
    """Document the 422 answers as they are sent: `{"error", "detail"}`, not FastAPI's default."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()
            schema.setdefault("components", {}).setdefault("schemas", {})["HTTPValidationError"] = {
                "title": "Error",
                "type": "object",
                "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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
    )
    errors.install(app)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    for router in ROUTERS:
        app.include_router(router)

    openapi_errors(app)
    static = static_dir()
    app.mount("/static", StaticFiles(directory=static, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(f"{static}/index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/config.json", include_in_schema=False)
    async def config() -> dict[str, str | None]:
        return {"tile_url": settings.tile_url, "tile_attribution": settings.tile_attribution}

    return app
