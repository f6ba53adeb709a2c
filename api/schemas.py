"""The shapes the REST answers have, for the OpenAPI document (and the clients generated from it).

The handlers build their answers as plain dicts (`trackd.store` and friends); these models only
describe them. `answers(Model)` is a route's `response_model`: FastAPI validates and serializes the
answer as the `dict[str, Any]` (or list) it is, on its fast path (nothing re-validated, filtered
or reformatted), while the document names `Model`. Objects allow fields beyond those listed, so a
field the server adds later never breaks a client; a field that is always sent is required, even
when its value may be null.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, JsonValue, TypeAdapter
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from trackd.codes import Classifier, EventKind, ExceptionKind, Milestone, Mode, Status

PlaceKind = Literal["port", "airport", "terminal", "warehouse", "customs", "border", "depot", "other"]
HoldKind = Literal["customs", "freight", "terminal", "other"]
DeliveryStatus = Literal["pending", "succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class _DocumentedAs:
    shape: Any

    def __get_pydantic_json_schema__(self, _core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # Generated as a list's items, so that a model comes out as a $ref to its component.
        items: JsonSchemaValue = handler(TypeAdapter(list[self.shape]).core_schema)["items"]  # type: ignore[name-defined]
        return items


def answers(shape: Any) -> Any:
    """The `response_model` of a route whose handler returns `shape` as plain JSON (a dict, or a
    list for `list[...]`): sent as built, documented as `shape`."""
    wire = list[dict[str, Any]] if get_origin(shape) is list else dict[str, Any]
    return Annotated[wire, _DocumentedAs(shape)]


class Out(BaseModel):
    """An answer object: more fields than those listed may come."""

    model_config = ConfigDict(extra="allow")


# -- shipments -----------------------------------------------------------------------------------


class Location(Out):
    """A place of a leg or a milestone; only the fields known are sent."""

    name: str | None = None
    unlocode: str | None = None
    iata: str | None = None
    country: str | None = None
    lat: float | None = None
    lon: float | None = None


class LineString(Out):
    type: Literal["LineString"]
    coordinates: list[list[float]] = Field(description="[lon, lat] pairs")


class Vessel(Out):
    imo: int | None = None
    mmsi: int | None = None
    name: str | None = None


class Leg(Out):
    mode: Mode
    origin: Location
    destination: Location
    route: LineString | None = Field(None, description="the booked path; absent when none was given")
    vessel: Vessel | None = Field(None, description="a sea leg's vessel; absent when none was given")


class LastPosition(Out):
    lat: float
    lon: float
    at: datetime
    speed_kmh: float | None
    heading: float | None


class Eta(Out):
    """`earliest`..`latest` is the stated 80% interval."""

    predicted_at: datetime
    earliest: datetime
    latest: datetime
    carrier_eta: datetime | None
    promised_at: datetime | None
    method: str
    computed_at: datetime
    p_late: float | None = Field(None, description="probability (0..1) of delivery after promised_at")
    revision: int = Field(0, description="how many material changes the prediction has had")


class ShipmentException(Out):
    kind: ExceptionKind
    raised_at: datetime
    cleared_at: datetime | None
    detail: str | None


class LegEmissions(Out):
    mode: Mode
    distance_km: float | None
    tonne_km: float | None
    co2e_kg: float | None
    factor_g_per_tkm: float | None


class Emissions(Out):
    co2e_kg: float | None
    method: str
    legs: list[LegEmissions]


class Hold(Out):
    kind: HoldKind
    since: datetime
    cleared_at: datetime | None


class Release(Out):
    last_free_day: datetime | None
    available_for_pickup_at: datetime | None
    holds: list[Hold]


class Shipment(Out):
    id: str
    tracking_number: str
    carrier: str | None
    references: list[str]
    mode: Mode | None
    legs: list[Leg]
    promised_at: datetime | None
    weight_kg: float | None
    temperature_range_c: tuple[float, float] | None = Field(description="[min, max]")
    devices: list[str] = Field(description="the ids of the devices attached now")
    status: Status
    substatus: str | None
    last_position: LastPosition | None
    eta: Eta | None
    exceptions: list[ShipmentException]
    emissions: Emissions | None
    release: Release | None
    created_at: datetime
    updated_at: datetime


class ShipmentPage(Out):
    items: list[Shipment]
    next_cursor: str | None


class Attachment(Out):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    shipment_id: str
    device_id: str
    from_: datetime = Field(alias="from")
    until: datetime | None


class Event(Out):
    id: str
    kind: EventKind
    occurred_at: datetime
    received_at: datetime
    created_at: datetime | None
    source: str
    device_id: str | None
    code: Milestone | None
    raw_code: str | None
    classifier: Classifier | None
    location: Location | None
    retracted: bool
    data: dict[str, JsonValue]
    raw: JsonValue = Field(description="the payload as received")


class EventPage(Out):
    items: list[Event]
    next_cursor: str | None


class PointGeometry(Out):
    type: Literal["Point"]
    coordinates: list[float] = Field(description="[lon, lat]")


class PositionProperties(Out):
    occurred_at: datetime
    speed_kmh: float | None
    heading: float | None
    device_id: str | None


class PositionFeature(Out):
    type: Literal["Feature"]
    geometry: PointGeometry
    properties: PositionProperties


class Positions(Out):
    """A GeoJSON FeatureCollection of the shipment's positions, oldest first."""

    type: Literal["FeatureCollection"]
    features: list[PositionFeature]


