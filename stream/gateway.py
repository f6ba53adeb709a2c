"""`GET /v1/stream`: the websocket endpoint.

The handshake is authenticated (`Authorization: Bearer <api_key>` or `?token=`, else a browser's
session cookie, which counts only from a page of this origin: no cross-site websocket hijacking);
missing or wrong credentials are answered with an HTTP 401 before the upgrade. After that the socket has two tasks:
the receiver parses client operations (`stream.protocol`) and applies them to this process's
`Hub`; the relay sends what the hub queued for the client's `Session`, in order, and closes the
socket when the hub closes the session (1013 for a client too far behind, 1008 after too many bad
frames in a row, 1001 at shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool
from starlette.websockets import WebSocketDisconnect

from api import session_token
from api.deps import AppState
from stream import protocol
from stream.hub import Hub
from stream.protocol import Message, Ping, ProtocolError, Selector, Subscribe
from stream.session import Session, SessionClosed
from trackd import store, tenant_store
from trackd.errors import TrackdError
from trackd.store import Tenant

log = logging.getLogger("trackd.stream")

router = APIRouter()

MAX_BAD_FRAMES = 10  # bad frames in a row tolerated; one more closes the socket with 1008
CLOSE_POLICY_VIOLATION = 1008


class StoreSource:
    """Snapshots and resumes read from the database through `trackd.store`."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def snapshot(self, tenant_id: int, selector: Selector) -> tuple[int, list[Message]]:
        ids = sorted(selector.shipments) if selector.shipments is not None else None
        bbox = selector.bbox.as_tuple() if selector.bbox is not None else None
        return await store.stream_snapshot(self._pool, tenant_id, ids, bbox)

    async def outbox_after(self, tenant_id: int, after: int, limit: int) -> list[Message] | None:
        return await store.outbox_after(self._pool, tenant_id, after, limit)


def api_key(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return websocket.query_params.get("token") or None


async def deny(websocket: WebSocket, status: int, code: str, detail: str) -> None:
    """Refuse the handshake with an HTTP answer (websocket denial response extension), else 403."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=detail)


async def authenticate(websocket: WebSocket, state: AppState) -> Tenant | None:
    """The tenant of the handshake's API key, else of its session cookie; None without either."""
    key = api_key(websocket)
    if key:
        return await tenant_store.tenant_for_api_key(state.pool, key)
    return await session_token.tenant_for_cookie(websocket, state.clock())


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.trackd  # put there by serve.app
    try:
        tenant = await authenticate(websocket, state)
    except TrackdError as exc:
        await deny(websocket, exc.status, exc.code, exc.detail)
        return
    if tenant is None:
        if api_key(websocket):
            detail = "unknown API key"
        elif session_token.COOKIE in websocket.cookies:
            detail = "the session cookie has expired or its API key no longer works: sign in again"
        else:
            detail = "missing Authorization: Bearer <api_key> (or ?token=, or the session cookie)"
        await deny(websocket, 401, "Unauthorized", detail)
        return
    hub: Hub = websocket.app.state.hub  # put there by serve.app
    limit = state.settings.stream_max_sockets_per_tenant
    if hub.sockets(tenant.id) >= limit:  # one tenant's sockets must not take every other's memory
        await deny(websocket, 429, "RateLimited", f"this tenant already has {limit} stream sockets on this server")
        return
    await websocket.accept()
    session = hub.connect(tenant.id)
    receiver = asyncio.create_task(receive(websocket, hub, session, StoreSource(state.pool)))
    sender = asyncio.create_task(relay(websocket, session))
    try:
        await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.disconnect(session)
        for task in (receiver, sender):
            task.cancel()
        for task in (receiver, sender):
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError):
                await task


async def receive(websocket: WebSocket, hub: Hub, session: Session, source: StoreSource) -> None:
    """Apply the client's operations in order until it goes away."""
    bad = 0
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        frame = message.get("text")
        if frame is None:
            frame = message.get("bytes")
        if frame is None:
            continue
        try:
            op = protocol.parse(frame)
        except ProtocolError as exc:
            bad += 1
            session.push(protocol.error(exc.code, exc.detail))
            if bad > MAX_BAD_FRAMES:
                hub.close(
                    session, CLOSE_POLICY_VIOLATION, f"more than {MAX_BAD_FRAMES} bad frames in a row", drain=True
                )
            continue
        bad = 0
        try:
            if isinstance(op, Ping):
                session.push(protocol.pong())
            elif isinstance(op, Subscribe):
                await hub.subscribe(session, op, source)
            else:
                hub.unsubscribe(session, op.selector)
        except TrackdError as exc:
            session.push(protocol.error(exc.code, exc.detail))
        except Exception:
            log.exception("stream: operation failed")
            session.push(protocol.error("InternalError", "the operation failed; try again"))


async def relay(websocket: WebSocket, session: Session) -> None:
    """Send what the hub queued for this session, in order; close the socket when the hub says."""
    try:
        while True:
            for frame in await session.next_batch():
                await websocket.send_text(frame)
    except SessionClosed as closed:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await websocket.close(code=closed.code, reason=closed.reason)
    except (WebSocketDisconnect, OSError):
        return
