"""`trackd bench soak --rate R --duration S`: a steady load for minutes, to show memory and latency
stay flat. Signed native batches of 100 position events are sent at a fixed pace to one
`trackd serve --roles api,worker` process; every minute prints the events acknowledged, the request
latency p50/p99 and the server's resident memory. The shipments start with full trails (the 50
fixes a state keeps), as in a system that has been running a while, so memory is not measured
while every trail is still filling.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from lab.bench_env import BenchEnv
from lab.bench_figures import Figure, percentile
from lab.bench_load import Events, _run, http_client, post_status, signed_headers
from trackd.settings import Settings

BATCH = 100
CONNECTIONS = 4
SAMPLE_S = 5.0
CTX = mp.get_context("spawn")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def paced_sender(conf: dict[str, Any], out: Any) -> None:
    out.put(_run(_paced(conf)))


async def _paced(conf: dict[str, Any]) -> list[tuple[float, float, int]]:
    """Batches at a fixed pace, whatever the answers: (seconds since start, latency ms, status)."""
    events = Events(conf["trackings"], conf["base"])
    path, secret = f"/v1/ingest/{conf['tenant']}/native", conf["secret"]
    interval = BATCH / conf["rate"] * CONNECTIONS
    start = time.monotonic()
    results: list[tuple[float, float, int]] = []

    async def worker(k: int) -> None:
        n, due = k * BATCH, start + k * interval / CONNECTIONS
        while due < start + conf["duration"]:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            body = events.batch(n, BATCH)
            sent = time.monotonic()
            status = await post_status(client, path, body, signed_headers(secret, body))
            results.append((sent - start, (time.monotonic() - sent) * 1000, status))
            n += BATCH * CONNECTIONS
            due += interval

    async with http_client(conf["port"], CONNECTIONS) as client:
        await asyncio.gather(*(worker(k) for k in range(CONNECTIONS)))
    return results


def run(settings: Settings, args: argparse.Namespace, out: TextIO) -> tuple[str, list[Figure], list[str]]:
    with BenchEnv(settings, out) as env:
        env.seed_shipments(args.shipments)
        base = time.time() - 4 * 3600
        env.fill_trails(datetime.fromtimestamp(base, UTC))  # steady state: trails are full already
        server = env.start_servers("api,worker", 1)[0]
        conf = {
            "trackings": [t for _, t in env.shipments],
            "base": base,
            "tenant": env.tenant,
            "secret": env.ingest_secret,
            "port": server.port,
            "rate": args.rate,
            "duration": args.duration,
        }
        results: Any = CTX.Queue()
        proc = CTX.Process(target=paced_sender, args=(conf, results), name="bench-soak")
        proc.start()
        started, memory = time.monotonic(), []
        while proc.is_alive() and time.monotonic() - started < args.duration + 60:
            mb = rss_mb(server.proc.pid)
            if mb is not None:
                memory.append((time.monotonic() - started, mb))
            time.sleep(SAMPLE_S)
            if not results.empty():
                break
        rows: list[tuple[float, float, int]] = results.get(timeout=120)
        proc.join(10)
        stored = env.count_events()
    minutes = max(1, int(args.duration // 60))
    notes = ["minute  acked events  p50 ms  p99 ms  server RSS MB"]
    p99s, rss = [], []
    for m in range(minutes):
        lat = [ms for t, ms, st in rows if m * 60 <= t < (m + 1) * 60 and st == 202]
        acked = len(lat) * BATCH
        mem = [mb for t, mb in memory if m * 60 <= t < (m + 1) * 60]
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        p99s.append(p99)
        rss.append(max(mem) if mem else None)
        notes.append(f"{m + 1:>6}  {acked:>12,}  {p50 or 0:>6.1f}  {p99 or 0:>6.1f}  {rss[-1] or 0:>13.1f}")
    failed = sum(1 for _, _, st in rows if st != 202)
    notes.append(f"{len(rows) * BATCH:,} events sent, {failed} requests not 202; {stored:,} rows in events")
    first_p99, last_p99 = p99s[0], p99s[-1]
    first_rss, last_rss = rss[0], rss[-1]
    figures = [
        Figure("request p99, last minute", last_p99, "ms", first_p99, "first minute", lower_is_better=True),
        Figure("server RSS, last minute", last_rss, "MB", first_rss, "first minute", lower_is_better=True),
    ]
    return f"trackd bench soak ({args.rate:g} events/s for {args.duration:g} s)", figures, notes
