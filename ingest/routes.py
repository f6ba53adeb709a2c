"""HTTP ingest: signed carrier webhooks, `POST /v1/events` and the OsmAnd device endpoint.

Each answers 2xx only after the events are durable. A bad or missing signature is 401 and nothing
is stored; input that cannot be understood is 4xx and kept in quarantine.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from starlette.requests import ClientDisconnect

from api import schemas
from api.deps import CurrentTenant, Shared
from api.errors import JSONBody
from ingest import sources
from ingest.pipeline import Pipeline
from ingest.sources import osmand as osmand_source
from trackd import metrics, quarantine_store, ratelimit, store, tenant_store
from trackd.errors import NotFound, RateLimited, TrackdError, Unauthorized, ValidationError
from trackd.model import SourceContext
from trackd.ratelimit import check_rate

log = logging.getLogger("trackd.ingest")
router = APIRouter(tags=["ingest"])

SourceName = Annotated[str, Path(pattern=f"^({'|'.join(sources.WEBHOOK_SOURCES)})$")]
TenantName = Annotated[str, Path(min_length=1, max_length=64)]


async def get_pipeline(request: Request) -> Pipeline:
    """The process's ingest pipeline, which `serve.app` puts on the app's state."""
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


IngestPipeline = Annotated[Pipeline, Depends(get_pipeline)]


async def read_body(request: Request) -> bytes:
    """The raw body. Its size is bounded by the app's one body limit (`serve.app.BodyLimit`, from
    `TRACKD_MAX_BODY_BYTES`), which answers 413 before more than the limit is read."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            chunks.append(chunk)
    except ClientDisconnect:
        # An aborted upload is the sender's business: one line, no traceback; nothing was stored and
        # the answer below reaches no one.
        log.info("client disconnected after %d bytes of the body of %s %s", size, request.method, request.url.path)
        raise ValidationError("body", "the client disconnected before the body was complete") from None
    return b"".join(chunks)


def _accepted(result: Any, status: int = 202) -> Response:
    if status == 204:
        return Response(status_code=204)
    return JSONBody(
        {"accepted": result.accepted, "stored": result.stored, "duplicates": result.duplicates}, status_code=status
    )


def _secret_key(state: Shared) -> str | None:
    return state.settings.secret_key.get_secret_value() if state.settings.secret_key else None


@router.post(
    "/v1/ingest/{tenant}/{source}",
    status_code=202,
    responses={
        200: {"model": schemas.Accepted, "description": "a DCSA 3.0.0 body, durable"},
        202: {"model": schemas.Accepted, "description": "durable"},
        204: {"description": "a DCSA delivery, durable"},
    },
)
async def ingest_webhook(
    tenant: TenantName, source: SourceName, request: Request, state: Shared, pipeline: IngestPipeline
) -> Response:
    """A signed delivery from a carrier or a system of the tenant's; 202 (DCSA: 204, a 3.0.0 body 200)
    once durable."""
    body = await read_body(request)
    adapter = sources.get(source)

    def signed(secret: str) -> bool:
        try:
            sources.verify(source, secret, body, request.headers)
        except Unauthorized:
            return False
        return True

    # The current ingest secret, or the previous one during a rotation's grace period. An unknown
    # tenant gets the same answer as a bad signature, in about the same time (see the store).
    tenant_obj = await tenant_store.tenant_for_signature(state.pool, tenant, _secret_key(state), signed)
    if tenant_obj is None:
        raise Unauthorized("unknown tenant or bad signature")
    check_rate(tenant_obj.id, state.settings.ingest_rate_per_s)
    ctx = SourceContext(
        tenant=tenant_obj.name, received_at=pipeline.clock(), content_type=request.headers.get("content-type")
    )
    result = await pipeline.ingest(tenant_obj, source, body, ctx, "webhook")
    return _accepted(result, adapter.status_of(body) if adapter.status_of else adapter.status)


@router.post(
    "/v1/events",
    status_code=202,
    responses={202: {"model": schemas.Accepted, "description": "durable"}},
    openapi_extra=schemas.raw_body(
        schemas.TrackdEvent | list[schemas.TrackdEvent], "one trackd event, or an array of at most 10,000"
    ),
)
async def post_events(request: Request, tenant: CurrentTenant, state: Shared, pipeline: IngestPipeline) -> Response:
    """trackd event JSON (one object or an array) with the API key."""
    body = await read_body(request)
    check_rate(tenant.id, state.settings.ingest_rate_per_s)
    ctx = SourceContext(tenant=tenant.name, received_at=pipeline.clock())
    result = await pipeline.ingest(tenant, "native", body, ctx, "api")
    return _accepted(result)


async def _unattributed(request: Request, state: Shared, error: TrackdError, raw: bytes) -> None:
    """Keep OsmAnd input that names no registered device in the bounded sample without a tenant
    (`quarantine_store.quarantine`), as far as `ratelimit.may_sample` allows for the client's address; past
    that, nothing is stored. Either way the sender gets its 4xx."""
    address = request.client.host if request.client else ""
    kept = ratelimit.may_sample(address) and await quarantine_store.quarantine_now(
        state.guests, None, "osmand", "http", f"{error.code}: {error.detail}", raw
    )
    metrics.UNATTRIBUTED.labels("osmand", "sampled" if kept else "dropped").inc()
    if kept:
        metrics.QUARANTINED.labels("osmand", "http").inc()


_OSMAND: dict[int | str, dict[str, Any]] = {200: {"description": "durable (an empty body)"}}


@router.get("/v1/osmand", status_code=200, operation_id="osmand_get", response_class=Response, responses=_OSMAND)
@router.post("/v1/osmand", status_code=200, operation_id="osmand_post", response_class=Response, responses=_OSMAND)
async def osmand(request: Request, state: Shared, pipeline: IngestPipeline) -> Response:
    """Traccar Client / OsmAnd: `id` is a registered device key. Answers 200 once durable."""
    body = await read_body(request) if request.method == "POST" else b""
    params = {k: v for k, v in request.query_params.items()}
    try:
        key = osmand_source.device_key(body, params)
    except ValidationError as exc:
        await _unattributed(request, state, exc, body or str(request.url.query).encode())
        raise
    found = store.remembered_device(key)
    address = request.client.host if request.client else ""
    if found is None:
        budgeted = not store.seen_device_key(key)  # a device heard before is owed its lookup
        if budgeted:
            try:
                ratelimit.take_lookup(address)  # past its budget of unknown keys, an address costs no lookup
            except RateLimited:
                metrics.UNATTRIBUTED.labels("osmand", "dropped").inc()
                raise
        try:
            found = await store.device_for_key(state.guests, key)
        except Exception:
            if budgeted:  # no answer (the database): not the address's fault
                ratelimit.refund_lookup(address)
            raise
        if found is not None and budgeted:
            ratelimit.refund_lookup(address)
    if found is None:
        try:  # raised here, not kept in a variable: a frame holding the error its traceback holds is a cycle
            raise NotFound(f"no device with key {key!r}: register it with POST /v1/devices")
        except NotFound as exc:
            await _unattributed(request, state, exc, body or str(request.url.query).encode())
            raise
    tenant_id, tenant_name, device_id = found
    check_rate(tenant_id, state.settings.ingest_rate_per_s)
    ctx = SourceContext(
        tenant=tenant_name,
        received_at=pipeline.clock(),
        device=device_id,
        params=params,
        content_type=request.headers.get("content-type"),
    )
    raw = body or str(request.url.query).encode()
    await pipeline.ingest(store.Tenant(tenant_id, tenant_name), "osmand", body, ctx, "http", raw=raw)
    return Response(status_code=200)
