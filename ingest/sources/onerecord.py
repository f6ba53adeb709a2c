"""IATA ONE Record `LogisticsEvent`s (JSON-LD) carrying air cargo status codes.

Accepted: one event, an array of them, or a JSON-LD `@graph`. Property names may be compact
(`cargo:eventCode`), full IRIs or plain (with an `@vocab` context); literals may be wrapped as
`{"@value": ...}`. The air waybill comes from the `eventFor` (or older `linkedObject`) object:
its `waybillPrefix`/`waybillNumber`, or an 11-digit AWB in its `@id`. Every event is air mode.
"""

from __future__ import annotations

import re
from typing import Any

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.codes import Classifier, Mode
from trackd.errors import ValidationError
from trackd.model import Event, Location, SourceContext, derive_event_id
from trackd.times import optional_number

SOURCE = "onerecord"
CODES = c.load_codes(SOURCE)
_PREFIXES = ("cargo:", "https://onerecord.iata.org/ns/cargo#", "https://onerecord.iata.org/cargo#")
_AWB = re.compile(r"(?<!\d)(\d{3})[- ]?(\d{8})(?!\d)")


def _get(node: dict[str, Any], name: str) -> Any:
    """A property by its plain name, whichever way the JSON-LD spells it; a literal unwrapped."""
    for key in (name, *(p + name for p in _PREFIXES)):
        if key in node:
            value = node[key]
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if isinstance(value, dict) and "@value" in value:
                return value["@value"]
            return value
    return None


def _term(value: Any, where: str) -> str | None:
    """A code or enum given as a string, a CodeListElement or an `@id` IRI: its last segment."""
    if isinstance(value, dict):
        value = _get(value, "code") or value.get("@id")
    raw = c.text(value, where, max_len=300)
    if raw is None:
        return None
    for sep in ("#", "/", ":"):
        raw = raw.rsplit(sep, 1)[-1]
    return raw.strip() or None


def _waybill(node: Any, where: str, *, nested: bool = True) -> tuple[str | None, tuple[str, ...]]:
    """(air waybill number, every identifier) of the logistics object an event is about.

    A Shipment or Piece may embed its Waybill one level down; deeper nesting is not followed.
    """
    if node is None:
        return None, ()
    if isinstance(node, str):
        node = {"@id": node}
    node = c.obj(node, where)
    prefix = c.text(_get(node, "waybillPrefix"), where + ".waybillPrefix")
    number = c.text(_get(node, "waybillNumber"), where + ".waybillNumber")
    awb = None
    if number:
        match = _AWB.search(f"{prefix or ''}{number}")
        awb = f"{match[1]}-{match[2]}" if match else "-".join(p for p in (prefix, number) if p)
    ident = c.text(node.get("@id"), where + ".@id", max_len=500)
    if awb is None and ident:
        match = _AWB.search(ident.rstrip("/").rsplit("/", 1)[-1])
        awb = f"{match[1]}-{match[2]}" if match else None
    inner_awb: str | None = None
    inner_refs: tuple[str, ...] = ()
    if nested and _get(node, "waybill") is not None:
        inner_awb, inner_refs = _waybill(_get(node, "waybill"), where + ".waybill", nested=False)
    awb = awb or inner_awb
    return awb, c.refs(awb, *inner_refs, ident if ident and len(ident) <= c.MAX_TEXT else None)


def _location(value: Any, where: str) -> Location | None:
    if value is None or isinstance(value, str):
        return None
    node = c.obj(value, where)
    codes = _get(node, "locationCodes") or _get(node, "code")
    code_list = codes if isinstance(codes, list) else [codes]
    iata = unlocode = None
    for i, entry in enumerate(code_list):
        code = _term(entry, f"{where}.locationCodes[{i}]") if entry is not None else None
        if code and len(code) == 3 and code.isalpha():
            iata = iata or code.upper()
        elif code and len(code) == 5:
            unlocode = unlocode or code.upper()
    geo = _get(node, "geolocation")
    geo = c.obj(geo, where + ".geolocation") if geo is not None else {}
    address = _get(node, "address")
    country = None
    if isinstance(address, dict):
        country = _term(_get(address, "country"), where + ".address.country")
    return c.location(
        where,
        name=c.text(_get(node, "locationName"), where + ".locationName"),
        iata=iata,
        unlocode=unlocode,
        country=(country or (unlocode[:2] if unlocode else None)),
        lat=optional_number(_get(geo, "latitude"), where + ".geolocation.latitude"),
        lon=optional_number(_get(geo, "longitude"), where + ".geolocation.longitude"),
    )


def _classifier(value: Any, where: str) -> Classifier:
    term = _term(value, where)
    if term is None:
        return Classifier.ACTUAL
    found = CODES["time_type"].get(term.upper())
    if found is None:
        raise ValidationError(where, f"{term!r} is not ACTUAL, EXPECTED, PLANNED or REQUESTED")
    return Classifier(found)


def _carrier(node: dict[str, Any], where: str) -> str | None:
    for name in ("recordingOrganization", "recordedBy", "carrier"):
        org = _get(node, name)
        if isinstance(org, dict):
            code = c.text(_get(org, "airlineCode"), f"{where}{name}.airlineCode")
            if code:
                return code
    return None


def _parse(item: Any, where: str, ctx: SourceContext) -> Event:
    node = c.obj(item, where or "body")
    prefix = where + "." if where else ""
    code = _term(_get(node, "eventCode"), prefix + "eventCode")
    if code is None:
        raise ValidationError(prefix + "eventCode", "is required")
    code = code.upper()
    occurred_at = c.time_at(_get(node, "eventDate") or _get(node, "dateTime"), prefix + "eventDate")
    created = _get(node, "creationDate")
    created_at = None if created is None else c.time_at(created, prefix + "creationDate")
    target_key = "eventFor" if _get(node, "eventFor") is not None else "linkedObject"
    awb, all_refs = _waybill(_get(node, target_key), prefix + target_key)
    if not all_refs:
        raise ValidationError(prefix + "eventFor", "names no air waybill or logistics object")
    info = c.info(
        c.milestone(CODES["status"], code),
        code,
        classifier=_classifier(
            _get(node, "eventTimeType") or _get(node, "eventTypeIndicator"), prefix + "eventTimeType"
        ),
        location=_location(_get(node, "eventLocation") or _get(node, "location"), prefix + "eventLocation"),
        mode=Mode.AIR,
        description=c.text(_get(node, "eventName"), prefix + "eventName", max_len=1000),
    )
    ident = c.text(node.get("@id"), prefix + "@id", max_len=1000)
    use_ident = ident is not None and len(ident) <= 180
    return c.milestone_event(
        prefix,
        ctx,
        info=info,
        event_id=f"{SOURCE}:{ident}" if use_ident else derive_event_id(SOURCE, node),
        source=SOURCE,
        occurred_at=occurred_at,
        created_at=created_at,
        shipment=awb or all_refs[0],
        refs=all_refs,
        carrier=_carrier(node, prefix),
        raw=node,
    )


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """One LogisticsEvent, an array of them, or a `@graph` of them, to milestone events."""
    value = c.loads(payload)
    if isinstance(value, dict) and isinstance(value.get("@graph"), list):
        value = value["@graph"]
    events = c.items(value, "body")
    if not events:
        raise ValidationError("body", "is an empty array")
    if len(events) == 1 and isinstance(value, dict):
        return [_parse(events[0], "", ctx)]
    return [_parse(item, f"[{i}]", ctx) for i, item in enumerate(events)]


ADAPTER = Adapter(SOURCE, normalize, signature=signatures.NATIVE, status=202, whole=False, webhook=True)
