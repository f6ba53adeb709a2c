"""SQL for notification hooks: subscriptions, deliveries and attempts (share links: `link_store`).

Every query a tenant can reach is scoped to that tenant. Deliveries are queued by the
`outbox_webhooks` trigger (migrations/003_hooks.sql) in the transaction that writes the stream
message. `claim` leases one due delivery to one sender (migrations/009_notify_fairness.sql): it
serves endpoints in turns, tenant by tenant, skips an endpoint at its in-flight limit or with its
circuit open, and keeps per-(subscription, shipment) order: a delivery waits while an earlier one
is pending.
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
DELIVERIES_CHANNEL = "trackd_deliveries"  # notified when deliveries come due (see `wake_senders`)


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
        "circuit_open_until": iso(r["circuit_open_until"]),
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
    reason it was disabled and its failure streak; enabling or a new URL also closes its circuit."""
    sets, args = ["updated_at = now()"], list[Any]()
    for name in ("url", "events", "shipment_ids", "description", "enabled"):
        if name in changes:
            sets.append(f"{name} = %s")
            args.append(changes[name] if name != "shipment_ids" else (changes[name] or []))
    if changes.get("enabled") is True:
        sets.extend(["disabled_reason = NULL", "failing_since = NULL"])
    if changes.get("enabled") is True or changes.get("url") is not None:
        sets.extend(["consecutive_failures = 0", "circuit_open_until = NULL"])
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
    if row is not None:
        await wake_senders(conn)
    return row is not None


async def wake_senders(conn: Conn) -> None:
    """Let the workers' senders know, once this transaction commits, that deliveries are due (a
    trigger does the same for every insert into the queue: migration 019)."""
    await conn.execute("SELECT pg_notify(%s, '')", (DELIVERIES_CHANNEL,))


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
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                  WHERE p.webhook_id = w.id AND p.order_key = COALESCE(o.shipment_id, '') AND p.seq = o.seq
                    AND p.ord = k.ord AND p.status = 'pending')
