"""The public tracking page: what an end customer sees at `GET /track/{token}`.

Pure functions, no I/O beyond reading the bundled translations once: `pick_language` turns an
`Accept-Language` header into one of the supported languages and `render` turns the JSON of
`GET /v1/track/{token}` into one self-contained HTML page. The page needs nothing but itself to
be read; the small route map is progressive and loads only same-origin vendored files.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

LANGUAGES: tuple[str, ...] = ("en", "zh-Hans", "es", "de", "fr")
DEFAULT_LANGUAGE = "en"
STATIC_PREFIX = "/static"

# Chinese tags read in Simplified script; Traditional ones (zh-Hant, zh-TW, zh-HK, zh-MO) are
# not served Simplified text, they fall through to the next preference.
_SIMPLIFIED_CHINESE = frozenset({"zh", "zh-cn", "zh-sg", "zh-my", "zh-hans"})
_TRADITIONAL_CHINESE = frozenset({"zh-hant", "zh-tw", "zh-hk", "zh-mo"})

_STATUS_COLOURS: Mapping[str, str] = {
    "pending": "#6b7280",
    "info_received": "#0ea5e9",
    "in_transit": "#2563eb",
    "customs": "#a855f7",
    "out_for_delivery": "#0d9488",
    "failed_attempt": "#ea580c",
    "available_for_pickup": "#ca8a04",
    "delivered": "#16a34a",
    "exception": "#dc2626",
    "returned": "#9f1239",
    "cancelled": "#57534e",
    "expired": "#78716c",
}


@cache
def catalog() -> dict[str, Any]:
    """All translations, keyed by language (`en`, `zh-Hans`, ...), read once from `i18n.json`."""
    data: dict[str, Any] = json.loads(Path(__file__).with_name("i18n.json").read_text("utf-8"))
    return data


def _match(tag: str) -> str | None:
    """The supported language a single language tag asks for, if any."""
    tag = tag.strip().lower().replace("_", "-")
    if tag in _SIMPLIFIED_CHINESE or tag.startswith("zh-hans-"):
        return "zh-Hans"
    if tag in _TRADITIONAL_CHINESE or tag.startswith("zh-hant-"):
        return None
    if tag.startswith("zh-"):
        # zh-CN-x-..., zh-SG-..., and other region variants written with a script-less region
        region = tag.split("-")[1]
        return None if region in {"tw", "hk", "mo"} else "zh-Hans"
    primary = tag.split("-")[0]
    for language in LANGUAGES:
        if language.lower() == primary:
            return language
    return None


def pick_language(accept_language: str | None) -> str:
    """The best supported language for an `Accept-Language` header (RFC 9110 §12.5.4).

    Ranges are ranked by their q-value (default 1, ties keep header order); `q=0` means "not
    this one"; `*` accepts the default. Anything malformed is skipped. Falls back to English.
    """
    if not accept_language:
        return DEFAULT_LANGUAGE
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept_language.split(",")):
        parts = [part.strip() for part in item.split(";")]
        tag, quality = parts[0], 1.0
        if not tag:
            continue
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = -1.0
        if not 0.0 < quality <= 1.0 or math.isnan(quality):
            continue
        ranked.append((-quality, position, tag))
    for _, _, tag in sorted(ranked):
        if tag == "*":
            return DEFAULT_LANGUAGE
        language = _match(tag)
        if language is not None:
            return language
    return DEFAULT_LANGUAGE


def _zone(tz_name: str) -> tzinfo:
    try:
        return ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _parse_time(value: Any) -> datetime | None:
    """An aware datetime from an ISO 8601 string or epoch seconds; naive times are UTC."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class _Page:
    """Formatting helpers bound to one language and one time zone."""

    def __init__(self, lang: str, tz_name: str) -> None:
        translations = catalog()
        self.lang = lang if lang in translations else DEFAULT_LANGUAGE
        self.text: Mapping[str, Any] = translations[self.lang]
        self.zone = _zone(tz_name)
        self.zone_name = tz_name if self.zone is not UTC else "UTC"

    def label(self, key: str, **values: str) -> str:
        """A page label, with `values` (already HTML) put into its `{placeholders}`."""
        template = html.escape(str(self.text["label"][key]))
        for name, value in values.items():
            template = template.replace("{" + name + "}", value)
        return template

    def status(self, status: Any) -> str:
        names: Mapping[str, str] = self.text["status"]
        return html.escape(names.get(str(status), str(status or self.text["label"]["unknown"])))

    def substatus(self, substatus: Any) -> str | None:
        names: Mapping[str, str] = self.text["substatus"]
        name = names.get(str(substatus)) if substatus else None
        return html.escape(name) if name else None

    def milestone(self, code: Any) -> str:
        names: Mapping[str, str] = self.text["milestone"]
        return html.escape(names.get(str(code), str(code)))

    def when(self, moment: datetime) -> str:
        """`moment` in the page's zone and language, as a `<time>` element."""
        try:
            local = moment.astimezone(self.zone)
        except OverflowError:  # at the edge of the calendar (year 1 or 9999): shown in its own offset
            local = moment
        fmt: Mapping[str, Any] = self.text["format"]
        text = str(fmt["datetime"]).format(
            weekday=fmt["weekdays"][local.weekday()],
            day=local.day,
            month=fmt["months"][local.month - 1],
            month_num=local.month,
            year=local.year,
            time=f"{local:%H:%M}",
        )
        return f'<time datetime="{local.isoformat()}">{html.escape(text)}</time>'

    def maybe_when(self, value: Any) -> str | None:
        moment = _parse_time(value)
        return self.when(moment) if moment is not None else None


