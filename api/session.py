"""`/v1/session`: sign a browser in with the API key once; it then sends a session cookie.

`POST` takes the key (`{"api_key": ...}` or `Authorization: Bearer`) and sets the cookie (see
`api/session_token.py`); `GET` answers the session's tenant and expiry, never the key: the REST
routes and the websocket take the cookie, so the page's script never holds it; `DELETE` signs out
(clears the cookie). `POST` and `DELETE` from a page of another origin are refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel, Field

from api import session_token
from api.deps import Shared, api_key_scheme, bearer, session_scheme
from trackd import tenant_store
from trackd.errors import Unauthorized

router = APIRouter(tags=["session"])


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SignIn(BaseModel):
    api_key: str = Field(min_length=1, max_length=200)


class Session(BaseModel):
    tenant: str
    expires_at: str = Field(description="when the cookie expires (ISO 8601, UTC)")


def _cross_site(request: Request) -> bool:
    return ("origin" in request.headers or "sec-fetch-site" in request.headers) and not session_token.same_origin(
        request
    )


@router.post("/v1/session", response_model=Session, dependencies=[Depends(api_key_scheme)])
async def sign_in(
    request: Request, response: Response, state: Shared, body: Annotated[SignIn | None, Body()] = None
) -> Session:
    """Check the API key and set the session cookie (12 h)."""
    if _cross_site(request):
        raise Unauthorized("sign-in from a page of another origin")
    key = bearer(request) or (body.api_key if body else None)
    if not key:
        raise Unauthorized('missing {"api_key": ...} or Authorization: Bearer <api_key>')
    tenant = await tenant_store.tenant_for_api_key(state.pool, key)
    if tenant is None:
        raise Unauthorized("unknown API key")
    value, expires = await session_token.seal(request, key, state.clock())
    session_token.set_cookie(response, request, value, expires)
    return Session(tenant=tenant.name, expires_at=_iso(expires))


@router.get("/v1/session", response_model=Session, dependencies=[Depends(session_scheme)])
async def current(request: Request, response: Response, state: Shared) -> Session:
    """The signed-in session, from its cookie; 401 without a valid one."""
    found = await session_token.unseal(request, state.clock())
    tenant = await tenant_store.tenant_for_api_key(state.pool, found[0]) if found else None
    if found is None or tenant is None:
        raise Unauthorized("not signed in")
    response.headers["Cache-Control"] = "no-store"
    return Session(tenant=tenant.name, expires_at=_iso(found[1]))


@router.delete("/v1/session", status_code=204, dependencies=[Depends(session_scheme)])
async def sign_out(request: Request) -> Response:
    """Clear the session cookie."""
    if _cross_site(request):
        raise Unauthorized("sign-out from a page of another origin")
    response = Response(status_code=204)
    session_token.clear_cookie(response, request)
    return response
