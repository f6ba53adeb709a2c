"""The `trackd` command. Settings are built here, once, and passed down.

The roles live in `api`, `ingest` and `stream`; they are imported only when a command needs them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from trackd import db
from trackd.errors import ConfigError, TrackdError
from trackd.settings import ROLES, Settings, load_settings

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


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
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise ConfigError(f"--roles: unknown role {bad[0] if bad else '(none)'}; use any of {','.join(ROLES)}")
    return list(dict.fromkeys(roles))


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    roles = parse_roles(args.roles)
    db.check_schema(settings.dsn())
    from serve.roles import run_roles  # imported here: `trackd migrate` needs none of the server

    _run(run_roles(settings, roles))
    return 0


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    applied = db.migrate(settings.dsn(), settings.retention_days)
    print(orjson.dumps({"applied": applied}).decode())
    return 0


async def _create_tenant(settings: Settings, name: str) -> dict[str, str]:
    from trackd import store

    pool = await db.open_pool(settings.dsn(), 1)
    try:
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        return await store.create_tenant(pool, name, secret)
    finally:
        await pool.close()


def cmd_tenant(settings: Settings, args: argparse.Namespace) -> int:
    if not TENANT_NAME.match(args.name):
        raise ConfigError("tenant name: 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit")
    db.check_schema(settings.dsn())
    out = asyncio.run(_create_tenant(settings, args.name))
    print(orjson.dumps(out).decode())
    return 0


# The tools of lab/ are imported only by the command that runs them.
def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from lab import demo
    from serve.roles import run_roles

    return demo.main(settings, args, run_roles)


def cmd_eta_eval(settings: Settings, args: argparse.Namespace) -> int:
    from lab import etaeval_cli

    return etaeval_cli.main(settings, args)


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from lab import bench

    return bench.main(settings, args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trackd", description="Real-time shipment tracking and visibility.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run roles: api, mqtt, worker (all by default)")
    s.add_argument("--roles", default=",".join(ROLES))
    s.set_defaults(func=cmd_serve)
    m = sub.add_parser("migrate", help="apply the schema (idempotent)")
    m.set_defaults(func=cmd_migrate)
    t = sub.add_parser("tenant", help="manage tenants")
    tsub = t.add_subparsers(dest="tenant_command", required=True)
    tc = tsub.add_parser("create", help="create a tenant; prints its API key and ingest secret once")
    tc.add_argument("name")
    tc.set_defaults(func=cmd_tenant)
    d = sub.add_parser("demo", help="the whole system on embedded defaults, fed by a simulator")
    d.add_argument("--reset", action="store_true", help="wipe the demo's state directory first")
    d.add_argument("--shipments", type=int, default=300)
    d.add_argument("--speed", type=float, default=1800.0, help="simulated seconds per real second")
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
    b.add_argument("kind", choices=["ingest", "e2e", "query", "stream", "soak"])
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
        help="e2e: seconds of load before the measured --duration, not counted (default 10)",
    )
    b.add_argument("--rate", type=float, default=2000.0)
    b.add_argument("--clients", type=int, default=1000)
    b.add_argument("--shipments", type=int, default=10_000)
    b.add_argument("--positions", type=int, default=10_000_000)
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
