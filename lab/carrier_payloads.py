"""The exact bytes each simulated feed sends to trackd, with its headers and signature.

Carrier milestones become the carrier's own format per leg: DCSA Track & Trace v2.2 events (3.0.0
`{"events": [...]}` bodies from the lines in `DCSA3_CARRIERS`), X12 214 interchanges, IATA ONE
Record `LogisticsEvent`s, AfterShip tracking webhooks and EasyPost `tracker.updated` events (a
parcel leg carried by FedEx or USPS pushes that carrier's own track results, and one carried by
DHL does so for half of the shipments: DHL Shipment Tracking - Unified pushes); customs come as
trackd event JSON from the broker; trackers publish trackd event JSON or OwnTracks locations over
MQTT, except that a third of the shipments' trackers report their fixes on road legs through a
Traccar server (position forwarding; the first report of a stint after a stop as the `ignitionOn`
event forward). Signatures are keyed with the tenant's ingest secret (UTF-8) exactly as each
source's scheme says (DHL and Traccar send the secret itself in their header).
"""

from __future__ import annotations

import bisect
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from ingest import signatures, sources
from lab.carrier_x12 import x12_214
from lab.simulator import PlannedEvent, Scenario, iso, native_event
from lab.simulator_lanes import Place
from trackd.codes import Classifier, EventKind, Milestone, Mode

