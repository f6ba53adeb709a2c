"""SQL for notification hooks (subscriptions, deliveries, attempts) and public share links.

Every query a tenant can reach is scoped to that tenant. Deliveries are queued by the
`outbox_webhooks` trigger (migrations/003_hooks.sql) in the transaction that writes the stream
message; `claim` hands one due delivery to one worker at a time (`FOR UPDATE SKIP LOCKED`) and
keeps per-(subscription, shipment) order: a delivery waits while an earlier one is pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trackd import keys
from trackd.messages import MESSAGE_TYPES
from trackd.store import BY_CREATED_DESC, Conn, Row, iso, keyset_page, new_id

EVENT_TYPES = (*MESSAGE_TYPES, "delivered")  # delivered: a status change to delivered, as its own type
DELIVERY_STATUSES = ("pending", "succeeded", "failed")
MAX_RESPONSE_BODY = 1024


# -- subscriptions -------------------------------------------------------------------------------


def webhook_json(r: Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "url": r["url"],
        "events": list(r["events"]),
        "shipment_ids": list(r["shipment_ids"]),
        "description": r["description"],
        "enabled": r["enabled"],
        "disabled_reason": r["disabled_reason"],
        "previous_secret_expires_at": iso(r["previous_secret_until"]),
        "failing_since": iso(r["failing_since"]),
        "created_at": iso(r["created_at"]),
        "updated_at": iso(r["updated_at"]),
    }


async def unknown_shipments(conn: Conn, tenant_id: int, shipment_ids: list[str]) -> list[str]:
    if not shipment_ids:
        return []
    rows = await (
        await conn.execute("SELECT id FROM shipments WHERE tenant_id = %s AND id = ANY(%s)", (tenant_id, shipment_ids))
    ).fetchall()
    found = {r["id"] for r in rows}
    return [s for s in shipment_ids if s not in found]


async def create_webhook(conn: Conn, tenant_id: int, box: keys.SecretBox, fields: dict[str, Any]) -> tuple[Row, str]:
    """The new subscription and its secret (shown once; only its encryption is kept)."""
    secret = keys.new_webhook_secret()
    row = await (
        await conn.execute(
            "INSERT INTO webhooks (id, tenant_id, url, events, shipment_ids, description, enabled, secret_enc)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (
                new_id("wh"),
                tenant_id,
                fields["url"],
                fields["events"],
                fields.get("shipment_ids") or [],
                fields.get("description"),
                fields.get("enabled", True),
                box.seal(secret),
            ),
        )
    ).fetchone()
    assert row is not None
    return row, secret


async def get_webhook(conn: Conn, tenant_id: int, webhook_id: str, lock: bool = False) -> Row | None:
    sql = "SELECT * FROM webhooks WHERE tenant_id = %s AND id = %s" + (" FOR UPDATE" if lock else "")
    return await (await conn.execute(sql, (tenant_id, webhook_id))).fetchone()


async def list_webhooks(conn: Conn, tenant_id: int, limit: int, cursor: str | None) -> tuple[list[Row], str | None]:
    query, where = "SELECT * FROM webhooks", ["tenant_id = %s"]
    return await keyset_page(conn, query, where, [tenant_id], BY_CREATED_DESC, limit, cursor, descending=True)


async def update_webhook(conn: Conn, tenant_id: int, webhook_id: str, changes: dict[str, Any]) -> Row | None:
    """Apply `changes` (url, events, shipment_ids, description, enabled). Enabling clears the
    reason it was disabled and its failure streak."""
    sets, args = ["updated_at = now()"], list[Any]()
    for name in ("url", "events", "shipment_ids", "description", "enabled"):
        if name in changes:
            sets.append(f"{name} = %s")
            args.append(changes[name] if name != "shipment_ids" else (changes[name] or []))
    if changes.get("enabled") is True:
        sets.extend(["disabled_reason = NULL", "failing_since = NULL"])
    sql = f"UPDATE webhooks SET {', '.join(sets)} WHERE tenant_id = %s AND id = %s RETURNING *"
    return await (await conn.execute(sql, [*args, tenant_id, webhook_id])).fetchone()


async def delete_webhook(conn: Conn, tenant_id: int, webhook_id: str) -> bool:
    row = await (
        await conn.execute(
            "DELETE FROM webhooks WHERE tenant_id = %s AND id = %s RETURNING id", (tenant_id, webhook_id)
        )
    ).fetchone()
    return row is not None


async def rotate_secret(
    conn: Conn, tenant_id: int, webhook_id: str, box: keys.SecretBox, keep_until: datetime
) -> tuple[Row, str] | None:
    """A new secret; the current one keeps signing (beside it) until `keep_until`."""
    secret = keys.new_webhook_secret()
    row = await (
        await conn.execute(
            "UPDATE webhooks SET previous_secret_enc = secret_enc, previous_secret_until = %s, secret_enc = %s,"
            " updated_at = now() WHERE tenant_id = %s AND id = %s RETURNING *",
            (keep_until, box.seal(secret), tenant_id, webhook_id),
        )
    ).fetchone()
    return (row, secret) if row else None


def signing_secrets(row: Row, box: keys.SecretBox, now: datetime) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one in its grace."""
    out = [box.open(row["secret_enc"])]
    until = row.get("previous_secret_until")
    if row.get("previous_secret_enc") and until is not None and until > now:
        out.append(box.open(row["previous_secret_enc"]))
    return out