class RouteProperties(Out):
    leg: int = Field(description="the leg's index")
    mode: Mode
    planned: bool = Field(description="true: the booked route; false: a computed one")


class RouteFeature(Out):
    type: Literal["Feature"]
    geometry: LineString
    properties: RouteProperties


class Route(Out):
    """A GeoJSON FeatureCollection of each leg's planned path."""

    type: Literal["FeatureCollection"]
    features: list[RouteFeature]


class PromiseBasis(Out):
    journeys: int = Field(description="completed journeys on the lane behind the quote; 0: a stated prior")
    lane: str


class Promise(Out):
    earliest: datetime
    likely: datetime
    latest: datetime
    confidence: float
    basis: PromiseBasis


# -- devices, places, quarantine -----------------------------------------------------------------


class Device(Out):
    id: str
    key: str
    name: str | None
    created_at: datetime


class DevicePage(Out):
    items: list[Device]
    next_cursor: str | None


class PolygonGeometry(Out):
    type: Literal["Polygon"]
    coordinates: list[list[list[float]]] = Field(description="rings of [lon, lat] positions")


class Place(Out):
    id: str
    name: str
    kind: PlaceKind
    geometry: Annotated[PointGeometry | PolygonGeometry, Field(discriminator="type")]
    radius_m: float | None
    unlocode: str | None
    iata: str | None
    builtin: bool
    created_at: datetime | None = Field(None, description="absent for a bundled place")
    updated_at: datetime | None = Field(None, description="absent for a bundled place")


class PlacePage(Out):
    items: list[Place]
    next_cursor: str | None


class PlaceSummary(Out):
    id: str
    name: str | None
    kind: PlaceKind | None


class Visit(Out):
    place: PlaceSummary
    entered_at: datetime
    exited_at: datetime | None = Field(description="null: it is there now")


class VisitPage(Out):
    items: list[Visit]
    next_cursor: str | None


class Dwell(Out):
    p50: float | None
    p90: float | None


class PlaceStats(Out):
    visits: int
    dwell_h: Dwell


class QuarantineItem(Out):
    id: str
    received_at: datetime
    source: str
    transport: str
    reason: str
    raw: str = Field(description="what was received (its first 4 KB at most)")
    size: int | None = Field(description="bytes received")


class QuarantinePage(Out):
    items: list[QuarantineItem]
    next_cursor: str | None


# -- ingest, health ------------------------------------------------------------------------------


class Accepted(Out):
    accepted: int
    stored: int
    duplicates: int


class Health(Out):
    status: Literal["ok"]


class Readiness(Out):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(description='per dependency, "ok" or why not')


# -- webhooks and tracking links -----------------------------------------------------------------


class Webhook(Out):
    id: str
    url: str
    events: list[str]
    shipment_ids: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None
    failing_since: datetime | None
    circuit_open_until: datetime | None
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(Webhook):
    secret: str = Field(description="the signing secret (whsec_...), shown only in this answer")


class WebhookPage(Out):
    items: list[Webhook]
    next_cursor: str | None


class Attempt(Out):
    at: datetime
    status_code: int | None
    latency_ms: float | None
    error: str | None
    response_body: str | None


class Delivery(Out):
    id: str = Field(description="the webhook-id of the message")
    type: str
    status: DeliveryStatus
    shipment_id: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    attempts: list[Attempt]


class DeliveryPage(Out):
    items: list[Delivery]
    next_cursor: str | None


