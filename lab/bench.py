"""`trackd bench {ingest,e2e,query,stream,soak,hostile}`: figures measured against the configured services.

Each run creates its own tenant (`bench-<random>`), starts the trackd processes it measures as
subprocesses on free loopback ports (with their own MQTT topic prefix, client ids and share
group), drives them from load-generator processes, measures in the same run the ceiling the figure
is bounded by, prints one table, and then stops its processes and deletes the tenant's rows.

This module holds the argument checks and the dispatcher; the figures and their table are in
`bench_figures`, the runs live in `bench_ingest`, `bench_e2e`, `bench_query`, `bench_stream`,
`bench_soak` and `bench_hostile`, the processes and data they share in `bench_env`, the load
generators in `bench_load`, the websocket clients in `bench_stream`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

from lab.bench_figures import Figure, render
from trackd.errors import ConfigError
from trackd.settings import Settings

MAX_DURATION_S = 600.0


def check_args(args: argparse.Namespace) -> None:
    """Refuse arguments no run can honour, with one clear line (a ConfigError)."""
    if args.kind not in ("ingest", "e2e", "query", "stream", "soak", "hostile"):
        raise ConfigError(f"bench: unknown kind {args.kind!r}")
    if args.transport not in ("webhook", "mqtt"):
        raise ConfigError("bench --transport: use webhook or mqtt")
    if not 1 <= args.processes <= 16:
        raise ConfigError("bench --processes: 1 to 16")
    if not 0 <= args.warmup <= 120:
        raise ConfigError("bench --warmup: 0 to 120 seconds")
    if not 0 <= args.mqtt_processes <= 16:
        raise ConfigError("bench --mqtt-processes: 0 to 16")
    if not 1.0 <= args.duration <= MAX_DURATION_S:
        raise ConfigError(f"bench --duration: 1 to {MAX_DURATION_S:.0f} seconds")
    if not 0 < args.rate <= 1_000_000:
        raise ConfigError("bench --rate: more than 0, at most 1,000,000 events/s")
    if not 0 <= args.clients <= 20_000:
        raise ConfigError("bench --clients: 0 to 20,000")
    if not 20 <= args.shipments <= 1_000_000:
        raise ConfigError("bench --shipments: 20 to 1,000,000")
    if not 1_000 <= args.positions <= 100_000_000:
        raise ConfigError("bench --positions: 1,000 to 100,000,000")
    if args.kind == "hostile":
        from lab.bench_hostile import attacks

        if args.notified is not None and not 0 < args.notified <= args.rate:
            raise ConfigError("bench --notified: more than 0, at most --rate notifications/s")
        try:
            attacks(args.attacks)
        except ValueError as exc:
            raise ConfigError(f"bench --attacks: {exc}") from None


Runner = Callable[[Settings, argparse.Namespace, TextIO], tuple[str, list[Figure], list[str]]]


def _runner(kind: str) -> Runner:
    """The run function of one benchmark kind, imported only when that benchmark runs."""
    if kind == "ingest":
        from lab import bench_ingest

        return bench_ingest.run
    if kind == "e2e":
        from lab import bench_e2e

        return bench_e2e.run
    if kind == "query":
        from lab import bench_query

        return bench_query.run
    if kind == "hostile":
        from lab import bench_hostile

        return bench_hostile.run
    from lab import bench_soak

    return bench_soak.run


def main(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one benchmark and print its table; 0 when it ran (targets missed or not)."""
    check_args(args)
    out = out or sys.stdout
    if args.kind == "stream":
        return _stream(settings, args, out)
    title, figures, notes = _runner(args.kind)(settings, args, out)
    print(render(title, figures, notes), file=out, flush=True)
    return 0


def _stream(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    """The websocket fan-out benchmark of `lab.bench_stream`, against a server started here."""
    import asyncio

    from lab import bench_stream as stream_bench
    from lab.bench_env import BenchEnv

    with BenchEnv(settings, out) as env:
        servers = env.start_servers("api", 1)
        asyncio.run(
            stream_bench.run(
                servers[0].url,
                env.api_key,
                clients=args.clients,
                shipments=args.shipments,
                rate=args.rate,
                duration_s=args.duration,
                out=out,
            )
        )
    return 0
