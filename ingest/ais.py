"""The ais role: vessel positions from an NMEA AIS feed, fanned out to the shipments on each vessel.

`TRACKD_AIS_URL` is a feed to connect to (`tcp://host:port`, reconnected with backoff) or a port to
listen on (`udp://:port` on loopback, `udp://host:port` on that address). A sea leg's `vessel` links
a shipment to a vessel by MMSI, or by IMO number once AIS static data (type 5) has named that
vessel's MMSI (kept in the `vessels` table; an IMO number's MMSI changes at most once per
`RESOLVE_S`, and one writer records what was learnt at most once per `RESOLVE_S`).

The linked vessels are kept in memory (`Reader.set_links`), read again when a notification says
they changed and once a minute, so a sentence costs no query: a vessel no one follows costs a
checksum and a set lookup or two. A linked vessel's position (types 1, 2, 3, 18, 19, 27) becomes
one canonical position event per shipment on it, naming the shipment by id, at most one per
vessel per `TRACKD_AIS_MIN_INTERVAL_S` of receipt time, written through the pipeline like any
other event.
Input that is not AIS is skipped and counted by outcome in `trackd_ais_lines_total` and
`trackd_ais_messages_total`; nothing a feed sends can stop the role or grow its memory unbounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from ingest.ais_codec import (
    POSITION_TYPES,
    BadLine,
    LineSplitter,
    PositionReport,
    Reassembler,
    Sentence,
    StaticReport,
    decode,
    parse,
    peek,
    peek_imo,
    report_time,
)
from ingest.pipeline import Pipeline
from trackd import store, vessel_store
from trackd.codes import EventKind
from trackd.metrics import REGISTRY, Bounded
from trackd.model import Event
from trackd.settings import Settings
from trackd.store import Tenant
from trackd.vessel_store import Link

log = logging.getLogger("trackd.ais")

SOURCE = "ais"
RECONNECT_S = (0.5, 30.0)  # the first wait after a lost feed, and the longest
CONNECT_TIMEOUT_S = 10.0
IDLE_S = 120.0  # a TCP feed silent this long is taken for dead and connected again
READ_BYTES = 65536
REFRESH_S = 60.0  # the links are read again at least this often
DEBOUNCE_S = 0.2  # after a change: changes within this are covered by one read
FLUSH_S = 0.1  # events gathered this long are written together
MAX_PENDING = 20_000  # events waiting to be written; past this, positions are dropped (and counted)
RESOLVE_S = 60.0  # an IMO number's MMSI changes at most this often; what was learnt is written at most this often
MAX_LEARNT = 10_000  # IMO numbers whose learnt MMSI waits to be written; past this, new ones are not written

LINES = Bounded(
    PromCounter(
        "trackd_ais_lines",
        "AIS input lines: sentence (checked), overlong, malformed, checksum",
        ["outcome"],
        registry=REGISTRY,
    ),
    ["outcome"],
)
MESSAGES = Bounded(
    PromCounter(
        "trackd_ais_messages",
        "AIS messages: kept, limited (per-vessel interval), unlinked, no_position, static, other_type,"
        " incomplete (fragments dropped), undecodable; dropped (write queue full) and unstored (write failed) count"
        " positions",
        ["outcome"],
        registry=REGISTRY,
    ),
    ["outcome"],
)
LINKED = Gauge("trackd_ais_linked_vessels", "Vessels (MMSIs) linked to shipments under way", registry=REGISTRY)
CONNECTED = Gauge("trackd_ais_connected", "1 while the ais role has its feed", registry=REGISTRY)


@dataclass(slots=True)
class Output:
    """What some input yielded: events by tenant, and MMSIs that static data gave linked IMOs."""

    events: dict[int, tuple[Tenant, list[Event]]] = field(default_factory=dict)
    resolved: list[tuple[int, int, str | None]] = field(default_factory=list)  # (imo, mmsi, name)


class Reader:
    """Pure: bytes of a feed in, events for the linked shipments out (no I/O; times passed in).

    `counts` gathers the outcomes of lines and messages until the caller takes them."""

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self.counts: Counter[str] = Counter()
        self.splitter = LineSplitter()
        self.reassembler = Reassembler()
        self.imos: dict[int, int | None] = {}  # IMO number of a leg without MMSI -> the MMSI known for it
        self.names: dict[int, str] = {}  # linked MMSI -> the name its static data gave
        self._by_mmsi: dict[int, list[Link]] = {}  # the links of legs that name an MMSI
        self._by_imo: dict[int, list[Link]] = {}  # the links of legs that name only an IMO number
        self._imos_of: dict[int, set[int]] = {}  # MMSI -> the IMO numbers it is known to send
        self._learnt: dict[int, int] = {}  # IMO -> MMSI learnt here that the links do not show yet
        self._changed: dict[int, float] = {}  # IMO -> when its MMSI was learnt here (monotonic)
        self._kept: dict[int, float] = {}  # MMSI -> when its last kept position was received (monotonic)

    def set_links(self, links: list[Link]) -> None:
        by_mmsi: dict[int, dict[tuple[int, str], Link]] = {}
        by_imo: dict[int, dict[tuple[int, str], Link]] = {}
        stored: dict[int, int | None] = {}
        for link in links:
            key = (link.tenant_id, link.shipment_id)
            if link.mmsi is not None:
                by_mmsi.setdefault(link.mmsi, {})[key] = link
            elif link.imo is not None:
                by_imo.setdefault(link.imo, {})[key] = link
                stored[link.imo] = link.imo_mmsi
        self._by_mmsi = {m: list(v.values()) for m, v in by_mmsi.items()}
        self._by_imo = {i: list(v.values()) for i, v in by_imo.items()}
        self._learnt = {i: m for i, m in self._learnt.items() if i in stored and stored[i] != m}
        self._changed = {i: t for i, t in self._changed.items() if i in stored}
        self.imos = {i: self._learnt.get(i, m) for i, m in stored.items()}
        self._imos_of = {}
        for imo, mmsi in self.imos.items():
            if mmsi is not None:
                self._imos_of.setdefault(mmsi, set()).add(imo)
        self._kept = {m: t for m, t in self._kept.items() if self.linked(m)}
        self.names = {m: n for m, n in self.names.items() if self.linked(m)}

    def linked(self, mmsi: int) -> bool:
        """Whether a shipment follows the vessel sending as `mmsi`."""
        return mmsi in self._by_mmsi or mmsi in self._imos_of

    @property
    def linked_vessels(self) -> int:
        return len(self._by_mmsi.keys() | self._imos_of.keys())

    def links_of(self, mmsi: int) -> list[Link]:
        """The shipments on the vessel sending as `mmsi`, each once."""
        found = {(link.tenant_id, link.shipment_id): link for link in self._by_mmsi.get(mmsi, ())}
        for imo in sorted(self._imos_of.get(mmsi, ())):
            for link in self._by_imo[imo]:
                found.setdefault((link.tenant_id, link.shipment_id), link)
        return list(found.values())

    def restart(self) -> None:
        """A new connection: the half line the last one ended with is not joined to its first."""
        self.splitter = LineSplitter()

    def feed(self, data: bytes, now: float, received_at: datetime) -> Output:
        """Bytes of a stream (TCP), at monotonic time `now`, received at `received_at`."""
        before = self.splitter.overlong
        out = self._lines(self.splitter.feed(data), now, received_at)
        self.counts["overlong"] += self.splitter.overlong - before
        return out

    def feed_datagram(self, data: bytes, now: float, received_at: datetime) -> Output:
        """One datagram (UDP): its own lines, the last one ended by the datagram's end."""
        splitter = LineSplitter()
        lines = splitter.feed(data) + splitter.flush()
        self.counts["overlong"] += splitter.overlong
        return self._lines(lines, now, received_at)

    def _lines(self, lines: list[bytes], now: float, received_at: datetime) -> Output:
        out = Output()
        dropped = self.reassembler.dropped
        for line in lines:
            try:
                sentence = parse(line)
            except BadLine as bad:
                self.counts[bad.outcome] += 1
                continue
            self.counts["sentence"] += 1
            parts = self.reassembler.add(sentence, now)
            if parts is not None:
                self._message(parts, now, received_at, out)
        self.reassembler.expire(now)
        self.counts["incomplete"] += self.reassembler.dropped - dropped
        return out

    def _message(self, parts: list[Sentence], now: float, received_at: datetime, out: Output) -> None:
        head = peek(parts[0].payload)
        if head is None:
            self.counts["undecodable"] += 1
            return
        msg_type, mmsi = head
        if msg_type in POSITION_TYPES or msg_type == 24:
            wanted = self.linked(mmsi)
        elif msg_type == 5:
            wanted = self.linked(mmsi) or peek_imo(parts[0].payload) in self.imos
        else:
            self.counts["other_type"] += 1
            return
        if not wanted:
            self.counts["unlinked"] += 1
            return
        try:
            report = decode(parts)
        except BadLine as bad:
            self.counts[bad.outcome] += 1
            return
        if isinstance(report, StaticReport):
            self._static(report, now, out)
        elif isinstance(report, PositionReport):
            self._position(report, now, received_at, out)
        else:
            self.counts["no_position"] += 1

    def _static(self, report: StaticReport, now: float, out: Output) -> None:
        """Keep a linked vessel's name; learn the MMSI of a linked IMO number (at most once per
        `RESOLVE_S` for each: a feed that keeps changing it cannot keep the links churning)."""
        self.counts["static"] += 1
        imo = report.imo
        if imo is not None and imo in self.imos and self.imos[imo] != report.mmsi:
            last = self._changed.get(imo)
            if last is None or now - last >= RESOLVE_S:
                self._changed[imo] = now
                self._learnt[imo] = report.mmsi
                self._move(imo, report.mmsi)
                out.resolved.append((imo, report.mmsi, report.name))
        if report.name and self.linked(report.mmsi):
            self.names[report.mmsi] = report.name

    def _move(self, imo: int, mmsi: int) -> None:
        old = self.imos[imo]
        if old is not None:
            imos = self._imos_of[old]
            imos.discard(imo)
            if not imos:
                del self._imos_of[old]
        self.imos[imo] = mmsi
        self._imos_of.setdefault(mmsi, set()).add(imo)

    def _position(self, report: PositionReport, now: float, received_at: datetime, out: Output) -> None:
        last = self._kept.get(report.mmsi)
        if last is not None and now - last < self.min_interval_s:
            self.counts["limited"] += 1
            return
        self._kept[report.mmsi] = now
        self.counts["kept"] += 1
        at = report_time(report, received_at)
        name = self.names.get(report.mmsi)
        for link in self.links_of(report.mmsi):
            raw = {"mmsi": report.mmsi, "imo": link.imo, "name": name, "msg_type": report.msg_type}
            event = Event(
                event_id=f"ais:{report.mmsi}:{int(at.timestamp())}:{link.shipment_id}",
                source=SOURCE,
                occurred_at=at,
                kind=EventKind.POSITION,
                position=report.position,
                shipment_id=link.shipment_id,
                raw={**raw, "nmea": list(report.nmea)},
            )
            out.events.setdefault(link.tenant_id, (Tenant(link.tenant_id, link.tenant), []))[1].append(event)


