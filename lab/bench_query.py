"""`trackd bench query [--positions N] [--shipments S]`: p50/p99 of the shipment list, shipment
detail and 24 h track over REST, with N positions stored.

The positions are generated inside PostgreSQL (one INSERT ... SELECT per chunk of shipments, the
fastest way to load them with every index in place): `N / S` per shipment, evenly over the last
48 hours, so a 24 h track holds half of a shipment's positions. Each shipment's state gets its last
position. The three calls are timed one at a time from one keep-alive client; the ceiling is the
same store query and row mapping over a direct database connection, without HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import httpx

from lab import queries
from lab.bench_env import BenchEnv
from lab.bench_figures import Figure, percentile
from trackd.settings import Settings

SAMPLES = 500
WARMUP = 20
CHUNK_ROWS = 1_000_000
WINDOW_S = 48 * 3600


def seed_positions(env: BenchEnv, total: int, shipments: int) -> tuple[int, float]:
    """Positions for every shipment; returns (rows, seconds)."""
    per = max(1, total // shipments)
    step = WINDOW_S / per
    now = datetime.now(UTC)
    idp = f"shp_b{env.run_id}_"
    chunk = max(1, CHUNK_ROWS // shipments)  # oldest first: the time indexes grow at one end
    started = time.monotonic()
    for top in range(per - 1, -1, -chunk):
        low = max(0, top - chunk + 1)
        env.sql(
            queries.SEED_POSITIONS,
            {
                "tenant": env.tenant_id,
                "idp": idp,
                "now": now,
                "step": step,
                "first": low,
                "last": top,
                "shipments": shipments,
            },
        )
        done = (per - low) * shipments
        env.say(f"seeded {done:,} positions, {done / (time.monotonic() - started):,.0f} rows/s")
    env.sql(queries.SEED_LAST, now, env.tenant_id)
    for stmt in queries.ANALYZE_READ_TABLES:
        env.sql(stmt)
    return per * shipments, time.monotonic() - started


def _time_http(http: httpx.Client, paths: Callable[[], str], budget_s: float) -> list[float]:
    for _ in range(WARMUP):
        http.get(paths()).raise_for_status()
    out: list[float] = []
    end = time.monotonic() + budget_s
    while len(out) < SAMPLES and time.monotonic() < end:
        path = paths()
        t0 = time.perf_counter()
        r = http.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    return out


async def _time_direct(env: BenchEnv, ids: list[str], since: datetime, budget_s: float) -> dict[str, list[float]]:
    from trackd import db, store

    pool = await db.open_pool(env.settings.dsn(), 1)
    rng = random.Random(7)
    calls: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "list": lambda c: store.list_shipments(c, env.tenant_id, {}, 50, None),
        "detail": lambda c: store.get_shipment(c, env.tenant_id, rng.choice(ids)),
        "track": lambda c: store.shipment_positions(c, env.tenant_id, rng.choice(ids), since, None, 10_000),
    }
    out: dict[str, list[float]] = {}
    try:
        async with store.transaction(pool) as conn:
            for name, call in calls.items():
                for _ in range(WARMUP):
                    await call(conn)
                got: list[float] = []
                end = time.monotonic() + budget_s
                while len(got) < SAMPLES and time.monotonic() < end:
                    t0 = time.perf_counter()
                    await call(conn)
                    got.append((time.perf_counter() - t0) * 1000)
                out[name] = got
    finally:
        await pool.close()
    return out


def run(settings: Settings, args: argparse.Namespace, out: TextIO) -> tuple[str, list[Figure], list[str]]:
    with BenchEnv(settings, out) as env:
        env.seed_shipments(args.shipments)
        rows, seed_s = seed_positions(env, args.positions, args.shipments)
        env.say(f"seeded {rows:,} positions in {seed_s:.1f} s ({rows / seed_s:,.0f} rows/s)")
        server = env.start_servers("api", 1)[0]
        ids = [sid for sid, _ in env.shipments]
        rng = random.Random(3)
        since = datetime.now(UTC) - timedelta(hours=24)
        since_q = since.isoformat().replace("+00:00", "Z")
        budget = max(args.duration / 3, 5.0)
        paths: dict[str, Callable[[], str]] = {
            "list": lambda: "/v1/shipments?limit=50",
            "detail": lambda: f"/v1/shipments/{rng.choice(ids)}",
            "track": lambda: f"/v1/shipments/{rng.choice(ids)}/positions?since={since_q}",
        }
        headers = {"Authorization": f"Bearer {env.api_key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            points = len(http.get(paths["track"]()).json()["features"])
            timed = {name: _time_http(http, p, budget) for name, p in paths.items()}
        direct = asyncio.run(_time_direct(env, ids, since, budget))
        figures: list[Figure] = []
        labels = {"list": "shipment list (50)", "detail": "shipment detail", "track": f"24 h track ({points} points)"}
        for name, label in labels.items():
            for q, tag in ((0.5, "p50"), (0.99, "p99")):
                figures.append(
                    Figure(
                        f"{label} {tag}",
                        percentile(timed[name], q),
                        "ms",
                        percentile(direct[name], q),
                        "same query, no HTTP",
                        target="< 50" if tag == "p99" else "",
                        lower_is_better=True,
                    )
                )
        notes = [
            f"{rows:,} positions over {args.shipments:,} shipments, seeded in {seed_s:.0f} s "
            f"({rows / seed_s:,.0f} rows/s); {len(timed['list'])}/{len(timed['detail'])}/{len(timed['track'])} "
            "requests timed, one at a time",
        ]
        title = f"trackd bench query ({rows:,} positions)"
        started = time.monotonic()
    notes.append(f"deleting the bench tenant's rows took {time.monotonic() - started:.0f} s")
    return title, figures, notes
