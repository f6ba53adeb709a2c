"""`GET /v1/dcsa/v3/events`: the tenant's canonical events as DCSA Track & Trace 3.0.0 events.

A customer's DCSA consumer reads trackd as it reads a carrier. Milestones with a DCSA equivalent
become TRANSPORT, EQUIPMENT or SHIPMENT events, positions IoT location updates (`IOT DETC LOC`),
temperature or humidity readings reefer measurements (`REEFER MEAS`) and the other door readings
IoT door events (`IOT DETC DRO` or `DRC`); the rest is left out. The
shipment's tracking number is the transport document reference, its references that are container
numbers (ISO 6346) the equipment, and the others shipment references. `eventUpdatedDateTime` is
when trackd stored the event; a retracted event comes again, later, with `isRetracted`.

Filters of the 3.0.0 standard: `carrierBookingReference`, `transportDocumentReference`,
`equipmentReference` (each matched against the shipment's identifiers, as carrier events are),
`eventTypes`, `eventUpdatedDateTimeMin`/`Max` (also as `eventCreatedDateTime:gte`/`:lte`, the
names of earlier versions), `limit`, and `cursor` from the `Next-Page-Cursor` response header.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api import schemas
from api.deps import CurrentTenant, Cursor, Db, Limit
from api.errors import JSONBody
from trackd import feed_store
from trackd.errors import ValidationError
from trackd.model import ref_key
from trackd.store import Row

router = APIRouter(prefix="/v1/dcsa/v3", tags=["dcsa"])

API_VERSION = "3.0.0"
EVENT_TYPES = ("SHIPMENT", "TRANSPORT", "EQUIPMENT", "IOT", "REEFER")
# canonical milestone -> (event type, its type code)
MILESTONES: dict[str, tuple[str, str]] = {
    "booked": ("SHIPMENT", "CONF"),
    "info_received": ("SHIPMENT", "RECE"),
    "cancelled": ("SHIPMENT", "CANC"),
    "departed": ("TRANSPORT", "DEPA"),
    "arrived": ("TRANSPORT", "ARRI"),
    "loaded": ("EQUIPMENT", "LOAD"),
    "discharged": ("EQUIPMENT", "DISC"),
    "gate_in": ("EQUIPMENT", "GTIN"),
    "gate_out": ("EQUIPMENT", "GTOT"),
    "picked_up": ("EQUIPMENT", "PICK"),
    "delivered": ("EQUIPMENT", "DROP"),
    "available_for_pickup": ("EQUIPMENT", "AVPU"),
    "customs_hold": ("EQUIPMENT", "CUSI"),
    "customs_released": ("EQUIPMENT", "CUSR"),
}
TYPE_FIELDS = {
    "SHIPMENT": "shipmentEventTypeCode",
    "TRANSPORT": "transportEventTypeCode",
    "EQUIPMENT": "equipmentEventTypeCode",
    "IOT": "iotEventTypeCode",
    "REEFER": "reeferEventTypeCode",
}
CLASSIFIERS = {"actual": "ACT", "estimated": "EST", "planned": "PLN"}
MODES = {"sea": "VESSEL", "rail": "RAIL", "road": "TRUCK"}
SENSOR_FIELDS = ("temperature_c", "humidity_pct")  # a reading with one of them is a reefer measurement
DOOR_FIELD = "door_open"  # a reading with it and none of those an IoT door event
_CONTAINER = re.compile(r"^[A-Z]{3}[UJZR]\d{7}$")


def _time(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _location(data: dict[str, Any]) -> dict[str, Any] | None:
    loc = data.get("location") or {}
    out: dict[str, Any] = {}
    if loc.get("name"):
        out["locationName"] = loc["name"][:100]
    if loc.get("unlocode"):
        out["UNLocationCode"] = loc["unlocode"].replace(" ", "")[:5]
    if loc.get("lat") is not None and loc.get("lon") is not None:
        out["geoCoordinate"] = {"latitude": f"{loc['lat']:.6f}", "longitude": f"{loc['lon']:.6f}"}
    return out or None


def _references(row: Row) -> dict[str, Any]:
    """The shipment's identifiers as document, shipment and equipment references."""
    refs = [r for r in row["refs"] or () if r != row["tracking_number"]]
    containers = [r for r in refs if _CONTAINER.match(ref_key(r))]
    out: dict[str, Any] = {
        "shipmentDetails": {"documentReference": {"typeCode": "TRD", "reference": row["tracking_number"][:100]}}
    }
    others = [{"typeCode": "CR", "reference": r[:100]} for r in refs if r not in containers]
    if others:
        out["shipmentDetails"]["shipmentReferences"] = others
    if containers:
        out["equipmentDetails"] = {"equipmentReference": ref_key(containers[0])}
    return out


