"""How a delivery is split into write lanes: a shipment reference always in the same lane, order
kept within each lane, DCSA deliveries (which may withdraw events) whole."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from ingest.pipeline import PARTS, Pipeline, lane, split
from trackd import ledger
from trackd.errors import Unavailable, ValidationError
from trackd.model import Event, EventKind, Position
from trackd.store import Tenant

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def ev(n: int, ref: str | None, *, device: str | None = None, source: str = "native", retracts: str | None = None):
    return Event(
        event_id=f"e{n}",
        source=source,
        occurred_at=T0 + timedelta(seconds=n),
        kind=EventKind.POSITION,
        position=Position(lat=1.0, lon=2.0),
        shipment=ref,
        device=device,
        retracts=retracts,
    )


def test_a_reference_stays_in_one_lane_and_order_is_kept() -> None:
    events = [ev(i, f"REF-{i % 7}") for i in range(70)] + [ev(100 + i, None, device=f"dev-{i % 3}") for i in range(9)]
    parts = split(events)
    assert set(parts) <= set(range(PARTS))
    assert len(parts) > 1  # seven references and three devices do not all hash alike
    assert sorted((e for p in parts.values() for e in p), key=lambda e: e.event_id) == sorted(
        events, key=lambda e: e.event_id
    )
    lane_of: dict[str, int] = {}
    for part, evs in parts.items():
        assert evs == [e for e in events if e in evs]  # the delivery's order within the lane
        for e in evs:
            key = e.shipment or e.device
            assert lane_of.setdefault(key, part) == part == lane(key)
    assert split(list(reversed(events))).keys() == parts.keys()


def test_dcsa_and_retracting_deliveries_stay_whole() -> None:
    events = [ev(i, f"REF-{i}") for i in range(20)]
    assert split([*events, ev(99, "REF-X", source="dcsa")]) == {0: [*events, ev(99, "REF-X", source="dcsa")]}
    withdrawing = [*events, ev(98, "REF-1", retracts="e3")]
    assert split(withdrawing) == {0: withdrawing}
    assert split(events[:1]) == {lane("REF-0"): events[:1]}


class _Writes(Pipeline):
    """A pipeline whose transactions are simulated: one that holds an event of `bad` fails with
    `error`; `answers` says whether the database is up."""

    def __init__(self, bad: set[str], error: Exception, up: bool = True) -> None:
        super().__init__(pool=None)  # type: ignore[arg-type]  # never used: _write is simulated
        self.bad, self.error, self.up = bad, error, up
        self.writes: list[list[str]] = []

    async def _write(self, tenant: Tenant, events: list[Event], transport: str) -> ledger.WriteResult:
        self.writes.append([e.event_id for e in events])
        await asyncio.sleep(0)
        if any(e.event_id in self.bad for e in events):
            raise self.error
        return ledger.WriteResult(len(events), len(events), 0, new_ids={e.event_id for e in events})

    async def answers(self) -> bool:
        return self.up


async def _deliver(p: Pipeline, n: int) -> list[ledger.WriteResult | BaseException]:
    """`n` deliveries of one event each, all in one lane of one tenant, written as one group."""
    tenant = Tenant(1, "acme")
    return await asyncio.gather(
        *(p.store_events(tenant, [ev(i, "REF-SAME")], "api") for i in range(n)), return_exceptions=True
    )


@pytest.mark.parametrize("bad", [0, 5, 15])
async def test_a_failing_delivery_is_isolated_by_bisection_and_the_rest_are_stored(bad: int) -> None:
    p = _Writes({f"e{bad}"}, ValidationError("", "value too long"))
    results = await _deliver(p, 16)
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [bad]
    assert isinstance(results[bad], ValidationError)
    assert all(isinstance(r, ledger.WriteResult) and r.stored == 1 for i, r in enumerate(results) if i != bad)
    assert p.writes[0] == [f"e{i}" for i in range(16)]  # one group first
    stored = [i for w in p.writes for i in w if f"e{bad}" not in w]
    assert sorted(stored) == sorted(f"e{i}" for i in range(16) if i != bad)  # each stored exactly once
    assert len(p.writes) == 1 + 2 * 4  # the group, then two halves on each of log2(16) levels


async def test_a_database_that_does_not_answer_fails_every_delivery_at_once() -> None:
    p = _Writes({"e3"}, Unavailable("database unavailable: connection refused"), up=False)
    results = await _deliver(p, 8)
    assert all(isinstance(r, Unavailable) for r in results)
    assert len(p.writes) == 1  # no bisection against a database that is gone


async def test_a_database_error_while_the_database_answers_is_the_delivery_s() -> None:
    p = _Writes({"e6"}, Unavailable("database unavailable: index row size exceeds the maximum"), up=True)
    results = await _deliver(p, 8)
    assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [6]
    assert isinstance(results[6], Unavailable)  # alone, it still says so: 503, the sender may retry
