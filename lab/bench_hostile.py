"""`trackd bench hostile`: does hostile traffic slow down, delay or lose a valid tenant's data?

The valid load: `--rate` position events/s from `paced_publisher` (lab/bench_load.py), even events
as QoS 1 MQTT messages on the valid tenant's device topics, odd ones as signed native webhook
requests (one per 10 ms). Websocket clients (`Clients`, lab/bench_stream.py) follow every shipment
of the valid tenant: an event's stream message is written in the transaction that stores it and
relayed after commit, so the time from sending an event to its message's arrival is its end-to-end
store latency. The valid tenant also subscribes a local receiver to the positions of as many
shipments as give it `--notified` notifications a second (`watched`; default `NOTIFIED_PER_S`),
which times its notification webhooks.

The servers (`trackd serve`, every role, `--processes` of them) run one valid load without a
break: a warm-up of `--warmup` s (not counted; the hostile traffic flows in its second half, so
that what it uses is warm too), then `SLICE_S` slices, about `--duration` s of them clean and as
many with the hostile traffic, in the order clean, hostile, hostile, clean (repeated), so that
whatever drifts over the run (the machine, the tables, the trails) weighs on both alike. The
hostile traffic comes from a process of its own, at idle priority (`idle_priority`), let go and
held by the bench at each slice:
- poison MQTT messages on the valid tenant's topics (other devices), a second tenant's and an
  unknown tenant's: JSON nested 200 to 1,000 levels deep, bytes that are not JSON (nor UTF-8, with
  NULs), and 2 MB payloads;
- HTTP bodies over `TRACKD_MAX_BODY_BYTES`, with a Content-Length and chunked;
- slow HTTP clients: raw sockets that trickle an incomplete request (its head, or its body), one
  byte every `TRICKLE_S`, opened again whenever the server closes them, closed while held;
- a slow webhook endpoint: a local receiver that sleeps `SLOW_ENDPOINT_S` before answering each
  request, subscribed by the second tenant to the positions of `HOSTILE_SHIPMENTS` of its
  shipments. That tenant sends `CHANGES_PER_S` positions all through the run, ordinary ingest of a
  neighbour: in the hostile slices for the shipments its slow endpoint follows (each one a
  notification to it), in the clean ones for as many that nothing follows;
- junk to `/v1/osmand`: 1 MB bodies and small requests, with unknown device ids.

Figures, for the events sent in the hostile windows as a share of those sent in the clean ones
(target 90%): valid events stored per second (stream messages arriving in the windows), p99 store
latency (per transport) and the p99 of the valid notification webhooks. Each slice is a window: a
hostile one is all of its time; a clean one leaves out `GUARD_S` after the hostile traffic is held
(what it left in flight) and before it is let go again. A p99 figure is the median of its windows'
p99s (`typical_p99`): a stall of the machine lands in one window at random and would otherwise set
the figure of whichever kind it fell in; the p99 of all the events of each kind is printed too.
Valid events lost: accepted (answered 202, or acknowledged by the broker) and not stored `SETTLE_S`
after the load ended, counted over the whole load in the valid tenant's rows (target 0).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import multiprocessing as mp
import os
import random
import threading
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlencode

import httpx
import orjson
import psycopg

from ingest.mqtt_conn import Endpoint, Publisher
from lab import queries
from lab.bench_env import BenchEnv, BenchTenant, Server, usage
from lab.bench_figures import Figure, percentile
from lab.bench_load import _run, paced_publisher, signed_headers
from lab.bench_stream import Receipts, clients_process
from lab.net import free_port
from trackd.settings import Settings

CTX = mp.get_context("spawn")
ATTACKS = ("poison", "oversized", "slow-clients", "slow-endpoint", "osmand")  # `--attacks`, all by default
MIN_SHARE = 0.9  # the hostile run's figures against the clean run's
SETTLE_S = 30.0  # after the load, how long stored rows may take to catch up with what was accepted
STALL_S = 10.0  # ... or how long they may stay the same before the rest is counted lost
DRAIN_S = 3.0  # then, for the last stream messages and notification webhooks
SLICE_S = 5.0  # the measured run switches the hostile traffic on and off in slices this long
GUARD_S = 1.0  # a clean window leaves out this much after the hostile traffic stops, and before it starts
LEAD_S = 3.0  # from starting the valid load's process to its first event
# Notifications a second to the valid tenant's webhook receiver (from the positions of `watched`
# shipments): about 60 in a hostile window, and within what one endpoint is sent at --rate 2000
# (at 50 a second there, its queue grew through the run: docs/benchmarks.md).
NOTIFIED_PER_S = 12.5
PER_SOCKET = 1000  # shipment ids per websocket subscribe (the stream's limit)
# The hostile traffic, per second unless stated.
POISON_PER_S = 40  # small poison MQTT messages, nested and not JSON by turns
BIG_PER_S = 1.0  # 2 MB MQTT payloads
BIG_MQTT_BYTES = 2 << 20
OVERSIZED_PER_S = 2.0  # HTTP bodies over the limit, with a Content-Length and chunked by turns
SLOW_CLIENTS = 100
TRICKLE_S = 2.0
OSMAND_BIG_PER_S = 2.0  # 1 MB bodies
OSMAND_BIG_BYTES = 1 << 20
OSMAND_SMALL_PER_S = 50.0
CHANGES_PER_S = 20.0  # the second tenant's position events (in the hostile slices each a delivery to the slow endpoint)
HOSTILE_SHIPMENTS = 50  # the second tenant's shipments that its slow endpoint follows (and as many that nothing does)
SLOW_ENDPOINT_S = 10.0


# -- hostile payloads (pure) ---------------------------------------------------------------------
def attacks(text: str) -> tuple[str, ...]:
    """The attacks `--attacks` names (comma-separated, or `all`), in `ATTACKS` order; ValueError
    naming one that is not an attack. `none`: the hostile windows without any hostile traffic, a
    control that shows how far the two kinds of window differ by chance."""
    names = {a.strip() for a in text.split(",") if a.strip()}
    if names == {"all"}:
        return ATTACKS
    if names == {"none"}:
        return ()
    bad = sorted(names - set(ATTACKS))
    if bad or not names:
        raise ValueError(f"unknown attack {bad[0] if bad else '(none)'!r}; use all, none or any of {','.join(ATTACKS)}")
    return tuple(a for a in ATTACKS if a in names)


def nested_json(depth: int, marker: str) -> bytes:
    """A JSON object holding arrays nested so that the document is `depth` levels deep."""
    if depth < 2:
        raise ValueError("depth: at least 2")
    inner = depth - 1
    return b'{"bench":"%s","x":%s%s}' % (marker.encode(), b"[" * inner, b"]" * inner)


def not_json(rng: random.Random, size: int, marker: str) -> bytes:
    """`size` bytes that are neither JSON nor UTF-8, with NULs: the marker, then random bytes."""
    head = marker.encode() + b"\x00\xff\xfe{"
    if size < len(head):
        raise ValueError(f"size: at least {len(head)}")
    return head + rng.randbytes(size - len(head))


def big_payload(size: int, marker: str) -> bytes:
    """`size` bytes of JSON that carry no event."""
    head = b'{"bench":"%s","pad":"' % marker.encode()
    if size < len(head) + 2:
        raise ValueError("size: too small")
    return head + b"x" * (size - len(head) - 2) + b'"}'


def depth_of(doc: bytes) -> int:
    """How deeply a JSON document's brackets nest (strings are not looked into)."""
    deepest = level = 0
    in_string = escaped = False
    for ch in doc:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == 0x5C, ch != 0x22)
        elif ch == 0x22:
            in_string = True
        elif ch in b"[{":
            level += 1
            deepest = max(deepest, level)
        elif ch in b"]}":
            level -= 1
    return deepest


