"""/v1/shipments: create, read (by id, tracking number or reference), list, export as CSV, patch,
delete; their events, positions, ETA and devices."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from api import schemas
from api.deps import CurrentTenant, Cursor, Db, Limit, Shared
from api.schemas import answers
from trackd import registry, release_store, rules, store
from trackd.codes import EventKind, ExceptionKind, Mode, Status
from trackd.errors import NotFound, ValidationError
from trackd.model import Location
from trackd.places import with_coordinates as resolve_location
from trackd.release import MAX_HOLDS
from trackd.shipment import MAX_ROUTE_POINTS, Leg, Shipment, Vessel, route_from_geojson

router = APIRouter(prefix="/v1/shipments", tags=["shipments"])


class LocationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200)
    unlocode: str | None = Field(None, pattern=r"^[A-Za-z]{2} ?[A-Za-z0-9]{3}$")
    iata: str | None = Field(None, pattern=r"^[A-Za-z]{3}$")
    country: str | None = Field(None, pattern=r"^[A-Za-z]{2}$")
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)


class VesselIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    imo: int | str | None = Field(None, description="IMO number, 7 digits (`9074729` or `IMO 9074729`)")
    mmsi: int | str | None = Field(None, description="MMSI, the 9 digits the vessel's AIS transponder sends")
    name: str | None = Field(None, max_length=120)


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["LineString"]
    coordinates: list[list[float]] = Field(min_length=2, max_length=MAX_ROUTE_POINTS, description="[lon, lat] pairs")


class HoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["customs", "freight", "terminal", "other"]
    since: datetime
    cleared_at: datetime | None = None


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    last_free_day: datetime | None = None
    available_for_pickup_at: datetime | None = None
    holds: list[HoldIn] | None = Field(None, max_length=MAX_HOLDS)


class LegIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Mode
    origin: LocationIn
    destination: LocationIn
    vessel: VesselIn | None = Field(None, description="a sea leg's vessel: its AIS positions reach the shipment")
    route: RouteIn | None = Field(None, description="the planned path; `off_route` is measured against it")


class ShipmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_number: str = Field(min_length=1, max_length=100)
    carrier: str | None = Field(None, max_length=100)
    references: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list, max_length=50)
    mode: Mode | None = None
    legs: list[LegIn] = Field(default_factory=list, max_length=20)
    promised_at: datetime | None = None
    weight_kg: float | None = Field(None, ge=0, le=1_000_000)
    temperature_range_c: tuple[float, float] | None = None
    devices: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(default_factory=list, max_length=20)


class ShipmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_number: str | None = Field(None, min_length=1, max_length=100)
    carrier: str | None = Field(None, max_length=100)
    references: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(None, max_length=50)
    mode: Mode | None = None
    legs: list[LegIn] | None = Field(None, max_length=20)
    promised_at: datetime | None = None
    weight_kg: float | None = Field(None, ge=0, le=1_000_000)
    temperature_range_c: tuple[float, float] | None = None
    release: ReleaseIn | None = Field(None, description="fields given replace the stored ones; null clears it")


class AttachIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(min_length=1, max_length=128)
    from_: datetime | None = Field(None, alias="from")
    until: datetime | None = None


def _aware(name: str, d: datetime | None) -> datetime | None:
    if d is not None and d.tzinfo is None:
        raise ValidationError(name, "needs a UTC offset")
    return d


def _leg(i: int, leg: LegIn) -> Leg:
    ends = []
    for side in ("origin", "destination"):
        place: LocationIn = getattr(leg, side)
        loc = Location(**place.model_dump())
        try:
            ends.append(resolve_location(loc))
        except ValidationError as exc:
            raise ValidationError(f"legs.{i}.{side}", exc.detail) from None
    try:
        vessel = Vessel.from_dict(leg.vessel.model_dump()) if leg.vessel is not None else None
        route = route_from_geojson(leg.route.model_dump(), "legs.route") if leg.route is not None else None
        return Leg(leg.mode, ends[0], ends[1], route=route, vessel=vessel)
    except ValidationError as exc:
        raise ValidationError(exc.field.replace("legs.", f"legs.{i}.", 1), exc.reason) from None


def to_domain(shipment_id: str, body: dict[str, Any]) -> Shipment:
    legs = tuple(
        _leg(i, LegIn.model_validate(x) if isinstance(x, dict) else x) for i, x in enumerate(body.get("legs") or [])
    )
    trange = body.get("temperature_range_c")
    return Shipment(
        id=shipment_id,
        tracking_number=body["tracking_number"].strip(),
        carrier=body.get("carrier"),
        references=tuple(r.strip() for r in body.get("references") or []),
        mode=Mode(body["mode"]) if body.get("mode") and not legs else (legs[0].mode if legs else None),
        legs=legs,
        promised_at=_aware("promised_at", body.get("promised_at")),
        weight_kg=body.get("weight_kg"),
        temperature_range_c=(float(trange[0]), float(trange[1])) if trange else None,
    )


@router.post("", status_code=201, response_model=answers(schemas.Shipment))
async def create_shipment(body: ShipmentIn, tenant: CurrentTenant, state: Shared) -> dict[str, Any]:
    shipment = to_domain(store.new_id("shp"), body.model_dump())
    async with store.transaction(state.pool) as conn:
        out = await registry.create_shipment(conn, tenant.id, shipment, body.devices, state.clock(), state.evaluator)
    return out


EXCEPTION_TERMS = ("any", "none", *(k.value for k in ExceptionKind))


def exception_terms(value: str | None) -> list[str] | None:
    """The terms of `?exception=` (comma-separated, any of which matches), each `any`, `none` or an
    exception kind; an unknown one is a ValidationError naming it."""
    terms = [t.strip() for t in (value or "").split(",") if t.strip()]
    for t in terms:
        if t not in EXCEPTION_TERMS:
            raise ValidationError("exception", f"unknown kind {t!r} (expected {', '.join(EXCEPTION_TERMS)})")
    return list(dict.fromkeys(terms)) or None


def lateness_terms(value: str | None) -> list[str] | None:
    """The terms of `?lateness=` (comma-separated, any of which matches), each one of
    `store.LATENESS_TERMS`; an unknown one is a ValidationError naming it."""
    terms = [t.strip() for t in (value or "").split(",") if t.strip()]
    for t in terms:
        if t not in store.LATENESS_TERMS:
            raise ValidationError("lateness", f"unknown term {t!r} (expected {', '.join(store.LATENESS_TERMS)})")
    return list(dict.fromkeys(terms)) or None


async def shipment_filters(
    state: Shared,
    status: Annotated[list[Status] | None, Query()] = None,
    carrier: Annotated[str | None, Query(max_length=100)] = None,
    mode: Mode | None = None,
    exception: Annotated[
        str | None,
        Query(
            max_length=500,
            description="comma-separated, any of which matches: `any` (an open exception), `none` (no open"
            " exception) or an exception kind (" + ", ".join(k.value for k in ExceptionKind) + ")",
        ),
    ] = None,
    lateness: Annotated[
        str | None,
        Query(
            max_length=200,
            description="comma-separated, any of which matches: `on_time`, `might_be_late`, `late`, as the"
            " tracking page says them. Open: `late` once `promised_at` has passed or from `eta.p_late`"
            " 0.75, `might_be_late` from 0.25, else `on_time`; delivered: `late` when delivered after"
            " `promised_at`, else `on_time`. A shipment without a promise matches none",
        ),
    ] = None,
    eta_after: Annotated[
        datetime | None,
        Query(description="predicted arrival (`eta.predicted_at`) at or after this time (with an offset)"),
    ] = None,
    eta_before: Annotated[
        datetime | None,
        Query(description="predicted arrival before this time (with an offset); without a prediction: no match"),
    ] = None,
    q: Annotated[str | None, Query(max_length=100)] = None,
    updated_since: datetime | None = None,
) -> dict[str, Any]:
    return {
        "status": [s.value for s in status] if status else None,
        "carrier": carrier,
        "mode": mode.value if mode else None,
        "exception": exception_terms(exception),
        "lateness": lateness_terms(lateness),
        "now": state.clock(),
        "eta_after": _aware("eta_after", eta_after),
        "eta_before": _aware("eta_before", eta_before),
        "q": q,
        "updated_since": _aware("updated_since", updated_since),
    }


Filters = Annotated[dict[str, Any], Depends(shipment_filters)]


@router.get("", response_model=answers(schemas.ShipmentPage))
async def list_shipments(
    tenant: CurrentTenant, db: Db, filters: Filters, limit: Limit = 50, cursor: Cursor = None
) -> dict[str, Any]:
    items, nxt = await store.list_shipments(db, tenant.id, filters, limit, cursor)
    return {"items": items, "next_cursor": nxt}


CSV_MAX_ROWS = 10_000
CSV_PAGE = 500  # rows read per query
CSV_COLUMNS = (
    "id",
    "tracking_number",
    "carrier",
    "mode",
    "status",
    "eta_predicted_at",
    "eta_earliest",
    "eta_latest",
    "promised_at",
    "open_exceptions",
    "origin",
    "destination",
    "updated_at",
)


class CSVResponse(Response):
    media_type = "text/csv"


def _place(place: dict[str, Any] | None) -> str:
    if not place:
        return ""
    for key in ("name", "unlocode", "iata"):
        if place.get(key):
            return str(place[key]) + (f" ({place['country']})" if key == "name" and place.get("country") else "")
    return f"{place['lat']},{place['lon']}" if place.get("lat") is not None else str(place.get("country") or "")


def _cell(value: Any) -> str:
    """A CSV cell; text a spreadsheet would read as a formula is quoted with a leading apostrophe."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_row(s: dict[str, Any]) -> list[str]:
    eta = s["eta"] or {}
    legs = s["legs"]
    return [
        _cell(v)
        for v in (
            s["id"],
            s["tracking_number"],
            s["carrier"],
            s["mode"],
            s["status"],
            eta.get("predicted_at"),
            eta.get("earliest"),
            eta.get("latest"),
            s["promised_at"],
            ";".join(e["kind"] for e in s["exceptions"] if not e.get("cleared_at")),
            _place(legs[0].get("origin")) if legs else "",
            _place(legs[-1].get("destination")) if legs else "",
            s["updated_at"],
        )
    ]


