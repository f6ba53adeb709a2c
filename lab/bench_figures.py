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


def ratio(value: float | None, ceiling: float | None, *, lower_is_better: bool = False) -> str:
    """trackd's figure as a share of its ceiling: `value/ceiling` for rates, `ceiling/value` for
    latencies (so 100% always means "as good as the ceiling")."""
    if value is None or ceiling is None or value <= 0 or ceiling <= 0:
        return "-"
    share = ceiling / value if lower_is_better else value / ceiling
    return f"{share * 100:.0f}%" if share >= 0.1 else f"{share * 100:.1f}%"


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
    """One line of the report: trackd's figure, the ceiling it is bounded by, and a target."""

    name: str
    value: float | None
    unit: str
    ceiling: float | None = None
    ceiling_name: str = ""
    target: str = ""
    lower_is_better: bool = False

    def met(self) -> str:
        """'yes'/'no' against a target written as '>= N' or '< N', '' without one."""
        if not self.target or self.value is None:
            return ""
        op, _, num = self.target.partition(" ")
        bound = float(num.replace(",", "").replace("_", ""))
        ok = {">=": self.value >= bound, ">": self.value > bound, "<": self.value < bound, "<=": self.value <= bound}
        return "yes" if ok.get(op, False) else "no"


def render(title: str, figures: Sequence[Figure], notes: Sequence[str] = ()) -> str:
    """The report as a fixed-width table."""
    head = ("figure", "trackd", "ceiling", "ratio", "target", "met")
    rows = [
        (
            f.name,
            fmt(f.value, f.unit),
            f"{fmt(f.ceiling, f.unit)} ({f.ceiling_name})" if f.ceiling is not None else "-",
            ratio(f.value, f.ceiling, lower_is_better=f.lower_is_better),
            f"{f.target} {f.unit}".strip() if f.target else "",
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
