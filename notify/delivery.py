"""Outbound notification delivery: Standard Webhooks, at least once, in order per shipment, fairly.

Deliveries are queued in the database by the outbox trigger, in the transaction of the change.
A sender slot leases one due delivery in a short transaction (`hook_store.claim`, one statement),
commits, sends it with no transaction open, and records the attempt and the next step in a second
one (a success in one statement, `hook_store.record_success`: neither holds the endpoint's row
across a round trip, so one endpoint's sends are not claimed one at a time). The lease
is renewed while the send runs; a worker that dies mid-send stops renewing, the lease lapses
within `LEASE_S`, and another worker sends the delivery again under the same `webhook-id`
(receivers deduplicate on it). Any number of workers share the queue.

Fairness, so that one endpoint's slowness or failure delays only its own deliveries:
- an endpoint (a subscription) has at most `webhook_endpoint_concurrency` deliveries in flight
  across all workers, a tenant at most `webhook_tenant_concurrency`;
- endpoints are served in turns, tenant by tenant (round-robin), not oldest delivery first;
- each endpoint has a circuit breaker (`trip`): after `webhook_breaker_failures` failed attempts
  in a row nothing is sent to it for a cool-down, then one probe; its deliveries wait, queued,
  and a failed probe does not use up the probed delivery's retries.

The rules are pure functions below (`message_body`, `sign`, `backoff`, `decide`, `trip`,
`sendable`); `send` does one HTTP request through an injected `httpx.AsyncClient`, re-checking the
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
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from notify import hook_store, ssrf
from notify.hook_store import Attempt
from trackd import keys, store, tenant_store
from trackd.errors import TrackdError
from trackd.settings import Settings

log = logging.getLogger("trackd.hooks")

JITTER = 0.15  # each wait is its scheduled length ±15 %
TIMEOUT_S = 15.0  # an answer may take this long (as other Standard Webhooks senders allow)
RESOLVE_TIMEOUT_S = 5.0  # the destination's name must resolve within this, before the request's own timeout
LEASE_S = 10.0  # a delivery in flight is leased this long ...
RENEW_S = 3.0  # ... and the lease renewed this often while the send runs
MAX_COOLDOWN_DOUBLINGS = 5  # an open circuit waits at most 32 cool-downs before its next probe
DISABLE_AFTER_S = 3 * 86400.0  # an endpoint failing without a success for this long is disabled
KEEP_LOG_S = 30 * 86400.0  # finished deliveries (and their attempts) are kept this long
POLL_S = 1.0  # an idle slot looks anyway this often: for what nothing announces (a lease that lapsed)
UNHEARD_POLL_S = 0.2  # ... and this often while the listener is not connected


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
    *,
    probe: bool = False,
) -> Decision:
    """What follows an attempt: done, retried later, or given up; and whether to disable the endpoint.

    A failed `probe` (the one send an open circuit lets through) keeps the delivery due with its
    tries unchanged: it showed that the endpoint is still down, which the breaker paces, not that
    this message cannot be delivered.
    """
    tries = tries_before + 1
    if attempt.ok:
        return Decision("succeeded", tries, attempt.at)
    since = failing_since or attempt.at
    reason = None
    if (attempt.at - since).total_seconds() > disable_after_s:
        reason = (
            f"disabled at {attempt.at.isoformat()}: every attempt failed since {since.isoformat()}"
            f" (last: {attempt.error})"
        )
    if probe:
        return Decision("pending", tries_before, attempt.at, reason)
    delay = backoff(schedule, tries, rng)
    status, next_at = ("failed", attempt.at) if delay is None else ("pending", attempt.at + timedelta(seconds=delay))
    return Decision(status, tries, next_at, reason)


@dataclass(frozen=True, slots=True)
class Breaker:
    """An endpoint's circuit: `failures` in a row; no sends before `open_until` (None: closed)."""

    failures: int
    open_until: datetime | None


