"""EasyPost webhooks: an `Event` whose `result` is a `Tracker` (a bare Tracker is accepted too).

Each entry of `tracking_details` becomes a milestone (its `status`, refined by `status_detail`
while in transit); `est_delivery_date` becomes an estimated `delivered` milestone. Events about
other objects (batches, refunds, insurance, ...) carry no tracking data and give [].
"""

from __future__ import annotations

from typing import Any

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.codes import Classifier, Milestone
from trackd.errors import ValidationError
from trackd.model import Event, Location, SourceContext

SOURCE = "easypost"
CODES = c.load_codes(SOURCE)


def _code(status: str, detail: str | None) -> Milestone | None:
    if status == "in_transit" and detail is not None and detail in CODES["in_transit_detail"]:
        return c.milestone(CODES["in_transit_detail"], detail)
    return c.milestone(CODES["status"], status)


def _location(value: Any, where: str) -> Location | None:
    loc = c.opt_obj(value, where)
    if loc is None:
        return None
    city, state = c.text(loc.get("city"), where + ".city"), c.text(loc.get("state"), where + ".state")
    name = ", ".join(p for p in (city, state) if p) or None
    return c.location(where, name=name, country=c.text(loc.get("country"), where + ".country"))


def _tracker(body: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The Tracker and its field path, or None for an Event about something else."""
    if body.get("object") == "Tracker":
        return body, ""
    if body.get("object") != "Event" and "result" not in body:
        raise ValidationError("object", "must be an EasyPost Event (or Tracker)")
    result = c.obj(body.get("result"), "result")
    if result.get("object") != "Tracker":
        description = body.get("description")
        if isinstance(description, str) and description.startswith("tracker."):
            raise ValidationError("result.object", "a tracker event must carry a Tracker")
        return None
    return result, "result."


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """One webhook Event to the tracker's milestones and estimated delivery."""
    body = c.obj(c.loads(payload), "body")
    found = _tracker(body)
    if found is None:
        return []
    tracker, w = found
    code = c.req_text(tracker.get("tracking_code"), w + "tracking_code")
    common: dict[str, Any] = {
        "source": SOURCE,
        "shipment": code,
        "refs": c.refs(code),
        "carrier": c.text(tracker.get("carrier"), w + "carrier"),
    }
    details = tracker.get("tracking_details") or []
    if not isinstance(details, list):
        raise ValidationError(w + "tracking_details", "must be an array")
    if len(details) > c.MAX_BATCH:
        raise ValidationError(w + "tracking_details", f"holds more than {c.MAX_BATCH} entries")
    events: list[Event] = []
    seen: dict[str, int] = {}
    for i, detail in enumerate(details):
        where = f"{w}tracking_details[{i}]."
        detail = c.obj(detail, where.rstrip("."))
        status = c.req_text(detail.get("status"), where + "status")
        status_detail = c.text(detail.get("status_detail"), where + "status_detail")
        raw_time = detail.get("datetime")
        event_id = f"{SOURCE}:{code}:{raw_time}:{status}"[:190]
        seen[event_id] = seen.get(event_id, 0) + 1
        if seen[event_id] > 1:  # two scans of one status at one time: keep both, stably
            event_id = f"{event_id}:{seen[event_id]}"
        info = c.info(
            _code(status, status_detail),
            status,
            location=_location(detail.get("tracking_location"), where + "tracking_location"),
            description=c.text(detail.get("message") or detail.get("description"), where + "message", max_len=1000),
        )
        events.append(
            c.milestone_event(
                where,
                ctx,
                info=info,
                event_id=event_id,
                occurred_at=c.time_at(raw_time, where + "datetime"),
                raw=detail,
                **common,
            )
        )
    estimate = tracker.get("est_delivery_date")
    if estimate:
        made = tracker.get("updated_at") or body.get("updated_at") or body.get("created_at")
        info = c.info(Milestone.DELIVERED, "est_delivery_date", classifier=Classifier.ESTIMATED)
        events.append(
            c.milestone_event(
                w,
                ctx,
                info=info,
                event_id=f"{SOURCE}:{code}:est:{estimate}"[:200],
                occurred_at=c.estimate_time(estimate, w + "est_delivery_date"),
                created_at=None if made is None else c.time_at(made, w + "updated_at"),
                raw={"est_delivery_date": estimate},
                **common,
            )
        )
    if not details and not estimate:
        status = c.req_text(tracker.get("status"), w + "status")
        when = tracker.get("updated_at") or tracker.get("created_at")
        info = c.info(_code(status, c.text(tracker.get("status_detail"), w + "status_detail")), status)
        events.append(
            c.milestone_event(
                w,
                ctx,
                info=info,
                event_id=f"{SOURCE}:{code}:{when}:{status}"[:200],
                occurred_at=c.time_at(when, w + "updated_at"),
                raw=tracker,
                **common,
            )
        )
    return events


ADAPTER = Adapter(
    SOURCE,
    normalize,
    signature=signatures.Scheme("X-Hmac-Signature", "hmac-sha256-hex=", "hex"),
    status=202,
    whole=False,
    webhook=True,
)
