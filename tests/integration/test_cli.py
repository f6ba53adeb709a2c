"""The `trackd` command: clear one-line errors, idempotent concurrent migrations, tenant creation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import psycopg

from tests.conftest import PG_ADMIN, RunEnv, _drop_database, _make_database, start_server, stop_server


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve.cli", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_bad_setting_stops_with_one_clear_line(testenv: RunEnv) -> None:
    r = run({**testenv.env, "TRACKD_HTTP_PORT": "not-a-port"}, "serve")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "TRACKD_HTTP_PORT" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreachable_database_stops_with_one_clear_line(testenv: RunEnv) -> None:
    r = run({**testenv.env, "TRACKD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}, "serve")
    assert r.returncode == 2
    assert r.stderr.startswith("trackd: database unreachable")
    assert r.stderr.strip().count("\n") == 0


def test_unknown_role_is_refused(testenv: RunEnv) -> None:
    r = run(testenv.env, "serve", "--roles", "api,cook")
    assert r.returncode == 2
    assert "cook" in r.stderr


def test_concurrent_migrations_are_safe() -> None:
    _, dsn = _make_database()
    try:
        env = {**__import__("os").environ, "TRACKD_DATABASE_URL": dsn}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "serve.cli", "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(3)
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        applied = [orjson.loads(o[0])["applied"] for o in outs]
        assert sum(len(a) for a in applied) == len(max(applied, key=len))  # each file applied exactly once
        with psycopg.connect(dsn) as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
        assert names[0] == "001_init.sql"
        assert len(names) == len(set(names))
    finally:
        _drop_database(dsn)
    assert PG_ADMIN


def test_tenant_create_prints_one_json_object(testenv: RunEnv) -> None:
    r = testenv.trackd("tenant", "create", "cli-acme")
    assert r.returncode == 0, r.stderr
    out = orjson.loads(r.stdout)
    assert set(out) == {"tenant", "api_key", "ingest_secret"}
    assert out["tenant"] == "cli-acme"
    again = testenv.trackd("tenant", "create", "cli-acme")
    assert again.returncode == 1
    assert "exists" in again.stderr
    bad = testenv.trackd("tenant", "create", "Bad Name!")
    assert bad.returncode == 2
    rows = testenv.sql("SELECT api_key_hash, ingest_secret_enc FROM tenants WHERE name = 'cli-acme'")
    assert out["api_key"].encode() not in bytes(rows[0][0])
    assert out["ingest_secret"] not in rows[0][1]


def one_line_exit_2(r: subprocess.CompletedProcess[str], setting: str) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr  # exactly one line
    assert r.stderr.startswith("trackd: ")
    assert setting in r.stderr
    assert "Traceback" not in r.stderr


def test_migrate_and_serve_warn_once_without_a_secret_key(testenv: RunEnv, tmp_path: Path) -> None:
    env = {k: v for k, v in testenv.env.items() if k != "TRACKD_SECRET_KEY"}
    r = run(env, "migrate")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "TRACKD_SECRET_KEY" in line]
    assert len(warnings) == 1, r.stderr
    assert " WARNING " in warnings[0]
    assert "not set" in warnings[0]
    quiet = run({**env, "TRACKD_SECRET_KEY": "a-long-random-string-of-this-installation"}, "migrate")
    assert quiet.returncode == 0, quiet.stderr
    assert "TRACKD_SECRET_KEY" not in quiet.stderr
    server = start_server(RunEnv(testenv.run_id, testenv.dsn, env), tmp_path, roles="api")
    try:
        lines = [line for line in server.log.read_text().splitlines() if "TRACKD_SECRET_KEY" in line]
    finally:
        stop_server(server)
    assert len(lines) == 1, lines
    assert " WARNING " in lines[0]


def test_unreachable_database_at_migrate_is_one_line_even_without_a_secret_key(testenv: RunEnv) -> None:
    env = {k: v for k, v in testenv.env.items() if k != "TRACKD_SECRET_KEY"}
    r = run({**env, "TRACKD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}, "migrate")
    one_line_exit_2(r, "database unreachable")
