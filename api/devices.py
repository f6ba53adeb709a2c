"""/v1/devices: trackers and phones. `id` is the MQTT topic's device; `key` what Traccar Client sends."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from api import schemas
from api.deps import CurrentTenant, Cursor, Db, Limit, Shared
from api.schemas import answers
from trackd import registry, store
from trackd.errors import NotFound
from trackd.registry import MIN_DEVICE_KEY

router = APIRouter(prefix="/v1/devices", tags=["devices"])
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, pattern=_ID)
    # At least MIN_DEVICE_KEY characters: keys are global and OsmAnd devices authenticate with the key alone.
    key: str | None = Field(None, min_length=MIN_DEVICE_KEY, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str | None = Field(None, max_length=200)


@router.post("", status_code=201, response_model=answers(schemas.Device))
async def create_device(body: DeviceIn, tenant: CurrentTenant, state: Shared) -> dict[str, Any]:
    async with store.transaction(state.pool) as conn:
        row = await registry.create_device(conn, tenant.id, body.id, body.key, body.name)
    return store.device_json(row)


@router.get("", response_model=answers(schemas.DevicePage))
async def list_devices(tenant: CurrentTenant, db: Db, limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
    rows, nxt = await store.list_devices(db, tenant.id, limit, cursor)
    return {"items": [store.device_json(r) for r in rows], "next_cursor": nxt}


@router.get("/{device_id}", response_model=answers(schemas.Device))
async def get_device(device_id: str, tenant: CurrentTenant, db: Db) -> dict[str, Any]:
    row = await store.get_device(db, tenant.id, device_id)
    if row is None:
        raise NotFound(f"no device {device_id!r}")
    return store.device_json(row)


@router.delete("/{device_id}", status_code=204)
async def delete_device(device_id: str, tenant: CurrentTenant, state: Shared) -> Response:
    async with store.transaction(state.pool) as conn:
        deleted = await registry.delete_device(conn, tenant.id, device_id)
    if not deleted:
        raise NotFound(f"no device {device_id!r}")
    return Response(status_code=204)
