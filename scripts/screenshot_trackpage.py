#!/usr/bin/env python3
"""Regenerate docs/trackpage.png: the public tracking page of a `trackd demo` shipment on a phone.

Runs the demo against a scratch database on the configured PostgreSQL (`TRACKD_DATABASE_URL`, else
the local server as user `postgres`), brands the demo tenant with `trackd tenant set`, waits for a
cross-border shipment under way with an estimate, shares it and takes a 390x844 (full page)
screenshot of its tracking page with Chromium; then stops the demo and drops the database.

    python scripts/screenshot_trackpage.py [--out docs/trackpage.png] [--lang en]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from playwright.sync_api import sync_playwright
from screenshot import start_demo  # scripts/screenshot.py, beside this one

from lab.net import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
BRAND = ["--brand-name", "Northwind Parcels", "--brand-colour", "#0f766e", "--support-url", "https://example.com/help"]


def scratch_database(admin_dsn: str) -> str:
    name = f"trackd_shot_{secrets.token_hex(4)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return str(psycopg.conninfo.make_conninfo(admin_dsn, dbname=name))


def drop_database(admin_dsn: str, dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def score(s: dict[str, Any]) -> int:
    """How well a shipment shows off the page: abroad, under way, with an estimate and a route."""
    legs = s.get("legs") or []
    abroad = bool(legs) and legs[0]["origin"].get("country") != legs[-1]["destination"].get("country")
    eta = s.get("eta") or {}
    return (
        4 * (s["status"] in ("in_transit", "customs"))
        + 3 * abroad
        + 2 * bool(eta.get("earliest"))
        + 2 * bool(eta.get("promised_at"))
        + bool(s.get("last_position"))
        - 3 * len([e for e in s.get("exceptions") or [] if not e.get("cleared_at")])
    )


def pick(http: httpx.Client, proc: subprocess.Popen[str], log: Path, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"screenshot: the demo stopped:\n{log.read_text()[-3000:]}")
        try:
            items = http.get("/v1/shipments", params={"limit": 500}).json()["items"]
        except httpx.TransportError:  # not listening yet
            time.sleep(1)
            continue
        good = sorted((s for s in items if score(s) >= 11), key=score, reverse=True)
        if good:
            return str(good[0]["id"])
        time.sleep(2)
    raise SystemExit("screenshot: no shipment under way with an estimate appeared")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "trackpage.png")
    p.add_argument("--lang", default="en", help="the Accept-Language of the phone")
    args = p.parse_args()
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"screenshot: {CHROMIUM} is missing (apt-get install -y chromium)")
    admin = os.environ.get("TRACKD_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    dsn = scratch_database(admin)
    tmp = Path(tempfile.mkdtemp(prefix="trackd-screenshot-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKD_", "PG"))}
    env |= {"PYTHONPATH": str(ROOT), "TRACKD_DATABASE_URL": dsn, "TRACKD_HTTP_PORT": str(free_port())}
    proc, url, key = start_demo(tmp / "state", 200, tmp / "demo.log", env)
    try:
        tenant = json.loads((tmp / "state" / "tenant.json").read_text())["tenant"]
        branded = subprocess.run(
            [sys.executable, "-m", "serve.cli", "tenant", "set", tenant, *BRAND],
            env=env,
            capture_output=True,
            text=True,
        )
        if branded.returncode != 0:
            raise SystemExit(f"screenshot: trackd tenant set failed: {branded.stderr}")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            shipment = pick(http, proc, tmp / "demo.log")
            link = http.post(f"/v1/shipments/{shipment}/share").json()["url"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                page = browser.new_page(
                    viewport={"width": 390, "height": 844}, device_scale_factor=2, locale=args.lang, is_mobile=True
                )
                page.goto(link)
                page.wait_for_selector("#route-map canvas", state="attached", timeout=20_000)
                page.wait_for_timeout(1500)  # the country outlines
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
            finally:
                browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)
        drop_database(admin, dsn)
    print(f"screenshot: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
