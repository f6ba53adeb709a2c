"""The pull side of DCSA Track & Trace 3.0.0: the worker asks each source's `<url>/events`.

A pass (at once after `trackd source add`, then every `interval_s`) asks for the events updated
since the latest `eventUpdatedDateTime` it has seen (`eventUpdatedDateTimeMin`), follows the
`Next-Page-Cursor` response header page by page (the cursor goes with the query that first page
had, as the standard asks), and hands each page to the ingest pipeline as a push would be: the
same adapter, the same transaction, the same event ids (a page asked twice stores nothing twice).
The cursor is kept after every stored page, so a restarted worker resumes there. A failed request
ends the pass and the next one waits longer, doubling up to an hour, resuming at the same page.

Outbound requests go through the injected SSRF guard (the one notification webhooks use: private
destinations only when `TRACKD_WEBHOOK_ALLOW_PRIVATE` is set), to the address it checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
import orjson
from psycopg_pool import AsyncConnectionPool

from ingest.pipeline import Pipeline
from trackd import source_store, store
from trackd.assessment import Evaluator
from trackd.errors import TrackdError, Unavailable, ValidationError
from trackd.model import SourceContext
from trackd.settings import Settings
from trackd.times import parse_time

log = logging.getLogger("trackd.poller")

PAGE_LIMIT = 100  # events asked for a page (`limit`); the publisher may send fewer
MAX_PAGES = 50  # pages of one pass; a longer feed goes on in the next pass, due at once
TIMEOUT_S = 30.0
LEASE_S = 120.0  # a pass holds its source this long after its last page (a dead worker's lease lapses)
MAX_BACKOFF_S = 3600.0
MAX_CURSOR = 2000  # characters of a Next-Page-Cursor kept and sent back
API_VERSION = "3.0.0"


class Target(Protocol):
    """Where the guard says to connect (`notify.ssrf.Target`)."""

    @property
    def url(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def sni_hostname(self) -> str: ...


Guard = Callable[[str], Awaitable[Target]]


class Resources(Protocol):
    """What the poller reads of the process's state (`api.deps.AppState`)."""

    @property
    def pool(self) -> AsyncConnectionPool: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def evaluator(self) -> Evaluator: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...


class PollError(Exception):
    """A pass that could not go on: the source's fault or the network's (kept as `last_error`)."""


def backoff_s(interval_s: int, failures: int) -> float:
    """The wait after the `failures`-th failure in a row: the interval, doubling, at most an hour."""
    return float(min(MAX_BACKOFF_S, interval_s * 2 ** min(max(failures - 1, 0), 20)))


def latest_update(events: list[Any], now: datetime) -> datetime | None:
    """The latest `eventUpdatedDateTime` of a page (what the next pass asks from), at most `now`: a
    publisher's clock ahead of ours, or a time far ahead, must not make later passes skip events."""
    found = None
    for e in events:
        value = e.get("eventUpdatedDateTime") if isinstance(e, dict) else None
        try:
            at = parse_time(value, "eventUpdatedDateTime", require_offset=True) if isinstance(value, str) else None
        except ValidationError:
            continue
        if at is not None and (found is None or at > found):
            found = min(at, now)
    return found


def first_query(since: datetime | None) -> dict[str, str]:
    query = {"limit": str(PAGE_LIMIT)}
    if since is not None:
        query["eventUpdatedDateTimeMin"] = since.isoformat().replace("+00:00", "Z")
    return query


