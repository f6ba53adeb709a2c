"""Shared fixtures. Integration tests run against the machine's real PostgreSQL, Redis and
Mosquitto, each run in its own database (`trackd_test_<random>`), Redis key prefix and MQTT topic
prefix, so runs and parallel workers never collide.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from lab.net import free_port

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("TRACKD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TRACKD_TEST_REDIS", "redis://127.0.0.1:6379/0")
MQTT_URL = os.environ.get("TRACKD_TEST_MQTT", "mqtt://127.0.0.1:1883")


def sign_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class RunEnv:
    run_id: str
    dsn: str
    env: dict[str, str]

    def trackd(
        self, *args: str, extra: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "serve.cli", *args],
            env={**self.env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(
        self, *args: str, extra: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        if log is None:
            return subprocess.Popen(
                [sys.executable, "-m", "serve.cli", *args],
                env={**self.env, **(extra or {})},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        with open(log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "serve.cli", *args], env={**self.env, **(extra or {})}, stdout=out, stderr=out
            )

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, params or None).fetchall()  # type: ignore[arg-type]


def _make_database() -> tuple[str, str]:
    run_id = secrets.token_hex(4)
    name = f"trackd_test_{run_id}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    return run_id, f"{base}/{name}"


def _drop_database(dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def testenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunEnv]:
    run_id, dsn = _make_database()
    env = {
        **os.environ,
        "TRACKD_DATABASE_URL": dsn,
        "TRACKD_REDIS_URL": REDIS_URL,
        "TRACKD_REDIS_PREFIX": f"trackd_test_{run_id}",
        "TRACKD_MQTT_URL": MQTT_URL,
        "TRACKD_MQTT_TOPIC_PREFIX": f"t{run_id}/",
        "TRACKD_MQTT_CLIENT_ID": f"trackd-test-{run_id}",
        "TRACKD_MQTT_SHARE_GROUP": f"g{run_id}",
        "TRACKD_LOG_LEVEL": "warning",
        "TRACKD_WEBHOOK_ALLOW_PRIVATE": "1",
        "PYTHONPATH": str(ROOT),
    }
    te = RunEnv(run_id, dsn, env)
    res = te.trackd("migrate")
    assert res.returncode == 0, res.stderr
    yield te
    _drop_database(dsn)


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become healthy")


def start_server(te: RunEnv, tmp: Path, roles: str = "api,mqtt,worker", extra: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = tmp / f"server-{port}.log"
    proc = te.spawn("serve", "--roles", roles, extra={"TRACKD_HTTP_PORT": str(port), **(extra or {})}, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
    except RuntimeError:
        proc.kill()
        raise RuntimeError(log.read_text()[-3000:]) from None
    return Server(url, proc, log)


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def server(testenv: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(testenv, tmp_path_factory.mktemp("server"))
    yield srv
    stop_server(srv)


@dataclass
class Tenant:
    name: str
    api_key: str
    ingest_secret: str
    http: httpx.Client

    def signed(
        self,
        source_path: str,
        body: bytes,
        header: str = "X-Trackd-Signature",
        value: str | None = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        sig = value if value is not None else "sha256=" + sign_hex(self.ingest_secret, body)
        return self.http.post(
            f"/v1/ingest/{self.name}/{source_path}",
            content=body,
            headers={header: sig, "content-type": content_type, "authorization": ""},
        )


@pytest.fixture(scope="session")
def make_tenant(testenv: RunEnv, server: Server) -> Iterator[Any]:
    clients: list[httpx.Client] = []

    def make(prefix: str = "t") -> Tenant:
        import orjson

        name = f"{prefix}{secrets.token_hex(3)}"
        res = testenv.trackd("tenant", "create", name)
        assert res.returncode == 0, res.stderr
        data = orjson.loads(res.stdout)
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {data['api_key']}"}, timeout=30)
        clients.append(http)
        return Tenant(name, data["api_key"], data["ingest_secret"], http)

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def tenant(make_tenant: Any) -> Tenant:
    t: Tenant = make_tenant()
    return t


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
