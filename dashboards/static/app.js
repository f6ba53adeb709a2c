// trackd live map: every shipment of the tenant on a world map, moving live from /v1/stream.
//
// Data flow: REST pages and websocket messages update `state.shipments` at once (so the page's
// model is always current); marker, counter and panel DOM work is batched into one animation
// frame. Markers live on one shared canvas renderer and are moved in place.

const L = window.L;

const STATUSES = [
  ["pending", "Pending", "#6b7280"],
  ["info_received", "Info received", "#0ea5e9"],
  ["in_transit", "In transit", "#2563eb"],
  ["customs", "Customs", "#a855f7"],
  ["out_for_delivery", "Out for delivery", "#0d9488"],
  ["failed_attempt", "Failed attempt", "#ea580c"],
  ["available_for_pickup", "Available for pickup", "#ca8a04"],
  ["delivered", "Delivered", "#16a34a"],
  ["exception", "Exception", "#dc2626"],
  ["returned", "Returned", "#9f1239"],
  ["cancelled", "Cancelled", "#57534e"],
  ["expired", "Expired", "#78716c"],
];
const STATUS_LABEL = new Map(STATUSES.map(([k, label]) => [k, label]));
const STATUS_COLOUR = new Map(STATUSES.map(([k, , colour]) => [k, colour]));
const EXCEPTION_KINDS = [
  "delayed", "no_signal", "long_dwell", "customs_hold", "off_route", "temperature_excursion",
  "delivery_failed", "demurrage_risk",
];
const FINAL_STATUSES = new Set(["delivered", "returned", "cancelled", "expired"]);
const MODE_COLOUR = { sea: "#0369a1", air: "#7c3aed", road: "#b45309", rail: "#15803d" };
const FILTER_NAMES = ["status", "mode", "carrier", "exception", "lateness", "eta_after", "eta_before", "q"];
// The input of each filter not named `filter-<name>` (the list's own, and the search box).
const FILTER_INPUTS = { q: "search", lateness: "list-lateness", eta_after: "list-eta-after", eta_before: "list-eta-before" };
const LATENESS = new Set(["on_time", "might_be_late", "late"]);
// p_late (the chance of arriving after the promise) below this is on time, from LATE_FROM late.
const ON_TIME_BELOW = 0.25;
const LATE_FROM = 0.75;
const LOCAL_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?$/; // a datetime-local value
const PING_INTERVAL_MS = 20000;
const PAGE_SIZE = 500;
const CLUSTER_PX = 40;
const CLUSTER_THROTTLE_MS = 250;
const CLUSTER_LIST_MAX = 200;
const LIST_PAGE_SIZE = 50;
const LIST_OPEN_STORAGE = "trackd.listOpen";
const LIST_THROTTLE_MS = 400;
// Zoom from which a place label of each rank shows (rank 0, countries, use their own range).
const LABEL_MIN_ZOOM = { 1: 2, 2: 4, 3: 6, 4: 7 };
const COUNTRY_MIN_ZOOM = 3;
const COUNTRY_MAX_ZOOM = 7;
const LABEL_MAX = 250;
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

const base = new URL(".", window.location.href);
const $ = (id) => document.getElementById(id);

const state = {
  tenant: null, // the signed-in tenant's name; its session cookie authenticates every request
  shipments: new Map(),
  markers: new Map(),
  filters: { status: "", mode: "", carrier: "", exception: "", lateness: "", eta_after: "", eta_before: "", q: "" },
  carriers: new Set(),
  selected: null,
  lastSeq: null,
  session: 0, // bumped on sign-out so stale async work stops
};

// ---------------------------------------------------------------- small helpers

class AuthError extends Error {}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  if (attrs) {
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "style") Object.assign(node.style, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace the children of element `id`, skipping empty ones. */
function fill(id, ...children) {
  const node = typeof id === "string" ? $(id) : id;
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false && c !== ""));
}

function parseTime(value) {
  if (value === null || value === undefined || value === "") return null;
  const t = typeof value === "number" ? value * 1000 : Date.parse(value);
  return Number.isFinite(t) ? t : null;
}

const dateFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
});

function fmtTime(value) {
  const t = parseTime(value);
  return t === null ? "—" : dateFormat.format(new Date(t));
}

function fmtAgo(value) {
  const t = parseTime(value);
  if (t === null) return "";
  const s = Math.round((Date.now() - t) / 1000);
  if (Math.abs(s) < 60) return "just now";
  const [n, unit] = Math.abs(s) < 3600 ? [s / 60, "min"] : Math.abs(s) < 172800 ? [s / 3600, "h"] : [s / 86400, "d"];
  const v = Math.round(Math.abs(n));
  return s >= 0 ? `${v} ${unit} ago` : `in ${v} ${unit}`;
}

function fmtHours(ms) {
  const h = Math.abs(ms) / 3600000;
  return h >= 48 ? `${(h / 24).toFixed(1)} d` : `${h.toFixed(1)} h`;
}

function fmtNumber(value, digits = 0) {
  return typeof value === "number" && Number.isFinite(value)
    ? value.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 })
    : "—";
}

function humanize(code) {
  return code ? String(code).replace(/[._]/g, " ") : "";
}

function normalizeId(value) {
  return String(value ?? "").toUpperCase().replace(/[\s-]/g, "");
}

function refValues(refs) {
  if (!Array.isArray(refs)) return [];
  return refs.flatMap((r) => (r && typeof r === "object" ? Object.values(r) : [r])).filter((v) => v !== null && v !== undefined);
}

function openExceptions(s) {
  return Array.isArray(s.exceptions) ? s.exceptions.filter((e) => e && !e.cleared_at) : [];
}

function shipmentModes(s) {
  const modes = new Set();
  if (s.mode) modes.add(s.mode);
  for (const leg of s.legs || []) if (leg && leg.mode) modes.add(leg.mode);
  return modes;
}

function validLatLng(lat, lon) {
  return typeof lat === "number" && typeof lon === "number" && Number.isFinite(lat) && Number.isFinite(lon)
    && Math.abs(lat) <= 90 && Math.abs(lon) <= 180;
}

/** Where a shipment is drawn: its last position, else the origin of its first leg. */
function latLngOf(s) {
  const p = s.last_position;
  if (p && validLatLng(p.lat, p.lon)) return [p.lat, p.lon];
  const origin = s.legs && s.legs[0] && s.legs[0].origin;
  if (origin && validLatLng(origin.lat, origin.lon)) return [origin.lat, origin.lon];
  return null;
}

/** Longitude `lon` moved by whole turns to lie within 180° of `ref` (lines across the antimeridian). */
function unwrap(lon, ref) {
  if (ref === null || ref === undefined) return lon;
  while (lon - ref > 180) lon -= 360;
  while (lon - ref < -180) lon += 360;
  return lon;
}