M = Milestone
ISO3 = {
    "CN": "CHN",
    "NL": "NLD",
    "DE": "DEU",
    "HK": "HKG",
    "FR": "FRA",
    "MX": "MEX",
    "US": "USA",
    "VN": "VNM",
    "KR": "KOR",
    "GB": "GBR",
    "SG": "SGP",
}
COUNTRY_NAMES = {"DE": "Germany", "FR": "France", "GB": "United Kingdom", "US": "United States", "NL": "Netherlands"}
CONTENT_TYPES = {"x12-214": "text/plain", "onerecord": "application/ld+json"}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message: a signed webhook `POST {base}{target}` or an MQTT publish to `target`."""

    transport: str  # webhook | mqtt
    source: str
    target: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def signature_headers(source: str, body: bytes, secret: str) -> dict[str, str]:
    """The signature header of `source` over the raw body, keyed with the ingest secret."""
    scheme = sources.get(source).signature or signatures.NATIVE
    return {scheme.header: scheme.sign(secret, body)}


def _uuid(s: Scenario, ev: PlannedEvent) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"trackd-sim:{s.event_id(ev)}"))


def _local(t: datetime, place: Place) -> str:
    return t.astimezone(ZoneInfo(place.tz)).isoformat(timespec="seconds")


def _place(ev: PlannedEvent) -> Place:
    assert ev.place is not None
    assert ev.milestone is not None
    assert ev.leg is not None
    return ev.place


# -- DCSA Track & Trace v2.2 (flat events) ----------------------------------------------------
_DCSA_EQUIPMENT = {
    M.GATE_IN: "GTIN",
    M.LOADED: "LOAD",
    M.DISCHARGED: "DISC",
    M.GATE_OUT: "GTOT",
    M.AVAILABLE_FOR_PICKUP: "AVAILABLE_FOR_PICKUP",  # no DCSA code of its own; the lines that send it use this
}
_DCSA_CUSTOMS = {M.CUSTOMS_HOLD: "HOLD", M.CUSTOMS_RELEASED: "RELS"}  # shipment events about the customs document
_DCSA_TRANSPORT = {M.DEPARTED: "DEPA", M.ARRIVED: "ARRI"}
_DCSA_CLASSIFIER = {Classifier.ACTUAL: "ACT", Classifier.ESTIMATED: "EST", Classifier.PLANNED: "PLN"}


def dcsa_event(s: Scenario, ev: PlannedEvent) -> dict[str, Any]:
    place, leg = _place(ev), s.legs[ev.leg or 0]
    ids = leg.ids
    out: dict[str, Any] = {
        "eventID": _uuid(s, ev),
        "eventCreatedDateTime": iso(ev.send_at),
        "eventDateTime": iso(ev.occurred_at),
        "eventClassifierCode": _DCSA_CLASSIFIER[ev.classifier],
    }
    documents = [
        {"documentReferenceType": "BKG", "documentReferenceValue": ids["booking"]},
        {"documentReferenceType": "TRD", "documentReferenceValue": ids["bl"]},
    ]
    references = [{"referenceType": "PO", "referenceValue": ids["po"]}]
    location = {
        "locationName": place.name,
        "latitude": f"{place.lat:.4f}",
        "longitude": f"{place.lon:.4f}",
        "UNLocationCode": place.unlocode,
    }
    at_origin = place == leg.plan.from_place
    call = {
        "transportCallID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{ids['bl']}:{place.unlocode}")),
        "carrierServiceCode": ids["service"],
        "exportVoyageNumber": ids["voyage"],
        "importVoyageNumber": ids["voyage"],
        "transportCallSequenceNumber": 1 if at_origin else 2,
        "UNLocationCode": place.unlocode,
        "facilityTypeCode": "POTE",
        "modeOfTransport": "VESSEL",
        "location": location,
        "vessel": {
            "vesselIMONumber": ids["imo"],
            "vesselName": ids["vessel"],
            "vesselFlag": "DK",
            "vesselOperatorCarrierCode": ids["scac"],
            "vesselOperatorCarrierCodeListProvider": "NMFTA",
        },
    }
    code = ev.milestone
    if code is M.BOOKED:
        out.update(
            eventType="SHIPMENT",
            eventDateTime=iso(ev.occurred_at),
            eventCreatedDateTime=iso(ev.occurred_at),
            shipmentEventTypeCode="CONF",
            documentTypeCode="BKG",
            documentID=ids["booking"],
        )
    elif code in _DCSA_CUSTOMS:
        out.update(
            eventType="SHIPMENT",
            shipmentEventTypeCode=_DCSA_CUSTOMS[code],
            documentTypeCode="CUS",
            documentID=ids["bl"],
            reason=ev.detail or "customs",
        )
    elif code in _DCSA_TRANSPORT:
        out.update(eventType="TRANSPORT", transportEventTypeCode=_DCSA_TRANSPORT[code], transportCall=call)
        if ev.detail == "weather":
            out.update(delayReasonCode="WEA", changeRemark="Heavy weather en route")
    elif code in _DCSA_EQUIPMENT:
        out.update(
            eventType="EQUIPMENT",
            equipmentEventTypeCode=_DCSA_EQUIPMENT[code],
            equipmentReference=ids["container"],
            ISOEquipmentCode="45R1" if "temperature_range_c" in s.body else "45G1",
            emptyIndicatorCode="LADEN",
            eventLocation=location,
            transportCall=call,
            seals=[{"sealNumber": ids["booking"][-6:], "sealSource": "CAR", "sealType": "BLT"}],
        )
    else:
        raise ValueError(f"no DCSA event for {code}")
    out.update(documentReferences=documents, references=references)
    return out


# -- DCSA Track & Trace 3.0.0 (`{"events": [...]}`) ------------------------------------------
DCSA3_CARRIERS = frozenset({"Maersk", "CMA CGM", "Hapag-Lloyd", "Evergreen"})  # the lines that speak 3.0.0


def dcsa3_event(s: Scenario, ev: PlannedEvent) -> dict[str, Any]:
    """The 3.0.0 form of the leg's v2.2 event: classification, shipment, equipment and transport details nested."""
    flat, leg = dcsa_event(s, ev), s.legs[ev.leg or 0]
    ids = leg.ids
    kind = flat["eventType"]
    code_field = {"TRANSPORT": "transportEventTypeCode", "EQUIPMENT": "equipmentEventTypeCode"}.get(
        kind, "shipmentEventTypeCode"
    )
    out: dict[str, Any] = {
        "eventRouting": {
            "originatingParty": {"partyCode": ids["scac"], "codeListProvider": "NMFTA", "partyFunction": "CA"}
        },
        "eventID": flat["eventID"],
        "eventDateTime": flat["eventDateTime"],
        "eventUpdatedDateTime": flat["eventCreatedDateTime"],
        "eventClassification": {
            "eventTypeCode": kind,
            "eventClassifierCode": flat["eventClassifierCode"],
            code_field: flat[code_field],
        },
        "shipmentDetails": {
            "documentReference": {"typeCode": "TRD", "reference": ids["bl"]},
            "additionalDocumentReferences": [{"typeCode": "BKG", "reference": ids["booking"]}],
            "shipmentReferences": [{"typeCode": "PO", "reference": ids["po"]}],
        },
    }
    if kind == "SHIPMENT":
        out["shipmentDetails"]["documentReference"] = {"typeCode": "BKG", "reference": ids["booking"]}
        out["shipmentDetails"]["additionalDocumentReferences"] = [{"typeCode": "TRD", "reference": ids["bl"]}]
        if "reason" in flat:
            out["shipmentDetails"]["reason"] = flat["reason"]
        return out
    call = flat["transportCall"]
    location = call["location"]
    out["eventLocation"] = {
        "locationName": location["locationName"],
        "UNLocationCode": location["UNLocationCode"],
        "facilityTypeCode": call["facilityTypeCode"],
        "geoCoordinate": {"latitude": float(location["latitude"]), "longitude": float(location["longitude"])},
    }
    transport: dict[str, Any] = {
        "transportCall": {
            "transportCallReference": call["transportCallID"],
            "modeOfTransport": "VESSEL",
            "exportVoyageNumberOrReference": {"carrierVoyageNumber": ids["voyage"]},
            "importVoyageNumberOrReference": {"carrierVoyageNumber": ids["voyage"]},
            "vesselTransport": {"vesselIMONumber": ids["imo"], "vesselName": ids["vessel"]},
        }
    }
    if "delayReasonCode" in flat:
        transport |= {"delayReasonCodes": [flat["delayReasonCode"]], "changeRemark": flat["changeRemark"]}
    out["transportDetails"] = transport
    if kind == "EQUIPMENT":
        out["equipmentDetails"] = {
            "equipmentReference": ids["container"],
            "ISOEquipmentCode": flat["ISOEquipmentCode"],
            "emptyIndicatorCode": "LADEN",
            "seals": flat["seals"],
        }
    return out


