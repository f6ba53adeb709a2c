"""`Scheme`'s general parts, from bytes: older header names read as fallbacks, and a signed message and
key derived from the body and the secret."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from ingest.signatures import Scheme
from trackd.errors import Unauthorized


def b64(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def test_a_fallback_header_is_read_when_the_header_is_absent_or_blank() -> None:
    scheme = Scheme("X-Sig", "", "base64", fallbacks=("old-sig",))
    good, body = b64(b"k", b"body"), b"body"
    for headers in ({"X-Sig": good}, {"old-sig": good}, {"X-Sig": " ", "old-sig": good}):
        scheme.check("k", body, headers)
    with pytest.raises(Unauthorized, match="bad X-Sig signature"):
        scheme.check("k", body, {"X-Sig": b64(b"k", b"other"), "old-sig": good})  # the header wins
    with pytest.raises(Unauthorized, match="missing X-Sig signature header"):
        scheme.check("k", body, {"other-sig": good})


def test_a_derived_message_and_key_are_what_is_signed() -> None:
    def signed(secret: str, body: bytes) -> tuple[bytes, bytes]:
        if not body.startswith(b"v1:"):
            raise Unauthorized("not a v1 body")
        return secret[:4].encode(), body[3:]

    scheme = Scheme("X-Sig", "sha256=", "hex", signed=signed)
    expected = "sha256=" + hmac.new(b"abcd", b"payload", hashlib.sha256).hexdigest()
    assert scheme.sign("abcdefgh", b"v1:payload") == expected
    scheme.check("abcdefgh", b"v1:payload", {"X-Sig": expected})
    with pytest.raises(Unauthorized, match="bad X-Sig"):
        scheme.check(
            "abcdefgh", b"v1:payload", {"X-Sig": Scheme("X-Sig", "sha256=", "hex").sign("abcdefgh", b"v1:payload")}
        )
    with pytest.raises(Unauthorized, match="not a v1 body"):
        scheme.check("abcdefgh", b"v2:payload", {"X-Sig": expected})
