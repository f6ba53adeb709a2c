"""Input no tenant could be authenticated for stores nothing beyond a bounded sample: the first 4 KB
of each, capped in rows and bytes, at most so many a second per client address, and expiring."""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import RunEnv, Server, start_server, stop_server, wait_for
from trackd import db, quarantine_store, ratelimit, store
from trackd.errors import RateLimited

MB = 1_000_000  # under TRACKD_MAX_BODY_BYTES' default of 5 MiB: read, not refused with 413
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def unattributed(server: Server) -> dict[str, float]:
    """`trackd_unattributed_input_total` of the osmand source by outcome."""
    out = {"sampled": 0.0, "dropped": 0.0}
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("trackd_unattributed_input_total{"):
            series, value = line.rsplit(" ", 1)
            labels = dict(_LABEL.findall(series))
            if labels["source"] == "osmand":
                out[labels["outcome"]] = float(value)
    return out


def sample_rows(testenv: RunEnv) -> list[tuple[int, int, int, str]]:
    """(id, bytes kept, size received, reason) of every unattributed quarantine row."""
    return [
        (int(i), int(n), int(size) if size is not None else -1, reason)
        for i, n, size, reason in testenv.sql(
            "SELECT id, octet_length(raw), size, reason FROM quarantine WHERE tenant_id IS NULL ORDER BY id"
        )
    ]


def database_size(testenv: RunEnv) -> int:
    return int(testenv.sql("SELECT pg_database_size(current_database())")[0][0])


@pytest.fixture
def api(testenv: RunEnv, tmp_path: Path) -> Iterator[Server]:
    srv = start_server(testenv, tmp_path, roles="api")  # its own process: its own buckets and counters
    yield srv
    stop_server(srv)


def test_megabytes_of_junk_for_unknown_devices_store_a_small_sample(testenv: RunEnv, api: Server) -> None:
    t = orjson.loads(testenv.trackd("tenant", "create", f"ua{secrets.token_hex(3)}").stdout)
    key = f"device-{secrets.token_hex(8)}"
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {t['api_key']}"}, timeout=30) as http:
        assert http.post("/v1/devices", json={"id": "truck-1", "key": key}).status_code == 201
    position = {"id": key, "lat": "50.1", "lon": "8.6", "timestamp": str(int(time.time()))}
    with httpx.Client(base_url=api.url, timeout=30) as osm:  # heard once before the flood
        assert osm.get("/v1/osmand", params=position).status_code == 200
    before_rows = {r[0] for r in sample_rows(testenv)}
    before_size = database_size(testenv)
    junk = bytes(range(256)) * (MB // 256) + b"x" * (MB % 256)
    assert len(junk) == MB
    codes: list[int] = []
    started = time.monotonic()
    with httpx.Client(base_url=api.url, timeout=30) as osm:
        for i in range(100):
            # an unknown key in the query (404, or 429 past the address's lookups), or no key at all
            # (the junk is no form): 422
            params = {"id": f"nobody-{i}-{secrets.token_hex(4)}"} if i % 2 else {}
            r = osm.post("/v1/osmand", params=params, content=junk, headers={"content-type": "text/plain"})
            codes.append(r.status_code)
    elapsed = time.monotonic() - started
    assert codes.count(422) == 50
    looked_up = codes.count(404)
    assert looked_up + codes.count(429) == 50
    misses = ratelimit.MISSES_PER_ADDRESS_BURST + math.ceil(elapsed * ratelimit.MISSES_PER_ADDRESS_PER_S)
    assert min(50, ratelimit.MISSES_PER_ADDRESS_BURST) <= looked_up <= misses + 1

    new = [r for r in sample_rows(testenv) if r[0] not in before_rows]
    # the address's burst of ten, then one a second
    assert 10 <= len(new) <= 10 + math.ceil(elapsed * ratelimit.SAMPLE_PER_ADDRESS_PER_S) + 1
    assert all(kept <= quarantine_store.SAMPLE_RAW and size == MB for _, kept, size, _ in new)
    assert all(reason.startswith(("NotFound: no device with key", "ValidationError: body")) for *_, reason in new)
    assert sum(reason.startswith("NotFound") for *_, reason in new) <= looked_up  # a 429 is never kept
    assert unattributed(api) == {"sampled": len(new), "dropped": 100 - len(new)}
    grown = database_size(testenv) - before_size
    assert grown < 10 * 1024 * 1024, grown
    everything = sample_rows(testenv)
    assert len(everything) <= quarantine_store.SAMPLE_ROWS

    # Another client address has its own allowance.
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=api.url, transport=other, timeout=30) as osm2:
        r = osm2.post("/v1/osmand", params={"id": "nobody-else"}, content=b"x" * 5000)
        assert r.status_code == 404
    (last,) = [r for r in sample_rows(testenv) if r[0] not in {x[0] for x in everything}]
    assert (last[1], last[2]) == (quarantine_store.SAMPLE_RAW, 5000)

    # A registered device heard before is still heard from the flooding address.
    with httpx.Client(base_url=api.url, timeout=30) as osm:
        position["timestamp"] = str(int(time.time()) + 1)
        ok = osm.get("/v1/osmand", params=position)
        assert ok.status_code == 200, ok.text
    stored = testenv.sql(
        "SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s AND e.kind = 'position'",
        t["tenant"],
    )
    assert stored[0][0] == 2