def slow_request(kind: str, host: str, path: str) -> tuple[bytes, bytes]:
    """What a slow client sends at once, and then one byte at a time, never completing: its head
    (`head`), or a complete head promising a body that never all comes (`body`)."""
    if kind == "head":
        return f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode(), b"a"
    if kind == "body":
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        return head.encode(), b" "
    raise ValueError(f"kind: head or body, not {kind!r}")


# -- what one run measured (pure) ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Side:
    """One transport of one run: events accepted (202, PUBACK) and stored, events stored per
    second (stream messages arriving in the windows), and the p99 of send -> stream message (ms):
    the median of the windows' own p99s (`typical_p99`), and the p99 of all their events pooled."""

    accepted: int
    stored: int
    per_s: float | None
    p99_ms: float | None
    pooled_p99_ms: float | None = None

    @property
    def lost(self) -> int:
        return max(0, self.accepted - self.stored)


Window = tuple[float, float]  # [start, end) on the monotonic clock


def watched(rate: float, shipments: int, per_s: float = NOTIFIED_PER_S) -> int:
    """How many of `shipments` (each sent `rate / shipments` positions a second) the valid tenant's
    receiver follows to get `per_s` notifications a second: at least one, at most all."""
    return max(1, min(shipments, round(per_s * shipments / rate))) if rate > 0 else shipments


def slices(duration_s: float) -> list[bool]:
    """The plan of the measured run: `SLICE_S` slices, hostile (True) or clean, in the order clean,
    hostile, hostile, clean (repeated), so that a drift of the machine or of the tables over the
    run weighs on both alike; about `duration_s` of each."""
    groups = max(1, round(2 * duration_s / (4 * SLICE_S)))
    return [False, True, True, False] * groups


def windows(toggles: Sequence[tuple[float, bool]], end: float, guard_s: float) -> tuple[list[Window], list[Window]]:
    """The clean and the hostile windows of a run, one per slice, from its toggles ((time, hostile
    from then on), one per slice, in order) and its end. A hostile window is all of its slice, from
    the moment the hostile traffic was let go; a clean one leaves out `guard_s` after the traffic
    was held (what it left in flight: after a hostile slice, and at the start, which follows the
    warm-up's hostile half) and `guard_s` before it is let go again (events still on their way
    when it starts: before a hostile slice, and at the end)."""
    clean: list[Window] = []
    bad: list[Window] = []
    for k, (at, hostile) in enumerate(toggles):
        until = toggles[k + 1][0] if k + 1 < len(toggles) else end
        if hostile:
            if until > at:
                bad.append((at, until))
            continue
        a = at + guard_s if k == 0 or toggles[k - 1][1] else at
        b = until - guard_s if k + 1 == len(toggles) or toggles[k + 1][1] else until
        if b > a:
            clean.append((a, b))
    return clean, bad


MIN_PER_WINDOW = 20  # a window's p99 counts toward the median when it has at least this many values


def typical_p99(groups: Sequence[Sequence[float]]) -> float | None:
    """The median of the p99s of `groups` (one per window) that have `MIN_PER_WINDOW` values or
    more. A stall of the machine (the disk's, 0.3-1.3 s in one slice here) lands in one window at
    random and sets the p99 of all the windows pooled, clean or hostile by chance; the median of the
    windows' p99s moves only when most windows of a kind are slower, as a cost of the hostile
    traffic would make them. When no window has that many, the p99 of all the values."""
    p99s = [p for g in groups if len(g) >= MIN_PER_WINDOW and (p := percentile(g, 0.99)) is not None]
    if not p99s:  # too few values in every window (a low --rate): the p99 of them all
        return percentile([v for g in groups for v in g], 0.99)
    return percentile(p99s, 0.5)


def latencies_by_window(
    sent: array[float], got: Receipts, parity: int | None, spans: Sequence[Window]
) -> list[list[float]]:
    """ms from send to stream message of the events of `parity` (0: MQTT, 1: webhook, None: both)
    sent within each of `spans` (sorted, disjoint), one list per span."""
    out: list[list[float]] = [[] for _ in spans]
    for i, t in zip(got.idx, got.at, strict=True):
        if 0 <= i < len(sent) and (parity is None or i % 2 == parity):
            k = where(sent[i], spans)
            if k is not None:
                out[k].append(max(0.0, t - sent[i]) * 1000)
    return out