"""


async def replay(conn: Conn, tenant_id: int, webhook_id: str, since: datetime, until: datetime, now: datetime) -> int:
    """Queue, as new deliveries, the kept stream messages written in [since, until) that the
    subscription matches and that have no delivery to it pending already; returns how many.

    Idempotent while pending: replaying the same range again before those deliveries are sent
    queues nothing more. Replays of one subscription run one at a time (its row is locked), so
    concurrent calls cannot both queue a message.
    """
    locked = await (
        await conn.execute(
            "SELECT id FROM webhooks WHERE tenant_id = %s AND id = %s FOR NO KEY UPDATE", (tenant_id, webhook_id)
        )
    ).fetchone()
    if locked is None:
        return 0
    cur = await conn.execute(
        REPLAY, {"now": now, "from": since, "until": until, "webhook": webhook_id, "tenant": tenant_id}
    )
    return cur.rowcount


# -- the deliverer's side ------------------------------------------------------------------------

CLAIM = "SELECT * FROM trackd_claim_delivery(%s, %s, %s, %s, %s, %s)"
PICK_TRIES = 3  # a pick can be outdated by the time its lock is granted: pick again
TENANT_LOCK = 72_420  # the first key of the tenants' claim locks (pg_try_advisory_xact_lock(int, int))


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


async def claim(conn: Conn, now: datetime, lease_until: datetime, per_endpoint: int, per_tenant: int) -> Row | None:
    """Lease one due delivery until `lease_until`, or None when nothing may go now: one statement,
    `trackd_claim_delivery` (migration 021), which picks and leases as its comments say.

    The row holds the delivery, its endpoint's URL and secrets, `lease` (what `renew` and `record`
    need) and `circuit_open_until` (not None: this send is the endpoint's probe). Commit the
    transaction before sending: the lease, not a lock, marks the delivery in flight.
    """
    limits = (now, lease_until, per_endpoint, per_tenant, TENANT_LOCK, PICK_TRIES)
    row: Row | None = await (await conn.execute(CLAIM, limits)).fetchone()
    return row


async def renew(conn: Conn, delivery_id: str, lease: Any, until: datetime) -> bool:
    """Extend a lease still held; False when it lapsed and another claim took the delivery."""
    await conn.execute("SET LOCAL synchronous_commit = off")  # as in `claim`
    cur = await conn.execute(
        "UPDATE webhook_deliveries SET leased_until = %s WHERE id = %s AND lease = %s", (until, delivery_id, lease)
    )
    return cur.rowcount == 1


async def lock_endpoint(conn: Conn, webhook_id: str) -> Row | None:
    """The endpoint's failure streak and breaker, locked until commit; None once it is deleted.
    Lock it before its delivery (`record`), as the claim does, so the two never deadlock."""
    return await (
        await conn.execute(
            "SELECT consecutive_failures, circuit_open_until, failing_since FROM webhooks WHERE id = %s"
            " FOR NO KEY UPDATE",
            (webhook_id,),
        )
    ).fetchone()


async def save_endpoint(
    conn: Conn,
    webhook_id: str,
    before: Row,
    failures: int,
    open_until: datetime | None,
    failing_since: datetime | None,
    disable_reason: str | None,
    at: datetime,
) -> None:
    """Store the endpoint's streak and breaker (and disable it with `disable_reason`); the row is
    written only when something changed."""
    now_state = (failures, open_until, failing_since)
    if disable_reason is None and now_state == (
        before["consecutive_failures"],
        before["circuit_open_until"],
        before["failing_since"],
    ):
        return
    await conn.execute(
        "UPDATE webhooks SET consecutive_failures = %(failures)s, circuit_open_until = %(open)s,"
        " failing_since = %(since)s, enabled = enabled AND %(reason)s::text IS NULL,"
        " disabled_reason = CASE WHEN enabled AND %(reason)s::text IS NOT NULL THEN %(reason)s"
        " ELSE disabled_reason END,"
        " updated_at = CASE WHEN %(reason)s::text IS NULL THEN updated_at ELSE %(at)s END WHERE id = %(id)s",
        {"failures": failures, "open": open_until, "since": failing_since, "reason": disable_reason, "at": at}
        | {"id": webhook_id},
    )


def _kept(attempt: Attempt) -> str | None:
    """What the log keeps of an attempt's response body: its first `MAX_RESPONSE_BODY` characters."""
    return attempt.response_body[:MAX_RESPONSE_BODY] if attempt.response_body else None


async def record_success(
    conn: Conn, delivery_id: str, webhook_id: str, lease: Any, attempt: Attempt, tries: int
) -> bool:
    """`record` for an attempt that succeeded, with the endpoint's circuit closed and its failure
    streak cleared: one statement, `trackd_record_success` (migration 021), which locks the
    endpoint's row only when it has something to clear. False as for `record`."""
    args = (delivery_id, webhook_id, lease, attempt.at, attempt.status_code, attempt.latency_ms, _kept(attempt), tries)
    row = await (
        await conn.execute("SELECT trackd_record_success(%s, %s, %s, %s, %s, %s, %s, %s) AS ok", args)
    ).fetchone()
    return bool(row and row["ok"])


async def record(
    conn: Conn, delivery_id: str, lease: Any, attempt: Attempt, status: str, tries: int, next_attempt_at: datetime
) -> bool:
    """Log the attempt and, when `lease` still holds the delivery, its next step (ending the lease).

    False when the delivery is gone (its subscription was deleted) or its lease lapsed and another
    sender took it over: that sender's attempt decides the next step; this one is only logged.
    """
    row = await (
        await conn.execute("SELECT lease FROM webhook_deliveries WHERE id = %s FOR NO KEY UPDATE", (delivery_id,))
    ).fetchone()
    if row is None:
        return False
    body = _kept(attempt)
    await conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, at, status_code, latency_ms, error, response_body)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (delivery_id, attempt.at, attempt.status_code, attempt.latency_ms, attempt.error, body),
    )
    if row["lease"] != lease:
        return False
    await conn.execute(
        "UPDATE webhook_deliveries SET status = %s, tries = %s, next_attempt_at = %s,"
        " leased_until = NULL, lease = NULL, finished_at = CASE WHEN %s = 'pending' THEN NULL ELSE %s END"
        " WHERE id = %s",
        (status, tries, next_attempt_at, status, attempt.at, delivery_id),
    )
    return True


async def purge(conn: Conn, before: datetime) -> int:
    cur = await conn.execute("DELETE FROM webhook_deliveries WHERE status <> 'pending' AND finished_at < %s", (before,))
    return cur.rowcount
