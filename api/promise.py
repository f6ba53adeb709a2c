"""POST /v1/promise: when goods booked now would arrive, before there is a shipment."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api import schemas
from api.deps import CurrentTenant, Db
from api.schemas import answers
from api.shipments import LegIn, LocationIn
from trackd import assessment, eta, eta_promise, store
from trackd.codes import Mode
from trackd.errors import ValidationError
from trackd.model import Location
from trackd.places import with_coordinates
from trackd.shipment import Leg, Shipment

router = APIRouter(prefix="/v1/promise", tags=["promise"])
HISTORY = 2000  # the tenant's most recent completed journeys that are searched for the lane


class PromiseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    legs: list[LegIn] | None = Field(None, min_length=1, max_length=20)
    origin: LocationIn | None = None
    destination: LocationIn | None = None
    mode: Mode | None = None
    carrier: str | None = Field(None, max_length=100)
    ship_at: datetime | None = Field(None, description="when the goods leave (default now)")

    @model_validator(mode="after")
    def _one_form(self) -> PromiseIn:
        if self.legs is None and (self.origin is None or self.destination is None or self.mode is None):
            raise ValueError('give "legs", or "origin", "destination" and "mode"')
        return self


def _place(name: str, place: LocationIn) -> Location:
    try:
        return with_coordinates(Location(**place.model_dump()))
    except ValidationError as exc:
        raise ValidationError(name, exc.reason) from None


def _shipment(body: PromiseIn, now: datetime) -> Shipment:
    if body.legs is not None:
        legs = tuple(
            Leg(leg.mode, _place(f"legs.{i}.origin", leg.origin), _place(f"legs.{i}.destination", leg.destination))
            for i, leg in enumerate(body.legs)
        )
    else:
        assert body.origin is not None
        assert body.destination is not None
        assert body.mode is not None
        legs = (Leg(body.mode, _place("origin", body.origin), _place("destination", body.destination)),)
    return Shipment(id="promise", tracking_number="promise", carrier=body.carrier, legs=legs, created_at=now)


@router.post("", response_model=answers(schemas.Promise))
async def promise(body: PromiseIn, tenant: CurrentTenant, db: Db) -> dict[str, Any]:
    """A quote from the tenant's completed journeys on the lane, else a stated prior (basis.journeys 0)."""
    now = datetime.now(UTC)
    if body.ship_at is not None and body.ship_at.tzinfo is None:
        raise ValidationError("ship_at", "needs a UTC offset")
    shipment = _shipment(body, now)
    route = eta.route_key(shipment)
    rows = await store.completed_journeys(db, tenant.id, HISTORY, forecasts=False)
    stats = assessment.learned([r for r in rows if _route(r) == route])
    return eta_promise.quote(shipment, stats, body.ship_at or now, now)


def _route(row: dict[str, Any]) -> str | None:
    """The route of a completed journey's row; None when its legs cannot be read."""
    try:
        return eta.route_key(assessment.shipment_from_row(row))
    except (ValidationError, ValueError, KeyError, TypeError):
        return None