def by_window(sent: array[float], got: Receipts, spans: tuple[list[Window], list[Window]], origin: float) -> str:
    """The p99 (ms, both transports) of the events sent in each window, in time order, each as
    `C` (clean) or `H` (hostile), its start (s from `origin`) and its p99."""
    marked = sorted([(a, b, "C") for a, b in spans[0]] + [(a, b, "H") for a, b in spans[1]])
    lat = latencies_by_window(sent, got, None, [(a, b) for a, b, _ in marked])
    out = []
    for (a, _b, what), values in zip(marked, lat, strict=True):
        p99 = percentile(values, 0.99)
        out.append(f"{what}{a - origin:.0f} " + ("-" if p99 is None else f"{p99:.0f}"))
    return ", ".join(out)


def where(t: float, spans: Sequence[Window]) -> int | None:
    """The index of the span of `spans` (sorted, disjoint) that holds `t`, if any."""
    i = bisect.bisect_right(spans, (t, math.inf)) - 1
    return i if i >= 0 and spans[i][0] <= t < spans[i][1] else None


def within(t: float, spans: Sequence[Window]) -> bool:
    return where(t, spans) is not None


def side(sent: array[float], got: Receipts, parity: int, spans: Sequence[Window], accepted: int, stored: int) -> Side:
    """The Side of the events of one parity (0: MQTT, 1: webhook) of a paced publisher's `sent`
    within `spans`: the p99s of those sent in them, and the rate at which stream messages of that
    parity arrived in them."""
    lat = latencies_by_window(sent, got, parity, spans)
    length = sum(b - a for a, b in spans)
    mine = [t for i, t in zip(got.idx, got.at, strict=True) if 0 <= i < len(sent) and i % 2 == parity]
    arrived = sum(1 for t in mine if within(t, spans))
    return Side(
        accepted,
        stored,
        arrived / length if length > 0 and mine else None,
        typical_p99(lat),
        percentile([v for g in lat for v in g], 0.99),
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """One run: its two transports and the valid tenant's notification webhooks (ms, send ->
    receipt, one tuple per window)."""

    webhook: Side
    mqtt: Side
    deliveries_ms: tuple[tuple[float, ...], ...]


def figures(clean: Outcome, hostile: Outcome) -> list[Figure]:
    """The hostile run against the clean run."""
    out: list[Figure] = []
    for name, c, h in (("webhook", clean.webhook, hostile.webhook), ("MQTT", clean.mqtt, hostile.mqtt)):
        out.append(
            Figure(f"{name}: valid events stored/s", h.per_s, "events/s", c.per_s, "clean windows", min_share=MIN_SHARE)
        )
        out.append(
            Figure(
                f"{name}: send -> stored p99",
                h.p99_ms,
                "ms",
                c.p99_ms,
                "clean windows",
                lower_is_better=True,
                min_share=MIN_SHARE,
            )
        )
    out.append(
        Figure(
            "valid notification webhooks p99",
            typical_p99(hostile.deliveries_ms),
            "ms",
            typical_p99(clean.deliveries_ms),
            "clean windows",
            lower_is_better=True,
            min_share=MIN_SHARE,
        )
    )
    out.append(Figure("valid events lost (webhook)", hostile.webhook.lost, "events", target="= 0"))
    out.append(Figure("valid events lost (MQTT)", hostile.mqtt.lost, "events", target="= 0"))
    return out


def delivery_latencies(
    sent: array[float], base: float, got: Sequence[tuple[float, bytes]], spans: Sequence[Window] | None = None
) -> list[float]:
    """ms from an event's send to the receipt of its position webhook (`{"data": {"occurred_at"}}`),
    of the events sent within `spans` (all when None)."""
    everything = [(-math.inf, math.inf)]
    return [v for g in deliveries_by_window(sent, base, got, everything if spans is None else spans) for v in g]


def deliveries_by_window(
    sent: array[float], base: float, got: Sequence[tuple[float, bytes]], spans: Sequence[Window]
) -> list[list[float]]:
    """`delivery_latencies` of the events sent within each of `spans` (sorted, disjoint), one list
    per span: each webhook body is read once."""
    base_ms = round(base * 1000)
    out: list[list[float]] = [[] for _ in spans]
    for at, body in got:
        try:
            data = orjson.loads(body)["data"]
            i = round(datetime.fromisoformat(data["occurred_at"]).timestamp() * 1000) - base_ms
        except (ValueError, KeyError, TypeError):
            continue
        if 0 <= i < len(sent) and (k := where(sent[i], spans)) is not None:
            out[k].append(max(0.0, at - sent[i]) * 1000)
    return out


# -- webhook receivers, on a thread of the bench process -----------------------------------------
class Receivers:
    """Local HTTP endpoints for notification webhooks, on an event loop of their own thread: each
    answers 200 after its `delay_s`, and records (receipt time, body) of every request."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.got: dict[int, list[tuple[float, bytes]]] = {}
        self._lock = threading.Lock()  # the loop's thread appends, the bench's takes
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-receivers", daemon=True)
        self._thread.start()

    def add(self, delay_s: float) -> int:
        """A new endpoint; its port."""
        port = free_port()
        self.got[port] = []
        fut = asyncio.run_coroutine_threadsafe(self._serve(port, delay_s), self.loop)
        self._servers.append(fut.result(10))
        return port

    async def _serve(self, port: int, delay_s: float) -> asyncio.Server:
        got = self.got[port]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    now = time.monotonic()
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    body = await reader.readexactly(length) if length else b""
                    with self._lock:
                        got.append((now, body))
                    if delay_s:
                        await asyncio.sleep(delay_s)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
            writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", port)

    def taken(self, port: int) -> list[tuple[float, bytes]]:
        """What that endpoint received since it was last asked."""
        with self._lock:
            got = self.got[port]
            out, got[:] = list(got), []
        return out

    def close(self) -> None:
        async def stop() -> None:
            for s in self._servers:
                s.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# -- the hostile traffic, in a process of its own ------------------------------------------------
def hostile_traffic(conf: dict[str, Any], on: Any, ready: Any, stop: Any, out: Any) -> None:
    """Every kind of hostile traffic at once, while `on` is set, from `ready` until `stop`; reports
    what was sent and how the servers answered. It runs at the lowest CPU priority: an attacker's own
    CPU is on another machine, and on one machine the figure must measure what the servers do, not
    which process the scheduler favours (what it managed to send is counted and printed)."""
    idle_priority()
    out.put(_run(_hostile(conf, on, ready, stop)))


def idle_priority() -> None:
    """Run the calling process only on CPU time nothing else wants: Linux's SCHED_IDLE where there is
    one (a normal process that wakes up takes the core at once), else the lowest nice value (which
    still takes a core from a server that wakes up only after a while: docs/benchmarks.md)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


class Gate:
    """The bench's switch (`on`, a process-wide event: set while the hostile traffic is let go),
    mirrored on this event loop: `shut` is set while it is held, and once the traffic is done."""

    def __init__(self, on: Any, done: asyncio.Event) -> None:
        self.on, self.done = on, done
        self.open, self.shut = asyncio.Event(), asyncio.Event()
        self.shut.set()

    async def watch(self) -> None:
        while not self.done.is_set():
            if self.on.is_set():
                self.shut.clear()
                self.open.set()
            else:
                self.open.clear()
                self.shut.set()
            await asyncio.sleep(0.02)
        self.open.set()  # what waits for either wakes up, and sees it is done
        self.shut.set()

    async def let_go(self) -> bool:
        """Waits while the traffic is held; False once it is done."""
        await self.open.wait()
        return not self.done.is_set()


class RawHttp:
    """HTTP/1.1 as the hostile traffic needs it, for a fraction of httpx's CPU (which was half of what
    the attacker's process used): kept-alive connections to one local server, a request written
    whole (its body as it is, or in chunks), the answer read by its Content-Length (every answer
    of the servers carries one), its status returned. A connection idle for `IDLE_S` is let go
    before the server's keep-alive timeout (uvicorn's: 5 s) closes it, and a request that fails on
    a kept-alive connection before any answer is sent again once on a new one."""

    IDLE_S = 4.0

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, chunk: int = 0
    ) -> int:
        """The answer's status; OSError, ValueError or TimeoutError when there is none. `chunk`:
        send the body chunked, in pieces this long."""
        now = time.monotonic()
        while self._idle and now - self._idle[0][0] > self.IDLE_S:  # the oldest first
            self._idle.pop(0)[2].close()
        if self._idle:
            _, reader, writer = self._idle.pop()
            try:
                return await self._send(reader, writer, method, path, body, headers, chunk)
            except (OSError, asyncio.IncompleteReadError):
                pass  # closed by the server meanwhile: once more, on a new connection
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return await self._send(reader, writer, method, path, body, headers, chunk)

    async def _send(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str] | None,
        chunk: int,
    ) -> int:
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        head.append("Transfer-Encoding: chunked" if chunk else f"Content-Length: {len(body)}")
        try:
            async with asyncio.timeout(30.0):
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
                if not chunk:
                    writer.write(body)
                for i in range(0, len(body) if chunk else 0, chunk or 1):
                    piece = body[i : i + chunk]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                if chunk:
                    writer.write(b"0\r\n\r\n")
                await writer.drain()
                status, keep = await read_answer(reader)
        except BaseException:
            writer.close()
            raise
        if keep:
            self._idle.append((time.monotonic(), reader, writer))  # the newest is taken first
        else:
            writer.close()
        return status

    def close(self) -> None:
        for _, _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """An HTTP/1.1 answer with a Content-Length, read whole: its status, and whether the connection
    stays open after it. ValueError for anything else."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {head[0][:80]!r}")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    length = fields.get("content-length", "")
    if not length.isdigit():
        raise ValueError("an answer without a Content-Length")
    await reader.readexactly(int(length))
    return int(parts[1]), fields.get("connection", "").lower() != "close" and parts[0] != "HTTP/1.0"


async def _hostile(conf: dict[str, Any], on: Any, ready: Any, stop: Any) -> dict[str, Any]:
    cpu = time.process_time()
    attacks = set(conf["attacks"])
    tally: Counter[str] = Counter()
    lifetimes: list[float] = []
    done = asyncio.Event()
    gate = Gate(on, done)
    watcher = asyncio.create_task(gate.watch())
    http = [RawHttp(p) for p in conf["ports"]]
    try:
        pub = Publisher(Endpoint(conf["host"], conf["port"], False, conf["username"], conf["password"]), conf["client"])
        jobs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "poison": lambda: _poison(conf, pub, gate, tally),
            "oversized": lambda: _oversized(conf, http, gate, tally),
            "osmand": lambda: _osmand(conf, http, gate, tally),
            "slow-endpoint": lambda: _changes(conf, http, gate, tally),
        }
        tasks = [asyncio.create_task(job()) for name, job in jobs.items() if name in attacks]
        if "slow-clients" in attacks:
            tasks += [
                asyncio.create_task(
                    _slow_client(conf["ports"][k % len(conf["ports"])], k, conf, gate, tally, lifetimes)
                )
                for k in range(SLOW_CLIENTS)
            ]
        await asyncio.sleep(1.0)  # the publisher is connected
        ready.set()
        while not stop.is_set():  # noqa: ASYNC110  # a process-wide event has nothing to await
            await asyncio.sleep(0.05)
        done.set()
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pub.close(grace_s=2.0)
    finally:
        for h in http:
            h.close()
    await watcher
    return {"tally": dict(tally), "lifetimes": lifetimes, "cpu_s": time.process_time() - cpu}


async def _paced(gate: Gate, per_s: float) -> AsyncIterator[int]:
    """0, 1, 2, ... at `per_s` a second while the gate lets the traffic go, until it is done (no
    catching up on the time it was held)."""
    n = 0
    while await gate.let_go():
        start, k = time.monotonic(), 0
        while not gate.shut.is_set():
            yield n
            n, k = n + 1, k + 1
            await asyncio.sleep(max(0.0, start + k / per_s - time.monotonic()))


async def _poison(conf: dict[str, Any], pub: Publisher, gate: Gate, tally: Counter[str]) -> None:
    rng, marker, topics = random.Random(9), conf["marker"], conf["poison_topics"]
    big_every = max(1, round(POISON_PER_S / BIG_PER_S))
    async for n in _paced(gate, POISON_PER_S):
        topic = topics[n % len(topics)]
        if n % 2 == 0:
            payload, kind = nested_json(rng.randint(200, 1000), marker), "mqtt nested JSON"
        else:
            payload, kind = not_json(rng, rng.randint(64, 4096), marker), "mqtt not JSON"
        if pub.pending < 10_000:  # a broker that stopped reading does not make this process grow
            pub.publish(topic, payload, qos=1)
            tally[kind] += 1
        if n % big_every == 0 and pub.pending < 10_000:
            pub.publish(topic, big_payload(BIG_MQTT_BYTES, marker), qos=1)
            tally["mqtt 2 MB"] += 1


async def _answer(tally: Counter[str], what: str, request: Coroutine[Any, Any, int]) -> None:
    """Count how the servers answered a request: its status, or the error that came instead."""
    try:
        code = str(await request)
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
        code = type(exc).__name__
    tally[f"{what} -> {code}"] += 1


async def _oversized(conf: dict[str, Any], http: list[RawHttp], gate: Gate, tally: Counter[str]) -> None:
    size = conf["max_body_bytes"] + (1 << 20)
    body = b"[" + b" " * (size - 2) + b"]"
    path = f"/v1/ingest/{conf['tenant']}/native"
    async for n in _paced(gate, OVERSIZED_PER_S):
        server = http[n % len(http)]
        if n % 2 == 0:  # declared: refused from its Content-Length
            signed = {"X-Trackd-Signature": "sha256=" + "0" * 64}
            await _answer(tally, "oversized body, declared", server.request("POST", path, body, signed))
        else:  # chunked: refused once the limit is passed
            headers = {"Authorization": f"Bearer {conf['api_key']}", "Content-Type": "application/json"}
            sent = server.request("POST", "/v1/events", body, headers, chunk=1 << 16)
            await _answer(tally, "oversized body, chunked", sent)


async def _osmand(conf: dict[str, Any], http: list[RawHttp], gate: Gate, tally: Counter[str]) -> None:
    marker = conf["marker"]
    junk = b"x" * OSMAND_BIG_BYTES
    big_every = max(1, round(OSMAND_SMALL_PER_S / OSMAND_BIG_PER_S))
    pending: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        server = http[n % len(http)]
        if n % big_every == 0:
            body = b"id=%s-%d&lat=1&lon=2&junk=" % (marker.encode(), n) + junk
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            await _answer(tally, "osmand 1 MB", server.request("POST", "/v1/osmand", body, form))
        else:
            query = urlencode({"id": f"{marker}-{n}", "lat": "1", "lon": "2", "timestamp": str(int(time.time()))})
            await _answer(tally, "osmand unknown id", server.request("GET", f"/v1/osmand?{query}"))

    async for n in _paced(gate, OSMAND_SMALL_PER_S):
        if len(pending) < 64:
            task = asyncio.create_task(one(n))
            pending.add(task)
            task.add_done_callback(pending.discard)
    await asyncio.gather(*pending, return_exceptions=True)


async def _changes(conf: dict[str, Any], http: list[RawHttp], gate: Gate, tally: Counter[str]) -> None:
    """The second tenant's positions, from the start until the traffic is done, whether it is let go
    or held: a neighbour's ordinary ingest. While it is let go they are for the shipments its slow
    endpoint follows (each one a notification to it), while it is held for as many that nothing
    follows, so that the clean slices get the same ingest without the slow endpoint's deliveries."""
    path, secret = f"/v1/ingest/{conf['tenant']}/native", conf["secret"]
    followed, quiet = conf["trackings"], conf["quiet_trackings"]
    base = conf["base"]
    async for n in _steady(gate, CHANGES_PER_S):
        hostile = not gate.shut.is_set()
        trackings = followed if hostile else quiet
        body = orjson.dumps(
            {
                "occurred_at": base + n / 1000,
                "shipment": trackings[n % len(trackings)],
                "position": {"lat": 10 + n * 1e-4, "lon": 20 + n * 1e-4, "speed_kmh": 50.0},
            }
        )
        sent = http[n % len(http)].request("POST", path, body, signed_headers(secret, body))
        what = "second tenant's positions to the slow endpoint" if hostile else "second tenant's other positions"
        await _answer(tally, what, sent)


