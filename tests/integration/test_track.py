"""Public tracking links: share, the JSON and the page, expiry (410) and unknown links (404), the
tenant's branding set by `trackd tenant set`, and what the public never sees."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from notify import link_store
from tests.conftest import RunEnv, Server
from trackd import keys, tenant_store

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


@pytest.fixture(scope="module")
def owner(make_tenant: Any) -> Any:
    return make_tenant("tr")


@pytest.fixture(scope="module")
def public(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:  # no API key
        yield http


@pytest.fixture(scope="module")
def tracked(owner: Any) -> dict[str, Any]:
    """A shipment Shanghai -> Rotterdam with milestones (actual and not) and 600 positions."""
    r = owner.http.post(
        "/v1/shipments",
        json={
            "tracking_number": "TRACK-PUB-1",
            "carrier": "Maersk",
            "legs": [
                {
                    "mode": "sea",
                    "origin": {"name": "Shanghai", "country": "CN", "lat": 31.23, "lon": 121.47},
                    "destination": {"name": "Rotterdam", "country": "NL", "lat": 51.95, "lon": 4.14},
                }
            ],
        },
    )
    assert r.status_code == 201, r.text
    events: list[dict[str, Any]] = [
        {
            "occurred_at": T0.isoformat(),
            "shipment": "TRACK-PUB-1",
            "milestone": {"code": "picked_up", "location": {"name": "Shanghai", "country": "CN", "unlocode": "CNSHA"}},
        },
        {
            "occurred_at": (T0 + timedelta(hours=5)).isoformat(),
            "shipment": "TRACK-PUB-1",
            "milestone": {"code": "departed", "location": {"name": "Yangshan", "country": "CN"}},
        },
        {
            "occurred_at": (T0 + timedelta(days=20)).isoformat(),
            "shipment": "TRACK-PUB-1",
            "milestone": {"code": "arrived", "classifier": "estimated"},
        },
    ]
    events += [
        {
            "occurred_at": (T0 + timedelta(hours=6, minutes=i)).isoformat(),
            "shipment": "TRACK-PUB-1",
            "position": {"lat": 31.0 - i * 0.01, "lon": 122.0 + i * 0.01 + (0.002 if i % 2 else 0.0)},
        }
        for i in range(600)
    ]
    assert owner.http.post("/v1/events", json=events).status_code == 202
    out: dict[str, Any] = r.json()
    return out


def share(owner: Any, shipment_id: str, **body: Any) -> httpx.Response:
    r: httpx.Response = owner.http.post(f"/v1/shipments/{shipment_id}/share", json=body or None)
    return r


def test_share_link_json_has_no_internal_ids_or_raw_payloads(
    owner: Any, tracked: dict[str, Any], public: httpx.Client
) -> None:
    r = share(owner, tracked["id"])
    assert r.status_code == 201, r.text
    link = r.json()
    assert set(link) == {"token", "url", "expires_at"}
    assert len(link["token"]) >= 22  # at least 128 random bits
    assert link["url"].endswith(f"/track/{link['token']}")
    expires = datetime.fromisoformat(link["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30, minutes=1)

    got = public.get(f"/v1/track/{link['token']}")
    assert got.status_code == 200, got.text
    track = got.json()
    assert set(track) == {
        "tracking_number",
        "carrier",
        "status",
        "substatus",
        "milestones",
        "eta",
        "route",
        "origin",
        "destination",
        "brand",
        "updated_at",
    }
    assert (track["tracking_number"], track["carrier"], track["status"]) == ("TRACK-PUB-1", "Maersk", "in_transit")
    assert [(m["code"], m["location"]) for m in track["milestones"]] == [
        ("picked_up", {"name": "Shanghai", "country": "CN"}),
        ("departed", {"name": "Yangshan", "country": "CN"}),
    ]  # actual ones only
    assert 2 <= len(track["route"]) <= 500
    assert track["route"][0] == [122.0, 31.0]
    assert track["route"][-1] == pytest.approx([122.0 + 5.99 + 0.002, 31.0 - 5.99])
    assert track["destination"] == {"name": "Rotterdam", "country": "NL", "lat": 51.95, "lon": 4.14}
    assert track["origin"] == {"name": "Shanghai", "country": "CN"}
    assert track["brand"] == {"name": None, "logo_url": None, "colour": None, "support_url": None}
    assert track["updated_at"]
    text = got.text
    assert tracked["id"] not in text
    assert "raw" not in text
    assert "event_id" not in text
    assert "evt_" not in text
    assert owner.name not in text


def test_tracking_page_follows_accept_language(owner: Any, tracked: dict[str, Any], public: httpx.Client) -> None:
    token = share(owner, tracked["id"]).json()["token"]
    zh = public.get(f"/track/{token}", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
    assert zh.status_code == 200
    assert zh.headers["content-type"].startswith("text/html")
    assert '<html lang="zh-Hans">' in zh.text
    assert "运输中" in zh.text  # in transit
    assert "已出发" in zh.text  # departed
    assert "阿姆斯特丹时间" in zh.text  # the destination's zone, as people name it
    assert "Europe/Amsterdam" not in zh.text
    en = public.get(f"/track/{token}")
    assert "In transit" in en.text
    assert '<b id="origin">Shanghai, China</b>' in en.text
    assert '<b id="destination">Rotterdam, Netherlands</b>' in en.text
    assert 'data-step="in_transit" aria-current="step"' in en.text
    assert '<html lang="en">' in en.text
    assert tracked["id"] not in en.text


def test_expired_tokens_are_410_and_unknown_ones_404(
    owner: Any, tracked: dict[str, Any], public: httpx.Client, testenv: RunEnv
) -> None:
    token = share(owner, tracked["id"], expires_in_s=60).json()["token"]
    assert public.get(f"/v1/track/{token}").status_code == 200
    testenv.sql(
        "WITH u AS (UPDATE share_links SET expires_at = now() - interval '1 second'"
        " WHERE shipment_id = %s AND expires_at < now() + interval '2 minutes' RETURNING 1) SELECT count(*) FROM u",
        tracked["id"],
    )
    statuses = {path: public.get(path).status_code for path in (f"/v1/track/{token}", f"/track/{token}")}
    assert statuses == {f"/v1/track/{token}": 410, f"/track/{token}": 410}
    assert public.get(f"/v1/track/{token}").json()["error"] == "Gone"
    assert public.get("/v1/track/nope").status_code == 404
    assert public.get("/v1/track/nope").json()["error"] == "NotFound"
    unknown = public.get("/track/nope", headers={"Accept-Language": "de-DE,de;q=0.9"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("text/html")
    assert '<html lang="de">' in unknown.text
    assert "Sendungslink nicht gefunden" in unknown.text
    assert "script-src 'none'" in unknown.headers["content-security-policy"]
    assert unknown.headers["cache-control"] == "no-store"
    ended = public.get(f"/track/{token}", headers={"Accept-Language": "fr"})
    assert "Ce lien de suivi a expiré" in ended.text


def test_share_validation_and_isolation(owner: Any, make_tenant: Any, tracked: dict[str, Any], server: Server) -> None:
    assert share(owner, tracked["id"], expires_in_s=400 * 86400).status_code == 422
    assert share(owner, tracked["id"], expires_in_s=10).status_code == 422
    year = share(owner, tracked["id"], expires_in_s=365 * 86400)
    assert year.status_code == 201
    assert share(owner, "shp_nope").status_code == 404
    assert httpx.post(f"{server.url}/v1/shipments/{tracked['id']}/share", timeout=10).status_code == 401
    other = make_tenant("tx")
    assert share(other, tracked["id"]).status_code == 404
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    assert "/v1/track/{token}" in schema
    assert "/v1/shipments/{shipment_id}/share" in schema
    assert "/track/{token}" not in schema


def test_a_revoked_link_answers_410(
    owner: Any, tracked: dict[str, Any], public: httpx.Client, make_tenant: Any, server: Server
) -> None:
    token = share(owner, tracked["id"]).json()["token"]
    kept = share(owner, tracked["id"]).json()["token"]
    path = f"/v1/shipments/{tracked['id']}/share/{token}"
    assert public.get(f"/track/{token}").status_code == 200
    assert make_tenant("tv").http.delete(path).status_code == 404  # not another tenant's to revoke
    assert httpx.delete(f"{server.url}{path}", timeout=10).status_code == 401
    assert public.get(f"/v1/track/{token}").status_code == 200

    assert owner.http.delete(path).status_code == 204
    page = public.get(f"/track/{token}")
    assert page.status_code == 410
    assert page.headers["content-type"].startswith("text/html")
    assert "This tracking link has expired" in page.text
    got = public.get(f"/v1/track/{token}")
    assert got.status_code == 410
    assert got.json()["error"] == "Gone"
    assert owner.http.delete(path).status_code == 404  # revoked already
    assert owner.http.delete(f"/v1/shipments/shp_nope/share/{kept}").status_code == 404
    assert public.get(f"/v1/track/{kept}").status_code == 200  # the shipment's other link still works
    assert public.get(f"/v1/track/{kept}").headers["cache-control"] == "no-store"


def test_revoking_every_link_of_a_shipment(owner: Any, public: httpx.Client, server: Server) -> None:
    r = owner.http.post("/v1/shipments", json={"tracking_number": "TRACK-PUB-REVOKE"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    tokens = [share(owner, sid).json()["token"] for _ in range(3)]
    assert all(public.get(f"/v1/track/{t}").status_code == 200 for t in tokens)
    r = owner.http.delete(f"/v1/shipments/{sid}/share")
    assert r.status_code == 200
    assert r.json() == {"revoked": 3}
    assert [public.get(f"/track/{t}").status_code for t in tokens] == [410, 410, 410]
    assert owner.http.delete(f"/v1/shipments/{sid}/share").json() == {"revoked": 0}
    assert owner.http.delete("/v1/shipments/shp_nope/share").status_code == 404
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    assert "delete" in schema["/v1/shipments/{shipment_id}/share"]
    assert "delete" in schema["/v1/shipments/{shipment_id}/share/{token}"]


def test_a_link_can_show_positions_coarsely_or_not_at_all(
    owner: Any, tracked: dict[str, Any], public: httpx.Client
) -> None:
    views = {}
    for position in ("exact", "coarse", "none"):
        r = share(owner, tracked["id"], position=position)
        assert r.status_code == 201, r.text
        assert set(r.json()) == {"token", "url", "expires_at"}
        got = public.get(f"/v1/track/{r.json()['token']}")
        assert got.status_code == 200
        assert public.get(f"/track/{r.json()['token']}").status_code == 200
        views[position] = got.json()
    exact, coarse, none = views["exact"], views["coarse"], views["none"]
    assert exact["route"][-1] == pytest.approx([122.0 + 5.99 + 0.002, 31.0 - 5.99])  # as reported
    # coarse: every point on the 0.1 degree grid (about 11 km), the latest one too, no repeats in a row
    assert coarse["route"][0] == [122.0, 31.0]
    assert coarse["route"][-1] == [128.0, 25.0]
    assert all(lon == round(lon, 1) and lat == round(lat, 1) for lon, lat in coarse["route"])
    assert all(p != q for p, q in zip(coarse["route"], coarse["route"][1:], strict=False))
    assert 2 <= len(coarse["route"]) <= 121  # 600 positions along 6 degrees: at most one a tenth of a degree
    assert none["route"] == []
    # everything else is the same for the three
    for view in (coarse, none):
        assert {k: v for k, v in view.items() if k != "route"} == {k: v for k, v in exact.items() if k != "route"}
    assert share(owner, tracked["id"], position="street").status_code == 422
    assert share(owner, tracked["id"], position=None).status_code == 422


def test_tenant_set_brands_the_page_and_keeps_retention(
    owner: Any, tracked: dict[str, Any], public: httpx.Client, testenv: RunEnv
) -> None:
    r = testenv.trackd(
        "tenant",
        "set",
        owner.name,
        "--brand-name",
        "Acme Parcels",
        "--brand-logo",
        "https://cdn.acme.example/logo.svg",
        "--brand-colour",
        "#0A7D33",
        "--support-url",
        "https://acme.example/help",
        "--retention-days",
        "90",
    )
    assert r.returncode == 0, r.stderr
    brand = {
        "name": "Acme Parcels",
        "logo_url": "https://cdn.acme.example/logo.svg",
        "colour": "#0a7d33",
        "support_url": "https://acme.example/help",
    }
    assert orjson.loads(r.stdout) == {"tenant": owner.name, "brand": brand, "retention_days": 90}
    assert testenv.sql("SELECT retention_days FROM tenants WHERE name = %s", owner.name) == [(90,)]
    token = share(owner, tracked["id"]).json()["token"]
    assert public.get(f"/v1/track/{token}").json()["brand"] == brand
    page = public.get(f"/track/{token}")
    assert "--brand:#0a7d33" in page.text
    assert '<img class="logo" src="https://cdn.acme.example/logo.svg" alt="Acme Parcels"' in page.text
    assert '<a id="support" href="https://acme.example/help"' in page.text
    assert "img-src 'self' data: https://cdn.acme.example;" in page.headers["content-security-policy"]

    # Only what is given changes; an empty value clears one, "default" the retention.
    r = testenv.trackd("tenant", "set", owner.name, "--brand-logo", "", "--retention-days", "default")
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout) == {
        "tenant": owner.name,
        "brand": {**brand, "logo_url": None},
        "retention_days": None,
    }
    assert testenv.sql("SELECT retention_days FROM tenants WHERE name = %s", owner.name) == [(None,)]
    assert "img-src 'self' data:;" in public.get(f"/track/{token}").headers["content-security-policy"]


async def _with_link_store(dsn: str, step: Callable[[Any], Awaitable[Any]]) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn, conn.transaction():
        return await step(conn)


def test_a_revoked_link_has_ended_whatever_each_process_clock_says(
    owner: Any, tracked: dict[str, Any], public: httpx.Client, testenv: RunEnv
) -> None:
    sid = tracked["id"]
    tenant_id = testenv.sql("SELECT id FROM tenants WHERE name = %s", owner.name)[0][0]
    ahead, behind = datetime.now(UTC) + timedelta(hours=1), datetime.now(UTC) - timedelta(hours=1)
    # Revoked by a process whose clock runs an hour ahead: the server, on time, says it has ended.
    token = share(owner, sid).json()["token"]
    revoked = asyncio.run(
        _with_link_store(testenv.dsn, lambda c: link_store.revoke_share(c, tenant_id, sid, token, ahead))
    )
    assert revoked is True
    assert public.get(f"/v1/track/{token}").status_code == 410
    # Revoked by the server: a process whose clock lags an hour sees it ended too.
    lagged = share(owner, sid).json()["token"]
    assert owner.http.delete(f"/v1/shipments/{sid}/share/{lagged}").status_code == 204
    link = asyncio.run(_with_link_store(testenv.dsn, lambda c: link_store.find_link(c, lagged, behind)))
    assert link is not None
    assert (link.tenant_id, link.shipment_id, link.live) == (tenant_id, sid, False)
    assert owner.http.delete(f"/v1/shipments/{sid}/share/{lagged}").status_code == 404
    # The time of revocation is the database's; the expiry stays as it was made.
    hashes = [keys.hash_key(t) for t in (token, lagged)]
    rows = testenv.sql(
        "SELECT revoked_at BETWEEN now() - interval '1 minute' AND now(), expires_at > now() + interval '29 days'"
        " FROM share_links WHERE token_hash = ANY(%s)",
        hashes,
    )
    assert rows == [(True, True), (True, True)]


_COLUMN_RULES: dict[str, tuple[Callable[[object], str | None], list[str]]] = {
    "brand_name": (tenant_store.valid_name, ["Acme", "x" * 80, "x" * 81, " Acme", "Acme\t", "Ac\x1cme", "\x1c", "é"]),
    "brand_colour": (tenant_store.valid_colour, ["#0a7d33", "#0A7D33", "#0a7d33\n", "green", "#0a7d3"]),
    **dict.fromkeys(
        ("brand_logo_url", "support_url"),
        (
            tenant_store.valid_web_url,
            [
                "https://cdn.acme.example/l.png?v=1",
                "http://127.0.0.1:8080/logo.svg",
                "https://A.example:65535/x?y=`{}[]|^~%20#f",
                "https://a_b.example/",
                "https://a.example/\\l.png",
                "https://a.example:99999/",
                "https://a.example:/",
                "https://user:pw@a.example/",
                "https://[::1]/",
                "https://a.example/é",
                "https://a.example;script-src/",
                "HTTPS://a.example/",
                "https://a.example" + "/a" * 1016,
            ],
        ),
    ),
}


def test_the_database_stores_exactly_the_brand_values_trackd_accepts(owner: Any, testenv: RunEnv) -> None:
    """What a CHECK of migration 015 lets in is what the read side takes as it is, no more, no less."""
    name = owner.name
    mismatches = []
    with psycopg.connect(testenv.dsn) as conn, conn.transaction(force_rollback=True):
        for column, (valid, values) in _COLUMN_RULES.items():
            for value in values:
                try:
                    with conn.transaction():  # a savepoint
                        conn.execute(f"UPDATE tenants SET {column} = %s WHERE name = %s", (value, name))
                    stored = True
                except psycopg.errors.CheckViolation:
                    stored = False
                if stored != (valid(value) == value):
                    mismatches.append((column, value, stored))
    assert mismatches == []


async def _brand_past_the_check(dsn: str, tenant: str) -> list[tenant_store.Brand]:
    """The branding read twice while a logo URL the database would refuse is stored anyway."""
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        async with conn.transaction(force_rollback=True):
            await conn.execute("ALTER TABLE tenants DROP CONSTRAINT tenants_brand_logo_url_check")
            row = await (
                await conn.execute(
                    "UPDATE tenants SET brand_name = 'Acme', brand_logo_url = 'https://a_b.example/l.png?key=s3cret',"
                    " brand_colour = NULL, support_url = NULL WHERE name = %s RETURNING id",
                    (tenant,),
                )
            ).fetchone()
            assert row is not None
            return [await tenant_store.brand_for(conn, row["id"]) for _ in range(2)]


def test_a_stored_brand_value_trackd_refuses_is_left_out(
    owner: Any, testenv: RunEnv, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="trackd.tenants"):
        brands = asyncio.run(_brand_past_the_check(testenv.dsn, owner.name))
    assert brands == [tenant_store.Brand(name="Acme")] * 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "trackd.tenants"]
    assert len(warnings) == 1  # once per process
    assert "logo_url" in warnings[0]
    assert "s3cret" not in caplog.text
    assert "a_b.example" not in caplog.text