def endpoint(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a `TRACKD_AIS_URL` (checked by the settings); UDP's host defaults to
    loopback (`udp://0.0.0.0:port` listens on every interface)."""
    u = urlsplit(url)
    assert u.port is not None
    return u.scheme, u.hostname or ("127.0.0.1" if u.scheme == "udp" else ""), u.port


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes], None]) -> None:
        self.received = received

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received(data)


class AisIngester:
    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        assert settings.ais_url, "the ais role needs TRACKD_AIS_URL"
        self.scheme, self.host, self.port = endpoint(settings.ais_url)
        self.dsn = settings.dsn()
        self.pipeline = pipeline
        self.reader = Reader(settings.ais_min_interval_s)
        self.linked = asyncio.Event()  # the links have been read once
        self.reading = asyncio.Event()  # the feed is connected (TCP) or its port bound (UDP)
        self._pending: dict[int, tuple[Tenant, list[Event]]] = {}
        self._waiting = 0
        self._wake = asyncio.Event()
        self._delivered = False  # the current connection has delivered data (backoff starts over)
        self._learnt: dict[int, tuple[int, str | None]] = {}  # IMO -> (MMSI, name) waiting to be written
        self._learning = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(
                vessel_store.follow_links(self.dsn, self._links, REFRESH_S, DEBOUNCE_S), name="ais-links"
            ),
            asyncio.create_task(self._feed(), name="ais-feed"),
            asyncio.create_task(self._write(), name="ais-write"),
            asyncio.create_task(self._record(), name="ais-vessels"),
        ]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await self._flush()
            CONNECTED.set(0)

    def _links(self, links: list[Link]) -> None:
        self.reader.set_links(links)
        LINKED.set(self.reader.linked_vessels)
        self.linked.set()

    async def _feed(self) -> None:
        """Read the feed for ever: a lost TCP feed is connected again with backoff, reset once it
        has delivered; a UDP port that cannot be bound is tried again likewise."""
        backoff = RECONNECT_S[0]
        where = f"{self.scheme}://{self.host}:{self.port}"
        while True:
            self._delivered = False
            try:
                await (self._udp() if self.scheme == "udp" else self._tcp())
                reason = "closed by the feed"
            except (OSError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # never give up on the feed: log it and read again
                reason = type(exc).__name__
                log.exception("AIS feed failed")
            finally:
                CONNECTED.set(0)
                self.reading.clear()
            if self._delivered:
                backoff = RECONNECT_S[0]
            log.warning("AIS feed %s: %s; again in %.1f s", where, reason, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_S[1])

    async def _tcp(self) -> None:
        """One connection, until the feed closes it or is silent for IDLE_S."""
        stream, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S)
        CONNECTED.set(1)
        self.reading.set()
        log.info("AIS feed connected: tcp://%s:%d", self.host, self.port)
        self.reader.restart()
        try:
            while data := await asyncio.wait_for(stream.read(READ_BYTES), IDLE_S):
                self._delivered = True
                self._take(self.reader.feed(data, time.monotonic(), self.pipeline.clock()))
                await asyncio.sleep(0)  # a feed that floods does not hold the event loop
        finally:
            writer.close()

    async def _udp(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._datagram), local_addr=(self.host, self.port)
        )
        CONNECTED.set(1)
        self.reading.set()
        log.info("AIS feed listening: udp://%s:%d", self.host, self.port)
        try:
            await asyncio.Future()  # until cancelled
        finally:
            transport.close()

    def _datagram(self, data: bytes) -> None:
        self._take(self.reader.feed_datagram(data, time.monotonic(), self.pipeline.clock()))

    def _take(self, out: Output) -> None:
        for tenant, events in out.events.values():
            if self._waiting + len(events) > MAX_PENDING:
                self.reader.counts["dropped"] += len(events)
                continue
            self._pending.setdefault(tenant.id, (tenant, []))[1].extend(events)
            self._waiting += len(events)
            self._wake.set()
        for imo, mmsi, name in out.resolved:
            if imo in self._learnt or len(self._learnt) < MAX_LEARNT:
                self._learnt[imo] = (mmsi, name)
                self._learning.set()
        for outcome, n in self.reader.counts.items():
            (LINES if outcome in ("sentence", "overlong", "malformed", "checksum") else MESSAGES).labels(outcome).inc(n)
        self.reader.counts.clear()

    async def _record(self) -> None:
        """The one writer of learnt MMSIs: all that waits, in one statement (one notification to
        every ais process), then nothing for `RESOLVE_S`."""
        while True:
            await self._learning.wait()
            self._learning.clear()
            learnt, self._learnt = self._learnt, {}
            try:
                async with store.transaction(self.pipeline.pool) as conn:
                    await vessel_store.record_mmsis(conn, learnt)
                for imo, (mmsi, _) in learnt.items():
                    log.info("AIS: IMO %d is MMSI %d", imo, mmsi)
            except Exception as exc:  # written with the next ones
                log.warning("AIS: could not record the MMSIs of %d IMO numbers: %s", len(learnt), exc)
                for imo, pair in learnt.items():  # what was learnt since is newer
                    if imo in self._learnt or len(self._learnt) < MAX_LEARNT:
                        self._learnt.setdefault(imo, pair)
                self._learning.set()
            await asyncio.sleep(RESOLVE_S)

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_S)
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending, self._waiting = self._pending, {}, 0
        await asyncio.gather(*(self._store(tenant, events) for tenant, events in batch.values()))

    async def _store(self, tenant: Tenant, events: list[Event]) -> None:
        try:
            await self.pipeline.store_events(tenant, events, SOURCE)
        except Exception as exc:  # AIS is sent again every few seconds: the next position will do
            MESSAGES.labels("unstored").inc(len(events))
            log.warning("AIS: %d positions for tenant %s not stored: %s", len(events), tenant.name, exc)