async def _steady(gate: Gate, per_s: float) -> AsyncIterator[int]:
    """0, 1, 2, ... at `per_s` a second, let go or held, until the traffic is done."""
    start, n = time.monotonic(), 0
    while not gate.done.is_set():
        yield n
        n += 1
        await asyncio.sleep(max(0.0, start + n / per_s - time.monotonic()))


async def _slow_client(
    port: int, k: int, conf: dict[str, Any], gate: Gate, tally: Counter[str], lifetimes: list[float]
) -> None:
    """One slow client, connected again each time the server lets it go, and closed while the
    traffic is held. Its path reads the body before anything else (a signed ingest webhook), so the
    server has to wait for it or give up."""
    kind = "head" if k % 2 == 0 else "body"
    first, trickle = slow_request(kind, f"127.0.0.1:{port}", f"/v1/ingest/{conf['tenant']}/native")
    while await gate.let_go():
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally["slow client could not connect"] += 1
            await asyncio.sleep(1.0)
            continue
        closed = asyncio.ensure_future(reader.read())  # whatever the server answers, then its close
        held = asyncio.ensure_future(gate.shut.wait())
        try:
            writer.write(first)
            tally[f"slow clients ({kind}) opened"] += 1
            while not closed.done() and not held.done():
                await asyncio.wait([closed, held], timeout=TRICKLE_S, return_when=asyncio.FIRST_COMPLETED)
                if not closed.done() and not held.done():
                    writer.write(trickle)
                    await writer.drain()
        except OSError:
            pass
        if closed.done():
            tally[f"slow clients ({kind}) let go by the server"] += 1
            lifetimes.append(time.monotonic() - opened)
        closed.cancel()
        held.cancel()
        writer.close()


