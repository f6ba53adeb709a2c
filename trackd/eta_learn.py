"""What the ETA learns from completed journeys, and how it weighs what it learned.

Pure and small: samples are kept as plain tuples per key; every estimate is a recency-weighted
quantile of them, so a regime change (a closure, a rule change, congestion) takes over as soon as
a few journeys that lived through it have completed, while old journeys fade out.

- Tails: per route (origin, destination, main mode) and anchor (a milestone at a node, or the
  start), the hours from that anchor to delivery.
- Carrier bias: per carrier, route and horizon, the carrier estimate's error (actual - estimate)
  as a share of the time it looked ahead, and how far off it still is once corrected.
- Calibration: per mode and stage, the final prediction's residuals, for the weighted conformal
  interval and `p_late`.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

HALF_LIFE_H = 14 * 24.0  # a completed journey's weight halves every two weeks
CAL_HALF_LIFE = 150.0  # calibration residuals: weight halves every 150 newer ones
MIN_WEIGHT = 1.5  # effective journeys needed before a learned estimate speaks
CARRIER_BUCKETS_H = (12.0, 48.0, 168.0)  # how far ahead an estimate looks: 0-12 h, 12-48 h, 2-7 d, more
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_h(t: datetime) -> float:
    return (t - EPOCH).total_seconds() / 3600.0


def recency(age_h: float, half_life_h: float = HALF_LIFE_H) -> float:
    return float(0.5 ** (max(age_h, 0.0) / half_life_h))


def wquantile(pairs: Sequence[tuple[float, float]], q: float) -> float:
    """The `q` quantile of (value, weight) pairs (the value where the cumulative weight crosses q)."""
    s = sorted(pairs)
    total = sum(w for _, w in s)
    target, acc = q * total, 0.0
    for v, w in s:
        acc += w
        if acc >= target:
            return v
    return s[-1][0]


def horizon_bucket(ahead_h: float) -> int:
    return sum(1 for edge in CARRIER_BUCKETS_H if ahead_h >= edge)


class Estimate:
    """A candidate arrival, hours from now, with its error scale (hours, about one sigma)."""

    __slots__ = ("ahead_h", "name", "sigma_h")

    def __init__(self, name: str, ahead_h: float, sigma_h: float) -> None:
        self.name, self.ahead_h, self.sigma_h = name, ahead_h, max(sigma_h, 0.25)


def combine(estimates: Iterable[Estimate]) -> float:
    """Precision-weighted mean of the candidates' arrival (hours from now)."""
    num = den = 0.0
    for e in estimates:
        w = 1.0 / (e.sigma_h * e.sigma_h)
        num += w * e.ahead_h
        den += w
    return num / den


def tail(samples: Sequence[tuple[float, float]], now_h: float, waited_h: float) -> tuple[float, float] | None:
    """(hours still to go, sigma) after `waited_h` since the anchor, from (completed at, hours
    anchor -> delivery) samples; only journeys that took longer than the wait count (conditional
    on not being done yet). None with too little recent history."""
    pairs = [(d - waited_h, recency(now_h - t)) for t, d in samples if d > waited_h]
    weight = sum(w for _, w in pairs)
    if weight < MIN_WEIGHT:
        return None
    lo, mid, hi = (wquantile(pairs, q) for q in (0.1, 0.5, 0.9))
    return mid, (hi - lo) / 2.56 * (1.0 + 1.0 / weight) + 0.5


def carrier_correction(
    samples: Sequence[tuple[float, float, float]], now_h: float, ahead_h: float
) -> tuple[float, float] | None:
    """(correction hours, sigma of the corrected estimate) for an estimate `ahead_h` ahead, from
    (completed at, actual - estimate, hours the estimate looked ahead) samples."""
    scale = max(ahead_h, 6.0)
    pairs = [(r / max(h, 6.0), recency(now_h - t)) for t, r, h in samples]
    weight = sum(w for _, w in pairs)
    if weight < MIN_WEIGHT:
        return None
    share = wquantile(pairs, 0.5)
    spread = sum(w * abs(v - share) for v, w in pairs) / weight
    return share * scale, 1.25 * spread * scale * (1.0 + 1.0 / weight) + 0.5


class Scores:
    """Calibration scores, oldest first, weighted to favour the recent ones (weight halves every
    `CAL_HALF_LIFE` newer scores), sorted once so quantiles and tail shares are a binary search."""

    __slots__ = ("_cum", "_values", "pad")

    def __init__(self, scores: Sequence[float]) -> None:
        n = len(scores)
        pairs = sorted((s, 0.5 ** ((n - 1 - i) / CAL_HALF_LIFE)) for i, s in enumerate(scores))
        self._values: list[float] = [v for v, _ in pairs]
        self._cum: list[float] = list(itertools.accumulate(w for _, w in pairs))
        # weighted conformal's finite-sample correction: the newest score's share of the weight
        self.pad = 1.0 / (self._cum[-1] + 1.0)

    def quantile(self, q: float) -> float:
        i = bisect.bisect_left(self._cum, q * self._cum[-1])
        return self._values[min(i, len(self._values) - 1)]

    def conformal(self, lo: float = 0.1, hi: float = 0.9) -> tuple[float, float]:
        """Weighted split-conformal bounds: the quantiles widened by the correction."""
        return self.quantile(max(lo - self.pad, 0.0)), self.quantile(min(hi + self.pad, 1.0))

    def exceed(self, threshold: float) -> float:
        """Weighted share of scores above `threshold`, kept off 0 and 1."""
        i = bisect.bisect_right(self._values, threshold)
        below = self._cum[i - 1] if i > 0 else 0.0
        return min(0.99, max(0.01, 1.0 - below / self._cum[-1]))


def normal_exceed(z: float) -> float:
    """P(X > z) for a standard normal, kept off 0 and 1."""
    return min(0.99, max(0.01, 0.5 * float(math.erfc(z / math.sqrt(2.0)))))