def _speaks_dcsa3(s: Scenario, ev: PlannedEvent) -> bool:
    return ev.source == "dcsa" and s.legs[ev.leg or 0].carrier in DCSA3_CARRIERS


# -- IATA ONE Record LogisticsEvent ------------------------------------------------------------
_ONE_RECORD = {
    M.BOOKED: ("BKD", "Booked"),
    M.PICKED_UP: ("RCS", "Received from shipper"),
    M.DEPARTED: ("DEP", "Departed"),
    M.ARRIVED: ("ARR", "Arrived"),
    M.DISCHARGED: ("RCF", "Received from flight"),
    M.AVAILABLE_FOR_PICKUP: ("NFD", "Notified for delivery"),
    M.DELIVERED: ("DLV", "Delivered"),
}


def onerecord_event(s: Scenario, ev: PlannedEvent) -> dict[str, Any]:
    place, leg = _place(ev), s.legs[ev.leg or 0]
    assert ev.milestone is not None
    code, name = _ONE_RECORD[ev.milestone]
    prefix, serial = leg.ids["awb"].split("-")
    server = "https://1r." + leg.carrier.lower().replace(" ", "") + ".example"
    waybill = f"{server}/logistics-objects/awb-{prefix}-{serial}"
    return {
        "@context": {"cargo": "https://onerecord.iata.org/ns/cargo#", "xsd": "http://www.w3.org/2001/XMLSchema#"},
        "@type": "cargo:LogisticsEvent",
        "@id": f"{waybill}/logistics-events/{_uuid(s, ev)}",
        "cargo:eventCode": {
            "@type": "cargo:CodeListElement",
            "cargo:code": code,
            "cargo:codeDescription": name,
            "cargo:codeListName": "IATA Cargo-IMP status codes",
        },
        "cargo:eventName": name,
        "cargo:eventDate": {"@type": "xsd:dateTime", "@value": iso(ev.occurred_at)},
        "cargo:creationDate": {"@type": "xsd:dateTime", "@value": iso(ev.send_at)},
        "cargo:eventTimeType": {"@id": f"cargo:{ev.classifier.value.upper()}"},
        "cargo:partialEventIndicator": False,
        "cargo:eventLocation": {
            "@type": "cargo:Location",
            "cargo:locationName": place.name,
            "cargo:locationType": "Airport",
            "cargo:locationCodes": [
                {"@type": "cargo:CodeListElement", "cargo:code": place.iata, "cargo:codeListName": "IATA airport codes"}
            ],
            "cargo:geolocation": {
                "@type": "cargo:Geolocation",
                "cargo:latitude": place.lat,
                "cargo:longitude": place.lon,
            },
        },
        "cargo:eventFor": {
            "@type": "cargo:Waybill",
            "@id": waybill,
            "cargo:waybillType": {"@id": "cargo:MASTER"},
            "cargo:waybillPrefix": prefix,
            "cargo:waybillNumber": serial,
        },
        "cargo:recordingOrganization": {"@type": "cargo:Organization", "cargo:name": leg.carrier},
    }


# -- parcel trackers: AfterShip and EasyPost ----------------------------------------------------
def _leg_history(s: Scenario, ev: PlannedEvent) -> tuple[list[PlannedEvent], PlannedEvent | None]:
    """The leg's actual milestones known when `ev` is sent, and the latest estimate by then."""
    actual, estimate = [], None
    for other in s.events:
        if other.seq > ev.seq:
            break
        if other.leg != ev.leg or other.source != ev.source:
            continue
        if other.classifier is Classifier.ACTUAL:
            actual.append(other)
        else:
            estimate = other
    return actual, estimate


def _newest_first(actual: list[PlannedEvent]) -> list[tuple[PlannedEvent, Milestone, Place]]:
    """The leg's actual milestones newest first, as the parcel carriers' tracking APIs list them,
    each with its milestone and place."""
    out = []
    for cp in reversed(actual):
        assert cp.milestone is not None
        assert cp.place is not None
        out.append((cp, cp.milestone, cp.place))
    return out


