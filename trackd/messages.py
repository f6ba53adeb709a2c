"""The stream messages trackd writes to the outbox, one constructor per type.

A message is the JSON object a websocket client and a notification hook receive (without `seq`,
which the ledger allocates at commit). Every module that causes one builds it here, so the wire
shape of each type is defined once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from trackd.shipment import PositionFix, StatusState

Message = dict[str, Any]
MESSAGE_TYPES = (
    "position",
    "status.changed",
    "eta.changed",
    "exception.raised",
    "exception.cleared",
    "shipment.created",
    "shipment.updated",
    "release.changed",
    "place.entered",
    "place.exited",
)


def position(shipment_id: str, fix: PositionFix) -> Message:
    return {
        "type": "position",
        "shipment_id": shipment_id,
        "occurred_at": fix.at.isoformat(),
        "lat": fix.lat,
        "lon": fix.lon,
        "speed_kmh": fix.speed_kmh,
        "heading": fix.heading,
    }


def status_changed(shipment_id: str, prev: StatusState, new: StatusState) -> Message:
    return {
        "type": "status.changed",
        "shipment_id": shipment_id,
        "occurred_at": (new.status_at or prev.status_at or datetime.min).isoformat(),
        "status": new.status.value,
        "substatus": new.substatus,
        "previous_status": prev.status.value,
    }


def eta_changed(shipment_id: str, at: datetime, eta: dict[str, Any], previous_predicted_at: datetime | None) -> Message:
    return {
        "type": "eta.changed",
        "shipment_id": shipment_id,
        "occurred_at": at.isoformat(),
        "eta": eta,
        "previous_predicted_at": previous_predicted_at.isoformat() if previous_predicted_at else None,
    }


def exception_changed(kind: str, shipment_id: str, at: datetime, exception: dict[str, Any]) -> Message:
    """`exception.raised` or `exception.cleared` (`kind`: "raised" or "cleared")."""
    return {
        "type": f"exception.{kind}",
        "shipment_id": shipment_id,
        "occurred_at": at.isoformat(),
        "exception": exception,
    }


def shipment_changed(kind: str, shipment_id: str, at: datetime, shipment: dict[str, Any]) -> Message:
    """`shipment.created` or `shipment.updated` (`kind`: "created" or "updated")."""
    return {"type": f"shipment.{kind}", "shipment_id": shipment_id, "occurred_at": at.isoformat(), "shipment": shipment}


def release_changed(shipment_id: str, at: datetime, release: dict[str, Any] | None) -> Message:
    return {"type": "release.changed", "shipment_id": shipment_id, "occurred_at": at.isoformat(), "release": release}


def place_changed(kind: str, shipment_id: str, at: datetime, place: dict[str, Any]) -> Message:
    """`place.entered` or `place.exited` (`kind`: "entered" or "exited"); `place` is {id, name, kind}."""
    return {"type": f"place.{kind}", "shipment_id": shipment_id, "occurred_at": at.isoformat(), "place": place}
