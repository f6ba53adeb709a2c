"""/v1/webhooks: notification subscriptions, their secrets, delivery log, retries and replays."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api import schemas
from api.deps import CurrentTenant, Cursor, Db, Limit, Shared
from api.errors import JSONBody
from api.schemas import answers
from notify import hook_store, ssrf
from trackd import store, tenant_store
from trackd.errors import NotFound, ValidationError
from trackd.keys import SecretBox
from trackd.store import Conn

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

ShipmentId = Annotated[str, Field(min_length=1, max_length=100)]
DEFAULT_GRACE_S = 86400
MAX_REPLAY = timedelta(days=31)


def _events(v: list[str] | None) -> list[str] | None:
    if v is None:
        return None
    unknown = [e for e in v if e not in hook_store.EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type {unknown[0]!r}; one of {', '.join(hook_store.EVENT_TYPES)}")
    return list(dict.fromkeys(v))


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=8, max_length=2000)
    events: list[str] = Field(min_length=1, max_length=len(hook_store.EVENT_TYPES))
    shipment_ids: list[ShipmentId] = Field(default_factory=list, max_length=1000)
    description: str | None = Field(None, max_length=500)
    enabled: bool = True

    _check_events = field_validator("events")(_events)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, min_length=8, max_length=2000)
    events: list[str] | None = Field(None, min_length=1, max_length=len(hook_store.EVENT_TYPES))
    shipment_ids: list[ShipmentId] | None = Field(None, max_length=1000)
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None

    _check_events = field_validator("events")(_events)


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_s: int = Field(DEFAULT_GRACE_S, ge=0, le=7 * 86400, description="how long the old secret keeps signing")


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: datetime = Field(alias="from")
    until: datetime


async def _box(conn: Conn, state: Shared) -> SecretBox:
    key = state.settings.secret_key.get_secret_value() if state.settings.secret_key else None
    return await tenant_store.box_for(conn, key)


async def _check_shipments(conn: Conn, tenant_id: int, shipment_ids: list[str] | None) -> None:
    missing = await hook_store.unknown_shipments(conn, tenant_id, shipment_ids or [])
    if missing:
        raise ValidationError("shipment_ids", f"no shipment {missing[0]!r}")


async def _require(conn: Conn, tenant_id: int, webhook_id: str) -> store.Row:
    row = await hook_store.get_webhook(conn, tenant_id, webhook_id)
    if row is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    return row


def _aware(name: str, d: datetime) -> datetime:
    if d.tzinfo is None:
        raise ValidationError(name, "needs a UTC offset")
    return d


@router.post("", status_code=201, response_model=answers(schemas.WebhookWithSecret))
async def create_webhook(body: WebhookIn, tenant: CurrentTenant, state: Shared) -> dict[str, Any]:
    """Subscribe. The answer holds the signing `secret`; it is not shown again."""
    await ssrf.check_url(body.url, state.settings.webhook_allow_private)
    async with store.transaction(state.pool) as conn:
        await _check_shipments(conn, tenant.id, body.shipment_ids)
        row, secret = await hook_store.create_webhook(conn, tenant.id, await _box(conn, state), body.model_dump())
    return {**hook_store.webhook_json(row), "secret": secret}


@router.get("", response_model=answers(schemas.WebhookPage))
async def list_webhooks(tenant: CurrentTenant, db: Db, limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
    rows, nxt = await hook_store.list_webhooks(db, tenant.id, limit, cursor)
    return {"items": [hook_store.webhook_json(r) for r in rows], "next_cursor": nxt}


@router.get("/{webhook_id}", response_model=answers(schemas.Webhook))
async def get_webhook(webhook_id: str, tenant: CurrentTenant, db: Db) -> dict[str, Any]:
    return hook_store.webhook_json(await _require(db, tenant.id, webhook_id))


@router.patch("/{webhook_id}", response_model=answers(schemas.Webhook))
async def patch_webhook(webhook_id: str, body: WebhookPatch, tenant: CurrentTenant, state: Shared) -> dict[str, Any]:
    """Change any field; `"enabled": true` also re-enables an endpoint that was disabled for failing."""
    changes = body.model_dump(exclude_unset=True)
    for name in ("url", "events", "enabled"):
        if name in changes and changes[name] is None:
            raise ValidationError(name, "must not be null")
    if changes.get("url") is not None:
        await ssrf.check_url(changes["url"], state.settings.webhook_allow_private)
    async with store.transaction(state.pool) as conn:
        await _check_shipments(conn, tenant.id, changes.get("shipment_ids"))
        row = await hook_store.update_webhook(conn, tenant.id, webhook_id, changes)
    if row is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    return hook_store.webhook_json(row)


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, tenant: CurrentTenant, state: Shared) -> Response:
    async with store.transaction(state.pool) as conn:
        if not await hook_store.delete_webhook(conn, tenant.id, webhook_id):
            raise NotFound(f"no webhook {webhook_id!r}")
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate", response_model=answers(schemas.WebhookWithSecret))
async def rotate_secret(
    webhook_id: str, tenant: CurrentTenant, state: Shared, body: RotateIn | None = None
) -> dict[str, Any]:
    """A new secret. Until `previous_secret_expires_at` deliveries carry both signatures."""
    grace = body.grace_s if body else DEFAULT_GRACE_S
    async with store.transaction(state.pool) as conn:
        until = state.clock() + timedelta(seconds=grace)
        got = await hook_store.rotate_secret(conn, tenant.id, webhook_id, await _box(conn, state), until)
    if got is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    row, secret = got
    return {**hook_store.webhook_json(row), "secret": secret}


@router.get("/{webhook_id}/deliveries", response_model=answers(schemas.DeliveryPage))
async def list_deliveries(
    webhook_id: str,
    tenant: CurrentTenant,
    db: Db,
    limit: Limit = 50,
    cursor: Cursor = None,
    status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query()] = None,
) -> dict[str, Any]:
    """Messages sent or to be sent, newest first, each with its attempts."""
    await _require(db, tenant.id, webhook_id)
    items, nxt = await hook_store.list_deliveries(db, webhook_id, status, limit, cursor)
    return {"items": items, "next_cursor": nxt}


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=202,
    responses={202: {"model": schemas.RetryQueued, "description": "queued again"}},
)
async def retry_delivery(webhook_id: str, delivery_id: str, tenant: CurrentTenant, state: Shared) -> JSONBody:
    """Send a message again (same `webhook-id`), now, with a fresh retry schedule."""
    async with store.transaction(state.pool) as conn:
        await _require(conn, tenant.id, webhook_id)
        if not await hook_store.retry_delivery(conn, webhook_id, delivery_id, state.clock()):
            raise NotFound(f"no delivery {delivery_id!r}")
    return JSONBody({"id": delivery_id, "status": "pending"}, status_code=202)


@router.post(
    "/{webhook_id}/replay",
    status_code=202,
    responses={202: {"model": schemas.ReplayQueued, "description": "the matching messages queued"}},
)
async def replay(webhook_id: str, body: ReplayIn, tenant: CurrentTenant, state: Shared) -> JSONBody:
    """Queue again, as new deliveries, the kept stream messages emitted in [`from`, `until`) that this
    subscription matches (its current events and shipment filter). A message that already has a
    delivery to this subscription pending is not queued again: repeating the call while the replay
    is being sent queues nothing more (`count` says how many were queued)."""
    since, until = _aware("from", body.from_), _aware("until", body.until)
    if until <= since:
        raise ValidationError("until", "must be after from")
    if until - since > MAX_REPLAY:
        raise ValidationError("until", f"a replay covers at most {MAX_REPLAY.days} days")
    async with store.transaction(state.pool) as conn:
        await _require(conn, tenant.id, webhook_id)
        count = await hook_store.replay(conn, tenant.id, webhook_id, since, until, state.clock())
    return JSONBody({"count": count}, status_code=202)
