"""The ocean release against the real services: set from DCSA events and by PATCH, streamed as
`release.changed`, and the `demurrage_risk` time rule driven by event times and the rule's `now`."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from ingest import sources
from tests.conftest import RunEnv, Server, Tenant
from trackd import assessment, db, ledger, registry, release_store, store, tenant_store
from trackd.codes import Mode
from trackd.model import Location, SourceContext
from trackd.settings import Settings
from trackd.shipment import Leg, Shipment

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
LEG = Leg(Mode.SEA, Location(unlocode="CNSHA"), Location(unlocode="NLRTM"))


def dcsa_event(code: str, at: datetime, container: str, event_type: str = "EQUIPMENT") -> dict[str, Any]:
    field = "equipmentEventTypeCode" if event_type == "EQUIPMENT" else "transportEventTypeCode"
    return {
        "eventID": secrets.token_hex(8),
        "eventType": event_type,
        "eventClassifierCode": "ACT",
        "eventDateTime": at.isoformat(),
        "eventCreatedDateTime": at.isoformat(),
        field: code,
        "equipmentReference": container,
        "transportCall": {"UNLocationCode": "NLRTM", "modeOfTransport": "VESSEL"},
    }


@pytest.fixture(scope="module")
def tenant(make_tenant: Any) -> Tenant:
    t: Tenant = make_tenant("rel")
    return t


async def _next_release(ws: Any) -> dict[str, Any]:
    while True:
        msg: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if msg["type"] == "release.changed":
            return msg


async def test_release_from_a_dcsa_event_and_from_patch_on_the_stream(tenant: Tenant, server: Server) -> None:
    r = tenant.http.post("/v1/shipments", json={"tracking_number": "REL-1", "references": ["MSKU1234565"]})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["release"] is None
    url = server.url.replace("http://", "ws://") + f"/v1/stream?token={tenant.api_key}"
    async with connect(url) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "shipments": [sid]}).decode())
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "snapshot"

        ready = T0 + timedelta(days=1)
        body = orjson.dumps([dcsa_event("AVAILABLE_FOR_PICKUP", ready, "MSKU1234565")])
        assert tenant.signed("dcsa", body, header="Notification-Signature").status_code == 204
        msg = await _next_release(ws)
        assert msg["shipment_id"] == sid
        want = {"last_free_day": None, "available_for_pickup_at": ready.isoformat(), "holds": []}
        assert msg["release"] == want
        assert tenant.http.get(f"/v1/shipments/{sid}").json()["release"] == want

        lfd = T0 + timedelta(days=4)
        hold = {"kind": "terminal", "since": (T0 + timedelta(days=2)).isoformat()}
        r = tenant.http.patch(
            f"/v1/shipments/{sid}", json={"release": {"last_free_day": lfd.isoformat(), "holds": [hold]}}
        )
        assert r.status_code == 200, r.text
        want = {**want, "last_free_day": lfd.isoformat(), "holds": [{**hold, "cleared_at": None}]}
        assert r.json()["release"] == want
        assert (await _next_release(ws))["release"] == want
        # The last free day has passed and nothing picked the container up: at risk at once.
        [risk] = [e for e in r.json()["exceptions"] if e["kind"] == "demurrage_risk"]
        assert (risk["raised_at"], risk["cleared_at"]) == ((lfd - timedelta(hours=24)).isoformat(), None)

        bad = {"holds": [{**hold, "cleared_at": (T0 + timedelta(days=1)).isoformat()}]}
        r = tenant.http.patch(f"/v1/shipments/{sid}", json={"release": bad})
        assert r.status_code == 422
        assert r.json()["detail"] == "release.holds[0].cleared_at: is before since"
        r = tenant.http.patch(f"/v1/shipments/{sid}", json={"release": {"last_free_day": "2026-05-01T00:00:00"}})
        assert r.status_code == 422
        assert r.json()["detail"] == "release.last_free_day: needs a UTC offset"

        r = tenant.http.patch(f"/v1/shipments/{sid}", json={"release": None})
        assert r.json()["release"] is None
        [risk] = [e for e in r.json()["exceptions"] if e["kind"] == "demurrage_risk"]
        assert risk["cleared_at"] is not None
        assert (await _next_release(ws))["release"] is None
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["release.changed"]}
    assert tenant.http.post("/v1/webhooks", json=hook).status_code == 201


def _exceptions(msgs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (m["type"], m["exception"]["raised_at"] if m["type"] == "exception.raised" else m["exception"]["cleared_at"])
        for m in msgs
        if m["type"].startswith("exception.") and m["exception"]["kind"] == "demurrage_risk"
    ]


async def test_demurrage_risk_a_day_before_the_lfd_cleared_by_the_gate_out(testenv: RunEnv) -> None:
    pool = await db.open_pool(testenv.dsn, 2)
    evaluator = assessment.Evaluator(Settings())
    name = f"dem-{secrets.token_hex(4)}"
    await tenant_store.create_tenant(pool, name, None)
    lfd = T0 + timedelta(days=5)

    def events(*items: dict[str, Any], at: datetime) -> list[Any]:
        return sources.get("dcsa").normalize(orjson.dumps(list(items)), SourceContext(name, at))

    async def tick(now: datetime) -> list[tuple[str, str]]:
        async with store.transaction(pool) as conn:
            msgs = await ledger.update_shipments(conn, tenant_id, {sid: []}, now, evaluator, emitting=True)
        return _exceptions(msgs)

    try:
        async with store.transaction(pool) as conn:
            row = await (await conn.execute("SELECT id FROM tenants WHERE name = %s", (name,))).fetchone()
            assert row is not None
            tenant_id, sid = int(row["id"]), store.new_id("shp")
            shipment = Shipment(sid, "DEM-1", references=("MSKU7654321",), legs=(LEG,), created_at=T0)
            await registry.create_shipment(conn, tenant_id, shipment, [], T0, evaluator)
        arrived = events(
            dcsa_event("ARRI", T0 + timedelta(days=1), "MSKU7654321", "TRANSPORT"),
            dcsa_event("DISC", T0 + timedelta(days=1, hours=4), "MSKU7654321"),
            at=T0 + timedelta(days=2),
        )
        async with store.transaction(pool) as conn:
            await ledger.write_events(conn, tenant_id, arrived, T0 + timedelta(days=2), evaluator)
            msgs = await release_store.set_release(
                conn, tenant_id, sid, {"last_free_day": lfd}, T0 + timedelta(days=2), evaluator
            )
        assert [m["type"] for m in msgs][:1] == ["release.changed"]
        assert _exceptions(msgs) == []
        assert await tick(lfd - timedelta(hours=25)) == []
        assert await tick(lfd - timedelta(hours=23)) == [("exception.raised", (lfd - timedelta(hours=24)).isoformat())]
        assert await tick(lfd - timedelta(hours=22)) == []  # raised once
        out = events(dcsa_event("GTOT", lfd - timedelta(hours=3), "MSKU7654321"), at=lfd - timedelta(hours=2))
        async with store.transaction(pool) as conn:
            result = await ledger.write_events(conn, tenant_id, out, lfd - timedelta(hours=2), evaluator)
        assert _exceptions(result.messages) == [("exception.cleared", (lfd - timedelta(hours=3)).isoformat())]
        assert await tick(lfd + timedelta(hours=5)) == []  # picked up: not raised again after the LFD
    finally:
        await pool.close()
