"""OsmAnd key lookups on either kind of pool: the guest pool's autocommit connections (one round
trip a lookup) and a pool that begins transactions (the fallback when there is no guest pool)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from tests.conftest import RunEnv
from trackd import db, store


def test_a_device_key_is_found_alike_on_an_autocommit_pool_and_on_a_transaction_pool(
    testenv: RunEnv, tenant: Any
) -> None:
    key = secrets.token_hex(8)
    r = tenant.http.post("/v1/devices", json={"id": "d-guest", "key": key})
    assert r.status_code == 201, r.text

    async def look_up(autocommit: bool) -> tuple[Any, Any]:
        pool = await db.open_pool(testenv.dsn, 1, autocommit=autocommit)
        try:
            return await store._device_for_key(pool, key), await store._device_for_key(pool, "no-such-" + key)
        finally:
            await pool.close()

    for autocommit in (True, False):
        found, missing = asyncio.run(look_up(autocommit))
        assert found is not None
        assert found[1:] == (tenant.name, "d-guest")
        assert missing is None
