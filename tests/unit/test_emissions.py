"""Emissions: a worked example per mode, overrides, and the contract shape."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trackd import emissions, geo, routing
from trackd.codes import Mode
from trackd.errors import ConfigError
from trackd.model import Location
from trackd.shipment import Leg, Shipment

DEG_KM = 2 * math.pi * geo.EARTH_RADIUS_KM / 360  # 111.195 km


def one_leg(mode: Mode, a: Location, b: Location, kg: float | None) -> Shipment:
    return Shipment("s1", "TN1", legs=(Leg(mode, a, b),), weight_kg=kg)


def test_road_worked_example() -> None:
    # 1 degree on the equator: 111.195 km x 1.25 circuity x 1.05 GLEC adjustment = 145.94 km
    # 1 t x 145.94 km = 145.94 tkm; x 85 g/tkm = 12.405 kg CO2e
    out = emissions.compute(one_leg(Mode.ROAD, Location(lat=0, lon=0), Location(lat=0, lon=1), 1000))
    assert set(out) == {"co2e_kg", "method", "legs"}
    leg = out["legs"][0]
    assert set(leg) == {"mode", "distance_km", "tonne_km", "co2e_kg", "factor_g_per_tkm"}
    assert leg["mode"] == "road"
    assert leg["factor_g_per_tkm"] == 85.0
    assert leg["distance_km"] == pytest.approx(145.9, abs=0.05)
    assert leg["tonne_km"] == pytest.approx(145.944, abs=1e-3)
    assert leg["co2e_kg"] == pytest.approx(12.405, abs=1e-3)
    assert out["co2e_kg"] == leg["co2e_kg"]
    assert "ISO 14083" in out["method"]
    assert "GLEC" in out["method"]


def test_rail_worked_example() -> None:
    # 111.195 x 1.2 x 1.05 = 140.106 km; 2.5 t -> 350.265 tkm; x 22 g = 7.706 kg
    out = emissions.compute(one_leg(Mode.RAIL, Location(lat=0, lon=0), Location(lat=0, lon=1), 2500))
    leg = out["legs"][0]
    assert leg["distance_km"] == pytest.approx(140.1, abs=0.05)
    assert leg["tonne_km"] == pytest.approx(350.265, abs=1e-3)
    assert leg["co2e_kg"] == pytest.approx(7.706, abs=1e-3)


def test_air_worked_example() -> None:
    # 10 degrees great circle 1111.95 km + 95 km = 1206.95 km; 0.5 t -> 603.475 tkm; x 600 g = 362.085 kg
    out = emissions.compute(one_leg(Mode.AIR, Location(lat=0, lon=0), Location(lat=0, lon=10), 500))
    leg = out["legs"][0]
    assert leg["distance_km"] == pytest.approx(1207.0, abs=0.05)
    assert leg["tonne_km"] == pytest.approx(603.475, abs=1e-3)
    assert leg["co2e_kg"] == pytest.approx(362.085, abs=1e-2)


def test_sea_worked_example() -> None:
    # Shanghai -> Rotterdam along the sea lanes, x 1.15; 10 t x km x 16 g/tkm
    a, b = Location(unlocode="CNSHA"), Location(unlocode="NLRTM")
    lane_km = routing.leg_distance_km(Leg(Mode.SEA, a, b))
    out = emissions.compute(one_leg(Mode.SEA, a, b, 10_000))
    leg = out["legs"][0]
    assert leg["distance_km"] == pytest.approx(lane_km * 1.15, abs=0.05)
    assert leg["tonne_km"] == pytest.approx(10 * lane_km * 1.15, abs=1e-3)
    assert leg["co2e_kg"] == pytest.approx(10 * lane_km * 1.15 * 16 / 1000, abs=1e-3)
    # about 19,500 lane km: roughly 3.6 t CO2e for a 10 t container load
    assert 3000 < leg["co2e_kg"] < 4200


def test_multi_leg_total_and_unknowns() -> None:
    legs = (
        Leg(Mode.ROAD, Location(lat=0, lon=0), Location(lat=0, lon=1)),
        Leg(Mode.AIR, Location(lat=0, lon=1), Location(lat=0, lon=11)),
    )
    out = emissions.compute(Shipment("s1", "TN1", legs=legs, weight_kg=1000))
    assert out["co2e_kg"] == pytest.approx(sum(leg["co2e_kg"] for leg in out["legs"]), abs=2e-3)
    no_weight = emissions.compute(Shipment("s1", "TN1", legs=legs))
    assert no_weight["co2e_kg"] is None
    assert no_weight["legs"][0]["tonne_km"] is None
    assert no_weight["legs"][0]["distance_km"] == pytest.approx(145.9, abs=0.05)
    assert emissions.compute(Shipment("s1", "TN1", mode=Mode.SEA, weight_kg=5)) == {
        "co2e_kg": None,
        "method": emissions.default_factors().method,
        "legs": [],
    }


def test_bundled_file_names_source_and_version() -> None:
    f = emissions.load_factors(None)
    assert "GLEC" in f.source
    assert "3" in f.version
    assert set(f.intensity_g_per_tkm) == set(Mode)
    assert f.adjusted_km(Mode.AIR, 100) == 195
    assert f.adjusted_km(Mode.SEA, 100) == pytest.approx(115)


def test_override_by_dict_and_by_file(tmp_path: Path) -> None:
    f = emissions.load_factors({"intensity_g_per_tkm": {"road": 60}, "source": "Carrier data", "version": "2024"})
    assert f.intensity_g_per_tkm[Mode.ROAD] == 60
    assert f.intensity_g_per_tkm[Mode.SEA] == 16
    assert f.method.startswith("ISO 14083 / Carrier data 2024")
    path = tmp_path / "factors.json"
    path.write_text(json.dumps({"distance_adjustment": {"air": {"add_km": 0}}}))
    from_file = emissions.load_factors(path)
    assert from_file.adjusted_km(Mode.AIR, 100) == 100
    out = emissions.compute(one_leg(Mode.ROAD, Location(lat=0, lon=0), Location(lat=0, lon=1), 1000), f)
    assert out["legs"][0]["co2e_kg"] == pytest.approx(145.944 * 60 / 1000, abs=1e-3)


def test_bad_factor_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        emissions.load_factors(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError):
        emissions.load_factors(bad)
    with pytest.raises(ConfigError):
        emissions.load_factors({"intensity_g_per_tkm": {"sea": -1}})