_AFTERSHIP = {
    M.INFO_RECEIVED: ("InfoReceived", "InfoReceived_001", "Info received"),
    M.PICKED_UP: ("InTransit", "InTransit_002", "Acceptance scan"),
    M.DEPARTED: ("InTransit", "InTransit_007", "Departure scan"),
    M.IN_TRANSIT: ("InTransit", "InTransit_001", "In transit"),
    M.AT_FACILITY: ("InTransit", "InTransit_003", "Arrival scan"),
    M.ARRIVED: ("InTransit", "InTransit_003", "Arrival scan"),
    M.OUT_FOR_DELIVERY: ("OutForDelivery", "OutForDelivery_001", "Out for delivery"),
    M.DELIVERY_ATTEMPTED: ("AttemptFail", "AttemptFail_002", "Recipient not available"),
    M.AVAILABLE_FOR_PICKUP: ("AvailableForPickup", "AvailableForPickup_001", "Available for pickup"),
    M.DELIVERED: ("Delivered", "Delivered_001", "Shipment delivered"),
    M.RETURNED: ("Exception", "Exception_011", "Returned to sender"),
}


def aftership_webhook(s: Scenario, ev: PlannedEvent) -> dict[str, Any]:
    leg = s.legs[ev.leg or 0]
    actual, estimate = _leg_history(s, ev)
    checkpoints: list[dict[str, Any]] = []
    for cp in actual:
        assert cp.milestone is not None
        assert cp.place is not None
        tag, subtag, message = _AFTERSHIP[cp.milestone]
        p = cp.place
        checkpoints.append(
            {
                "slug": leg.carrier,
                "city": p.city,
                "state": p.state,
                "zip": p.postal_code,
                "country_iso3": ISO3[p.country],
                "country_name": COUNTRY_NAMES.get(p.country, p.country),
                "location": f"{p.city}, {ISO3[p.country]}",
                "message": cp.detail or message,
                "tag": tag,
                "subtag": subtag,
                "subtag_message": message,
                "checkpoint_time": _local(cp.occurred_at, p),
                "created_at": iso(cp.send_at),
                "coordinates": [p.lat, p.lon],
                "raw_tag": subtag,
            }
        )
    latest = actual[-1].milestone if actual else None
    tag, subtag, message = _AFTERSHIP[latest] if latest else ("Pending", "Pending_001", "No information yet")
    dest = leg.plan.to_place
    first_tag = len(checkpoints) >= 1 and all(c["tag"] != tag for c in checkpoints[:-1])
    msg = {
        "id": leg.ids["tracker"][4:36],
        "tracking_number": leg.ids["tracking"],
        "slug": leg.carrier,
        "active": tag not in ("Delivered", "Exception"),
        "tag": tag,
        "subtag": subtag,
        "subtag_message": message,
        "title": s.tracking_number,
        "order_id": leg.ids["po"],
        "origin_country_iso3": ISO3[leg.plan.from_place.country],
        "destination_country_iso3": ISO3[dest.country],
        "shipment_weight": s.body["weight_kg"],
        "shipment_weight_unit": "kg",
        "expected_delivery": _local(estimate.occurred_at, dest) if estimate else None,
        "checkpoints": checkpoints,
        "created_at": iso(s.start),
        "updated_at": iso(ev.send_at),
    }
    return {
        "event": "tracking_update",
        "event_id": _uuid(s, ev),
        "is_tracking_first_tag": first_tag,
        "msg": msg,
        "ts": int(ev.send_at.timestamp()),
    }


_EASYPOST = {
    M.INFO_RECEIVED: ("pre_transit", "label_created", "Shipping label created"),
    M.PICKED_UP: ("in_transit", "received_at_origin_facility", "Picked up by carrier"),
    M.DEPARTED: ("in_transit", "departed_facility", "Departed facility"),
    M.IN_TRANSIT: ("in_transit", "in_transit", "In transit"),
    M.AT_FACILITY: ("in_transit", "received_at_destination_facility", "Arrived at destination facility"),
    M.ARRIVED: ("in_transit", "arrived_at_facility", "Arrived at facility"),
    M.OUT_FOR_DELIVERY: ("out_for_delivery", "out_for_delivery", "Out for delivery"),
    M.DELIVERY_ATTEMPTED: ("failure", "delivery_exception", "Delivery attempted - recipient not available"),
    M.AVAILABLE_FOR_PICKUP: ("available_for_pickup", "arrived_at_pickup_location", "Available for pickup"),
    M.DELIVERED: ("delivered", "arrived_at_destination", "Delivered"),
    M.RETURNED: ("return_to_sender", "return", "Returned to sender"),
}


