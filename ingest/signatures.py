"""Inbound webhook signatures: a scheme (header, prefix, encoding of an HMAC-SHA256 of the raw body,
keyed by the ingest secret) and its constant-time check. Each source adapter declares its scheme;
`ingest.sources.verify` checks a delivery against its source's. The secret is used as UTF-8 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from trackd.errors import Unauthorized


@dataclass(frozen=True, slots=True)
class Scheme:
    header: str
    prefix: str
    encoding: str  # "hex" or "base64"

    def sign(self, secret: str, body: bytes) -> str:
        mac = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
        text = mac.hex() if self.encoding == "hex" else base64.b64encode(mac).decode()
        return self.prefix + text


NATIVE = Scheme("X-Trackd-Signature", "sha256=", "hex")  # trackd's own, for sources with no published scheme


def check(scheme: Scheme, secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """Raise `Unauthorized` unless the request carries the right signature under `scheme`."""
    given = headers.get(scheme.header) or headers.get(scheme.header.lower())
    if not given:
        raise Unauthorized(f"missing {scheme.header} signature header")
    expected = scheme.sign(secret, body)
    given = given.strip()
    if scheme.encoding == "hex":
        given = given[: len(scheme.prefix)].lower() + given[len(scheme.prefix) :].lower()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized(f"bad {scheme.header} signature")
