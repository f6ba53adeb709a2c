"""Time bounds, against the receipt (`ctx.received_at`): an actual event at most a day ahead, an
estimate at most two years ahead; and nothing already stored makes the ETA or the page overflow."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from dashboards import trackpage
from ingest.sources import aftership, dcsa, easypost, native
from trackd import eta
from trackd.codes import Classifier, Mode
from trackd.errors import ValidationError
from trackd.model import MAX_ESTIMATE_AHEAD, MAX_FUTURE, Location, SourceContext
from trackd.shipment import Leg, Shipment

PAYLOADS = Path(__file__).parents[1] / "payloads"
NOW = datetime(2024, 6, 1, 16, 0, tzinfo=UTC)
CTX = SourceContext(tenant="acme", received_at=NOW)
MINUTE = timedelta(minutes=1)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def load(source: str, name: str) -> Any:
    return orjson.loads((PAYLOADS / source / name).read_bytes())


# -- native --------------------------------------------------------------------------------------


def _native(at: str, classifier: str = "actual") -> bytes:
    return orjson.dumps(
        [{"occurred_at": at, "shipment": "A", "milestone": {"code": "arrived", "classifier": classifier}}]
    )


def test_native_actual_at_most_a_day_ahead() -> None:
    assert native.normalize(_native(iso(NOW + MAX_FUTURE - MINUTE)), CTX)[0].occurred_at == NOW + MAX_FUTURE - MINUTE
    with pytest.raises(ValidationError) as exc:
        native.normalize(_native(iso(NOW + MAX_FUTURE + MINUTE)), CTX)
    assert exc.value.field == "[0].occurred_at"


def test_native_estimate_at_most_two_years_ahead() -> None:
    ok = NOW + MAX_ESTIMATE_AHEAD - MINUTE
    assert native.normalize(_native(iso(ok), "estimated"), CTX)[0].occurred_at == ok
    for far in (iso(NOW + MAX_ESTIMATE_AHEAD + MINUTE), "9999-12-31T23:30:00Z"):
        with pytest.raises(ValidationError) as exc:
            native.normalize(_native(far, "estimated"), CTX)
        assert exc.value.field == "[0].occurred_at"
        assert "two years" in exc.value.detail


# -- DCSA ----------------------------------------------------------------------------------------


def _dcsa(at: str, classifier: str) -> bytes:
    item = copy.deepcopy(load("dcsa", "v3_events.json")[1])  # a v3 EST ARRI
    item["payload"]["eventClassifierCode"] = classifier
    item["payload"]["eventDateTime"] = at
    item["metadata"]["eventCreatedDateTime"] = iso(NOW - timedelta(hours=1))
    return orjson.dumps([item])


def test_dcsa_actual_at_most_a_day_ahead() -> None:
    assert dcsa.normalize(_dcsa(iso(NOW + MAX_FUTURE - MINUTE), "ACT"), CTX)[0].occurred_at == NOW + MAX_FUTURE - MINUTE
    with pytest.raises(ValidationError) as exc:
        dcsa.normalize(_dcsa(iso(NOW + MAX_FUTURE + MINUTE), "ACT"), CTX)
    assert exc.value.field == "[0].occurred_at"
    assert "a day" in exc.value.detail


@pytest.mark.parametrize("classifier", ["EST", "PLN"])
def test_dcsa_estimate_or_plan_at_most_two_years_ahead(classifier: str) -> None:
    ok = NOW + MAX_ESTIMATE_AHEAD - MINUTE
    (event,) = dcsa.normalize(_dcsa(iso(ok), classifier), CTX)
    assert (event.occurred_at, event.milestone.classifier is Classifier.ACTUAL) == (ok, False)
    for far in (iso(NOW + MAX_ESTIMATE_AHEAD + MINUTE), "9999-12-31T23:30:00Z"):
        with pytest.raises(ValidationError) as exc:
            dcsa.normalize(_dcsa(far, classifier), CTX)
        assert exc.value.field == "[0].occurred_at"
        assert "more than two years ahead" in exc.value.detail


def test_dcsa_bounds_are_against_the_receipt_not_the_wall_clock() -> None:
    later = SourceContext(tenant="acme", received_at=NOW + timedelta(days=400))
    far = iso(NOW + MAX_ESTIMATE_AHEAD + timedelta(days=10))
    with pytest.raises(ValidationError):
        dcsa.normalize(_dcsa(far, "EST"), CTX)
    assert len(dcsa.normalize(_dcsa(far, "EST"), later)) == 1


# -- AfterShip -----------------------------------------------------------------------------------


def _aftership(checkpoint_at: str, estimate_at: str) -> bytes:
    body = load("aftership", "delivered_2024.json")
    msg = body["msg"]
    msg["checkpoints"] = msg["checkpoints"][:1]
    msg["checkpoints"][0]["checkpoint_time"] = checkpoint_at
    msg["latest_estimated_delivery"] = {"type": "specific", "datetime": estimate_at}
    return orjson.dumps(body)


def test_aftership_checkpoint_at_most_a_day_ahead() -> None:
    estimate = iso(NOW + timedelta(days=3))
    assert len(aftership.normalize(_aftership(iso(NOW + MAX_FUTURE - MINUTE), estimate), CTX)) == 2
    with pytest.raises(ValidationError) as exc:
        aftership.normalize(_aftership(iso(NOW + MAX_FUTURE + MINUTE), estimate), CTX)
    assert exc.value.field == "msg.checkpoints[0].occurred_at"


def test_aftership_estimated_delivery_at_most_two_years_ahead() -> None:
    checkpoint = iso(NOW - timedelta(hours=5))
    ok = NOW + MAX_ESTIMATE_AHEAD - MINUTE
    assert aftership.normalize(_aftership(checkpoint, iso(ok)), CTX)[-1].occurred_at == ok
    for far in (iso(NOW + MAX_ESTIMATE_AHEAD + MINUTE), "9999-12-31T23:30:00Z", "9999-12-31"):
        with pytest.raises(ValidationError) as exc:
            aftership.normalize(_aftership(checkpoint, far), CTX)
        assert exc.value.field == "msg.occurred_at"
        assert "more than two years ahead" in exc.value.detail


# -- EasyPost ------------------------------------------------------------------------------------


def test_easypost_estimated_delivery_at_most_two_years_ahead() -> None:
    body = load("easypost", "tracker_updated.json")
    body["result"]["est_delivery_date"] = iso(NOW + MAX_ESTIMATE_AHEAD - MINUTE)
    assert easypost.normalize(orjson.dumps(body), CTX)[-1].occurred_at == NOW + MAX_ESTIMATE_AHEAD - MINUTE
    body["result"]["est_delivery_date"] = "9999-12-31T23:30:00Z"
    with pytest.raises(ValidationError, match="more than two years ahead"):
        easypost.normalize(orjson.dumps(body), CTX)


# -- what is stored already ----------------------------------------------------------------------

LAST = datetime(9999, 12, 31, 23, 30, tzinfo=UTC)


def _shipment(legs: tuple[Leg, ...] = ()) -> Shipment:
    return Shipment(id="shp_1", tracking_number="X1", legs=legs, created_at=NOW - timedelta(days=1))


def test_eta_does_not_believe_a_stored_carrier_estimate_beyond_two_years() -> None:
    legs = (Leg(Mode.SEA, Location(unlocode="CNSHA"), Location(unlocode="NLRTM")),)
    believed = eta.predict(eta.Journey(_shipment(legs)), eta.LaneStats.empty(), NOW)
    for far in (NOW + MAX_ESTIMATE_AHEAD + MINUTE, LAST):
        got = eta.predict(eta.Journey(_shipment(legs), carrier_eta=far), eta.LaneStats.empty(), NOW)
        assert got == believed
    # with no legs the carrier's estimate was all there was: a far one leaves nothing to say
    assert eta.predict(eta.Journey(_shipment(), carrier_eta=LAST), eta.LaneStats.empty(), NOW) is None
    near = eta.predict(eta.Journey(_shipment(), carrier_eta=NOW + timedelta(days=700)), eta.LaneStats.empty(), NOW)
    assert near is not None
    assert near.predicted_at == NOW + timedelta(days=700)


def test_eta_interval_saturates_instead_of_overflowing() -> None:
    assert eta.later(LAST, 1000.0) == datetime.max.replace(tzinfo=UTC)
    assert eta.later(NOW, 1.5) == NOW + timedelta(minutes=90)


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/New_York", "UTC"])
def test_tracking_page_renders_times_at_the_edges_of_the_calendar(zone: str) -> None:
    track = {
        "tracking_number": "X1",
        "status": "in_transit",
        "milestones": [{"code": "departed", "occurred_at": "0001-01-01T00:00:00+00:00"}],
        "eta": {
            "predicted_at": "9999-12-31T23:59:59+00:00",
            "earliest": "6013-07-02T01:44:19+00:00",
            "latest": "9999-12-31T23:59:59.999999+00:00",
            "carrier_eta": "9999-12-31T23:30:00+00:00",
            "promised_at": "9999-12-31T23:59:00-05:00",
        },
        "updated_at": "9999-12-31T23:59:59+00:00",
    }
    page = trackpage.render(track, "en", zone, NOW)
    assert page.count("<time ") == 7  # every time shows, in the zone where it can
    assert "9999" in page
    assert "6013" in page
