"""Per-tenant retention of events and positions: the deletes the worker's retention job runs.

A tenant keeps its rows for its `tenants.retention_days`, or the deployment's
`TRACKD_RETENTION_DAYS` when that is NULL. Rows go in batches of at most `batch`, each batch in a
transaction of its own under the job's advisory lock, so a large backlog never becomes one long
transaction. Tenants are grouped by retention: one statement per group, whatever the number of
tenants. The default group is every tenant not in another group (rows left by deleted tenants too).

With TimescaleDB the hypertables' retention policy drops whole chunks past the longest retention
any tenant has (at least the deployment's): each run sets the policy to that horizon when it
changed (`sync_chunk_policy`, the only part that needs the extension), and the deletes here then
run only for the tenants that keep less.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from trackd.store import Conn, transaction, try_job_lock

BATCH = 5000
MAX_BATCHES = 200  # per table and group in one run; the next run goes on
TABLES = ("events", "positions")


@dataclass(frozen=True, slots=True)
class Group:
    """Tenants sharing a retention: `tenant_ids`, or (default group) all but `except_ids`."""

    days: int
    tenant_ids: tuple[int, ...] | None
    except_ids: tuple[int, ...] = ()


async def timescale(conn: Conn) -> bool:
    """Whether the events are a hypertable (the extension created after migrating leaves them plain)."""
    row = await (
        await conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
            " AND to_regclass('timescaledb_information.hypertables') IS NOT NULL"
        )
    ).fetchone()
    if row is None:
        return False
    row = await (
        await conn.execute("SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'events'")
    ).fetchone()
    return row is not None


async def horizon(conn: Conn, default_days: int) -> int:
    """The longest retention of any tenant, at least `default_days`: what whole chunks keep."""
    row = await (await conn.execute("SELECT max(retention_days) AS days FROM tenants")).fetchone()
    return max(default_days, int(row["days"]) if row and row["days"] is not None else 0)


async def sync_chunk_policy(conn: Conn, days: int) -> list[str]:
    """TimescaleDB only: make the hypertables' retention policy drop chunks older than `days`;
    returns the tables whose policy changed."""
    changed = []
    for table in TABLES:
        row = await (
            await conn.execute(
                "SELECT (config ->> 'drop_after')::interval = make_interval(days => %s) AS same"
                " FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention' AND hypertable_name = %s",
                (days, table),
            )
        ).fetchone()
        if row is not None and row["same"]:
            continue
        await conn.execute("SELECT remove_retention_policy(%s::regclass, if_exists => true)", (table,))
        await conn.execute("SELECT add_retention_policy(%s::regclass, make_interval(days => %s))", (table, days))
        changed.append(table)
    return changed


async def groups(conn: Conn, default_days: int, chunks_after: int | None = None) -> list[Group]:
    """The retention groups; when whole chunks go after `chunks_after` days (TimescaleDB), only
    those keeping less."""
    rows = await (
        await conn.execute(
            "SELECT retention_days AS days, array_agg(id ORDER BY id) AS ids FROM tenants"
            " WHERE retention_days IS NOT NULL AND retention_days <> %s GROUP BY retention_days ORDER BY 1",
            (default_days,),
        )
    ).fetchall()
    custom = [Group(int(r["days"]), tuple(r["ids"])) for r in rows]
    others = tuple(sorted(i for g in custom for i in g.tenant_ids or ()))
    out = [Group(default_days, None, others), *custom]
    if chunks_after is not None:
        out = [g for g in out if g.days < chunks_after]
    return out


async def delete_batch(conn: Conn, table: str, group: Group, limit: int) -> int:
    """Delete up to `limit` of the group's rows of `table` older than its retention; returns how many."""
    assert table in TABLES
    if group.tenant_ids is None:
        who, arg = "tenant_id <> ALL(%s)", list(group.except_ids)
    else:
        who, arg = "tenant_id = ANY(%s)", list(group.tenant_ids)
    # The row key works on plain tables and hypertables alike (ctid is per chunk); the predicates
    # repeated outside let TimescaleDB exclude chunks and filter compressed batches by tenant.
    cur = await conn.execute(
        f"DELETE FROM {table} WHERE occurred_at < now() - make_interval(days => %s) AND {who}"
        f" AND (tenant_id, event_id, occurred_at) IN ("
        f" SELECT tenant_id, event_id, occurred_at FROM {table}"
        f" WHERE occurred_at < now() - make_interval(days => %s) AND {who} LIMIT %s)",
        (group.days, arg, group.days, arg, limit),
    )
    return cur.rowcount


async def purge(pool: AsyncConnectionPool, default_days: int, lock: int, batch: int = BATCH) -> int | None:
    """Delete every tenant's events and positions past its retention, batch by batch, each under
    the advisory lock `lock`; returns the rows deleted, or None when another worker holds the lock."""
    async with transaction(pool) as conn:
        if not await try_job_lock(conn, lock):
            return None
        chunks_after = None
        if await timescale(conn):
            chunks_after = await horizon(conn, default_days)
            await sync_chunk_policy(conn, chunks_after)
        plan = await groups(conn, default_days, chunks_after)
    total = 0
    for group in plan:
        for table in TABLES:
            for _ in range(MAX_BATCHES):
                async with transaction(pool) as conn:
                    if not await try_job_lock(conn, lock):
                        return total
                    n = await delete_batch(conn, table, group, batch)
                total += n
                if n < batch:
                    break
    return total
