"""Token buckets, per process: the per-tenant ingest rate limit (0 disables it), and how much input
no tenant could be authenticated for may be kept as a sample, per client address and in all."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from trackd.errors import RateLimited

_BUCKETS: dict[int, tuple[float, float]] = {}  # tenant -> (tokens, last refill)

# Unattributed input (e.g. OsmAnd requests with an unknown device key) kept in the quarantine
# sample: a client address may add one a second after a burst of ten, and all addresses together
# twenty a second, so that no sender can make this process write more than that to the database.
SAMPLE_PER_ADDRESS_PER_S = 1.0
SAMPLE_PER_ADDRESS_BURST = 10.0
SAMPLE_PER_S = 20.0
SAMPLE_BURST = 40.0
# Device keys a client address may send that name no device: each costs a database lookup, so past
# a burst of 20 an address may look up two more a second; beyond that its unknown keys are answered
# 429 with no lookup. Keys that name a device cost nothing here.
MISSES_PER_ADDRESS_PER_S = 2.0
MISSES_PER_ADDRESS_BURST = 20.0
MAX_ADDRESSES = 10_000


def check_rate(tenant_id: int, rate_per_s: float, cost: float = 1.0, now: float | None = None) -> None:
    """Take `cost` tokens or raise `RateLimited` with the seconds to wait. Burst: two seconds' worth."""
    if rate_per_s <= 0:
        return
    t = time.monotonic() if now is None else now
    burst = rate_per_s * 2
    tokens, last = _BUCKETS.get(tenant_id, (burst, t))
    tokens = min(burst, tokens + (t - last) * rate_per_s)
    if tokens < cost:
        _BUCKETS[tenant_id] = (tokens, t)
        wait = max(1, math.ceil((cost - tokens) / rate_per_s))
        raise RateLimited(f"ingest rate limit of {rate_per_s:g} requests/s exceeded", wait)
    _BUCKETS[tenant_id] = (tokens - cost, t)


class Buckets:
    """One token bucket per key: `rate_per_s` tokens a second, at most `burst`, full at first.

    At most `max_keys` keys are tracked; past that the one left alone longest is forgotten (it
    starts full again), so memory stays bounded whatever the keys are.
    """

    def __init__(self, rate_per_s: float, burst: float, max_keys: int = MAX_ADDRESSES) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last refill)

    def take(self, key: str, now: float | None = None, cost: float = 1.0) -> bool:
        """Take `cost` tokens from `key`'s bucket; False (and nothing taken) when it has fewer."""
        t = time.monotonic() if now is None else now
        tokens, last = self._state.pop(key, (self.burst, t))
        tokens = min(self.burst, tokens + max(0.0, t - last) * self.rate_per_s)
        allowed = tokens >= cost
        self._state[key] = (tokens - cost if allowed else tokens, t)
        if len(self._state) > self.max_keys:
            self._state.popitem(last=False)
        return allowed

    def give(self, key: str, cost: float = 1.0) -> None:
        """Put back `cost` tokens that `take` took (a bucket never holds more than `burst`)."""
        if key in self._state:
            tokens, last = self._state[key]
            self._state[key] = (min(self.burst, tokens + cost), last)

    def __len__(self) -> int:
        return len(self._state)


_SAMPLE_BY_ADDRESS = Buckets(SAMPLE_PER_ADDRESS_PER_S, SAMPLE_PER_ADDRESS_BURST)
_SAMPLE_ALL = Buckets(SAMPLE_PER_S, SAMPLE_BURST, max_keys=1)


_MISSES_BY_ADDRESS = Buckets(MISSES_PER_ADDRESS_PER_S, MISSES_PER_ADDRESS_BURST)


def take_lookup(address: str, now: float | None = None) -> None:
    """Take one of client `address`'s lookups of a device key, or raise `RateLimited` when it has
    none left. Taken before the lookup, so that requests waiting for theirs at once cannot pass
    the budget; a key that names a device gives it back (`refund_lookup`)."""
    if not _MISSES_BY_ADDRESS.take(address, now):
        wait = 1.0 / MISSES_PER_ADDRESS_PER_S
        raise RateLimited(
            f"too many unknown device keys from this address: at most {MISSES_PER_ADDRESS_PER_S:g} a second"
            f" after a burst of {MISSES_PER_ADDRESS_BURST:g}",
            max(1, math.ceil(wait)),
        )


def refund_lookup(address: str) -> None:
    """Give back the lookup `take_lookup` took for a key from client `address` that named a device."""
    _MISSES_BY_ADDRESS.give(address)


def may_sample(address: str, now: float | None = None) -> bool:
    """Whether input no tenant could be authenticated for, from client `address`, may be kept now."""
    return _SAMPLE_BY_ADDRESS.take(address, now) and _SAMPLE_ALL.take("", now)
