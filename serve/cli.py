"""The `trackd` command. Settings are built here, once, and passed down.

The roles live in `api`, `ingest` and `stream`; they are imported only when a command needs them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import socket
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import orjson

from trackd import db, tenant_store
from trackd.errors import ConfigError, NotFound, TrackdError
from trackd.settings import OPTIONAL_ROLES, ROLES, Settings, load_settings

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_GRACE_H = 720.0  # a rotated key or secret stays valid at most 30 days
# The placeholder docker-compose.yml falls back to: as good as no key.
COMPOSE_PLACEHOLDER_KEY = "change-me-to-a-long-random-string"

log = logging.getLogger("trackd")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (exit 2), like a bad setting."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"trackd: {message} (see {self.prog} --help)\n")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "amqtt", "transitions", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_roles(text: str) -> list[str]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in roles if r not in ROLES + OPTIONAL_ROLES]
    if bad or not roles:
        known = ",".join(ROLES + OPTIONAL_ROLES)
        raise ConfigError(f"--roles: unknown role {bad[0] if bad else '(none)'}; use any of {known}")
    return list(dict.fromkeys(roles))


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def warn_without_secret_key(settings: Settings) -> None:
    """One loud line when ingest and webhook secrets would be sealed with a key the database keeps."""
    key = settings.secret_key.get_secret_value() if settings.secret_key else ""
    if not key or key == COMPOSE_PLACEHOLDER_KEY:
        log.warning(
            "TRACKD_SECRET_KEY is %s: ingest and webhook secrets are encrypted with a key kept in the same "
            "database, so anyone with a copy of it (a backup) can read them; set a long random TRACKD_SECRET_KEY "
            "before creating tenants (docs/deployment.md#security)",
            "not set" if not key else "the docker-compose placeholder",
        )


def check_listen(host: str, port: int) -> None:
    """Refuse, with one line, an address the api role could not listen on (uvicorn would only log it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"TRACKD_HTTP_HOST/TRACKD_HTTP_PORT: cannot listen on {host}:{port}: {reason}") from None


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    roles = parse_roles(args.roles)
    if "ais" in roles and not settings.ais_url:
        raise ConfigError("TRACKD_AIS_URL: the ais role reads it: tcp://host:port or udp://:port")
    db.check_schema(settings.dsn())
    if "api" in roles:
        check_listen(settings.http_host, settings.http_port)
    warn_without_secret_key(settings)
    from serve.roles import run_roles  # imported here: `trackd migrate` needs none of the server

    _run(run_roles(settings, roles))
    return 0


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    applied = db.migrate(settings.dsn(), settings.retention_days)
    warn_without_secret_key(settings)  # after: an unreachable database stays a one-line error
    print(orjson.dumps({"applied": applied}).decode())
    return 0


async def _create_tenant(settings: Settings, name: str) -> dict[str, str]:

    pool = await db.open_pool(settings.dsn(), 1)
    try:
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        return await tenant_store.create_tenant(pool, name, secret)
    finally:
        await pool.close()


def _tenant_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise ConfigError("tenant name: 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit")
    return name


def cmd_tenant(settings: Settings, args: argparse.Namespace) -> int:
    name = _tenant_name(args.name)
    db.check_schema(settings.dsn())
    out = asyncio.run(_create_tenant(settings, name))
    print(orjson.dumps(out).decode())
    return 0


async def _rotate(settings: Settings, name: str, what: str, grace_s: float) -> dict[str, str] | None:

    pool = await db.open_pool(settings.dsn(), 1)
    try:
        if what == "api_key":
            got = await tenant_store.rotate_api_key(pool, name, grace_s)
        else:
            secret = settings.secret_key.get_secret_value() if settings.secret_key else None
            got = await tenant_store.rotate_ingest_secret(pool, name, secret, grace_s)
    finally:
        await pool.close()
    if got is None:
        return None
    value, until = got
    return {"tenant": name, what: value, "previous_valid_until": until.isoformat()}


def cmd_tenant_rotate(settings: Settings, args: argparse.Namespace) -> int:
    """A new API key or ingest secret, printed once; the old one works for `--grace-hours` more."""
    name = _tenant_name(args.name)
    if not 0 <= args.grace_hours <= MAX_GRACE_H:
        raise ConfigError(f"--grace-hours: 0 to {MAX_GRACE_H:g}")
    db.check_schema(settings.dsn())
    out = asyncio.run(_rotate(settings, name, args.what, args.grace_hours * 3600))
    if out is None:
        raise NotFound(f"no tenant {name!r}")
    print(orjson.dumps(out).decode())
    return 0