function toast(message) {
  const box = $("toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

// ---------------------------------------------------------------- REST

async function api(path, options = {}) {
  const response = await fetch(new URL(path, base), {
    ...options,
    headers: { Accept: "application/json", ...(options.headers || {}) },
  });
  if (response.status === 401) throw new AuthError("The API key was not accepted.");
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = body.detail || body.error || detail;
    } catch { /* not JSON */ }
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

function handleFailure(error) {
  if (error instanceof AuthError) {
    signOut("Your API key is no longer accepted. Sign in again.");
  } else {
    console.error(error);
    toast(error.message || String(error));
  }
}

async function loadShipments(session) {
  let cursor = null;
  do {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (cursor) params.set("cursor", cursor);
    const page = await api(`v1/shipments?${params}`);
    if (session !== state.session) return;
    for (const s of page.items || []) upsert(s);
    cursor = page.next_cursor || null;
  } while (cursor);
}

const fetching = new Set();
async function fetchShipment(id) {
  if (fetching.has(id)) return;
  fetching.add(id);
  const session = state.session;
  try {
    const s = await api(`v1/shipments/${encodeURIComponent(id)}`);
    if (session === state.session) {
      upsert(s);
      // Asked for by another name (a link with a tracking number): follow the shipment's id.
      if (state.selected === id && s && s.id !== undefined && String(s.id) !== id) select(String(s.id));
    }
  } catch (error) {
    if (error.status !== 404) handleFailure(error);
  } finally {
    fetching.delete(id);
  }
}

// ---------------------------------------------------------------- the model

/** Take a shipment as sent by REST or the stream, never letting an older copy win. */
function upsert(incoming) {
  if (!incoming || incoming.id === undefined || incoming.id === null) return;
  const id = String(incoming.id);
  const current = state.shipments.get(id);
  let next = incoming;
  if (current) {
    const newer = (parseTime(incoming.updated_at) ?? 0) >= (parseTime(current.updated_at) ?? 0);
    next = newer ? { ...current, ...incoming } : { ...incoming, ...current };
    // Positions come faster than updated_at moves: keep whichever is the latest.
    const a = current.last_position;
    const b = incoming.last_position;
    if (a && (!b || (parseTime(a.at) ?? 0) > (parseTime(b.at) ?? 0))) next.last_position = a;
    else if (b) next.last_position = b;
  }
  next.id = id;
  state.shipments.set(id, next);
  if (next.carrier && !state.carriers.has(next.carrier)) {
    state.carriers.add(next.carrier);
    view.carriersChanged = true;
  }
  touch(id);
}

function remove(id) {
  if (!state.shipments.delete(id)) return;
  touch(id);
}

// `inOrder`: a stream message with its seq, which comes in commit order: an older fix than the one
// shown is then the shipment going back to the fix that stands after a retraction.
function applyPosition(p, inOrder = false) {
  const id = String(p.shipment_id);
  const s = state.shipments.get(id);
  if (!s) {
    fetchShipment(id);
    return;
  }
  if (!validLatLng(p.lat, p.lon)) return;
  const at = p.occurred_at ?? p.at ?? null;
  const previous = s.last_position;
  if (!inOrder && previous && at && (parseTime(previous.at) ?? 0) > (parseTime(at) ?? 0)) return;
  s.last_position = { lat: p.lat, lon: p.lon, at, speed_kmh: p.speed_kmh ?? null, heading: p.heading ?? null };
  touch(id, false);
  if (id === state.selected) panel.appendPosition(s.last_position);
}

function applyException(s, exception, raised) {
  const list = Array.isArray(s.exceptions) ? [...s.exceptions] : [];
  const same = (e) => e.kind === exception.kind && (e.raised_at === exception.raised_at || !e.cleared_at);
  const index = raised
    ? list.findIndex((e) => e.kind === exception.kind && e.raised_at === exception.raised_at)
    : list.findIndex(same);
  if (index >= 0) list[index] = { ...list[index], ...exception };
  else list.push(exception);
  s.exceptions = list;
}

function handleMessage(msg) {
  if (!msg || typeof msg !== "object") return;
  const type = msg.type;
  if (type === "snapshot") {
    const ids = new Set();
    for (const s of msg.shipments || []) {
      upsert(s);
      ids.add(String(s.id));
    }
    if (msg.reset) for (const id of [...state.shipments.keys()]) if (!ids.has(id)) remove(id);
    if (typeof msg.seq === "number") state.lastSeq = msg.seq;
    return;
  }
  if (type === "error") {
    if (msg.error === "Unauthorized") signOut("Your API key is no longer accepted. Sign in again.");
    else toast(`Stream: ${msg.detail || msg.error || "error"}`);
    return;
  }
  if (typeof msg.seq === "number") {
    // Replays after a resume may overlap what was already applied.
    if (state.lastSeq !== null && msg.seq <= state.lastSeq) return;
    state.lastSeq = msg.seq;
  }
  if (type === "position") {
    applyPosition(msg, typeof msg.seq === "number");
    return;
  }
  if (type === "positions") {
    for (const item of msg.items || []) applyPosition({ occurred_at: msg.occurred_at, ...item });
    return;
  }
  if (type === "shipment.created" || type === "shipment.updated") {
    if (msg.shipment) upsert(msg.shipment);
    if (String(msg.shipment_id ?? msg.shipment?.id) === state.selected) panel.refetchSoon();
    return;
  }
  if (msg.shipment_id === undefined || msg.shipment_id === null) return;
  const id = String(msg.shipment_id);
  const s = state.shipments.get(id);
  if (!s) {
    fetchShipment(id);
    return;
  }
  if (type === "status.changed") {
    s.status = msg.status;
    s.substatus = msg.substatus ?? null;
  } else if (type === "eta.changed") {
    s.eta = msg.eta ?? null;
  } else if (type === "exception.raised" || type === "exception.cleared") {
    if (msg.exception) applyException(s, msg.exception, type === "exception.raised");
  } else if (type === "release.changed") {
    s.release = msg.release ?? null;
  } else if (type !== "place.entered" && type !== "place.exited") {  // crossings: in the timeline
    return;
  }
  if (msg.occurred_at && (parseTime(msg.occurred_at) ?? 0) > (parseTime(s.updated_at) ?? 0)) {
    s.updated_at = msg.occurred_at;
  }
  touch(id);
  if (id === state.selected && type !== "eta.changed") panel.refetchSoon();
}

// ---------------------------------------------------------------- filters

function matches(s) {
  const f = state.filters;
  if (f.status && s.status !== f.status) return false;
  if (f.carrier && s.carrier !== f.carrier) return false;
  if (f.mode && !shipmentModes(s).has(f.mode)) return false;
  if (f.exception) {
    const open = openExceptions(s);
    if (f.exception === "any" && open.length === 0) return false;
    if (f.exception === "none" && open.length > 0) return false;
    if (f.exception !== "any" && f.exception !== "none" && !open.some((e) => e.kind === f.exception)) return false;
  }
  if (f.lateness && lateness(s, Date.now()) !== f.lateness) return false;
  if (f.eta_after || f.eta_before) {
    const predicted = parseTime(s.eta?.predicted_at);
    if (predicted === null) return false;
    if (f.eta_after && !(predicted >= parseTime(f.eta_after))) return false;
    if (f.eta_before && !(predicted < parseTime(f.eta_before))) return false;
  }
  if (f.q) {
    const q = normalizeId(f.q);
    const ids = [s.tracking_number, ...refValues(s.references)].map(normalizeId);
    if (!ids.some((v) => v.includes(q))) return false;
  }
  return true;
}

/**
 * `on_time`, `might_be_late` or `late`, as the tracking page and the API's `lateness` filter say it;
 * null without a promise, or for a shipment returned, cancelled or expired. Open: late once the
 * promise has passed, else from `p_late`, else (an estimate from before the promise) by comparing
 * the prediction and the interval's end with it. Delivered: late when delivered after it.
 */
function lateness(s, now) {
  const promised = parseTime(s.promised_at);
  if (promised === null) return null;
  const eta = s.eta || {};
  const predicted = parseTime(eta.predicted_at);
  if (s.status === "delivered") return predicted === null ? null : predicted > promised ? "late" : "on_time";
  if (FINAL_STATUSES.has(s.status)) return null;
  if (promised < now) return "late";
  if (typeof eta.p_late === "number") {
    return eta.p_late < ON_TIME_BELOW ? "on_time" : eta.p_late >= LATE_FROM ? "late" : "might_be_late";
  }
  const latest = parseTime(eta.latest);
  if (predicted !== null && predicted > promised) return "late";
  if (latest !== null && latest > promised) return "might_be_late";
  return predicted !== null || latest !== null ? "on_time" : null;
}

function visibleIds() {
  const ids = [];
  for (const s of state.shipments.values()) if (matches(s)) ids.push(s.id);
  return ids;
}

// ---------------------------------------------------------------- map and markers

const map = L.map("map", {
  preferCanvas: true,
  worldCopyJump: true,
  minZoom: 2,
  maxZoom: 18,
  zoomSnap: 0.5,
  attributionControl: true,
}).setView([25, 10], 2);
map.attributionControl.setPrefix("");
map.createPane("basemap").style.zIndex = 150;
map.createPane("routes").style.zIndex = 350;
map.createPane("labels").style.zIndex = 380;
map.getPane("labels").style.pointerEvents = "none";
/**
 * A canvas renderer that draws circle markers in batches: one path and one fill per style instead
 * of one per marker, which keeps a redraw of ten thousand markers within a frame. Other layers,
 * and hit testing, are Leaflet's own. Groups are drawn thin strokes first, so exception and
 * selected markers stay on top.
 */
const BatchedCanvas = L.Canvas.extend({
  _draw() {
    const bounds = this._redrawBounds;
    const ctx = this._ctx;
    ctx.save();
    if (bounds) {
      const size = bounds.getSize();
      ctx.beginPath();
      ctx.rect(bounds.min.x, bounds.min.y, size.x, size.y);
      ctx.clip();
    }
    this._drawing = true;
    const groups = new Map();
    for (let order = this._drawFirst; order; order = order.next) {
      const layer = order.layer;
      if (bounds && !(layer._pxBounds && layer._pxBounds.intersects(bounds))) continue;
      if (!(layer instanceof L.CircleMarker) || layer._radiusY !== undefined || layer._empty()) {
        layer._updatePath();
        continue;
      }
      const o = layer.options;
      const key = `${o.fillColor}|${o.fillOpacity}|${o.stroke}|${o.color}|${o.weight}|${o.opacity}`;
      let group = groups.get(key);
      if (!group) {
        group = { options: o, layers: [] };
        groups.set(key, group);
      }
      group.layers.push(layer);
    }
    const ordered = [...groups.values()].sort((a, b) => (a.options.weight || 0) - (b.options.weight || 0));
    for (const { options: o, layers } of ordered) {
      ctx.beginPath();
      for (const layer of layers) {
        const p = layer._point;
        const r = Math.max(Math.round(layer._radius), 1);
        ctx.moveTo(p.x + r, p.y);
        ctx.arc(p.x, p.y, r, 0, Math.PI * 2, false);
      }
      if (o.fill) {
        ctx.globalAlpha = o.fillOpacity;
        ctx.fillStyle = o.fillColor || o.color;
        ctx.fill("nonzero");
      }
      if (o.stroke && o.weight !== 0) {
        ctx.globalAlpha = o.opacity;
        ctx.lineWidth = o.weight;
        ctx.strokeStyle = o.color;
        ctx.stroke();
      }
    }
    this._drawing = false;
    ctx.restore();
  },
});
const markerRenderer = new BatchedCanvas({ padding: 0.3, tolerance: 3 });
const routeRenderer = L.svg({ pane: "routes" });
const markerLayer = L.layerGroup().addTo(map);
map.on("moveend", () => {
  clusters.schedule();
  labels.schedule();
  const lon = map.getCenter().lng;
  if (Math.abs(lon - view.centreLon) < 20) return;
  view.centreLon = lon;
  refilter();
});
map.on("zoomend", () => {
  clusters.schedule();
  labels.schedule();
});
const routeLayer = L.layerGroup().addTo(map);

/**
 * Places (the bundled ports and airports, and the tenant's own) as a layer toggled by a checkbox on
 * the map: fetched for the view from zoom PLACES_MIN_ZOOM on, where a port's or an airport's circle
 * is big enough to mean something; the choice is kept in localStorage.
 */
const PLACES_MIN_ZOOM = 7;
const PLACES_STORAGE = "trackd.places";
const PLACE_COLOUR = { port: "#0e7490", airport: "#7c3aed", border: "#b45309", customs: "#b91c1c" };
const placeLayer = L.layerGroup();
const placesOverlay = {
  on: localStorage.getItem(PLACES_STORAGE) !== "0",
  timer: 0,
  token: 0,

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), 250);
  },

  async load() {
    const token = ++this.token;
    if (!this.on || !state.tenant || map.getZoom() < PLACES_MIN_ZOOM) {
      placeLayer.clearLayers();
      return;
    }
    const b = map.getBounds();
    const wrap = (lon) => ((((lon + 180) % 360) + 360) % 360) - 180;
    const box = [wrap(b.getWest()), Math.max(b.getSouth(), -90), wrap(b.getEast()), Math.min(b.getNorth(), 90)];
    let page;
    try {
      page = await api(`v1/places?limit=500&bbox=${box.map((v) => v.toFixed(4)).join(",")}`);
    } catch (error) {
      if (error instanceof AuthError) handleFailure(error);
      return;
    }
    if (token !== this.token) return;
    placeLayer.clearLayers();
    for (const p of page.items || []) {
      const style = { color: PLACE_COLOUR[p.kind] || "#475569", weight: 1, fillOpacity: 0.08, pane: "routes",
        renderer: routeRenderer, interactive: true };
      const g = p.geometry || {};
      const shape = g.type === "Point"
        ? L.circle([g.coordinates[1], g.coordinates[0]], { ...style, radius: p.radius_m })
        : L.polygon((g.coordinates || []).map((ring) => ring.map(([lon, lat]) => [lat, lon])), style);
      shape.bindTooltip(`${p.name} · ${p.kind}${p.unlocode || p.iata ? ` · ${p.unlocode || p.iata}` : ""}`);
      placeLayer.addLayer(shape);
    }
  },

  toggle(on) {
    this.on = on;
    localStorage.setItem(PLACES_STORAGE, on ? "1" : "0");
    if (on) placeLayer.addTo(map);
    else placeLayer.remove();
    this.load();
  },
};
const PlacesControl = L.Control.extend({
  options: { position: "topleft" },  // the side panel covers the right
  onAdd() {
    const box = el("input", { type: "checkbox", id: "places-toggle" });
    box.checked = placesOverlay.on;
    box.addEventListener("change", () => placesOverlay.toggle(box.checked));
    const label = el("label", { class: "leaflet-bar places-toggle", title: `Shown from zoom ${PLACES_MIN_ZOOM}`,
      style: { background: "#fff", padding: "4px 8px", cursor: "pointer" } }, box, " Ports & airports");
    L.DomEvent.disableClickPropagation(label);
    return label;
  },
});
map.addControl(new PlacesControl());
if (placesOverlay.on) placeLayer.addTo(map);
map.on("moveend", () => placesOverlay.schedule());