# -- the runs ----------------------------------------------------------------------------------
def run(settings: Settings, args: argparse.Namespace, out: TextIO) -> tuple[str, list[Figure], list[str]]:
    receivers = Receivers()
    try:
        with BenchEnv(settings, out) as env:
            return _Runs(env, receivers, args).run()
    finally:
        receivers.close()


class _Runs:
    """The warm-up, the clean run and the hostile run against one set of servers."""

    def __init__(self, env: BenchEnv, receivers: Receivers, args: argparse.Namespace) -> None:
        self.env, self.receivers, self.args = env, receivers, args
        self.servers: list[Server] = []
        self.fast = 0  # the valid tenant's webhook receiver

    def run(self) -> tuple[str, list[Figure], list[str]]:
        env, args = self.env, self.args
        env.seed_shipments(args.shipments)
        other = env.add_tenant("other")
        marker = f"hostile-{env.run_id}"
        started_at = datetime.now(UTC)
        self.servers = env.start_servers("api,mqtt,worker", args.processes, extra={"TRACKD_WEBHOOK_ALLOW_PRIVATE": "1"})
        self.fast, slow = self.receivers.add(0.0), self.receivers.add(SLOW_ENDPOINT_S)
        ids = [sid for sid, _ in env.shipments]
        notified = args.notified or NOTIFIED_PER_S
        followed = watched(args.rate, len(ids), notified)
        self._subscribe(env.api_key, self.fast, ids[:followed])
        other_ids, other_trackings = self._other_shipments(other)
        self._subscribe(other.api_key, slow, other_ids[:HOSTILE_SHIPMENTS])
        # event n of a run occurs n ms after its base; the runs follow each other, an hour apart at least
        spacing = max(3600.0, math.ceil(args.rate * (2 * args.duration + args.warmup) / 1000) + 600.0)
        first_base = float(int(time.time()) - int(4 * spacing))
        hostile_conf = {
            **asdict(env.broker()),
            "client": f"bench-hostile-{env.run_id}",
            "ports": [s.port for s in self.servers],
            "marker": marker,
            "poison_topics": [f"{env.topic_prefix}trackd/{env.tenant}/devices/poison{i}/events" for i in range(5)]
            + [f"{env.topic_prefix}trackd/{other.name}/devices/h{i}/events" for i in range(5)]
            + [f"{env.topic_prefix}trackd/nobody-{env.run_id}/devices/x/events"],
            "tenant": other.name,
            "secret": other.ingest_secret,
            "api_key": other.api_key,
            "trackings": other_trackings[:HOSTILE_SHIPMENTS],
            "quiet_trackings": other_trackings[HOSTILE_SHIPMENTS:],
            "base": first_base,
            "max_body_bytes": env.settings.max_body_bytes,
            "attacks": attacks(args.attacks),
        }
        clean, hostile, run_notes = self._measured(first_base + spacing, hostile_conf)
        slow_got = len(self.receivers.taken(slow))
        rows = env.sql(
            queries.QUARANTINED_BY_TENANT,
            env.tenant_id,
            env.tenant_id,
            other.id,
        )
        quarantined = {bool(mine): int(n) for mine, n in rows}
        env.sql(
            queries.DELETE_RUN_SAMPLE,
            started_at,
            marker,
        )
        notes = [
            *run_notes,
            f"quarantined: {quarantined.get(True, 0):,} inputs of the valid tenant (poison from other devices), "
            f"{quarantined.get(False, 0):,} of the second tenant; the slow endpoint "
            f"({SLOW_ENDPOINT_S:.0f} s an answer) got {slow_got:,} requests",
            f"{args.processes} server process(es) with every role, {args.shipments:,} shipments, valid load "
            f"{args.rate:,.0f} events/s (half MQTT, half webhook); the valid tenant's receiver follows "
            f"{followed:,} of them, {notified:g} notifications/s (--notified)",
        ]
        span = len(slices(args.duration)) * SLICE_S / 2
        title = f"trackd bench hostile --rate {args.rate:.0f} ({span:.0f} s clean and {span:.0f} s hostile, by turns)"
        return title, figures(clean, hostile), notes

    def _subscribe(self, api_key: str, port: int, shipment_ids: list[str]) -> None:
        body = {"url": f"http://127.0.0.1:{port}/hook", "events": ["position"], "shipment_ids": shipment_ids}
        headers = {"Authorization": f"Bearer {api_key}"}
        httpx.post(self.servers[0].url + "/v1/webhooks", json=body, headers=headers, timeout=30).raise_for_status()

    def _other_shipments(self, other: BenchTenant) -> tuple[list[str], list[str]]:
        """The second tenant's shipments (twice `HOSTILE_SHIPMENTS`): their ids and tracking numbers."""
        trackings = [f"H{self.env.run_id.upper()}{i:04d}" for i in range(2 * HOSTILE_SHIPMENTS)]
        headers = {"Authorization": f"Bearer {other.api_key}"}
        ids = []
        with httpx.Client(base_url=self.servers[0].url, headers=headers, timeout=30) as http:
            for t in trackings:
                made = http.post("/v1/shipments", json={"tracking_number": t, "mode": "road"})
                made.raise_for_status()
                ids.append(str(made.json()["id"]))
        return ids, trackings

    def _valid_load(self, base: float, duration: float, start_at: float | None = None) -> dict[str, Any]:
        env = self.env
        conf = {
            **asdict(env.broker()),
            "run": f"{env.run_id}{int(base) % 100_000}",
            "trackings": [t for _, t in env.shipments],
            "base": base,
            "topic": f"{env.topic_prefix}trackd/{env.tenant}/devices/{{device}}/events",
            "tenant": env.tenant,
            "secret": env.ingest_secret,
            "ports": [s.port for s in self.servers],
            "rate": self.args.rate,
            "duration": duration,
            "start_at": start_at,
        }
        results: Any = CTX.Queue()
        proc = CTX.Process(target=paced_publisher, args=(conf, results), name="bench-valid")
        proc.start()
        try:
            res: dict[str, Any] = results.get(timeout=duration + 120)
        finally:
            _end(proc)
        return res

    def _stored(self, base: float, n: int) -> tuple[int, int]:
        """The valid tenant's stored events of a run: (MQTT, webhook), by the parity of their index."""
        rows = self.env.sql(
            queries.STORED_BY_PARITY,
            {"base_ms": round(base * 1000), "tenant": self.env.tenant_id, "base": base, "span": (n + 1) / 1000},
        )
        got = {int(parity): int(count) for parity, count in rows}
        return got.get(0, 0), got.get(1, 0)

    def _settle(self, base: float, res: dict[str, Any]) -> tuple[int, int]:
        """The run's stored events (MQTT, webhook), once they are all that was accepted, or after
        `SETTLE_S`, or once they stayed the same for `STALL_S`."""
        n, accepted = len(res["sent"]), (res["mqtt_acked"], res["webhook_acked"])
        stored, grew, deadline = self._stored(base, n), time.monotonic(), time.monotonic() + SETTLE_S
        while (stored[0] < accepted[0] or stored[1] < accepted[1]) and time.monotonic() < deadline:
            time.sleep(0.5)
            now = self._stored(base, n)
            if now != stored:
                stored, grew = now, time.monotonic()
            elif time.monotonic() - grew > STALL_S:
                break
        return stored

    def _checkpoint(self) -> tuple[str, int | None, bool]:
        """A checkpoint before a run, where the role may (superuser or pg_checkpoint), so that both
        runs start from one: after a checkpoint, the first change to each page writes all of it to
        the WAL, and PostgreSQL starts one for every few hundred MB of WAL, which could fall within
        one run and not the other. Returns the WAL position, the checkpoints so far, and whether
        this one was made."""
        made = True
        try:
            self.env.sql(queries.CHECKPOINT)
        except psycopg.Error:
            made = False
        return str(self.env.sql(queries.WAL_POSITION)[0][0]), self._checkpoints(), made

    def _checkpoints(self) -> int | None:
        """Checkpoints PostgreSQL has started (pg_stat_bgwriter, until PostgreSQL 17 moved them)."""
        try:
            return int(self.env.sql(queries.CHECKPOINTS_STARTED)[0][0])
        except psycopg.Error:
            return None

    def _wal_since(self, before: tuple[str, int | None, bool]) -> str:
        """What PostgreSQL wrote to its WAL since `before`, and the checkpoints it started meanwhile."""
        lsn, count, made = before
        written = int(self.env.sql(queries.WAL_SINCE, lsn)[0][0])
        now = self._checkpoints()
        note = "started after a checkpoint" if made else "no checkpoint before it (the role may not)"
        note += f", {written / 1e6:,.0f} MB of WAL"
        return note + (f", {now - count} checkpoint(s) during the run" if now is not None and count is not None else "")

    def _measured(self, base: float, hostile_conf: dict[str, Any]) -> tuple[Outcome, Outcome, list[str]]:
        """The measured run: the valid load for the slices of `slices`, the hostile traffic let go in
        the hostile ones; the clean and the hostile windows' outcomes, and notes."""
        env, plan = self.env, slices(self.args.duration)
        ids = [sid for sid, _ in env.shipments]
        ws_conf = {
            "ports": [s.port for s in self.servers],
            "api_key": env.api_key,
            "base": base,
            "groups": {"valid": [[{"shipments": ids[i : i + PER_SOCKET]}] for i in range(0, len(ids), PER_SOCKET)]},
        }
        ready, stop, ws_out = CTX.Event(), CTX.Event(), CTX.Queue()
        ws = CTX.Process(target=clients_process, args=(ws_conf, ready, stop, ws_out), name="bench-ws")
        on, h_ready, h_stop, h_out = CTX.Event(), CTX.Event(), CTX.Event(), CTX.Queue()
        bad = CTX.Process(target=hostile_traffic, args=(hostile_conf, on, h_ready, h_stop, h_out), name="bench-hostile")
        switch = _Switch(on, plan, self.servers, self.args.warmup)
        try:
            ws.start()
            _wait(ready, ws, 180, "websocket clients did not all subscribe")
            bad.start()
            _wait(h_ready, bad, 60, "the hostile traffic did not start")
            self.receivers.taken(self.fast)  # what came before this run is not its own
            wal = self._checkpoint()
            switch.start_at = time.monotonic() + LEAD_S
            switch.start()
            res = self._valid_load(base, self.args.warmup + len(plan) * SLICE_S, switch.start_at)
            switch.join()
            stored = self._settle(base, res)
            time.sleep(DRAIN_S)
            wal_note = self._wal_since(wal)
            h_stop.set()
            hostile_res: dict[str, Any] = h_out.get(timeout=60)
            stop.set()
            got: dict[str, Receipts] = ws_out.get(timeout=60)
        finally:
            on.clear()
            stop.set()
            h_stop.set()
            _end(ws)
            _end(bad)
        sent: array[float] = res["sent"]
        accepted = (res["mqtt_acked"], res["webhook_acked"])
        received = self.receivers.taken(self.fast)
        valid = got.get("valid", Receipts())
        spans = windows(switch.toggles, switch.end, GUARD_S)
        clean, hostile = (
            Outcome(
                side(sent, valid, 1, w, accepted[1], stored[1]),
                side(sent, valid, 0, w, accepted[0], stored[0]),
                tuple(tuple(g) for g in deliveries_by_window(sent, base, received, w)),
            )
            for w in spans
        )
        cpu = switch.usage_per_s()
        warm = (
            f"a warm-up of {self.args.warmup:.0f} s (not counted; clean, then hostile for its second half), then "
            if self.args.warmup
            else ""
        )
        notes = [
            f"{len(sent):,} valid events sent in {res['produced_s']:.0f} s: {warm}the hostile traffic let go in "
            f"{sum(plan)} of {len(plan)} slices of {SLICE_S:.0f} s (clean, hostile, hostile, clean, ...); "
            f"counted: events sent in {sum(b - a for a, b in spans[0]):.0f} s of clean windows ({GUARD_S:.0f} s "
            f"left out after and before the hostile traffic) and {sum(b - a for a, b in spans[1]):.0f} s of "
            "hostile ones",
            f"webhook {accepted[1]:,} accepted, {stored[1]:,} stored; MQTT {accepted[0]:,} acknowledged by the "
            f"broker, {stored[0]:,} stored; failed requests: {res['errors'] or 'none'}; {len(received):,} "
            f"notification webhooks received; CPU s/s, clean and hostile: servers {cpu[False][0]:.2f} and "
            f"{cpu[True][0]:.2f}, the machine {cpu[False][1]:.2f} and {cpu[True][1]:.2f} of {os.cpu_count()}; "
            f"every task waiting on I/O: {cpu[False][2] * 1000:.0f} and {cpu[True][2] * 1000:.0f} ms/s; "
            f"valid load {res['cpu_s']:.1f} s, hostile traffic {hostile_res['cpu_s']:.1f} s; PostgreSQL: {wal_note}",
        ]
        origin = switch.toggles[0][0] if switch.toggles else 0.0
        notes.append(
            "send -> stored p99 (ms) of each window, C clean, H hostile, by its start (s): "
            + by_window(sent, valid, spans, origin)
        )
        pooled = [
            f"{name} {c.pooled_p99_ms or 0:.0f} and {h.pooled_p99_ms or 0:.0f} ms"
            for name, c, h in (("webhook", clean.webhook, hostile.webhook), ("MQTT", clean.mqtt, hostile.mqtt))
        ]
        flat = [percentile([v for g in o.deliveries_ms for v in g], 0.99) or 0.0 for o in (clean, hostile)]
        notes.append(
            "the figures' p99s are the median of the windows' p99s; the p99s of all the events of the clean "
            f"and of the hostile windows pooled: {', '.join(pooled)}, notifications {flat[0]:.0f} and "
            f"{flat[1]:.0f} ms ({sum(map(len, clean.deliveries_ms)):,} and "
            f"{sum(map(len, hostile.deliveries_ms)):,} notifications)"
        )
        notes.append("ms of each slice in which every task waited on I/O: " + switch.io_by_slice())
        tally: dict[str, int] = hostile_res["tally"]
        notes.append("hostile traffic: " + ", ".join(f"{k} {v:,}" for k, v in sorted(tally.items())))
        lives: list[float] = hostile_res["lifetimes"]
        if lives:
            median = percentile(lives, 0.5) or 0.0
            notes.append(f"slow clients let go by the server after {median:.1f} s (median), {max(lives):.1f} s at most")
        return clean, hostile, notes


