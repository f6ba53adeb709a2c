"""`trackd demo` on a machine with no services configured: embedded PostgreSQL, the in-process bus
and an embedded MQTT broker, fed by the simulator through the real ingest paths."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.sync.client import connect

from lab import embedded
from tests.conftest import ROOT, free_port, wait_for

CARRIER_SOURCES = {"dcsa", "aftership", "easypost", "onerecord", "x12-214"}
DEVICE_SOURCES = {"native", "owntracks"}  # trackers publish over MQTT
LIVE_TYPES = {
    "position",
    "positions",
    "status.changed",
    "eta.changed",
    "exception.raised",
    "exception.cleared",
    "shipment.created",
    "shipment.updated",
}


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    state_dir: Path
    stderr: Path
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    stdout: list[str] = field(default_factory=list)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, deadline: float) -> str:
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"demo printed nothing more in time; stdout {self.stdout}\n{self.log()}") from None
            self.stdout.append(line)
            return line

    def log(self) -> str:
        return self.stderr.read_text()[-3000:] if self.stderr.exists() else ""


def demo_env() -> dict[str, str]:
    """The environment of a fresh machine: no TRACKD_* services, no libpq PG* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKD_", "PG"))}
    env |= {"PYTHONPATH": str(ROOT), "TRACKD_HTTP_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    return env


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    state = tmp_path / "state"
    err = tmp_path / "demo.err"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serve.cli",
                "demo",
                "--duration",
                "40",
                "--speed",
                "20000",
                "--shipments",
                "20",
                "--state-dir",
                str(state),
            ],
            env=demo_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    d = Demo(proc, state, err)
    reader = threading.Thread(target=d.read, daemon=True)
    reader.start()
    try:
        yield d
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()
        # A killed demo leaves its PostgreSQL running: stop it. Its data goes with tmp_path, or, as
        # root under a closed home, lives where `<state>/pg` links to: removed here.
        user = embedded.SYSTEM_USER if os.geteuid() == 0 else None
        data = (state / "pg").resolve()
        embedded.EmbeddedPostgres(data, 0, user).stop()
        shutil.rmtree(data, ignore_errors=True)


def test_demo_runs_on_embedded_services(demo: Demo) -> None:
    started = time.monotonic()
    url = key = None
    deadline = started + 60
    while url is None or key is None:
        line = demo.next_line(deadline)
        if m := re.search(r"dashboard at (http://\S+?)/?(#\S*)?$", line):
            url = m.group(1)
        elif url is not None and re.fullmatch(r"tk_[\w-]+", line):
            key = line
    assert time.monotonic() - started < 60, "the demo must start within a minute"
    assert "mosquitto_pub" in demo.next_line(time.monotonic() + 5) + demo.next_line(time.monotonic() + 5)
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)

    ws = connect(url.replace("http://", "ws://") + f"/v1/stream?token={key}", open_timeout=10)
    try:
        ws.send(orjson.dumps({"op": "subscribe", "all": True}).decode())
        first = orjson.loads(ws.recv(timeout=10))
        assert first["type"] == "snapshot", first
        live: dict[str, Any] | None = None
        until = time.monotonic() + 20
        while live is None and time.monotonic() < until:
            msg = orjson.loads(ws.recv(timeout=max(until - time.monotonic(), 0.01)))
            if msg.get("type") in LIVE_TYPES:
                live = msg
        assert live is not None, "no live message on the websocket within 20 s"
        assert live["seq"] > first["seq"]
    finally:
        ws.close()

    def progressed() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = http.get("/v1/shipments", params={"limit": 500}).json()["items"]
        moving = [s for s in items if s["last_position"] and s["status"] not in ("pending", "info_received")]
        return moving if len(moving) >= 3 else []

    moving = wait_for(progressed, timeout=25, interval=0.5)
    for s in moving:
        assert -90 <= s["last_position"]["lat"] <= 90
        assert -180 <= s["last_position"]["lon"] <= 180

    sources: set[str] = set()
    for s in http.get("/v1/shipments", params={"limit": 500}).json()["items"]:
        for ev in http.get(f"/v1/shipments/{s['id']}/events", params={"limit": 500}).json()["items"]:
            sources.add(ev["source"])
    assert sources & DEVICE_SOURCES, f"no tracker event arrived over MQTT; sources {sources}"
    assert sources & CARRIER_SOURCES, f"no carrier webhook event arrived; sources {sources}"

    rejected = http.get("/v1/quarantine").json()["items"]
    assert rejected == [], "the simulator's input was refused: " + "; ".join(
        f"{q['source']}: {q['reason']}" for q in rejected[:5]
    )
    http.close()

    assert demo.proc.poll() is None, f"the demo ended before SIGTERM\n{demo.log()}"
    demo.proc.send_signal(signal.SIGTERM)
    try:
        code = demo.proc.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the demo did not stop within 15 s of SIGTERM\n{demo.log()}") from None
    assert code == 0, demo.log()
    assert "Traceback" not in demo.log(), demo.log()
