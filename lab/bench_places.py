"""`trackd bench ingest --places N`: after the usual (cold) run, the same run three times more on the
same warm servers: without tenant places, once the tenant has N of its own, and without them again
(the bundled ports and airports are matched in every run); the run with places is compared with
the mean of the two without, so that a drift of the machine's load over the runs cancels out.

The places are circles of 2 to 8 km and squares of 0.02 to 0.1 degrees, spread over the area the
bench's shipments move in, created through the API. Each run's events continue the previous run's
paths an hour later, so each position extends a path by a short segment, as live tracking does.
On a busy machine the ratio still carries the noise of the load; so the servers' CPU time per
stored event is printed and compared too, and the CPU time of matching one position against the
places is measured apart, in process, as a share of the time one event takes at the rate without
tenant places.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from lab.bench_env import BenchEnv, Server, servers_cpu_s
from lab.bench_figures import Figure
from trackd import crossings, place_store
from trackd.codes import EventKind
from trackd.errors import ConfigError
from trackd.model import Event, Position
from trackd.places import Geofence
from trackd.shipment import PositionFix
from trackd.state import State

Measure = Callable[[float], float | None]  # events/s of one run whose events start at this epoch


def check(args: argparse.Namespace) -> None:
    if not 0 <= getattr(args, "places", 0) <= place_store.MAX_PLACES:
        raise ConfigError(f"bench --places: 0 to {place_store.MAX_PLACES:,}")


def random_places(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """POST /v1/places bodies: half circles, half squares, where the bench's shipments are."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        lat, lon = rng.uniform(-50, 60), rng.uniform(-170, 170)
        if i % 2:
            geometry: dict[str, Any] = {"type": "Point", "coordinates": [lon, lat]}
            out.append({"name": f"depot {i}", "kind": "depot", "geometry": geometry, "radius_m": rng.uniform(2e3, 8e3)})
        else:
            d = rng.uniform(0.01, 0.05)
            ring = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d], [lon - d, lat - d]]
            out.append(
                {"name": f"yard {i}", "kind": "warehouse", "geometry": {"type": "Polygon", "coordinates": [ring]}}
            )
    return out


def create_places(url: str, api_key: str, n: int) -> float:
    """Create `n` places through the API; the seconds it took."""
    started = time.monotonic()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as http:
        for body in random_places(n):
            http.post("/v1/places", json=body).raise_for_status()
    return time.monotonic() - started


def delete_places(url: str, api_key: str) -> int:
    """Delete every place of the tenant's own through the API; how many."""
    n = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as http:
        while items := http.get("/v1/places", params={"builtin": "false", "limit": 500}).json()["items"]:
            for p in items:
                http.delete(f"/v1/places/{p['id']}").raise_for_status()
                n += 1
    return n


def matching_us(n: int, batch: int = 1000, rounds: int = 50) -> float:
    """CPU microseconds to match one position (a short segment from the previous fix) against the
    bundled places and `n` of the tenant's, in batches as the write path sends them."""
    bodies = enumerate(random_places(n))
    own = [Geofence(f"pl_{i}", b["name"], b["kind"], b["geometry"], b.get("radius_m")) for i, b in bodies]
    index = crossings.tenant_index(own)
    rng = random.Random(3)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    items = []
    for i in range(batch):
        lat, lon = rng.uniform(-50, 60), rng.uniform(-170, 170)
        before = State(last=PositionFix(lat, lon, at))
        fix = Position(lat=lat + 0.0015, lon=lon + 0.0015)
        items.append((f"s{i}", before, [Event(f"e{i}", "native", at + timedelta(seconds=10), EventKind.POSITION,
                                              position=fix, shipment=f"s{i}")]))  # fmt: skip
    took = []
    gc.disable()  # as in the servers, whose automatic collector is off
    try:
        for _ in range(rounds):
            started = time.thread_time()
            crossings.crossings(index, items)
            took.append(time.thread_time() - started)
    finally:
        gc.enable()
    return statistics.median(took) / batch * 1e6  # CPU time, the median round: other load on the cores aside


def compare(
    env: BenchEnv, servers: list[Server], args: argparse.Namespace, base: float, first: float | None, measure: Measure
) -> tuple[list[Figure], list[str]]:
    """The run again on the warm servers without tenant places, with `args.places` of them, and
    without again; the figures of the second against the mean of the other two (`first`: the rate
    of the cold run before, for the note)."""
    without, cpu_without = _measured(env, servers, measure, base + 3600)
    without_first, cpu_first = without, cpu_without
    took = create_places(servers[0].url, env.api_key, args.places)
    env.say(f"created {args.places:,} places in {took:.1f} s")
    time.sleep(crossings.VERSION_CHECK_S + 0.5)  # every server process has seen the new version
    with_places, cpu_with = _measured(env, servers, measure, base + 7200)
    env.say(f"deleted {delete_places(servers[0].url, env.api_key):,} places")
    time.sleep(crossings.VERSION_CHECK_S + 0.5)
    after, cpu_after = _measured(env, servers, measure, base + 10800)  # before and after: drift cancels
    without, cpu_without = _mean(without, after), _mean(cpu_without, cpu_after)
    cost = matching_us(args.places)
    per_event = 1e6 / without if without else None
    name = f"{args.transport} ingest, {args.places:,} places + bundled"
    figure = Figure(name, with_places, "events/s", without, "same servers, no tenant places, mean", min_share=0.9)
    cpu = Figure(
        name + ", server CPU", cpu_with, "us/event", cpu_without, "the same, no tenant places", lower_is_better=True,
        min_share=0.9,
    )  # fmt: skip
    note = f"matching one position against {args.places:,} + {len(crossings.builtin_index().fences):,} bundled places"
    note += f" costs {cost:.1f} us in process"
    if per_event:
        note += f", {cost / per_event:.1%} of the {per_event:.0f} us one event takes at the rate without places"
    runs = f"runs on the warm servers, without tenant places, with {args.places:,}, without again (the mean of"
    runs += f" the two is compared): {without_first or 0:,.0f}, {with_places or 0:,.0f}, {after or 0:,.0f} events/s;"
    runs += f" server CPU {cpu_first or 0:.0f}, {cpu_with or 0:.0f}, {cpu_after or 0:.0f} us/event (the first, cold"
    runs += f" run: {first or 0:,.0f} events/s)"
    return [figure, cpu], [runs, note]


def _mean(a: float | None, b: float | None) -> float | None:
    return (a + b) / 2 if a is not None and b is not None else None


def _measured(env: BenchEnv, servers: list[Server], measure: Measure, base: float) -> tuple[float | None, float | None]:
    """A run's rate, and the server CPU microseconds per event it stored: other load on the
    cores slows the rate, but hardly what each event costs the servers."""
    cpu, stored = servers_cpu_s(servers), env.count_events()
    rate = measure(base)
    events = env.count_events() - stored
    return rate, ((servers_cpu_s(servers) - cpu) / events * 1e6 if events else None)
