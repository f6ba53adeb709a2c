"""`trackd eta-eval`: replay completed shipments as if live and score the ETA against baselines.

Input, in the order things became known: a JSON-lines file (`--events`), the simulator's history
(`--simulate N`: a year of bookings through the disruptions of `lab/simulator_drift.py`,
reproducible with `--seed`), or, by default, the configured database.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from lab import etaeval, queries
from trackd.errors import ConfigError
from trackd.settings import Settings

SIMULATED_DAYS = 365.0  # --simulate: a year of bookings, through that year's disruptions
SENSOR_EVERY_MIN = 1440.0  # sensor readings tell the ETA nothing: one a day keeps the replay quick
POSITION_EVERY_S = 1800  # positions read back from the database, at most one per half hour


def from_file(path: str) -> Iterator[dict[str, Any]]:
    try:
        fh = open(path, "rb")  # closed by the generator below
    except OSError as exc:
        raise ConfigError(f"--events: {exc.strerror}: {path}") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ConfigError(f"--events: line {n} is not JSON") from None


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None


def from_database(dsn: str) -> Iterator[dict[str, Any]]:
    """Every tenant's delivered shipments and their events, as eta-eval lines in known-at order."""
    lines: list[tuple[datetime, int, dict[str, Any]]] = []
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        shipments = conn.execute(queries.DELIVERED_SHIPMENTS).fetchall()
        for s in shipments:
            body = {
                "id": s["id"],
                "tracking_number": s["tracking_number"],
                "carrier": s["carrier"],
                "references": s["references"],
                "mode": s["mode"],
                "legs": s["legs"],
                "promised_at": _iso(s["promised_at"]),
                "weight_kg": s["weight_kg"],
            }
            lines.append((s["created_at"], 0, {"shipment": body}))
            last_pos: datetime | None = None
            rows = conn.execute(queries.SHIPMENT_EVENTS, (s["id"],)).fetchall()
            for e in rows:
                ev: dict[str, Any] = {
                    "event_id": e["event_id"],
                    "occurred_at": _iso(e["occurred_at"]),
                    "created_at": _iso(e["created_at"]),
                    "shipment": s["tracking_number"],
                }
                if e["kind"] == "position":
                    if last_pos and (e["occurred_at"] - last_pos).total_seconds() < POSITION_EVERY_S:
                        continue
                    last_pos = e["occurred_at"]
                    ev["position"] = {"lat": e["data"]["lat"], "lon": e["data"]["lon"]}
                elif e["code"]:
                    ev["milestone"] = {k: v for k, v in e["data"].items() if k in ("code", "classifier", "location")}
                else:
                    continue
                known = e["created_at"] or e["occurred_at"]
                lines.append((known, 1, {"event": ev}))
    lines.sort(key=lambda x: (x[0], x[1]))
    yield from (line for _, _, line in lines)


def main(settings: Settings, args: argparse.Namespace) -> int:
    if args.events:
        lines: Any = from_file(args.events)
    elif getattr(args, "simulate", None):
        from lab import simulator, simulator_drift

        start = datetime(2025, 1, 1, tzinfo=UTC)
        drift = simulator_drift.Drift(args.seed, start).apply
        cadence = replace(simulator.HISTORY_CADENCE, reefer_sensor=SENSOR_EVERY_MIN, battery=SENSOR_EVERY_MIN)
        lines = simulator.history(
            args.simulate, args.seed, start, span_days=SIMULATED_DAYS, cadence=cadence, drift=drift
        )
    else:
        lines = from_database(settings.dsn())
    report = etaeval.evaluate(lines)
    if args.json:
        sys.stdout.write(orjson.dumps(etaeval.to_json(report)).decode() + "\n")
    else:
        sys.stdout.write(etaeval.format_table(report) + "\n")
    return 0
