"""The simulator's payloads read back by trackd's own readers: every ingest source and eta-eval."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from functools import cache
from types import ModuleType

import orjson
import pytest

from ingest import sources
from lab import etaeval
from lab.carrier_payloads import Delivery, encode
from lab.simulator import PlannedEvent, Scenario, history, simulate
from trackd.codes import Classifier, EventKind, Milestone
from trackd.errors import Unauthorized
from trackd.model import Event, SourceContext, ref_key

START = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
SECRET = "ingest-secret"
SOURCES = ("native", "owntracks", "dcsa", "x12-214", "onerecord", "aftership", "easypost")
# Where a source's own vocabulary is coarser than the simulator's, as the contract pins it.
COARSER = {("easypost", Milestone.DELIVERY_ATTEMPTED): Milestone.EXCEPTION}
# DHL's Unified tracking has five status codes: every scan on the way is `transit`.
COARSER |= {
    ("dhl", m): Milestone.IN_TRANSIT
    for m in (
        Milestone.PICKED_UP,
        Milestone.DEPARTED,
        Milestone.AT_FACILITY,
        Milestone.ARRIVED,
        Milestone.OUT_FOR_DELIVERY,
        Milestone.AVAILABLE_FOR_PICKUP,
    )
}
COARSER |= {
    ("dhl", Milestone.DELIVERY_ATTEMPTED): Milestone.EXCEPTION,
    ("dhl", Milestone.RETURNED): Milestone.EXCEPTION,
}


@cache
def scenarios() -> tuple[Scenario, ...]:
    return tuple(simulate(i, START, seed=5) for i in range(40))


def module(source: str) -> ModuleType:
    return importlib.import_module(f"ingest.sources.{source.replace('-', '_')}")


def parse(s: Scenario, ev: PlannedEvent) -> tuple[Delivery, list[Event]]:
    d = encode(s, ev, tenant="acme", secret=SECRET)
    ctx = SourceContext(
        tenant="acme",
        received_at=ev.send_at + timedelta(seconds=2),
        device=s.device_id if d.transport == "mqtt" else None,
        content_type=d.headers.get("Content-Type"),
    )
    return d, module(d.source).normalize(d.body, ctx)


def cases(source: str) -> list[tuple[Scenario, PlannedEvent]]:
    out = [(s, ev) for s in scenarios() for ev in s.events if ev.source == source]
    assert out, f"the sample has no {source} events"
    return out


@pytest.mark.parametrize("source", SOURCES)
def test_every_payload_parses_to_the_planned_event(source: str) -> None:
    for s, ev in cases(source):
        d, events = parse(s, ev)
        assert events, (source, ev)
        if ev.kind is EventKind.POSITION:
            (fix,) = [e for e in events if e.position is not None]
            assert fix.device == s.device_id
            assert fix.position is not None
            assert fix.position.lat == pytest.approx(ev.lat, abs=1e-5)
            assert fix.position.lon == pytest.approx(ev.lon, abs=1e-5)
            assert fix.occurred_at == ev.occurred_at
            continue
        if ev.kind is EventKind.SENSOR:
            (reading,) = events
            assert reading.sensor is not None
            assert reading.sensor.battery_pct == ev.battery_pct
            assert reading.sensor.temperature_c == ev.temperature_c
            continue
        assert ev.milestone is not None
        want = COARSER.get((d.source, ev.milestone), ev.milestone)
        found = [
            e
            for e in events
            if e.milestone is not None
            and e.milestone.code is want
            and e.milestone.classifier is ev.classifier
            and e.occurred_at == ev.occurred_at
        ]
        assert found, (source, ev.milestone, ev.classifier, [(e.milestone, e.occurred_at) for e in events])
        shipment_keys = {ref_key(s.tracking_number), *(ref_key(r) for r in s.body["references"])}
        assert set(found[0].match_keys()) & shipment_keys, (source, found[0].match_keys())


@pytest.mark.parametrize("source", [s for s in SOURCES if s != "owntracks"])
def test_webhook_signatures_verify(source: str) -> None:
    for s, ev in cases(source)[:25]:
        d = encode(s, ev, tenant="acme", secret=SECRET)
        if d.transport != "webhook":
            continue
        sources.verify(d.source, SECRET, d.body, d.headers)
        with pytest.raises(Unauthorized):
            sources.verify(d.source, SECRET + "x", d.body, d.headers)


def test_parcel_estimates_reach_trackd() -> None:
    estimates = 0
    for s, ev in cases("aftership") + cases("easypost"):
        if ev.classifier is not Classifier.ESTIMATED:
            continue
        _, events = parse(s, ev)
        assert any(
            e.milestone is not None
            and e.milestone.classifier is Classifier.ESTIMATED
            and e.occurred_at == ev.occurred_at
            for e in events
        )
        estimates += 1
    assert estimates


def test_history_feeds_eta_eval() -> None:
    lines = [orjson.loads(orjson.dumps(rec)) for rec in history(40, 9, START, span_days=60)]
    report = etaeval.to_json(etaeval.evaluate(lines))
    horizon = report["horizons"]["50"]
    assert horizon["trackd"]["n"] >= 30
    assert horizon["promised"]["n"] >= 30
