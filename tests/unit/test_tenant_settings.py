"""Validation of a tenant's settings (`trackd tenant set`): branding and retention."""

from __future__ import annotations

from typing import Any

import pytest

from trackd import tenant_store
from trackd.errors import ConfigError
from trackd.tenant_store import Brand, TenantSettings, check_settings


def test_a_brand_keeps_valid_values_normalized() -> None:
    brand = Brand(" Acme ", "https://cdn.acme.example:8443/l.png?v=2", "#0A7D33", "http://acme.example/help")
    assert brand.to_dict() == {
        "name": "Acme",
        "logo_url": "https://cdn.acme.example:8443/l.png?v=2",
        "colour": "#0a7d33",
        "support_url": "http://acme.example/help",
    }
    assert Brand().to_dict() == {"name": None, "logo_url": None, "colour": None, "support_url": None}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"brand_colour": "green"}, "--brand-colour: a colour as #RRGGBB, got 'green'"),
        ({"brand_colour": "#12345"}, "--brand-colour"),
        ({"brand_colour": "#1234567"}, "--brand-colour"),
        ({"brand_name": "   "}, "--brand-name: 1 to 80 characters"),
        ({"brand_name": "x" * 81}, "--brand-name"),
        ({"brand_logo_url": "javascript:alert(1)"}, "--brand-logo: an absolute http:// or https:// URL"),
        ({"brand_logo_url": "//cdn.example/logo.png"}, "--brand-logo"),
        ({"brand_logo_url": "HTTPS://cdn.example/logo.png"}, "--brand-logo"),
        ({"brand_logo_url": "https://cdn.example/a b.png"}, "--brand-logo"),
        ({"brand_logo_url": 'https://cdn.example/"onerror=x'}, "--brand-logo"),
        ({"brand_logo_url": "https://cdn.example:99999/l.png"}, "--brand-logo"),
        ({"brand_logo_url": "https://" + "a" * 2048 + ".example"}, "--brand-logo: at most 2048 characters"),
        ({"support_url": "ftp://acme.example"}, "--support-url"),
        ({"support_url": "https://a.example;script-src/"}, "--support-url"),
        ({"support_url": "https://"}, "--support-url"),
        ({"retention_days": 0}, "--retention-days: 1 to 36500"),
        ({"retention_days": 36501}, "--retention-days"),
        ({"colour": "#000000"}, "unknown tenant settings: colour"),
    ],
)
def test_bad_settings_are_refused_naming_the_option(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_settings(changes)
    assert message in refused.value.detail


def test_good_settings_and_clearing_pass() -> None:
    check_settings({"brand_name": "Acme", "brand_colour": "#ffffff", "retention_days": 30})
    check_settings({"brand_logo_url": None, "retention_days": None})  # None clears
    assert TenantSettings(Brand(), 36500).retention_days == 36500


@pytest.mark.parametrize(
    ("url", "valid"),
    [
        ("https://cdn.acme.example/l.png?v=1&x=2#top", True),
        ("http://127.0.0.1:8080/logo.svg", True),
        ("https://Acme.example:65535", True),
        ("https://a.example/x?y=`{}[]|^~%20", True),
        ("https://a_b.example/", False),
        ("https://a.example/\\l.png", False),
        ("https://a.example:99999/", False),
        ("https://a.example:65536/", False),
        ("https://a.example:/", False),
        ("https://user:pw@a.example/", False),
        ("https://[::1]/", False),
        ("https://a.example/é.png", False),
        ("https://a.example/l.png\n", False),
        ("https://a.example/\x7f", False),
        ("https://a.example" + "/a" * 1016, False),  # 2049 characters
    ],
)
def test_web_urls_follow_one_grammar(url: str, valid: bool) -> None:
    assert (tenant_store.valid_web_url(url) == url) is valid
    assert (tenant_store.web_origin(url) is not None) is valid


def test_names_and_colours_are_normalized_or_refused() -> None:
    assert tenant_store.valid_name(" Acme Parcels\t") == "Acme Parcels"
    assert tenant_store.valid_name("Ac\x1cme") is None
    assert tenant_store.valid_name("\x1c") is None
    assert tenant_store.valid_colour("#0A7D33") == "#0a7d33"
    assert tenant_store.valid_colour("#0a7d33\n") is None
    with pytest.raises(ConfigError):
        Brand(colour="#0a7d33\n")


def test_a_lenient_brand_leaves_out_what_is_invalid_and_says_which() -> None:
    brand, dropped = Brand.lenient("Acme", "https://a_b.example/l.png", "#ABCDEF", "https://a.example:99999/")
    assert brand == Brand("Acme", None, "#abcdef", None)
    assert dropped == ["logo_url", "support_url"]
    assert Brand.lenient(None, None, None, None) == (Brand(), [])