/**
 * Rings that cross the antimeridian (Fiji, Chukotka) made continuous, so they are not drawn as a
 * band across the whole world; rings that close over a pole (Antarctica) are left as they are.
 */
function seamless(collection) {
  const fixRing = (ring) => {
    if (ring.some((c) => Math.abs(c[1]) > 89.9)) return ring;
    let previous = null;
    return ring.map((c) => {
      previous = unwrap(c[0], previous);
      return [previous, c[1]];
    });
  };
  for (const feature of collection.features) {
    const g = feature.geometry;
    if (!g) continue;
    if (g.type === "Polygon") g.coordinates = g.coordinates.map(fixRing);
    else if (g.type === "MultiPolygon") g.coordinates = g.coordinates.map((polygon) => polygon.map(fixRing));
  }
  return collection;
}

async function setupBasemap() {
  let config = {};
  try {
    const response = await fetch(new URL("config.json", base), { headers: { Accept: "application/json" } });
    if (response.ok) config = await response.json();
  } catch { /* no config: the shipped basemap */ }
  if (config && typeof config.tile_url === "string" && config.tile_url) {
    L.tileLayer(config.tile_url, { attribution: config.tile_attribution || "", maxZoom: 19 }).addTo(map);
    return;
  }
  const response = await fetch(new URL("static/vendor/world-atlas/countries-110m.json", base));
  const topo = await response.json();
  const countries = seamless(window.topojson.feature(topo, topo.objects.countries));
  const renderer = L.canvas({ pane: "basemap", padding: 0.5 });
  for (const offset of [-360, 0, 360]) {
    L.geoJSON(countries, {
      pane: "basemap",
      renderer,
      interactive: false,
      coordsToLatLng: (c) => L.latLng(c[1], c[0] + offset),
      style: { color: "#b6bfcc", weight: 0.6, fillColor: "#f4f5f7", fillOpacity: 1 },
    }).addTo(map);
  }
  map.attributionControl.addAttribution("Natural Earth");
  await labels.load(countries);
}

// ---------------------------------------------------------------- basemap labels

/**
 * Place and country names over the offline basemap, from static/places-labels.json (built by
 * scripts/build_place_labels.py from the UN/LOCODE table and `airportsdata`) and the country
 * names of world-atlas. A label of rank r shows from zoom LABEL_MIN_ZOOM[r]; labels are placed
 * best first and one that would overlap a placed one is left out, so the map never smears.
 */
const labelLayer = L.layerGroup();
const labels = {
  places: [],
  timer: 0,
  drawnAt: null,

  async load(countries) {
    const response = await fetch(new URL("static/places-labels.json", base));
    const data = response.ok ? await response.json() : { places: [] };
    const entries = [];
    for (const [name, lat, lon, kind, rank] of data.places || []) {
      if (validLatLng(lat, lon)) entries.push({ name, lat, lon, kind, rank });
    }
    for (const feature of countries.features) {
      const point = countryAnchor(feature);
      const name = feature.properties && feature.properties.name;
      if (point && name) entries.push({ name, lat: point.lat, lon: point.lon, kind: "country", rank: 0, area: point.area });
    }
    // Best first: the hubs, then countries (largest first), then the rest by rank.
    const order = (e) => (e.rank === 1 ? 0 : e.rank === 0 ? 1 : e.rank);
    entries.forEach((e, i) => { e.index = i; });
    entries.sort((a, b) => order(a) - order(b) || (b.area || 0) - (a.area || 0) || a.index - b.index);
    this.places = entries;
    labelLayer.addTo(map);
    this.draw();
  },

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.draw(), 60);
  },

  draw() {
    if (!this.places.length || !map._loaded) return;
    const zoom = map.getZoom();
    const centre = map.getCenter().lng;
    const size = map.getSize();
    const placed = [];
    const nodes = [];
    for (const place of this.places) {
      if (placed.length >= LABEL_MAX) break;
      if (place.kind === "country" ? zoom < COUNTRY_MIN_ZOOM || zoom > COUNTRY_MAX_ZOOM
        : zoom < (LABEL_MIN_ZOOM[place.rank] ?? 99)) continue;
      const ll = L.latLng(place.lat, unwrap(place.lon, centre));
      const p = map.latLngToContainerPoint(ll);
      if (p.x < -50 || p.y < -20 || p.x > size.x + 50 || p.y > size.y + 20) continue;
      const text = place.kind === "airport" ? `✈ ${place.name}` : place.name;
      const w = text.length * (place.kind === "country" ? 7.5 : 6.6) + 10;
      const box = place.kind === "country"
        ? { x0: p.x - w / 2, x1: p.x + w / 2, y0: p.y - 8, y1: p.y + 8 }
        : { x0: p.x - 4, x1: p.x + w, y0: p.y - 8, y1: p.y + 8 };
      if (placed.some((b) => b.x0 < box.x1 && box.x0 < b.x1 && b.y0 < box.y1 && box.y0 < b.y1)) continue;
      placed.push(box);
      nodes.push(L.marker(ll, {
        pane: "labels",
        interactive: false,
        keyboard: false,
        icon: L.divIcon({
          className: `place-label kind-${place.kind}`,
          html: el("span", { "data-rank": place.rank }, text),
          iconSize: null,
          iconAnchor: place.kind === "country" ? [w / 2, 8] : [3, 8],
        }),
      }));
    }
    labelLayer.clearLayers();
    for (const node of nodes) labelLayer.addLayer(node);
    this.drawnAt = { zoom, lat: map.getCenter().lat, lng: map.getCenter().lng };
  },

  /** The names drawn now, and the view they were drawn for. */
  shown() {
    const names = [...document.querySelectorAll(".place-label span")].map((node) => node.textContent);
    return { ...this.drawnAt, names };
  },
};

/** Where a country's name goes: the centroid of its largest ring, with that ring's area. */
function countryAnchor(feature) {
  const g = feature.geometry;
  if (!g) return null;
  const polygons = g.type === "Polygon" ? [g.coordinates] : g.type === "MultiPolygon" ? g.coordinates : [];
  let best = null;
  for (const polygon of polygons) {
    const ring = polygon[0];
    if (!ring || ring.length < 4) continue;
    let a = 0;
    let cx = 0;
    let cy = 0;
    for (let i = 0, j = ring.length - 1; i < ring.length; j = i, i += 1) {
      const f = ring[j][0] * ring[i][1] - ring[i][0] * ring[j][1];
      a += f;
      cx += (ring[j][0] + ring[i][0]) * f;
      cy += (ring[j][1] + ring[i][1]) * f;
    }
    if (!a) continue;
    const area = Math.abs(a / 2);
    if (!best || area > best.area) best = { area, lon: cx / (3 * a), lat: cy / (3 * a) };
  }
  if (!best || !validLatLng(best.lat, ((best.lon + 540) % 360) - 180)) return null;
  best.lon = ((best.lon + 540) % 360) - 180;
  return best;
}

function markerStyle(s) {
  const selected = s.id === state.selected;
  const open = openExceptions(s).length > 0;
  return {
    key: `${s.status}|${open}|${selected}`,
    open,
    style: {
      radius: selected ? 8 : 5,
      fillColor: STATUS_COLOUR.get(s.status) || "#6b7280",
      fillOpacity: 0.9,
      color: selected ? "#111827" : open ? "#dc2626" : "#ffffff",
      weight: selected ? 3 : open ? 2 : 1,
    },
  };
}

function tooltipFor(marker) {
  const s = state.shipments.get(marker.trackdId);
  if (!s) return "";
  return el("div", { class: "tip" },
    el("b", null, s.tracking_number || s.id), " ", s.carrier || "",
    el("div", null, STATUS_LABEL.get(s.status) || humanize(s.status)));
}

function syncMarker(id) {
  const s = state.shipments.get(id);
  let marker = state.markers.get(id);
  const ll = s ? latLngOf(s) : null;
  if (!s || !ll) {
    if (marker) {
      markerLayer.removeLayer(marker);
      state.markers.delete(id);
    }
    return;
  }
  // Drawn on the world copy nearest the view centre, so a Pacific view shows both shores.
  ll[1] = unwrap(ll[1], view.centreLon);
  const { key, open, style } = markerStyle(s);
  if (!marker) {
    marker = L.circleMarker(ll, { ...style, renderer: markerRenderer, bubblingMouseEvents: false });
    marker.trackdId = id;
    marker.trackdStyle = key;
    marker.bindTooltip(tooltipFor, { direction: "top", offset: [0, -6] });
    marker.on("click", () => select(id));
    state.markers.set(id, marker);
  } else {
    const current = marker.getLatLng();
    if (current.lat !== ll[0] || current.lng !== ll[1]) marker.setLatLng(ll);
    if (marker.trackdStyle !== key) {
      marker.setStyle(style);
      marker.trackdStyle = key;
    }
  }
  marker.trackdOpen = open; // read by the clusters' colour, so they need not look again
  // Which shown markers are drawn alone and which inside a cluster is decided by `clusters`.
  const show = matches(s);
  if (marker.trackdShown !== show || !show) {
    marker.trackdShown = show;
    if (!show && markerLayer.hasLayer(marker)) markerLayer.removeLayer(marker);
  }
  clusters.schedule();
}

// ---------------------------------------------------------------- clustering

/**
 * Markers closer than CLUSTER_PX on screen are drawn as one cluster marker with their count.
 * Recomputed (at most every CLUSTER_THROTTLE_MS) after a zoom, a move or a change of the
 * markers, over the markers within half a screen of the view. Greedy: each marker not yet taken
 * gathers the untaken ones within the radius, found through a grid of radius-sized cells. The
 * selected shipment is always drawn alone, so it stays visible and clickable.
 */
const clusterLayer = L.layerGroup().addTo(map);

/**
 * A marker's point in world pixels at `zoom` (as `latLngToLayerPoint` rounds it, before the pixel
 * origin), kept on the marker until it moves or the zoom changes: with ten thousand markers of
 * which a few hundred move between two clusterings, most need no projection.
 */
function projected(marker, zoom) {
  const ll = marker.getLatLng();
  const c = marker.trackdProjected;
  if (c && c.zoom === zoom && c.lat === ll.lat && c.lng === ll.lng) return c;
  const p = map.project(ll, zoom);
  marker.trackdProjected = { zoom, lat: ll.lat, lng: ll.lng, x: Math.round(p.x), y: Math.round(p.y) };
  return marker.trackdProjected;
}

/** A grid cell's key as one number (cells lie within a few screens of the view). */
function cellKey(cx, cy) {
  return (cx + 32768) * 65536 + (cy + 32768);
}

