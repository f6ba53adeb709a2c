"""`HeaderSecret`: the ingest secret in a header, checked in constant time; every miss is Unauthorized."""

from __future__ import annotations

import pytest

from ingest import signatures, sources
from ingest.signatures import HeaderSecret
from trackd.errors import Unauthorized

BEARER = HeaderSecret("Authorization", "Bearer ")
DHL = HeaderSecret("DHL-API-Key")


@pytest.mark.parametrize(
    ("scheme", "headers", "why"),
    [
        (BEARER, {}, "missing Authorization header"),
        (BEARER, {"Authorization": "   "}, "missing Authorization header"),
        (BEARER, {"Authorization": "is_s3cret"}, "Authorization must be 'Bearer <ingest secret>'"),
        (BEARER, {"Authorization": "Basic is_s3cret"}, "Authorization must be 'Bearer <ingest secret>'"),
        (BEARER, {"Authorization": "Bearer is_s3cre"}, "bad Authorization secret"),
        (BEARER, {"Authorization": "Bearer is_s3cretX"}, "bad Authorization secret"),
        (BEARER, {"Authorization": "Bearer IS_S3CRET"}, "bad Authorization secret"),
        (DHL, {"DHL-API-Key": "other"}, "bad DHL-API-Key secret"),
        (DHL, {"Authorization": "Bearer is_s3cret"}, "missing DHL-API-Key header"),
    ],
)
def test_every_miss_is_unauthorized(scheme: HeaderSecret, headers: dict[str, str], why: str) -> None:
    with pytest.raises(Unauthorized) as err:
        signatures.check(scheme, "is_s3cret", b"{}", headers)
    assert err.value.detail == why


def test_the_secret_matches_in_any_header_case_and_the_body_is_not_covered() -> None:
    signatures.check(DHL, "is_s3cret", b"{}", {"dhl-api-key": "is_s3cret"})
    signatures.check(DHL, "is_s3cret", b"anything else", {"DHL-API-Key": " is_s3cret"})
    assert DHL.sign("is_s3cret", b"{}") == "is_s3cret"


def test_hmac_sources_keep_their_schemes_and_the_new_ones_declare_header_secrets() -> None:
    declared = {name: type(a.signature).__name__ for name, a in sources.ADAPTERS.items() if a.webhook}
    expected = {
        "native": "Scheme",
        "dcsa": "Scheme",
        "onerecord": "Scheme",
        "x12-214": "Scheme",
        "aftership": "Scheme",
        "easypost": "Scheme",
        "traccar": "HeaderSecret",
        "dhl": "HeaderSecret",
    }
    assert {name: declared[name] for name in expected} == expected
    assert sources.get("dhl").signature == DHL
