"""The one shipment status transition function, decided by event time.

A late, older milestone never moves a shipment backwards; `delivered`, `returned` and `cancelled`
are final unless a newer milestone strong enough to reopen them arrives (see
`codes.REOPENING_MILESTONES`). Only `actual` milestones move the status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from trackd.codes import (
    FINAL_STATUSES,
    MILESTONE_STATUS,
    REOPENING_MILESTONES,
    STATUS_RANK,
    Classifier,
    Milestone,
)
from trackd.shipment import StatusState


class Outcome(StrEnum):
    MOVED = "moved"
    UNCHANGED = "unchanged"  # same status and substatus, newer time recorded
    STALE = "stale"  # older than the milestone that set the current status
    FINAL = "final"  # the shipment is in a final status and this milestone does not reopen it
    NOT_ACTUAL = "not_actual"  # estimated or planned milestones never move the status
    UNKNOWN_CODE = "unknown_code"


@dataclass(frozen=True, slots=True)
class Transition:
    outcome: Outcome
    state: StatusState


def transition(state: StatusState, code: Milestone | None, classifier: Classifier, at: datetime) -> Transition:
    """Apply one milestone to a status; the returned state is the new one (or the same)."""
    if code is None:
        return Transition(Outcome.UNKNOWN_CODE, state)
    if classifier is not Classifier.ACTUAL:
        return Transition(Outcome.NOT_ACTUAL, state)
    target, substatus = MILESTONE_STATUS[code]
    if state.status_at is not None:
        if at < state.status_at:
            return Transition(Outcome.STALE, state)
        if at == state.status_at and STATUS_RANK[target] < STATUS_RANK[state.status]:
            return Transition(Outcome.STALE, state)
        if state.status in FINAL_STATUSES and code not in REOPENING_MILESTONES:
            return Transition(Outcome.FINAL, state)
    new = StatusState(status=target, substatus=substatus, status_at=at)
    if new.status == state.status and new.substatus == state.substatus:
        return Transition(Outcome.UNCHANGED, new)
    return Transition(Outcome.MOVED, new)


def _order(m: tuple[datetime, Milestone | None, Classifier]) -> tuple[datetime, int, str]:
    rank = STATUS_RANK[MILESTONE_STATUS[m[1]][0]] if m[1] is not None else -1
    return (m[0], rank, m[1].value if m[1] is not None else "")


def replay(milestones: Iterable[tuple[datetime, Milestone | None, Classifier]]) -> StatusState:
    """The status from scratch: the milestones applied in event-time order.

    This is what a shipment's status is: the ledger replays every kept milestone, so the order in
    which events arrive never matters (an older `delivered` that arrives after a newer routine
    scan still ends delivered, as it would have had it arrived first).
    """
    state = StatusState()
    for at, code, classifier in sorted(milestones, key=_order):
        state = transition(state, code, classifier, at).state
    return state
