"""/v1/places: a tenant's geofences, and the bundled ports and airports (read-only)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from api import schemas
from api.deps import CurrentTenant, Cursor, Db, Limit, Shared
from api.schemas import answers
from trackd import crossings, place_store, places, store
from trackd.errors import NotFound, TrackdError, ValidationError
from trackd.places import Geofence

router = APIRouter(prefix="/v1/places", tags=["places"])
Kind = Literal["port", "airport", "terminal", "warehouse", "customs", "border", "depot", "other"]


class ReadOnly(TrackdError):
    code = "Forbidden"
    status = 403


class PlaceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    kind: Kind
    geometry: dict[str, Any] = Field(description="GeoJSON Polygon, or Point with radius_m")
    radius_m: float | None = Field(None, description="for a Point: metres, 10 to 100,000")
    unlocode: str | None = Field(None, max_length=10)
    iata: str | None = Field(None, max_length=5)


class PlacePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    kind: Kind | None = None
    geometry: dict[str, Any] | None = None
    radius_m: float | None = None
    unlocode: str | None = Field(None, max_length=10)
    iata: str | None = Field(None, max_length=5)


def _code(v: str | None) -> str | None:
    return "".join(v.split()).upper() or None if v is not None else None


def _fence(place_id: str, d: dict[str, Any]) -> Geofence:
    return Geofence(
        place_id, d["name"], d["kind"], d["geometry"], d.get("radius_m"), _code(d.get("unlocode")), _code(d.get("iata"))
    )


async def _builtin_guard(place_id: str) -> None:
    await crossings.warm()
    if places.builtin_fence(place_id) is not None:
        raise ReadOnly(f"{place_id!r} is a bundled place and cannot be changed; create a place of your own")


@router.post("", status_code=201, response_model=answers(schemas.Place))
async def create_place(body: PlaceIn, tenant: CurrentTenant, state: Shared) -> dict[str, Any]:
    fence = _fence("new", body.model_dump())
    async with store.transaction(state.pool) as conn:
        row = await place_store.create_place(conn, tenant.id, fence)
    crossings.forget(tenant.id)
    return place_store.place_json(row)


@router.get("", response_model=answers(schemas.PlacePage))
async def list_places(
    tenant: CurrentTenant,
    db: Db,
    limit: Limit = 50,
    cursor: Cursor = None,
    kind: Annotated[str | None, Query(description="kinds, comma-separated")] = None,
    builtin: Annotated[bool | None, Query(description="only the bundled places (true) or only yours (false)")] = None,
    bbox: Annotated[str | None, Query(description="west,south,east,north")] = None,
) -> dict[str, Any]:
    kinds = [k for k in (kind or "").split(",") if k]
    unknown = [k for k in kinds if k not in places.KINDS]
    if unknown:
        raise ValidationError("kind", f"unknown kind {unknown[0]!r}; one of {', '.join(places.KINDS)}")
    box = place_store.parse_bbox(bbox) if bbox else None
    await crossings.warm()
    items, nxt = await place_store.list_places(db, tenant.id, limit, cursor, kinds=kinds, builtin=builtin, box=box)
    return {"items": items, "next_cursor": nxt}


@router.get("/visits", response_model=answers(schemas.VisitPage))
async def shipment_visits(
    shipment_id: Annotated[str, Query(max_length=200, description="the shipment whose visits to list")],
    tenant: CurrentTenant,
    db: Db,
    limit: Limit = 50,
) -> dict[str, Any]:
    """A shipment's visits of places, newest first (`exited_at` null: it is there now)."""
    rows = await place_store.shipment_visits(db, tenant.id, shipment_id, limit)
    await crossings.warm()
    items = []
    for r in rows:
        fence = places.builtin_fence(r["place_id"])
        place = fence.summary() if fence else {"id": r["place_id"], "name": r["name"], "kind": r["kind"]}
        items.append({"place": place, "entered_at": r["entered_at"], "exited_at": r["exited_at"]})
    return {"items": items, "next_cursor": None}


async def _find(db: Db, tenant_id: int, place_id: str) -> dict[str, Any]:
    await crossings.warm()
    builtin = places.builtin_fence(place_id)
    if builtin is not None:
        return builtin.to_dict()
    row = await place_store.get_place(db, tenant_id, place_id)
    if row is None:
        raise NotFound(f"no place {place_id!r}")
    return place_store.place_json(row)


@router.get("/{place_id}", response_model=answers(schemas.Place))
async def get_place(place_id: str, tenant: CurrentTenant, db: Db) -> dict[str, Any]:
    return await _find(db, tenant.id, place_id)


@router.patch("/{place_id}", response_model=answers(schemas.Place))
async def update_place(place_id: str, body: PlacePatch, tenant: CurrentTenant, state: Shared) -> dict[str, Any]:
    await _builtin_guard(place_id)
    changes = body.model_dump(exclude_unset=True)
    for name in ("name", "kind", "geometry"):
        if name in changes and changes[name] is None:
            raise ValidationError(name, "cannot be null")
    async with store.transaction(state.pool) as conn:
        row = await place_store.get_place(conn, tenant.id, place_id)
        if row is None:
            raise NotFound(f"no place {place_id!r}")
        merged = {**row, **changes}
        if "geometry" in changes and "radius_m" not in changes and changes["geometry"].get("type") != "Point":
            merged["radius_m"] = None  # a Polygon in place of a circle has no radius
        updated = await place_store.update_place(conn, tenant.id, _fence(place_id, merged))
    crossings.forget(tenant.id)
    return place_store.place_json(updated)


@router.delete("/{place_id}", status_code=204)
async def delete_place(place_id: str, tenant: CurrentTenant, state: Shared) -> Response:
    await _builtin_guard(place_id)
    async with store.transaction(state.pool) as conn:
        deleted = await place_store.delete_place(conn, tenant.id, place_id)
    if not deleted:
        raise NotFound(f"no place {place_id!r}")
    crossings.forget(tenant.id)
    return Response(status_code=204)


@router.get("/{place_id}/stats", response_model=answers(schemas.PlaceStats))
async def place_stats(place_id: str, tenant: CurrentTenant, db: Db) -> dict[str, Any]:
    """Completed visits of the place by the tenant's shipments, and their dwell in hours."""
    await _find(db, tenant.id, place_id)
    return await place_store.stats(db, tenant.id, place_id)
