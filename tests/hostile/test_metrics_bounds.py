"""/metrics against hostile input: label values come from bounded sets, so thousands of distinct
unknown carrier codes do not grow it; with `TRACKD_METRICS_TOKEN` set it wants the token."""

from __future__ import annotations

import copy
import re
import secrets
from pathlib import Path

import httpx
import orjson

from ingest import sources
from tests.conftest import ROOT, RunEnv, start_server, stop_server

_LABEL = re.compile(r'(\w+)="([^"]*)"')


def series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out.append((dict(_LABEL.findall(labels)), float(value)))
    return out


def test_thousands_of_unknown_codes_keep_metrics_small(testenv: RunEnv, tmp_path: Path) -> None:
    t = orjson.loads(testenv.trackd("tenant", "create", f"mb{secrets.token_hex(3)}").stdout)
    template = orjson.loads((ROOT / "tests/payloads/dcsa/v3_events.json").read_bytes())[0]  # an equipment DISC
    scheme = sources.get("dcsa").signature
    assert scheme is not None
    srv = start_server(testenv, tmp_path, roles="api")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            for batch in range(4):
                items = []
                for i in range(batch * 500, batch * 500 + 500):
                    item = copy.deepcopy(template)
                    item["metadata"]["eventID"] = f"unknown-code-{t['tenant']}-{i}"
                    item["payload"]["equipmentEventTypeCode"] = f"Z{i:05d}"
                    items.append(item)
                body = orjson.dumps(items)
                r = http.post(
                    f"/v1/ingest/{t['tenant']}/dcsa",
                    content=body,
                    headers={scheme.header: scheme.sign(t["ingest_secret"], body), "content-type": "application/json"},
                )
                assert r.status_code == 204, r.text
            scrape = http.get("/metrics")
        assert scrape.status_code == 200
        assert len(scrape.content) < 1024 * 1024, len(scrape.content)
        unknown = series(scrape.text, "trackd_unknown_codes_total")
        # one series per source, whatever the codes: they are kept in the events' raw_code (below)
        assert [v for labels, v in unknown if labels.get("source") == "dcsa"] == [2000.0]
        assert all(set(labels) == {"source"} for labels, _ in unknown), unknown
        stored = series(scrape.text, "trackd_events_stored_total")
        assert [v for labels, v in stored if labels == {"source": "dcsa"}] == [2000.0]
    finally:
        stop_server(srv)
    rows = testenv.sql(
        "SELECT count(*), count(DISTINCT e.raw_code) FROM events e JOIN tenants t ON t.id = e.tenant_id"
        " WHERE t.name = %s AND e.code IS NULL",
        t["tenant"],
    )
    assert rows == [(2000, 2000)]  # every event stored with its own code, as before


def test_metrics_token_is_required_when_set(testenv: RunEnv, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(24)
    srv = start_server(testenv, tmp_path, roles="api", extra={"TRACKD_METRICS_TOKEN": token})
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            for headers in ({}, {"Authorization": f"Bearer {token}x"}, {"Authorization": token}):
                r = http.get("/metrics", headers=headers)
                assert r.status_code == 401, (headers, r.text)
                assert r.json()["error"] == "Unauthorized"
            ok = http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200
            assert "trackd_events_stored" in ok.text
            assert http.get("/healthz").status_code == 200  # only /metrics wants it
    finally:
        stop_server(srv)
    assert token not in srv.log.read_text()
