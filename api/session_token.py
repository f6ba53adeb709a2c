"""Session cookies: a browser signs in once with the API key and then sends a cookie instead.

The cookie's value is the API key and its expiry, sealed with the key that seals the ingest secrets
(`TRACKD_SECRET_KEY`, or the database's keyring): nothing is stored per session, and a session
ends when it expires or its API key stops working (rotation ends it with the old key's grace). The
cookie is HttpOnly, SameSite=Strict, Secure over https. A request authenticated by the cookie that
changes something, and every websocket handshake it authenticates, must come from this origin
(`Origin`, else `Sec-Fetch-Site`), whatever the browser does with SameSite.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from fastapi import Request, Response
from starlette.requests import HTTPConnection

from trackd import keys, store, tenant_store
from trackd.errors import ConfigError, Unauthorized
from trackd.store import Tenant

COOKIE = "trackd_session"
LIFETIME = timedelta(hours=12)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BOX = "session_box"  # where AppState.extras keeps this process's box


async def _box(request: HTTPConnection) -> keys.SecretBox:
    state = request.app.state.trackd
    box: keys.SecretBox | None = state.extras.get(_BOX)
    if box is None:
        secret = state.settings.secret_key.get_secret_value() if state.settings.secret_key else None
        async with store.transaction(state.pool) as conn:
            box = state.extras[_BOX] = await tenant_store.box_for(conn, secret)
    return box


async def seal(request: Request, api_key: str, now: datetime) -> tuple[str, datetime]:
    """The cookie value for `api_key` (already checked) and when it expires."""
    expires = (now + LIFETIME).replace(microsecond=0)
    return (await _box(request)).seal(f"{int(expires.timestamp())}:{api_key}"), expires


async def unseal(request: HTTPConnection, now: datetime) -> tuple[str, datetime] | None:
    """The API key and expiry in the request's session cookie; None without a valid, live one."""
    value = request.cookies.get(COOKIE)
    if not value or len(value) > 1000:
        return None
    try:
        plain = (await _box(request)).open(value)
    except (ConfigError, ValueError):
        return None
    epoch, _, api_key = plain.partition(":")
    if not epoch.isdigit() or not api_key:
        return None
    expires = datetime.fromtimestamp(int(epoch), UTC)
    return (api_key, expires) if expires > now else None


def same_origin(request: HTTPConnection) -> bool:
    """Whether a browser says the request comes from a page of this origin (`Origin` names this
    server's `Host`; without it, `Sec-Fetch-Site: same-origin`)."""
    origin = request.headers.get("origin")
    if origin is not None:  # host and port only: behind a TLS proxy this server may see http
        return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")
    return request.headers.get("sec-fetch-site") == "same-origin"


async def tenant_for_cookie(request: HTTPConnection, now: datetime) -> Tenant | None:
    """The tenant of the request's session cookie; None without one. Unauthorized when a cookie
    authenticates a change (cross-site request forgery) or a websocket handshake (cross-site
    websocket hijacking) that does not come from this origin."""
    found = await unseal(request, now)
    if found is None:
        return None
    if request.scope["type"] == "websocket":
        if not same_origin(request):
            raise Unauthorized("a websocket authenticated by the session cookie must come from this origin")
    elif request.scope["method"] not in SAFE_METHODS and not same_origin(request):
        raise Unauthorized("a change authenticated by the session cookie must come from this origin")
    return await tenant_store.tenant_for_api_key(request.app.state.trackd.pool, found[0])


def set_cookie(response: Response, request: Request, value: str, expires: datetime) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(LIFETIME.total_seconds()),
        expires=expires,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", secure=request.url.scheme == "https", httponly=True, samesite="strict")
