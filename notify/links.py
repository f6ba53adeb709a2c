"""Public tracking links: `POST /v1/shipments/{id}/share` makes one; `GET /v1/track/{token}` (JSON)
and `GET /track/{token}` (the page) show the shipment to whoever holds the token;
`DELETE /v1/shipments/{id}/share/{token}` revokes one, `DELETE /v1/shipments/{id}/share` all.

The public view carries no internal ids and no raw payloads: only what an end customer needs, and
the positions only as precisely as the link allows (`position`: exact, coarse, none). Tokens are
192-bit random strings; only their SHA-256 is stored. Unknown tokens answer 404; expired and
revoked ones 410 (the page: a styled page in the reader's language, with the tenant's branding).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from datetime import timedelta
from functools import cache
from typing import Any, Literal

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from api import schemas
from api.deps import CurrentTenant, Shared
from api.schemas import answers
from dashboards import trackpage, trackpage_text
from notify import link_store
from trackd import registry, store, tenant_store
from trackd.errors import NotFound, TrackdError

router = APIRouter(tags=["tracking links"])

DEFAULT_EXPIRY_S = 30 * 86400
MAX_EXPIRY_S = 366 * 86400
MAX_ROUTE_POINTS = 500
_SQL_POINTS = 5_000  # positions thinned evenly in SQL first, then simplified here
COARSE_DECIMALS = 1  # coarse positions: rounded to 0.1 degree, about 11 km (city level)


class LinkEnded(TrackdError):
    """A tracking link that existed but has expired or been revoked; `brand` is its tenant's."""

    code = "Gone"
    status = 410

    def __init__(self, detail: str, brand: tenant_store.Brand) -> None:
        super().__init__(detail)
        self.brand = brand


class ShareIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_in_s: int = Field(DEFAULT_EXPIRY_S, ge=60, le=MAX_EXPIRY_S)
    position: Literal["exact", "coarse", "none"] = Field(
        "exact", description="how the route shows positions: as reported, rounded to 0.1 degree, or not at all"
    )


def public_route(points: Sequence[tuple[float, float]], position: str) -> list[tuple[float, float]]:
    """The route a link with this `position` setting shows: every point (`exact`), points rounded to
    0.1 degree with repeats in a row dropped (`coarse`), or nothing (`none`)."""
    if position == "none":
        return []
    if position == "exact":
        return list(points)
    out: list[tuple[float, float]] = []
    for lon, lat in points:
        p = (round(lon, COARSE_DECIMALS) + 0.0, round(lat, COARSE_DECIMALS) + 0.0)  # + 0.0: no -0.0
        if not out or out[-1] != p:
            out.append(p)
    return out


def simplify(points: Sequence[tuple[float, float]], max_points: int) -> list[tuple[float, float]]:
    """At most `max_points` of `points`, in order, keeping the ones that shape the line most
    (Douglas–Peucker ranks) and always the first and last."""
    n = len(points)
    if n <= max_points:
        return list(points)
    rank = [0.0] * n
    rank[0] = rank[-1] = math.inf
    stack = [(0, n - 1, math.inf)]
    while stack:
        lo, hi, ceiling = stack.pop()
        if hi - lo < 2:
            continue
        (ax, ay), (bx, by) = points[lo], points[hi]
        dx, dy = bx - ax, by - ay
        norm = math.hypot(dx, dy)
        best, far = -1.0, lo + 1
        for i in range(lo + 1, hi):
            px, py = points[i]
            d = abs(dx * (ay - py) - dy * (ax - px)) / norm if norm else math.hypot(px - ax, py - ay)
            if d > best:
                best, far = d, i
        rank[far] = min(best, ceiling)  # a point never outranks the one that split its span
        stack.append((lo, far, rank[far]))
        stack.append((far, hi, rank[far]))
    keep = sorted(sorted(range(n), key=lambda i: rank[i], reverse=True)[:max_points])
    return [points[i] for i in keep]


@cache
def _finder() -> Any:
    from timezonefinder import TimezoneFinder

    return TimezoneFinder()


def zone_at(destination: dict[str, Any] | None) -> str:
    """The IANA zone of the destination, for local times on the page; UTC when unknown."""
    if not destination or destination.get("lat") is None or destination.get("lon") is None:
        return "UTC"
    try:
        name = _finder().timezone_at(lng=float(destination["lon"]), lat=float(destination["lat"]))
    except (ValueError, OSError):
        return "UTC"
    return str(name) if name else "UTC"


_UNKNOWN = "no such tracking link"


