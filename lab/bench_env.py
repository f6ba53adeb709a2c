"""What every benchmark run shares: its own tenant and shipments, the trackd server processes it
measures, and the clean-up of both.

The tenant is `bench-<random>`, so a run never reads or writes anyone else's data; its servers get
their own MQTT topic prefix, client ids and share group, and free loopback ports. On exit the
servers are stopped, their MQTT sessions cleared, and the tenant's rows and Redis stream deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import unquote, urlparse

import httpx
import psycopg

from ingest import mqtt_conn
from lab import queries
from lab.net import free_port
from trackd import db, tenant_store
from trackd.errors import TrackdError, Unavailable
from trackd.settings import Settings

log = logging.getLogger("trackd.bench")


@dataclass
class Server:
    url: str
    port: int
    client_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path


@dataclass(frozen=True, slots=True)
class BenchTenant:
    name: str
    id: int
    api_key: str
    ingest_secret: str


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    username: str | None
    password: str | None


class BenchEnv:
    """A context manager: the bench tenant, its shipments and servers; everything removed on exit."""

    def __init__(self, settings: Settings, out: TextIO | None = None) -> None:
        self.settings = settings
        self.out = out or sys.stdout
        self.run_id = secrets.token_hex(3)
        self.tenant = f"bench-{self.run_id}"
        self.topic_prefix = f"bench{self.run_id}/"
        self.tenant_id = 0
        self.api_key = ""
        self.ingest_secret = ""
        self.servers: list[Server] = []
        self.shipments: list[tuple[str, str]] = []  # (id, tracking number)
        self._metrics: httpx.Client | None = None
        self.logs = Path(tempfile.mkdtemp(prefix=f"trackd-bench-{self.run_id}-"))
        self._client_ids: list[str] = []
        self.other_tenants: list[BenchTenant] = []  # add_tenant's, removed with the run's own

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> BenchEnv:
        db.check_schema(self.settings.dsn())
        created = asyncio.run(self._create_tenant())
        self.api_key, self.ingest_secret = created["api_key"], created["ingest_secret"]
        row = self.sql(queries.TENANT_ID, self.tenant)
        self.tenant_id = int(row[0][0])
        self.say(f"bench tenant {self.tenant} (id {self.tenant_id}); server logs in {self.logs}")
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        if self._metrics is not None:
            self._metrics.close()
        self.stop_servers()
        self._clear_mqtt_sessions()
        started = time.monotonic()
        with contextlib.suppress(psycopg.Error):
            for tenant_id in [self.tenant_id, *(t.id for t in self.other_tenants)]:
                for stmt in queries.DELETE_ROWS:
                    self.sql(stmt, tenant_id)
        with contextlib.suppress(Exception):
            import redis

            from trackd.bus import stream_key

            client = redis.Redis.from_url(self.settings.redis())
            deployment = db.deployment(self.settings.dsn())
            for tenant_id in [self.tenant_id, *(t.id for t in self.other_tenants)]:
                client.delete(stream_key(self.settings.redis_prefix, deployment, tenant_id))
            client.close()
        self.say(f"cleaned up tenant {self.tenant} in {time.monotonic() - started:.1f} s")

    async def _create_tenant(self, name: str | None = None) -> dict[str, str]:

        pool = await db.open_pool(self.settings.dsn(), 1)
        try:
            key = self.settings.secret_key.get_secret_value() if self.settings.secret_key else None
            return await tenant_store.create_tenant(pool, name or self.tenant, key)
        finally:
            await pool.close()

    def add_tenant(self, suffix: str) -> BenchTenant:
        """Another tenant of the run, `bench-<run>-<suffix>`; its rows and Redis stream are deleted
        with the run's own."""
        name = f"{self.tenant}-{suffix}"
        created = asyncio.run(self._create_tenant(name))
        tenant_id = int(self.sql(queries.TENANT_ID, name)[0][0])
        tenant = BenchTenant(name, tenant_id, created["api_key"], created["ingest_secret"])
        self.other_tenants.append(tenant)
        return tenant

    def say(self, text: str) -> None:
        print(f"# {text}", file=self.out, flush=True)

    # -- database ----------------------------------------------------------------------------
    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.dsn(), autocommit=True) as conn:
            args = params[0] if len(params) == 1 and isinstance(params[0], dict) else (params or None)
            cur = conn.execute(query.encode(), args)
            return cur.fetchall() if cur.description else []

    def seed_shipments(self, n: int) -> float:
        """`n` shipments (road, no legs) with state rows; returns the seconds it took."""
        started = time.monotonic()
        trk, idp = f"B{self.run_id.upper()}", f"shp_b{self.run_id}_"
        with psycopg.connect(self.settings.dsn()) as conn:
            conn.execute(queries.SEED_SHIPMENTS.encode(), {"idp": idp, "tenant": self.tenant_id, "trk": trk, "n": n})
            conn.execute(queries.SEED_STATES.encode(), (self.tenant_id,))
        self.vacuum()
        self.shipments = [(f"{idp}{i:06d}", f"{trk}{i:06d}") for i in range(n)]
        return time.monotonic() - started

    def fill_trails(self, until: datetime) -> None:
        """Give every shipment of the run a full trail ending at `until`."""
        self.sql(queries.FILL_TRAILS, {"until": until, "tenant": self.tenant_id})
        self.vacuum()

    def vacuum(self) -> None:
        """Fresh planner statistics after a bulk load, and the dead rows of earlier runs' clean-up
        cleared, as autovacuum would within a minute (where it runs: a server with it off keeps
        both until someone runs VACUUM)."""
        with psycopg.connect(self.settings.dsn(), autocommit=True) as conn:
            conn.execute(queries.VACUUM.encode())

    def count_events(self) -> int:
        return int(self.sql(queries.COUNT_EVENTS, self.tenant_id)[0][0])

    # -- servers -----------------------------------------------------------------------------
    def server_env(self, port: int, client_id: str) -> dict[str, str]:
        return {
            **os.environ,
            "TRACKD_HTTP_HOST": "127.0.0.1",
            "TRACKD_HTTP_PORT": str(port),
            "TRACKD_MQTT_TOPIC_PREFIX": self.topic_prefix,
            "TRACKD_MQTT_CLIENT_ID": client_id,
            "TRACKD_MQTT_SHARE_GROUP": f"bench{self.run_id}",
            "TRACKD_LOG_LEVEL": "warning",
            "TRACKD_INGEST_RATE_PER_S": "0",
            "TRACKD_STREAM_MAX_SOCKETS_PER_TENANT": "1000000",  # `--clients` goes up to 20,000
        }

    def start_servers(self, roles: str, n: int, extra: dict[str, str] | None = None) -> list[Server]:
        """`n` processes of `trackd serve --roles roles`, each ready (`/readyz` 200) on its own port;
        `extra` adds to (or overrides) their environment."""
        started: list[Server] = []
        http = "api" in roles.split(",")
        for _ in range(n):
            port = free_port()
            client_id = f"trackd-bench-{self.run_id}-{len(self.servers)}"
            self._client_ids.append(client_id)
            path = self.logs / f"server-{port}.log"
            with open(path, "ab") as logf:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "serve.cli", "serve", "--roles", roles],
                    # without the api role, readiness is read from the log (see _wait_ready)
                    env={
                        **self.server_env(port, client_id),
                        **(extra or {}),
                        **({} if http else {"TRACKD_LOG_LEVEL": "info"}),
                    },
                    stdout=logf,
                    stderr=logf,
                )
            server = Server(f"http://127.0.0.1:{port}", port, client_id, proc, path)
            self.servers.append(server)
            started.append(server)
        for server in started:
            self._wait_ready(server, http)
        pids = ", ".join(str(s.proc.pid) for s in started)
        self.say(f"started {n} x `trackd serve --roles {roles}` (pids {pids})")
        return started

    def _wait_ready(self, server: Server, http: bool, timeout: float = 30.0) -> None:
        """Ready: `/readyz` answers 200, or, for a process without the api role, its MQTT
        subscription is in place (its log says so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                break
            if not http:
                if "MQTT subscribed" in server.log_path.read_text(errors="replace"):
                    return
            else:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                        return
            time.sleep(0.1)
        tail = server.log_path.read_text(errors="replace")[-2000:]
        raise Unavailable(f"bench server on port {server.port} did not become ready:\n{tail}")

    def stop_servers(self) -> None:
        for s in self.servers:
            if s.proc.poll() is None:
                s.proc.terminate()
        for s in self.servers:
            try:
                s.proc.wait(15)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
        self.servers = []

    def stored_by_servers(self, servers: list[Server]) -> int:
        """New events stored so far by these servers (their `trackd_events_stored_total`)."""
        total = 0.0
        if self._metrics is None:  # kept alive: it is asked every 50 ms while a run goes on
            self._metrics = httpx.Client(timeout=5)
        for s in servers:
            text = self._metrics.get(s.url + "/metrics").text
            for line in text.splitlines():
                if line.startswith("trackd_events_stored_total{"):
                    total += float(line.rsplit(" ", 1)[1])
        return int(total)

    # -- broker ------------------------------------------------------------------------------
    def broker(self) -> Broker:
        u = urlparse(self.settings.mqtt())
        if u.scheme != "mqtt":
            raise TrackdError("bench: only a plain mqtt:// broker is supported")
        user = unquote(u.username) if u.username else None
        password = unquote(u.password) if u.password else None
        return Broker(u.hostname or "127.0.0.1", u.port or 1883, user, password)

    def _clear_mqtt_sessions(self) -> None:
        """The servers' persistent sessions would outlive the run: end them with a clean start."""
        if not self._client_ids:
            return
        ep = mqtt_conn.endpoint(self.settings.mqtt())

        async def clear(ids: list[str]) -> None:
            for cid in ids:
                with contextlib.suppress(Exception):
                    await mqtt_conn.end_session(ep, cid, v5=self.settings.mqtt_protocol == "5")

        asyncio.run(clear(self._client_ids))
        self._client_ids = []


# -- what the servers and the machine used (from /proc; 0 where it is not there) ----------------
def servers_cpu_s(servers: list[Server]) -> float:
    """CPU seconds the server processes have used so far (user and system); one that has exited
    counts no more."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for s in servers:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{s.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def machine_busy_s() -> float:
    """CPU seconds the machine's cores have been busy so far, all processes and the kernel
    (/proc/stat: all but idle and iowait)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def io_stall_s() -> float:
    """Seconds so far in which every task waited on I/O (/proc/pressure/io, `full`)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        full = Path("/proc/pressure/io").read_text().split("\n")[1]
        return int(full.rsplit("total=", 1)[1]) / 1e6
    return 0.0


def usage(servers: list[Server]) -> tuple[float, float, float]:
    """(`servers_cpu_s`, `machine_busy_s`, `io_stall_s`) now."""
    return servers_cpu_s(servers), machine_busy_s(), io_stall_s()