def easypost_event(s: Scenario, ev: PlannedEvent) -> dict[str, Any]:
    leg = s.legs[ev.leg or 0]
    actual, estimate = _leg_history(s, ev)
    details: list[dict[str, Any]] = []
    for cp in actual:
        assert cp.milestone is not None
        assert cp.place is not None
        status, detail, message = _EASYPOST[cp.milestone]
        p = cp.place
        details.append(
            {
                "object": "TrackingDetail",
                "message": cp.detail or message,
                "description": message,
                "status": status,
                "status_detail": detail,
                "datetime": iso(cp.occurred_at),
                "source": leg.carrier,
                "carrier_code": cp.milestone.value.upper(),
                "tracking_location": {
                    "object": "TrackingLocation",
                    "city": p.city.upper(),
                    "state": p.state,
                    "country": p.country,
                    "zip": p.postal_code,
                },
            }
        )
    status = details[-1]["status"] if details else "pre_transit"
    previous = details[-2]["status"] if len(details) > 1 else "unknown"
    dest, origin = leg.plan.to_place, leg.plan.from_place
    est = estimate.occurred_at.astimezone(ZoneInfo(dest.tz)) if estimate else None
    tracker = {
        "id": leg.ids["tracker"],
        "object": "Tracker",
        "mode": "production",
        "tracking_code": leg.ids["tracking"],
        "status": status,
        "status_detail": details[-1]["status_detail"] if details else "label_created",
        "created_at": iso(s.start),
        "updated_at": iso(ev.send_at),
        "signed_by": "RECEPTION" if status == "delivered" else None,
        "weight": round(float(s.body["weight_kg"]) * 35.274, 1),
        "shipment_id": None,
        "est_delivery_date": iso(estimate.occurred_at) if estimate else None,
        "carrier": leg.carrier,
        "tracking_details": details,
        "carrier_detail": {
            "object": "CarrierDetail",
            "service": "Express",
            "container_type": None,
            "est_delivery_date_local": est.date().isoformat() if est else None,
            "est_delivery_time_local": est.strftime("%H:%M:%S") if est else None,
            "origin_location": f"{origin.city.upper()} {origin.country}",
            "destination_location": f"{dest.city.upper()} {dest.country}",
        },
        "public_url": f"https://track.easypost.com/{leg.ids['tracker'][4:]}",
        "fees": [],
    }
    return {
        "object": "Event",
        "id": "evt_" + _uuid(s, ev).replace("-", ""),
        "mode": "production",
        "description": "tracker.updated",
        "previous_attributes": {"status": previous},
        "created_at": iso(ev.send_at),
        "updated_at": iso(ev.send_at),
        "pending_urls": [],
        "completed_urls": [],
        "result": tracker,
    }


_FEDEX = {
    M.INFO_RECEIVED: ("OC", "Shipment information sent to FedEx"),
    M.PICKED_UP: ("PU", "Picked up"),
    M.DEPARTED: ("DP", "Departed FedEx location"),
    M.IN_TRANSIT: ("IT", "On the way"),
    M.AT_FACILITY: ("AR", "Arrived at FedEx location"),
    M.OUT_FOR_DELIVERY: ("OD", "On FedEx vehicle for delivery"),
    M.DELIVERY_ATTEMPTED: ("DE", "Delivery exception"),
    M.AVAILABLE_FOR_PICKUP: ("HP", "Ready for recipient pickup"),
    M.DELIVERED: ("DL", "Delivered"),
    M.RETURNED: ("RS", "Returning package to shipper"),
}
_PUSHING_CARRIERS = {"fedex": "fedex", "usps": "usps"}  # parcel carriers whose own push replaces the aggregator's
DHL_CARRIERS = frozenset({"dhl-freight", "dhlexpress"})  # DHL's services as the aggregators name them
DHL_SHARE = 2  # one shipment in DHL_SHARE with a DHL leg hears from DHL's own push
TRACCAR_SHARE = 3  # one shipment in TRACCAR_SHARE has its road fixes forwarded by a Traccar server
IGNITION_REPORT = timedelta(minutes=2)  # a stint's report this soon after its start comes with `ignitionOn`


def _share(s: Scenario, feed: str, one_in: int) -> bool:
    """Whether `s` is among the one in `one_in` shipments that `feed` reports (stable across runs)."""
    return zlib.crc32(f"{feed}:{s.shipment_id}".encode()) % one_in == 0


def _push_source(s: Scenario, ev: PlannedEvent) -> str:
    """The source that reports `ev`: a parcel leg's own carrier when it pushes, else the leg's feed."""
    if ev.source in ("aftership", "easypost") and ev.leg is not None:
        carrier = s.legs[ev.leg].carrier.lower()
        if carrier in DHL_CARRIERS and _share(s, "dhl", DHL_SHARE):
            return "dhl"
        return _PUSHING_CARRIERS.get(carrier, ev.source)
    return ev.source


