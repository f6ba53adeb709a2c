#!/usr/bin/env python3
"""Regenerate dashboards/static/places-labels.json: the offline basemap's place labels.

Built only from data trackd already ships: the UN/LOCODE table (`trackd/data/unlocodes.csv`:
seaports, air-freight cities, inland hubs, border crossings) and the `airportsdata` package.
Each entry is `[name, lat, lon, kind, rank]`, kind `port`, `city` or `airport`, rank 1 (shown
from the lowest zoom) to 4 (shown only close in); the page draws a rank from the zoom in
`LABEL_MIN_ZOOM` of `app.js` and drops labels that would overlap one of a better rank. Entries
are sorted best first (rank, then importance), so the page can draw them greedily in order.

    python scripts/build_place_labels.py [--out dashboards/static/places-labels.json]

The output is committed; run this again only when the table or the package changes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import airportsdata

ROOT = Path(__file__).resolve().parent.parent
UNLOCODES = ROOT / "trackd" / "data" / "unlocodes.csv"
DEFAULT_OUT = ROOT / "dashboards" / "static" / "places-labels.json"
MAX_ENTRIES = 1500
# The hubs shown from the whole-world view: the largest container ports and air-cargo cities of
# the table, one or two a region, so the world view reads evenly; every other row of the table
# is rank 2.
RANK1 = (
    "CNSHA",
    "SGSIN",
    "CNNGB",
    "CNSZX",
    "HKHKG",
    "KRPUS",
    "JPTYO",
    "CNBJS",
    "TWTPE",
    "THBKK",
    "VNSGN",
    "IDJKT",
    "PHMNL",
    "INBOM",
    "INDEL",
    "LKCMB",
    "PKKHI",
    "AEDXB",
    "SAJED",
    "EGPSD",
    "TRIST",
    "NLRTM",
    "BEANR",
    "DEHAM",
    "DEFRA",
    "FRPAR",
    "GBLON",
    "ESMAD",
    "ESALG",
    "ITMIL",
    "GRPIR",
    "PLWAW",
    "SESTO",
    "RUMOW",
    "USLAX",
    "USSEA",
    "USNYC",
    "USSAV",
    "USHOU",
    "USCHI",
    "USMIA",
    "USMEM",
    "CAVAN",
    "CATOR",
    "MXMEX",
    "PAMIT",
    "PECLL",
    "BRSSZ",
    "ARBUE",
    "ZAJNB",
    "ZADUR",
    "NGLOS",
    "KEMBA",
    "MAPTM",
    "AUSYD",
    "AUMEL",
    "NZAKL",
)
NEAR_KM = 25.0  # a label this close to a better one of the same name is a duplicate


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 6371.0 * 2 * math.asin(math.sqrt(h))


def _is_international(name: str) -> bool:
    return "International" in name or "Intl" in name


def build() -> list[list[Any]]:
    """The label entries, best first; at most `MAX_ENTRIES`."""
    airports = [a for a in airportsdata.load("IATA").values() if a["iata"] and a["icao"]]
    per_city = Counter((a["city"], a["country"]) for a in airports if a["city"])
    intl_city = Counter((a["city"], a["country"]) for a in airports if a["city"] and _is_international(a["name"]))

    def city_weight(name: str, country: str) -> int:
        base = name.split(" (")[0]
        return per_city[(base, country)] + 2 * intl_city[(base, country)]

    with UNLOCODES.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    hubs = []
    for row in rows:
        kind = "port" if row["kind"] == "port" else "city"
        weight = city_weight(row["name"], row["country"]) + (1 if kind == "port" else 0)
        code = row["unlocode"].strip().upper()
        rank = 1 if code in RANK1 else 2
        hubs.append((rank, -weight, row["name"], float(row["lat"]), float(row["lon"]), kind))
    hubs.sort()

    entries: list[list[Any]] = []
    seen: list[tuple[str, float, float]] = []

    def add(name: str, lat: float, lon: float, kind: str, rank: int) -> None:
        if any(n == name and _km((lat, lon), (la, lo)) < NEAR_KM for n, la, lo in seen):
            return
        seen.append((name, lat, lon))
        entries.append([name, round(lat, 3), round(lon, 3), kind, rank])

    for rank, _, name, lat, lon, kind in hubs:
        add(name, lat, lon, kind, rank)

    international = [a for a in airports if _is_international(a["name"])]
    international.sort(key=lambda a: (-per_city[(a["city"], a["country"])], a["iata"]))
    for a in international:
        add(a["iata"], float(a["lat"]), float(a["lon"]), "airport", 3)

    cities: dict[tuple[str, str], tuple[float, float]] = {}
    for a in international:
        key = (a["city"], a["country"])
        if a["city"] and key not in cities:
            cities[key] = (float(a["lat"]), float(a["lon"]))
    ranked_cities = sorted(cities.items(), key=lambda kv: (-per_city[kv[0]], kv[0]))
    for (city, _), (lat, lon) in ranked_cities:
        if len(entries) >= MAX_ENTRIES:
            break
        add(city, lat, lon, "city", 4)
    return entries[:MAX_ENTRIES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    entries = build()
    document = {
        "fields": ["name", "lat", "lon", "kind", "rank"],
        "source": "trackd/data/unlocodes.csv and airportsdata (MIT)",
        "places": entries,
    }
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    # One entry a line: small diffs when the sources change.
    text = text.replace('"places":[[', '"places":[\n[').replace("],[", "],\n[")
    args.out.write_text(text + "\n", encoding="utf-8")
    print(f"{args.out}: {len(entries)} labels")


if __name__ == "__main__":
    main()
