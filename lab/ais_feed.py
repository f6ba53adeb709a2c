"""A simulated AIS feed: NMEA sentences (encoded with pyais) served over loopback TCP, as an AIS
receiver or a feed provider serves them, for the ais role of `trackd serve --roles ais`.

`AisFeed` is the server (its own thread and event loop): whatever `send` gets goes to every
connected client; `drop` closes their connections (a feed that goes away). `Voyage` moves a vessel
along the sea lane between two ports and `run_voyages` sends every vessel's position report (type 1)
and, now and then, its static data (type 5) the way a vessel's transponder does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pyais import encode_dict

from trackd import geo, routing
from trackd.codes import Mode
from trackd.geo import LatLon

STATIC_EVERY = 6  # position reports between two static reports of a vessel


def tag(line: str, at: datetime) -> str:
    """`line` behind an NMEA 4 tag block carrying the receiver's time (`c:`, seconds since 1970)."""
    body = f"c:{int(at.timestamp())}"
    checksum = 0
    for b in body.encode():
        checksum ^= b
    return f"\\{body}*{checksum:02X}\\{line}"


def position_report(
    mmsi: int, lat: float, lon: float, *, speed_kn: float = 0.0, course: float = 0.0, at: datetime | None = None
) -> list[str]:
    """A class A position report (type 1), behind a tag block with `at` when given."""
    fields: dict[str, str | int | float | bytes | bool] = {
        "type": 1,
        "mmsi": mmsi,
        "lat": lat,
        "lon": lon,
        "speed": speed_kn,
        "course": course,
        "heading": round(course) % 360,
        "second": at.second if at is not None else 60,
    }
    lines = encode_dict(fields, talker_id="AI", sentence_type="VDM")
    return [tag(x, at) for x in lines] if at is not None else lines


def static_report(mmsi: int, imo: int, name: str, seq_id: int = 1) -> list[str]:
    """Static and voyage data (type 5): two sentences sharing sequential id `seq_id`."""
    return encode_dict(
        {"type": 5, "mmsi": mmsi, "imo": imo, "shipname": name}, talker_id="AI", sentence_type="VDM", seq_id=seq_id
    )


class AisFeed:
    """A loopback TCP server that sends NMEA lines to every client (asyncio, in a thread of its own)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.accepted = 0  # connections so far
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ais-feed", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> int:
        """Listen; returns the port."""
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._client, self.host, self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def clients(self) -> int:
        return len(self._writers)

    def send(self, lines: list[str]) -> None:
        data = "".join(line + "\r\n" for line in lines).encode()
        self._loop.call_soon_threadsafe(self._write, data)

    def drop(self) -> None:
        """Close every client's connection, as a feed that goes away does."""
        self._call(self._drop())

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._call(self._drop())
            self._call(self._server.wait_closed())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: object) -> asyncio.Server:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    def _write(self, data: bytes) -> None:
        for w in list(self._writers):
            w.write(data)

    async def _drop(self) -> None:
        for w in list(self._writers):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            while await reader.read(4096):  # a client sends nothing; this waits for it to go
                pass
        finally:
            self._writers.discard(writer)
            writer.close()


@dataclass
class Voyage:
    """A vessel sailing the sea lane from `origin` to `destination` between two times."""

    mmsi: int
    imo: int
    name: str
    origin: LatLon
    destination: LatLon
    depart_at: datetime
    arrive_at: datetime
    path: tuple[LatLon, ...] = field(default=())
    reports: int = 0

    def __post_init__(self) -> None:
        if not self.path:
            self.path = routing.path_between(Mode.SEA, self.origin, self.destination)

    def where(self, at: datetime) -> tuple[LatLon, float, float]:
        """(position, speed in knots, course) at `at`: at a port before and after the voyage."""
        span = (self.arrive_at - self.depart_at).total_seconds()
        fraction = min(max((at - self.depart_at).total_seconds() / span, 0.0), 1.0) if span > 0 else 1.0
        total = geo.path_length_km(self.path)
        goal, walked = fraction * total, 0.0
        for a, b in zip(self.path, self.path[1:], strict=False):
            step = geo.haversine_km(a, b)
            if walked + step >= goal and step > 0:
                sailing = 0 < fraction < 1
                speed_kn = total / (span / 3600) / 1.852 if sailing else 0.0
                return geo.interpolate(a, b, (goal - walked) / step), speed_kn, geo.bearing_deg(a, b)
            walked += step
        return self.path[-1], 0.0, 0.0


def voyage_sentences(voyages: list[Voyage], at: datetime) -> list[str]:
    """Every vessel's position report at `at`, with its static data every STATIC_EVERY reports."""
    lines: list[str] = []
    for i, v in enumerate(voyages):
        if v.reports % STATIC_EVERY == 0:
            lines += static_report(v.mmsi, v.imo, v.name, seq_id=i % 10)
        v.reports += 1
        (lat, lon), speed_kn, course = v.where(at)
        lines += position_report(v.mmsi, lat, lon, speed_kn=speed_kn, course=course % 360, at=at)
    return lines


async def run_voyages(
    feed: AisFeed, voyages: list[Voyage], clock: Callable[[], datetime], stop: asyncio.Event, every_s: float = 10.0
) -> None:
    """Send the vessels' reports every `every_s` seconds (at the time `clock` tells) until `stop`."""
    while not stop.is_set():
        feed.send(voyage_sentences(voyages, clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
