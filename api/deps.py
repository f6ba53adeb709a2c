"""FastAPI dependencies, declared once as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from psycopg_pool import AsyncConnectionPool

from ingest.pipeline import Pipeline
from trackd import store
from trackd.bus import Bus
from trackd.errors import Unauthorized
from trackd.ledger import Evaluator
from trackd.relay import Relay
from trackd.settings import Settings
from trackd.store import Conn, Tenant


@dataclass
class AppState:
    """Everything the api role holds open for its lifetime (see `serve.app.lifespan`)."""

    settings: Settings
    pool: AsyncConnectionPool
    bus: Bus
    relay: Relay
    pipeline: Pipeline
    evaluator: Evaluator | None = None
    hub: Any = None
    extras: dict[str, Any] = field(default_factory=dict)


async def get_state(request: Request) -> AppState:  # async: a plain def would run in a worker thread
    state: AppState = request.app.state.trackd
    return state


State = Annotated[AppState, Depends(get_state)]


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def get_tenant(request: Request, state: State) -> Tenant:
    token = bearer(request)
    if token is None:
        raise Unauthorized("missing Authorization: Bearer <api_key>")
    tenant = await store.tenant_for_api_key(state.pool, token)
    if tenant is None:
        raise Unauthorized("unknown API key")
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_tenant)]


async def get_conn(state: State) -> AsyncIterator[Conn]:
    async with store.transaction(state.pool) as conn:
        yield conn


Db = Annotated[Conn, Depends(get_conn)]
Limit = Annotated[int, Query(ge=1, le=500, description="page size (default 50, at most 500)")]
Cursor = Annotated[str | None, Query(max_length=500, description="the next_cursor of the previous page")]