def test_unknown_keys_past_an_addresss_budget_cost_no_lookup(testenv: RunEnv, api: Server) -> None:
    t = orjson.loads(testenv.trackd("tenant", "create", f"ub{secrets.token_hex(3)}").stdout)
    fresh = f"device-{secrets.token_hex(8)}"
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {t['api_key']}"}, timeout=30) as http:
        assert http.post("/v1/devices", json={"id": "van-1", "key": fresh}).status_code == 201
    before = unattributed(api)
    burst = int(ratelimit.MISSES_PER_ADDRESS_BURST)
    with httpx.Client(base_url=api.url, transport=httpx.HTTPTransport(local_address="127.0.0.4"), timeout=30) as osm:
        started = time.monotonic()
        answers = [osm.get("/v1/osmand", params={"id": f"guess-{i:03d}-{secrets.token_hex(4)}"}) for i in range(100)]
        elapsed = time.monotonic() - started
        codes = [r.status_code for r in answers]
        looked_up = codes.count(404)
        assert looked_up + codes.count(429) == 100
        assert codes[:burst] == [404] * burst
        assert looked_up <= burst + math.ceil(elapsed * ratelimit.MISSES_PER_ADDRESS_PER_S) + 1
        refused = [r for r in answers if r.status_code == 429]
        assert refused, elapsed  # 100 small requests take far less than the 40 s the budget would need
        assert refused[0].json()["error"] == "RateLimited"
        assert "unknown device keys" in refused[0].json()["detail"]
        assert 1 <= int(refused[0].headers["Retry-After"]) <= math.ceil(1 / ratelimit.MISSES_PER_ADDRESS_PER_S)
        after = unattributed(api)
        assert after["sampled"] + after["dropped"] - before["sampled"] - before["dropped"] == 100
        assert after["dropped"] - before["dropped"] >= len(refused)  # counted, never kept

        # The budget refills: a device this process has not heard yet gets its lookup then.
        time.sleep(1.2 / ratelimit.MISSES_PER_ADDRESS_PER_S)
        ok = osm.get("/v1/osmand", params={"id": fresh, "lat": "1.5", "lon": "2.5", "timestamp": str(int(time.time()))})
        assert ok.status_code == 200, ok.text


async def test_the_sample_is_capped_in_rows_and_bytes_and_keeps_the_newest(testenv: RunEnv) -> None:
    pool = await db.open_pool(testenv.dsn, 2)
    try:
        for i in range(quarantine_store.SAMPLE_ROWS + 50):
            assert await quarantine_store.quarantine_now(
                pool, None, "osmand", "http", f"NotFound: {i:06d}", b"z" * 6000
            )
        rows = sample_rows(testenv)
        assert len(rows) == quarantine_store.SAMPLE_ROWS  # 1,000 rows of 4,112 bytes: under 4 MiB, the row cap holds
        assert [reason for *_, reason in rows] == [
            f"NotFound: {i:06d}" for i in range(50, quarantine_store.SAMPLE_ROWS + 50)
        ]
        assert {(kept, size) for _, kept, size, _ in rows} == {(quarantine_store.SAMPLE_RAW, 6000)}

        long = "ValidationError: " + "r" * 3000  # kept to 2,000 characters
        for _ in range(700):
            assert await quarantine_store.quarantine_now(pool, None, "osmand", "http", long, b"z" * 6000)
        rows = sample_rows(testenv)
        per_row = quarantine_store.SAMPLE_RAW + 2000
        assert len(rows) == quarantine_store.SAMPLE_BYTES // per_row  # 688: now the byte cap holds
        assert all(reason == long[:2000] for *_, reason in rows)
        total = testenv.sql(
            "SELECT sum(octet_length(raw) + octet_length(reason)) FROM quarantine WHERE tenant_id IS NULL"
        )
        assert total[0][0] == len(rows) * per_row <= quarantine_store.SAMPLE_BYTES

        # A tenant's quarantine is not the sample: kept whole, never trimmed by it.
        name = f"q{secrets.token_hex(3)}"
        assert testenv.trackd("tenant", "create", name).returncode == 0
        tenant_id = int(testenv.sql("SELECT id FROM tenants WHERE name = %s", name)[0][0])
        assert await quarantine_store.quarantine_now(
            pool, tenant_id, "native", "api", "ValidationError: x", b"y" * 6000
        )
        assert testenv.sql("SELECT octet_length(raw), size FROM quarantine WHERE tenant_id = %s", tenant_id) == [
            (6000, 6000)
        ]
        assert len(sample_rows(testenv)) == quarantine_store.SAMPLE_BYTES // per_row
        assert recorded(testenv) == counted(testenv)  # the triggers' count is the sample's

        # A count that says more than the sample holds (rows gone without the triggers seeing it)
        # is made again at the next write, which then trims exactly.
        testenv.sql("UPDATE quarantine_sample SET rows = rows + 5000, bytes = bytes + 10000000 RETURNING 1")
        assert await quarantine_store.quarantine_now(pool, None, "osmand", "http", long, b"z" * 6000)
        assert len(sample_rows(testenv)) == quarantine_store.SAMPLE_BYTES // per_row
        assert recorded(testenv) == counted(testenv)
        # ... and one that says less lets it grow until the worker's retention pass counts again.
        testenv.sql("UPDATE quarantine_sample SET rows = 0, bytes = 0 RETURNING 1")
        assert await quarantine_store.quarantine_now(pool, None, "osmand", "http", long, b"z" * 6000)
        assert len(sample_rows(testenv)) == quarantine_store.SAMPLE_BYTES // per_row + 1
        async with store.transaction(pool) as conn:
            await quarantine_store.purge_quarantine_sample(conn)
        assert len(sample_rows(testenv)) == quarantine_store.SAMPLE_BYTES // per_row
        assert recorded(testenv) == counted(testenv)
    finally:
        testenv.sql(quarantine_store._RECOUNT + " RETURNING 1")
        await pool.close()


