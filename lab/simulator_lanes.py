"""The simulator's world: places, cross-border lanes and the geometry of their routes.

Sea legs follow the maritime network of `searoute` (computed once per leg, then cached); road and
rail legs follow a few hand-picked waypoints along the real corridors; air legs follow the great
circle. Pure: no clock reads, no network.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from trackd.codes import Mode

EARTH_RADIUS_KM = 6371.0088
LatLon = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Place:
    """A named point: a port, an airport, a border crossing or a city."""

    name: str
    country: str
    lat: float
    lon: float
    tz: str
    city: str
    state: str | None = None
    unlocode: str | None = None
    iata: str | None = None
    postal_code: str | None = None

    @property
    def point(self) -> LatLon:
        return (self.lat, self.lon)

    def location(self) -> dict[str, Any]:
        """The `{name, unlocode|iata, country, lat, lon}` object of the REST API."""
        out: dict[str, Any] = {"name": self.name}
        if self.unlocode:
            out["unlocode"] = self.unlocode
        if self.iata:
            out["iata"] = self.iata
        out.update(country=self.country, lat=self.lat, lon=self.lon)
        return out


def _p(name: str, country: str, lat: float, lon: float, tz: str, city: str, **kw: str) -> Place:
    return Place(name, country, lat, lon, tz, city, **kw)


# fmt: off
P = {
    "CNYTN": _p("Yantian International Container Terminals", "CN", 22.575, 114.275, "Asia/Shanghai",
                "Shenzhen", state="GD", unlocode="CNYTN", postal_code="518081"),
    "NLRTM": _p("Port of Rotterdam, Maasvlakte", "NL", 51.955, 4.05, "Europe/Amsterdam", "Rotterdam",
                state="ZH", unlocode="NLRTM", postal_code="3199"),
    "DEBER": _p("Berlin distribution centre", "DE", 52.52, 13.405, "Europe/Berlin", "Berlin",
                state="BE", unlocode="DEBER", postal_code="10115"),
    "HKG": _p("Hong Kong International Airport", "HK", 22.308, 113.918, "Asia/Hong_Kong", "Hong Kong",
              iata="HKG", postal_code="999077"),
    "FRA": _p("Frankfurt Airport CargoCity Sued", "DE", 50.033, 8.57, "Europe/Berlin", "Frankfurt",
              state="HE", iata="FRA", postal_code="60549"),
    "FRPAR": _p("Paris", "FR", 48.857, 2.352, "Europe/Paris", "Paris", state="IF", unlocode="FRPAR",
                postal_code="75001"),
    "MXMTY": _p("Monterrey", "MX", 25.686, -100.316, "America/Monterrey", "Monterrey", state="NL",
                unlocode="MXMTY", postal_code="64000"),
    "MXMEX": _p("Mexico City", "MX", 19.433, -99.133, "America/Mexico_City", "Ciudad de Mexico",
                state="DF", unlocode="MXMEX", postal_code="06000"),
    "USLRD": _p("Laredo, World Trade Bridge", "US", 27.599, -99.533, "America/Chicago", "Laredo",
                state="TX", unlocode="USLRD", postal_code="78045"),
    "USDAL": _p("Dallas", "US", 32.777, -96.797, "America/Chicago", "Dallas", state="TX",
                unlocode="USDAL", postal_code="75201"),
    "USCHI": _p("Chicago", "US", 41.878, -87.63, "America/Chicago", "Chicago", state="IL",
                unlocode="USCHI", postal_code="60607"),
    "VNSGN": _p("Cat Lai Terminal, Ho Chi Minh City", "VN", 10.76, 106.79, "Asia/Ho_Chi_Minh",
                "Ho Chi Minh City", state="SG", unlocode="VNSGN", postal_code="700000"),
    "USLAX": _p("Port of Los Angeles", "US", 33.74, -118.27, "America/Los_Angeles", "Los Angeles",
                state="CA", unlocode="USLAX", postal_code="90731"),
    "KRPUS": _p("Busan New Port", "KR", 35.1, 129.04, "Asia/Seoul", "Busan", state="26",
                unlocode="KRPUS", postal_code="48939"),
    "DEHAM": _p("Port of Hamburg, Burchardkai", "DE", 53.53, 9.93, "Europe/Berlin", "Hamburg",
                state="HH", unlocode="DEHAM", postal_code="21129"),
    "DEMUC": _p("Munich", "DE", 48.137, 11.575, "Europe/Berlin", "Muenchen", state="BY",
                unlocode="DEMUC", postal_code="80331"),
    "CNNGB": _p("Ningbo Beilun Container Terminal", "CN", 29.93, 121.85, "Asia/Shanghai", "Ningbo",
                state="ZJ", unlocode="CNNGB", postal_code="315800"),
    "GBFXT": _p("Port of Felixstowe", "GB", 51.95, 1.32, "Europe/London", "Felixstowe", state="SF",
                unlocode="GBFXT", postal_code="IP11"),
    "GBLON": _p("London", "GB", 51.507, -0.128, "Europe/London", "London", state="LN",
                unlocode="GBLON", postal_code="EC1A"),
    "SIN": _p("Singapore Changi Airport", "SG", 1.364, 103.991, "Asia/Singapore", "Singapore",
              iata="SIN", postal_code="819663"),
    "JFK": _p("John F. Kennedy International Airport", "US", 40.641, -73.778, "America/New_York",
              "New York", state="NY", iata="JFK", postal_code="11430"),
    "USNYC": _p("New York, Manhattan", "US", 40.754, -73.984, "America/New_York", "New York",
                state="NY", unlocode="USNYC", postal_code="10018"),
}

# Waypoints (lat, lon) along the real corridors, origin and destination excluded.
CORRIDORS: dict[tuple[str, str], tuple[LatLon, ...]] = {
    # A15/A1/A30/A2: Rotterdam - Utrecht - Hengelo - Osnabrueck - Hannover - Magdeburg - Berlin
    ("NLRTM", "DEBER"): ((51.90, 4.48), (52.09, 5.12), (52.21, 5.97), (52.27, 6.79), (52.28, 8.05),
                         (52.20, 8.80), (52.37, 9.73), (52.27, 10.52), (52.13, 11.62), (52.40, 12.80)),
    # A3/A6/A4: Frankfurt - Kaiserslautern - Saarbruecken - Metz - Reims - Paris
    ("FRA", "FRPAR"): ((49.99, 8.25), (49.44, 7.77), (49.23, 7.00), (49.12, 6.18), (49.26, 4.03),
                       (48.95, 2.90)),
    # Autopista 85D: Monterrey - Sabinas Hidalgo - Nuevo Laredo - World Trade Bridge
    ("MXMTY", "USLRD"): ((25.95, -100.17), (26.51, -100.18), (26.66, -99.99), (27.20, -99.70),
                         (27.48, -99.52)),
    # MEX-57 and 85D: Queretaro - San Luis Potosi - Matehuala - Saltillo - Monterrey - Nuevo Laredo
    ("MXMEX", "USLRD"): ((20.59, -100.39), (22.15, -100.98), (23.65, -100.64), (25.42, -101.00),
                         (25.686, -100.316), (26.51, -100.18), (27.48, -99.52)),
    # I-35: Laredo - Cotulla - San Antonio - Austin - Waco - Dallas
    ("USLRD", "USDAL"): ((28.44, -99.23), (29.42, -98.49), (30.27, -97.74), (31.55, -97.15)),
    # I-35/I-44/I-55: San Antonio - Dallas - Oklahoma City - Tulsa - Springfield - St. Louis - Chicago
    ("USLRD", "USCHI"): ((29.42, -98.49), (30.27, -97.74), (32.777, -96.797), (35.47, -97.52),
                         (36.15, -95.99), (37.08, -94.51), (37.21, -93.29), (38.63, -90.20),
                         (39.78, -89.65), (40.48, -88.99)),
    # BNSF Transcon: San Bernardino - Barstow - Needles - Flagstaff - Belen - Amarillo - Kansas City
    ("USLAX", "USCHI"): ((34.11, -117.29), (34.90, -117.02), (34.85, -114.61), (35.19, -114.05),
                         (35.20, -111.65), (35.53, -108.74), (34.66, -106.78), (34.40, -103.20),
                         (35.22, -101.83), (36.58, -98.88), (37.27, -97.40), (38.05, -97.35),
                         (38.40, -96.18), (39.10, -94.58), (40.63, -91.31), (40.95, -90.37),
                         (41.40, -88.10)),
    # A7/A9: Hamburg - Hannover - Kassel - Wuerzburg - Nuernberg - Ingolstadt - Munich
    ("DEHAM", "DEMUC"): ((53.30, 9.95), (52.37, 9.73), (51.31, 9.48), (50.50, 9.70), (49.79, 9.95),
                         (49.45, 11.08), (48.77, 11.42)),
    # A14/A12: Felixstowe - Ipswich - Colchester - Chelmsford - London
    ("GBFXT", "GBLON"): ((52.06, 1.15), (51.89, 0.90), (51.74, 0.47), (51.62, 0.30), (51.55, 0.02)),
    # Van Wyck - Long Island Expressway - Queens-Midtown Tunnel
    ("JFK", "USNYC"): ((40.67, -73.80), (40.73, -73.84), (40.74, -73.87), (40.745, -73.95)),
}
# fmt: on


@dataclass(frozen=True, slots=True)
class LegPlan:
    """One leg of a lane: who carries it and which webhook source reports its milestones."""

    mode: Mode
    origin: str
    destination: str
    source: str  # dcsa | x12-214 | onerecord | aftership | easypost
    carriers: tuple[str, ...]  # candidate carrier names; one is drawn per shipment

    @property
    def from_place(self) -> Place:
        return P[self.origin]

    @property
    def to_place(self) -> Place:
        return P[self.destination]


@dataclass(frozen=True, slots=True)
class Lane:
    name: str
    legs: tuple[LegPlan, ...]
    weight: float  # relative frequency
    reefer_share: float
    cargo: tuple[tuple[str, float, float], ...]  # (commodity, min kg, max kg)


_L = LegPlan
_SEA = ("Maersk", "MSC", "CMA CGM", "COSCO", "Hapag-Lloyd", "ONE", "Evergreen", "HMM")
LANES: tuple[Lane, ...] = (
    Lane(
        "CNYTN-NLRTM-DEBER",
        (
            _L(Mode.SEA, "CNYTN", "NLRTM", "dcsa", _SEA),
            _L(Mode.ROAD, "NLRTM", "DEBER", "aftership", ("dhl-freight", "dachser")),
        ),
        3.0,
        0.10,
        (("consumer electronics", 4000, 18000), ("furniture", 6000, 14000)),
    ),
    Lane(
        "HKG-FRA-FRPAR",
        (
            _L(Mode.AIR, "HKG", "FRA", "onerecord", ("Cathay Cargo", "Lufthansa Cargo")),
            _L(Mode.ROAD, "FRA", "FRPAR", "easypost", ("DHLExpress", "UPS")),
        ),
        2.0,
        0.15,
        (("smartphones", 80, 900), ("pharmaceuticals", 50, 600)),
    ),
    Lane(
        "MXMTY-USLRD-USDAL",
        (
            _L(Mode.ROAD, "MXMTY", "USLRD", "x12-214", ("TRMX", "FXMX")),
            _L(Mode.ROAD, "USLRD", "USDAL", "x12-214", ("JBHT", "SWFT", "KNGT")),
        ),
        2.5,
        0.30,
        (("auto parts", 8000, 20000), ("fresh produce", 9000, 19000)),
    ),
    Lane(
        "MXMEX-USLRD-USCHI",
        (
            _L(Mode.ROAD, "MXMEX", "USLRD", "x12-214", ("TRMX", "FXMX")),
            _L(Mode.ROAD, "USLRD", "USCHI", "x12-214", ("JBHT", "SWFT", "SNDR")),
        ),
        2.0,
        0.20,
        (("appliances", 7000, 18000), ("avocados", 9000, 19000)),
    ),
    Lane(
        "VNSGN-USLAX-USCHI",
        (_L(Mode.SEA, "VNSGN", "USLAX", "dcsa", _SEA), _L(Mode.RAIL, "USLAX", "USCHI", "x12-214", ("BNSF",))),
        2.5,
        0.35,
        (("frozen seafood", 12000, 24000), ("apparel", 5000, 12000)),
    ),
    Lane(
        "KRPUS-DEHAM-DEMUC",
        (
            _L(Mode.SEA, "KRPUS", "DEHAM", "dcsa", _SEA),
            _L(Mode.ROAD, "DEHAM", "DEMUC", "aftership", ("dhl-freight", "db-schenker")),
        ),
        2.0,
        0.15,
        (("auto parts", 8000, 20000), ("batteries", 6000, 16000)),
    ),
    Lane(
        "CNNGB-GBFXT-GBLON",
        (_L(Mode.SEA, "CNNGB", "GBFXT", "dcsa", _SEA), _L(Mode.ROAD, "GBFXT", "GBLON", "easypost", ("DPDUK", "UPS"))),
        2.0,
        0.10,
        (("textiles", 3000, 12000), ("toys", 3000, 9000)),
    ),
    Lane(
        "SIN-JFK-USNYC",
        (
            _L(Mode.AIR, "SIN", "JFK", "onerecord", ("Singapore Airlines Cargo",)),
            _L(Mode.ROAD, "JFK", "USNYC", "aftership", ("fedex", "ups", "usps")),
        ),
        1.5,
        0.30,
        (("pharmaceuticals", 40, 500), ("semiconductors", 20, 300)),
    ),
)


def normalize_lon(lon: float) -> float:
    return ((lon + 180.0) % 360.0) - 180.0


def haversine_km(a: LatLon, b: LatLon) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def bearing_deg(a: LatLon, b: LatLon) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    y = math.sin(lon2 - lon1) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(lon2 - lon1)
    return (math.degrees(math.atan2(y, x)) + 360.0) % 360.0


def great_circle(a: LatLon, b: LatLon, steps: int = 48) -> tuple[LatLon, ...]:
    """Points along the great circle from `a` to `b` (both included)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    d = haversine_km(a, b) / EARTH_RADIUS_KM
    if d == 0:
        return (a, b)
    out = []
    for i in range(steps + 1):
        f = i / steps
        s1, s2 = math.sin((1 - f) * d) / math.sin(d), math.sin(f * d) / math.sin(d)
        x = s1 * math.cos(lat1) * math.cos(lon1) + s2 * math.cos(lat2) * math.cos(lon2)
        y = s1 * math.cos(lat1) * math.sin(lon1) + s2 * math.cos(lat2) * math.sin(lon2)
        z = s1 * math.sin(lat1) + s2 * math.sin(lat2)
        out.append((math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))))
    return tuple(out)


