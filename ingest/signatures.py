"""Inbound webhook authentication, as each source's sender does it, with a constant-time check:

- `Scheme`: an HMAC-SHA256 of the raw body keyed by the ingest secret, in a header (prefix and hex or
  base64 encoding as the sender publishes them; older header names as fallbacks), or of a message
  and key that a function of the sender's derives from the body and the secret;
- `HeaderSecret`: the ingest secret itself in a header after a prefix (`Authorization: Bearer <secret>`,
  `DHL-API-Key: <secret>`), for senders that cannot sign a body (Traccar's `forward.header`, DHL's
  subscription `ApiKeyAuthentication`).

Each source adapter declares one (`Auth`); `ingest.sources.verify` checks a delivery against its
source's. The secret is used as UTF-8 bytes. Both have `sign` (what a sender puts in the header),
so tools and tests send as the real senders do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from trackd.errors import Unauthorized


def _header(headers: Mapping[str, str], name: str) -> str:
    """The header's value (case-insensitive name); Unauthorized when it is missing or blank."""
    given = headers.get(name) or headers.get(name.lower())
    if not given or not given.strip():
        raise Unauthorized(f"missing {name} header")
    return given.strip()


@dataclass(frozen=True, slots=True)
class Scheme:
    """An HMAC-SHA256 signature of the body: `header: <prefix><hex or base64 digest>`, read from the
    first of `header` and then `fallbacks` that is present. `signed`, when given, derives the HMAC
    key and the signed message from the secret and the body (for senders that sign fields of the
    body, or with a key made from the secret), raising `Unauthorized` for a body it cannot sign;
    by default the message is the raw body and the key the secret."""

    header: str
    prefix: str
    encoding: str  # "hex" or "base64"
    fallbacks: tuple[str, ...] = ()
    signed: Callable[[str, bytes], tuple[bytes, bytes]] | None = None

    def sign(self, secret: str, body: bytes) -> str:
        key, message = self.signed(secret, body) if self.signed else (secret.encode("utf-8"), body)
        mac = hmac.new(key, message, hashlib.sha256).digest()
        text = mac.hex() if self.encoding == "hex" else base64.b64encode(mac).decode()
        return self.prefix + text

    def check(self, secret: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise `Unauthorized` unless the header holds the body's signature under `secret`."""
        names = (self.header, *self.fallbacks)
        name = next((n for n in names if (headers.get(n) or headers.get(n.lower()) or "").strip()), self.header)
        try:
            given = _header(headers, name)
        except Unauthorized:
            raise Unauthorized(f"missing {self.header} signature header") from None
        expected = self.sign(secret, body)
        if self.encoding == "hex":
            given = given[: len(self.prefix)].lower() + given[len(self.prefix) :].lower()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized(f"bad {self.header} signature")


@dataclass(frozen=True, slots=True)
class HeaderSecret:
    """The ingest secret itself: `header: <prefix><secret>`. The prefix is matched without regard to
    case (`Bearer` is an HTTP auth scheme name); the secret exactly. The body is not covered, so this
    is only for senders that offer nothing better, and only over TLS."""

    header: str
    prefix: str = ""

    def sign(self, secret: str, body: bytes) -> str:
        return self.prefix + secret

    def check(self, secret: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise `Unauthorized` unless the header holds `secret` after the prefix. Compared as
        SHA-256 digests in constant time, so neither the content nor the length of the secret shows
        in the timing."""
        given = _header(headers, self.header)
        if given[: len(self.prefix)].lower() != self.prefix.lower():
            raise Unauthorized(f"{self.header} must be '{self.prefix}<ingest secret>'")
        token = given[len(self.prefix) :].strip()
        ok = hmac.compare_digest(
            hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest(),
            hashlib.sha256(secret.encode("utf-8")).digest(),
        )
        if not ok:
            raise Unauthorized(f"bad {self.header} secret")


Auth = Scheme | HeaderSecret  # what an adapter may declare

NATIVE = Scheme("X-Trackd-Signature", "sha256=", "hex")  # trackd's own, for sources with no published scheme


def check(scheme: Auth, secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """Raise `Unauthorized` unless the request is authenticated under `scheme` with `secret`."""
    scheme.check(secret, body, headers)