const clusters = {
  byKey: new Map(), // seed id -> cluster marker
  timer: 0,
  last: 0,

  schedule() {
    if (this.timer) return;
    const wait = Math.max(0, this.last + CLUSTER_THROTTLE_MS - Date.now());
    this.timer = setTimeout(() => this.compute(), wait);
  },

  compute() {
    clearTimeout(this.timer);
    this.timer = 0;
    this.last = Date.now();
    if (!map._loaded) return;
    const size = map.getSize();
    const area = L.bounds(map.containerPointToLayerPoint([-size.x / 2, -size.y / 2]),
      map.containerPointToLayerPoint([size.x * 1.5, size.y * 1.5]));
    const zoom = map.getZoom();
    const origin = map.getPixelOrigin();
    const cells = new Map();
    const points = [];
    for (const [id, marker] of state.markers) {
      if (!marker.trackdShown) continue;
      const p = projected(marker, zoom);
      const x = p.x - origin.x;
      const y = p.y - origin.y;
      if (x < area.min.x || x > area.max.x || y < area.min.y || y > area.max.y) {
        if (markerLayer.hasLayer(marker)) markerLayer.removeLayer(marker);
        continue;
      }
      const point = { id, marker, x, y, taken: id === state.selected };
      points.push(point);
      if (point.taken) continue;
      const key = cellKey(Math.floor(x / CLUSTER_PX), Math.floor(y / CLUSTER_PX));
      const cell = cells.get(key);
      if (cell) cell.push(point);
      else cells.set(key, [point]);
    }
    const groups = [];
    for (const point of points) {
      if (point.taken) {
        if (point.id === state.selected) groups.push([point]);
        continue;
      }
      point.taken = true;
      const group = [point];
      const cx = Math.floor(point.x / CLUSTER_PX);
      const cy = Math.floor(point.y / CLUSTER_PX);
      for (let dx = -1; dx <= 1; dx += 1) {
        for (let dy = -1; dy <= 1; dy += 1) {
          for (const other of cells.get(cellKey(cx + dx, cy + dy)) || []) {
            if (other.taken) continue;
            const ex = other.x - point.x;
            const ey = other.y - point.y;
            if (ex * ex + ey * ey > CLUSTER_PX * CLUSTER_PX) continue;
            other.taken = true;
            group.push(other);
          }
        }
      }
      groups.push(group);
    }
    const keep = new Set();
    for (const group of groups) {
      if (group.length === 1) {
        const { marker } = group[0];
        if (!markerLayer.hasLayer(marker)) markerLayer.addLayer(marker);
        continue;
      }
      for (const { marker } of group) if (markerLayer.hasLayer(marker)) markerLayer.removeLayer(marker);
      const key = group[0].id;
      keep.add(key);
      this.draw(key, group);
    }
    for (const [key, marker] of this.byKey) {
      if (keep.has(key)) continue;
      clusterLayer.removeLayer(marker);
      this.byKey.delete(key);
    }
    const selected = state.selected && state.markers.get(state.selected);
    if (selected && markerLayer.hasLayer(selected)) selected.bringToFront();
  },

  draw(key, group) {
    let lat = 0;
    let lng = 0;
    let open = false;
    for (const { marker } of group) {
      const ll = marker.getLatLng();
      lat += ll.lat;
      lng += ll.lng;
      if (marker.trackdOpen) open = true;
    }
    const centre = L.latLng(lat / group.length, lng / group.length);
    const ids = group.map((p) => p.id);
    const look = `${ids.length}|${open}`;
    const n = ids.length;
    const px = n < 10 ? 28 : n < 100 ? 34 : n < 1000 ? 40 : 46;
    const icon = () => L.divIcon({
      className: `cluster-marker${open ? " has-exceptions" : ""}`,
      html: `<span>${n}</span>`,
      iconSize: [px, px],
    });
    let marker = this.byKey.get(key);
    if (!marker) {
      marker = L.marker(centre, { icon: icon(), keyboard: true, riseOnHover: true });
      marker.on("click", () => this.open(marker));
      this.byKey.set(key, marker);
      clusterLayer.addLayer(marker);
      marker.trackdLook = null;
    } else if (!marker.getLatLng().equals(centre)) {
      marker.setLatLng(centre);
    }
    marker.trackdIds = ids;
    if (marker.trackdLook !== look) {
      if (marker.trackdLook !== null) marker.setIcon(icon());
      marker.trackdLook = look;
      const node = marker.getElement();
      if (node) {
        node.dataset.count = String(n);
        node.setAttribute("title", `${n} shipments`);
        node.setAttribute("aria-label", `${n} shipments`);
      }
    }
  },

  /** A click on a cluster: zoom to its markers, or list them when no zoom would separate them. */
  open(marker) {
    const ids = marker.trackdIds || [];
    const bounds = L.latLngBounds(ids.map((id) => state.markers.get(id)).filter(Boolean).map((m) => m.getLatLng()));
    if (!bounds.isValid()) return;
    const max = map.getMaxZoom();
    const spread = map.project(bounds.getNorthEast(), max).distanceTo(map.project(bounds.getSouthWest(), max));
    if (map.getZoom() < max && spread > CLUSTER_PX) {
      map.fitBounds(bounds.pad(0.3), { maxZoom: max });
      return;
    }
    this.list(marker, ids);
  },

  list(marker, ids) {
    const items = ids.map((id) => state.shipments.get(id)).filter(Boolean)
      .sort((a, b) => collator.compare(a.tracking_number || a.id, b.tracking_number || b.id));
    const shown = items.slice(0, CLUSTER_LIST_MAX);
    const content = el("div", { class: "cluster-list" },
      el("div", { class: "cluster-list-head" }, `${items.length} shipments here`),
      el("ul", null, shown.map((s) => el("li", null, el("button", {
        type: "button",
        "data-id": s.id,
        onclick: () => {
          map.closePopup();
          select(s.id);
        },
      }, el("i", { style: { background: STATUS_COLOUR.get(s.status) || "#6b7280" } }),
      el("b", null, s.tracking_number || s.id), " ",
      el("span", { class: "muted" }, STATUS_LABEL.get(s.status) || humanize(s.status)))))),
      items.length > shown.length
        ? el("div", { class: "muted" }, `and ${items.length - shown.length} more: use the shipment list`) : null);
    L.popup({ maxWidth: 320, minWidth: 220, className: "cluster-popup", autoPanPadding: [20, 20] })
      .setLatLng(marker.getLatLng())
      .setContent(content)
      .openOn(map);
  },

  /** The clusters drawn now: their marker count and shipment ids. */
  current() {
    return [...this.byKey.values()].map((m) => ({ count: m.trackdIds.length, ids: [...m.trackdIds],
      latlng: m.getLatLng() }));
  },
};

// ---------------------------------------------------------------- batched view updates

const view = {
  dirty: new Set(),
  listed: new Set(), // changed in what the list shows (not only moved) since the last flush
  all: false,
  counters: false,
  carriersChanged: false,
  centreLon: 0,
  frame: 0,
  timer: 0,
};

/** A shipment changed; `counters` false when it only moved (its marker follows in a batch). */
function touch(id, counters = true) {
  if (!counters) {
    moves.add(id);
    return;
  }
  view.dirty.add(id);
  view.counters = true;
  view.listed.add(id);
  schedule();
}

function refilter() {
  view.all = true;
  view.counters = true;
  schedule();
}

function schedule() {
  if (view.frame) return;
  view.frame = requestAnimationFrame(flush);
  // Background tabs get no animation frames; keep the model and the DOM close anyway.
  view.timer = setTimeout(flush, 500);
}

function flush() {
  cancelAnimationFrame(view.frame);
  clearTimeout(view.timer);
  view.frame = 0;
  view.timer = 0;
  const ids = view.all ? new Set([...state.shipments.keys(), ...state.markers.keys()]) : view.dirty;
  const selectedTouched = state.selected !== null && (view.all || view.dirty.has(state.selected));
  listOrder.note(view.all ? null : view.listed);
  view.listed = new Set();
  view.dirty = new Set();
  view.all = false;
  for (const id of ids) syncMarker(id);
  if (view.carriersChanged) {
    view.carriersChanged = false;
    renderCarrierOptions();
  }
  if (view.counters) {
    view.counters = false;
    counterView.schedule();
    shipmentList.schedule();
  }
  if (selectedTouched) panel.renderLocal();
}

// ---------------------------------------------------------------- at scale

/**
 * Shipments that only moved: their markers are moved in the first frame after a window of
 * MOVES_BATCH_MS (the stream's own tick), so thousands of positions a second cost a few marker
 * passes, canvas redraws and cluster updates a second instead of one per frame, whatever else
 * (status changes, say) is drawn in the frames between.
 */
const MOVES_BATCH_MS = 250;
const moves = {
  ids: new Set(),
  timer: 0,
  last: 0,

  add(id) {
    this.ids.add(id);
    if (this.timer) return;
    const wait = Math.max(0, this.last + MOVES_BATCH_MS - Date.now());
    this.timer = setTimeout(() => this.take(), wait);
  },

  /** Hand the moved shipments to the next frame's flush. */
  take() {
    clearTimeout(this.timer);
    this.timer = 0;
    this.last = Date.now();
    if (!this.ids.size) return;
    for (const id of this.ids) view.dirty.add(id);
    this.ids = new Set();
    schedule();
  },
};

/** The counters, redrawn at most every COUNTERS_THROTTLE_MS: each pass counts every shipment. */
const COUNTERS_THROTTLE_MS = 250;
const counterView = {
  timer: 0,
  last: 0,

  schedule() {
    if (this.timer) return;
    const wait = Math.max(0, this.last + COUNTERS_THROTTLE_MS - Date.now());
    this.timer = setTimeout(() => {
      this.timer = 0;
      this.last = Date.now();
      renderCounters();
    }, wait);
  },
};

/**
 * The list's rows kept in order between renders: a status, ETA or exception change puts back only
 * the shipments it touched (taken out, then inserted by binary search) instead of sorting them all
 * again; a new sort or filter, or more than LIST_RESORT_AT changes, sorts afresh.
 */
const LIST_RESORT_AT = 256;
const listOrder = {
  rows: null,
  key: "",
  changed: new Set(),

  /** Shipments changed since the last flush; null when everything may have. */
  note(ids) {
    if (ids === null) this.rows = null;
    else if (this.rows) for (const id of ids) this.changed.add(id);
    if (this.changed.size > LIST_RESORT_AT) this.rows = null;
    if (!this.rows) this.changed.clear();
  },

  current() {
    const key = `${shipmentList.sort}|${shipmentList.dir}|${JSON.stringify(state.filters)}`;
    if (!this.rows || key !== this.key) {
      this.rows = shipmentList.rows();
      this.key = key;
      this.changed.clear();
      return this.rows;
    }
    const rows = this.rows;
    const compare = shipmentList.comparator();
    for (const id of this.changed) {
      const at = rows.findIndex((s) => s.id === id);
      if (at >= 0) rows.splice(at, 1);
      const s = state.shipments.get(id);
      if (!s || !matches(s)) continue;
      let lo = 0;
      let hi = rows.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (compare(rows[mid], s) <= 0) lo = mid + 1;
        else hi = mid;
      }
      rows.splice(lo, 0, s);
    }
    this.changed.clear();
    return rows;
  },
};

