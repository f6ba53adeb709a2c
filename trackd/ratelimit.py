"""Per-tenant ingest rate limit: a token bucket per process (0 disables it)."""

from __future__ import annotations

import math
import time

from trackd.errors import RateLimited

_BUCKETS: dict[int, tuple[float, float]] = {}  # tenant -> (tokens, last refill)


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
