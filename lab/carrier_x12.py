"""ANSI X12 214 (Transportation Carrier Shipment Status, 004010) as trucking and rail carriers send it.

One interchange per status: ISA/GS envelope, ST/SE transaction set with B10 (carrier PRO,
shipment id, SCAC), L11 references, one LX loop with AT7 status, MS1 location, MS2 equipment and
AT8 weight, then SE/GE/IEA with their counts and control numbers. Times are local (`LT`) to the
status location, as US carriers send them.
"""

from __future__ import annotations

import hashlib
import unicodedata
from datetime import UTC
from zoneinfo import ZoneInfo

from lab.simulator import PlannedEvent, Scenario
from trackd.codes import Classifier, Milestone

M = Milestone
SEGMENT_TERMINATOR = "~"
RECEIVER_ID = "TRACKD"
# AT701 shipment status codes.
AT7_STATUS = {
    M.PICKED_UP: "CP",  # completed loading at pick-up location
    M.DEPARTED: "AF",  # carrier departed pick-up location with shipment
    M.IN_TRANSIT: "X6",  # en route to delivery location
    M.ARRIVED: "X1",  # arrived at delivery location
    M.DELIVERED: "D1",  # completed unloading at delivery location
    M.DELIVERY_ATTEMPTED: "AP",  # delivery not completed
    M.RETURNED: "A3",  # shipment returned to shipper
}
ESTIMATED_DELIVERY = "AG"


def control_number(s: Scenario, ev: PlannedEvent) -> int:
    """A 9-digit interchange control number, stable for the same event."""
    digest = hashlib.sha256(s.event_id(ev).encode()).digest()
    return int.from_bytes(digest[:8], "big") % 999_999_999 + 1


def _text(value: str, limit: int) -> str:
    """X12 element text: ASCII upper case without delimiters."""
    plain = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii").upper()
    return "".join(ch for ch in plain if ch not in "*~>^")[:limit].strip()


def x12_214(s: Scenario, ev: PlannedEvent) -> str:
    """The 214 interchange reporting `ev` (an actual status, or an AG estimated delivery)."""
    assert ev.place is not None
    assert ev.milestone is not None
    assert ev.leg is not None
    leg = s.legs[ev.leg]
    ids, place = leg.ids, ev.place
    scac = _text(ids["scac"], 4)
    if ev.classifier is Classifier.ESTIMATED:
        status, reason = ESTIMATED_DELIVERY, "NS"
    else:
        status = AT7_STATUS[ev.milestone]
        reason = "B1" if ev.milestone is M.DELIVERY_ATTEMPTED else "NS"  # B1: consignee closed
    local = ev.occurred_at.astimezone(ZoneInfo(place.tz))
    sent = ev.send_at.astimezone(UTC)
    ctl = control_number(s, ev)
    transaction = [
        "ST*214*0001",
        f"B10*{ids['pro']}*{_text(s.tracking_number, 30)}*{scac}",
        f"L11*{ids['bol']}*BM",
        f"L11*{ids['po']}*PO",
        "LX*1",
        f"AT7*{status}*{reason}***{local:%Y%m%d}*{local:%H%M}*LT",
        f"MS1*{_text(place.city, 30)}*{place.state or ''}*{place.country}",
        f"MS2*{scac}*{_text(ids['equipment'], 10)}*{ids['equipment_kind']}",
        f"AT8*G*K*{round(float(s.body['weight_kg']))}*1",
    ]
    transaction.append(f"SE*{len(transaction) + 1}*0001")
    segments = [
        f"ISA*00*{'':10}*00*{'':10}*02*{scac:<15}*ZZ*{RECEIVER_ID:<15}*{sent:%y%m%d}*{sent:%H%M}*U*00401*"
        f"{ctl:09d}*0*P*>",
        f"GS*QM*{scac}*{RECEIVER_ID}*{sent:%Y%m%d}*{sent:%H%M}*{ctl}*X*004010",
        *transaction,
        f"GE*1*{ctl}",
        f"IEA*1*{ctl:09d}",
    ]
    return "".join(seg + SEGMENT_TERMINATOR + "\n" for seg in segments)
