"""Quarantine: what could not be understood or stored, kept with its reason, per tenant; what no
tenant could be authenticated for is a bounded, expiring sample."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from trackd.store import Conn, Order, Row, iso, keyset_page, transaction, try_job_lock, tuples

MAX_QUARANTINE_RAW = 1_000_000
# Input no tenant could be authenticated for (tenant_id NULL, seen by no tenant) is a bounded
# sample: the first SAMPLE_RAW bytes of each, at most SAMPLE_ROWS rows and SAMPLE_BYTES of raw and
# reason in all (the oldest rows go first), none older than SAMPLE_DAYS (the worker's retention).
SAMPLE_RAW = 4096
SAMPLE_ROWS = 1000
SAMPLE_BYTES = 4 * 1024 * 1024
SAMPLE_DAYS = 7
SAMPLE_LOCK = 7_242_019_030  # one sample write at a time, so that the caps hold exactly

# The sample's size, kept by triggers (migration 020): a write to it reads that instead of walking
# every row of the sample, and looks at the oldest rows only when it is over a cap, as many as free
# enough (`TRIM_CHUNK` at a time, in id order).
_SAMPLE_SIZE = "SELECT rows, bytes FROM quarantine_sample"
_OLDEST = (
    "SELECT id, octet_length(raw) + octet_length(reason) FROM quarantine"
    " WHERE tenant_id IS NULL AND id > %s ORDER BY id LIMIT %s"
)
_DROP_OLDEST = "DELETE FROM quarantine WHERE tenant_id IS NULL AND id <= %s"
_RECOUNT = """
UPDATE quarantine_sample SET (rows, bytes) = (
    SELECT count(*), coalesce(sum(octet_length(raw) + octet_length(reason)), 0) FROM quarantine WHERE tenant_id IS NULL)
"""
TRIM_CHUNK = 16


async def trim_sample(conn: Conn, recounted: bool = False) -> None:
    """Drop the oldest rows of the sample, as few as bring it within `SAMPLE_ROWS` and
    `SAMPLE_BYTES`. If its recorded size was more than it holds (rows removed by a TRUNCATE, which
    the triggers do not see), it is counted again, once."""
    size = await tuples(conn, _SAMPLE_SIZE, ())
    if not size:
        return
    over_rows, over_bytes = size[0][0] - SAMPLE_ROWS, size[0][1] - SAMPLE_BYTES
    if over_rows <= 0 and over_bytes <= 0:
        return
    n = freed = after = 0
    while True:
        oldest = await tuples(conn, _OLDEST, (after, TRIM_CHUNK))
        for row_id, row_bytes in oldest:
            n, freed = n + 1, freed + row_bytes
            if n >= over_rows and freed >= over_bytes:
                await conn.execute(_DROP_OLDEST, (row_id,))
                return
        if len(oldest) < TRIM_CHUNK:
            break
        after = oldest[-1][0]
    if not recounted:
        await conn.execute(_RECOUNT)
        await trim_sample(conn, recounted=True)


def _text(raw: bytes, sample: bool) -> str:
    """What is kept of `raw`, as text: up to 1 MB (of the sample, 4 KB of the stored text)."""
    text = (
        raw[: SAMPLE_RAW if sample else MAX_QUARANTINE_RAW].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    )
    if sample:  # a replacement character takes three bytes: the sample's 4 KB are of the stored text
        text = text.encode()[:SAMPLE_RAW].decode("utf-8", errors="ignore")
    return text


async def quarantine(
    conn: Conn, tenant_id: int | None, source: str, transport: str, reason: str, raw: bytes, size: int | None = None
) -> bool:
    """Keep `raw` (up to 1 MB) with the reason and its real size (`size` when `raw` is only the head of
    what arrived, else its length); whether it was kept.

    Without a tenant it joins the bounded sample (see SAMPLE_*): its first 4 KB are kept and the
    oldest rows are dropped to stay within the caps; while another sample write is in progress it
    is not kept (False) rather than waiting for it.
    """
    sample = tenant_id is None
    if sample and not await try_job_lock(conn, SAMPLE_LOCK):
        return False
    await conn.execute(
        "INSERT INTO quarantine (tenant_id, source, transport, reason, raw, size) VALUES (%s, %s, %s, %s, %s, %s)",
        (tenant_id, source, transport, reason[:2000], _text(raw, sample), len(raw) if size is None else size),
    )
    if sample:
        await trim_sample(conn)
    return True


# (tenant id, source, transport, reason, raw, size): one input to keep, as `quarantine` takes it.
Kept = tuple[int | None, str, str, str, bytes, int | None]

_INSERT_MANY = (
    "INSERT INTO quarantine (tenant_id, source, transport, reason, raw, size)"
    " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[])"
)


async def quarantine_many(conn: Conn, rows: list[Kept]) -> None:
    """Keep several inputs: those of a tenant in one statement, in their order, then those without
    one, one by one into the sample (as `quarantine` does)."""
    own = [
        (tenant_id, source, transport, reason[:2000], _text(raw, False), len(raw) if size is None else size)
        for tenant_id, source, transport, reason, raw, size in rows
        if tenant_id is not None
    ]
    if own:
        await conn.execute(_INSERT_MANY, [list(column) for column in zip(*own, strict=True)])
    for r in rows:
        if r[0] is None:
            await quarantine(conn, *r)


async def quarantine_now(
    pool: AsyncConnectionPool,
    tenant_id: int | None,
    source: str,
    transport: str,
    reason: str,
    raw: bytes,
    size: int | None = None,
) -> bool:
    async with transaction(pool) as conn:
        return await quarantine(conn, tenant_id, source, transport, reason, raw, size)


async def purge_quarantine_sample(conn: Conn, days: int = SAMPLE_DAYS) -> int:
    """Delete the unattributed quarantine rows older than `days`; how many were deleted. The
    sample's recorded size is counted again (once an hour, in the worker's retention pass), so
    that one made wrong by hand holds for an hour at most."""
    # First: a sample write holds the lock and then the size's row, so taking them the other way
    # round (the delete's trigger takes the row) could deadlock with one.
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SAMPLE_LOCK,))
    cur = await conn.execute(
        "DELETE FROM quarantine WHERE tenant_id IS NULL AND received_at < now() - make_interval(days => %s)", (days,)
    )
    await conn.execute(_RECOUNT)
    await trim_sample(conn)
    return cur.rowcount


def quarantine_json(r: Row) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "received_at": iso(r["received_at"]),
        "source": r["source"],
        "transport": r["transport"],
        "reason": r["reason"],
        "raw": r["raw"],
        "size": r.get("size"),
    }


async def list_quarantine(
    conn: Conn, tenant_id: int, limit: int, cursor: str | None, source: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    where: list[str] = ["tenant_id = %s"]
    args: list[Any] = [tenant_id]
    if source:
        where.append("source = %s")
        args.append(source)
    order: Order = (("id", "id", "bigint"),)
    query = "SELECT * FROM quarantine"
    rows, nxt = await keyset_page(conn, query, where, args, order, limit, cursor, descending=True)
    return [quarantine_json(r) for r in rows], nxt
