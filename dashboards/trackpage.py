"""The public tracking page: what an end customer sees at `GET /track/{token}`.

Pure functions, no I/O: `render` turns the JSON of `GET /v1/track/{token}` into one
self-contained HTML page (the tenant's branding, the status, origin and destination, the progress
steps, the delivery estimate and the history from `trackpage_journey`, and a small route map) in a
language `trackpage_text.pick_language` chose, and `render_ended` is the page of a link that is
unknown (404) or has expired (410). The route map is progressive and loads only same-origin vendored
files; the only other request a page can make is the tenant's logo, which its policy allows by
origin (`content_security_policy`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dashboards.trackpage_journey import eta_html, milestones, milestones_html, steps_html
from dashboards.trackpage_text import PageText
from trackd import tenant_store

STATIC_PREFIX = "/static"
DEFAULT_ACCENT = "#2563eb"

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


@dataclass(frozen=True, slots=True)
class Brand:
    """The tenant's look, from the `brand` of the track JSON; anything invalid is left out."""

    name: str | None = None
    logo_url: str | None = None
    colour: str | None = None
    support_url: str | None = None

    @classmethod
    def of(cls, value: Any) -> Brand:
        """The look of `value` by the rules the tenant's settings are stored under."""
        if not isinstance(value, Mapping):
            return cls()
        return cls(
            tenant_store.valid_name(value.get("name")),
            tenant_store.valid_web_url(value.get("logo_url")),
            tenant_store.valid_colour(value.get("colour")),
            tenant_store.valid_web_url(value.get("support_url")),
        )

    def css(self) -> str:
        """The page's CSS variables: the accent colour and a text colour that reads on it."""
        accent = self.colour or DEFAULT_ACCENT
        r, g, b = (int(accent[i : i + 2], 16) / 255 for i in (1, 3, 5))
        luminance = 0.2126 * r**2.2 + 0.7152 * g**2.2 + 0.0722 * b**2.2
        ink = "#111827" if luminance > 0.4 else "#ffffff"
        return f":root{{--brand:{accent};--brand-ink:{ink}}}"


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


def _map_html(page: PageText, track: Mapping[str, Any], colour: str) -> tuple[str, str, str]:
    """(section, head links, scripts) for the route map, or empty strings when there is nothing to draw."""
    route = _route(track)
    destination = track.get("destination")
    target = None
    if isinstance(destination, Mapping):
        target = _coordinate(destination.get("lat"), destination.get("lon"))
    if not route and target is None:
        return "", "", ""
    data = {"route": route, "destination": target, "colour": colour}
    section = (
        f'<section class="card"><h2>{page.label("route")}</h2>'
        f'<div id="route-map" role="img" aria-label="{page.label("route")}"></div></section>'
    )
    head = f'<link rel="stylesheet" href="{STATIC_PREFIX}/vendor/leaflet/leaflet.css">'
    scripts = (
        f'<script type="application/json" id="route-data">{_script_json(data)}</script>'
        f'<script defer src="{STATIC_PREFIX}/vendor/leaflet/leaflet.js"></script>'
        f'<script defer src="{STATIC_PREFIX}/vendor/topojson-client/topojson-client.min.js"></script>'
        f"<script>{_map_script()}</script>"
    )
    return section, head, scripts


def _lane_html(page: PageText, track: Mapping[str, Any]) -> str:
    origin, destination = page.place(track.get("origin")), page.place(track.get("destination"))
    if not origin and not destination:
        return ""
    ends = [
        f'<div class="end {key}"><span class="muted">{page.label(label)}</span><b id="{key}">{place}</b></div>'
        for key, label, place in (("origin", "origin", origin), ("destination", "destination", destination))
        if place
    ]
    return f'<div class="lane">{"<span class=arrow aria-hidden=true>→</span>".join(ends)}</div>'


def _brand_html(page: PageText, brand: Brand) -> str:
    if brand.name is None and brand.logo_url is None:
        return ""
    name = html.escape(brand.name or "")
    logo = (
        f'<img class="logo" src="{html.escape(brand.logo_url)}" alt="{name}" referrerpolicy="no-referrer">'
        if brand.logo_url
        else ""
    )
    text = f'<span class="brand-name">{name}</span>' if brand.name and not brand.logo_url else ""
    return f'<header class="brand" id="brand">{logo}{text}</header>'


def _support_html(page: PageText, brand: Brand) -> str:
    if brand.support_url is None:
        return ""
    text = page.label("contact_brand", name=html.escape(brand.name)) if brand.name else page.label("contact")
    return (
        f'<p class="support"><a id="support" href="{html.escape(brand.support_url)}" rel="noopener noreferrer"'
        f' target="_blank">{text}</a></p>'
    )


