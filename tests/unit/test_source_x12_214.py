"""ANSI X12 214: envelope checks, AT7 statuses, MS1 places and local times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.sources import x12_214
from trackd.codes import Classifier, Milestone, Mode
from trackd.errors import EnvelopeError, ValidationError
from trackd.model import SourceContext

PAYLOADS = Path(__file__).parents[1] / "payloads" / "x12-214"
CTX = SourceContext(tenant="acme", received_at=datetime(2024, 6, 1, 16, 30, tzinfo=UTC))


def load(name: str) -> str:
    return (PAYLOADS / name).read_text()


def run(text: str) -> list:  # type: ignore[type-arg]
    return x12_214.normalize(text.encode(), CTX)


def test_source_name() -> None:
    assert x12_214.SOURCE == "x12-214"


def test_ltl_statuses_in_local_time() -> None:
    departed, terminal, _estimate = run(load("ltl_status.edi"))
    assert departed.milestone.code is Milestone.DEPARTED
    assert departed.milestone.mode is Mode.ROAD
    # 16:45 local in Dallas (CDT, UTC-5)
    assert departed.occurred_at == datetime(2024, 5, 31, 21, 45, tzinfo=UTC)
    assert departed.milestone.location.name == "Dallas, TX"
    assert terminal.milestone.code is Milestone.AT_FACILITY
    assert terminal.occurred_at == datetime(2024, 6, 1, 8, 10, tzinfo=UTC)
    assert departed.shipment == "1234567890"
    assert set(departed.refs) == {"1234567890", "BOL778812", "PO-88123", "ACME-SO-5521", "T48213"}
    assert departed.carrier == "ODFL"


def test_estimated_delivery_with_a_named_zone_and_coordinates() -> None:
    estimate = run(load("ltl_status.edi"))[2]
    assert estimate.milestone.code is Milestone.DELIVERED
    assert estimate.milestone.classifier is Classifier.ESTIMATED
    assert estimate.occurred_at == datetime(2024, 6, 3, 22, 0, tzinfo=UTC)  # 17:00 CT (CDT)
    assert estimate.milestone.location.lat == pytest.approx(41.85)
    assert estimate.milestone.location.lon == pytest.approx(-87.65)


def test_several_sets_utc_mexico_and_unknown_codes() -> None:
    attempt, arrived, delivered, unknown = run(load("cross_border.edi"))
    assert attempt.milestone.code is Milestone.DELIVERY_ATTEMPTED
    assert attempt.occurred_at == datetime(2024, 5, 31, 18, 0, tzinfo=UTC)  # UT: no zone lookup
    assert arrived.milestone.code is Milestone.ARRIVED
    assert arrived.occurred_at == datetime(2024, 6, 1, 15, 15, tzinfo=UTC)  # Monterrey, UTC-6
    assert delivered.milestone.code is Milestone.DELIVERED
    assert "53T0091" in delivered.refs
    assert unknown.milestone.code is None
    assert unknown.milestone.raw_code == "ZZ"


def test_other_separators_short_dates_and_canadian_local_time() -> None:
    rail, eta = run(load("pipe_separated.edi"))
    assert rail.milestone.code is Milestone.DEPARTED
    assert rail.occurred_at == datetime(2024, 6, 1, 8, 45, tzinfo=UTC)  # 01:45 PT (PDT)
    assert eta.milestone.code is Milestone.ARRIVED
    assert eta.milestone.classifier is Classifier.ESTIMATED
    assert eta.occurred_at == datetime(2024, 6, 5, 2, 0, tzinfo=UTC)  # 22:00 Toronto (EDT)


def test_local_time_without_a_known_place_is_utc() -> None:
    text = load("ltl_status.edi").replace("MS1*DALLAS*TX*US~", "MS1*SOMEWHERE~")
    assert run(text)[0].occurred_at == datetime(2024, 5, 31, 16, 45, tzinfo=UTC)


def test_resent_interchange_with_new_control_numbers_keeps_ids() -> None:
    first = run(load("ltl_status.edi"))
    again = run(
        load("ltl_status.edi").replace("000000905", "000000906").replace("*905*", "*906*").replace("*905~", "*906~")
    )
    assert [e.event_id for e in first] == [e.event_id for e in again]


@pytest.mark.parametrize(
    ("edit", "segment"),
    [
        (lambda t: t.replace("IEA*1*000000905~\n", ""), "IEA"),
        (lambda t: t.replace("IEA*1*000000905", "IEA*1*000000999"), "IEA"),
        (lambda t: t.replace("GE*1*905", "GE*2*905"), "GE"),
        (lambda t: t.replace("SE*19*0001", "SE*18*0001"), "SE"),
        (lambda t: t.replace("SE*19*0001", "SE*19*0002"), "SE"),
        (lambda t: t.replace("SE*19*0001~\n", ""), "SE"),
        (lambda t: t[4:], "ISA"),
        (lambda t: t[:60], "ISA"),
        (lambda t: t.replace("GS*QM", "XX*QM"), "XX"),
    ],
)
def test_broken_envelopes_name_the_segment(edit, segment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EnvelopeError) as err:
        run(edit(load("ltl_status.edi")))
    assert err.value.field == segment
    assert err.value.status == 400


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: t.replace("ST*214*0001", "ST*210*0001"), "ST01"),
        (lambda t: t.replace("AT7*AF*NS***20240531*1645*LT", "AT7*AF*NS***20241331*1645*LT"), "LX[1].AT705"),
        (lambda t: t.replace("AT7*AF*NS***20240531*1645*LT", "AT7*AF*NS***20240531*1645*QQ"), "LX[1].AT707"),
        (lambda t: t.replace("*0873900*415100*W*N", "*0873900*999999*W*N"), "LX[3].MS105"),
    ],
)
def test_content_errors_are_validation_errors(edit, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as err:
        run(edit(load("ltl_status.edi")))
    assert not isinstance(err.value, EnvelopeError)
    assert err.value.field == field