def to_dcsa(row: Row) -> dict[str, Any]:
    """One stored event (a `feed_store` row) as a 3.0.0 event."""
    event: dict[str, Any] = {"eventID": row["event_id"], "eventUpdatedDateTime": _time(row["updated_at"])}
    if row["retracted_at"] is not None:
        return {**event, "isRetracted": True}
    data = row["data"] or {}
    event["eventDateTime"] = _time(row["occurred_at"])
    classifier = CLASSIFIERS.get(row["classifier"] or "actual", "ACT")
    if row["kind"] == "position":
        event_type, code = "IOT", "DETC"
        location: dict[str, Any] | None = {
            "geoCoordinate": {"latitude": f"{data['lat']:.6f}", "longitude": f"{data['lon']:.6f}"}
        }
        event["iotDetails"] = {"iotEventCode": "LOC"}
    elif row["kind"] == "sensor" and data.get(DOOR_FIELD) is not None and not any(f in data for f in SENSOR_FIELDS):
        event_type, code, location = "IOT", "DETC", None
        event["iotDetails"] = {"iotEventCode": "DRO" if data.get(DOOR_FIELD) else "DRC"}
    elif row["kind"] == "sensor":
        event_type, code, location = "REEFER", "MEAS", None
        reefer: dict[str, Any] = {"temperatureUnit": "CEL"}
        if data.get("temperature_c") is not None:
            reefer["temperatureProbeMeasurements"] = [{"measuredTemperatureValue": data["temperature_c"]}]
        if data.get("humidity_pct") is not None:
            reefer["measuredParameters"] = {"humidityPercentage": data["humidity_pct"]}
        event["reeferDetails"] = reefer
    else:
        event_type, code = MILESTONES[row["code"]]
        location = _location(data)
        mode = MODES.get(data.get("mode") or "")
        if event_type == "TRANSPORT" and mode:
            event["transportDetails"] = {"transportCall": {"modeOfTransport": mode}}
    event["eventClassification"] = {
        "eventTypeCode": event_type,
        "eventClassifierCode": classifier,
        TYPE_FIELDS[event_type]: code,
    }
    if location:
        event["eventLocation"] = location
    return {**event, **_references(row)}


def feed_query(
    event_types: list[str],
    references: list[str | None],
    since: datetime | None,
    until: datetime | None,
) -> feed_store.FeedQuery:
    """The stored events that `eventTypes` and the other filters select."""
    wanted = [t.strip().upper() for t in event_types if t.strip()] or list(EVENT_TYPES)
    bad = [t for t in wanted if t not in EVENT_TYPES]
    if bad:
        raise ValidationError("eventTypes", f"{bad[0]!r} is not one of {', '.join(EVENT_TYPES)}")
    for name, at in (("eventUpdatedDateTimeMin", since), ("eventUpdatedDateTimeMax", until)):
        if at is not None and at.tzinfo is None:
            raise ValidationError(name, "must carry a time zone offset")
    kinds = tuple(k for t, k in (("IOT", "position"), ("IOT", "door"), ("REEFER", "sensor")) if t in wanted)
    codes = tuple(m for m, (t, _) in MILESTONES.items() if t in wanted)
    return feed_store.FeedQuery(
        kinds=kinds,
        codes=codes,
        sensor_fields=SENSOR_FIELDS,
        door_field=DOOR_FIELD,
        references=tuple(r for r in references if r),
        since=since,
        until=until,
    )


@router.get(
    "/events",
    summary="the tenant's events as DCSA Track & Trace 3.0.0 events",
    responses={200: {"model": schemas.DcsaEvents, "description": "a page; `Next-Page-Cursor` names the next one"}},
)
async def get_events(
    tenant: CurrentTenant,
    db: Db,
    carrier_booking_reference: Annotated[
        str | None, Query(alias="carrierBookingReference", min_length=1, max_length=100)
    ] = None,
    transport_document_reference: Annotated[
        str | None, Query(alias="transportDocumentReference", min_length=1, max_length=100)
    ] = None,
    equipment_reference: Annotated[str | None, Query(alias="equipmentReference", min_length=1, max_length=100)] = None,
    event_types: Annotated[str | None, Query(alias="eventTypes", max_length=100)] = None,
    event_type: Annotated[str | None, Query(alias="eventType", max_length=100)] = None,
    updated_min: Annotated[datetime | None, Query(alias="eventUpdatedDateTimeMin")] = None,
    updated_max: Annotated[datetime | None, Query(alias="eventUpdatedDateTimeMax")] = None,
    created_gte: Annotated[datetime | None, Query(alias="eventCreatedDateTime:gte")] = None,
    created_lte: Annotated[datetime | None, Query(alias="eventCreatedDateTime:lte")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> JSONBody:
    """`{"events": [...]}`; `Next-Page-Cursor` names the next page while there is one."""
    types = (event_types or event_type or "").split(",")
    refs = [carrier_booking_reference, transport_document_reference, equipment_reference]
    q = feed_query(types, refs, updated_min or created_gte, updated_max or created_lte)
    rows, nxt = await feed_store.feed_page(db, tenant.id, q, limit, cursor)
    headers = {"API-Version": API_VERSION}
    if nxt:
        headers["Next-Page-Cursor"] = nxt
    return JSONBody({"events": [to_dcsa(r) for r in rows]}, headers=headers)
