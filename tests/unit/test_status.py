"""The status transition function: event time decides; final states stay final unless reopened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trackd.codes import Classifier, Milestone, Status
from trackd.shipment import StatusState
from trackd.status import Outcome, replay, transition

T0 = datetime(2026, 11, 1, tzinfo=UTC)
A = Classifier.ACTUAL


def at(h: float) -> datetime:
    return T0 + timedelta(hours=h)


@pytest.mark.parametrize(
    ("code", "status", "substatus"),
    [
        (Milestone.BOOKED, Status.INFO_RECEIVED, None),
        (Milestone.GATE_IN, Status.IN_TRANSIT, None),
        (Milestone.CUSTOMS_HOLD, Status.CUSTOMS, "customs.hold"),
        (Milestone.CUSTOMS_SUBMITTED, Status.CUSTOMS, "customs.submitted"),
        (Milestone.CUSTOMS_RELEASED, Status.IN_TRANSIT, "customs.released"),
        (Milestone.DELIVERY_ATTEMPTED, Status.FAILED_ATTEMPT, None),
        (Milestone.AVAILABLE_FOR_PICKUP, Status.AVAILABLE_FOR_PICKUP, None),
        (Milestone.DELIVERED, Status.DELIVERED, None),
    ],
)
def test_milestone_to_status(code: Milestone, status: Status, substatus: str | None) -> None:
    t = transition(StatusState(), code, A, at(0))
    assert t.outcome is Outcome.MOVED
    assert (t.state.status, t.state.substatus) == (status, substatus)


def test_older_event_never_moves_backwards() -> None:
    s = transition(StatusState(), Milestone.OUT_FOR_DELIVERY, A, at(10)).state
    t = transition(s, Milestone.DEPARTED, A, at(5))
    assert t.outcome is Outcome.STALE
    assert t.state == s


def test_final_status_stays_unless_reopened() -> None:
    s = transition(StatusState(), Milestone.DELIVERED, A, at(10)).state
    assert transition(s, Milestone.IN_TRANSIT, A, at(11)).outcome is Outcome.FINAL
    reopened = transition(s, Milestone.RETURNED, A, at(12))
    assert reopened.outcome is Outcome.MOVED
    assert reopened.state.status is Status.RETURNED


def test_estimates_and_unknown_codes_do_not_move() -> None:
    s = StatusState()
    assert transition(s, Milestone.DELIVERED, Classifier.ESTIMATED, at(1)).outcome is Outcome.NOT_ACTUAL
    assert transition(s, None, A, at(1)).outcome is Outcome.UNKNOWN_CODE


def test_same_time_the_further_status_wins_in_any_order() -> None:
    a = replay([(at(1), Milestone.IN_TRANSIT, A), (at(1), Milestone.DELIVERED, A)])
    b = replay([(at(1), Milestone.DELIVERED, A), (at(1), Milestone.IN_TRANSIT, A)])
    assert a.status is b.status is Status.DELIVERED


codes = st.sampled_from(list(Milestone))
events = st.lists(st.tuples(st.integers(0, 200), codes), min_size=1, max_size=25)


@given(events, st.randoms(use_true_random=False), st.integers(1, 5))
def test_arrival_order_and_batching_do_not_matter(evs: list[tuple[int, Milestone]], rnd, batch: int) -> None:  # type: ignore[no-untyped-def]
    """The shipment state folds any arrival order, in any batches, to the replay in time order."""
    from trackd.codes import EventKind
    from trackd.model import Event, MilestoneInfo
    from trackd.state import State, advance

    ms = [(at(h), c, A) for h, c in evs]
    items = [
        Event(
            event_id=f"e{i}",
            source="native",
            occurred_at=t,
            kind=EventKind.MILESTONE,
            milestone=MilestoneInfo(code=c),
            shipment="S",
        )
        for i, (t, c, _) in enumerate(ms)
    ]
    rnd.shuffle(items)
    state = State()
    for i in range(0, len(items), batch):
        state, _ = advance(state, "shp", items[i : i + batch], T0)
    assert state.status == replay(ms)