// ---------------------------------------------------------------- toolbar and counters

function renderStatusOptions() {
  const select = $("filter-status");
  for (const [value, label] of STATUSES) select.append(el("option", { value }, label));
  const exceptions = $("filter-exception");
  for (const kind of EXCEPTION_KINDS) exceptions.append(el("option", { value: kind }, `Open: ${humanize(kind)}`));
}

function renderCarrierOptions() {
  const select = $("filter-carrier");
  const current = select.value;
  const carriers = [...state.carriers].sort((a, b) => a.localeCompare(b));
  fill(select, el("option", { value: "" }, "All carriers"),
    ...carriers.map((c) => el("option", { value: c }, c)));
  const wanted = state.filters.carrier || current;
  select.value = carriers.includes(wanted) ? wanted : "";
}

function renderCounters() {
  const counts = new Map();
  let open = 0;
  let visible = 0;
  for (const s of state.shipments.values()) {
    counts.set(s.status, (counts.get(s.status) || 0) + 1);
    if (openExceptions(s).length) open += 1;
    if (matches(s)) visible += 1;
  }
  const chips = [el("span", { class: "chip total", "data-key": "total", "data-count": state.shipments.size },
    el("b", { class: "n" }, state.shipments.size), " shipments",
    visible !== state.shipments.size ? ` · ${visible} shown` : "")];
  for (const [status, label, colour] of STATUSES) {
    const n = counts.get(status) || 0;
    if (!n && state.filters.status !== status) continue;
    chips.push(el("button", {
      type: "button",
      class: `chip${state.filters.status === status ? " active" : ""}`,
      "data-status": status,
      "data-count": n,
      title: `Show only ${label.toLowerCase()}`,
      onclick: () => setFilter("status", state.filters.status === status ? "" : status),
    }, el("i", { style: { background: colour } }), `${label} `, el("b", { class: "n" }, n)));
  }
  chips.push(el("button", {
    type: "button",
    class: `chip exceptions${state.filters.exception === "any" ? " active" : ""}`,
    "data-key": "exceptions",
    "data-count": open,
    onclick: () => setFilter("exception", state.filters.exception === "any" ? "" : "any"),
  }, "Open exceptions ", el("b", { class: "n" }, open)));
  fill("counters", ...chips);
}

function filterInput(name) {
  return $(FILTER_INPUTS[name] || `filter-${name}`);
}

function setFilter(name, value) {
  state.filters[name] = value;
  const input = filterInput(name);
  if (input.value !== value) input.value = value;
  refilter();
  writeHash();
}

function bindToolbar() {
  for (const name of ["status", "mode", "carrier", "exception"]) {
    const select = $(`filter-${name}`);
    const update = () => {
      state.filters[name] = select.value;
      refilter();
      writeHash();
    };
    select.addEventListener("change", update);
    select.addEventListener("input", update);
  }
  const search = $("search");
  search.addEventListener("input", () => {
    state.filters.q = search.value.trim();
    refilter();
    writeHash();
  });
  search.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    const first = visibleIds()[0];
    if (first) select(first, { fly: true });
  });
}

// ---------------------------------------------------------------- shipment list

const STATUS_ORDER = new Map(STATUSES.map(([k], i) => [k, i]));
const LIST_COLUMNS = {
  tracking_number: (s) => s.tracking_number || s.id,
  carrier: (s) => s.carrier || "",
  mode: (s) => [...shipmentModes(s)].join(" + "),
  status: (s) => STATUS_LABEL.get(s.status) || humanize(s.status),
  eta: (s) => (s.eta && s.eta.predicted_at) || "",
  exceptions: (s) => openExceptions(s).map((e) => humanize(e.kind)).join(", "),
};

function compareBy(column) {
  if (column === "eta") {
    // Shipments without a prediction go last whatever the direction.
    return (a, b) => (parseTime(a.eta?.predicted_at) ?? Infinity) - (parseTime(b.eta?.predicted_at) ?? Infinity);
  }
  if (column === "status") return (a, b) => (STATUS_ORDER.get(a.status) ?? 99) - (STATUS_ORDER.get(b.status) ?? 99);
  if (column === "exceptions") {
    return (a, b) => openExceptions(a).length - openExceptions(b).length
      || collator.compare(LIST_COLUMNS.exceptions(a), LIST_COLUMNS.exceptions(b));
  }
  const key = LIST_COLUMNS[column];
  return (a, b) => collator.compare(key(a), key(b));
}

/**
 * The shipments the map shows (the toolbar's filters apply), as a sortable, paged table. Its
 * exception select is the same filter as the toolbar's, listing the kinds open now. Rendered
 * only while open, at most every LIST_THROTTLE_MS.
 */
