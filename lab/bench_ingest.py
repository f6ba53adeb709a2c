"""`trackd bench ingest --transport webhook|mqtt [--processes N]`: sustained events/s from send to
durable row, with the whole pipeline on, against the ceilings it is bounded by.

webhook: signed native batches of 1,000 position events from 3 connections per server; an event
counts once its request is answered 202 (trackd answers only after commit). The rate is the events
acknowledged over the time from the first send to the last acknowledgement.

mqtt: QoS 1 publishes of one event each, kept within a window of what the ingesters have stored
(Mosquitto drops QoS 1 messages beyond a client's queue limit); the rate is the events published
over the time from the first publish until the ingesters have stored them all.

Ceilings, measured in the same run: PostgreSQL COPY of as many event and position rows into
tables shaped like `events` and `positions` (same indexes), and for MQTT the broker's raw QoS 1
rate from the same publisher to a minimal subscriber.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import time
from dataclasses import asdict
from typing import Any, TextIO

import orjson
import psycopg

from ingest.mqtt import BATCHES_IN_FLIGHT, MAX_BATCH, RECEIVE_MAXIMUM
from lab import bench_places, queries
from lab.bench_env import BenchEnv, Server
from lab.bench_figures import Figure
from lab.bench_load import mqtt_publisher, raw_broker, webhook_sender
from trackd.settings import Settings

BATCH = 1000
CONNECTIONS_PER_SERVER = 3
# Published and not yet stored, at most. The broker may have an ingester's receive maximum of
# messages in flight (ingest/mqtt.py), and those stored but not acknowledged yet (acknowledged in
# order, up to BATCHES_IN_FLIGHT batches) count too; past that they wait in the broker's queue, which
# Mosquitto's default keeps at 1,000, dropping QoS 1 messages beyond it.
WINDOW_PER_INGESTER = RECEIVE_MAXIMUM - BATCHES_IN_FLIGHT * MAX_BATCH
MAX_COPY_ROWS = 2_000_000
CTX = mp.get_context("spawn")


def run(settings: Settings, args: argparse.Namespace, out: TextIO) -> tuple[str, list[Figure], list[str]]:
    bench_places.check(args)
    with BenchEnv(settings, out) as env:
        seeded = env.seed_shipments(args.shipments)
        env.say(f"seeded {args.shipments:,} shipments in {seeded:.1f} s")
        base = time.time() - 4 * 3600
        if args.transport == "webhook":
            servers = env.start_servers("api", args.processes)
            rate, stored, notes = _webhook(env, servers, args, base)
        else:
            servers = env.start_servers("api,mqtt", args.processes)
            rate, stored, notes = _mqtt(env, servers, args, base)
        placed: tuple[list[Figure], list[str]] = ([], [])
        if getattr(args, "places", 0):  # the same run again, with the tenant's places
            again = _webhook if args.transport == "webhook" else _mqtt
            placed = bench_places.compare(env, servers, args, base, rate, lambda b: again(env, servers, args, b)[0])
        env.stop_servers()
        copy_rate = copy_ceiling(env, max(stored, 10_000))
        figures = []
        if args.transport == "webhook":
            figures.append(Figure("webhook ingest", rate, "events/s", copy_rate, "PostgreSQL COPY", target=">= 50,000"))
        else:
            broker_rate = broker_ceiling(env, args, base)
            figures.append(Figure("MQTT QoS 1 ingest", rate, "events/s", broker_rate, "broker raw QoS 1"))
            figures.append(
                Figure("MQTT QoS 1 ingest", rate, "events/s", copy_rate, "PostgreSQL COPY", target=">= 12,000")
            )
        figures += placed[0]
        notes += placed[1]
        notes.append(
            f"{args.processes} server process(es), {args.shipments:,} shipments, position events, "
            f"indexes, dedupe, state update and outbox/relay to Redis on"
        )
        title = f"trackd bench ingest --transport {args.transport} ({args.duration:.0f} s)"
        return title, figures, notes


def _webhook(
    env: BenchEnv, servers: list[Server], args: argparse.Namespace, base: float
) -> tuple[float | None, int, list[str]]:
    conf = {
        "trackings": [t for _, t in env.shipments],
        "base": base,
        "tenant": env.tenant,
        "secret": env.ingest_secret,
        "batch": BATCH,
        "connections": CONNECTIONS_PER_SERVER * len(servers),
        "ports": [s.port for s in servers],
        "duration": args.duration,
    }
    results: Any = CTX.Queue()
    proc = CTX.Process(target=webhook_sender, args=(conf, results), name="bench-webhook")
    proc.start()
    res: dict[str, Any] = results.get(timeout=args.duration + 120)
    proc.join(10)
    stored = env.count_events()
    elapsed = res["last"] - res["first"]
    rate = res["acked"] / elapsed if elapsed > 0 else None
    notes = [
        f"{res['acked']:,} events acknowledged in {elapsed:.1f} s ({res['errors']} failed requests); "
        f"{stored:,} rows in events",
        f"the load generator (httpx) used {res['cpu_s']:.1f} s of CPU over the {args.duration:.0f} s",
    ]
    return rate, stored, notes


def _mqtt(
    env: BenchEnv, servers: list[Server], args: argparse.Namespace, base: float
) -> tuple[float | None, int, list[str]]:
    conf = publisher_conf(
        env,
        env.run_id,
        base,
        WINDOW_PER_INGESTER * len(servers),
        args.duration,
        topic=f"{env.topic_prefix}trackd/{env.tenant}/devices/{{device}}/events",
    )
    consumed: Any = CTX.Value("q", 0, lock=False)
    results: Any = CTX.Queue()
    proc = CTX.Process(target=mqtt_publisher, args=(conf, consumed, results), name="bench-mqtt")
    proc.start()
    res: dict[str, Any] | None = None
    done_at = 0.0
    deadline = time.monotonic() + args.duration + 120
    progress = (0, time.monotonic())  # what was stored, and when that last grew
    while time.monotonic() < deadline:
        consumed.value = env.stored_by_servers(servers)
        if consumed.value > progress[0]:
            progress = (consumed.value, time.monotonic())
        if res is None:
            try:
                res = results.get_nowait()
            except queue.Empty:
                pass
        if res is not None and consumed.value >= res["published"]:
            done_at = time.monotonic()
            break
        if res is not None and time.monotonic() - progress[1] > 10:
            break  # nothing stored for 10 s after the last publish: the rest is not coming
        time.sleep(0.05)
    proc.join(10)
    if res is None or not done_at:
        published = f"{res['published']:,}" if res else "?"
        return (
            None,
            env.count_events(),
            [
                f"MQTT: the ingesters stored {consumed.value:,} of {published} published events"
                " (a broker that drops QoS 1 messages past its queue limit loses the rest)"
            ],
        )
    stored = env.count_events()
    elapsed = done_at - res["first"]
    notes = [
        f"{res['published']:,} events published and stored in {elapsed:.1f} s "
        f"(publishing took {res['last'] - res['first']:.1f} s); {stored:,} rows in events"
    ]
    return res["published"] / elapsed, stored, notes


def _copy_rows(tenant_id: int, n: int, base: float) -> tuple[bytes, bytes]:
    """COPY text for `n` events and their positions, shaped like what trackd writes."""
    ev, pos = [], []
    for i in range(n):
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(base + i / 1000)) + f".{i % 1000:03d}+00"
        sid, eid = f"shp_copy_{i % 10_000:06d}", f"native:{i:040x}"
        lat, lon = (i % 13_000) / 100 - 60, (i % 36_000) / 100 - 180
        data = orjson.dumps({"lat": lat, "lon": lon, "speed_kmh": 60.0, "heading": None}).decode()
        raw = orjson.dumps({"occurred_at": base + i / 1000, "shipment": sid, "position": {"lat": lat, "lon": lon}})
        ev.append(
            f"{tenant_id}\t{eid}\t{at}\t{at}\t{at}\t{sid}\t\\N\tnative\tposition\t\\N\t\\N\t\\N\t{{{sid.upper()}}}"
            f"\t\\N\t{data}\t{raw.decode()}\n"
        )
        pos.append(f"{tenant_id}\t{sid}\t\\N\t{at}\t{eid}\t{lat}\t{lon}\t60.0\t\\N\t\\N\t\\N\n")
    return "".join(ev).encode(), "".join(pos).encode()


EVENT_COLS = (
    "tenant_id, event_id, occurred_at, received_at, created_at, shipment_id, device_id, source, kind, code,"
    " raw_code, classifier, match_keys, retracts, data, raw"
)
POSITION_COLS = (
    "tenant_id, shipment_id, device_id, occurred_at, event_id, lat, lon, speed_kmh, heading, accuracy_m, altitude_m"
)


def copy_ceiling(env: BenchEnv, n: int) -> float:
    """Event+position row pairs per second that COPY commits into tables shaped like trackd's."""
    n = min(n, MAX_COPY_ROWS)
    events, positions = _copy_rows(env.tenant_id, n, time.time() - 3600)
    ev_t, pos_t = f"bench_{env.run_id}_events", f"bench_{env.run_id}_positions"
    create_events, create_positions, drop = queries.copy_tables(ev_t, pos_t)
    with psycopg.connect(env.settings.dsn(), autocommit=True) as conn:
        try:
            conn.execute(create_events.encode())
            conn.execute(create_positions.encode())
            started = time.monotonic()
            with conn.transaction():
                for table, cols, data in ((ev_t, EVENT_COLS, events), (pos_t, POSITION_COLS, positions)):
                    with conn.cursor().copy(f"COPY {table} ({cols}) FROM STDIN".encode()) as cp:
                        for i in range(0, len(data), 1 << 20):
                            cp.write(data[i : i + (1 << 20)])
            elapsed = time.monotonic() - started
        finally:
            conn.execute(drop.encode())
    env.say(f"COPY ceiling: {n:,} event + {n:,} position rows committed in {elapsed:.2f} s")
    return n / elapsed


def publisher_conf(env: BenchEnv, run: str, base: float, window: int, duration: float, **topics: str) -> dict[str, Any]:
    """What `mqtt_publisher` (and `raw_subscriber`) need: the broker, the run's shipments, how far
    ahead of what is consumed to publish, for how long, and the topics."""
    return {
        "run": run,
        **asdict(env.broker()),
        "trackings": [t for _, t in env.shipments],
        "base": base,
        "window": window,
        "duration": duration,
        **topics,
    }


def broker_ceiling(env: BenchEnv, args: argparse.Namespace, base: float) -> float | None:
    """The same publisher, window and payloads, to one minimal QoS 1 subscriber."""
    conf = publisher_conf(
        env,
        env.run_id + "raw",
        base,
        WINDOW_PER_INGESTER * args.processes,
        min(args.duration, 15.0),
        topic=f"{env.topic_prefix}raw/{{device}}",
        filter=f"{env.topic_prefix}raw/+",
    )
    res, got, last_at, _sub = raw_broker(conf, 30)
    elapsed = last_at - res["first"]
    env.say(f"broker ceiling: {got:,} of {res['published']:,} QoS 1 messages received in {elapsed:.1f} s")
    return got / elapsed if elapsed > 0 else None
