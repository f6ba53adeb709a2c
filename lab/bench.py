"""`trackd bench {ingest,e2e,query,stream}`: figures measured against the configured services.

Each run creates its own tenant (`bench-<random>`), starts the trackd processes it measures as
subprocesses on free loopback ports (with their own MQTT topic prefix, client ids and share
group), drives them from load-generator processes, measures in the same run the ceiling the figure
is bounded by, prints one table, and then stops its processes and deletes the tenant's rows.

This module holds the pure parts (percentiles, ratios, the table, argument checks) and the
dispatcher; the runs live in `bench_ingest`, `bench_e2e` and `bench_query`, the processes and data
they share in `bench_env`, the load generators in `bench_load`.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from trackd.errors import ConfigError
from trackd.settings import Settings

MAX_DURATION_S = 600.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q` quantile (0..1) by linear interpolation between closest ranks; None when empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within 0..1")
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratio(value: float | None, ceiling: float | None, *, lower_is_better: bool = False) -> str:
    """trackd's figure as a share of its ceiling: `value/ceiling` for rates, `ceiling/value` for
    latencies (so 100% always means "as good as the ceiling")."""
    if value is None or ceiling is None or value <= 0 or ceiling <= 0:
        return "-"
    share = ceiling / value if lower_is_better else value / ceiling
    return f"{share * 100:.0f}%" if share >= 0.1 else f"{share * 100:.1f}%"


def fmt(value: float | None, unit: str) -> str:
    """A figure with its unit: rates as whole numbers with thousands separators, ms to 0.1."""
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 1000 else f"{value:,.0f} ms"
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:,.0f} {unit}".rstrip()


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the report: trackd's figure, the ceiling it is bounded by, and a target."""

    name: str
    value: float | None
    unit: str
    ceiling: float | None = None
    ceiling_name: str = ""
    target: str = ""
    lower_is_better: bool = False

    def met(self) -> str:
        """'yes'/'no' against a target written as '>= N' or '< N', '' without one."""
        if not self.target or self.value is None:
            return ""
        op, _, num = self.target.partition(" ")
        bound = float(num.replace(",", "").replace("_", ""))
        ok = {">=": self.value >= bound, ">": self.value > bound, "<": self.value < bound, "<=": self.value <= bound}
        return "yes" if ok.get(op, False) else "no"


def render(title: str, figures: Sequence[Figure], notes: Sequence[str] = ()) -> str:
    """The report as a fixed-width table."""
    head = ("figure", "trackd", "ceiling", "ratio", "target", "met")
    rows = [
        (
            f.name,
            fmt(f.value, f.unit),
            f"{fmt(f.ceiling, f.unit)} ({f.ceiling_name})" if f.ceiling is not None else "-",
            ratio(f.value, f.ceiling, lower_is_better=f.lower_is_better),
            f"{f.target} {f.unit}".strip() if f.target else "",
            f.met(),
        )
        for f in figures
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.append(line)
    out += [f"  {n}" for n in notes]
    return "\n".join(out)


def check_args(args: argparse.Namespace) -> None:
    """Refuse arguments no run can honour, with one clear line (a ConfigError)."""
    if args.kind not in ("ingest", "e2e", "query", "stream", "soak"):
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


RUNNERS = {
    "ingest": "lab.bench_ingest",
    "e2e": "lab.bench_e2e",
    "query": "lab.bench_query",
    "soak": "lab.bench_soak",
}


def main(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one benchmark and print its table; 0 when it ran (targets missed or not)."""
    check_args(args)
    out = out or sys.stdout
    if args.kind == "stream":
        return _stream(settings, args, out)
    runner = importlib.import_module(RUNNERS[args.kind])
    title, figures, notes = runner.run(settings, args, out)
    print(render(title, figures, notes), file=out, flush=True)
    return 0


def _stream(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    """The websocket fan-out benchmark of `lab.bench_stream`, against a server started here."""
    import asyncio

    from lab.bench_env import BenchEnv

    stream_bench = importlib.import_module("lab.bench_stream")
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
