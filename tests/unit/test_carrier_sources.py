"""USPS Subscriptions - Tracking and FedEx Advanced Integrated Visibility pushes, from bytes: event codes,
times, places, references, delivery estimates and proof of delivery, refusals, signatures, fuzzing,
and the simulator's FedEx pushes read back."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import sources
from ingest.sources import _common as c
from ingest.sources import fedex, usps
from lab.carrier_payloads import encode
from lab.simulator import simulate
from tests.unit.test_sources_fuzz import SETTINGS, check, json_values, mutate, paths
from trackd.codes import Classifier, EventKind, Milestone
from trackd.errors import Unauthorized, ValidationError
from trackd.model import SourceContext, ref_key
from trackd.state import State, advance

PAYLOADS = Path(__file__).parents[1] / "payloads"
CTX = SourceContext(tenant="acme", received_at=datetime(2024, 6, 1, 19, 0, tzinfo=UTC))
SECRET = "is_s3cret"
FUZZ = settings(SETTINGS, max_examples=40)  # the other sources' fuzz settings, fewer examples


def load(source: str, name: str) -> Any:
    return orjson.loads((PAYLOADS / source / name).read_bytes())


def run(module: Any, value: Any) -> list[Any]:
    result: list[Any] = module.normalize(orjson.dumps(value), CTX)
    return result


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- USPS -------------------------------------------------------------------------------------
def test_usps_scans_become_milestones_of_their_event_code() -> None:
    label, accepted, processed, moving, estimate = run(usps, load("usps", "notification_in_transit.json"))
    assert [e.milestone.code for e in (label, accepted, processed, moving)] == [
        Milestone.INFO_RECEIVED,
        Milestone.PICKED_UP,
        Milestone.AT_FACILITY,
        Milestone.IN_TRANSIT,
    ]
    assert [e.milestone.raw_code for e in (label, accepted, processed, moving)] == ["GX", "03", "10", "NT"]
    assert accepted.occurred_at == at("2024-05-28T22:40:00+00:00")  # GMTTimestamp
    assert processed.occurred_at == at("2024-05-31T04:41:00+00:00")  # 23:41 local at -05:00
    assert moving.occurred_at == at("2024-05-31T12:00:00+00:00")
    assert (accepted.milestone.location.name, accepted.milestone.location.country) == ("LOS ANGELES, CA 90052", "US")
    assert processed.milestone.location.name == "CHICAGO IL NETWORK DISTRIBUTION CENTER"
    assert moving.milestone.location is None
    assert accepted.milestone.description == "USPS picked up item"
    assert (accepted.shipment, accepted.refs, accepted.carrier) == (
        "9400111899223197428490",
        ("9400111899223197428490",),
        "usps",
    )
    assert accepted.event_id == "usps:9400111899223197428490:2024-05-28T22:40:00+00:00:03"
    assert (estimate.milestone.code, estimate.milestone.classifier) == (Milestone.DELIVERED, Classifier.ESTIMATED)
    assert estimate.milestone.raw_code == "expectedDeliveryTimeStamp"
    assert estimate.occurred_at == at("2024-06-03T21:00:00+00:00")
    assert estimate.created_at == CTX.received_at  # made when received


def test_usps_delivery_names_who_received_it() -> None:
    out_for_delivery, delivered = run(usps, load("usps", "notification_delivered.json"))
    assert out_for_delivery.milestone.code is Milestone.OUT_FOR_DELIVERY
    assert delivered.milestone.code is Milestone.DELIVERED
    assert delivered.occurred_at == at("2024-06-01T18:07:00+00:00")
    assert delivered.milestone.description == "Delivered, Front Desk/Reception/Mail Room; received by J MORALES"
    assert delivered.raw["name"] == "J MORALES"


def test_usps_notification_of_several_trackings() -> None:
    attempt, reminder, estimate, abroad = run(usps, load("usps", "notification_batch.json"))
    assert (attempt.milestone.code, attempt.occurred_at) == (
        Milestone.DELIVERY_ATTEMPTED,
        at("2024-05-31T21:22:00+00:00"),
    )
    assert (reminder.milestone.code, reminder.milestone.raw_code) == (None, "RD")  # unknown: kept
    assert estimate.milestone.raw_code == "predictedDeliveryDate"
    assert estimate.occurred_at == at("2024-06-04T23:59:59+00:00")  # a date: by its end
    assert [e.shipment for e in (attempt, estimate, abroad)] == ["9205590164917312751089"] * 2 + ["LZ123456785US"]
    assert (abroad.milestone.location.name, abroad.milestone.location.country) == ("SHANGHAI CHINA", None)


def test_usps_two_scans_of_one_code_at_one_time_both_stay() -> None:
    body = load("usps", "notification_delivered.json")
    body["trackingEvents"].append(copy.deepcopy(body["trackingEvents"][0]))
    first, _delivered, again = run(usps, body)
    assert again.event_id == first.event_id + ":2"


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda b: b.pop("trackingNumber"), "trackingNumber"),
        (lambda b: b["trackingEvents"][1].pop("eventCode"), "trackingEvents[1].eventCode"),
        (lambda b: b["trackingEvents"][1].update(GMTTimestamp="May 28"), "trackingEvents[1].GMTTimestamp"),
        (lambda b: b["trackingEvents"][2].update(GMTOffset="-25:00"), "trackingEvents[2].GMTOffset"),
        (lambda b: b["trackingEvents"][3].pop("eventTimestamp"), "trackingEvents[3].eventTimestamp"),
        (lambda b: b["trackingEvents"][0].update(GMTTimestamp="2024-06-05T00:00:00Z"), "trackingEvents[0].occurred_at"),
        (lambda b: b.update(expectedDeliveryTimeStamp="2027-06-03T21:00:00Z"), "occurred_at"),
        (lambda b: b.update(expectedDeliveryTimeStamp="soon"), "expectedDeliveryTimeStamp"),
        (lambda b: b.update(trackingEvents={}), "trackingEvents"),
        (lambda b: b["trackingEvents"].__setitem__(0, "GX"), "trackingEvents[0]"),
        (lambda b: b.update(trackingEvents=[], expectedDeliveryTimeStamp=None), "trackingEvents"),
    ],
)
def test_usps_bad_input_names_the_field(edit: Any, field: str) -> None:
    body = load("usps", "notification_in_transit.json")
    edit(body)
    with pytest.raises(ValidationError) as err:
        run(usps, body)
    assert err.value.field == field


def test_usps_notifications_are_signed_with_x_hmac() -> None:
    body = (PAYLOADS / "usps" / "notification_delivered.json").read_bytes()
    digest = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    sources.verify("usps", SECRET, body, {"X-HMAC": digest})
    for headers in ({"X-HMAC": digest.lower()}, {"X-HMAC": hmac.new(b"x", body, "sha256").hexdigest()}, {}):
        with pytest.raises(Unauthorized):
            sources.verify("usps", SECRET, body, headers)
    with pytest.raises(Unauthorized):
        sources.verify("usps", SECRET, body + b" ", {"X-HMAC": digest})


LONG_SECRET = "is_" + "AbC-d_0123456789" * 3  # the length of a real ingest secret: 51


def envelope(timestamp: datetime | None = None, **fields: Any) -> dict[str, Any]:
    """The sample envelope, stamped `timestamp` (default: now), with `fields` replaced."""
    env: dict[str, Any] = load("usps", "envelope_delivered.json")
    stamp = (timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {**env, "timestamp": stamp, **fields}


def usps_mac(key: str, message: str) -> str:
    return base64.b64encode(hmac.new(key.encode(), message.encode(), hashlib.sha256).digest()).decode()


def test_usps_envelope_payload_as_a_string_or_an_object_is_the_tracking() -> None:
    env = load("usps", "envelope_delivered.json")
    for body in (env, {**env, "payload": orjson.loads(env["payload"])}):
        out_for_delivery, delivered = run(usps, body)
        assert (out_for_delivery.shipment, out_for_delivery.milestone.code) == (
            "9434636208303341829035",
            Milestone.OUT_FOR_DELIVERY,
        )
        assert (delivered.milestone.code, delivered.occurred_at) == (
            Milestone.DELIVERED,
            at("2024-06-01T18:46:00+00:00"),
        )
    both = [orjson.loads(env["payload"]), load("usps", "notification_in_transit.json")]
    out = run(usps, {**env, "payload": orjson.dumps(both).decode()})
    assert [e.shipment for e in out] == ["9434636208303341829035"] * 2 + ["9400111899223197428490"] * 5


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"payload": '{"trackingNumber": '}, "payload"),
        ({"payload": "[" * 70 + "]" * 70}, "payload"),
        ({"payload": 17}, "payload"),
        ({"payload": '{"trackingEvents": []}'}, "payload.trackingNumber"),
        ({"payload": '[{"trackingNumber": "1"}]'}, "payload[0].trackingEvents"),
        ({"subscriptionType": "SCAN_EVENT_EXTRACT"}, "subscriptionType"),
        ({"subscriptionType": {"kind": "TRACKING"}}, "subscriptionType"),
        ({"payload": "[]"}, "payload"),
    ],
)
def test_usps_bad_envelopes_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        run(usps, {**load("usps", "envelope_delivered.json"), **fields})
    assert err.value.field == field


def test_usps_envelope_payload_over_the_batch_is_refused() -> None:
    scans = [{"eventCode": "10", "GMTTimestamp": "2024-05-31T05:12:00Z"}] * 10_001
    body = {
        **load("usps", "envelope_delivered.json"),
        "payload": orjson.dumps({"trackingNumber": "1", "trackingEvents": scans}).decode(),
    }
    with pytest.raises(ValidationError, match="more than 10000"):
        run(usps, body)


def test_usps_envelopes_are_signed_over_timestamp_and_payload_with_the_subscription_secret() -> None:
    assert usps.subscription_secret(LONG_SECRET) == LONG_SECRET[:32]
    env = envelope()
    body, message = orjson.dumps(env), env["timestamp"] + env["payload"]
    good = usps_mac(LONG_SECRET[:32], message)
    for headers in ({"X-HMAC": good}, {"hmac-header": good}, {"x-hmac": good}):
        sources.verify("usps", LONG_SECRET, body, headers)
    refused = [
        {"X-HMAC": usps_mac(LONG_SECRET, message)},  # the whole ingest secret
        {"X-HMAC": usps_mac(LONG_SECRET[:32], env["payload"])},  # the payload alone
        {"X-HMAC": usps_mac(LONG_SECRET, body.decode())},  # the raw body
        {"X-HMAC": usps_mac(LONG_SECRET[:32], message + " ")},
        {"X-HMAC": good.lower()},
        {"X-HMAC": "", "other": good},
    ]
    for headers in refused:
        with pytest.raises(Unauthorized):
            sources.verify("usps", LONG_SECRET, body, headers)
    # A copy of the envelope with another payload keeps neither signature.
    other = orjson.dumps({**env, "payload": env["payload"].replace("SEATTLE", "TACOMA")})
    with pytest.raises(Unauthorized):
        sources.verify("usps", LONG_SECRET, other, {"X-HMAC": good})


@pytest.mark.parametrize("minutes", [-6, 6])
def test_usps_envelopes_stamped_more_than_five_minutes_away_are_refused(minutes: int) -> None:
    env = envelope(datetime.now(UTC) + timedelta(minutes=minutes))
    good = usps_mac(LONG_SECRET[:32], env["timestamp"] + env["payload"])
    with pytest.raises(Unauthorized, match="more than 5 minutes from now"):
        sources.verify("usps", LONG_SECRET, orjson.dumps(env), {"X-HMAC": good})
    within = envelope(datetime.now(UTC) + timedelta(minutes=minutes * 0.5))
    ok = usps_mac(LONG_SECRET[:32], within["timestamp"] + within["payload"])
    sources.verify("usps", LONG_SECRET, orjson.dumps(within), {"X-HMAC": ok})
    for stamp in (None, 1717267625, "soon"):
        with pytest.raises(Unauthorized, match="timestamp"):
            sources.verify("usps", LONG_SECRET, orjson.dumps({**env, "timestamp": stamp}), {"X-HMAC": good})


def test_usps_envelope_with_an_object_payload_is_signed_as_a_whole() -> None:
    env = envelope()
    body = orjson.dumps({**env, "payload": orjson.loads(env["payload"])})
    sources.verify("usps", LONG_SECRET, body, {"X-HMAC": usps_mac(LONG_SECRET, body.decode())})
    with pytest.raises(Unauthorized):
        sources.verify("usps", LONG_SECRET, body, {"X-HMAC": usps_mac(LONG_SECRET[:32], body.decode())})


# -- FedEx ------------------------------------------------------------------------------------
def test_fedex_scans_become_milestones_with_the_window_as_the_estimate() -> None:
    moving, departed, picked, created, estimate = run(fedex, load("fedex", "push_in_transit.json"))
    assert [e.milestone.code for e in (moving, departed, picked, created)] == [
        Milestone.IN_TRANSIT,
        Milestone.DEPARTED,
        Milestone.PICKED_UP,
        Milestone.INFO_RECEIVED,
    ]
    assert departed.occurred_at == at("2024-05-31T05:45:00+00:00")  # 22:45 at -07:00
    assert (departed.milestone.location.name, departed.milestone.location.country) == ("OAKLAND, CA", "US")
    assert created.milestone.location is None
    assert picked.milestone.description == "Picked up"
    assert picked.shipment == "794843185271"
    assert picked.refs == ("794843185271", "ACME-PO-4417", "SO-99120")
    assert picked.carrier == "fedex"
    assert picked.event_id == "fedex:794843185271:2024-05-29T23:20:00+00:00:PU"
    assert (estimate.milestone.code, estimate.milestone.classifier) == (Milestone.DELIVERED, Classifier.ESTIMATED)
    assert estimate.milestone.raw_code == "estimatedDeliveryTimeWindow.window.ends"
    assert estimate.occurred_at == at("2024-06-03T18:00:00+00:00")  # the window's end
    assert estimate.milestone.description == "between 2024-06-03T10:00:00-04:00 and 2024-06-03T14:00:00-04:00"
    assert estimate.created_at == CTX.received_at


def test_fedex_proof_of_delivery_names_who_received_it() -> None:
    delivered, out_for_delivery = run(fedex, load("fedex", "push_delivered.json"))
    assert (delivered.milestone.code, delivered.occurred_at) == (Milestone.DELIVERED, at("2024-06-01T17:42:00+00:00"))
    assert delivered.milestone.description == "Delivered; received by R.CHEN"
    assert delivered.raw["receivedByName"] == "R.CHEN"
    assert out_for_delivery.milestone.code is Milestone.OUT_FOR_DELIVERY
    assert "receivedByName" not in out_for_delivery.raw


def test_fedex_flat_envelope_exceptions_delays_and_customs() -> None:
    attempt, delay, cleared, estimate = run(fedex, load("fedex", "push_flat_exception.json"))
    assert attempt.milestone.code is Milestone.DELIVERY_ATTEMPTED
    assert attempt.milestone.description == "Delivery exception: Customer not available or business closed"
    assert (delay.milestone.code, delay.milestone.raw_code) == (None, "DY")  # kept, no code
    assert cleared.milestone.code is Milestone.CUSTOMS_RELEASED
    assert estimate.milestone.raw_code == "dateAndTimes.ESTIMATED_DELIVERY"
    assert estimate.occurred_at == at("2024-06-04T23:59:59+00:00")
    assert attempt.shipment == "286710463050"


R = "output.completeTrackResults[0].trackResults[0]."


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda c, r: (c.pop("trackingNumber"), r.pop("trackingNumberInfo")), R + "trackingNumberInfo.trackingNumber"),
        (lambda c, r: r["scanEvents"][0].pop("eventType"), R + "scanEvents[0].eventType"),
        (lambda c, r: r["scanEvents"][1].update(date="31/05/2024"), R + "scanEvents[1].date"),
        (
            lambda c, r: r["scanEvents"][1]["scanLocation"].update(countryCode="USA"),
            R + "scanEvents[1].scanLocation.countryCode",
        ),
        (lambda c, r: r["scanEvents"][2].update(date="2024-06-09T00:00:00Z"), R + "scanEvents[2].occurred_at"),
        (
            lambda c, r: r["estimatedDeliveryTimeWindow"]["window"].update(ends="2027-01-01T00:00:00Z"),
            R + "occurred_at",
        ),
        (lambda c, r: r.update(scanEvents="PU"), R + "scanEvents"),
        (
            lambda c, r: r["additionalTrackingInfo"].update(packageIdentifiers={}),
            R + "additionalTrackingInfo.packageIdentifiers",
        ),
        (lambda c, r: r.update(scanEvents=[], estimatedDeliveryTimeWindow=None), R + "scanEvents"),
        (lambda c, r: c.update(trackResults=[7]), "output.completeTrackResults[0].trackResults[0]"),
    ],
)
def test_fedex_bad_input_names_the_field(edit: Any, field: str) -> None:
    body = load("fedex", "push_in_transit.json")
    complete = body["output"]["completeTrackResults"][0]
    edit(complete, complete["trackResults"][0])
    with pytest.raises(ValidationError) as err:
        run(fedex, body)
    assert err.value.field == field


def test_fedex_refuses_pushes_of_no_known_shape() -> None:
    for body, field in (
        ({"trackResults": []}, "output"),
        ({"output": {"completeTrackResults": []}}, "output.completeTrackResults"),
    ):
        with pytest.raises(ValidationError) as err:
            run(fedex, body)
        assert err.value.field == field


def test_fedex_pushes_are_signed_with_fdx_signature() -> None:
    body = (PAYLOADS / "fedex" / "push_delivered.json").read_bytes()
    digest = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    assert sources.get("fedex").signature.sign(SECRET, body) == digest
    sources.verify("fedex", SECRET, body, {"fdx-signature": digest})
    for headers in ({"fdx-signature": digest[:-2]}, {"X-HMAC": digest}, {}):
        with pytest.raises(Unauthorized):
            sources.verify("fedex", SECRET, body, headers)


def test_fedex_results_that_carry_an_error_are_skipped_and_the_rest_stored() -> None:
    body = load("fedex", "push_not_found.json")
    picked, estimate = run(fedex, body)
    assert (picked.shipment, picked.milestone.code) == ("770412345670", Milestone.PICKED_UP)
    assert estimate.milestone.raw_code == "dateAndTimes.ESTIMATED_DELIVERY"
    del body["output"]["completeTrackResults"][1]
    assert run(fedex, body) == []  # nothing but the error: nothing to store


def test_fedex_identifiers_are_capped_per_result_after_repeats_are_dropped() -> None:
    body = load("fedex", "push_in_transit.json")
    result = body["output"]["completeTrackResults"][0]["trackResults"][0]
    idents = result["additionalTrackingInfo"]["packageIdentifiers"]
    idents[:] = [{"type": "PURCHASE_ORDER", "values": ["PO-1"] * 50}] * 50  # 2,500 values, one identifier
    assert {e.refs for e in run(fedex, body)} == {("794843185271", "PO-1")}
    idents[:] = [{"type": "PURCHASE_ORDER", "values": [f"PO-{i}-{j}" for j in range(50)]} for i in range(2)]
    with pytest.raises(ValidationError) as err:
        run(fedex, body)
    assert err.value.field == R + "additionalTrackingInfo.packageIdentifiers[0].values[49]"  # the 51st
    assert "50" in err.value.detail


SCAN = {"eventCode": "10", "GMTTimestamp": "2024-05-31T05:12:00Z", "eventType": "IT", "date": "2024-05-31T05:12:00Z"}
ESTIMATED = {"type": "ESTIMATED_DELIVERY", "dateTime": "2024-06-04"}


@pytest.mark.parametrize("module", [usps, fedex])
@pytest.mark.parametrize("scans", [[51, 51], [100]])  # each within the bound, not all (with the estimate)
def test_a_push_of_more_events_than_a_batch_in_all_is_refused(
    module: Any, scans: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(c, "MAX_BATCH", 100)  # the push's bound; each array keeps its own 10,000
    estimate = {"expectedDeliveryTimeStamp": "2024-06-03T21:00:00Z"}
    body: Any = (
        [{"trackingNumber": str(i), "trackingEvents": [SCAN] * n, **estimate} for i, n in enumerate(scans)]
        if module is usps
        else {
            "trackResults": [
                {"trackingNumber": str(i), "scanEvents": [SCAN] * n, "dateAndTimes": [ESTIMATED]}
                for i, n in enumerate(scans)
            ]
        }
    )
    with pytest.raises(ValidationError) as err:
        run(module, body)
    assert (err.value.field, err.value.detail) == (
        "body",
        "body: gives more than 100 events; at most 100 a request",
    )


def carrier_eta(module: Any, pushes: list[tuple[Any, datetime]]) -> datetime | None:
    """The carrier ETA of one shipment after each push is folded in, in the order received."""
    state = State()
    for body, received_at in pushes:
        events = module.normalize(orjson.dumps(body), SourceContext(tenant="acme", received_at=received_at))
        state, _ = advance(state, "shp_1", events, received_at)
    return state.carrier_eta


def test_the_estimate_received_last_wins_whatever_scans_came_with_it() -> None:
    first, later = datetime(2024, 6, 1, 12, 0, tzinfo=UTC), datetime(2024, 6, 1, 19, 0, tzinfo=UTC)
    only = {"trackingNumber": "9400111899223197428490", "expectedDeliveryTimeStamp": "2024-06-03T21:00:00Z"}
    revised = load("usps", "notification_in_transit.json")  # scans up to 2024-05-31T12:00Z, before `first`
    revised["expectedDeliveryTimeStamp"] = "2024-06-04T21:00:00Z"
    assert carrier_eta(usps, [(only, first), (revised, later)]) == at("2024-06-04T21:00:00+00:00")

    no_scans = load("fedex", "push_in_transit.json")
    result = no_scans["output"]["completeTrackResults"][0]["trackResults"][0]
    result["scanEvents"] = []
    revised = load("fedex", "push_in_transit.json")  # scans up to 2024-05-31T10:12Z
    revised["output"]["completeTrackResults"][0]["trackResults"][0]["estimatedDeliveryTimeWindow"]["window"] = {
        "ends": "2024-06-04T14:00:00-04:00"
    }
    assert carrier_eta(fedex, [(no_scans, first), (revised, later)]) == at("2024-06-04T18:00:00+00:00")


# -- hostile input ----------------------------------------------------------------------------
@pytest.mark.parametrize("module", [usps, fedex])
def test_deep_json_and_oversized_batches_are_refused(module: Any) -> None:
    with pytest.raises(ValidationError) as err:
        module.normalize(b"[" * 100 + b"]" * 100, CTX)
    assert "nested deeper than 64 levels" in err.value.detail
    scan = {
        "eventCode": "10",
        "eventType": "IT",
        "date": "2024-05-31T05:12:00Z",
        "GMTTimestamp": "2024-05-31T05:12:00Z",
    }
    many = [scan] * 10_001
    body = (
        {"trackingNumber": "1", "trackingEvents": many}
        if module is usps
        else {"trackResults": [{"trackingNumber": "1", "scanEvents": many}]}
    )
    with pytest.raises(ValidationError, match="more than 10000"):
        run(module, body)


def _fixtures(source: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((PAYLOADS / source).iterdir())]


@pytest.mark.parametrize("module", [usps, fedex])
@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(module: Any, data: bytes) -> None:
    check(lambda: module.normalize(data, CTX))


@pytest.mark.parametrize(("module", "source"), [(usps, "usps"), (fedex, "fedex")])
@FUZZ
@given(choice=st.data(), new=json_values, delete=st.booleans())
def test_mutated_fixtures(module: Any, source: str, choice: st.DataObject, new: Any, delete: bool) -> None:
    value = orjson.loads(choice.draw(st.sampled_from(_fixtures(source))))
    path = choice.draw(st.sampled_from(paths(value)))
    body = orjson.dumps(mutate(value, path, new, delete))
    check(lambda: module.normalize(body, CTX))


# -- the simulator speaks FedEx ---------------------------------------------------------------
def test_the_simulators_fedex_leg_pushes_what_it_planned() -> None:
    s = simulate(3, datetime(2025, 3, 1, 6, 0, tzinfo=UTC), seed=5)  # a SIN-JFK-USNYC shipment, last mile by FedEx
    assert (s.lane, s.legs[-1].carrier) == ("SIN-JFK-USNYC", "fedex")
    planned = [ev for ev in s.events if ev.source == "aftership" and ev.kind is EventKind.MILESTONE]  # its feed
    codes = set()
    for ev in planned:
        d = encode(s, ev, tenant="acme", secret=SECRET)
        assert (d.source, d.target) == ("fedex", "/v1/ingest/acme/fedex")
        sources.verify("fedex", SECRET, d.body, d.headers)
        ctx = SourceContext(tenant="acme", received_at=ev.send_at + timedelta(seconds=2))
        events = fedex.normalize(d.body, ctx)
        match = [e for e in events if (e.milestone.code, e.milestone.classifier, e.occurred_at) == want(ev)]
        assert match, want(ev)
        assert ref_key(s.legs[-1].ids["tracking"]) in match[0].match_keys()
        codes.add(ev.milestone)
    assert {Milestone.PICKED_UP, Milestone.DELIVERY_ATTEMPTED, Milestone.DELIVERED} <= codes
    assert any(e.milestone.description == "Delivered; received by RECEPTION" for e in events)  # the last push


def want(ev: Any) -> tuple[Any, ...]:
    return (ev.milestone, ev.classifier, ev.occurred_at)
