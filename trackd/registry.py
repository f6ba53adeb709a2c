"""Writes to shipments, devices and attachments, including adopting events that came first.

Events for an identifier no shipment has yet are kept with no shipment; creating (or re-referencing)
a shipment, or attaching a device for a window, adopts them and folds them into its state.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import orjson

from trackd import ledger
from trackd import messages as msg
from trackd.errors import Conflict, NotFound, ValidationError
from trackd.messages import Message
from trackd.shipment import Shipment
from trackd.store import Conn, forget_device_key, get_shipment, new_id

_COLUMNS = (
    "id",
    "tenant_id",
    "tracking_number",
    "carrier",
    "references",
    "ref_keys",
    "mode",
    "legs",
    "promised_at",
    "weight_kg",
    "temperature_min_c",
    "temperature_max_c",
)


def _row(tenant_id: int, s: Shipment) -> dict[str, Any]:
    lo, hi = s.temperature_range_c or (None, None)
    return {
        "id": s.id,
        "tenant_id": tenant_id,
        "tracking_number": s.tracking_number,
        "carrier": s.carrier,
        "references": list(s.references),
        "ref_keys": list(s.match_keys()),
        "mode": s.main_mode.value if s.main_mode else None,
        "legs": orjson.dumps([leg.to_dict() for leg in s.legs]).decode(),
        "promised_at": s.promised_at,
        "weight_kg": s.weight_kg,
        "temperature_min_c": lo,
        "temperature_max_c": hi,
    }


async def _adopt(
    conn: Conn,
    tenant_id: int,
    shipment_id: str,
    keys: list[str],
    now: datetime,
    evaluator: ledger.Evaluator | None,
    device: tuple[str, datetime, datetime | None] | None = None,
) -> list[Message]:
    """Attach waiting events to the shipment and fold them in; always re-evaluates it."""
    rows: list[Any] = []
    if keys:
        rows += await (
            await conn.execute(
                "UPDATE events SET shipment_id = %s WHERE tenant_id = %s AND shipment_id IS NULL AND match_keys && %s"
                " RETURNING *",
                (shipment_id, tenant_id, keys),
            )
        ).fetchall()
    if device is not None:
        dev, start, until = device
        rows += await (
            await conn.execute(
                "UPDATE events SET shipment_id = %s WHERE tenant_id = %s AND shipment_id IS NULL AND device_id = %s"
                " AND occurred_at >= %s AND (%s::timestamptz IS NULL OR occurred_at < %s) RETURNING *",
                (shipment_id, tenant_id, dev, start, until, until),
            )
        ).fetchall()
    pos_ids = [r["event_id"] for r in rows if r["kind"] == "position"]
    if pos_ids:
        await conn.execute(
            "UPDATE positions SET shipment_id = %s WHERE tenant_id = %s AND shipment_id IS NULL AND event_id = ANY(%s)",
            (shipment_id, tenant_id, pos_ids),
        )
    events = [ledger.event_from_row(r) for r in rows if r["retracted_at"] is None and not r["retracts"]]
    return await ledger.update_shipments(conn, tenant_id, {shipment_id: events}, now, evaluator)


async def create_shipment(
    conn: Conn, tenant_id: int, s: Shipment, devices: list[str], now: datetime, evaluator: ledger.Evaluator | None
) -> dict[str, Any]:
    row = _row(tenant_id, s)
    cols = ", ".join(f'"{c}"' for c in _COLUMNS)
    await conn.execute(
        f"INSERT INTO shipments ({cols}, created_at, updated_at) VALUES ({', '.join(['%s'] * len(_COLUMNS))}, %s, %s)",
        [*(row[c] for c in _COLUMNS), now, now],
    )
    await conn.execute("INSERT INTO shipment_state (shipment_id, tenant_id) VALUES (%s, %s)", (s.id, tenant_id))
    for dev in devices:
        await attach(conn, tenant_id, s.id, dev, now, None, None, adopt=False)
    msgs = await _adopt(conn, tenant_id, s.id, list(s.match_keys()), now, evaluator)
    for dev in devices:
        msgs += await _adopt(conn, tenant_id, s.id, [], now, None, (dev, now, None))
    shipment = await get_shipment(conn, tenant_id, s.id)
    assert shipment is not None
    created = msg.shipment_changed("created", s.id, now, shipment)
    await ledger.emit(conn, tenant_id, [created, *msgs])
    return shipment


async def update_shipment(
    conn: Conn, tenant_id: int, s: Shipment, now: datetime, evaluator: ledger.Evaluator | None
) -> dict[str, Any]:
    row = _row(tenant_id, s)
    sets = ", ".join(f'"{c}" = %s' for c in _COLUMNS[2:])
    await conn.execute(
        f"UPDATE shipments SET {sets}, updated_at = %s, version = version + 1 WHERE tenant_id = %s AND id = %s",
        [*(row[c] for c in _COLUMNS[2:]), now, tenant_id, s.id],
    )
    msgs = await _adopt(conn, tenant_id, s.id, list(s.match_keys()), now, evaluator)
    shipment = await get_shipment(conn, tenant_id, s.id)
    assert shipment is not None
    updated = msg.shipment_changed("updated", s.id, now, shipment)
    await ledger.emit(conn, tenant_id, [*msgs, updated])
    return shipment


async def delete_shipment(conn: Conn, tenant_id: int, shipment_id: str) -> bool:
    row = await (
        await conn.execute(
            "DELETE FROM shipments WHERE tenant_id = %s AND id = %s RETURNING id", (tenant_id, shipment_id)
        )
    ).fetchone()
    if row is None:
        return False
    await conn.execute(
        "UPDATE events SET shipment_id = NULL WHERE tenant_id = %s AND shipment_id = %s", (tenant_id, shipment_id)
    )
    await conn.execute(
        "UPDATE positions SET shipment_id = NULL WHERE tenant_id = %s AND shipment_id = %s", (tenant_id, shipment_id)
    )
    return True


async def attach(
    conn: Conn,
    tenant_id: int,
    shipment_id: str,
    device_id: str,
    start: datetime,
    until: datetime | None,
    evaluator: ledger.Evaluator | None,
    *,
    adopt: bool = True,
) -> list[Message]:
    if until is not None and until <= start:
        raise ValidationError("until", "must be after from")
    found = await (
        await conn.execute("SELECT 1 FROM devices WHERE tenant_id = %s AND id = %s", (tenant_id, device_id))
    ).fetchone()
    if found is None:
        raise ValidationError("device_id", f"no device {device_id!r}")
    await conn.execute(
        "INSERT INTO device_attachments (tenant_id, shipment_id, device_id, from_at, until_at)"
        " VALUES (%s, %s, %s, %s, %s)",
        (tenant_id, shipment_id, device_id, start, until),
    )
    if not adopt:
        return []
    msgs = await _adopt(conn, tenant_id, shipment_id, [], start, evaluator, (device_id, start, until))
    return await ledger.emit(conn, tenant_id, msgs)


# Keys are global (OsmAnd sends only the key): at least 8 characters, so a tracker's IMEI (15 digits) or a
# Traccar Client identifier of 8+ characters works, while the 4-6 character ids that are easy to guess do not.
MIN_DEVICE_KEY = 8


async def create_device(conn: Conn, tenant_id: int, device_id: str | None, key: str | None, name: str | None) -> Any:
    """A new device; `key` (at least MIN_DEVICE_KEY characters) is made, 128 random bits, when None.

    Keys are unique across tenants, but a key taken by any tenant is refused with the same
    `Conflict` whoever holds it, so the answer does not tell that another tenant has it."""
    device_id = device_id or new_id("dev")
    key = key or secrets.token_hex(16)
    if len(key) < MIN_DEVICE_KEY:
        raise ValidationError("key", f"must be at least {MIN_DEVICE_KEY} characters")
    row = await (
        await conn.execute(
            "INSERT INTO devices (tenant_id, id, key, name) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (key) DO NOTHING RETURNING *",
            (tenant_id, device_id, key, name),
        )
    ).fetchone()
    if row is None:
        raise Conflict("device key not available: choose another, or omit it to have one made")
    return row


async def delete_device(conn: Conn, tenant_id: int, device_id: str) -> bool:
    row = await (
        await conn.execute(
            "DELETE FROM devices WHERE tenant_id = %s AND id = %s RETURNING id, key", (tenant_id, device_id)
        )
    ).fetchone()
    if row is not None and row["key"]:
        forget_device_key(row["key"])
    return row is not None


async def require_shipment(conn: Conn, tenant_id: int, shipment_id: str) -> dict[str, Any]:
    found = await get_shipment(conn, tenant_id, shipment_id)
    if found is None:
        raise NotFound(f"no shipment {shipment_id!r}")
    return found
