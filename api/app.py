"""The FastAPI application of the `api` role: lifespan, typed state, routers, static dashboard."""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api import devices, errors, health, quarantine, shipments
from api.deps import AppState
from api.errors import error_response
from ingest import webhooks
from trackd.settings import Settings

log = logging.getLogger("trackd.api")

OPTIONAL_ROUTERS = ("stream.gateway", "api.hooks", "api.track")


def static_dir() -> str:
    return str(resources.files("dashboards") / "static")


def create_app(settings: Settings, state: AppState | None = None, *, own_resources: bool = True) -> FastAPI:
    """The app. With `state` given, it serves over those resources (shared with other roles)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from api.runtime import Resources

        if state is not None:
            app.state.trackd = state
            yield
            return
        res = await Resources.open(settings, with_hub=True)
        app.state.trackd = res.state
        try:
            yield
        finally:
            await res.close()

    app = FastAPI(
        title="trackd",
        version="0.1.0",
        summary="Real-time shipment tracking and visibility",
        lifespan=lifespan,
    )
    errors.install(app)

    @app.middleware("http")
    async def body_limit(request: Request, call_next: Any) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return error_response(
                413, "PayloadTooLarge", f"body of {declared} bytes is over the {settings.max_body_bytes}-byte limit"
            )
        response: Response = await call_next(request)
        return response

    for module in (health, shipments, devices, quarantine, webhooks):
        app.include_router(module.router)
    for name in OPTIONAL_ROUTERS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        app.include_router(mod.router)

    static = static_dir()
    app.mount("/static", StaticFiles(directory=static, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(f"{static}/index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/config.json", include_in_schema=False)
    async def config() -> dict[str, str | None]:
        return {"tile_url": settings.tile_url, "tile_attribution": settings.tile_attribution}

    return app