def fedex_push(s: Scenario, ev: PlannedEvent) -> dict[str, Any]:
    """A FedEx Advanced Integrated Visibility push: the leg's track result as the Track API has it."""
    leg = s.legs[ev.leg or 0]
    actual, estimate = _leg_history(s, ev)
    scans: list[dict[str, Any]] = []
    for cp, milestone, p in _newest_first(actual):
        code, text = _FEDEX[milestone]
        scans.append(
            {
                "date": _local(cp.occurred_at, p),
                "eventType": code,
                "eventDescription": text,
                "exceptionCode": "08" if code == "DE" else "",
                "exceptionDescription": (cp.detail or "") if code == "DE" else "",
                "scanLocation": {
                    "city": p.city.upper(),
                    "stateOrProvinceCode": p.state,
                    "postalCode": p.postal_code,
                    "countryCode": p.country,
                    "residential": False,
                },
                "derivedStatusCode": code,
                "derivedStatus": text,
            }
        )
    tracking = leg.ids["tracking"]
    result: dict[str, Any] = {
        "trackingNumberInfo": {"trackingNumber": tracking, "carrierCode": "FDXE"},
        "additionalTrackingInfo": {"packageIdentifiers": [{"type": "PURCHASE_ORDER", "values": [leg.ids["po"]]}]},
        "serviceDetail": {"type": "FEDEX_EXPRESS_SAVER", "description": "FedEx Express Saver"},
        "scanEvents": scans,
    }
    if scans:
        result["latestStatusDetail"] = {"code": scans[0]["eventType"], "description": scans[0]["eventDescription"]}
    if scans and scans[0]["eventType"] == "DL":
        result["deliveryDetails"] = {"receivedByName": "RECEPTION", "deliveryAttempts": "0"}
    if estimate is not None:
        ends = estimate.occurred_at.astimezone(ZoneInfo(leg.plan.to_place.tz))
        window = {"begins": (ends - timedelta(hours=4)).isoformat(), "ends": ends.isoformat()}
        result["estimatedDeliveryTimeWindow"] = {"description": "Estimated delivery window", "window": window}
    complete = [{"trackingNumber": tracking, "trackResults": [result]}]
    return {"transactionId": _uuid(s, ev), "output": {"completeTrackResults": complete}}


_USPS = {
    M.INFO_RECEIVED: ("GX", "Shipping Label Created, USPS Awaiting Item"),
    M.PICKED_UP: ("03", "USPS picked up item"),
    M.DEPARTED: ("82", "Departed USPS Facility"),
    M.IN_TRANSIT: ("NT", "In Transit to Next Facility"),
    M.AT_FACILITY: ("10", "Arrived at USPS Regional Facility"),
    M.ARRIVED: ("07", "Arrived at USPS Facility"),
    M.OUT_FOR_DELIVERY: ("OF", "Out for Delivery"),
    M.DELIVERY_ATTEMPTED: ("02", "Notice Left (No Authorized Recipient Available)"),
    M.AVAILABLE_FOR_PICKUP: ("14", "Available for Pickup"),
    M.DELIVERED: ("01", "Delivered, Front Desk/Reception/Mail Room"),
    M.RETURNED: ("09", "Return to Sender"),
}


def usps_tracking(s: Scenario, ev: PlannedEvent) -> dict[str, Any]:
    """A USPS Tracking 3 tracking object, as a USPS subscription notification carries it bare."""
    leg = s.legs[ev.leg or 0]
    actual, estimate = _leg_history(s, ev)
    scans: list[dict[str, Any]] = []
    for cp, milestone, p in _newest_first(actual):
        code, text = _USPS[milestone]
        local = cp.occurred_at.astimezone(ZoneInfo(p.tz))
        scan = {
            "eventType": cp.detail or text,
            "eventTimestamp": local.replace(tzinfo=None).isoformat(timespec="seconds"),
            "GMTTimestamp": iso(cp.occurred_at),
            "GMTOffset": local.isoformat()[-6:],
            "eventCountry": "",
            "eventCity": p.city.upper(),
            "eventState": p.state,
            "eventZIP": p.postal_code,
            "eventCode": code,
        }
        if code == "01":
            scan["name"] = "RECEPTION"
        scans.append(scan)
    origin, dest = leg.plan.from_place, leg.plan.to_place
    out: dict[str, Any] = {
        "trackingNumber": leg.ids["tracking"],
        "mailClass": "USPS Ground Advantage",
        "mailType": "DOMESTIC_MAIL",
        "statusCategory": scans[0]["eventType"] if scans else "Pre-Shipment",
        "originCity": origin.city.upper(),
        "originState": origin.state,
        "originZIP": origin.postal_code,
        "destinationCity": dest.city.upper(),
        "destinationState": dest.state,
        "destinationZIP": dest.postal_code,
        "trackingEvents": scans,
    }
    if estimate is not None:
        out["expectedDeliveryTimeStamp"] = iso(estimate.occurred_at)
    return out


