"""The figures of a benchmark run and its table: percentiles, ratios to a ceiling, formatting (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q` quantile (0..1) by linear interpolation between closest ranks; None when empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within 0..1")
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def share(value: float | None, ceiling: float | None, *, lower_is_better: bool = False) -> float | None:
    """trackd's figure as a share of its ceiling: `value/ceiling` for rates, `ceiling/value` for
    latencies (so 1.0 always means "as good as the ceiling"); None when either is missing or not
    positive."""
    if value is None or ceiling is None or value <= 0 or ceiling <= 0:
        return None
    return ceiling / value if lower_is_better else value / ceiling


def ratio(value: float | None, ceiling: float | None, *, lower_is_better: bool = False) -> str:
    """`share` as a percentage: whole percents, one decimal below 10%."""
    got = share(value, ceiling, lower_is_better=lower_is_better)
    if got is None:
        return "-"
    return f"{got * 100:.0f}%" if got >= 0.1 else f"{got * 100:.1f}%"


def fmt(value: float | None, unit: str) -> str:
    """A figure with its unit: rates as whole numbers with thousands separators, ms to 0.1."""
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 1000 else f"{value:,.0f} ms"
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:,.0f} {unit}".rstrip()


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the report: trackd's figure, the ceiling it is bounded by, and a target: either
    `target` on the figure itself ('>= N', '< N', '= N'...), or `min_share` of the ceiling (the
    ratio column, e.g. 0.9 for "at least 90% of the ceiling")."""

    name: str
    value: float | None
    unit: str
    ceiling: float | None = None
    ceiling_name: str = ""
    target: str = ""
    lower_is_better: bool = False
    min_share: float | None = None

    def met(self) -> str:
        """'yes'/'no' against the target, '' without one or without a figure to judge."""
        if self.min_share is not None:
            got = share(self.value, self.ceiling, lower_is_better=self.lower_is_better)
            return "" if got is None else ("yes" if got >= self.min_share else "no")
        if not self.target or self.value is None:
            return ""
        op, _, num = self.target.partition(" ")
        bound = float(num.replace(",", "").replace("_", ""))
        ok = {
            ">=": self.value >= bound,
            ">": self.value > bound,
            "<": self.value < bound,
            "<=": self.value <= bound,
            "=": self.value == bound,
        }
        return "yes" if ok.get(op, False) else "no"

    def target_text(self) -> str:
        if self.min_share is not None:
            return f">= {self.min_share * 100:.0f}% of {self.ceiling_name or 'ceiling'}"
        return f"{self.target} {self.unit}".strip() if self.target else ""


def render(title: str, figures: Sequence[Figure], notes: Sequence[str] = ()) -> str:
    """The report as a fixed-width table."""
    head = ("figure", "trackd", "ceiling", "ratio", "target", "met")
    rows = [
        (
            f.name,
            fmt(f.value, f.unit),
            f"{fmt(f.ceiling, f.unit)} ({f.ceiling_name})" if f.ceiling is not None else "-",
            ratio(f.value, f.ceiling, lower_is_better=f.lower_is_better),
            f.target_text(),
            f.met(),
        )
        for f in figures
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.append(line)
    out += [f"  {n}" for n in notes]
    return "\n".join(out)
