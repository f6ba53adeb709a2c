"""The simulator's year of disruptions: how a scenario's timeline is bent through them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lab import simulator, simulator_drift
from trackd.codes import Classifier, EventKind, Milestone

START = datetime(2025, 1, 1, tzinfo=UTC)


def test_stretch_spreads_its_hours_over_its_span() -> None:
    s = simulator_drift.Stretch(START, START + timedelta(hours=10), 20.0)
    assert [s.shift_h(START + timedelta(hours=x)) for x in (-1, 0, 5, 10, 99)] == [0.0, 0.0, 10.0, 20.0, 20.0]
    wait = simulator_drift.Stretch(START, START, 6.0)
    assert (wait.shift_h(START), wait.shift_h(START + timedelta(seconds=1))) == (0.0, 6.0)


def _first(s: simulator.Scenario, code: Milestone, leg: int) -> datetime:
    return next(
        e.occurred_at for e in s.events if e.milestone is code and e.leg == leg and e.classifier is Classifier.ACTUAL
    )


def test_canal_closure_sends_asia_europe_ships_round_the_cape() -> None:
    drift = simulator_drift.Drift(3, START)
    booked = drift.canal[0] + timedelta(days=2)
    scenario = next(
        s for s in (simulator.simulate(i, booked, seed=3) for i in range(200)) if s.lane == "CNYTN-NLRTM-DEBER"
    )
    bent = drift.bend(scenario)
    assert _first(bent, Milestone.DEPARTED, 0) == _first(scenario, Milestone.DEPARTED, 0)
    longer_h = (_first(bent, Milestone.ARRIVED, 0) - _first(scenario, Milestone.ARRIVED, 0)).total_seconds() / 3600
    assert 216 <= longer_h <= 312
    assert bent.events[-1].occurred_at > scenario.events[-1].occurred_at
    ids = [bent.event_id(e) for e in bent.events]
    assert len(ids) == len(set(ids))
    assert [e.send_at for e in bent.events] == sorted(e.send_at for e in bent.events)
    for e in bent.events:  # an estimate is always of a time after it was made
        if e.kind is EventKind.MILESTONE and e.classifier is Classifier.ESTIMATED:
            assert e.occurred_at >= e.send_at + timedelta(minutes=30)


def test_regimes_and_habits_are_drawn_from_the_seed() -> None:
    a, b = simulator_drift.Drift(1, START), simulator_drift.Drift(1, START)
    assert (a.canal, a.rail, a.border, a.customs_from) == (b.canal, b.rail, b.border, b.customs_from)
    assert a.canal != simulator_drift.Drift(2, START).canal
    assert -0.12 <= a.habit("MSC") <= 0.08
    assert a.habit("MSC") == b.habit("MSC")
    levels = {a.congestion_h("NLRTM", START + timedelta(days=d)) for d in range(0, 365, 7)}
    assert levels <= set(simulator_drift.CONGESTION_LEVELS_H)
    assert len(levels) > 1
    # the live demo's scenarios are untouched: drift is only what `history(drift=...)` is given
    plain = list(simulator.history(2, 1, START))
    assert plain == list(simulator.history(2, 1, START, drift=None))
    assert plain != list(simulator.history(2, 1, START, drift=simulator_drift.Drift(1, START).apply))