def _document(page: PageText, brand: Brand, title: str, head: str, body: str) -> str:
    return (
        "<!doctype html>"
        f'<html lang="{html.escape(page.lang)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{title}</title><style>{brand.css()}{_CSS}</style>{head}</head>"
        f"<body>{_brand_html(page, brand)}<main>{body}</main></body></html>"
    )


def render(track: dict[str, Any], lang: str, tz_name: str, now: datetime) -> str:
    """The tracking page for `track` (the JSON of `GET /v1/track/{token}`) as one HTML document.

    `lang` is one of `LANGUAGES` (anything else renders English); times are shown in the IANA
    zone `tz_name` (UTC when unknown); `now` (the caller's clock) names today and tomorrow, tells a
    missed promise and the zone's abbreviation. Every value taken from `track` is HTML-escaped.
    """
    page = PageText(lang, tz_name, now)
    brand = Brand.of(track.get("brand"))
    items = milestones(track)
    tracking = html.escape(str(track.get("tracking_number") or ""))
    carrier = html.escape(str(track.get("carrier") or ""))
    status = str(track.get("status") or "pending")
    colour = _STATUS_COLOURS.get(status, "#6b7280")
    substatus = page.substatus(track.get("substatus"))
    updated = page.maybe_when(track.get("updated_at"))
    map_section, map_head, map_scripts = _map_html(page, track, brand.colour or DEFAULT_ACCENT)
    title = f"{page.label('title')} · {tracking}" if tracking else page.label("title")
    if brand.name:
        title = f"{html.escape(brand.name)} · {title}"
    summary = (
        '<section class="card head">'
        f'<p class="muted">{page.label("tracking_number")}</p>'
        f'<h1 id="tracking-number">{tracking}</h1>'
        + (f'<p class="carrier">{page.label("carrier")}: <b>{carrier}</b></p>' if carrier else "")
        + f'<p class="status" style="background:{colour}" data-status="{html.escape(status)}">'
        f"{page.status(status)}</p>"
        + (f'<p class="substatus">{substatus}</p>' if substatus else "")
        + _lane_html(page, track)
        + "</section>"
    )
    timeline = f'<section class="card"><h2>{page.label("timeline")}</h2>{milestones_html(page, items)}</section>'
    zone = page.zone_name(now)
    footer = (
        "<footer>"
        + (f"<p>{page.label('last_updated')}: {updated}</p>" if updated else "")
        + f'<p id="zone">{page.label("times_in", tz=zone)}</p></footer>'
    )
    body = (
        summary
        + steps_html(page, track, items)
        + eta_html(page, track, items)
        + timeline
        + map_section
        + _support_html(page, brand)
        + footer
        + map_scripts
    )
    return _document(page, brand, title, map_head, body)


def render_ended(lang: str, expired: bool, brand: Mapping[str, Any] | None = None) -> str:
    """The page of a tracking link that is unknown (`expired` False: answered 404) or that has
    expired or been revoked (answered 410), in `lang`, with the tenant's `brand` when known."""
    page = PageText(lang, "UTC")
    look = Brand.of(brand)
    kind = "ended" if expired else "not_found"
    heading = page.label(f"{kind}_title")
    body = (
        f'<section class="card ended" id="ended" data-kind="{kind}"><h1>{heading}</h1>'
        f"<p>{page.label(f'{kind}_text')}</p></section>{_support_html(page, look)}"
    )
    return _document(page, look, heading, "", body)


