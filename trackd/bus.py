"""The message bus between the writers (pipeline, worker) and every process's stream hub.

Messages are per tenant, ordered by `seq` (allocated once, in the database). The Redis bus keeps
them in one Redis Stream per tenant, packed: one entry holds the messages of one publish (at most
`PACK`), as a JSON array, and its id is `<last seq>-1`, so a message published twice is refused by
Redis itself and readers get them in order. Trimming is by seq: about the last `maxlen` messages.
The memory bus is the same interface for a single process (the demo without Redis).

Every key starts with the prefix and the deployment's identity (`stream_key`): installations that
share a Redis and a prefix never share a key. The relay checks a stream against the database with
`heads` and drops one that is ahead of it (a restored database) with `drop`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

Message = dict[str, Any]
PACK = 1000  # messages per stream entry at most
READ_ENTRIES = 50

# Delete the stream only if its last entry is still the one the caller saw: a stream that someone
# reset and published to meanwhile is kept.
DROP_IF_HEAD = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] and tonumber(string.match(last[1][1], '^(%d+)')) == tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0"""


def stream_key(prefix: str, deployment: str | None, tenant_id: int) -> str:
    """The Redis key of a tenant's stream: `<prefix>:<deployment>:stream:<tenant id>` (without a
    deployment, for tests and tools with a prefix of their own: `<prefix>:stream:<tenant id>`)."""
    space = f"{prefix}:{deployment}" if deployment else prefix
    return f"{space}:stream:{tenant_id}"


class BusUnavailable(Exception):
    """The bus cannot be reached; the outbox keeps the messages until it can."""


class Bus(Protocol):
    async def publish(self, tenant_id: int, messages: list[Message], last: int | None = None) -> None:
        """Append messages (each with an increasing `seq`); a seq already published is skipped.
        `last`, when the caller knows it, is the stream's last seq (saves asking the bus)."""

    async def read(self, cursors: dict[int, int], block_ms: int) -> list[tuple[int, Message]]:
        """Messages with seq above each tenant's cursor, in order; waits up to `block_ms`."""

    async def range(self, tenant_id: int, after: int, upto: int) -> list[Message] | None:
        """Messages after `after` up to `upto` inclusive, or None if some are no longer kept."""

    async def heads(self, tenant_ids: list[int]) -> dict[int, int]:
        """Each tenant's last seq on the bus (0 for none), in one round trip."""

    async def drop(self, tenant_id: int, head: int) -> bool:
        """Delete the tenant's stream if its last seq is still `head`; True if it did. Readers then
        find the messages it held in the outbox, and the next publish starts a new stream."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class RedisBus:
    """`deployment` is the installation's identity (`trackd.db.deployment`): every process that
    serves gives it, so its keys are its own even where another installation uses the same prefix."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, maxlen: int = 100_000, *, deployment: str | None = None
    ) -> None:
        self._r = client
        self._prefix = prefix
        self._deployment = deployment
        self._maxlen = maxlen
        self._drop = client.register_script(DROP_IF_HEAD)

    @classmethod
    def from_url(cls, url: str, prefix: str, maxlen: int = 100_000, *, deployment: str | None = None) -> RedisBus:
        client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        return cls(client, prefix, maxlen, deployment=deployment)

    def key(self, tenant_id: int) -> str:
        return stream_key(self._prefix, self._deployment, tenant_id)

    async def publish(self, tenant_id: int, messages: list[Message], last: int | None = None) -> None:
        if not messages:
            return
        key = self.key(tenant_id)
        try:
            if last is None:
                last = await self._last_seq(key)
            fresh = [m for m in messages if int(m["seq"]) > last]
            if not fresh:
                return
            pipe = self._r.pipeline(transaction=False)
            for i in range(0, len(fresh), PACK):
                pack = fresh[i : i + PACK]
                top = int(pack[-1]["seq"])
                pipe.xadd(
                    key, {"m": orjson.dumps(pack)}, id=f"{top}-1", minid=max(0, top - self._maxlen), approximate=True
                )
            results = await pipe.execute(raise_on_error=False)
            for res in results:
                if isinstance(res, ResponseError) and "equal or smaller" not in str(res):
                    raise res
        except RedisError as exc:
            raise BusUnavailable(str(exc)) from exc

    async def _last_seq(self, key: str) -> int:
        entries: Any = await self._r.xrevrange(key, count=1)
        return _entry_seq(entries)

    async def heads(self, tenant_ids: list[int]) -> dict[int, int]:
        if not tenant_ids:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for tenant_id in tenant_ids:
            pipe.xrevrange(self.key(tenant_id), count=1)
        try:
            results: list[Any] = await pipe.execute()
        except RedisError as exc:
            raise BusUnavailable(str(exc)) from exc
        return {t: _entry_seq(entries) for t, entries in zip(tenant_ids, results, strict=True)}

    async def drop(self, tenant_id: int, head: int) -> bool:
        try:
            return bool(await self._drop(keys=[self.key(tenant_id)], args=[head]))
        except RedisError as exc:
            raise BusUnavailable(str(exc)) from exc

    async def read(self, cursors: dict[int, int], block_ms: int) -> list[tuple[int, Message]]:
        if not cursors:
            await asyncio.sleep(block_ms / 1000)
            return []
        # an entry's id is its last seq: from `cursor` on, it may still hold some at or below the cursor
        streams: dict[Any, Any] = {self.key(t): f"{c}-1" for t, c in cursors.items()}
        try:
            got: Any = await self._r.xread(streams, count=READ_ENTRIES, block=block_ms)
        except RedisError as exc:
            raise BusUnavailable(str(exc)) from exc
        out: list[tuple[int, Message]] = []
        for key, entries in got or []:
            tenant_id = int(key.rsplit(b":", 1)[1])
            cursor = cursors[tenant_id]
            for _entry_id, fields in entries:
                out.extend((tenant_id, m) for m in orjson.loads(fields[b"m"]) if m["seq"] > cursor)
        return out

    async def range(self, tenant_id: int, after: int, upto: int) -> list[Message] | None:
        if upto <= after:
            return []
        try:
            entries: Any = await self._r.xrange(self.key(tenant_id), min=f"{after + 1}-0", max=f"{upto + PACK}-1")
        except RedisError as exc:
            raise BusUnavailable(str(exc)) from exc
        msgs = [m for _id, fields in entries for m in orjson.loads(fields[b"m"]) if after < m["seq"] <= upto]
        if [m["seq"] for m in msgs] != list(range(after + 1, upto + 1)):
            return None
        return msgs

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        await self._r.aclose()