def recorded(testenv: RunEnv) -> tuple[int, int]:
    """The sample's size as `quarantine_sample` records it: (rows, bytes)."""
    rows, size = testenv.sql("SELECT rows, bytes FROM quarantine_sample")[0]
    return int(rows), int(size)


def counted(testenv: RunEnv) -> tuple[int, int]:
    """The sample's size, counted."""
    rows, size = testenv.sql(
        "SELECT count(*), coalesce(sum(octet_length(raw) + octet_length(reason)), 0) FROM quarantine"
        " WHERE tenant_id IS NULL"
    )[0]
    return int(rows), int(size)


def test_the_worker_expires_the_sample(testenv: RunEnv, tmp_path: Path) -> None:
    marker = secrets.token_hex(6)
    ids = testenv.sql(
        "INSERT INTO quarantine (tenant_id, received_at, source, transport, reason, raw, size)"
        " VALUES (NULL, now() - interval '8 days', 'osmand', 'http', 'old', %s, 3),"
        " (NULL, now() - interval '6 days', 'osmand', 'http', 'recent', %s, 3) RETURNING id",
        marker,
        marker,
    )
    assert len(ids) == 2
    srv = start_server(testenv, tmp_path, roles="api,worker")  # the retention job runs once at start
    try:
        wait_for(lambda: testenv.sql("SELECT reason FROM quarantine WHERE raw = %s", marker) == [("recent",)])
    finally:
        stop_server(srv)


def test_address_buckets_are_bounded_and_independent() -> None:
    b = ratelimit.Buckets(rate_per_s=1.0, burst=2.0, max_keys=3)
    assert [b.take("a", now=0.0) for _ in range(3)] == [True, True, False]
    assert b.take("b", now=0.0)  # another key has its own bucket
    assert not b.take("a", now=0.5)
    assert b.take("a", now=1.6)  # refilled at one a second
    for key in ("c", "d", "e"):
        b.take(key, now=2.0)
    assert len(b) == 3  # the keys left alone longest were forgotten


def test_an_addresss_lookups_are_taken_before_and_given_back_for_a_device() -> None:
    address = f"test-{secrets.token_hex(4)}"  # a bucket of its own
    burst = int(ratelimit.MISSES_PER_ADDRESS_BURST)
    for _ in range(burst):  # taken before each lookup: requests waiting at once cannot pass the budget
        ratelimit.take_lookup(address, now=100.0)
    with pytest.raises(RateLimited) as refused:
        ratelimit.take_lookup(address, now=100.0)
    assert refused.value.retry_after_s == math.ceil(1 / ratelimit.MISSES_PER_ADDRESS_PER_S)
    ratelimit.refund_lookup(address)  # that key named a device
    ratelimit.take_lookup(address, now=100.0)
    with pytest.raises(RateLimited):
        ratelimit.take_lookup(address, now=100.0)
    ratelimit.take_lookup(address, now=100.0 + 1 / ratelimit.MISSES_PER_ADDRESS_PER_S)  # refilled
    for _ in range(burst + 5):
        ratelimit.refund_lookup(address)
    for _ in range(burst):  # never more than the burst
        ratelimit.take_lookup(address, now=101.0)
    with pytest.raises(RateLimited):
        ratelimit.take_lookup(address, now=101.0)
