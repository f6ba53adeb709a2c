"""Greenhouse-gas emissions of a shipment's legs, the ISO 14083 / GLEC Framework way.

Per leg: tonne-km = weight_kg / 1000 x distance_km, and co2e_kg = tonne-km x intensity
(gCO2e per tonne-km, well-to-wheel) / 1000. The distance is the modelled one from
`trackd.routing` (sea lanes; road and rail great circle x circuity; air great circle) with the
GLEC distance adjustment factor of the mode applied (sea x1.15 and road/rail x1.05 for routing
that is shorter than what vehicles actually run; air +95 km for holding, routing and approach).
Intensities and adjustments come from `trackd/data/emission_factors.json` unless overridden.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from trackd import routing
from trackd.codes import Mode
from trackd.errors import ConfigError
from trackd.shipment import Shipment


@dataclass(frozen=True, slots=True)
class Factors:
    intensity_g_per_tkm: Mapping[Mode, float]
    multiply: Mapping[Mode, float]
    add_km: Mapping[Mode, float]
    source: str
    version: str

    @property
    def method(self) -> str:
        return f"ISO 14083 / {self.source} {self.version}, well-to-wheel, distance-adjusted"

    def adjusted_km(self, mode: Mode, distance_km: float) -> float:
        return distance_km * self.multiply.get(mode, 1.0) + self.add_km.get(mode, 0.0)


def _default_doc() -> dict[str, Any]:
    text = resources.files("trackd").joinpath("data/emission_factors.json").read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"emission factors: {where} must be a non-negative number")
    return float(value)


def load_factors(path_or_none: str | Path | Mapping[str, Any] | None = None) -> Factors:
    """The bundled factors, overridden key by key by a JSON file or a dict of the same shape."""
    doc = _default_doc()
    if path_or_none is not None:
        if isinstance(path_or_none, Mapping):
            over: Any = path_or_none
        else:
            try:
                over = json.loads(Path(path_or_none).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"emission factors: cannot read {path_or_none}: {exc}") from None
        if not isinstance(over, Mapping):
            raise ConfigError("emission factors: the file must hold a JSON object")
        doc = _merge(doc, over)
    intensity: dict[Mode, float] = {}
    multiply: dict[Mode, float] = {}
    add_km: dict[Mode, float] = {}
    for mode in Mode:
        try:
            intensity[mode] = _number(doc["intensity_g_per_tkm"][mode.value], f"intensity_g_per_tkm.{mode}")
        except (KeyError, TypeError):
            raise ConfigError(f"emission factors: no intensity for {mode.value}") from None
        adj = doc.get("distance_adjustment", {}).get(mode.value, {})
        multiply[mode] = _number(adj.get("multiply", 1.0), f"distance_adjustment.{mode}.multiply")
        add_km[mode] = _number(adj.get("add_km", 0.0), f"distance_adjustment.{mode}.add_km")
    return Factors(intensity, multiply, add_km, str(doc.get("source", "custom")), str(doc.get("version", "")))


@lru_cache(maxsize=1)
def default_factors() -> Factors:
    return load_factors(None)


def compute(shipment: Shipment, factors: Factors | None = None) -> dict[str, Any]:
    """`{"co2e_kg", "method", "legs": [{"mode", "distance_km", "tonne_km", "co2e_kg",
    "factor_g_per_tkm"}]}`. Without a weight, tonne-km and CO2e are null (distances are still
    given); without legs, `legs` is empty and `co2e_kg` null. Raises ValidationError when a
    leg's place cannot be resolved."""
    factors = factors or default_factors()
    legs: list[dict[str, Any]] = []
    total = 0.0
    for leg in shipment.legs:
        km = factors.adjusted_km(leg.mode, routing.leg_distance_km(leg))
        factor = factors.intensity_g_per_tkm[leg.mode]
        tkm = None if shipment.weight_kg is None else shipment.weight_kg / 1000.0 * km
        co2e = None if tkm is None else tkm * factor / 1000.0
        total += co2e or 0.0
        legs.append(
            {
                "mode": leg.mode.value,
                "distance_km": round(km, 1),
                "tonne_km": None if tkm is None else round(tkm, 3),
                "co2e_kg": None if co2e is None else round(co2e, 3),
                "factor_g_per_tkm": factor,
            }
        )
    known = bool(legs) and shipment.weight_kg is not None
    return {"co2e_kg": round(total, 3) if known else None, "method": factors.method, "legs": legs}