class Poller:
    def __init__(
        self,
        state: Resources,
        guard: Guard,
        client: httpx.AsyncClient | None = None,
        *,
        tick_s: float = 1.0,
        lease_s: float = LEASE_S,
    ) -> None:
        self.pool = state.pool
        self.settings = state.settings
        self.clock = state.clock
        self.pipeline = Pipeline(state.pool, state.evaluator, state.clock)
        self.guard = guard
        self.client = client
        self.tick_s = tick_s
        self.lease_s = lease_s

    async def run(self, stop: asyncio.Event) -> None:
        """Poll due sources until `stop`."""
        client = self.client or httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT_S), trust_env=False)
        try:
            while not stop.is_set():
                try:
                    await self.poll_due(client)
                except Exception as exc:  # the database, most likely: try again next tick
                    log.warning("polling sources failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.tick_s)
        finally:
            if self.client is None:
                await client.aclose()

    async def poll_due(self, client: httpx.AsyncClient) -> int:
        """One pass of every source that is due and not held by another worker; how many."""
        passes = 0
        secret = self.settings.secret_key.get_secret_value() if self.settings.secret_key else None
        while True:
            async with store.transaction(self.pool) as conn:
                src = await source_store.claim(conn, self.clock(), self.lease_s, secret)
            if src is None:
                return passes
            passes += 1
            await self.poll(client, src)

    async def poll(self, client: httpx.AsyncClient, src: source_store.PullSource) -> None:
        """One pass of a claimed source; always gives the source back with its next time."""
        error: str | None = None
        more = False
        try:
            more = await self._pages(client, src)
        except (PollError, TrackdError) as exc:
            error = exc.detail if isinstance(exc, TrackdError) else str(exc)
            log.warning("source %s: %s", src.id, error)
        except Exception as exc:  # an unexpected fault: the source still gets its next time
            error = f"could not be polled ({type(exc).__name__})"
            log.exception("source %s: %s", src.id, error)
        now = self.clock()
        if error is not None:
            wait = backoff_s(src.interval_s, src.failures + 1)
        else:
            wait = 0.0 if more else float(src.interval_s)
        async with store.transaction(self.pool) as conn:
            await source_store.finish(conn, src.id, now, now + timedelta(seconds=wait), error)

    async def _pages(self, client: httpx.AsyncClient, src: source_store.PullSource) -> bool:
        """Page through the feed from where the source stopped; True when pages are left."""
        cursor, since = src.cursor, src.updated_since
        query = src.cursor_query if cursor and src.cursor_query is not None else first_query(since)
        for _ in range(MAX_PAGES):
            body, cursor = await self._get(client, src, {**query, "cursor": cursor} if cursor else query)
            stored = await self._store(src, body)
            if stored is not None:
                found, latest = stored
                since = max(since, latest) if since and latest else since or latest
            else:
                found = 0
            async with store.transaction(self.pool) as conn:
                await source_store.save_page(
                    conn, src.id, self.clock(), self.lease_s, cursor, query if cursor else None, since, found
                )
            if not cursor:
                return False
        return True

    async def _get(
        self, client: httpx.AsyncClient, src: source_store.PullSource, params: dict[str, str]
    ) -> tuple[bytes, str | None]:
        """One page: its body and the cursor of the next, if any."""
        try:
            target = await self.guard(src.url.rstrip("/") + "/events")
        except ValidationError as exc:
            raise PollError(exc.detail) from None
        headers = {"host": target.host, "accept": "application/json", "api-version": API_VERSION}
        if src.api_key:
            headers["authorization"] = f"Bearer {src.api_key}"
        request = client.build_request(
            "GET", target.url, params=params, headers=headers, extensions={"sni_hostname": target.sni_hostname}
        )
        limit = self.settings.max_body_bytes
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                if response.status_code != 200:
                    raise PollError(f"HTTP {response.status_code} from {src.url}/events")
                chunks = bytearray()
                async for chunk in response.aiter_bytes():
                    chunks += chunk
                    if len(chunks) > limit:
                        raise PollError(f"a page of {src.url}/events is larger than {limit} bytes")
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise PollError(f"{type(exc).__name__} asking {src.url}/events") from None
        cursor = response.headers.get("next-page-cursor") or None
        if cursor is not None and len(cursor) > MAX_CURSOR:
            raise PollError(f"{src.url}/events sent a Next-Page-Cursor of {len(cursor)} characters")
        return bytes(chunks), cursor

    async def _store(self, src: source_store.PullSource, body: bytes) -> tuple[int, datetime | None] | None:
        """Ingest a page as the push route would; (events, latest update), or None for a page that
        could not be understood (it is in quarantine, and the pass goes on past it)."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        events = doc.get("events") if isinstance(doc, dict) else None
        if events == []:
            return 0, None
        ctx = SourceContext(tenant=src.tenant.name, received_at=self.clock(), content_type="application/json")
        try:
            result = await self.pipeline.ingest(src.tenant, "dcsa", body, ctx, "poll")
        except Unavailable:
            raise
        except TrackdError as exc:
            log.warning("source %s: a page was quarantined: %s", src.id, exc.detail)
            return None
        return result.accepted, latest_update(events if isinstance(events, list) else [], ctx.received_at)
