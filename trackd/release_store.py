"""Setting a shipment's release from the API: the stored value, its message and the rules it moves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from trackd import ledger
from trackd import messages as msg
from trackd import release as rel
from trackd.errors import NotFound
from trackd.messages import Message
from trackd.state import State
from trackd.store import Conn, Row


async def set_release(
    conn: Conn,
    tenant_id: int,
    shipment_id: str,
    patch: Mapping[str, Any] | None,
    now: datetime,
    evaluator: ledger.Evaluator | None,
) -> list[Message]:
    """Merge `patch` into the shipment's release (None clears it) in the caller's transaction; when
    it changes, write `release.changed` and re-evaluate the shipment (`demurrage_risk` may move)."""
    row = await (
        await conn.execute(
            "SELECT release FROM shipment_state WHERE tenant_id = %s AND shipment_id = %s FOR UPDATE",
            (tenant_id, shipment_id),
        )
    ).fetchone()
    if row is None:
        raise NotFound(f"no shipment {shipment_id!r}")
    old = row["release"]
    new = rel.stored(rel.merge(old, patch, now))
    if new == old:
        return []
    await conn.execute(
        "UPDATE shipment_state SET release = %s, version = version + 1, updated_at = now() WHERE shipment_id = %s",
        (None if new is None else Jsonb(new), shipment_id),
    )
    msgs = [msg.release_changed(shipment_id, now, new)]
    if evaluator is not None:
        inner = evaluator

        async def evaluate(
            conn: Conn, row: Row, before: State, state: State, now: datetime
        ) -> tuple[State, list[Message]]:
            # Seen from before the change, so that the evaluator knows the release moved.
            return await inner(conn, row, replace(before, release=old), state, now)

        msgs += await ledger.update_shipments(conn, tenant_id, {shipment_id: []}, now, evaluate)
    return await ledger.emit(conn, tenant_id, msgs)