class Path:
    """A polyline with cumulative distances; `at(km)` interpolates along it (across the dateline)."""

    def __init__(self, points: tuple[LatLon, ...]) -> None:
        if len(points) < 2:
            raise ValueError("a path needs at least two points")
        self.points = tuple((lat, normalize_lon(lon)) for lat, lon in points)
        cum = [0.0]
        for a, b in itertools.pairwise(self.points):
            cum.append(cum[-1] + haversine_km(a, b))
        self.cumulative = tuple(cum)

    @property
    def length_km(self) -> float:
        return self.cumulative[-1]

    def at(self, km: float) -> tuple[float, float, float]:
        """(lat, lon, heading) at `km` from the start, clamped to the path."""
        km = min(max(km, 0.0), self.length_km)
        i = min(max(bisect.bisect_right(self.cumulative, km) - 1, 0), len(self.points) - 2)
        a, b = self.points[i], self.points[i + 1]
        span = self.cumulative[i + 1] - self.cumulative[i]
        f = 0.0 if span <= 0 else (km - self.cumulative[i]) / span
        dlon = ((b[1] - a[1] + 540.0) % 360.0) - 180.0
        lat, lon = a[0] + (b[0] - a[0]) * f, normalize_lon(a[1] + dlon * f)
        return lat, lon, bearing_deg(a, b)


@lru_cache(maxsize=64)
def leg_path(mode: Mode, origin: str, destination: str) -> Path:
    """The route of a leg: the sea lane network, a road/rail corridor or the great circle."""
    a, b = P[origin], P[destination]
    if mode is Mode.SEA:
        import searoute  # loads its network on first use

        route = searoute.searoute([a.lon, a.lat], [b.lon, b.lat])
        coords = tuple((float(c[1]), float(c[0])) for c in route["geometry"]["coordinates"])
        return Path((a.point, *coords, b.point))
    if mode is Mode.AIR:
        return Path(great_circle(a.point, b.point))
    return Path((a.point, *CORRIDORS.get((origin, destination), ()), b.point))
