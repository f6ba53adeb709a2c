"""ANSI X12 214 (Transportation Carrier Shipment Status), as `text/plain`.

The interchange envelope (ISA/GS/ST ... SE/GE/IEA) is checked first: separators from the fixed
ISA, matching control numbers and segment counts; a broken envelope is an `EnvelopeError` naming
the segment. Each transaction set gives its shipment identifiers (B10, L11) and, per LX loop,
one milestone per AT7 status with its MS1 place and MS2 equipment. Times without a zone (`LT`)
are read in the zone of the MS1 place (coordinates, else US state / Canadian province / Mexican
state), else UTC. Every event is road mode.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.codes import Classifier, Mode
from trackd.errors import EnvelopeError, ValidationError
from trackd.model import Event, Location, SourceContext, derive_event_id

SOURCE = "x12-214"
CODES = c.load_codes("x12_214")
MAX_BYTES = 5 * 1024 * 1024
Segment = list[str]


def _el(seg: Segment, n: int) -> str:
    return seg[n].strip() if len(seg) > n else ""


def _segments(payload: bytes) -> list[Segment]:
    if len(payload) > MAX_BYTES:
        raise EnvelopeError("ISA", f"the interchange is larger than {MAX_BYTES} bytes")
    try:
        text = payload.decode("utf-8").lstrip("\ufeff \t\r\n")
    except UnicodeDecodeError:
        raise EnvelopeError("ISA", "the interchange is not text") from None
    if not text.startswith("ISA"):
        raise EnvelopeError("ISA", "an interchange starts with the ISA segment")
    if len(text) < 106:
        raise EnvelopeError("ISA", "is shorter than its fixed 106 characters")
    elem, term = text[3], text[105]
    if elem.isalnum() or elem.isspace() or term.isalnum() or term == elem:
        raise EnvelopeError("ISA", "does not declare usable element and segment separators")
    segments = []
    for raw in text.split(term):
        seg = raw.strip("\r\n").lstrip(" \t")
        if seg:
            segments.append(seg.split(elem))
    return segments


def _count(seg: Segment, n: int, name: str) -> int:
    value = _el(seg, n)
    if not (value.isascii() and value.isdigit()):
        raise EnvelopeError(seg[0], f"{name} ({seg[0]}{n:02d}) must be a number, not {value!r}")
    return int(value)


def _transaction_sets(segments: list[Segment]) -> list[list[Segment]]:
    """The ST..SE sets of every interchange, after checking each envelope level."""
    sets: list[list[Segment]] = []
    pos = 0
    while pos < len(segments):
        isa = segments[pos]
        if isa[0] != "ISA":
            raise EnvelopeError(isa[0][:3] or "ISA", "expected ISA, the interchange header")
        if len(isa) != 17:
            raise EnvelopeError("ISA", f"has {len(isa) - 1} elements; 16 expected")
        pos, groups = pos + 1, 0
        while True:
            if pos >= len(segments):
                raise EnvelopeError("IEA", "is missing: the interchange is cut short")
            seg = segments[pos]
            if seg[0] == "IEA":
                if _count(seg, 1, "group count") != groups:
                    raise EnvelopeError("IEA", f"counts {_el(seg, 1)} groups; the interchange has {groups}")
                if _el(seg, 2) != _el(isa, 13):
                    raise EnvelopeError("IEA", f"control number {_el(seg, 2)!r} does not match ISA13 {_el(isa, 13)!r}")
                pos += 1
                break
            if seg[0] == "ISA":
                raise EnvelopeError("IEA", "is missing: another ISA starts before the interchange ends")
            if seg[0] != "GS":
                raise EnvelopeError(seg[0][:3], "is outside a functional group (GS ... GE)")
            pos = _group(segments, pos, sets)
            groups += 1
    if not sets:
        raise EnvelopeError("ST", "the interchange holds no transaction set")
    return sets


def _group(segments: list[Segment], pos: int, sets: list[list[Segment]]) -> int:
    """Checks one GS ... GE group, appends its sets, and returns the position after GE."""
    gs, pos, count = segments[pos], pos + 1, 0
    while True:
        if pos >= len(segments):
            raise EnvelopeError("GE", "is missing: the functional group is cut short")
        seg = segments[pos]
        if seg[0] == "GE":
            if _count(seg, 1, "set count") != count:
                raise EnvelopeError("GE", f"counts {_el(seg, 1)} transaction sets; the group has {count}")
            if _el(seg, 2) != _el(gs, 6):
                raise EnvelopeError("GE", f"control number {_el(seg, 2)!r} does not match GS06 {_el(gs, 6)!r}")
            return pos + 1
        if seg[0] in ("IEA", "ISA", "GS"):
            raise EnvelopeError("GE", f"is missing: {seg[0]} comes before the end of functional group {_el(gs, 6)!r}")
        if seg[0] != "ST":
            raise EnvelopeError(seg[0][:3], "is outside a transaction set (ST ... SE)")
        start = pos
        pos += 1
        while pos < len(segments) and segments[pos][0] != "SE":
            if segments[pos][0] in ("ST", "GS", "GE", "ISA", "IEA"):
                raise EnvelopeError("SE", f"is missing for transaction set {_el(seg, 2)!r}")
            pos += 1
        if pos >= len(segments):
            raise EnvelopeError("SE", f"is missing for transaction set {_el(seg, 2)!r}")
        se = segments[pos]
        body = segments[start : pos + 1]
        if _count(se, 1, "segment count") != len(body):
            raise EnvelopeError("SE", f"counts {_el(se, 1)} segments; the set has {len(body)}")
        if _el(se, 2) != _el(seg, 2):
            raise EnvelopeError("SE", f"control number {_el(se, 2)!r} does not match ST02 {_el(seg, 2)!r}")
        sets.append(body)
        count += 1
        pos += 1


def _degrees(value: str, direction: str, where: str, limit: float) -> float:
    """MS1 coordinates: DDDMMSS (or DDMMSS) with a direction, or decimal degrees."""
    try:
        if "." in value or value.startswith("-"):
            out = float(value)
        elif value.isdigit() and len(value) in (6, 7):
            out = int(value[:-4]) + int(value[-4:-2]) / 60 + int(value[-2:]) / 3600
        else:
            raise ValueError(value)
    except ValueError:
        raise ValidationError(where, f"{value!r} is not DDDMMSS or decimal degrees") from None
    if direction.upper() in ("W", "S"):
        out = -abs(out)
    if not -limit <= out <= limit:
        raise ValidationError(where, f"{value!r} is outside [-{limit:g}, {limit:g}]")
    return out


def _place(ms1: Segment | None, where: str) -> tuple[Location | None, tzinfo | None]:
    """The MS1 place and the time zone it is in (None when unknown)."""
    if ms1 is None:
        return None, None
    city, state, country = _el(ms1, 1), _el(ms1, 2).upper(), _el(ms1, 3).upper()
    lat = lon = None
    if _el(ms1, 4) and _el(ms1, 5):
        lon = _degrees(_el(ms1, 4), _el(ms1, 6), where + "MS104", 180)
        lat = _degrees(_el(ms1, 5), _el(ms1, 7), where + "MS105", 90)
    name = ", ".join(p for p in (city.title(), state) if p) or None
    place = c.location(where + "MS1", name=name[:200] if name else None, country=country[:3] or None, lat=lat, lon=lon)
    found: tzinfo | None = None
    if lat is not None and lon is not None:
        found = c.zone_at(lat, lon)
    states: dict[str, dict[str, str]] = CODES["state_zones"]
    for candidate in [country] if country else ["US", "CA"]:
        if found is None and state in states.get(candidate, {}):
            found = c.zone(states[candidate][state])
    if found is None and country in CODES["country_zones"]:
        found = c.zone(CODES["country_zones"][country])
    return place, found


def _when(at7: Segment, local: tzinfo | None, where: str) -> datetime:
    day, clock, code = _el(at7, 5), _el(at7, 6), _el(at7, 7).upper() or "LT"
    try:
        if len(day) == 6:
            day = ("20" if int(day[:2]) < 70 else "19") + day
        if len(day) != 8 or not day.isdigit():
            raise ValueError(day)
        if clock and (not clock.isdigit() or len(clock) not in (4, 6, 7, 8)):
            raise ValueError(clock)
        hh, mm, ss = int(clock[:2] or 0), int(clock[2:4] or 0), int(clock[4:6] or 0)
        naive = datetime(int(day[:4]), int(day[4:6]), int(day[6:8]), hh, mm, ss)
    except ValueError:
        sent = f"{_el(at7, 5)!r} {_el(at7, 6)!r}"
        raise ValidationError(where + "AT705", f"{sent} is not CCYYMMDD HHMM") from None
    zones: dict[str, str | None] = CODES["time_codes"]
    if code not in zones:
        raise ValidationError(where + "AT707", f"{code!r} is not an X12 time code")
    named = zones[code]
    return c.local_time(naive, c.zone(named) if named else (local or UTC))


def _loops(body: list[Segment]) -> tuple[list[Segment], list[dict[str, Any]]]:
    """(set-level L11s, LX loops as {L11: [...], statuses: [{AT7, MS1, MS2}]})."""
    header_l11: list[Segment] = []
    loops: list[dict[str, Any]] = []
    for seg in body[1:-1]:
        tag = seg[0]
        if tag == "LX" or (tag == "AT7" and not loops):
            loops.append({"LX": _el(seg, 1) if tag == "LX" else None, "L11": [], "statuses": []})
        if tag == "AT7":
            loops[-1]["statuses"].append({"AT7": seg, "MS1": None, "MS2": None})
        elif tag in ("MS1", "MS2") and loops and loops[-1]["statuses"]:
            loops[-1]["statuses"][-1][tag] = seg
        elif tag == "L11":
            (loops[-1]["L11"] if loops else header_l11).append(seg)
    return header_l11, loops


def _parse_set(body: list[Segment], where: str, ctx: SourceContext) -> list[Event]:
    if _el(body[0], 1) != "214":
        raise ValidationError(where + "ST01", f"transaction set {_el(body[0], 1)!r} is not a 214")
    b10 = next((seg for seg in body if seg[0] == "B10"), None)
    if b10 is None:
        raise ValidationError(where + "B10", "is required")
    header_l11, loops = _loops(body)
    if not any(loop["statuses"] for loop in loops):
        raise ValidationError(where + "AT7", "the transaction set reports no shipment status")
    events = []
    for n, loop in enumerate(loops, 1):
        for status in loop["statuses"]:
            at7, ms1, ms2 = status["AT7"], status["MS1"], status["MS2"]
            here = f"{where}LX[{n}]."
            code = (_el(at7, 1) or _el(at7, 3)).upper()
            if not code:
                raise ValidationError(here + "AT701", "needs a status (AT701) or appointment (AT703) code")
            place, local = _place(ms1, here)
            estimated = code in CODES["estimated"]
            table = CODES["estimated"] if estimated else CODES["status"]
            equipment = _el(ms2, 2) if ms2 else ""
            all_refs = c.refs(_el(b10, 1), _el(b10, 2), *(_el(s, 1) for s in header_l11 + loop["L11"]), equipment)
            all_refs = tuple(r[:200] for r in all_refs)
            if not all_refs:
                raise ValidationError(where + "B10", "names no shipment (B1001, B1002 or L11)")
            item = {"B10": b10, "L11": header_l11 + loop["L11"], "AT7": at7, "MS1": ms1, "MS2": ms2}
            reason = _el(at7, 2) or _el(at7, 4)
            reason = "" if reason == "NS" else reason  # NS: normal status, nothing to tell
            info = c.info(
                c.milestone(table, code),
                code,
                classifier=Classifier.ESTIMATED if estimated else Classifier.ACTUAL,
                location=place,
                mode=Mode.ROAD,
                description=f"reason {reason}" if reason else None,
            )
            events.append(
                c.milestone_event(
                    here,
                    ctx,
                    info=info,
                    event_id=derive_event_id(SOURCE, item),
                    source=SOURCE,
                    occurred_at=_when(at7, local, here),
                    shipment=all_refs[0],
                    refs=all_refs,
                    carrier=((_el(ms2, 1) if ms2 else "") or _el(b10, 3))[:200] or None,
                    raw=item | {"LX": loop["LX"]},
                )
            )
    return events


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """An X12 interchange of 214 transaction sets to milestone events (one per AT7 status)."""
    sets = _transaction_sets(_segments(payload))
    events: list[Event] = []
    for k, body in enumerate(sets, 1):
        events += _parse_set(body, f"ST[{k}]." if len(sets) > 1 else "", ctx)
    return events


ADAPTER = Adapter(SOURCE, normalize, signature=signatures.NATIVE, status=202, whole=False, webhook=True)
