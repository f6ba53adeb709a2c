"""Source adapters: each module has `SOURCE` and `normalize(payload: bytes, ctx) -> list[Event]`."""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {
    "native": "native",
    "owntracks": "owntracks",
    "osmand": "osmand",
    "dcsa": "dcsa",
    "onerecord": "onerecord",
    "x12-214": "x12_214",
    "aftership": "aftership",
    "easypost": "easypost",
}
WEBHOOK_SOURCES = ("native", "dcsa", "onerecord", "x12-214", "aftership", "easypost")


def get(source: str) -> ModuleType:
    """The adapter module of `source`; KeyError for an unknown one."""
    return importlib.import_module(f"ingest.sources.{MODULES[source]}")


def available(source: str) -> bool:
    try:
        get(source)
    except (KeyError, ModuleNotFoundError):
        return False
    return True
