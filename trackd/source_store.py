"""SQL for the feeds trackd pulls (`pull_sources`, migrations/013_dcsa_sources.sql).

A worker `claim`s one due source at a time with a lease (`FOR UPDATE SKIP LOCKED`: two workers never
take the same one), keeps its progress after every page (`save_page`) and hands it back when the
pass ends (`finish`). The API key is kept encrypted, as ingest secrets are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from trackd import keys, tenant_store
from trackd.store import Conn, Row, Tenant, iso, new_id

KINDS = ("dcsa",)

CLAIM = """
UPDATE pull_sources p SET leased_until = %(now)s + %(lease)s, last_polled_at = %(now)s
FROM tenants t
WHERE t.id = p.tenant_id AND p.id = (
  SELECT id FROM pull_sources
  WHERE next_poll_at <= %(now)s AND (leased_until IS NULL OR leased_until < %(now)s)
  ORDER BY next_poll_at LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING p.*, t.name AS tenant_name
"""


@dataclass(frozen=True, slots=True)
class PullSource:
    """A claimed source: where to ask, with what, and where the last pass stopped."""

    id: str
    tenant: Tenant
    url: str
    api_key: str | None
    interval_s: int
    cursor: str | None
    cursor_query: dict[str, str] | None
    updated_since: datetime | None
    failures: int


def source_json(r: Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "kind": r["kind"],
        "tenant": r["tenant_name"],
        "url": r["url"],
        "interval_s": r["interval_s"],
        "has_api_key": r["api_key_enc"] is not None,
        "updated_since": iso(r["updated_since"]),
        "next_poll_at": iso(r["next_poll_at"]),
        "last_polled_at": iso(r["last_polled_at"]),
        "last_success_at": iso(r["last_success_at"]),
        "failures": r["failures"],
        "last_error": r["last_error"],
        "events_received": r["events_received"],
        "created_at": iso(r["created_at"]),
    }


async def add_source(
    conn: Conn, tenant: str, kind: str, url: str, api_key: str | None, interval_s: int, box: keys.SecretBox
) -> dict[str, Any] | None:
    """A new source of the tenant named `tenant`, due at once (None: no such tenant)."""
    row = await (
        await conn.execute(
            "WITH p AS (INSERT INTO pull_sources (id, tenant_id, kind, url, api_key_enc, interval_s)"
            " SELECT %s, id, %s, %s, %s, %s FROM tenants WHERE name = %s RETURNING *)"
            " SELECT p.*, t.name AS tenant_name FROM p JOIN tenants t ON t.id = p.tenant_id",
            (new_id("src"), kind, url, box.seal(api_key) if api_key else None, interval_s, tenant),
        )
    ).fetchone()
    return None if row is None else source_json(row)


async def list_sources(conn: Conn, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every source (of the tenant named `tenant`, when given), oldest first."""
    rows = await (
        await conn.execute(
            "SELECT p.*, t.name AS tenant_name FROM pull_sources p JOIN tenants t ON t.id = p.tenant_id"
            " WHERE %(tenant)s::text IS NULL OR t.name = %(tenant)s ORDER BY p.created_at, p.id",
            {"tenant": tenant},
        )
    ).fetchall()
    return [source_json(r) for r in rows]


async def remove_source(conn: Conn, source_id: str) -> bool:
    cur = await conn.execute("DELETE FROM pull_sources WHERE id = %s", (source_id,))
    return cur.rowcount > 0


async def claim(conn: Conn, now: datetime, lease_s: float, secret_key: str | None) -> PullSource | None:
    """Lease the source due longest (None when none is due and free); its API key opened with the
    box of `secret_key` (`tenant_store.box_for`)."""
    r = await (await conn.execute(CLAIM, {"now": now, "lease": timedelta(seconds=lease_s)})).fetchone()
    if r is None:
        return None
    box = await tenant_store.box_for(conn, secret_key) if r["api_key_enc"] else None
    return PullSource(
        id=r["id"],
        tenant=Tenant(r["tenant_id"], r["tenant_name"]),
        url=r["url"],
        api_key=box.open(r["api_key_enc"]) if box else None,
        interval_s=r["interval_s"],
        cursor=r["cursor"],
        cursor_query=r["cursor_query"],
        updated_since=r["updated_since"],
        failures=r["failures"],
    )


async def save_page(
    conn: Conn,
    source_id: str,
    now: datetime,
    lease_s: float,
    cursor: str | None,
    cursor_query: dict[str, str] | None,
    updated_since: datetime | None,
    received: int,
) -> None:
    """Progress after a page whose events are stored; renews the lease."""
    await conn.execute(
        "UPDATE pull_sources SET cursor = %s, cursor_query = %s, events_received = events_received + %s,"
        " updated_since = GREATEST(updated_since, %s), leased_until = %s WHERE id = %s",
        (
            cursor,
            None if cursor_query is None else Jsonb(cursor_query),
            received,
            updated_since,
            now + timedelta(seconds=lease_s),
            source_id,
        ),
    )


async def finish(conn: Conn, source_id: str, now: datetime, next_poll_at: datetime, error: str | None) -> None:
    """End a pass: the lease is given back and the next pass set; an error counts a failure."""
    await conn.execute(
        "UPDATE pull_sources SET leased_until = NULL, next_poll_at = %s, last_error = %s,"
        " failures = CASE WHEN %s::text IS NULL THEN 0 ELSE failures + 1 END,"
        " last_success_at = CASE WHEN %s::text IS NULL THEN %s ELSE last_success_at END WHERE id = %s",
        (next_poll_at, error, error, error, now, source_id),
    )
