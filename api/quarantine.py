"""/v1/quarantine: input that could not be understood, kept with the reason."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api import schemas
from api.deps import CurrentTenant, Cursor, Db, Limit
from api.schemas import answers
from trackd import quarantine_store

router = APIRouter(prefix="/v1/quarantine", tags=["quarantine"])


@router.get("", response_model=answers(schemas.QuarantinePage))
async def list_quarantine(
    tenant: CurrentTenant,
    db: Db,
    limit: Limit = 50,
    cursor: Cursor = None,
    source: Annotated[str | None, Query(max_length=40)] = None,
) -> dict[str, Any]:
    items, nxt = await quarantine_store.list_quarantine(db, tenant.id, limit, cursor, source)
    return {"items": items, "next_cursor": nxt}
