"""The compose stack parses and is consistent, and every Grafana panel's SQL runs on the schema."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import psycopg
import yaml

from tests.conftest import ROOT, RunEnv
from trackd.settings import ROLES, Settings

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_has_an_image_or_a_build() -> None:
    for name, svc in COMPOSE["services"].items():
        assert "image" in svc or "build" in svc, name
    assert (ROOT / "Dockerfile").exists()


def test_trackd_services_use_the_documented_settings() -> None:
    documented = {f"TRACKD_{f.upper()}" for f in Settings.model_fields}
    trackd = {n: s for n, s in COMPOSE["services"].items() if n.startswith("trackd")}
    assert {"trackd-api", "trackd-ingest", "trackd-worker", "trackd-migrate"} <= set(trackd)
    for name, svc in trackd.items():
        env = svc["environment"]
        assert {"TRACKD_DATABASE_URL", "TRACKD_REDIS_URL", "TRACKD_MQTT_URL"} <= set(env), name
        unknown = {k for k in env if k.startswith("TRACKD_")} - documented
        assert not unknown, (name, unknown)
        cmd = svc["command"]
        if cmd[0] == "serve":
            roles = cmd[cmd.index("--roles") + 1].split(",")
            assert set(roles) <= set(ROLES), name
        else:
            assert cmd[0] in {"migrate"}, name


def test_mounted_files_exist() -> None:
    for name, svc in COMPOSE["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), (name, src)
    acl = (ROOT / "deploy/mosquitto/acl").read_text()
    assert "topic write trackd/acme/devices/truck-17/events" in acl
    users = {line.split(":")[0] for line in (ROOT / "deploy/mosquitto/passwords").read_text().splitlines() if line}
    assert {"trackd-ingest", "acme.truck-17"} <= users


def _panel_sql(panel: dict) -> list[str]:
    return [t["rawSql"] for t in panel.get("targets", []) if t.get("rawSql")]


def _expand(sql: str) -> str:
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", r"(\1 BETWEEN now() - interval '30 days' AND now())", sql)
    sql = re.sub(
        r"\$__timeGroupAlias\(([^,]+),\s*'?(\w+)'?\)", lambda m: f"date_trunc('hour', {m.group(1)}) AS \"time\"", sql
    )
    sql = re.sub(r"\$__timeGroup\(([^,]+),\s*'?(\w+)'?\)", lambda m: f"date_trunc('hour', {m.group(1)})", sql)
    assert "$__" not in sql, sql
    return sql


def test_every_grafana_panel_query_runs(testenv: RunEnv, server, tenant) -> None:
    # some data, so the queries do real work
    tenant.http.post(
        "/v1/shipments",
        json={
            "tracking_number": "GRAF-1",
            "promised_at": "2026-11-03T00:00:00Z",
            "legs": [{"mode": "road", "origin": {"unlocode": "USLRD"}, "destination": {"unlocode": "USCHI"}}],
        },
    )
    tenant.http.post(
        "/v1/events",
        json=[
            {"occurred_at": "2026-11-01T00:00:00Z", "shipment": "GRAF-1", "milestone": {"code": "picked_up"}},
            {"occurred_at": "2026-11-02T00:00:00Z", "shipment": "GRAF-1", "milestone": {"code": "delivered"}},
        ],
    )
    doc = orjson.loads((ROOT / "dashboards/grafana/dashboards/trackd.json").read_bytes())
    panels = [p for p in doc["panels"] if p.get("type") != "row"]
    assert len(panels) >= 5
    with psycopg.connect(testenv.dsn) as conn:
        for panel in panels:
            for sql in _panel_sql(panel):
                conn.execute(_expand(sql)).fetchall()
    ds = yaml.safe_load(Path(ROOT / "dashboards/grafana/provisioning/datasources/timescaledb.yml").read_text())
    assert ds["datasources"][0]["type"] == "postgres"