# -- deliveries ----------------------------------------------------------------------------------


def delivery_json(r: Row, attempts: list[Row]) -> dict[str, Any]:
    return {
        "id": r["id"],
        "type": r["type"],
        "status": r["status"],
        "shipment_id": r["shipment_id"],
        "created_at": iso(r["created_at"]),
        "next_attempt_at": iso(r["next_attempt_at"]) if r["status"] == "pending" else None,
        "attempts": [
            {
                "at": iso(a["at"]),
                "status_code": a["status_code"],
                "latency_ms": a["latency_ms"],
                "error": a["error"],
                "response_body": a["response_body"],
            }
            for a in attempts
        ],
    }


async def list_deliveries(
    conn: Conn, webhook_id: str, status: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    where, args = ["webhook_id = %s"], list[Any]([webhook_id])
    if status:
        where.append("status = %s")
        args.append(status)
    query = "SELECT * FROM webhook_deliveries"
    rows, nxt = await keyset_page(conn, query, where, args, BY_CREATED_DESC, limit, cursor, descending=True)
    attempts: dict[str, list[Row]] = {r["id"]: [] for r in rows}
    if rows:
        for a in await (
            await conn.execute(
                "SELECT * FROM webhook_attempts WHERE delivery_id = ANY(%s) ORDER BY id", (list(attempts),)
            )
        ).fetchall():
            attempts[a["delivery_id"]].append(a)
    return [delivery_json(r, attempts[r["id"]]) for r in rows], nxt


async def retry_delivery(conn: Conn, webhook_id: str, delivery_id: str, now: datetime) -> bool:
    """Queue a delivery again, due now, with a fresh retry schedule."""
    row = await (
        await conn.execute(
            "UPDATE webhook_deliveries SET status = 'pending', tries = 0, next_attempt_at = %s, finished_at = NULL"
            " WHERE webhook_id = %s AND id = %s RETURNING id",
            (now, webhook_id, delivery_id),
        )
    ).fetchone()
    return row is not None


REPLAY = """
INSERT INTO webhook_deliveries (id, webhook_id, tenant_id, seq, ord, type, shipment_id, order_key, occurred_at,
                                payload, next_attempt_at)
SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), w.id, o.tenant_id, o.seq, k.ord, k.type, o.shipment_id,
       COALESCE(o.shipment_id, ''), o.occurred_at, o.payload, %(now)s
FROM webhooks w
JOIN outbox o ON o.tenant_id = w.tenant_id AND o.created_at >= %(from)s AND o.created_at < %(until)s
CROSS JOIN LATERAL (VALUES (1::smallint, o.type),
                           (2::smallint, CASE WHEN o.type = 'status.changed' AND o.payload ->> 'status' = 'delivered'
                                              THEN 'delivered' END)) AS k(ord, type)
WHERE w.id = %(webhook)s AND w.tenant_id = %(tenant)s AND k.type IS NOT NULL AND k.type = ANY (w.events)
  AND (cardinality(w.shipment_ids) = 0 OR o.shipment_id = ANY (w.shipment_ids))
"""


async def replay(conn: Conn, tenant_id: int, webhook_id: str, since: datetime, until: datetime, now: datetime) -> int:
    """Queue, as new deliveries, the kept stream messages written in [since, until) that the
    subscription matches; returns how many."""
    cur = await conn.execute(
        REPLAY, {"now": now, "from": since, "until": until, "webhook": webhook_id, "tenant": tenant_id}
    )
    return cur.rowcount


# -- the deliverer's side ------------------------------------------------------------------------

CLAIM = """
SELECT d.id, d.webhook_id, d.type, d.payload, d.occurred_at, d.tries, w.url, w.secret_enc,
       w.previous_secret_enc, w.previous_secret_until, w.failing_since
FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.status = 'pending' AND d.next_attempt_at <= %(now)s AND w.enabled
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                  WHERE e.webhook_id = d.webhook_id AND e.order_key = d.order_key AND e.status = 'pending'
                    AND (e.seq, e.ord, e.id) < (d.seq, d.ord, d.id))
ORDER BY d.next_attempt_at
LIMIT 1
FOR UPDATE OF d SKIP LOCKED
"""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recorded try: `status_code` None when no HTTP answer came back."""

    at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    response_body: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


async def claim(conn: Conn, now: datetime) -> Row | None:
    """One due delivery whose predecessors for its shipment are done, locked by this transaction."""
    return await (await conn.execute(CLAIM, {"now": now})).fetchone()


async def record(
    conn: Conn, delivery_id: str, attempt: Attempt, status: str, tries: int, next_attempt_at: datetime
) -> None:
    body = attempt.response_body[:MAX_RESPONSE_BODY] if attempt.response_body else None
    await conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, at, status_code, latency_ms, error, response_body)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (delivery_id, attempt.at, attempt.status_code, attempt.latency_ms, attempt.error, body),
    )
    await conn.execute(
        "UPDATE webhook_deliveries SET status = %s, tries = %s, next_attempt_at = %s,"
        " finished_at = CASE WHEN %s = 'pending' THEN NULL ELSE %s END WHERE id = %s",
        (status, tries, next_attempt_at, status, attempt.at, delivery_id),
    )


async def endpoint_result(conn: Conn, webhook_id: str, ok: bool, at: datetime, disable_reason: str | None) -> None:
    """Track the endpoint's failure streak; rows are touched only when something changes."""
    if ok:
        await conn.execute(
            "UPDATE webhooks SET failing_since = NULL WHERE id = %s AND failing_since IS NOT NULL", (webhook_id,)
        )
    elif disable_reason is not None:
        await conn.execute(
            "UPDATE webhooks SET enabled = false, disabled_reason = %s, updated_at = %s WHERE id = %s AND enabled",
            (disable_reason, at, webhook_id),
        )
    else:
        await conn.execute(
            "UPDATE webhooks SET failing_since = %s WHERE id = %s AND failing_since IS NULL", (at, webhook_id)
        )


async def purge(conn: Conn, before: datetime) -> int:
    cur = await conn.execute("DELETE FROM webhook_deliveries WHERE status <> 'pending' AND finished_at < %s", (before,))
    return cur.rowcount


# -- share links ---------------------------------------------------------------------------------


async def create_share(conn: Conn, tenant_id: int, shipment_id: str, token: str, expires_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO share_links (token_hash, tenant_id, shipment_id, expires_at) VALUES (%s, %s, %s, %s)",
        (keys.hash_key(token), tenant_id, shipment_id, expires_at),
    )


async def shared_shipment(conn: Conn, token: str, now: datetime) -> tuple[int, str] | None:
    """(tenant id, shipment id) a live token points to."""
    row = await (
        await conn.execute(
            "SELECT tenant_id, shipment_id FROM share_links WHERE token_hash = %s AND expires_at > %s",
            (keys.hash_key(token), now),
        )
    ).fetchone()
    return (row["tenant_id"], row["shipment_id"]) if row else None


async def track_rows(
    conn: Conn, tenant_id: int, shipment_id: str, max_points: int
) -> tuple[Row, list[Row], list[Row]] | None:
    """The shipment with its state, its actual milestones (none retracted) and its positions so
    far, thinned evenly in SQL to at most `max_points` (first and last kept)."""
    shipment = await (
        await conn.execute(
            "SELECT s.tracking_number, s.carrier, s.legs, st.status, st.substatus, st.eta,"
            " GREATEST(s.updated_at, st.updated_at) AS updated_at"
            " FROM shipments s JOIN shipment_state st ON st.shipment_id = s.id WHERE s.tenant_id = %s AND s.id = %s",
            (tenant_id, shipment_id),
        )
    ).fetchone()
    if shipment is None:  # deleted meanwhile (its links go with it)
        return None
    milestones = await (
        await conn.execute(
            "SELECT code, occurred_at, data -> 'location' AS location FROM events"
            " WHERE tenant_id = %s AND shipment_id = %s AND kind = 'milestone' AND classifier = 'actual'"
            " AND code IS NOT NULL AND retracted_at IS NULL AND retracts IS NULL ORDER BY occurred_at, event_id",
            (tenant_id, shipment_id),
        )
    ).fetchall()
    positions = await (
        await conn.execute(
            "SELECT lon, lat FROM (SELECT lon, lat, occurred_at, row_number() OVER w AS n, count(*) OVER () AS total"
            " FROM positions WHERE tenant_id = %s AND shipment_id = %s WINDOW w AS (ORDER BY occurred_at)) p"
            " WHERE total <= %s OR n = total OR (n - 1) %% ceil(total::float8 / %s)::bigint = 0 ORDER BY occurred_at",
            (tenant_id, shipment_id, max_points, max_points),
        )
    ).fetchall()
    return shipment, milestones, positions
