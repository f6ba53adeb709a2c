"""The eta-eval replay on a tiny hand-made case, numbers worked out by hand.

Two road shipments on the same lane, one degree along the equator (111.195 km great circle,
x 1.25 = 138.99 km by road, 2.3166 h at 60 km/h, destination dwell 3 h, no customs):

A: picked up at T0 at the origin, delivered at T0+8 h, promised T0+10 h.
B: picked up at T0+24 h, delivered 6 h later, promised 5 h after pick-up.

trackd predicts max(pick-up + 2.3166, now) + 3 h (B learns only A's one transit: no lane blend,
four residuals: still the prior road interval, 1 h + 15 % / 35 % of the horizon).
naive predicts now + 111.195 / 60 = now + 1.8533 h.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lab import etaeval
from trackd.codes import Milestone
from trackd.errors import ValidationError
from trackd.model import Location

T0 = datetime(2024, 3, 1, tzinfo=UTC)
GC_H = 111.19508 / 60  # naive: remaining great circle at the nominal 60 km/h
START, END = Location(lat=0, lon=0), Location(lat=0, lon=1)


def hr(x: float) -> timedelta:
    return timedelta(hours=x)


def iso(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def shipment(sid: str, promised_h: float) -> dict[str, Any]:
    return {
        "shipment": {
            "id": sid,
            "tracking_number": f"TN-{sid}",
            "carrier": "acme",
            "promised_at": iso(promised_h),
            "legs": [{"mode": "road", "origin": {"lat": 0, "lon": 0}, "destination": {"lat": 0, "lon": 1}}],
        }
    }


def milestone(tn: str, code: str, at_h: float, lon: float, **extra: Any) -> dict[str, Any]:
    event = {
        "shipment": tn,
        "occurred_at": iso(at_h),
        "milestone": {
            "code": code,
            "classifier": extra.pop("classifier", "actual"),
            "location": {"lat": 0, "lon": lon},
        },
    }
    return {"event": {**event, **extra}}


def lines(carrier_estimate: bool = False) -> list[dict[str, Any]]:
    out = [shipment("A", 10), milestone("TN-A", "picked_up", 0, 0)]
    if carrier_estimate:
        out.append(milestone("tn a", "delivered", 7, 1, classifier="estimated", created_at=iso(0)))
    out += [
        milestone("TN-A", "delivered", 8, 1),
        shipment("B", 29),
        milestone("TN-B", "picked_up", 24, 0),
        milestone("TN-B", "delivered", 30, 1),
        shipment("C", 50),
    ]  # never delivered: ignored
    return out


def test_mae_and_coverage_by_hand() -> None:
    report = etaeval.evaluate(lines())
    assert report.shipments == 2
    out = etaeval.to_json(report)["horizons"]
    assert list(out) == ["25", "50", "75", "90"]
    # trackd errors, A (actual 8) at 2, 4, 6, 7.2 h: predicted 5.3166, 7, 9, 10.2
    #              B (actual 6) at 1.5, 3, 4.5, 5.4 h: predicted 5.3166, 6, 7.5, 8.4
    # covered: A at 4 and 6 h; B at 1.5 and 3 h (e.g. A at 2 h: latest 5.3166 + 1 + 0.35 x 3.3166 = 7.48 < 8)
    expected = {
        "25": ((2.6834 + 0.6834) / 2, 0.5),
        "50": ((1 + 0) / 2, 1.0),
        "75": ((1 + 1.5) / 2, 0.5),
        "90": ((2.2 + 2.4) / 2, 0.0),
    }
    for horizon, (mae, coverage) in expected.items():
        got = out[horizon]["trackd"]
        assert got["mae_h"] == pytest.approx(mae, abs=1e-3)
        assert got["coverage"] == coverage
        assert got["n"] == 2
        # promised: A 2 h early (actual 8, promised 10), B 1 h late: bias (-2 + 1) / 2; both on the
        # promised day; no interval and no p_late, so no coverage and no Brier score
        promised = {k: v for k, v in out[horizon]["promised"].items() if k != "trackd_mae_h_same_shipments"}
        assert promised == {"mae_h": 1.5, "coverage": None, "n": 2, "bias_h": -0.5, "hit_day": 1.0, "brier": None}
        assert out[horizon]["promised"]["trackd_mae_h_same_shipments"] == out[horizon]["trackd"]["mae_h"]
        # no carrier estimates: the carrier baseline is the promise
        carrier = out[horizon]["carrier"]
        assert {k: carrier[k] for k in promised} == promised
        assert carrier["own_estimates"] == {"n": 0, "mae_h": None, "trackd_mae_h": None}
        # A was on time, B late: p_late against that (from the prior interval, no history yet)
        assert 0 < out[horizon]["trackd"]["brier"] < 1
    naive = {
        "25": (abs(2 + GC_H - 8) + abs(1.5 + GC_H - 6)) / 2,
        "50": (abs(4 + GC_H - 8) + abs(3 + GC_H - 6)) / 2,
        "75": (abs(6 + GC_H - 8) + abs(4.5 + GC_H - 6)) / 2,
        "90": (abs(7.2 + GC_H - 8) + abs(5.4 + GC_H - 6)) / 2,
    }
    for horizon, mae in naive.items():
        assert out[horizon]["naive"]["mae_h"] == pytest.approx(mae, abs=1e-3)
        assert out[horizon]["naive"]["n"] == 2
        assert out[horizon]["naive"]["coverage"] is None


def test_carrier_baseline_uses_the_estimate_known_then() -> None:
    out = etaeval.to_json(etaeval.evaluate(lines(carrier_estimate=True)))["horizons"]
    for horizon in ("25", "50", "75", "90"):
        # A: the estimate (made at T0, for T0+7 h) is 1 h early; matched ignoring case, spaces, hyphens.
        # B has none: its promise (1 h early) stands in.
        assert out[horizon]["carrier"]["own_estimates"]["n"] == 1
        assert out[horizon]["carrier"]["own_estimates"]["mae_h"] == 1.0
        assert (out[horizon]["carrier"]["mae_h"], out[horizon]["carrier"]["n"]) == (1.0, 2)
        assert out[horizon]["carrier"]["bias_h"] == 1.0
        assert out[horizon]["trackd"]["n"] == 2


def test_estimate_made_later_is_not_used_earlier() -> None:
    late = [*lines()[:2], milestone("TN-A", "delivered", 7, 1, classifier="estimated", created_at=iso(5)), *lines()[2:]]
    out = etaeval.to_json(etaeval.evaluate(late))["horizons"]
    assert [out[h]["carrier"]["own_estimates"]["n"] for h in ("25", "50", "75", "90")] == [0, 0, 1, 1]


def test_score_and_table() -> None:
    hour = timedelta(hours=1)
    rows = [
        etaeval.Row(T0 + 2 * hour, T0 + hour, T0, T0 + 3 * hour, 0.8, True),  # 1 h off, covered
        etaeval.Row(T0 + 5 * hour, T0 + hour, T0 + 4 * hour, T0 + 6 * hour, 0.4, False),  # 4 h off, not covered
        # predicted 23:00 UTC on the 1st, delivered 01:00 UTC on the 2nd: the same day at UTC-2
        etaeval.Row(T0 + 23 * hour, T0 + 25 * hour, T0, T0 + 30 * hour, None, None, timedelta(hours=-2)),
    ]
    s = etaeval.score(rows)
    assert s.mae_h == pytest.approx(7 / 3)
    assert s.bias_h == pytest.approx((-1 - 4 + 2) / 3)
    assert (s.coverage, s.n, s.hit_day) == (pytest.approx(2 / 3), 3, 1.0)
    assert s.brier == pytest.approx(((0.8 - 1) ** 2 + 0.4**2) / 2)  # the row without a promise is not judged
    assert etaeval.score([]) == etaeval.Score(None, None, 0)
    table = etaeval.format_table(etaeval.evaluate(lines()))
    assert "MAE" in table
    assert "coverage" in table
    assert any(line.split()[:2] == ["50%", "trackd"] and line.split()[5] == "100.0%" for line in table.splitlines())


def test_bad_line_names_it() -> None:
    with pytest.raises(ValidationError, match="line 2"):
        etaeval.evaluate(
            [
                shipment("A", 1),
                {"event": {"shipment": "TN-A", "occurred_at": "yesterday", "position": {"lat": 0, "lon": 0}}},
            ]
        )
    with pytest.raises(ValidationError, match="line 1"):
        etaeval.evaluate([{"nothing": 1}])


def test_carrier_estimate_picks_the_latest_made() -> None:
    s = etaeval.parse_shipment(shipment("A", 10)["shipment"])[0]
    rows = [
        (T0, T0 + hr(30), Milestone.DELIVERED, None),
        (T0 + hr(2), T0 + hr(20), Milestone.ARRIVED, END),
        (T0 + hr(3), T0 + hr(99), Milestone.ARRIVED, START),  # arrival elsewhere is no delivery estimate
        (T0 + hr(1), T0 + hr(40), Milestone.DELIVERED, None),
    ]
    assert etaeval.carrier_estimate(rows, s) == (T0 + hr(20), T0 + hr(2))
    assert etaeval.carrier_estimate([], s) is None


def test_cli_reads_a_jsonl_file_and_prints_json(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import orjson

    from serve.cli import main

    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines()))
    assert main(["eta-eval", "--events", str(path), "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert set(out["horizons"]) == {"25", "50", "75", "90"}
    assert {"mae_h", "coverage", "n", "bias_h", "hit_day", "brier"} <= set(out["horizons"]["50"]["trackd"])
    assert out["late"]["share"] == 0.5  # B was late, A was not
    assert out["late"]["brier_constant"] == 0.25
    assert out["revisions"]["per_shipment"] is not None
    assert main(["eta-eval", "--events", str(tmp_path / "missing.jsonl")]) == 2