async def _set_tenant(settings: Settings, name: str, changes: dict[str, Any]) -> tenant_store.TenantSettings | None:
    pool = await db.open_pool(settings.dsn(), 1)
    try:
        return await tenant_store.update_settings(pool, name, changes)
    finally:
        await pool.close()


def cmd_tenant_set(settings: Settings, args: argparse.Namespace) -> int:
    """Set a tenant's tracking-page branding and retention; an empty value clears one."""
    name = _tenant_name(args.name)
    given = {
        "brand_name": args.brand_name,
        "brand_logo_url": args.brand_logo,
        "brand_colour": args.brand_colour,
        "support_url": args.support_url,
    }
    changes: dict[str, Any] = {key: value or None for key, value in given.items() if value is not None}
    if args.retention_days is not None:
        days = args.retention_days.strip()
        if days not in ("", "default") and not days.isdigit():
            raise ConfigError("--retention-days: a whole number of days, or 'default' for TRACKD_RETENTION_DAYS")
        changes["retention_days"] = int(days) if days.isdigit() else None
    if not changes:
        raise ConfigError("tenant set: nothing to set (see trackd tenant set --help)")
    tenant_store.check_settings(changes)
    db.check_schema(settings.dsn())
    out = asyncio.run(_set_tenant(settings, name, changes))
    if out is None:
        raise NotFound(f"no tenant {name!r}")
    print(orjson.dumps({"tenant": name, "brand": out.brand.to_dict(), "retention_days": out.retention_days}).decode())
    return 0


async def _source(settings: Settings, args: argparse.Namespace) -> Any:
    from trackd import source_store, store

    pool = await db.open_pool(settings.dsn(), 1)
    try:
        async with store.transaction(pool) as conn:
            if args.source_command == "add":
                secret = settings.secret_key.get_secret_value() if settings.secret_key else None
                box = await tenant_store.box_for(conn, secret)
                return await source_store.add_source(
                    conn, args.tenant, args.kind, args.url, args.api_key, args.interval, box
                )
            if args.source_command == "list":
                return await source_store.list_sources(conn, args.tenant)
            return await source_store.remove_source(conn, args.id)
    finally:
        await pool.close()


def cmd_source(settings: Settings, args: argparse.Namespace) -> int:
    """Feeds the worker pulls: `add` prints the new source, `list` all of them, `remove` deletes one."""
    if args.source_command == "add":
        _tenant_name(args.tenant)
        if not 1 <= args.interval <= 86_400:
            raise ConfigError("--interval: 1 to 86,400 seconds")
        from notify import ssrf  # the guard the worker applies to every request, checked once here

        asyncio.run(ssrf.check_url(args.url.rstrip("/") + "/events", settings.webhook_allow_private))
    db.check_schema(settings.dsn())
    out = asyncio.run(_source(settings, args))
    if out is None:
        raise NotFound(f"no tenant {args.tenant!r}")
    if out is False:
        raise NotFound(f"no source {args.id!r}")
    print(orjson.dumps({"removed": args.id} if out is True else out).decode())
    return 0


# The tools of lab/ are imported only by the command that runs them.
def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    if not 1 <= args.shipments <= 100_000:
        raise ConfigError("demo --shipments: 1 to 100,000")
    if args.duration is not None and not args.duration > 0:
        raise ConfigError("demo --duration: more than 0 seconds")
    from lab import demo
    from serve.roles import run_roles

    return demo.main(settings, args, run_roles)