def _place(location: Any) -> str:
    if not isinstance(location, Mapping):
        return ""
    parts = [str(location[key]) for key in ("name", "country") if location.get(key)]
    return html.escape(", ".join(parts))


def _coordinate(lat: Any, lon: Any) -> tuple[float, float] | None:
    if isinstance(lat, bool) or isinstance(lon, bool):
        return None
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return float(lat), float(lon)


def _route(track: Mapping[str, Any]) -> list[tuple[float, float]]:
    """The route so far as (lat, lon) pairs; the JSON carries GeoJSON order, [lon, lat]."""
    points: list[tuple[float, float]] = []
    raw = track.get("route")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return points
    for item in raw:
        if isinstance(item, Sequence) and not isinstance(item, str) and len(item) >= 2:
            point = _coordinate(item[1], item[0])
            if point is not None:
                points.append(point)
    return points


def _script_json(value: Any) -> str:
    """JSON that is safe inside a `<script>` element (no `</script>`, no `<!--`)."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _milestones_html(page: _Page, milestones: Any) -> str:
    items: list[tuple[datetime | None, Mapping[str, Any]]] = []
    if isinstance(milestones, Sequence) and not isinstance(milestones, str):
        items = [(_parse_time(m.get("occurred_at")), m) for m in milestones if isinstance(m, Mapping)]
    if not items:
        return f'<p class="muted">{page.label("no_milestones")}</p>'
    epoch = datetime.min.replace(tzinfo=UTC)
    items.sort(key=lambda pair: pair[0] or epoch, reverse=True)
    rows = []
    for index, (moment, milestone) in enumerate(items):
        place = _place(milestone.get("location"))
        when = page.when(moment) if moment is not None else ""
        rows.append(
            f'<li class="{"latest" if index == 0 else ""}">'
            f'<div class="what">{page.milestone(milestone.get("code"))}</div>'
            + (f'<div class="where">{place}</div>' if place else "")
            + f'<div class="when">{when}</div></li>'
        )
    return f'<ol class="timeline">{"".join(rows)}</ol>'


def _delivered_at(milestones: Any) -> datetime | None:
    if not isinstance(milestones, Sequence) or isinstance(milestones, str):
        return None
    times = [
        moment
        for m in milestones
        if isinstance(m, Mapping) and m.get("code") == "delivered"
        for moment in [_parse_time(m.get("occurred_at"))]
        if moment is not None
    ]
    return max(times) if times else None


def _window_bar(earliest: datetime, latest: datetime, predicted: datetime | None, promised: datetime | None) -> str:
    """A small bar: the 80% window, the predicted time as a dot, the promised date as a line."""
    moments = [earliest, latest] + [m for m in (predicted, promised) if m is not None]
    start, end = min(moments), max(moments)
    span = (end - start).total_seconds()
    pad = max(span * 0.08, 1800.0)
    total = span + 2 * pad

    def at(moment: datetime) -> float:
        return round(((moment - start).total_seconds() + pad) / total * 100, 2)

    parts = [f'<span class="win" style="left:{at(earliest)}%;width:{max(at(latest) - at(earliest), 1.0)}%"></span>']
    if promised is not None:
        late = " late" if latest > promised else ""
        parts.append(f'<span class="promise{late}" style="left:{at(promised)}%"></span>')
    if predicted is not None:
        parts.append(f'<span class="dot" style="left:{at(predicted)}%"></span>')
    return f'<div class="bar" aria-hidden="true">{"".join(parts)}</div>'


def _eta_html(page: _Page, track: Mapping[str, Any]) -> str:
    status = track.get("status")
    delivered = _delivered_at(track.get("milestones"))
    if status == "delivered":
        when = page.when(delivered) if delivered is not None else ""
        heading = page.label("delivered_at")
        return f'<section class="card eta"><h2>{heading}</h2><p class="big">{when}</p></section>'
    eta = track.get("eta")
    if not isinstance(eta, Mapping) or status in {"returned", "cancelled", "expired"}:
        return ""
    predicted = _parse_time(eta.get("predicted_at"))
    earliest = _parse_time(eta.get("earliest"))
    latest = _parse_time(eta.get("latest"))
    promised = _parse_time(eta.get("promised_at"))
    carrier_eta = _parse_time(eta.get("carrier_eta"))
    if predicted is None and earliest is None and promised is None and carrier_eta is None:
        return ""
    lines = [f"<h2>{page.label('eta')}</h2>"]
    if predicted is not None:
        lines.append(f'<p class="big">{page.when(predicted)}</p>')
    if earliest is not None and latest is not None and earliest <= latest:
        window = page.label("eta_window", earliest=page.when(earliest), latest=page.when(latest))
        lines.append(f'<p class="window">{window}</p>')
        lines.append(_window_bar(earliest, latest, predicted, promised))
    if promised is not None:
        lines.append(f'<p class="muted">{page.label("promised")}: {page.when(promised)}</p>')
        if predicted is not None:
            late = predicted > promised
            hint = page.label("eta_late" if late else "eta_on_time")
            lines.append(f'<p class="hint {"late" if late else "ok"}">{hint}</p>')
    if carrier_eta is not None:
        lines.append(f'<p class="muted">{page.label("carrier_eta")}: {page.when(carrier_eta)}</p>')
    return f'<section class="card eta">{"".join(lines)}</section>'


def _map_html(page: _Page, track: Mapping[str, Any]) -> tuple[str, str, str]:
    """(section, head links, scripts) for the route map, or empty strings when there is nothing to draw."""
    route = _route(track)
    destination = track.get("destination")
    target = None
    if isinstance(destination, Mapping):
        target = _coordinate(destination.get("lat"), destination.get("lon"))
    if not route and target is None:
        return "", "", ""
    dest_name = _place(destination)
    data = {"route": route, "destination": target}
    section = (
        f'<section class="card"><h2>{page.label("route")}</h2>'
        f'<div id="route-map" role="img" aria-label="{page.label("route")}"></div>'
        + (f'<p class="muted">{page.label("destination")}: {dest_name}</p>' if dest_name else "")
        + "</section>"
    )
    head = f'<link rel="stylesheet" href="{STATIC_PREFIX}/vendor/leaflet/leaflet.css">'
    scripts = (
        f'<script type="application/json" id="route-data">{_script_json(data)}</script>'
        f'<script defer src="{STATIC_PREFIX}/vendor/leaflet/leaflet.js"></script>'
        f'<script defer src="{STATIC_PREFIX}/vendor/topojson-client/topojson-client.min.js"></script>'
        f"<script>{_map_script()}</script>"
    )
    return section, head, scripts


def render(track: dict[str, Any], lang: str, tz_name: str) -> str:
    """The tracking page for `track` (the JSON of `GET /v1/track/{token}`) as one HTML document.

    `lang` is one of `LANGUAGES` (anything else renders English); times are shown in the IANA
    zone `tz_name` (UTC when unknown). Every value taken from `track` is HTML-escaped.
    """
    page = _Page(lang, tz_name)
    tracking = html.escape(str(track.get("tracking_number") or ""))
    carrier = html.escape(str(track.get("carrier") or ""))
    status = str(track.get("status") or "pending")
    colour = _STATUS_COLOURS.get(status, "#6b7280")
    substatus = page.substatus(track.get("substatus"))
    updated = page.maybe_when(track.get("updated_at"))
    map_section, map_head, map_scripts = _map_html(page, track)
    title = f"{page.label('title')} · {tracking}" if tracking else page.label("title")
    summary = (
        '<section class="card head">'
        f'<p class="muted">{page.label("tracking_number")}</p>'
        f'<h1 id="tracking-number">{tracking}</h1>'
        + (f'<p class="carrier">{page.label("carrier")}: <b>{carrier}</b></p>' if carrier else "")
        + f'<p class="status" style="background:{colour}" data-status="{html.escape(status)}">'
        f"{page.status(status)}</p>" + (f'<p class="substatus">{substatus}</p>' if substatus else "") + "</section>"
    )
    timeline = (
        f'<section class="card"><h2>{page.label("timeline")}</h2>'
        f"{_milestones_html(page, track.get('milestones'))}</section>"
    )
    footer = (
        "<footer>"
        + (f"<p>{page.label('last_updated')}: {updated}</p>" if updated else "")
        + f"<p>{page.label('times_in', tz=html.escape(page.zone_name))}</p></footer>"
    )
    return (
        "<!doctype html>"
        f'<html lang="{html.escape(page.lang)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{title}</title><style>{_CSS}</style>{map_head}</head>"
        f"<body><main>{summary}{_eta_html(page, track)}{timeline}{map_section}{footer}</main>"
        f"{map_scripts}</body></html>"
    )


_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#111827;font:15px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Noto Sans","PingFang SC","Microsoft YaHei",sans-serif}
main{max-width:40rem;margin:0 auto;padding:.75rem}
.card{background:#fff;border-radius:.75rem;padding:1rem 1.1rem;margin:0 0 .75rem;
box-shadow:0 1px 2px rgba(0,0,0,.06)}
h1{font-size:1.35rem;margin:.1rem 0 .4rem;word-break:break-all}
h2{font-size:.85rem;text-transform:uppercase;letter-spacing:.04em;color:#6b7280;margin:0 0 .6rem}
p{margin:.2rem 0}
.muted{color:#6b7280;font-size:.9rem}
.status{display:inline-block;color:#fff;font-weight:600;padding:.25rem .7rem;border-radius:999px;
margin-top:.4rem}
.substatus{color:#374151;font-size:.9rem}
.big{font-size:1.2rem;font-weight:600}
.hint.late{color:#b45309}.hint.ok{color:#15803d}
.bar{position:relative;height:.7rem;background:#e5e7eb;border-radius:999px;margin:.6rem 0}
.bar .win{position:absolute;top:0;bottom:0;background:#93c5fd;border-radius:999px}
.bar .dot{position:absolute;top:50%;width:.8rem;height:.8rem;margin:-.4rem 0 0 -.4rem;
background:#1d4ed8;border:2px solid #fff;border-radius:50%}
.bar .promise{position:absolute;top:-.2rem;bottom:-.2rem;width:2px;background:#16a34a}
.bar .promise.late{background:#dc2626}
.timeline{list-style:none;margin:0;padding:0 0 0 1.1rem;border-left:2px solid #e5e7eb}
.timeline li{position:relative;padding:0 0 .9rem .2rem}
.timeline li:before{content:"";position:absolute;left:-1.55rem;top:.3rem;width:.7rem;height:.7rem;
border-radius:50%;background:#d1d5db;border:2px solid #fff}
.timeline li.latest:before{background:#2563eb}
.timeline li.latest .what{font-weight:600}
.where,.when{color:#4b5563;font-size:.9rem}
#route-map{height:15rem;border-radius:.5rem;background:#dbeafe}
footer{color:#6b7280;font-size:.8rem;text-align:center;padding:.5rem}
"""

