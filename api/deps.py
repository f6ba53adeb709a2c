"""FastAPI dependencies, declared once as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool

from api import session_token
from trackd import store, tenant_store
from trackd.assessment import Evaluator
from trackd.bus import Bus
from trackd.errors import Unauthorized
from trackd.relay import Relay
from trackd.settings import Settings
from trackd.store import Conn, Tenant
from trackd.times import utcnow


@dataclass
class AppState:
    """The core resources every role of a process shares, opened and closed by `serve.roles`. Edges
    keep their own resources (the ingest pipeline, the stream hub) and their own dependencies."""

    settings: Settings
    pool: AsyncConnectionPool
    bus: Bus
    relay: Relay
    evaluator: Evaluator
    clock: Callable[[], datetime] = utcnow
    extras: dict[str, Any] = field(default_factory=dict)
    # Connections of their own for input no tenant is authenticated for yet (OsmAnd key lookups,
    # the unattributed sample), so that junk queues there and never for the tenants' connections.
    guest_pool: AsyncConnectionPool | None = None
    # The write path's connections (the ingest pipeline's, with generic plans), shown in /metrics.
    write_pool: AsyncConnectionPool | None = None

    @property
    def guests(self) -> AsyncConnectionPool:
        return self.guest_pool or self.pool


async def get_state(request: Request) -> AppState:  # async: a plain def would run in a worker thread
    state: AppState = request.app.state.trackd
    return state


# The process state a handler reads (named apart from `trackd.state.State`, a shipment's state).
Shared = Annotated[AppState, Depends(get_state)]


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


# Declares the API key in OpenAPI (a bearer security scheme on every route that takes a tenant);
# `get_tenant` reads and checks the header itself, so a missing or malformed one answers our 401.
api_key_scheme = HTTPBearer(
    auto_error=False, scheme_name="apiKey", description="the tenant's API key: `Authorization: Bearer tk_...`"
)
# ... and the dashboard's alternative, the session cookie `POST /v1/session` sets (api.session_token).
session_scheme = APIKeyCookie(
    name=session_token.COOKIE,
    auto_error=False,
    scheme_name="session",
    description="a browser's session, set by `POST /v1/session`; changes must come from this origin",
)


async def get_tenant(
    request: Request,
    state: Shared,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(api_key_scheme)] = None,
    _session: Annotated[str | None, Depends(session_scheme)] = None,
) -> Tenant:
    token = bearer(request)
    if token is None:
        signed_in = await session_token.tenant_for_cookie(request, state.clock())  # a browser's session
        if signed_in is not None:
            return signed_in
        raise Unauthorized("missing Authorization: Bearer <api_key>")
    tenant = await tenant_store.tenant_for_api_key(state.pool, token)
    if tenant is None:
        raise Unauthorized("unknown API key")
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_tenant)]


async def get_conn(state: Shared) -> AsyncIterator[Conn]:
    async with store.transaction(state.pool) as conn:
        yield conn


Db = Annotated[Conn, Depends(get_conn)]
Limit = Annotated[int, Query(ge=1, le=500, description="page size (default 50, at most 500)")]
Cursor = Annotated[str | None, Query(max_length=500, description="the next_cursor of the previous page")]