_DHL = {  # canonical milestone -> (statusCode, status): Unified tracking has five status codes
    M.INFO_RECEIVED: ("pre-transit", "SHIPMENT INFORMATION RECEIVED"),
    M.PICKED_UP: ("transit", "SHIPMENT PICKED UP"),
    M.DEPARTED: ("transit", "DEPARTED FROM FACILITY"),
    M.IN_TRANSIT: ("transit", "IN TRANSIT"),
    M.AT_FACILITY: ("transit", "ARRIVED AT SORT FACILITY"),
    M.ARRIVED: ("transit", "ARRIVED AT DELIVERY FACILITY"),
    M.OUT_FOR_DELIVERY: ("transit", "WITH DELIVERY COURIER"),
    M.DELIVERY_ATTEMPTED: ("failure", "DELIVERY ATTEMPTED - RECIPIENT NOT AVAILABLE"),
    M.AVAILABLE_FOR_PICKUP: ("transit", "AWAITING COLLECTION AT SERVICE POINT"),
    M.DELIVERED: ("delivered", "DELIVERED"),
    M.RETURNED: ("failure", "RETURNED TO SHIPPER"),
}


def _dhl_place(p: Place) -> dict[str, Any]:
    name = COUNTRY_NAMES.get(p.country, p.country)
    return {"address": {"addressLocality": f"{p.city.upper()} - {name.upper()}", "countryCode": p.country}}


def dhl_push(s: Scenario, ev: PlannedEvent) -> dict[str, Any]:
    """A DHL Shipment Tracking - Unified push: the leg's shipment as the tracking API has it."""
    leg = s.legs[ev.leg or 0]
    actual, estimate = _leg_history(s, ev)
    events: list[dict[str, Any]] = []
    for cp, milestone, p in _newest_first(actual):
        code, status = _DHL[milestone]
        events.append(
            {
                "timestamp": _local(cp.occurred_at, p),
                "location": _dhl_place(p),
                "statusCode": code,
                "status": status,
                "description": cp.detail or status.capitalize(),
            }
        )
    origin, dest = leg.plan.from_place, leg.plan.to_place
    shipment: dict[str, Any] = {
        "id": leg.ids["tracking"],
        "service": "freight" if leg.carrier.lower() == "dhl-freight" else "express",
        "origin": _dhl_place(origin),
        "destination": _dhl_place(dest),
        "details": {
            "totalNumberOfPieces": 1,
            "references": [{"number": leg.ids["po"], "type": "customer-reference"}],
        },
        "events": events,
    }
    if events:
        shipment["status"] = events[0]
    else:  # before its first scan: the shipment data DHL has had since the booking
        shipment["status"] = {
            "timestamp": _local(s.start, origin),
            "location": _dhl_place(origin),
            "statusCode": "pre-transit",
            "status": "SHIPMENT INFORMATION RECEIVED",
            "description": "Shipment information received",
        }
    if estimate is not None:
        shipment["estimatedTimeOfDelivery"] = _local(estimate.occurred_at, dest)
    return {"shipments": [shipment]}


# -- devices ----------------------------------------------------------------------------------
def owntracks_location(s: Scenario, ev: PlannedEvent) -> dict[str, Any]:
    return {
        "_type": "location",
        "tid": s.device_id[-2:],
        "lat": round(ev.lat or 0.0, 6),
        "lon": round(ev.lon or 0.0, 6),
        "tst": int(ev.occurred_at.timestamp()),
        "vel": round(ev.speed_kmh or 0.0),
        "cog": round(ev.heading or 0.0) % 360,
        "acc": 5 + ev.seq % 20,
        "batt": round(ev.battery_pct or 0.0),
        "conn": "m",
        "created_at": int(ev.send_at.timestamp()),
    }


def _traccar_time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def _stint(s: Scenario, at: datetime) -> tuple[datetime, bool] | None:
    """(when the tracker's current road stint began, whether it is moving) when it is on a road leg at
    `at` (driving, or standing between two stretches of road); None anywhere else."""
    segs = s.track.segments
    i = bisect.bisect_right(segs, at, key=lambda seg: seg.t0) - 1
    if i < 0 or at >= segs[-1].t1:
        return None
    if segs[i].mode is Mode.ROAD:
        return segs[i].t0, True
    if segs[i].mode is not None:
        return None
    before = next((seg.mode for seg in reversed(segs[:i]) if seg.mode is not None), None)
    after = next((seg.mode for seg in segs[i + 1 :] if seg.mode is not None), None)
    return (segs[i].t0, False) if before is Mode.ROAD and after is Mode.ROAD else None


