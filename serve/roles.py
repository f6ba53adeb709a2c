"""Resources shared by the roles of one process, and `serve`: api, mqtt, worker and ais together.

Any number of processes may run any roles against the same database, Redis and broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from api.deps import AppState
from ingest.mqtt import MqttIngester
from ingest.pipeline import Pipeline
from serve.app import create_app
from serve.http import http_protocol
from serve.worker import Worker
from stream.hub import Hub
from trackd import db
from trackd.assessment import Evaluator
from trackd.bus import Bus, RedisBus
from trackd.relay import Relay
from trackd.settings import Settings

log = logging.getLogger("trackd")

_SECRET_QUERY = re.compile(r"([?&](?:token|api_key)=)[^&\s\"']+")


class RedactSecrets(logging.Filter):
    """Browsers put the API key in the websocket URL (`?token=`), and uvicorn and websockets log
    handshake URLs: the key is replaced before any handler writes the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRET_QUERY.sub(r"\1[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_logs() -> None:
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())


@dataclass
class Resources:
    """What one process opens for its roles: the shared core state, the ingest pipeline and, for
    the api role, the stream hub."""

    state: AppState
    pipeline: Pipeline
    hub: Hub | None = None
    owns_bus: bool = True

    @classmethod
    async def open(cls, settings: Settings, *, with_hub: bool, bus: Bus | None = None) -> Resources:
        pool = await db.open_pool(settings.dsn(), settings.pool_size)
        owns_bus = bus is None
        if bus is None:
            bus = RedisBus.from_url(settings.redis(), settings.redis_prefix, deployment=await db.read_deployment(pool))
        relay = Relay(pool, bus, defer=with_hub)  # see trackd/relay.py: the api role relays last
        await relay.start()
        evaluator = Evaluator(settings)
        # The write path on connections of its own, with generic plans (trackd/db.py GENERIC_PLANS);
        # they open as the writes need them, up to as many as the main pool's.
        write_pool = await db.open_pool(settings.dsn(), settings.pool_size, generic_plans=True)
        pipeline = Pipeline(write_pool, evaluator)
        guest_pool = await db.open_pool(settings.dsn(), settings.guest_pool_size, autocommit=True)
        state = AppState(
            settings=settings,
            pool=pool,
            bus=bus,
            relay=relay,
            evaluator=evaluator,
            clock=pipeline.clock,
            guest_pool=guest_pool,
            write_pool=write_pool,
        )
        hub = None
        if with_hub:
            hub = Hub(bus, tick_s=settings.stream_tick_ms / 1000)
            await hub.start()
        return cls(state, pipeline, hub, owns_bus)

    async def close(self) -> None:
        s = self.state
        if self.hub is not None:
            await self.hub.stop()
        await s.relay.stop()
        if self.owns_bus:
            await s.bus.close()
        for extra in (s.guest_pool, s.write_pool):
            if extra is not None:
                await extra.close()
        await s.pool.close()


GC_YOUNG_EVERY_S = 0.25  # a pass over what was made since the last one
GC_EVERY_S = 1.0  # a pass over all that is not frozen (a second's survivors); what survives is frozen
GC_THAW_EVERY_S = 3600.0  # a pass over the whole heap, frozen objects included


def tune_gc() -> None:
    """A server keeps many long-lived objects (decoded states, the stream's clients) and the
    cyclic collector's automatic passes stopped the event loop for tens of milliseconds, several
    times a second under load (the e2e tail). What startup made is moved out of its way, and the
    automatic collector is off: `collect_garbage` runs the passes instead."""
    gc.collect()
    gc.freeze()
    gc.disable()


def collect_once(young: bool, thaw: bool) -> tuple[str, int]:
    """One pass of the cyclic collector (see `collect_garbage`): its kind and the objects it freed."""
    if young:
        return "young", gc.collect(1)
    if thaw:
        gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    return ("whole heap" if thaw else "full"), found


async def collect_garbage(stop: asyncio.Event) -> None:
    """The cyclic collector's passes, run here instead of automatically. A pass stops the event loop
    for as long as it takes to walk the objects it looks at, so each looks at as few as will do:
    - every `GC_YOUNG_EVERY_S`, the young generations, what was made since the last pass and is
      still alive (a few milliseconds): it frees the cycles that die young, such as a request's;
    - every `GC_EVERY_S`, every object that is not frozen, for cycles among older ones; what
      survives is frozen, so that the next such pass walks only what came after it. Its pause
      grows with the time between passes (the states decoded since): with 10,000 shipments at 500
      events/s, 9-47 ms every 10 s, and 2.4 ms (median; p99 7 ms) every second, where one walk of
      the whole heap took 85-175 ms. On a p99 of 20-40 ms the 10 s pass set the tail wherever it
      fell;
    - every `GC_THAW_EVERY_S`, the whole heap, frozen objects included, so that a cycle that died
      after it was frozen (a closed connection's) is freed within the hour.
    Reference counting frees everything else, frozen or not, at once."""
    full = thawed = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), GC_YOUNG_EVERY_S)
        started, now = time.perf_counter(), time.monotonic()
        thaw = now - thawed >= GC_THAW_EVERY_S
        kind, found = collect_once(young=not thaw and now - full < GC_EVERY_S, thaw=thaw)
        if kind != "young":
            full = now
            thawed = now if thaw else thawed
        log.debug("garbage collection (%s): %d objects in %.1f ms", kind, found, (time.perf_counter() - started) * 1000)


async def run_roles(
    settings: Settings,
    roles: list[str],
    *,
    bus: Bus | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the given roles in this process until `stop` is set (or SIGINT/SIGTERM)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    res = await Resources.open(settings, with_hub="api" in roles, bus=bus)
    tune_gc()
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(collect_garbage(stop), name="gc")]
    server: uvicorn.Server | None = None
    try:
        if "mqtt" in roles:
            ingester = MqttIngester(settings, res.pipeline)
            res.state.extras["mqtt_subscribed"] = ingester.subscribed
            tasks.append(asyncio.create_task(ingester.run(stop), name="mqtt"))
        if "worker" in roles:
            tasks.append(asyncio.create_task(Worker(res.state).run(stop), name="worker"))
        if "ais" in roles:
            from ingest.ais import AisIngester  # imported here: pyais takes about half a second to import

            tasks.append(asyncio.create_task(AisIngester(settings, res.pipeline).run(stop), name="ais"))
        if "api" in roles:
            app = create_app(settings, res.state, res.pipeline, res.hub)
            config = uvicorn.Config(
                app,
                host=settings.http_host,
                port=settings.http_port,
                log_level=settings.log_level,
                access_log=False,
                lifespan="on",
                ws_max_size=1 << 20,
                ws_per_message_deflate=False,  # frames are small: compressing each cost more CPU than it saved
                http=http_protocol(settings.request_timeout_s),  # bounded heads, a deadline per request
            )
            redact_logs()  # after uvicorn.Config, which sets up uvicorn's handlers
            server = uvicorn.Server(config)
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # signals are ours
            tasks.append(asyncio.create_task(server.serve(), name="api"))
        log.info("trackd running roles %s", ",".join(roles))
        if ready is not None:
            if server is not None:
                while not server.started:  # noqa: ASYNC110  # uvicorn offers no event for this
                    await asyncio.sleep(0.02)
            ready.set()
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not waiter and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        for t in tasks:
            try:
                await asyncio.wait_for(t, 10)
            except (TimeoutError, asyncio.CancelledError):
                t.cancel()
            except Exception as exc:  # already reported
                log.debug("role stopped with %s", exc)
        await res.close()
        gc.enable()
