"""The canonical codes of trackd: milestones, shipment statuses, modes and exceptions.

Every source adapter maps its own codes onto these; nothing downstream knows a carrier code.
"""

from __future__ import annotations

from enum import StrEnum


class Milestone(StrEnum):
    BOOKED = "booked"
    INFO_RECEIVED = "info_received"
    PICKED_UP = "picked_up"
    GATE_IN = "gate_in"
    GATE_OUT = "gate_out"
    LOADED = "loaded"
    DEPARTED = "departed"
    ARRIVED = "arrived"
    DISCHARGED = "discharged"
    IN_TRANSIT = "in_transit"
    CUSTOMS_SUBMITTED = "customs_submitted"
    CUSTOMS_HOLD = "customs_hold"
    CUSTOMS_RELEASED = "customs_released"
    AT_FACILITY = "at_facility"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERY_ATTEMPTED = "delivery_attempted"
    AVAILABLE_FOR_PICKUP = "available_for_pickup"
    DELIVERED = "delivered"
    EXCEPTION = "exception"
    RETURNED = "returned"
    CANCELLED = "cancelled"


class Status(StrEnum):
    PENDING = "pending"
    INFO_RECEIVED = "info_received"
    IN_TRANSIT = "in_transit"
    CUSTOMS = "customs"
    OUT_FOR_DELIVERY = "out_for_delivery"
    FAILED_ATTEMPT = "failed_attempt"
    AVAILABLE_FOR_PICKUP = "available_for_pickup"
    DELIVERED = "delivered"
    EXCEPTION = "exception"
    RETURNED = "returned"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Classifier(StrEnum):
    ACTUAL = "actual"
    ESTIMATED = "estimated"
    PLANNED = "planned"


class Mode(StrEnum):
    SEA = "sea"
    AIR = "air"
    ROAD = "road"
    RAIL = "rail"


class EventKind(StrEnum):
    POSITION = "position"
    MILESTONE = "milestone"
    SENSOR = "sensor"


class ExceptionKind(StrEnum):
    DELAYED = "delayed"
    NO_SIGNAL = "no_signal"
    LONG_DWELL = "long_dwell"
    CUSTOMS_HOLD = "customs_hold"
    OFF_ROUTE = "off_route"
    TEMPERATURE_EXCURSION = "temperature_excursion"
    DELIVERY_FAILED = "delivery_failed"
    DEMURRAGE_RISK = "demurrage_risk"


_S = Status
# Milestone -> (status, substatus), as the contract pins it.
MILESTONE_STATUS: dict[Milestone, tuple[Status, str | None]] = {
    Milestone.BOOKED: (_S.INFO_RECEIVED, None),
    Milestone.INFO_RECEIVED: (_S.INFO_RECEIVED, None),
    Milestone.PICKED_UP: (_S.IN_TRANSIT, None),
    Milestone.GATE_IN: (_S.IN_TRANSIT, None),
    Milestone.GATE_OUT: (_S.IN_TRANSIT, None),
    Milestone.LOADED: (_S.IN_TRANSIT, None),
    Milestone.DEPARTED: (_S.IN_TRANSIT, None),
    Milestone.ARRIVED: (_S.IN_TRANSIT, None),
    Milestone.DISCHARGED: (_S.IN_TRANSIT, None),
    Milestone.IN_TRANSIT: (_S.IN_TRANSIT, None),
    Milestone.AT_FACILITY: (_S.IN_TRANSIT, None),
    Milestone.CUSTOMS_SUBMITTED: (_S.CUSTOMS, "customs.submitted"),
    Milestone.CUSTOMS_HOLD: (_S.CUSTOMS, "customs.hold"),
    Milestone.CUSTOMS_RELEASED: (_S.IN_TRANSIT, "customs.released"),
    Milestone.OUT_FOR_DELIVERY: (_S.OUT_FOR_DELIVERY, None),
    Milestone.DELIVERY_ATTEMPTED: (_S.FAILED_ATTEMPT, None),
    Milestone.AVAILABLE_FOR_PICKUP: (_S.AVAILABLE_FOR_PICKUP, None),
    Milestone.DELIVERED: (_S.DELIVERED, None),
    Milestone.EXCEPTION: (_S.EXCEPTION, None),
    Milestone.RETURNED: (_S.RETURNED, None),
    Milestone.CANCELLED: (_S.CANCELLED, None),
}

FINAL_STATUSES = frozenset({Status.DELIVERED, Status.RETURNED, Status.CANCELLED})

# Milestones strong enough to reopen a final status when they are newer than it. Routine
# scans (gate, load, departure...) that trail a delivery are carrier noise, not a reopening.
REOPENING_MILESTONES = frozenset(
    {
        Milestone.PICKED_UP,
        Milestone.CUSTOMS_HOLD,
        Milestone.OUT_FOR_DELIVERY,
        Milestone.DELIVERY_ATTEMPTED,
        Milestone.AVAILABLE_FOR_PICKUP,
        Milestone.DELIVERED,
        Milestone.EXCEPTION,
        Milestone.RETURNED,
        Milestone.CANCELLED,
    }
)

# When two milestones carry the same event time, the one further along wins.
STATUS_RANK: dict[Status, int] = {
    _S.PENDING: 0,
    _S.INFO_RECEIVED: 1,
    _S.IN_TRANSIT: 2,
    _S.CUSTOMS: 3,
    _S.OUT_FOR_DELIVERY: 4,
    _S.FAILED_ATTEMPT: 5,
    _S.AVAILABLE_FOR_PICKUP: 6,
    _S.EXCEPTION: 7,
    _S.DELIVERED: 8,
    _S.RETURNED: 9,
    _S.CANCELLED: 10,
    _S.EXPIRED: 11,
}