async def public_track(state: Shared, token: str) -> dict[str, Any]:
    """The public JSON for a live token; NotFound for an unknown one, LinkEnded for an ended one."""
    now = state.clock()
    async with store.transaction(state.pool) as conn:
        link = await link_store.find_link(conn, token, now)
        if link is None:
            raise NotFound(_UNKNOWN)
        brand = await tenant_store.brand_for(conn, link.tenant_id)
        if not link.live:
            raise LinkEnded("this tracking link has expired or been revoked", brand)
        rows = await link_store.track_rows(conn, link.tenant_id, link.shipment_id, _SQL_POINTS)
    if rows is None:
        raise NotFound(_UNKNOWN)
    shipment, milestones, positions = rows
    legs = shipment["legs"] or []
    dest = (legs[-1].get("destination") or {}) if legs else {}
    origin = (legs[0].get("origin") or {}) if legs else {}
    points = public_route([(float(p["lon"]), float(p["lat"])) for p in positions], link.position)
    route = simplify(points, MAX_ROUTE_POINTS)
    return {
        "tracking_number": shipment["tracking_number"],
        "carrier": shipment["carrier"],
        "status": shipment["status"],
        "substatus": shipment["substatus"],
        "milestones": [
            {
                "code": m["code"],
                "occurred_at": m["occurred_at"].isoformat(),
                "location": (
                    {"name": m["location"].get("name"), "country": m["location"].get("country")}
                    if m["location"]
                    else None
                ),
            }
            for m in milestones
        ],
        "eta": shipment["eta"],
        "route": [[lon, lat] for lon, lat in route],
        "origin": ({k: origin.get(k) for k in ("name", "country")} if origin else None),
        "destination": ({k: dest.get(k) for k in ("name", "country", "lat", "lon")} if dest else None),
        "brand": brand.to_dict(),
        "updated_at": store.iso(shipment["updated_at"]),
    }


@router.post("/v1/shipments/{shipment_id}/share", status_code=201, response_model=answers(schemas.Share))
async def share_shipment(
    shipment_id: str, tenant: CurrentTenant, state: Shared, request: Request, body: ShareIn | None = None
) -> dict[str, Any]:
    """A public, read-only tracking link to the shipment, valid for `expires_in_s` (default 30 days),
    showing positions as `position` says (default `exact`; `coarse`: rounded to 0.1 degree; `none`)."""
    body = body or ShareIn(expires_in_s=DEFAULT_EXPIRY_S, position="exact")
    token = secrets.token_urlsafe(24)
    expires_at = state.clock() + timedelta(seconds=body.expires_in_s)
    async with store.transaction(state.pool) as conn:
        shipment_id = (await store.resolve_shipment(conn, tenant.id, shipment_id))["id"]  # an id or a tracking number
        await link_store.create_share(conn, tenant.id, shipment_id, token, expires_at, body.position)
    base = str(request.base_url).rstrip("/")
    return {"token": token, "url": f"{base}/track/{token}", "expires_at": expires_at.isoformat()}


@router.delete("/v1/shipments/{shipment_id}/share/{token}", status_code=204)
async def revoke_share(shipment_id: str, token: str, tenant: CurrentTenant, state: Shared) -> Response:
    """Revoke the link: from now on it answers 410, like an expired one."""
    async with store.transaction(state.pool) as conn:
        if not await link_store.revoke_share(conn, tenant.id, shipment_id, token, state.clock()):
            raise NotFound(f"no such tracking link to shipment {shipment_id!r}")  # the token is not echoed
    return Response(status_code=204)


@router.delete("/v1/shipments/{shipment_id}/share", response_model=answers(schemas.Revoked))
async def revoke_shares(shipment_id: str, tenant: CurrentTenant, state: Shared) -> dict[str, int]:
    """Revoke every live link to the shipment (for a link whose token was lost); `{"revoked": n}`."""
    async with store.transaction(state.pool) as conn:
        await registry.require_shipment(conn, tenant.id, shipment_id)
        n = await link_store.revoke_shares(conn, tenant.id, shipment_id, state.clock())
    return {"revoked": n}


@router.get(
    "/v1/track/{token}",
    response_model=answers(schemas.Track),
    responses={
        404: {"description": "no such tracking link"},
        410: {"description": "the link has expired or been revoked"},
    },
)
async def track_json(token: str, state: Shared, response: Response) -> dict[str, Any]:
    """What a tracking link shows: status, actual milestones, ETA, route so far. No authentication."""
    track = await public_track(state, token)
    response.headers["Cache-Control"] = "no-store"  # a revoked link must not live on in a cache
    return track


@router.get("/track/{token}", include_in_schema=False, response_class=HTMLResponse)
async def track_page(
    token: str, state: Shared, accept_language: str | None = Header(None, alias="accept-language")
) -> HTMLResponse:
    """The tracking page; for an unknown link a 404 page, for an expired or revoked one a 410 page
    (with the tenant's branding), both in the reader's language."""
    lang = trackpage_text.pick_language(accept_language)
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    try:
        track = await public_track(state, token)
    except (NotFound, LinkEnded) as exc:
        brand = exc.brand.to_dict() if isinstance(exc, LinkEnded) else None
        headers["Content-Security-Policy"] = trackpage.content_security_policy(
            (brand or {}).get("logo_url"), scripts=False
        )
        page = trackpage.render_ended(lang, isinstance(exc, LinkEnded), brand)
        return HTMLResponse(page, status_code=exc.status, headers=headers)
    page = trackpage.render(track, lang, zone_at(track["destination"]), state.clock())
    headers["Content-Security-Policy"] = trackpage.content_security_policy(track["brand"]["logo_url"])
    return HTMLResponse(page, headers=headers)