_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#111827;font:15px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Noto Sans","PingFang SC","Microsoft YaHei",sans-serif}
main{max-width:40rem;margin:0 auto;padding:.75rem}
.brand{background:var(--brand);color:var(--brand-ink);padding:.7rem 1rem;display:flex;align-items:center;
justify-content:center;min-height:3.2rem}
.brand .logo{max-height:2.2rem;max-width:12rem;object-fit:contain}
.brand-name{font-weight:700;font-size:1.1rem;letter-spacing:.01em}
.card{background:#fff;border-radius:.75rem;padding:1rem 1.1rem;margin:0 0 .75rem;
box-shadow:0 1px 2px rgba(0,0,0,.06)}
h1{font-size:1.35rem;margin:.1rem 0 .4rem;word-break:break-all}
.ended h1{word-break:normal}
h2{font-size:.85rem;text-transform:uppercase;letter-spacing:.04em;color:#6b7280;margin:0 0 .6rem}
p{margin:.2rem 0}
.muted{color:#6b7280;font-size:.9rem}
.status{display:inline-block;color:#fff;font-weight:600;padding:.25rem .7rem;border-radius:999px;
margin-top:.4rem}
.substatus{color:#374151;font-size:.9rem}
.lane{display:flex;align-items:flex-end;gap:.6rem;margin-top:.8rem;padding-top:.7rem;border-top:1px solid #e5e7eb}
.lane .end{flex:1;display:flex;flex-direction:column;min-width:0}
.lane .end b{font-weight:600;overflow-wrap:anywhere}
.lane .destination{text-align:right}
.lane .arrow{color:var(--brand);font-size:1.3rem;line-height:1.4}
.steps{list-style:none;margin:0;padding:0;display:flex}
.steps-card{padding:1rem .5rem}
.step{flex:1;position:relative;text-align:center;font-size:.78rem;color:#6b7280;padding:0 .1rem;min-width:0}
.step:before{content:"";position:absolute;top:.55rem;left:-50%;right:50%;height:3px;background:#e5e7eb}
.step:first-child:before{display:none}
.step.done:before,.step.current:before{background:var(--brand)}
.step .dot{position:relative;display:block;width:1.1rem;height:1.1rem;margin:0 auto .35rem;border-radius:50%;
background:#fff;border:3px solid #d1d5db}
.step.done .dot{background:var(--brand);border-color:var(--brand)}
.step.current .dot{border-color:var(--brand);box-shadow:0 0 0 4px color-mix(in srgb,var(--brand) 25%,transparent)}
.step.problem .dot{border-color:#dc2626;box-shadow:0 0 0 4px rgba(220,38,38,.2)}
.step.current .name{color:#111827;font-weight:700}
.step .name{display:block;line-height:1.2;hyphens:auto;overflow-wrap:break-word}
@media (max-width:32rem){.steps-card{padding:.8rem 1.1rem}.steps{flex-direction:column}
.step{display:flex;align-items:center;gap:.7rem;text-align:left;font-size:.92rem;padding:.3rem 0}
.step:before{top:-50%;bottom:50%;left:calc(.55rem - 1.5px);right:auto;width:3px;height:auto}
.step .dot{flex:none;margin:0}.step .name{flex:1}.step .date{font-size:.8rem;margin:0}}
.step .date{display:block;font-size:.72rem;margin-top:.15rem}
.big{font-size:1.25rem;font-weight:600}
.window{color:#374151}
.verdict{display:inline-block;font-weight:600;font-size:.85rem;padding:.15rem .6rem;border-radius:999px;margin:.35rem 0}
.verdict.on-time{background:#dcfce7;color:#166534}
.verdict.might-be-late{background:#fef3c7;color:#92400e}
.verdict.late{background:#fee2e2;color:#991b1b}
.timeline{list-style:none;margin:0;padding:0 0 0 1.1rem;border-left:2px solid #e5e7eb}
.timeline li{position:relative;padding:0 0 .9rem .2rem}
.timeline li:before{content:"";position:absolute;left:-1.55rem;top:.3rem;width:.7rem;height:.7rem;
border-radius:50%;background:#d1d5db;border:2px solid #fff}
.timeline li.latest:before{background:var(--brand)}
.timeline li.latest .what{font-weight:600}
.where,.when{color:#4b5563;font-size:.9rem}
#route-map{height:15rem;border-radius:.5rem;background:#dbeafe}
.support{text-align:center;margin:.25rem 0 .75rem}
.support a{display:inline-block;background:var(--brand);color:var(--brand-ink);text-decoration:none;
font-weight:600;padding:.55rem 1.1rem;border-radius:.5rem}
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
if(pts.length>1)L.polyline(pts,{color:data.colour,weight:3}).addTo(map);
if(pts.length&&dest)L.polyline([pts[pts.length-1],dest],{color:data.colour,weight:2,dashArray:"6 6",
opacity:.7}).addTo(map);
if(dest)L.circleMarker(dest,{radius:6,color:"#fff",weight:2,fillColor:"#16a34a",fillOpacity:1}).addTo(map);
if(pts.length)L.circleMarker(pts[pts.length-1],{radius:7,color:"#fff",weight:2,fillColor:data.colour,
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


def content_security_policy(logo_url: str | None = None, scripts: bool = True) -> str:
    """The page's policy: its own static files, of inline code only the map script (by hash, and
    none at all with `scripts` False), and images from this origin and the logo's."""
    digest = base64.b64encode(hashlib.sha256(_map_script().encode()).digest()).decode()
    script = f"'self' 'sha256-{digest}'" if scripts else "'none'"
    logo = tenant_store.web_origin(logo_url)
    images = "'self' data:" + (f" {logo}" if logo else "")
    return (
        f"default-src 'none'; script-src {script}; style-src 'self' 'unsafe-inline';"
        f" img-src {images}; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