@router.get(
    ".csv",
    response_class=CSVResponse,
    responses={200: {"description": "the matching shipments as CSV; `X-Next-Cursor` when more remain"}},
)
async def export_shipments(tenant: CurrentTenant, db: Db, filters: Filters, cursor: Cursor = None) -> Response:
    """The shipments the list filters match, newest first, as CSV (a header row, then one row per
    shipment), at most 10,000 rows from `cursor` on; when more remain, the `X-Next-Cursor` header
    is the `cursor` (of this route or the JSON list) that continues after the last row."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    rows = 0
    nxt = cursor
    while True:
        items, nxt = await store.list_shipments(db, tenant.id, filters, min(CSV_PAGE, CSV_MAX_ROWS - rows), nxt)
        writer.writerows(csv_row(s) for s in items)
        rows += len(items)
        if nxt is None or rows >= CSV_MAX_ROWS:
            break
    headers = {"Content-Disposition": 'attachment; filename="shipments.csv"'}
    if nxt is not None:
        headers["X-Next-Cursor"] = nxt
    return CSVResponse(out.getvalue().encode(), headers=headers, media_type="text/csv; charset=utf-8")


@router.get(
    "/{shipment_id}",
    response_model=answers(schemas.Shipment),
    responses={409: {"description": "several shipments' references match and no id or tracking number does"}},
)
async def get_shipment(
    shipment_id: Annotated[str, Path(description="the shipment's id, its tracking number or one of its references")],
    tenant: CurrentTenant,
    db: Db,
) -> dict[str, Any]:
    """The shipment with this id; else the one with this tracking number (case-insensitive); else
    the one whose tracking number or references match it ignoring case, spaces and hyphens. When
    several match that way: 409, naming their ids (most recent first, at most 20)."""
    return await store.resolve_shipment(db, tenant.id, shipment_id)


@router.patch("/{shipment_id}", response_model=answers(schemas.Shipment))
async def patch_shipment(shipment_id: str, body: ShipmentPatch, tenant: CurrentTenant, state: Shared) -> dict[str, Any]:
    async with store.transaction(state.pool) as conn:
        current = await registry.require_shipment(conn, tenant.id, shipment_id)
        if "release" in body.model_fields_set:
            patch = body.release.model_dump(exclude_unset=True) if body.release is not None else None
            await release_store.set_release(conn, tenant.id, shipment_id, patch, state.clock(), state.evaluator)
        merged = {**current, **body.model_dump(exclude_unset=True)}
        if "legs" not in body.model_fields_set:
            merged["legs"] = [LegIn.model_validate(x) for x in current["legs"]]
        if "mode" in body.model_fields_set and "legs" not in body.model_fields_set:
            merged["legs"] = []
        if "promised_at" not in body.model_fields_set and current["promised_at"]:
            merged["promised_at"] = datetime.fromisoformat(current["promised_at"])
        out = await registry.update_shipment(
            conn, tenant.id, to_domain(shipment_id, merged), state.clock(), state.evaluator
        )
    return out


@router.delete("/{shipment_id}", status_code=204)
async def delete_shipment(shipment_id: str, tenant: CurrentTenant, state: Shared) -> Response:
    async with store.transaction(state.pool) as conn:
        if not await registry.delete_shipment(conn, tenant.id, shipment_id):
            raise NotFound(f"no shipment {shipment_id!r}")
    return Response(status_code=204)


@router.post("/{shipment_id}/devices", status_code=201, response_model=answers(schemas.Attachment))
async def attach_device(shipment_id: str, body: AttachIn, tenant: CurrentTenant, state: Shared) -> dict[str, Any]:
    now = state.clock()
    async with store.transaction(state.pool) as conn:
        await registry.require_shipment(conn, tenant.id, shipment_id)
        start = _aware("from", body.from_) or now
        await registry.attach(
            conn, tenant.id, shipment_id, body.device_id, start, _aware("until", body.until), state.evaluator
        )
    return {
        "shipment_id": shipment_id,
        "device_id": body.device_id,
        "from": start.isoformat(),
        "until": body.until.isoformat() if body.until else None,
    }


@router.get("/{shipment_id}/events", response_model=answers(schemas.EventPage))
async def shipment_events(
    shipment_id: str,
    tenant: CurrentTenant,
    db: Db,
    limit: Limit = 50,
    cursor: Cursor = None,
    kind: EventKind | None = None,
) -> dict[str, Any]:
    await registry.require_shipment(db, tenant.id, shipment_id)
    items, nxt = await store.shipment_events(db, tenant.id, shipment_id, kind.value if kind else None, limit, cursor)
    return {"items": items, "next_cursor": nxt}


@router.get("/{shipment_id}/positions", response_model=answers(schemas.Positions))
async def shipment_positions(
    shipment_id: str,
    tenant: CurrentTenant,
    db: Db,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> dict[str, Any]:
    await registry.require_shipment(db, tenant.id, shipment_id)
    rows = await store.shipment_positions(
        db, tenant.id, shipment_id, _aware("since", since), _aware("until", until), limit
    )
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
                "properties": {
                    "occurred_at": r["occurred_at"].isoformat(),
                    "speed_kmh": r["speed_kmh"],
                    "heading": r["heading"],
                    "device_id": r["device_id"],
                },
            }
            for r in rows
        ],
    }


@router.get("/{shipment_id}/route", response_model=answers(schemas.Route))
async def shipment_route(shipment_id: str, tenant: CurrentTenant, db: Db) -> dict[str, Any]:
    """The planned path of each leg as a GeoJSON FeatureCollection of LineStrings: the booked
    `route`, else the computed one (`properties.planned` tells which)."""
    current = await registry.require_shipment(db, tenant.id, shipment_id)
    return rules.plan_geojson(tuple(Leg.from_dict(x) for x in current["legs"]))


@router.get("/{shipment_id}/eta", response_model=answers(list[schemas.Eta]))
async def shipment_eta_history(shipment_id: str, tenant: CurrentTenant, db: Db) -> list[dict[str, Any]]:
    await registry.require_shipment(db, tenant.id, shipment_id)
    return await store.eta_history(db, shipment_id)