def trip(failures_before: int, ok: bool, at: datetime, threshold: int, cooldown_s: float) -> Breaker:
    """The endpoint's circuit after an attempt at `at`. A success closes it. The `threshold`-th
    failure in a row opens it for `cooldown_s`; each failure after that (a failed probe) opens it
    for twice as long as the one before, up to 2**MAX_COOLDOWN_DOUBLINGS cool-downs."""
    if ok:
        return Breaker(0, None)
    failures = failures_before + 1
    if failures < threshold:
        return Breaker(failures, None)
    wait = cooldown_s * 2 ** min(failures - threshold, MAX_COOLDOWN_DOUBLINGS)
    return Breaker(failures, at + timedelta(seconds=wait))


@dataclass(frozen=True, slots=True)
class Pending:
    id: str
    webhook_id: str
    shipment_id: str | None
    seq: int
    ord: int
    due_at: datetime


def sendable(pending: Iterable[Pending], now: datetime) -> list[str]:
    """The ordering rule (the claim query's, within one endpoint): per subscription and shipment only
    the earliest pending delivery may go, and only once due; soonest due first."""
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
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            target = await ssrf.check_url(url, allow_private, resolver)
    except ssrf.Refused as exc:
        return Attempt(now, None, took(), exc.reason)
    except TimeoutError:
        return Attempt(now, None, took(), f"timeout: the host did not resolve within {RESOLVE_TIMEOUT_S:g} s")
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
                    if len(chunks) >= hook_store.MAX_RESPONSE_BODY:
                        break
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        return Attempt(now, None, took(), f"timeout: no answer within {TIMEOUT_S:g} s")
    except httpx.HTTPError as exc:
        return Attempt(now, None, took(), f"connection failed: {_error(exc)}")
    text = bytes(chunks[: hook_store.MAX_RESPONSE_BODY]).decode("utf-8", errors="replace").replace("\x00", "")
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
    """Sends due deliveries with `concurrency` slots (default `webhook_senders`) until stopped.

    Idle slots wait to be woken, and a slot that found work wakes one more, so as many slots take
    part as there is work, without every idle slot querying the queue at once. What wakes one:
    - a notification on `hook_store.DELIVERIES_CHANNEL`, sent when a transaction that queued
      deliveries commits (in any process), heard on a connection of the deliverer's own, unless it
      names only endpoints this deliverer already sends to at their limit (`_saturated`);
    - the time a retry or a circuit's probe this deliverer scheduled comes due;
    - a poller, every `poll_s` (every `UNHEARD_POLL_S` while the listener is not connected), for
      what nothing announces: a lease that lapsed when its worker died, another worker's retry.
    """

    def __init__(
        self,
        state: Resources,
        client: httpx.AsyncClient | None = None,
        *,
        concurrency: int | None = None,
        poll_s: float = POLL_S,
        resolver: ssrf.Resolver = ssrf.system_resolver,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.pool = state.pool
        self.settings = state.settings
        self.clock = clock or state.clock
        self.client = client
        self.concurrency = max(1, concurrency or state.settings.webhook_senders)
        self.poll_s = poll_s
        self.resolver = resolver
        self.rng = rng or random.Random()
        self.disable_after_s = float(state.settings.webhook_disable_after_h) * 3600
        self._box: keys.SecretBox | None = None
        self._idle: deque[asyncio.Event] = deque()
        self.hearing = False  # the listener is connected and listening
        self._waking = 0  # slots woken that have not looked at the queue yet
        self._sending: Counter[str] = Counter()  # deliveries this deliverer has in flight, by endpoint

    async def run(self, stop: asyncio.Event) -> None:
        own = self.client is None
        client = self.client or httpx.AsyncClient(
            timeout=httpx.Timeout(TIMEOUT_S),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        try:
            await asyncio.gather(
                *(self._slot(stop, client) for _ in range(self.concurrency)),
                self._poller(stop),
                self._listener(stop),
                self._upkeep(stop),
                self._stopper(stop),
            )
        finally:
            if own:
                await client.aclose()

    def _wake_one(self) -> None:
        while self._idle:
            event = self._idle.popleft()
            if not event.is_set():
                event.set()
                self._waking += 1
                return

    def _announce(self) -> None:
        """Something may be due: wake a slot, unless one woken already has yet to look (it will see
        it), so that a burst of notifications makes one look, not one each."""
        if not self._waking:
            self._wake_one()

    async def _slot(self, stop: asyncio.Event, client: httpx.AsyncClient) -> None:
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
                self._wake_one()  # there may be more: let one more slot look
                continue
            event = asyncio.Event()
            self._idle.append(event)
            if stop.is_set():  # stopped while this slot was busy: the stopper has woken the others already
                break
            await event.wait()
            self._waking = max(0, self._waking - 1)

    def _saturated(self, payload: str) -> bool:
        """Whether a queue notification names only endpoints this deliverer already sends to at their
        limit: no claim can take their deliveries before one of those sends ends, and the slot that
        sent it looks again then. A notification that names none (`wake_senders`) may be anything."""
        if not payload:
            return False
        limit = self.settings.webhook_endpoint_concurrency
        return all(self._sending[w] >= limit for w in payload.split(","))

    def _wake_at(self, at: datetime) -> None:
        """Wake a slot when `at` comes (a retry or a probe this deliverer scheduled)."""
        delay = (at - self.clock()).total_seconds()
        asyncio.get_running_loop().call_later(max(0.0, delay), self._announce)

    async def _poller(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._announce()
            await _sleep(stop, self.poll_s if self.hearing else min(self.poll_s, UNHEARD_POLL_S))

    async def _listener(self, stop: asyncio.Event) -> None:
        """Wake a slot for each notification that deliveries were queued; connect again (after a
        growing pause) when the connection is lost, polling more often meanwhile."""
        backoff = 0.1
        while not stop.is_set():
            try:
                conninfo = self.pool.conninfo
                assert isinstance(conninfo, str), "the deliverer needs the pool's connection string"
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {hook_store.DELIVERIES_CHANNEL}")
                    self.hearing, backoff = True, 0.1
                    self._announce()  # what was queued while no one listened
                    while not stop.is_set():
                        async for note in conn.notifies(timeout=1.0, stop_after=1):
                            if not self._saturated(note.payload):
                                self._announce()
            except Exception as exc:  # the database went away: poll more often until it is back
                if self.hearing:
                    log.warning("webhook deliveries: not hearing of new ones (%s), polling", _error(exc))
            self.hearing = False
            await _sleep(stop, backoff)
            backoff = min(backoff * 2, 5.0)

    async def _stopper(self, stop: asyncio.Event) -> None:
        await stop.wait()
        while self._idle:  # idle slots see `stop` at once
            self._idle.popleft().set()

    async def _upkeep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with store.transaction(self.pool) as conn:
                    n = await hook_store.purge(conn, self.clock() - timedelta(seconds=KEEP_LOG_S))
                if n:
                    log.info("webhook log: removed %d finished deliveries", n)
            except Exception as exc:
                log.warning("webhook log upkeep: %s", _error(exc))
            await _sleep(stop, 3600.0)

    async def _secrets(self, conn: store.Conn, row: store.Row, now: datetime) -> list[str]:
        if self._box is None:
            key = self.settings.secret_key.get_secret_value() if self.settings.secret_key else None
            self._box = await tenant_store.box_for(conn, key)
        return hook_store.signing_secrets(row, self._box, now)

    async def deliver_one(self, client: httpx.AsyncClient) -> bool:
        """Lease one due delivery, send it, record the attempt; False when nothing may go now."""
        s = self.settings
        now = self.clock()
        async with store.transaction(self.pool) as conn:
            row = await hook_store.claim(
                conn,
                now,
                now + timedelta(seconds=LEASE_S),
                s.webhook_endpoint_concurrency,
                s.webhook_tenant_concurrency,
            )
            if row is None:
                return False
            try:
                secrets: list[str] | str = await self._secrets(conn, row, now)
            except TrackdError as exc:
                secrets = f"cannot sign: {exc.detail}"
        self._sending[row["webhook_id"]] += 1
        try:
            await self._send_and_record(client, row, secrets)
        finally:
            self._sending[row["webhook_id"]] -= 1
            if not self._sending[row["webhook_id"]]:
                del self._sending[row["webhook_id"]]
        return True

    async def _send_and_record(self, client: httpx.AsyncClient, row: store.Row, secrets: list[str] | str) -> None:
        """Send a leased delivery (or, when it cannot be signed, fail it unsent) and record the attempt."""
        now = self.clock()
        if isinstance(secrets, str):
            attempt = Attempt(now, None, 0, secrets)
        else:
            attempt = await self._send_leased(client, row, secrets, now)
        if attempt.ok:
            async with store.transaction(self.pool) as conn:
                await hook_store.record_success(
                    conn, row["id"], row["webhook_id"], row["lease"], attempt, row["tries"] + 1
                )
        else:
            await self._record_failure(row, attempt)

    async def _record_failure(self, row: store.Row, attempt: Attempt) -> None:
        """The next step after a failed attempt (a retry, giving up, the breaker, disabling), decided
        with the endpoint's row locked: failures of one endpoint are counted one at a time."""
        s = self.settings
        probe = row["circuit_open_until"] is not None
        async with store.transaction(self.pool) as conn:
            endpoint = await hook_store.lock_endpoint(conn, row["webhook_id"])
            if endpoint is None:  # the subscription was deleted meanwhile, with its deliveries
                return
            step = decide(
                attempt,
                row["tries"],
                s.retry_schedule,
                endpoint["failing_since"],
                self.rng,
                self.disable_after_s,
                probe=probe,
            )
            circuit = trip(
                endpoint["consecutive_failures"],
                attempt.ok,
                attempt.at,
                s.webhook_breaker_failures,
                s.webhook_breaker_cooldown_s,
            )
            failing_since = endpoint["failing_since"] or attempt.at
            await hook_store.save_endpoint(
                conn,
                row["webhook_id"],
                endpoint,
                circuit.failures,
                circuit.open_until,
                failing_since,
                step.disable_reason,
                attempt.at,
            )
            await hook_store.record(
                conn, row["id"], row["lease"], attempt, step.status, step.tries, step.next_attempt_at
            )
        if step.status == "pending":
            self._wake_at(step.next_attempt_at)
        if circuit.open_until is not None:
            self._wake_at(circuit.open_until)
        if step.disable_reason:
            log.warning("webhook %s %s", row["webhook_id"], step.disable_reason)
        elif circuit.open_until is not None and endpoint["circuit_open_until"] is None:
            log.info("webhook %s: circuit open until %s (%s)", row["webhook_id"], circuit.open_until, attempt.error)

    async def _send_leased(
        self, client: httpx.AsyncClient, row: store.Row, secrets: list[str], now: datetime
    ) -> Attempt:
        """`send`, renewing the delivery's lease every `RENEW_S` while it runs."""
        task = asyncio.ensure_future(
            send(
                client,
                row["url"],
                row["id"],
                message_body(row["type"], row["payload"]),
                secrets,
                now,
                allow_private=self.settings.webhook_allow_private,
                resolver=self.resolver,
            )
        )
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=RENEW_S)
                if done:
                    return task.result()
                try:
                    async with store.transaction(self.pool) as conn:
                        until = self.clock() + timedelta(seconds=LEASE_S)
                        await hook_store.renew(conn, row["id"], row["lease"], until)
                except Exception as exc:  # the send goes on; at worst the delivery is sent twice
                    log.warning("webhook lease renewal: %s", _error(exc))
        finally:
            if not task.done():
                task.cancel()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