class RetryQueued(Out):
    id: str
    status: Literal["pending"]


class ReplayQueued(Out):
    count: int = Field(description="how many messages were queued")


class Share(Out):
    token: str
    url: str
    expires_at: datetime


class Revoked(Out):
    revoked: int


class PublicLocation(Out):
    name: str | None
    country: str | None


class PublicDestination(PublicLocation):
    lat: float | None
    lon: float | None


class PublicMilestone(Out):
    code: Milestone
    occurred_at: datetime
    location: PublicLocation | None


class Brand(Out):
    name: str | None
    logo_url: str | None
    colour: str | None
    support_url: str | None


class Track(Out):
    """What a tracking link shows: no internal ids, no raw payloads."""

    tracking_number: str
    carrier: str | None
    status: Status
    substatus: str | None
    milestones: list[PublicMilestone]
    eta: Eta | None
    route: list[tuple[float, float]] = Field(description="the route so far, [lon, lat] pairs")
    origin: PublicLocation | None
    destination: PublicDestination | None
    brand: Brand
    updated_at: datetime | None


# -- DCSA Track & Trace 3.0.0 --------------------------------------------------------------------


class DcsaClassification(Out):
    """The event's type, its classifier, and its type code under the type's own field
    (`transportEventTypeCode`, `equipmentEventTypeCode`, ...)."""

    eventTypeCode: Literal["SHIPMENT", "TRANSPORT", "EQUIPMENT", "IOT", "REEFER"]
    eventClassifierCode: Literal["ACT", "EST", "PLN"]


class DcsaEvent(Out):
    """A DCSA 3.0.0 event; a retracted one carries only its id, `eventUpdatedDateTime` and
    `isRetracted`."""

    eventID: str
    eventUpdatedDateTime: datetime
    isRetracted: bool | None = None
    eventDateTime: datetime | None = None
    eventClassification: DcsaClassification | None = None
    eventLocation: dict[str, JsonValue] | None = None


class DcsaEvents(Out):
    events: list[DcsaEvent]


# -- request bodies read as raw bytes --------------------------------------------------------------

# Components that only request bodies name (FastAPI registers those of answers and parsed bodies):
# `serve.app` adds them to the document.
REQUEST_COMPONENTS: dict[str, Any] = {}


def raw_body(shape: Any, description: str) -> dict[str, Any]:
    """`openapi_extra` documenting the JSON body of a route that reads its bytes itself (limits,
    signatures and the adapters come before any parsing)."""
    schema = TypeAdapter(shape).json_schema(ref_template="#/components/schemas/{model}")
    REQUEST_COMPONENTS.update(schema.pop("$defs", {}))
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


class In(BaseModel):
    """A request object: fields beyond those listed are kept in the raw payload."""

    model_config = ConfigDict(extra="allow")


class EventPosition(In):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    speed_kmh: float | None = Field(None, ge=0, le=5000)
    heading: float | None = Field(None, ge=0, le=360)
    accuracy_m: float | None = Field(None, ge=0)
    altitude_m: float | None = None


class EventLocation(In):
    name: str | None = Field(None, max_length=200)
    unlocode: str | None = Field(None, max_length=200)
    iata: str | None = Field(None, max_length=200)
    country: str | None = Field(None, max_length=200)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)


class EventMilestone(In):
    code: Milestone
    classifier: Classifier = Classifier.ACTUAL
    location: EventLocation | None = None
    mode: Mode | None = None


class EventSensor(In):
    """At least one reading."""

    temperature_c: float | None = Field(None, ge=-100, le=150)
    humidity_pct: float | None = Field(None, ge=0, le=100)
    battery_pct: float | None = Field(None, ge=0, le=100)
    shock_g: float | None = None
    door_open: bool | None = None


class TrackdEvent(In):
    """One trackd event: exactly one of `position`, `milestone`, `sensor`; a `shipment` or a `device`."""

    event_id: str | None = Field(None, max_length=200, description="else derived from the content")
    occurred_at: datetime | float = Field(description="ISO 8601 with an offset, or epoch seconds")
    created_at: datetime | float | None = Field(None, description="when the source issued it (an estimate: made)")
    shipment: str | None = Field(None, max_length=200, description="a tracking number or reference")
    device: str | None = Field(None, max_length=128)
    carrier: str | None = Field(None, max_length=200)
    position: EventPosition | None = None
    milestone: EventMilestone | None = None
    sensor: EventSensor | None = None
