"""`trackd bench e2e --rate R --clients C`: latency from publish to websocket receipt.

C websocket clients each follow 20 of the run's shipments (10,000 by default) and 20 map clients
follow `all`. A publisher process sends R position events/s for the duration: even events as
QoS 1 MQTT messages (one event each), odd ones as one signed native webhook request per 10 ms.
The latency of an event is the time from its publish (or the start of its webhook request) to its
receipt by each client that gets it; both sides read the same monotonic clock. Map clients get
positions coalesced per stream tick (250 ms by default), which their latency includes.

The load runs `--warmup` seconds (default 10) before the measured `--duration`; events sent in
the warm-up are not counted. A server that has been running holds its shipments' states in
memory; in a fresh one the first event of each shipment reads and decodes its state row, which
at 2,000 events/s over 10,000 shipments is most events of the first seconds.

Ceiling, in the same run: the broker's own QoS 1 latency from the same kind of publisher, at
the same MQTT rate, to a minimal subscriber.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing as mp
import random
import time
from array import array
from dataclasses import asdict
from typing import Any, TextIO

from lab.bench_env import BenchEnv
from lab.bench_figures import Figure, percentile
from lab.bench_load import paced_publisher, raw_broker
from lab.bench_stream import Receipts, clients_process
from trackd.settings import Settings

PER_CLIENT = 20
MAP_CLIENTS = 20
DRAIN_S = 3.0
CTX = mp.get_context("spawn")


def latencies(
    sent: array[float], got: tuple[array[int], array[float]], parity: int | None, first: int = 0
) -> list[float]:
    """Milliseconds from send to receipt for each receipt (of even or odd events, or all) of the
    events from index `first` on."""
    idx, at = got
    out: list[float] = []
    for i, t in zip(idx, at, strict=True):
        if first <= i < len(sent) and (parity is None or i % 2 == parity):
            out.append(max(0.0, t - sent[i]) * 1000)
    return out


def run(settings: Settings, args: argparse.Namespace, out: TextIO) -> tuple[str, list[Figure], list[str]]:
    with BenchEnv(settings, out) as env:
        env.seed_shipments(args.shipments)
        if args.mqtt_processes:
            env.start_servers("mqtt", args.mqtt_processes)
        servers = env.start_servers("api" if args.mqtt_processes else "api,mqtt", args.processes)
        rng = random.Random(5)
        ids = [sid for sid, _ in env.shipments]
        base = time.time() - 2 * 3600
        ports = [s.port for s in servers]
        ready, stop = CTX.Event(), CTX.Event()
        ws_out: Any = CTX.Queue()
        ws_conf = {
            "ports": ports,
            "api_key": env.api_key,
            "base": base,
            "groups": {
                "shipment": [[{"shipments": rng.sample(ids, PER_CLIENT)}] for _ in range(args.clients)],
                "map": [[{"all": True}] for _ in range(MAP_CLIENTS)],
            },
        }
        ws = CTX.Process(target=clients_process, args=(ws_conf, ready, stop, ws_out), name="bench-ws")
        ws.start()
        opened = time.monotonic()
        while not ready.wait(0.5):
            if not ws.is_alive() or time.monotonic() - opened > 180:
                raise TimeoutError("websocket clients did not all connect (see the traceback above)")
        env.say(f"{args.clients + MAP_CLIENTS:,} websocket clients connected in {time.monotonic() - opened:.1f} s")
        mqtt_conf = asdict(env.broker())
        pub_conf = {
            **mqtt_conf,
            "run": env.run_id,
            "trackings": [t for _, t in env.shipments],
            "base": base,
            "topic": f"{env.topic_prefix}trackd/{env.tenant}/devices/{{device}}/events",
            "tenant": env.tenant,
            "secret": env.ingest_secret,
            "ports": ports,
            "rate": args.rate,
            "duration": args.warmup + args.duration,
        }
        pub_out: Any = CTX.Queue()
        pub = CTX.Process(target=paced_publisher, args=(pub_conf, pub_out), name="bench-e2e-pub")
        pub.start()
        sent_res: dict[str, Any] = pub_out.get(timeout=args.duration + 120)
        pub.join(10)
        time.sleep(DRAIN_S)
        stop.set()
        got: dict[str, Receipts] = ws_out.get(timeout=60)
        ws.join(10)
        stored = env.count_events()
        env.stop_servers()
        raw = broker_latency(env, mqtt_conf, args)
    sent: array[float] = sent_res["sent"]
    first = bisect.bisect_left(sent, sent[0] + args.warmup) if sent else 0
    follow, whole = got["shipment"], got["map"]
    mq = latencies(sent, (follow.idx, follow.at), 0, first)
    wh = latencies(sent, (follow.idx, follow.at), 1, first)
    maps = latencies(sent, (whole.idx, whole.at), None, first)
    figures: list[Figure] = []
    for label, values, ceiling in (("MQTT -> ws", mq, raw), ("webhook -> ws", wh, None), ("map (all) ", maps, None)):
        for q, tag in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            c = percentile(ceiling, q) if ceiling else None
            target = "< 100" if tag == "p99" and label != "map (all) " else ""
            figures.append(Figure(f"{label} {tag}", percentile(values, q), "ms", c, "broker raw QoS 1", target, True))
    expected = PER_CLIENT * args.clients / args.shipments
    notes = [
        f"the first {args.warmup:.0f} s of load ({first:,} events) warmed the servers up and are not counted",
        f"{len(sent):,} events in {sent_res['produced_s']:.0f} s ({len(sent) / sent_res['produced_s']:,.0f}/s, "
        f"failed requests: {sent_res['errors'] or 'none'}), {stored:,} stored; "
        f"{args.clients:,} clients x {PER_CLIENT} of {args.shipments:,} shipments + {MAP_CLIENTS} map clients, "
        f"{args.processes} server process(es)"
        + (f" with the api role, {args.mqtt_processes} with the mqtt role" if args.mqtt_processes else ""),
        f"shipment clients received {len(mq) + len(wh):,} counted positions "
        f"(about {expected * (len(sent) - first):,.0f} expected), "
        f"map clients {len(maps):,} (coalesced per tick)",
    ]
    title = f"trackd bench e2e --rate {args.rate:.0f} --clients {args.clients} ({args.duration:.0f} s)"
    return title, figures, notes


def broker_latency(env: BenchEnv, mqtt_conf: dict[str, Any], args: argparse.Namespace) -> list[float]:
    """Publish -> receipt latencies (ms) of the broker alone, at the MQTT share of the rate."""
    conf = {
        **mqtt_conf,
        "run": env.run_id + "raw",
        "trackings": [t for _, t in env.shipments],
        "base": time.time(),
        "topic": f"{env.topic_prefix}raw/{{device}}",
        "filter": f"{env.topic_prefix}raw/+",
        "window": 1000,
        "rate": args.rate / 2,
        "stamp": True,
        "duration": min(args.duration, 10.0),
    }
    _res, _got, _last, sub = raw_broker(conf, 10)
    lat: array[float] = sub["latency_s"]
    return [v * 1000 for v in lat]
