"""/healthz (alive), /readyz (database, Redis and broker reachable), /metrics (Prometheus).

`/metrics` is open unless `TRACKD_METRICS_TOKEN` is set; then it wants `Authorization: Bearer
<token>` (compared in constant time) and answers 401 without it."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any
from urllib.parse import urlparse

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import schemas
from api.deps import Shared, bearer
from api.errors import JSONBody
from api.schemas import answers
from trackd import db, metrics
from trackd.errors import Unauthorized

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=answers(schemas.Health))
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _broker_ok(url: str) -> bool:
    u = urlparse(url)
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(u.hostname or "127.0.0.1", u.port or 1883), 2)
    except (OSError, TimeoutError):
        return False
    w.close()
    return True


@router.get(
    "/readyz",
    responses={
        200: {"model": schemas.Readiness, "description": "every dependency is reachable"},
        503: {"model": schemas.Readiness, "description": "a dependency is not reachable (`checks` says which)"},
    },
)
async def readyz(state: Shared) -> JSONBody:
    checks: dict[str, Any] = {}
    try:
        await db.ping(state.pool, timeout_s=2)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    checks["bus"] = "ok" if await state.bus.ping() else "down"
    broker = state.extras.get("mqtt_url") or state.settings.mqtt()
    checks["broker"] = "ok" if await _broker_ok(broker) else "down"
    subscribed = state.extras.get("mqtt_subscribed")
    if subscribed is not None:
        checks["mqtt_ingest"] = "ok" if subscribed.is_set() else "not subscribed yet"
    ready = all(v == "ok" for v in checks.values())
    return JSONBody({"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"description": "Prometheus text"}})
async def prometheus(request: Request, state: Shared) -> Response:
    token = state.settings.metrics_token.get_secret_value() if state.settings.metrics_token else ""
    if token and not hmac.compare_digest((bearer(request) or "").encode(), token.encode()):  # empty is unset
        raise Unauthorized("missing or wrong Authorization: Bearer <metrics token>")
    metrics.record_pool("main", state.pool.get_stats())
    if state.guest_pool is not None:
        metrics.record_pool("guest", state.guest_pool.get_stats())
    if state.write_pool is not None:
        metrics.record_pool("write", state.write_pool.get_stats())
    # Rendered off the event loop, so that a scrape never holds up the requests being served.
    body = await asyncio.to_thread(generate_latest, metrics.REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