def cmd_eta_eval(settings: Settings, args: argparse.Namespace) -> int:
    if args.simulate is not None and not 1 <= args.simulate <= 100_000:
        raise ConfigError("eta-eval --simulate: 1 to 100,000 shipments")
    from lab import etaeval_cli

    return etaeval_cli.main(settings, args)


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from lab import bench

    return bench.main(settings, args)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="trackd", description="Real-time shipment tracking and visibility.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    s = sub.add_parser("serve", help="run roles: api, mqtt, worker (all by default), ais")
    s.add_argument("--roles", default=",".join(ROLES))
    s.set_defaults(func=cmd_serve)
    m = sub.add_parser("migrate", help="apply the schema (idempotent)")
    m.set_defaults(func=cmd_migrate)
    t = sub.add_parser("tenant", help="manage tenants")
    tsub = t.add_subparsers(dest="tenant_command", required=True, parser_class=Parser)
    tc = tsub.add_parser("create", help="create a tenant; prints its API key and ingest secret once")
    tc.add_argument("name")
    tc.set_defaults(func=cmd_tenant)
    tr = tsub.add_parser("rotate", help="a new API key or ingest secret, printed once; the old one works a while")
    tr.add_argument("name")
    which = tr.add_mutually_exclusive_group(required=True)
    which.add_argument("--api-key", dest="what", action="store_const", const="api_key")
    which.add_argument("--ingest-secret", dest="what", action="store_const", const="ingest_secret")
    tr.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        help=f"how long the replaced value stays valid (default 24, 0 to {MAX_GRACE_H:g})",
    )
    tr.set_defaults(func=cmd_tenant_rotate)
    ts = tsub.add_parser("set", help="set a tenant's tracking-page branding and data retention ('' clears a value)")
    ts.add_argument("name")
    ts.add_argument("--brand-name", help="the name the tracking page shows")
    ts.add_argument("--brand-logo", metavar="URL", help="the logo the tracking page shows (http or https)")
    ts.add_argument("--brand-colour", metavar="#RRGGBB", help="the accent colour of the tracking page")
    ts.add_argument("--support-url", metavar="URL", help="where the tracking page's support link goes")
    ts.add_argument(
        "--retention-days", metavar="N", help="days the tenant's data is kept ('default': TRACKD_RETENTION_DAYS)"
    )
    ts.set_defaults(func=cmd_tenant_set)
    src = sub.add_parser("source", help="feeds the worker pulls (DCSA Track & Trace 3.0.0 GET /events)")
    ssub = src.add_subparsers(dest="source_command", required=True, parser_class=Parser)
    sa = ssub.add_parser("add", help="poll <url>/events at once and every --interval seconds")
    sa.add_argument("kind", choices=["dcsa"])
    sa.add_argument("--tenant", required=True)
    sa.add_argument("--url", required=True, help="the publisher's base URL (without /events)")
    sa.add_argument("--api-key", default=None, help="sent as Authorization: Bearer <key>")
    sa.add_argument("--interval", type=int, default=30, help="seconds between polls (default 30)")
    sl = ssub.add_parser("list", help="the sources, with their progress and last error")
    sl.add_argument("--tenant", default=None)
    sr = ssub.add_parser("remove", help="stop pulling a source")
    sr.add_argument("id")
    for command in (sa, sl, sr):
        command.set_defaults(func=cmd_source)
    d = sub.add_parser("demo", help="the whole system on embedded defaults, fed by a simulator")
    d.add_argument("--reset", action="store_true", help="wipe the demo's state directory first")
    d.add_argument("--shipments", type=int, default=300)
    d.add_argument("--state-dir", default=None)
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    d.set_defaults(func=cmd_demo)
    e = sub.add_parser("eta-eval", help="replay completed shipments and score the ETA against baselines")
    e.add_argument("--events", default=None, help="JSON-lines file; default: the configured database")
    e.add_argument("--simulate", type=int, default=None, metavar="N", help="score N simulated shipments instead")
    e.add_argument("--seed", type=int, default=7)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eta_eval)
    b = sub.add_parser("bench", help="benchmarks against the configured services")
    b.add_argument("kind", choices=["ingest", "e2e", "query", "stream", "soak", "hostile"])
    b.add_argument("--transport", choices=["webhook", "mqtt"], default="webhook")
    b.add_argument("--processes", type=int, default=1)
    b.add_argument(
        "--mqtt-processes",
        type=int,
        default=0,
        help="e2e: run the mqtt role in this many processes of its own (default 0: inside the api processes)",
    )
    b.add_argument("--duration", type=float, default=30.0)
    b.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="e2e, hostile: seconds of load before the measured --duration, not counted (default 10)",
    )
    b.add_argument("--rate", type=float, default=2000.0)
    b.add_argument("--clients", type=int, default=1000)
    b.add_argument("--shipments", type=int, default=10_000)
    b.add_argument("--positions", type=int, default=10_000_000)
    b.add_argument("--places", type=int, default=0, help="ingest: also compare runs with and without N tenant places")
    b.add_argument(
        "--attacks",
        default="all",
        help="hostile: all (default), some of poison,oversized,slow-clients,slow-endpoint,osmand (comma-separated),"
        " or none (a control: no hostile traffic)",
    )
    b.add_argument(
        "--notified",
        type=float,
        default=None,
        help="hostile: notification webhooks a second to the valid tenant's receiver (default 12.5)",
    )
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        setup_logging(settings.log_level)
        code: int = args.func(settings, args)
        return code
    except ConfigError as exc:
        print(f"trackd: {exc.detail}", file=sys.stderr)
        return 2
    except TrackdError as exc:
        print(f"trackd: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