class MemoryBus:
    """In-process bus for a single process (the demo without Redis)."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self._streams: dict[int, deque[Message]] = {}
        self._maxlen = maxlen
        self._changed = asyncio.Condition()

    async def publish(self, tenant_id: int, messages: list[Message], last: int | None = None) -> None:
        stream = self._streams.setdefault(tenant_id, deque(maxlen=self._maxlen))
        top = stream[-1]["seq"] if stream else 0  # the stream itself says, whatever `last` says
        for m in messages:
            if m["seq"] > top:
                stream.append(m)
                top = m["seq"]
        async with self._changed:
            self._changed.notify_all()

    def _collect(self, cursors: dict[int, int]) -> list[tuple[int, Message]]:
        out: list[tuple[int, Message]] = []
        for tenant_id, cursor in cursors.items():
            stream = self._streams.get(tenant_id)
            if stream and stream[-1]["seq"] > cursor:
                out.extend((tenant_id, m) for m in stream if m["seq"] > cursor)
        return out

    async def read(self, cursors: dict[int, int], block_ms: int) -> list[tuple[int, Message]]:
        got = self._collect(cursors)
        if got:
            return got
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait(), block_ms / 1000)
            except TimeoutError:
                return []
        return self._collect(cursors)

    async def range(self, tenant_id: int, after: int, upto: int) -> list[Message] | None:
        if upto <= after:
            return []
        msgs = [m for m in self._streams.get(tenant_id, ()) if after < m["seq"] <= upto]
        if [m["seq"] for m in msgs] != list(range(after + 1, upto + 1)):
            return None
        return msgs

    async def heads(self, tenant_ids: list[int]) -> dict[int, int]:
        return {t: int(s[-1]["seq"]) if (s := self._streams.get(t)) else 0 for t in tenant_ids}

    async def drop(self, tenant_id: int, head: int) -> bool:
        stream = self._streams.get(tenant_id)
        if not stream or int(stream[-1]["seq"]) != head:
            return False
        del self._streams[tenant_id]
        return True

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _entry_seq(entries: Any) -> int:
    """The seq of the entry XREVRANGE COUNT 1 returned (its id is `<last seq>-1`), 0 for none."""
    if not entries:
        return 0
    return int(entries[0][0].split(b"-")[0])
