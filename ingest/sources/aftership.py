"""AfterShip tracking webhooks: `{"event", "event_id", "ts", "msg": <tracking>}`.

Each checkpoint becomes a milestone (its `tag`, refined by `subtag` where that says more, e.g.
`InTransit_007` departure scan -> departed). The tracking's estimate (`latest_estimated_delivery`,
`expected_delivery`, courier or AfterShip EDD) becomes an estimated `delivered` milestone. A
tracking with no checkpoints yet gives one milestone of its own `tag`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.codes import Classifier, Milestone
from trackd.errors import ValidationError
from trackd.model import Event, Location, SourceContext
from trackd.times import number, parse_time

SOURCE = "aftership"
CODES = c.load_codes(SOURCE)
_REF_FIELDS = ("order_number", "order_id")


def _code(tag: str, subtag: str | None) -> Milestone | None:
    if subtag and subtag in CODES["subtag"]:
        return c.milestone(CODES["subtag"], subtag)
    return c.milestone(CODES["tag"], tag)


def _coordinates(value: Any, where: str) -> tuple[float | None, float | None]:
    """`[lat, lon]` (older API) or `{"latitude", "longitude"}`; empty means unknown."""
    if value in (None, [], {}):
        return None, None
    if isinstance(value, list) and len(value) == 2:
        return number(value[0], where + "[0]"), number(value[1], where + "[1]")
    if isinstance(value, dict) and value.get("latitude") is not None and value.get("longitude") is not None:
        lat = number(value["latitude"], where + ".latitude")
        return lat, number(value["longitude"], where + ".longitude")
    raise ValidationError(where, "must be [lat, lon] or {latitude, longitude}")


def _location(cp: dict[str, Any], where: str) -> Location | None:
    lat, lon = _coordinates(cp.get("coordinates"), where + "coordinates")
    iso3 = c.text(cp.get("country_region") or cp.get("country_iso3"), where + "country_iso3")
    parts = [c.text(cp.get(k), where + k) for k in ("city", "state")]
    name = c.text(cp.get("location"), where + "location", max_len=1000) or ", ".join(p for p in parts if p)
    country = CODES["country_iso3"].get(iso3.upper(), iso3) if iso3 else None
    return c.location(where.rstrip("."), name=name[:200] if name else None, country=country, lat=lat, lon=lon)


def _checkpoint_time(value: Any, place: Location | None, where: str) -> datetime:
    """Carriers give local times, often without an offset: read them where the scan happened."""
    if not isinstance(value, str):
        return c.time_at(value, where)
    parsed = c.time_at(value, where)
    if place is None or place.lat is None or place.lon is None:
        return parsed
    try:
        has_offset = datetime.fromisoformat(value.strip().replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return parsed
    local = None if has_offset else c.zone_at(place.lat, place.lon)
    return parsed if local is None else c.local_time(parsed.replace(tzinfo=None), local)


def _estimate(msg: dict[str, Any]) -> tuple[str, Any] | None:
    """(field, value) of the best delivery estimate the tracking carries."""
    latest = msg.get("latest_estimated_delivery")
    if isinstance(latest, dict):
        for key in ("datetime", "datetime_max"):
            if latest.get(key):
                return f"latest_estimated_delivery.{key}", latest[key]
    if msg.get("expected_delivery"):
        return "expected_delivery", msg["expected_delivery"]
    for key in ("courier_estimated_delivery_date", "aftership_estimated_delivery_date"):
        edd = msg.get(key)
        if isinstance(edd, dict) and edd.get("estimated_delivery_date"):
            return f"{key}.estimated_delivery_date", edd["estimated_delivery_date"]
    return None


def _created(msg: dict[str, Any], body: dict[str, Any]) -> datetime | None:
    if msg.get("updated_at"):
        return parse_time(msg["updated_at"], "msg.updated_at", require_offset=False)
    if body.get("ts") is not None:
        return parse_time(body["ts"], "ts")
    return None


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """One tracking webhook to its checkpoint milestones and its estimated delivery."""
    body = c.obj(c.loads(payload), "body")
    msg = c.obj(body["msg"], "msg") if "msg" in body else body
    tracking = c.req_text(msg.get("tracking_number"), "msg.tracking_number")
    slug = c.text(msg.get("slug"), "msg.slug")
    refs = c.refs(tracking, *(c.text(msg.get(k), "msg." + k) for k in _REF_FIELDS))
    common = {"source": SOURCE, "shipment": tracking, "refs": refs, "carrier": slug}
    checkpoints = msg.get("checkpoints") or []
    if not isinstance(checkpoints, list):
        raise ValidationError("msg.checkpoints", "must be an array")
    if len(checkpoints) > c.MAX_BATCH:
        raise ValidationError("msg.checkpoints", f"holds more than {c.MAX_BATCH} checkpoints")
    events: list[Event] = []
    seen: dict[str, int] = {}
    for i, cp in enumerate(checkpoints):
        where = f"msg.checkpoints[{i}]."
        cp = c.obj(cp, where.rstrip("."))
        tag = c.req_text(cp.get("tag"), where + "tag")
        subtag = c.text(cp.get("subtag"), where + "subtag")
        raw_time = cp.get("checkpoint_time")
        place = _location(cp, where)
        occurred_at = _checkpoint_time(raw_time, place, where + "checkpoint_time")
        event_id = f"{SOURCE}:{tracking}:{raw_time}:{tag}"[:190]
        seen[event_id] = seen.get(event_id, 0) + 1
        if seen[event_id] > 1:  # two scans of one tag at one minute: keep both, stably
            event_id = f"{event_id}:{seen[event_id]}"
        info = c.info(
            _code(tag, subtag),
            subtag or tag,
            location=place,
            description=c.text(cp.get("message"), where + "message", max_len=1000),
        )
        carrier = c.text(cp.get("slug"), where + "slug") or slug
        events.append(
            c.milestone_event(
                where,
                ctx,
                info=info,
                event_id=event_id,
                occurred_at=occurred_at,
                raw=cp,
                **(common | {"carrier": carrier}),
            )
        )
    estimate = _estimate(msg)
    if estimate is not None:
        field, value = estimate
        info = c.info(Milestone.DELIVERED, field, classifier=Classifier.ESTIMATED)
        events.append(
            c.milestone_event(
                "msg.",
                ctx,
                info=info,
                event_id=f"{SOURCE}:{tracking}:edd:{value}"[:200],
                occurred_at=c.estimate_time(value, "msg." + field),
                created_at=_created(msg, body),
                raw={field: value},
                **common,
            )
        )
    if not checkpoints:
        tag = c.req_text(msg.get("tag"), "msg.tag")
        when = msg.get("updated_at") or msg.get("created_at") or body.get("ts")
        info = c.info(_code(tag, c.text(msg.get("subtag"), "msg.subtag")), tag)
        event_id = f"{SOURCE}:{tracking}:{when}:{tag}"[:200]
        events.append(
            c.milestone_event(
                "msg.",
                ctx,
                info=info,
                event_id=event_id,
                occurred_at=c.time_at(when, "msg.updated_at"),
                raw=msg,
                **common,
            )
        )
    return events


ADAPTER = Adapter(
    SOURCE,
    normalize,
    signature=signatures.Scheme("aftership-hmac-sha256", "", "base64"),
    status=202,
    whole=False,
    webhook=True,
)