_MAP_SCRIPT = """
addEventListener("DOMContentLoaded",function(){
var el=document.getElementById("route-map");
if(!el||!window.L){if(el)el.hidden=true;return}
var data=JSON.parse(document.getElementById("route-data").textContent);
var map=L.map(el,{attributionControl:false,scrollWheelZoom:false,preferCanvas:true});
map.createPane("land").style.zIndex=250;
var prev=null,pts=data.route.map(function(p){var lon=p[1];
if(prev!==null){while(lon-prev>180)lon-=360;while(lon-prev<-180)lon+=360}prev=lon;return[p[0],lon]});
var dest=data.destination;
if(dest&&prev!==null){var dl=dest[1];while(dl-prev>180)dl-=360;while(dl-prev<-180)dl+=360;dest=[dest[0],dl]}
var all=pts.concat(dest?[dest]:[]),b=L.latLngBounds(all);
if(pts.length>1)L.polyline(pts,{color:"#2563eb",weight:3}).addTo(map);
if(pts.length&&dest)L.polyline([pts[pts.length-1],dest],{color:"#2563eb",weight:2,dashArray:"6 6",
opacity:.7}).addTo(map);
if(dest)L.circleMarker(dest,{radius:6,color:"#fff",weight:2,fillColor:"#16a34a",fillOpacity:1}).addTo(map);
if(pts.length)L.circleMarker(pts[pts.length-1],{radius:7,color:"#fff",weight:2,fillColor:"#1d4ed8",
fillOpacity:1}).addTo(map);
if(all.length===1)map.setView(all[0],5);else map.fitBounds(b,{padding:[24,24],maxZoom:8});
if(!window.topojson)return;
fetch("__COUNTRIES__").then(function(r){return r.json()}).then(function(t){
var geo=topojson.feature(t,t.objects.countries),offs=[0];
function ring(r){if(r.some(function(c){return Math.abs(c[1])>89.9}))return r;var q=null;
return r.map(function(c){var x=c[0];if(q!==null){while(x-q>180)x-=360;while(x-q<-180)x+=360}q=x;return[x,c[1]]})}
geo.features.forEach(function(f){var g=f.geometry;if(!g)return;
if(g.type==="Polygon")g.coordinates=g.coordinates.map(ring);
else if(g.type==="MultiPolygon")g.coordinates=g.coordinates.map(function(p){return p.map(ring)})});
if(b.getEast()>180)offs.push(360);if(b.getWest()<-180)offs.push(-360);
offs.forEach(function(o){L.geoJSON(geo,{pane:"land",interactive:false,
coordsToLatLng:function(c){return L.latLng(c[1],c[0]+o)},
style:{color:"#9ca3af",weight:.6,fillColor:"#f9fafb",fillOpacity:1}}).addTo(map)})
}).catch(function(){})});
"""


def _map_script() -> str:
    return _MAP_SCRIPT.replace("__COUNTRIES__", f"{STATIC_PREFIX}/vendor/world-atlas/countries-110m.json")


def content_security_policy() -> str:
    """The page's policy: its own static files, and of inline code only the map script (by hash)."""
    digest = base64.b64encode(hashlib.sha256(_map_script().encode()).digest()).decode()
    return (
        f"default-src 'none'; script-src 'self' 'sha256-{digest}'; style-src 'self' 'unsafe-inline';"
        " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