const shipmentList = {
  sort: "tracking_number",
  dir: 1,
  page: 0,
  timer: 0,
  last: 0,

  isOpen() {
    return !$("list").hidden;
  },

  toggle(open = !this.isOpen()) {
    $("list").hidden = !open;
    $("list-toggle").setAttribute("aria-expanded", String(open));
    document.body.classList.toggle("list-open", open);
    localStorage.setItem(LIST_OPEN_STORAGE, open ? "1" : "0");
    // The list takes the bottom of the page: the map shrinks to the rest instead of hiding under it.
    map.invalidateSize({ pan: false });
    clusters.schedule();
    labels.schedule();
    if (open) this.render();
  },

  schedule() {
    if (!this.isOpen() || this.timer) return;
    const wait = Math.max(0, this.last + LIST_THROTTLE_MS - Date.now());
    this.timer = setTimeout(() => this.render(), wait);
  },

  /** The filtered shipments in the list's order, every page. */
  rows() {
    const rows = [];
    for (const s of state.shipments.values()) if (matches(s)) rows.push(s);
    return rows.sort(this.comparator());
  },

  /** The list's order: the sort column in its direction, then the tracking number. */
  comparator() {
    const compare = compareBy(this.sort);
    const tie = (a, b) => collator.compare(a.tracking_number || a.id, b.tracking_number || b.id);
    const dir = this.dir;
    if (this.sort === "eta") {
      return (a, b) => {
        const ta = parseTime(a.eta?.predicted_at);
        const tb = parseTime(b.eta?.predicted_at);
        if (ta === null || tb === null) return (ta === null) - (tb === null) || tie(a, b);
        return dir * (ta - tb) || tie(a, b);
      };
    }
    return (a, b) => dir * compare(a, b) || tie(a, b);
  },

  setSort(column) {
    if (this.sort === column) this.dir = -this.dir;
    else {
      this.sort = column;
      this.dir = 1;
    }
    this.page = 0;
    this.render();
  },

  render() {
    clearTimeout(this.timer);
    this.timer = 0;
    this.last = Date.now();
    if (!this.isOpen()) return;
    this.renderExceptionOptions();
    const rows = listOrder.current();
    const pages = Math.max(1, Math.ceil(rows.length / LIST_PAGE_SIZE));
    this.page = Math.min(this.page, pages - 1);
    const start = this.page * LIST_PAGE_SIZE;
    $("list-count").textContent = `${rows.length}${rows.length !== state.shipments.size ? ` of ${state.shipments.size}` : ""}`;
    $("list-page").textContent = `${rows.length ? start + 1 : 0}–${Math.min(start + LIST_PAGE_SIZE, rows.length)} · page ${this.page + 1} of ${pages}`;
    $("list-prev").disabled = this.page === 0;
    $("list-next").disabled = this.page >= pages - 1;
    for (const th of $("list-table").querySelectorAll("th[data-sort]")) {
      const on = th.dataset.sort === this.sort;
      th.setAttribute("aria-sort", on ? (this.dir > 0 ? "ascending" : "descending") : "none");
    }
    fill("list-body", rows.slice(start, start + LIST_PAGE_SIZE).map((s) => el("tr", {
      "data-id": s.id,
      class: s.id === state.selected ? "selected" : null,
      tabindex: "0",
    },
    el("td", { class: "tn" }, s.tracking_number || s.id),
    el("td", null, s.carrier || "—"),
    el("td", null, LIST_COLUMNS.mode(s) || "—"),
    el("td", null, el("i", { class: "dot", style: { background: STATUS_COLOUR.get(s.status) || "#6b7280" } }),
      LIST_COLUMNS.status(s)),
    el("td", null, s.status === "delivered" ? "delivered" : fmtTime(s.eta?.predicted_at)),
    el("td", { class: "exc-kinds" }, LIST_COLUMNS.exceptions(s)))));
  },

  renderExceptionOptions() {
    const counts = new Map();
    for (const s of state.shipments.values()) {
      for (const kind of new Set(openExceptions(s).map((e) => e.kind))) counts.set(kind, (counts.get(kind) || 0) + 1);
    }
    const current = state.filters.exception;
    if (current && current !== "any" && current !== "none" && !counts.has(current)) counts.set(current, 0);
    const kinds = [...counts.keys()].sort();
    const signature = kinds.map((k) => `${k}:${counts.get(k)}`).join(",");
    const box = $("list-exception");
    if (box.dataset.signature !== signature) {
      box.dataset.signature = signature;
      fill(box, el("option", { value: "" }, "Any exceptions"),
        el("option", { value: "any" }, "With an open exception"),
        el("option", { value: "none" }, "Without open exceptions"),
        kinds.map((k) => el("option", { value: k }, `Open: ${humanize(k)} (${counts.get(k)})`)));
      ensureOption($("filter-exception"), kinds);
    }
    if (box.value !== current) box.value = current;
  },

  exportCsv() {
    const header = ["tracking_number", "carrier", "mode", "status", "eta", "open_exceptions", "id"];
    const lines = [header.join(",")];
    for (const s of this.rows()) {
      lines.push([s.tracking_number || "", s.carrier || "", LIST_COLUMNS.mode(s), s.status || "",
        (s.eta && s.eta.predicted_at) || "", openExceptions(s).map((e) => e.kind).join(" "), s.id].map(csvCell).join(","));
    }
    const blob = new Blob([`${lines.join("\r\n")}\r\n`], { type: "text/csv;charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const stamp = new Date().toISOString().slice(0, 16).replace(/[-:]/g, "").replace("T", "-");
    const link = el("a", { href: url, download: `shipments-${stamp}.csv`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  },

  bind() {
    $("list-toggle").addEventListener("click", () => this.toggle());
    $("list-close").addEventListener("click", () => this.toggle(false));
    $("list-prev").addEventListener("click", () => {
      this.page = Math.max(0, this.page - 1);
      this.render();
    });
    $("list-next").addEventListener("click", () => {
      this.page += 1;
      this.render();
    });
    $("list-export").addEventListener("click", () => this.exportCsv());
    $("list-exception").addEventListener("change", (event) => setFilter("exception", event.target.value));
    for (const name of ["lateness", "eta_after", "eta_before"]) {
      const input = filterInput(name);
      const update = () => {
        if (state.filters[name] !== input.value) setFilter(name, input.value);
      };
      input.addEventListener("change", update);
      input.addEventListener("input", update);
    }
    for (const th of $("list-table").querySelectorAll("th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => this.setSort(th.dataset.sort));
    }
    const body = $("list-body");
    const pick = (event) => {
      const row = event.target.closest("tr[data-id]");
      if (row) select(row.dataset.id, { fly: true });
    };
    body.addEventListener("click", pick);
    body.addEventListener("keydown", (event) => {
      if (event.key === "Enter") pick(event);
    });
    if (localStorage.getItem(LIST_OPEN_STORAGE) === "1") this.toggle(true);
  },
};

/** A CSV field (RFC 4180), with spreadsheet formulas defused (a leading ' before = + - @). */
function csvCell(value) {
  let text = String(value ?? "");
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** Add to `select` an option for each exception kind it lacks (kinds the page did not know). */
function ensureOption(select, kinds) {
  const have = new Set([...select.options].map((o) => o.value));
  for (const kind of kinds) if (!have.has(kind)) select.append(el("option", { value: kind }, `Open: ${humanize(kind)}`));
}

// ---------------------------------------------------------------- side panel

function etaBar(eta, promisedAt) {
  const earliest = parseTime(eta.earliest);
  const latest = parseTime(eta.latest);
  const predicted = parseTime(eta.predicted_at);
  const promised = parseTime(promisedAt);
  const carrier = parseTime(eta.carrier_eta);
  const points = [earliest, latest, predicted, promised, carrier].filter((t) => t !== null);
  if (points.length < 2) return null;
  const lo = Math.min(...points);
  const hi = Math.max(...points);
  const pad = Math.max((hi - lo) * 0.08, 1800000);
  const at = (t) => `${(((t - lo + pad) / (hi - lo + 2 * pad)) * 100).toFixed(2)}%`;
  const parts = [];
  if (earliest !== null && latest !== null) {
    parts.push(el("span", {
      class: "win",
      style: { left: at(earliest), width: `calc(${at(latest)} - ${at(earliest)} + 2px)` },
      title: `80% interval ${fmtTime(earliest)} – ${fmtTime(latest)}`,
    }));
  }
  if (promised !== null) {
    const late = (latest ?? predicted ?? 0) > promised;
    parts.push(el("span", { class: `promise${late ? " late" : ""}`, style: { left: at(promised) },
      title: `Promised ${fmtTime(promised)}` }));
  }
  if (carrier !== null) {
    parts.push(el("span", { class: "carrier", style: { left: at(carrier) }, title: `Carrier ETA ${fmtTime(carrier)}` }));
  }
  if (predicted !== null) {
    parts.push(el("span", { class: "dot", style: { left: at(predicted) }, title: `Predicted ${fmtTime(predicted)}` }));
  }
  return el("div", { class: "eta-bar", role: "img", "aria-label": "ETA interval against the promised date" }, parts);
}

function renderEta(s) {
  const box = $("panel-eta");
  const eta = s.eta;
  const promisedAt = (eta && eta.promised_at) || s.promised_at;
  if (s.status === "delivered") {
    const delivered = panel.deliveredAt || s.updated_at;
    const rows = [el("div", { class: "big" }, `Delivered ${fmtTime(delivered)}`)];
    const promised = parseTime(promisedAt);
    const at = parseTime(delivered);
    if (promised !== null && at !== null) {
      rows.push(el("div", { class: at <= promised ? "ok" : "late" },
        at <= promised ? "On time" : `${fmtHours(at - promised)} after the promised date`));
    }
    fill(box, ...rows);
    return;
  }
  if (!eta || !eta.predicted_at) {
    fill(box, el("div", { class: "muted" }, "No prediction yet"),
      promisedAt ? el("div", null, `Promised ${fmtTime(promisedAt)}`) : null);
    return;
  }
  const predicted = parseTime(eta.predicted_at);
  const promised = parseTime(promisedAt);
  const verdict = promised === null ? null
    : predicted <= promised
      ? el("span", { class: "ok" }, `${fmtHours(promised - predicted)} before the promised date`)
      : el("span", { class: "late" }, `${fmtHours(predicted - promised)} after the promised date`);
  const pLate = typeof eta.p_late === "number" ? eta.p_late : null;
  const chance = pLate === null ? null
    : el("div", { class: pLate < 0.25 ? "ok" : "late", title: `probability of missing the promise: ${Math.round(pLate * 100)}%` },
      pLate < 0.25 ? "Likely on time" : pLate < 0.75 ? "Might be late" : "Late");
  fill(box,
    el("div", { class: "big" }, fmtTime(eta.predicted_at), " ", el("span", { class: "muted" }, fmtAgo(eta.predicted_at))),
    verdict,
    chance,
    etaBar(eta, promisedAt),
    el("dl", { class: "kv" },
      el("dt", null, "80% interval"), el("dd", null, `${fmtTime(eta.earliest)} – ${fmtTime(eta.latest)}`),
      el("dt", null, "Promised"), el("dd", null, fmtTime(promisedAt)),
      el("dt", null, "Carrier ETA"), el("dd", null, fmtTime(eta.carrier_eta)),
      el("dt", null, "Method"), el("dd", null, eta.method || "—"),
      el("dt", null, "Computed"), el("dd", null, fmtAgo(eta.computed_at) || "—")),
  );
}

function renderExceptions(s) {
  const list = Array.isArray(s.exceptions) ? [...s.exceptions] : [];
  list.sort((a, b) => (parseTime(b.raised_at) ?? 0) - (parseTime(a.raised_at) ?? 0));
  const open = list.filter((e) => !e.cleared_at);
  const past = list.filter((e) => e.cleared_at);
  const wasOpen = $("panel-exceptions").querySelector("details")?.open || false;
  const row = (e) => el("li", { class: e.cleared_at ? "past" : "open", "data-kind": e.kind },
    el("b", null, humanize(e.kind)),
    el("div", { class: "muted" }, `raised ${fmtTime(e.raised_at)}`, e.cleared_at ? ` · cleared ${fmtTime(e.cleared_at)}` : ""),
    e.detail ? el("div", { class: "detail" }, typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail)) : null);
  fill("panel-exceptions",
    list.length ? null : el("div", { class: "muted" }, "None"),
    open.length ? el("ul", { class: "exc open-list" }, open.map(row)) : null,
    past.length ? el("details", { open: wasOpen }, el("summary", null, `${past.length} cleared`), el("ul", { class: "exc" }, past.map(row))) : null,
  );
}

/** The ocean release: last free day with its countdown, availability, holds (a section made once). */
function renderRelease(s) {
  let box = $("panel-release");
  if (!box) {
    box = el("div", { id: "panel-release" });
    $("panel-eta").closest("section").after(el("section", null, el("h3", null, "Release"), box));
  }
  const r = s.release;
  box.closest("section").hidden = !r;
  if (!r) return;
  const lfd = parseTime(r.last_free_day);
  const left = lfd === null ? null : lfd - Date.now();
  const holds = (r.holds || []).map((h) => el("li", { class: h.cleared_at ? "past" : "open" },
    el("b", null, `${humanize(h.kind)} hold`), ` since ${fmtTime(h.since)}`, h.cleared_at ? ` · cleared ${fmtTime(h.cleared_at)}` : ""));
  fill(box,
    el("dl", { class: "kv" },
      el("dt", null, "Last free day"), el("dd", null, lfd === null ? "—" : fmtTime(r.last_free_day),
        left === null ? null : el("span", { class: left < 86400000 ? "late" : "muted" },
          left >= 0 ? ` · ${fmtHours(left)} left` : ` · passed ${fmtHours(-left)} ago`)),
      el("dt", null, "Available"), el("dd", null, r.available_for_pickup_at ? fmtTime(r.available_for_pickup_at) : "—")),
    holds.length ? el("ul", { class: "exc" }, holds) : el("div", { class: "muted" }, "No holds"));
}

function placeName(place) {
  if (!place) return "?";
  return place.name || place.unlocode || place.iata || (validLatLng(place.lat, place.lon)
    ? `${place.lat.toFixed(2)}, ${place.lon.toFixed(2)}` : "?");
}

function renderRouteInfo(s) {
  const p = s.last_position;
  const legs = (s.legs || []).map((leg, i) => el("li", null,
    el("span", { class: "mode", style: { background: MODE_COLOUR[leg.mode] || "#6b7280" } }, leg.mode || "?"),
    ` ${placeName(leg.origin)} → ${placeName(leg.destination)}`,
    i === panel.currentLeg ? el("span", { class: "muted" }, " (current)") : null));
  fill("panel-route",
    p ? el("div", null, `Last position ${fmtAgo(p.at)}`,
      el("div", { class: "muted" }, `${p.lat.toFixed(4)}, ${p.lon.toFixed(4)}`,
        p.speed_kmh !== null && p.speed_kmh !== undefined ? ` · ${fmtNumber(p.speed_kmh)} km/h` : "",
        p.heading !== null && p.heading !== undefined ? ` · ${fmtNumber(p.heading)}°` : ""))
      : el("div", { class: "muted" }, "No position yet"),
    legs.length ? el("ol", { class: "legs" }, legs) : null,
  );
}

function renderEmissions(s) {
  const e = s.emissions;
  if (!e) {
    fill("panel-emissions", el("div", { class: "muted" }, "Not computed"));
    return;
  }
  const rows = (e.legs || []).map((leg) => el("tr", null,
    el("td", null, leg.mode || "?"),
    el("td", { class: "num" }, fmtNumber(leg.distance_km)),
    el("td", { class: "num" }, fmtNumber(leg.tonne_km, 1)),
    el("td", { class: "num" }, fmtNumber(leg.factor_g_per_tkm, 1)),
    el("td", { class: "num" }, fmtNumber(leg.co2e_kg, 1))));
  fill("panel-emissions",
    el("div", { class: "big" }, `${fmtNumber(e.co2e_kg, 1)} kg CO₂e`),
    el("div", { class: "muted" }, e.method || ""),
    rows.length ? el("table", { class: "grid" },
      el("thead", null, el("tr", null, el("th", null, "Mode"), el("th", null, "km"), el("th", null, "t·km"),
        el("th", null, "g/t·km"), el("th", null, "kg CO₂e"))),
      el("tbody", null, rows)) : null,
  );
}

function renderDevices(s) {
  const devices = Array.isArray(s.devices) ? s.devices : [];
  const refs = refValues(s.references);
  fill("panel-devices",
    el("div", null, "Devices: ", devices.length ? devices.map((d) => el("code", null, String(d))) : "none"),
    el("div", null, "References: ", refs.length ? refs.map((r) => el("code", null, String(r))) : "none"),
    s.weight_kg ? el("div", null, `Weight: ${fmtNumber(s.weight_kg, 1)} kg`) : null,
    el("div", { class: "muted" }, `id ${s.id} · updated ${fmtAgo(s.updated_at)}`),
  );
}

/** The timeline's entries: every actual milestone, and of the estimates (and plans) of one milestone
 * at one place only the one made last, until that milestone actually happens there. */
function latestEstimates(events) {
  const field = (ev, name) => ev[name] ?? ev.data?.[name];
  const where = (ev) => {
    const loc = field(ev, "location");
    return loc ? loc.unlocode || loc.iata || loc.name || "" : "";
  };
  const key = (ev) => `${field(ev, "code") || "?"}|${where(ev)}`;
  const madeAt = (ev) => parseTime(ev.created_at) ?? parseTime(ev.received_at) ?? parseTime(ev.occurred_at) ?? 0;
  const happened = new Set();
  const latest = new Map();
  for (const ev of events) {
    const classifier = field(ev, "classifier") || "actual";
    if (classifier === "actual") {
      happened.add(key(ev));
      continue;
    }
    const k = `${classifier}|${key(ev)}`;
    const kept = latest.get(k);
    if (!kept || madeAt(ev) >= madeAt(kept)) latest.set(k, ev);
  }
  return events.filter((ev) => {
    const classifier = field(ev, "classifier") || "actual";
    return classifier === "actual" || (latest.get(`${classifier}|${key(ev)}`) === ev && !happened.has(key(ev)));
  });
}

function renderTimeline(events) {
  const delivered = events
    .filter((ev) => (ev.code || ev.data?.code) === "delivered" && (ev.classifier || ev.data?.classifier || "actual") === "actual")
    .map((ev) => ev.occurred_at)
    .sort((a, b) => (parseTime(b) ?? 0) - (parseTime(a) ?? 0))[0] || null;
  if (delivered !== panel.deliveredAt) {
    panel.deliveredAt = delivered;
    panel.signature = null;
    panel.renderLocal();
  }
  const items = latestEstimates(events)
    .sort((a, b) => (parseTime(b.occurred_at) ?? 0) - (parseTime(a.occurred_at) ?? 0));
  if (!items.length) {
    fill("panel-timeline", el("div", { class: "muted" }, "No milestones yet"));
    return;
  }
  fill("panel-timeline", el("ol", { class: "timeline" }, items.map((ev) => {
    const location = ev.location || (ev.data && ev.data.location) || null;
    const classifier = ev.classifier || (ev.data && ev.data.classifier) || "actual";
    const code = ev.code || (ev.data && ev.data.code) || "?";
    return el("li", { class: `cls-${classifier}`, "data-code": code },
      el("div", null, el("b", null, humanize(code)), " ", el("span", { class: `tag ${classifier}` }, classifier)),
      location ? el("div", null, [location.name, location.unlocode, location.country].filter(Boolean).join(" · ")) : null,
      el("div", { class: "muted" }, fmtTime(ev.occurred_at), ev.source ? ` · ${ev.source}` : ""));
  })));
}

/** Index of the leg the shipment is on: the one whose line passes nearest its position. */
function currentLegIndex(s, position) {
  const legs = s.legs || [];
  if (!position || legs.length === 0) return 0;
  let best = 0;
  let bestDistance = Infinity;
  legs.forEach((leg, i) => {
    const o = leg.origin;
    const d = leg.destination;
    if (!o || !d || !validLatLng(o.lat, o.lon) || !validLatLng(d.lat, d.lon)) return;
    const ax = o.lon;
    const bx = unwrap(d.lon, ax);
    const px = unwrap(position.lon, ax);
    const dx = bx - ax;
    const dy = d.lat - o.lat;
    const len = dx * dx + dy * dy;
    const t = len ? Math.max(0, Math.min(1, ((px - ax) * dx + (position.lat - o.lat) * dy) / len)) : 0;
    const ex = ax + t * dx - px;
    const ey = o.lat + t * dy - position.lat;
    const distance = ex * ex + ey * ey;
    if (distance < bestDistance) {
      bestDistance = distance;
      best = i;
    }
  });
  return best;
}

const panel = {
  token: 0,
  route: null,
  remaining: null,
  points: [],
  currentLeg: 0,
  refetchTimer: 0,
  signature: null,
  deliveredAt: null,

  open(id) {
    $("panel").hidden = false;
    document.body.classList.add("panel-open");
    this.token += 1;
    this.points = [];
    routeLayer.clearLayers();
    this.route = null;
    this.remaining = null;
    this.signature = null;
    this.deliveredAt = null;
    fill("panel-timeline", el("div", { class: "muted" }, "Loading…"));
    this.renderLocal();
    return this.fetch(id);
  },

  close() {
    $("panel").hidden = true;
    document.body.classList.remove("panel-open");
    this.token += 1;
    routeLayer.clearLayers();
    this.route = null;
    this.remaining = null;
  },

  renderLocal() {
    const s = state.shipments.get(state.selected);
    if (!s) {
      const text = fetching.has(state.selected) ? "Loading…" : "This shipment is not known.";
      fill("panel-status", el("span", { class: "muted" }, text));
      this.signature = null;
      return;
    }
    this.currentLeg = currentLegIndex(s, s.last_position);
    renderRouteInfo(s);
    this.drawRemaining(s);
    // Positions arrive several times a second; the rest of the panel only changes with its fields.
    const signature = JSON.stringify([s.tracking_number, s.carrier, s.status, s.substatus, s.eta, s.exceptions,
      s.emissions, s.devices, s.references, s.legs, s.mode, s.promised_at, s.weight_kg, s.updated_at, s.release]);
    if (signature === this.signature) return;
    this.signature = signature;
    $("panel-tracking").textContent = s.tracking_number || s.id;
    $("panel-carrier").textContent = [s.carrier, [...shipmentModes(s)].join(" + ")].filter(Boolean).join(" · ");
    fill("panel-status",
      el("span", { class: "status", "data-status": s.status, style: { background: STATUS_COLOUR.get(s.status) || "#6b7280" } },
        STATUS_LABEL.get(s.status) || humanize(s.status)),
      s.substatus ? el("span", { class: "substatus" }, humanize(s.substatus)) : null);
    renderEta(s);
    renderRelease(s);
    renderExceptions(s);
    renderEmissions(s);
    renderDevices(s);
  },

  async fetch(id) {
    const token = this.token;
    const session = state.session;
    const path = `v1/shipments/${encodeURIComponent(id)}`;
    const [events, positions, plan, visits] = await Promise.allSettled([
      api(`${path}/events?kind=milestone&limit=500`),
      api(`${path}/positions`),
      api(`${path}/route`),
      api(`v1/places/visits?limit=500&shipment_id=${encodeURIComponent(id)}`),
    ]);
    if (token !== this.token || session !== state.session) return;
    for (const result of [events, positions]) {
      if (result.status === "rejected" && result.reason?.status !== 404) handleFailure(result.reason);
    }
    // Entering and leaving places, beside the milestones.
    const crossed = visits.status === "fulfilled" ? (visits.value.items || []).flatMap((v) => [
      { occurred_at: v.entered_at, code: `entered ${v.place.kind || "place"}`, location: { name: v.place.name },
        classifier: "actual", source: "place" },
      ...(v.exited_at ? [{ occurred_at: v.exited_at, code: `left ${v.place.kind || "place"}`,
        location: { name: v.place.name }, classifier: "actual", source: "place" }] : []),
    ]) : [];
    if (events.status === "fulfilled") renderTimeline([...((events.value && events.value.items) || []), ...crossed]);
    else fill("panel-timeline", el("div", { class: "muted" }, "Unavailable"));
    if (positions.status === "fulfilled") this.drawRoute(positions.value);
    if (plan.status === "fulfilled") this.drawPlan(plan.value);
  },

  /** Each leg's planned path (booked, else computed), dashed and faint, beside the route so far. */
  drawPlan(collection) {
    const lines = ((collection && collection.features) || [])
      .filter((f) => f && f.geometry && Array.isArray(f.geometry.coordinates))
      .map((f) => {
        let previous = null;
        const line = f.geometry.coordinates.filter(([lon, lat]) => validLatLng(lat, lon)).map(([lon, lat]) => {
          previous = unwrap(lon, previous);
          return [lat, previous];
        });
        return L.polyline(line, { renderer: routeRenderer, color: MODE_COLOUR[f.properties?.mode] || "#374151",
          weight: 2, dashArray: "2 6", opacity: 0.55, interactive: false });
      });
    if (lines.length) L.featureGroup(lines).addTo(routeLayer);
  },

  refetchSoon() {
    clearTimeout(this.refetchTimer);
    const id = state.selected;
    const token = this.token;
    this.refetchTimer = setTimeout(async () => {
      if (id !== state.selected || token !== this.token) return;
      const session = state.session;
      try {
        const events = await api(`v1/shipments/${encodeURIComponent(id)}/events?kind=milestone&limit=500`);
        if (id === state.selected && token === this.token && session === state.session) renderTimeline(events.items || []);
      } catch (error) {
        if (error.status !== 404) handleFailure(error);
      }
    }, 700);
  },

  drawRoute(collection) {
    const features = (collection && collection.features) || [];
    const pts = features
      .filter((f) => f && f.geometry && Array.isArray(f.geometry.coordinates))
      .map((f) => ({ lon: f.geometry.coordinates[0], lat: f.geometry.coordinates[1], at: parseTime(f.properties?.occurred_at) ?? 0 }))
      .filter((p) => validLatLng(p.lat, p.lon))
      .sort((a, b) => a.at - b.at);
    let previous = null;
    this.points = pts.map((p) => {
      previous = unwrap(p.lon, previous);
      return [p.lat, previous];
    });
    const s = state.shipments.get(state.selected);
    if (s && s.last_position && validLatLng(s.last_position.lat, s.last_position.lon)) {
      const last = this.points[this.points.length - 1];
      const lon = unwrap(s.last_position.lon, last ? last[1] : null);
      if (!last || last[0] !== s.last_position.lat || last[1] !== lon) this.points.push([s.last_position.lat, lon]);
    }
    if (this.route) routeLayer.removeLayer(this.route);
    this.route = L.polyline(this.points, { renderer: routeRenderer, color: "#1d4ed8", weight: 3, opacity: 0.85, interactive: false })
      .addTo(routeLayer);
    if (s) this.drawRemaining(s);
  },

  appendPosition(position) {
    if (!this.route) return;
    const last = this.points[this.points.length - 1];
    const lon = unwrap(position.lon, last ? last[1] : null);
    this.points.push([position.lat, lon]);
    this.route.addLatLng([position.lat, lon]);
  },

  /** The legs still ahead, dashed: from where the shipment is to its current leg's end, then the rest. */
  drawRemaining(s) {
    if (this.remaining) routeLayer.removeLayer(this.remaining);
    this.remaining = null;
    if (FINAL_STATUSES.has(s.status)) return;
    const legs = s.legs || [];
    const lines = [];
    const last = this.points[this.points.length - 1]
      || (s.last_position && validLatLng(s.last_position.lat, s.last_position.lon) ? [s.last_position.lat, s.last_position.lon] : null);
    const start = last ? this.currentLeg : 0;
    let cursor = last;
    for (let i = start; i < legs.length; i += 1) {
      const { origin: o, destination: d } = legs[i];
      if (!d || !validLatLng(d.lat, d.lon)) continue;
      let from = cursor;
      if (!from || (i > start && o && validLatLng(o.lat, o.lon))) {
        if (!o || !validLatLng(o.lat, o.lon)) continue;
        from = [o.lat, unwrap(o.lon, cursor ? cursor[1] : null)];
      }
      const to = [d.lat, unwrap(d.lon, from[1])];
      lines.push({ line: [from, to], mode: legs[i].mode });
      cursor = to;
    }
    if (!lines.length) return;
    this.remaining = L.featureGroup(lines.map(({ line, mode }) => L.polyline(line, {
      renderer: routeRenderer, color: MODE_COLOUR[mode] || "#374151", weight: 2, dashArray: "6 6", opacity: 0.9, interactive: false,
    }))).addTo(routeLayer);
  },
};

function select(id, options = {}) {
  const key = id === null || id === undefined ? null : String(id);
  const previous = state.selected;
  state.selected = key;
  if (previous) touch(previous);
  if (!key) {
    panel.close();
    writeHash();
    return Promise.resolve();
  }
  touch(key);
  writeHash();
  const s = state.shipments.get(key);
  const ll = s ? latLngOf(s) : null;
  if (ll && (options.fly || !map.getBounds().contains(ll))) map.flyTo(ll, Math.max(map.getZoom(), 4), { duration: 0.6 });
  const loading = panel.open(key);
  if (!s) fetchShipment(key);
  return loading;
}

// ---------------------------------------------------------------- the stream

/** One websocket frame as text: a message or an array of them. */
function receive(data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return;
  }
  if (Array.isArray(msg)) msg.forEach(handleMessage);
  else handleMessage(msg);
}

const stream = {
  ws: null,
  attempt: 0,
  timer: 0,
  ping: 0,

  status(kind, text) {
    const box = $("conn-status");
    box.dataset.state = kind;
    box.querySelector("span").textContent = text || kind;
  },

  connect() {
    clearTimeout(this.timer);
    if (!state.tenant) return;
    const session = state.session;
    const url = new URL("v1/stream", base); // the handshake carries the session cookie
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.attempt === 0) this.status("connecting", "connecting…");
    let opened = false;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      console.error(error);
      this.retry(session, false);
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (session !== state.session) {
        ws.close(1000);
        return;
      }
      opened = true;
      this.attempt = 0;
      const subscribe = { op: "subscribe", all: true };
      if (state.lastSeq !== null) subscribe.resume_from = state.lastSeq;
      ws.send(JSON.stringify(subscribe));
      this.status("connected", "connected");
      clearInterval(this.ping);
      this.ping = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ op: "ping" }));
      }, PING_INTERVAL_MS);
    };
    ws.onmessage = (event) => {
      if (session === state.session) receive(event.data);
    };
    ws.onclose = () => {
      clearInterval(this.ping);
      if (this.ws === ws) this.ws = null;
      if (session !== state.session) return;
      this.retry(session, opened);
    };
  },

  retry(session, wasOpen) {
    this.attempt += 1;
    // 0.5 s, 1 s, 2 s ... at most 15 s, with jitter so restarted servers are not stampeded.
    const delay = Math.min(15000, 500 * 2 ** Math.min(this.attempt - 1, 5)) * (0.75 + Math.random() * 0.5);
    const offline = navigator.onLine === false;
    this.status(offline ? "offline" : "reconnecting", offline ? "offline" : `reconnecting in ${Math.ceil(delay / 1000)} s`);
    if (!wasOpen && this.attempt >= 2) {
      // A refused handshake looks like any other failure to a browser: ask REST whether the session still works.
      api("v1/shipments?limit=1").catch((error) => {
        if (error instanceof AuthError && session === state.session) handleFailure(error);
      });
    }
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (session === state.session) this.connect();
    }, offline ? 30000 : delay);
  },

  now() {
    if (!state.tenant || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
    this.attempt = 0;
    this.connect();
  },

  stop() {
    clearTimeout(this.timer);
    clearInterval(this.ping);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this.attempt = 0;
    this.status("offline", "offline");
  },
};