def _via_traccar(s: Scenario, ev: PlannedEvent) -> bool:
    return (
        ev.kind is EventKind.POSITION and _share(s, "traccar", TRACCAR_SHARE) and _stint(s, ev.occurred_at) is not None
    )


def traccar_forward(s: Scenario, ev: PlannedEvent) -> dict[str, Any]:
    """A Traccar position forward of a fix; the first report of a stint that began after a stop, within
    IGNITION_REPORT of its start, is the `ignitionOn` event forward carrying the same position."""
    stint = _stint(s, ev.occurred_at)
    assert stint is not None
    began, moving = stint
    fix_at = _traccar_time(ev.occurred_at)
    attributes: dict[str, Any] = {"sat": 8 + ev.seq % 5, "ignition": moving, "motion": bool(ev.speed_kmh)}
    if ev.battery_pct is not None:
        attributes["batteryLevel"] = round(ev.battery_pct)
    position_id = 1_000_000 * s.index + ev.seq
    position = {
        "id": position_id,
        "attributes": attributes,
        "deviceId": 10_000 + s.index,
        "protocol": "teltonika",
        "serverTime": _traccar_time(ev.send_at),
        "deviceTime": fix_at,
        "fixTime": fix_at,
        "outdated": False,
        "valid": True,
        "latitude": round(ev.lat or 0.0, 6),
        "longitude": round(ev.lon or 0.0, 6),
        "altitude": 0.0,
        "speed": round((ev.speed_kmh or 0.0) / 1.852, 2),
        "course": round(ev.heading or 0.0, 1) % 360,
        "accuracy": 0.0,
    }
    device = {
        "id": 10_000 + s.index,
        "name": f"{s.lane} truck {s.index}",
        "uniqueId": s.device_id,
        "status": "online",
        "category": "truck",
    }
    if moving and began > s.start and ev.occurred_at - began < IGNITION_REPORT:
        event = {
            "id": position_id,
            "attributes": {},
            "deviceId": device["id"],
            "type": "ignitionOn",
            "eventTime": _traccar_time(began),
            "positionId": position_id,
            "geofenceId": 0,
            "maintenanceId": 0,
        }
        return {"event": event, "position": position, "device": device}
    return {"position": position, "device": device}


def _json_body(s: Scenario, ev: PlannedEvent) -> Any:
    if _speaks_dcsa3(s, ev):
        return {"events": [dcsa3_event(s, ev)]}
    if ev.source == "dcsa":
        return [dcsa_event(s, ev)]
    if ev.source == "onerecord":
        return onerecord_event(s, ev)
    if ev.source == "aftership":
        return aftership_webhook(s, ev)
    if ev.source == "easypost":
        return easypost_event(s, ev)
    if ev.source == "native":
        return native_event(s, ev)
    raise ValueError(f"no webhook format for source {ev.source!r}")


def encode(s: Scenario, ev: PlannedEvent, *, tenant: str, secret: str, topic_prefix: str = "") -> Delivery:
    """The message that delivers `ev` to trackd through its real ingest path."""
    if ev.transport == "mqtt" and _via_traccar(s, ev):
        body = orjson.dumps(traccar_forward(s, ev))
        headers = {"Content-Type": "application/json", **signature_headers("traccar", body, secret)}
        return Delivery("webhook", "traccar", f"/v1/ingest/{tenant}/traccar", body, headers)
    if ev.transport == "mqtt":
        if ev.source == "owntracks":
            topic = f"{topic_prefix}owntracks/{tenant}/{s.device_id}"
            return Delivery("mqtt", "owntracks", topic, orjson.dumps(owntracks_location(s, ev)))
        payload = native_event(s, ev, with_shipment=False)
        payload.pop("device", None)
        topic = f"{topic_prefix}trackd/{tenant}/devices/{s.device_id}/events"
        return Delivery("mqtt", "native", topic, orjson.dumps(payload))
    if ev.kind is not EventKind.MILESTONE:
        raise ValueError(f"{ev.kind} events travel over MQTT")
    source = _push_source(s, ev)
    if source == "fedex":
        body = orjson.dumps(fedex_push(s, ev))
    elif source == "usps":
        body = orjson.dumps(usps_tracking(s, ev))
    elif source == "dhl":
        body = orjson.dumps(dhl_push(s, ev))
    else:
        body = x12_214(s, ev).encode("ascii") if ev.source == "x12-214" else orjson.dumps(_json_body(s, ev))
    headers = {
        "Content-Type": CONTENT_TYPES.get(source, "application/json"),
        **signature_headers(source, body, secret),
    }
    if ev.source == "dcsa":
        headers["API-Version"] = "3.0.0" if _speaks_dcsa3(s, ev) else "2.2.0"
    return Delivery("webhook", source, f"/v1/ingest/{tenant}/{source}", body, headers)
