"""The shipment's journey as the tracking page shows it: the history, the progress steps and the
delivery estimate as a day or a few days, with its on-time verdict.

Each `*_html` function returns one section of the page (HTML, every value escaped), worded by a
`PageText`; `milestones` reads the history out of the track JSON once for all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboards.trackpage_text import PageText, parse_time

# p_late (the chance of landing after the promise) below this reads "on time", from LATE on "late".
ON_TIME_BELOW = 0.25
LATE_FROM = 0.75
HOURS_SHOWN_WITHIN = timedelta(hours=12)  # a one-day estimate this narrow also shows its hours

# The progress a buyer sees, in order, and which milestones and statuses reach each step.
STEPS: tuple[str, ...] = ("ordered", "booked", "in_transit", "customs", "out_for_delivery", "delivered")
_STEP_OF_MILESTONE: Mapping[str, int] = {
    "booked": 1,
    "info_received": 1,
    **dict.fromkeys(
        (
            "picked_up",
            "gate_in",
            "gate_out",
            "loaded",
            "departed",
            "arrived",
            "discharged",
            "in_transit",
            "at_facility",
        ),
        2,
    ),
    **dict.fromkeys(("customs_submitted", "customs_hold", "customs_released"), 3),
    **dict.fromkeys(("out_for_delivery", "delivery_attempted", "available_for_pickup"), 4),
    "delivered": 5,
}
_STEP_OF_STATUS: Mapping[str, int] = {
    "pending": 0,
    "info_received": 1,
    "in_transit": 2,
    "customs": 3,
    "out_for_delivery": 4,
    "failed_attempt": 4,
    "available_for_pickup": 4,
    "delivered": 5,
}
Items = list[tuple[datetime | None, Mapping[str, Any]]]  # milestones with their parsed times
_TROUBLE = frozenset({"exception", "failed_attempt", "returned", "cancelled", "expired"})


def milestones(track: Mapping[str, Any]) -> Items:
    """The milestones with their parsed times, newest first (those without a time last)."""
    raw = track.get("milestones")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    items = [(parse_time(m.get("occurred_at")), m) for m in raw if isinstance(m, Mapping)]
    epoch = datetime.min.replace(tzinfo=UTC)
    items.sort(key=lambda pair: pair[0] or epoch, reverse=True)
    return items


def milestones_html(page: PageText, items: Items) -> str:
    if not items:
        return f'<p class="muted">{page.label("no_milestones")}</p>'
    rows = []
    for index, (moment, milestone) in enumerate(items):
        place = page.place(milestone.get("location"))
        when = page.when(moment) if moment is not None else ""
        rows.append(
            f'<li class="{"latest" if index == 0 else ""}">'
            f'<div class="what">{page.milestone(milestone.get("code"))}</div>'
            + (f'<div class="where">{place}</div>' if place else "")
            + f'<div class="when">{when}</div></li>'
        )
    return f'<ol class="timeline">{"".join(rows)}</ol>'


def steps_html(page: PageText, track: Mapping[str, Any], items: Items) -> str:
    """The progress steps: those reached are done, the furthest is current (marked as a problem
    while the shipment is in trouble); customs is left out of a domestic journey that had none."""
    status = str(track.get("status") or "pending")
    reached = _STEP_OF_STATUS.get(status, 0)
    first: dict[int, datetime] = {}
    for moment, milestone in items:
        at = _STEP_OF_MILESTONE.get(str(milestone.get("code")))
        if at is None:
            continue
        reached = max(reached, at)
        if moment is not None and (at not in first or moment < first[at]):
            first[at] = moment
    origin, destination = track.get("origin"), track.get("destination")
    countries = [p.get("country") for p in (origin, destination) if isinstance(p, Mapping)]
    domestic = len(countries) == 2 and countries[0] and countries[0] == countries[1]
    trouble = status in _TROUBLE or track.get("substatus") == "customs.hold"
    rows = []
    for index, step in enumerate(STEPS):
        if step == "customs" and domestic and 3 not in first and reached != 3:
            continue
        state = "done" if index < reached else "current" if index == reached else "todo"
        if state == "current" and trouble:
            state = "current problem"
        when = f'<span class="date">{page.day(first[index])}</span>' if index in first and index <= reached else ""
        current = ' aria-current="step"' if index == reached else ""
        rows.append(
            f'<li class="step {state}" data-step="{step}"{current}><span class="dot"></span>'
            f'<span class="name">{page.step(step)}</span>{when}</li>'
        )
    return (
        f'<section class="card steps-card"><ol class="steps" aria-label="{page.label("progress")}">'
        f"{''.join(rows)}</ol></section>"
    )


def _delivered_at(items: Items) -> datetime | None:
    times = [moment for moment, m in items if m.get("code") == "delivered" and moment is not None]
    return max(times) if times else None


def _p_late(eta: Mapping[str, Any]) -> float | None:
    value = eta.get("p_late")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        return None
    return float(value)


def punctuality(
    eta: Mapping[str, Any], predicted: datetime | None, latest: datetime | None, now: datetime | None
) -> str | None:
    """`on_time`, `might_be_late` or `late` for a shipment on its way: late once the promised time
    has passed (whatever an older `p_late` said), else from `p_late` when the estimate has it, else
    by comparing the estimate with the promised date; None without either."""
    promised = parse_time(eta.get("promised_at"))
    if promised is not None and now is not None and now > promised:
        return "late"
    p_late = _p_late(eta)
    if p_late is not None:
        return "on_time" if p_late < ON_TIME_BELOW else "late" if p_late >= LATE_FROM else "might_be_late"
    if promised is None:
        return None
    if predicted is not None and predicted > promised:
        return "late"
    if latest is not None and latest > promised:
        return "might_be_late"
    return "on_time" if predicted is not None or latest is not None else None


def eta_html(page: PageText, track: Mapping[str, Any], items: Items) -> str:
    status = track.get("status")
    if status == "delivered":
        delivered = _delivered_at(items)
        when = page.when(delivered) if delivered is not None else ""
        heading = page.label("delivered_at")
        return f'<section class="card eta"><h2>{heading}</h2><p class="big">{when}</p></section>'
    eta = track.get("eta")
    if not isinstance(eta, Mapping) or status in {"returned", "cancelled", "expired"}:
        return ""
    predicted = parse_time(eta.get("predicted_at"))
    earliest = parse_time(eta.get("earliest"))
    latest = parse_time(eta.get("latest"))
    promised = parse_time(eta.get("promised_at"))
    carrier_eta = parse_time(eta.get("carrier_eta"))
    if earliest is None or latest is None or earliest > latest:
        earliest = latest = None
    lines = [f"<h2>{page.label('eta')}</h2>"]
    if earliest is not None and latest is not None:
        if page.local(earliest).date() == page.local(latest).date():
            lines.append(f'<p class="big" id="eta-day">{page.day(earliest, relative=True)}</p>')
            if latest - earliest <= HOURS_SHOWN_WITHIN:
                hours = page.label("eta_window", earliest=page.hour(earliest), latest=page.hour(latest))
                lines.append(f'<p class="window">{hours}</p>')
        else:
            window = page.label("eta_window", earliest=page.day(earliest), latest=page.day(latest))
            lines.append(f'<p class="big" id="eta-day">{window}</p>')
    elif (single := predicted or carrier_eta) is not None:
        lines.append(f'<p class="big" id="eta-day">{page.day(single, relative=True)}</p>')
    elif promised is None:
        return ""
    verdict = punctuality(eta, predicted, latest, page.now)
    if verdict is not None:
        lines.append(
            f'<p class="verdict {verdict.replace("_", "-")}" data-verdict="{verdict}">{page.label(verdict)}</p>'
        )
    if promised is not None:
        lines.append(f'<p class="muted">{page.label("promised")} {page.day(promised)}</p>')
    if carrier_eta is not None and (earliest is not None or predicted is not None):
        lines.append(f'<p class="muted">{page.label("carrier_eta")}: {page.day(carrier_eta)}</p>')
    return f'<section class="card eta">{"".join(lines)}</section>'
