"""Fault injection for notification hooks: a worker SIGKILLed in the middle of its sends.

Runs against the session's services and server (which runs a worker too) with one more worker
process of its own, the one that is killed; the receiver is a real HTTP server on loopback.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from tests.conftest import RunEnv, wait_for
from tests.integration.test_hooks import T0, Receiver, _stop, settled, shipment, start_worker, subscribe


def test_a_killed_hooks_worker_loses_no_notification(testenv: RunEnv, make_tenant: Any, tmp_path: Path) -> None:
    tenant = make_tenant("wk")
    doomed = start_worker(testenv, tmp_path)
    started = [doomed]
    rec = Receiver(lambda _req, nth: (200, 2.0 if nth == 1 else 0.0))  # first sends stay in flight a while
    try:
        sids = [shipment(tenant, f"HOOK-KILL-{i}") for i in range(8)]
        hook = subscribe(tenant, rec.url, ["status.changed"], shipment_ids=sids)
        batch = [
            {"occurred_at": T0.isoformat(), "shipment": f"HOOK-KILL-{i}", "milestone": {"code": "departed"}}
            for i in range(8)
        ]
        assert tenant.http.post("/v1/events", json=batch).status_code == 202  # one commit, eight deliveries
        wait_for(lambda: len(rec.requests) >= 6)  # the workers have sends in flight
        os.kill(doomed.pid, signal.SIGKILL)  # mid-send, after the commit
        doomed.wait(10)
        started.append(start_worker(testenv, tmp_path))  # restarted
        items = wait_for(settled(testenv, tenant, hook["id"], 8), timeout=30)
        assert len(items) == 8
        assert all(d["status"] == "succeeded" for d in items)
        # a receiver that deduplicates by webhook-id saw each of the eight messages
        assert set(rec.ids()) == {d["id"] for d in items}
        for d in items:  # sends cut off by the kill are not in the log; nothing else is missing
            assert 1 <= len(d["attempts"]) <= rec.ids().count(d["id"])
        assert started[-1].poll() is None
    finally:
        rec.close()
        _stop(started)
