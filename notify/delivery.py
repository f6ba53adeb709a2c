"""Outbound notification delivery: Standard Webhooks, at least once, in order per shipment.

Deliveries are queued in the database by the outbox trigger, in the transaction of the change.
Each sender slot takes one due delivery in its own transaction (`FOR UPDATE SKIP LOCKED`), sends
it, and records the attempt and the next step before committing, so any number of workers share
the queue and no attempt is sent twice; a worker that dies mid-send releases its row with its
connection and another sends it again under the same `webhook-id` (receivers deduplicate on it).

The rules are pure functions below (`message_body`, `sign`, `backoff`, `decide`, `sendable`);
`send` does one HTTP request through an injected `httpx.AsyncClient`, re-checking the
destination against the SSRF guard every time, and never following redirects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
import orjson
from psycopg_pool import AsyncConnectionPool

from notify import ssrf
from notify import store as notify_store
from notify.store import Attempt
from trackd import keys, store
from trackd.errors import TrackdError
from trackd.settings import Settings

log = logging.getLogger("trackd.hooks")

JITTER = 0.15  # each wait is its scheduled length ±15 %
TIMEOUT_S = 10.0
DISABLE_AFTER_S = 3 * 86400.0  # an endpoint failing without a success for this long is disabled
KEEP_LOG_S = 30 * 86400.0  # finished deliveries (and their attempts) are kept this long


# -- the pure rules ------------------------------------------------------------------------------


def message_body(event_type: str, message: dict[str, Any]) -> bytes:
    """The request body: `{"type", "timestamp", "data"}`, `data` being the stream message without `seq`."""
    data = {k: v for k, v in message.items() if k != "seq"}
    return orjson.dumps({"type": event_type, "timestamp": message.get("occurred_at"), "data": data})


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the bytes after `whsec_`."""
    raw = secret.removeprefix("whsec_")
    key = base64.b64decode(raw + "=" * (-len(raw) % 4))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def request_headers(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """Standard Webhooks headers; one signature per secret, space-separated (during a rotation)."""
    return {
        "content-type": "application/json",
        "user-agent": "trackd-webhooks/1",
        "accept-encoding": "identity",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }


def backoff(schedule: Sequence[float], tries: int, rng: random.Random) -> float | None:
    """Seconds to wait after the `tries`-th failed attempt, jittered; None when retries are over."""
    if tries < 1 or tries > len(schedule):
        return None
    return max(0.0, schedule[tries - 1] * (1.0 + rng.uniform(-JITTER, JITTER)))


@dataclass(frozen=True, slots=True)
class Decision:
    status: str  # pending | succeeded | failed
    tries: int
    next_attempt_at: datetime
    disable_reason: str | None = None


def decide(
    attempt: Attempt,
    tries_before: int,
    schedule: Sequence[float],
    failing_since: datetime | None,
    rng: random.Random,
    disable_after_s: float = DISABLE_AFTER_S,
) -> Decision:
    """What follows an attempt: done, retried later, or given up; and whether to disable the endpoint."""
    tries = tries_before + 1
    if attempt.ok:
        return Decision("succeeded", tries, attempt.at)
    delay = backoff(schedule, tries, rng)
    status, next_at = ("failed", attempt.at) if delay is None else ("pending", attempt.at + timedelta(seconds=delay))
    since = failing_since or attempt.at
    reason = None
    if (attempt.at - since).total_seconds() > disable_after_s:
        reason = (
            f"disabled at {attempt.at.isoformat()}: every attempt failed since {since.isoformat()}"
            f" (last: {attempt.error})"
        )
    return Decision(status, tries, next_at, reason)


@dataclass(frozen=True, slots=True)
class Pending:
    id: str
    webhook_id: str
    shipment_id: str | None
    seq: int
    ord: int
    due_at: datetime


def sendable(pending: Iterable[Pending], now: datetime) -> list[str]:
    """The ordering rule (the claim query's): per subscription and shipment only the earliest
    pending delivery may go, and only once due; soonest due first."""
    heads: dict[tuple[str, str], Pending] = {}
    for p in pending:
        key = (p.webhook_id, p.shipment_id or "")
        if key not in heads or (p.seq, p.ord, p.id) < (heads[key].seq, heads[key].ord, heads[key].id):
            heads[key] = p
    return [p.id for p in sorted(heads.values(), key=lambda p: p.due_at) if p.due_at <= now]


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def send(
    client: httpx.AsyncClient,
    url: str,
    msg_id: str,
    body: bytes,
    secrets: Sequence[str],
    now: datetime,
    *,
    allow_private: bool,
    resolver: ssrf.Resolver = ssrf.system_resolver,
    monotonic: Callable[[], float] = time.monotonic,
) -> Attempt:
    """One attempt. Never raises for the endpoint's faults: they are the attempt's `error`."""
    start = monotonic()

    def took() -> int:
        return int((monotonic() - start) * 1000)

    try:
        target = await ssrf.check_url(url, allow_private, resolver)
    except ssrf.Refused as exc:
        return Attempt(now, None, took(), exc.reason)
    headers = {**request_headers(msg_id, int(now.timestamp()), body, secrets), "host": target.host}
    request = client.build_request(
        "POST", target.url, content=body, headers=headers, extensions={"sni_hostname": target.sni_hostname}
    )
    try:
        async with asyncio.timeout(TIMEOUT_S * 1.5):
            response = await client.send(request, stream=True, follow_redirects=False)
            latency = took()
            try:
                chunks = bytearray()
                async for chunk in response.aiter_bytes():
                    chunks += chunk
                    if len(chunks) >= notify_store.MAX_RESPONSE_BODY:
                        break
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        return Attempt(now, None, took(), f"timeout: no answer within {TIMEOUT_S:g} s")
    except httpx.HTTPError as exc:
        return Attempt(now, None, took(), f"connection failed: {_error(exc)}")
    text = bytes(chunks[: notify_store.MAX_RESPONSE_BODY]).decode("utf-8", errors="replace").replace("\x00", "")
    code = response.status_code
    error = None
    if 300 <= code < 400:
        error = f"HTTP {code}: redirect to {response.headers.get('location', '?')!r} not followed"
    elif not 200 <= code < 300:
        error = f"HTTP {code}"
    return Attempt(now, code, latency, error, text or None)


# -- the worker ----------------------------------------------------------------------------------


class Resources(Protocol):
    """What the deliverer reads of the process's state (`api.deps.AppState`)."""

    @property
    def pool(self) -> AsyncConnectionPool: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...


class Deliverer:
    """Sends due deliveries with `concurrency` slots until stopped. One slot polls every
    `poll_s` when idle; a slot that finds work wakes the others."""

    def __init__(
        self,
        state: Resources,
        client: httpx.AsyncClient | None = None,
        *,
        concurrency: int = 4,
        poll_s: float = 0.2,
        resolver: ssrf.Resolver = ssrf.system_resolver,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.pool = state.pool
        self.settings = state.settings
        self.clock = clock or state.clock
        self.client = client
        self.concurrency = max(1, concurrency)
        self.poll_s = poll_s
        self.resolver = resolver
        self.rng = rng or random.Random()
        hours = getattr(state.settings, "webhook_disable_after_h", None)
        self.disable_after_s = float(hours) * 3600 if hours else DISABLE_AFTER_S
        self._box: keys.SecretBox | None = None
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        own = self.client is None
        client = self.client or httpx.AsyncClient(
            timeout=httpx.Timeout(TIMEOUT_S), follow_redirects=False, trust_env=False
        )
        try:
            await asyncio.gather(
                *(self._slot(stop, client, i) for i in range(self.concurrency)), self._upkeep(stop), self._stopper(stop)
            )
        finally:
            if own:
                await client.aclose()

    async def _slot(self, stop: asyncio.Event, client: httpx.AsyncClient, index: int) -> None:
        failures = 0
        while not stop.is_set():
            try:
                busy = await self.deliver_one(client)
                failures = 0
            except Exception as exc:  # the database may be down: keep trying
                failures += 1
                log.warning("webhook delivery: %s", _error(exc))
                await _sleep(stop, min(0.2 * 2**failures, 5.0))
                continue
            if busy:
                self._wake.set()
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s if index == 0 else self.poll_s * 10)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _stopper(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()  # idle slots see `stop` at once

    async def _upkeep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with store.transaction(self.pool) as conn:
                    n = await notify_store.purge(conn, self.clock() - timedelta(seconds=KEEP_LOG_S))
                if n:
                    log.info("webhook log: removed %d finished deliveries", n)
            except Exception as exc:
                log.warning("webhook log upkeep: %s", _error(exc))
            await _sleep(stop, 3600.0)

    async def _secrets(self, conn: store.Conn, row: store.Row, now: datetime) -> list[str]:
        if self._box is None:
            key = self.settings.secret_key.get_secret_value() if self.settings.secret_key else None
            self._box = await store.box_for(conn, key)
        return notify_store.signing_secrets(row, self._box, now)

    async def deliver_one(self, client: httpx.AsyncClient) -> bool:
        """Send one due delivery and record the attempt; False when nothing is due."""
        async with store.transaction(self.pool) as conn:
            row = await notify_store.claim(conn, self.clock())
            if row is None:
                return False
            now = self.clock()
            try:
                secrets = await self._secrets(conn, row, now)
            except TrackdError as exc:
                attempt = Attempt(now, None, 0, f"cannot sign: {exc.detail}")
            else:
                attempt = await send(
                    client,
                    row["url"],
                    row["id"],
                    message_body(row["type"], row["payload"]),
                    secrets,
                    now,
                    allow_private=self.settings.webhook_allow_private,
                    resolver=self.resolver,
                )
            step = decide(
                attempt,
                row["tries"],
                self.settings.retry_schedule,
                row["failing_since"],
                self.rng,
                self.disable_after_s,
            )
            await notify_store.record(conn, row["id"], attempt, step.status, step.tries, step.next_attempt_at)
            await notify_store.endpoint_result(conn, row["webhook_id"], attempt.ok, attempt.at, step.disable_reason)
        if step.disable_reason:
            log.warning("webhook %s %s", row["webhook_id"], step.disable_reason)
        return True


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