class _Switch(threading.Thread):
    """From `start_at`: the warm-up (`warmup_s`, not counted: its first half clean, its second half
    hostile, so that every path, pool and cache the hostile traffic uses is warm as well), then the
    hostile traffic let go (`on`) in the hostile slices of `plan`. Records when it switched in the
    plan ((time, hostile from then on)), when the plan ended, and the CPU used."""

    def __init__(self, on: Any, plan: list[bool], servers: list[Server], warmup_s: float) -> None:
        super().__init__(name="bench-switch", daemon=True)
        self.on, self.plan, self.servers, self.warmup_s = on, plan, servers, warmup_s
        self.start_at = self.end = 0.0
        self.toggles: list[tuple[float, bool]] = []
        # the servers' CPU s, the machine's, and its I/O stall s (`usage`), at each toggle and at the end
        self.used: list[tuple[float, float, float]] = []

    def run(self) -> None:
        if self.warmup_s:
            time.sleep(max(0.0, self.start_at + self.warmup_s / 2 - time.monotonic()))
            self.on.set()
        begin = self.start_at + self.warmup_s
        for k, hostile in enumerate(self.plan):
            time.sleep(max(0.0, begin + k * SLICE_S - time.monotonic()))
            self.used.append(usage(self.servers))
            if hostile:
                self.on.set()
            else:
                self.on.clear()
            self.toggles.append((time.monotonic(), hostile))
        time.sleep(max(0.0, begin + len(self.plan) * SLICE_S - time.monotonic()))
        self.on.clear()
        self.end = time.monotonic()
        self.used.append(usage(self.servers))

    def usage_per_s(self) -> dict[bool, tuple[float, ...]]:
        """Per second, in the clean slices (False) and in the hostile ones (True): the servers' CPU
        seconds, the whole machine's (every core), and the seconds every task waited on I/O."""
        used = {False: [0.0, 0.0, 0.0], True: [0.0, 0.0, 0.0]}
        took = {False: 0.0, True: 0.0}
        ends = [t for t, _ in self.toggles[1:]] + [self.end]
        for k, (at, hostile) in enumerate(self.toggles):
            for j in range(3):
                used[hostile][j] += self.used[k + 1][j] - self.used[k][j]
            took[hostile] += ends[k] - at
        return {h: tuple(u / took[h] if took[h] else 0.0 for u in used[h]) for h in used}

    def io_by_slice(self) -> str:
        """Each slice's milliseconds in which every task waited on I/O, `C` or `H` after it."""
        return " ".join(
            f"{(self.used[k + 1][2] - self.used[k][2]) * 1000:.0f}{'H' if hostile else 'C'}"
            for k, (_at, hostile) in enumerate(self.toggles)
        )


def _wait(event: Any, proc: Any, timeout_s: float, what: str) -> None:
    opened = time.monotonic()
    while not event.wait(0.5):
        if not proc.is_alive() or time.monotonic() - opened > timeout_s:
            raise TimeoutError(f"{what} (see the traceback above)")


def _end(proc: Any) -> None:
    """A load process that has reported ends by itself; one that has not by then is stopped."""
    proc.join(10)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
