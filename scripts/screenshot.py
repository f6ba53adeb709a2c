#!/usr/bin/env python3
"""Regenerate docs/dashboard.png (the live map of `trackd demo` with one shipment's panel open),
docs/dashboard-clusters.png (the whole world, clustered) and docs/dashboard-list.png (the list).

Starts the demo on a temporary state directory (embedded PostgreSQL, bus and broker, whatever the
environment says), waits until a few hundred shipments are on the map, opens the side panel of one
that is under way, takes 1280x800 screenshots with Chromium and stops the demo.

    python scripts/screenshot.py [--out docs/dashboard.png] [--shipments 300]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from lab.net import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"

# Picks a shipment under way, away from its origin, without open exceptions; returns its id or null.
PICK = """() => {
  const far = (p, q) => q && Math.abs(p.lat - q.lat) + Math.abs(p.lon - q.lon) > 3;
  const open = (s) => (s.exceptions || []).filter((e) => !e.cleared_at).length;
  const legs = (s) => s.legs || [];
  const score = (s) => (s.status === "in_transit" ? 4 : s.status === "customs" ? 3 : 0) - 2 * open(s)
    + Math.min(legs(s).length, 3) + (s.eta ? 1 : 0)
    + (s.last_position && legs(s).length && far(s.last_position, legs(s)[0].origin)
       && far(s.last_position, legs(s)[legs(s).length - 1].destination) ? 4 : 0);
  const all = [...window.trackd.shipments.values()].sort((a, b) => score(b) - score(a));
  return all.length ? String(all[0].id) : null;
}"""


def start_demo(
    state_dir: Path, shipments: int, log: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str, str]:
    """Start `trackd demo` (with `env`, else this environment without its TRACKD_ and PG settings)
    and return the process, the dashboard URL and the API key it prints."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKD_", "PG"))}
        env |= {"PYTHONPATH": str(ROOT), "TRACKD_HTTP_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serve.cli",
                "demo",
                "--state-dir",
                str(state_dir),
                "--shipments",
                str(shipments),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    url = key = None
    for line in proc.stdout:
        if m := re.search(r"dashboard at (http://\S+?)/?(#\S*)?$", line):
            url = m.group(1)
        elif url and re.fullmatch(r"tk_[\w-]+", line.strip()):
            key = line.strip()
            break
    if url is None or key is None:
        proc.kill()
        raise SystemExit(f"screenshot: the demo did not start:\n{log.read_text()[-3000:]}")
    return proc, url, key


def capture(page: Page, url: str, key: str, want: int, moving: int, out: Path) -> None:
    page.goto(url + "/")
    page.fill("#api-key", key)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#conn-status[data-state=connected]", timeout=20_000)
    page.wait_for_function("n => window.trackd.markers.size >= n", arg=want, timeout=600_000, polling=1000)
    # ... and until enough of them have left their origin, so the map shows traffic, not a few depots.
    page.wait_for_function(
        "n => [...window.trackd.shipments.values()].filter((s) => s.last_position"
        " && ['in_transit', 'customs', 'out_for_delivery'].includes(s.status)).length >= n",
        arg=moving,
        timeout=900_000,
        polling=1000,
    )
    # Frame every marker in what the side panel leaves of the map.
    page.evaluate("""() => {
      const pts = [...window.trackd.markers.values()].map((m) => m.getLatLng());
      window.trackd.map.fitBounds(L.latLngBounds(pts), {paddingTopLeft: [30, 30], paddingBottomRight: [440, 30],
                                                         animate: false});
    }""")
    shipment = page.evaluate(PICK)
    page.evaluate("id => window.trackd.select(id)", shipment)
    page.wait_for_function(
        "() => !/Loading/.test(document.getElementById('panel-timeline').textContent)", timeout=20_000
    )
    page.wait_for_timeout(3000)  # a few live updates, so markers are seen moving along their routes
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out))
    # The world at a glance: the panel closed, stacks drawn as clusters coloured by their worst status.
    page.click("#panel-close")
    page.evaluate("() => { window.trackd.map.setView([25, 20], 2, {animate: false}); }")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out.with_name(out.stem + "-clusters.png")))
    # The list beside the map, sorted as it opens.
    page.click("#list-toggle")
    page.wait_for_selector("#list:not([hidden])", timeout=10_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out.with_name(out.stem + "-list.png")))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    p.add_argument("--shipments", type=int, default=300)
    p.add_argument("--want", type=int, default=200, help="markers on the map before the screenshot")
    p.add_argument("--moving", type=int, default=100, help="of them under way with a position")
    args = p.parse_args()
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"screenshot: {CHROMIUM} is missing (apt-get install -y chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="trackd-screenshot-"))
    proc, url, key = start_demo(tmp / "state", args.shipments, tmp / "demo.log")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                ],
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                capture(page, url, key, args.want, args.moving, args.out)
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
    print(f"screenshot: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
