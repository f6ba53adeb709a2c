"""How a delivery is split into write lanes: a shipment reference always in the same lane, order
kept within each lane, DCSA deliveries (which may withdraw events) whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ingest.pipeline import PARTS, lane, split
from trackd.model import Event, EventKind, Position

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
