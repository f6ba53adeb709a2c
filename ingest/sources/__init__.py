"""The source registry: every adapter module of this package, by the name it declares.

Each module has `SOURCE` (its name), `normalize(payload: bytes, ctx) -> list[Event]` and `ADAPTER`,
what it declares about itself (`ingest.adapter.Adapter`).
"""

from __future__ import annotations

from collections.abc import Mapping

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import (
    aftership,
    dcsa,
    dhl,
    easypost,
    fedex,
    native,
    onerecord,
    osmand,
    owntracks,
    traccar,
    usps,
    x12_214,
)
from trackd.errors import Unauthorized

ADAPTERS: dict[str, Adapter] = {
    m.ADAPTER.name: m.ADAPTER
    for m in (native, owntracks, osmand, dcsa, onerecord, x12_214, aftership, easypost, traccar, dhl, usps, fedex)
}
WEBHOOK_SOURCES = tuple(name for name, a in ADAPTERS.items() if a.webhook)


def get(source: str) -> Adapter:
    """The adapter of `source`; KeyError for an unknown one."""
    return ADAPTERS[source]


def verify(source: str, secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """Raise `Unauthorized` unless the request is authenticated as `source` declares (an HMAC signature
    of the body, or the secret in a header) with `secret`."""
    scheme = ADAPTERS[source].signature
    if scheme is None:
        raise Unauthorized(f"{source} deliveries are not signed webhooks")
    signatures.check(scheme, secret, body, headers)