window.addEventListener("online", () => stream.now());
window.addEventListener("offline", () => {
  if (state.tenant) stream.status("offline", "offline");
});

// ---------------------------------------------------------------- sign-in

async function start() {
  const session = state.session;
  $("login").hidden = true;
  $("sign-out").hidden = false;
  stream.connect();
  placesOverlay.schedule();
  try {
    await loadShipments(session);
  } catch (error) {
    if (session === state.session) handleFailure(error);
  }
  if (session !== state.session) return;
  const wanted = hashShipment();
  if (wanted && !state.selected) select(resolveShipment(wanted), { fly: true });
}

/** The shipment a `#shipment=<id or tracking number>` link names, or null. */
function hashShipment() {
  return hashParams().get("shipment") || null;
}

/** The address's hash as parameters: `#shipment=<id>&status=in_transit&q=MSKU` (all optional). */
function hashParams() {
  try {
    return new URLSearchParams(window.location.hash.replace(/^#/, ""));
  } catch {
    return new URLSearchParams();
  }
}

/** The selection and the filters, in the address (so that a reload or a copied link keeps them). */
function writeHash() {
  const params = new URLSearchParams();
  if (state.selected) params.set("shipment", state.selected);
  for (const name of FILTER_NAMES) if (state.filters[name]) params.set(name, state.filters[name]);
  const hash = params.toString() ? `#${params}` : "";
  if (hash !== window.location.hash) history.replaceState(null, "", window.location.pathname + window.location.search + hash);
}

/** Take the filters the hash names (the others cleared); true when one changed. */
function applyHashFilters() {
  const params = hashParams();
  let changed = false;
  for (const name of FILTER_NAMES) {
    let value = (params.get(name) || "").trim();
    if (name === "lateness" && !LATENESS.has(value)) value = "";
    if ((name === "eta_after" || name === "eta_before") && !(LOCAL_TIME.test(value) && parseTime(value) !== null)) value = "";
    if (state.filters[name] === value) continue;
    changed = true;
    state.filters[name] = value;
    const input = filterInput(name);
    if (name === "exception" && value && value !== "any" && value !== "none") ensureOption(input, [value]);
    if (name === "carrier" && value && ![...input.options].some((o) => o.value === value)) {
      input.append(el("option", { value }, value));
    }
    input.value = value;
  }
  if (changed) refilter();
  return changed;
}

/** The id of a loaded shipment named by id or tracking number; else `key` as given. */
function resolveShipment(key) {
  if (state.shipments.has(key)) return key;
  const wanted = normalizeId(key);
  for (const s of state.shipments.values()) if (normalizeId(s.tracking_number) === wanted) return s.id;
  return key;
}

// A link followed while the page is open (pasted, or clicked elsewhere) opens that shipment.
window.addEventListener("hashchange", () => {
  if (!state.tenant || /^#key=/.test(window.location.hash)) return;
  applyHashFilters();
  const wanted = hashShipment();
  if (!wanted) {
    if (state.selected) select(null);
    return;
  }
  const id = resolveShipment(wanted);
  if (id !== state.selected) select(id, { fly: true });
  else writeHash();
});

function signOut(message) {
  state.session += 1;
  state.tenant = null;
  fetch(new URL("v1/session", base), { method: "DELETE" }).catch(() => {});
  stream.stop();
  select(null);
  state.shipments.clear();
  state.carriers.clear();
  state.lastSeq = null;
  view.carriersChanged = true;
  refilter();
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("api-key").value = "";
  $("api-key").focus();
}

function bindLogin() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    const button = $("login-form").querySelector("button");
    button.disabled = true;
    $("login-error").textContent = "";
    try {
      await signIn(key);
      start();
    } catch (error) {
      state.tenant = null;
      $("login-error").textContent = error instanceof AuthError ? "That API key was not accepted." : `Cannot reach trackd: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("panel-close").addEventListener("click", () => select(null));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.selected) select(null);
  });
}

/** Sign in with `key`: the server sets a session cookie (12 h), so a new tab need not ask again. */
async function signIn(key) {
  const response = await fetch(new URL("v1/session", base), {
    method: "POST",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: JSON.stringify({ api_key: key }),
  });
  if (response.status === 401) throw new AuthError("The API key was not accepted.");
  if (!response.ok) throw new Error(`${response.status}: ${response.statusText}`);
  state.tenant = (await response.json()).tenant;
}

/** The session this browser signed in to earlier (its cookie), if it is still good. */
async function resumeSession() {
  try {
    const response = await fetch(new URL("v1/session", base), { headers: { Accept: "application/json" } });
    if (!response.ok) return false;
    state.tenant = (await response.json()).tenant;
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- boot

window.trackd = {
  markers: state.markers,
  shipments: state.shipments,
  visibleIds,
  select,
  map,
  state,
  flush: () => {
    moves.take();
    flush();
  },
  clusters: () => {
    moves.take();
    flush();
    clusters.compute();
    return clusters.current();
  },
  listRows: () => shipmentList.rows().map((s) => s.id),
  labels: () => labels.shown(),
  recluster: () => clusters.compute(),
  receive, // the websocket's message handler, for feeding recorded or generated frames
};

renderStatusOptions();
bindToolbar();
shipmentList.bind();
bindLogin();
renderCounters();
setupBasemap().catch((error) => console.warn("basemap unavailable", error));

// A ready login link (`/#key=<api key>`, as `trackd demo` prints it): sign in with it and take it
// out of the address bar at once. Otherwise the session cookie of an earlier sign-in, if any.
async function boot() {
  const fromLink = /^#key=([^&]+)$/.exec(window.location.hash);
  if (fromLink) history.replaceState(null, "", window.location.pathname + window.location.search);
  applyHashFilters();
  let signedIn = false;
  if (fromLink) signedIn = await signIn(decodeURIComponent(fromLink[1])).then(() => true, () => false);
  if (!signedIn) signedIn = await resumeSession();
  if (signedIn) {
    start();
  } else {
    $("login").hidden = false;
    $("api-key").focus();
  }
}
boot();
