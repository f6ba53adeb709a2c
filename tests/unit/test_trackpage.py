"""The public tracking page: language choice, translations, time zones, progress steps, the
delivery estimate as a buyer reads it, branding, the page of an ended link, and escaping."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dashboards import trackpage, trackpage_journey, trackpage_text
from trackd.codes import Milestone, Status

NOW = datetime(2024, 5, 5, 12, 0, tzinfo=UTC)
NOW_ISO = NOW.isoformat()
I18N = json.loads((Path(trackpage.__file__).with_name("i18n.json")).read_text("utf-8"))


def _track(**overrides: Any) -> dict[str, Any]:
    track: dict[str, Any] = {
        "tracking_number": "MSKU1234565",
        "carrier": "Maersk",
        "status": "in_transit",
        "substatus": None,
        "milestones": [
            {
                "code": "picked_up",
                "occurred_at": "2024-05-01T12:00:00Z",
                "location": {"name": "Shanghai", "country": "CN", "unlocode": "CNSHA"},
            },
            {
                "code": "departed",
                "occurred_at": "2024-05-03T23:30:00+00:00",
                "location": {"name": "Yangshan", "country": "CN"},
            },
        ],
        "eta": {
            "predicted_at": "2024-06-10T08:00:00Z",
            "earliest": "2024-06-09T08:00:00Z",
            "latest": "2024-06-12T08:00:00Z",
            "carrier_eta": "2024-06-11T00:00:00Z",
            "promised_at": "2024-06-11T00:00:00Z",
            "method": "lane-history",
            "computed_at": "2024-05-04T00:00:00Z",
        },
        "route": [[121.47, 31.23], [122.5, 30.6], [125.0, 28.0]],
        "destination": {"name": "Rotterdam", "country": "NL", "lat": 51.95, "lon": 4.14},
        "updated_at": "2024-05-04T00:00:00Z",
    }
    track.update(overrides)
    return track


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("de-DE,de;q=0.9,en;q=0.8", "de"),
        ("en-US,en;q=0.9", "en"),
        ("fr-CA", "fr"),
        ("es-419,es;q=0.9", "es"),
        ("zh", "zh-Hans"),
        ("zh-CN", "zh-Hans"),
        ("zh-Hans", "zh-Hans"),
        ("zh-SG,en;q=0.5", "zh-Hans"),
        ("zh-Hans-CN;q=0.8", "zh-Hans"),
        ("ja,ko;q=0.9", "en"),
        ("ja,fr;q=0.4", "fr"),
        ("*", "en"),
        ("zh-TW,es;q=0.3", "es"),
        ("en;q=0.1,fr;q=0.9,de;q=0.5", "fr"),
        ("en;q=0.5,de;q=0.5", "en"),
        ("de;q=0.5,en;q=0.5", "de"),
        ("fr;q=0,es", "es"),
        ("fr;q=0", "en"),
        ("de;q=abc,es;q=0.2", "es"),
        (" FR-fr ; q=0.7 , xx", "fr"),
        (";;,,", "en"),
    ],
)
def test_pick_language_honours_q_values(header: str | None, expected: str) -> None:
    assert trackpage_text.pick_language(header) == expected


def test_catalog_translates_every_code() -> None:
    assert set(I18N) == set(trackpage_text.LANGUAGES)
    labels = set(I18N["en"]["label"])
    for language, text in I18N.items():
        assert set(text["status"]) == {s.value for s in Status}, language
        assert set(text["milestone"]) == {m.value for m in Milestone}, language
        assert set(text["label"]) == labels, language
        assert set(text["step"]) == set(trackpage_journey.STEPS), language
        assert set(text["format"]) == set(I18N["en"]["format"]), language
        assert len(text["format"]["weekdays"]) == 7
        assert len(text["format"]["months"]) == 12


@pytest.mark.parametrize("lang", ["en", "zh-Hans", "es", "de", "fr"])
def test_translated_status_and_milestones_appear(lang: str) -> None:
    page = trackpage.render(_track(), lang, "UTC", NOW)
    text = I18N[lang]
    assert f'<html lang="{lang}">' in page
    assert text["status"]["in_transit"] in page
    assert text["milestone"]["departed"] in page
    assert text["milestone"]["picked_up"] in page
    assert text["label"]["timeline"].replace("'", "&#x27;") in page


def test_chinese_page_uses_chinese_status() -> None:
    page = trackpage.render(_track(status="customs", substatus="customs.hold"), "zh-Hans", "Asia/Shanghai", NOW)
    assert "清关中" in page
    assert "海关扣留" in page
    assert "Maersk" in page


def test_times_are_converted_to_the_zone() -> None:
    shanghai = trackpage.render(_track(), "en", "Asia/Shanghai", NOW)
    # 2024-05-01T12:00Z is 20:00 in Shanghai (UTC+8); 2024-05-03T23:30Z is 07:30 the next day.
    assert "Wed, May 1, 2024, 20:00" in shanghai
    assert "Sat, May 4, 2024, 07:30" in shanghai
    assert 'datetime="2024-05-01T20:00:00+08:00"' in shanghai
    assert "Times shown in Shanghai time (CST)" in shanghai
    assert "Asia/Shanghai" not in shanghai

    new_york = trackpage.render(_track(), "de", "America/New_York", NOW)
    # EDT (UTC-4) in May.
    assert "Mi., 1. Mai 2024, 08:00" in new_york
    assert "Fr., 3. Mai 2024, 19:30" in new_york
    assert "Zeitangaben: Ortszeit New York (EDT)" in new_york


@pytest.mark.parametrize(
    ("lang", "zone", "now", "expected"),
    [
        ("en", "America/New_York", "2024-01-15T12:00:00Z", "New York time (EST)"),
        ("en", "America/New_York", "2024-07-15T12:00:00Z", "New York time (EDT)"),
        ("de", "Asia/Singapore", "2024-07-15T12:00:00Z", "Ortszeit Singapur (UTC+8)"),
        ("es", "America/New_York", "2024-01-15T12:00:00Z", "hora de Nueva York (EST)"),
        ("fr", "Asia/Kolkata", "2024-01-15T12:00:00Z", "heure de Calcutta (IST)"),
        ("zh-Hans", "Europe/Amsterdam", "2024-01-15T12:00:00Z", "阿姆斯特丹时间 (CET)"),
        ("en", "Asia/Kathmandu", "2024-01-15T12:00:00Z", "Kathmandu time (UTC+5:45)"),
        ("en", "Etc/GMT+5", "2024-01-15T12:00:00Z", "UTC-5"),
        ("en", "UTC", "2024-01-15T12:00:00Z", "Times shown in UTC"),
    ],
)
def test_time_zones_are_named_as_people_name_them(lang: str, zone: str, now: str, expected: str) -> None:
    page = trackpage.render(_track(), lang, zone, datetime.fromisoformat(now))
    footer = page.split('<p id="zone">', 1)[1].split("</p>", 1)[0]
    assert expected in footer
    assert zone not in footer or zone == "UTC"


def test_unknown_zone_falls_back_to_utc() -> None:
    page = trackpage.render(_track(), "en", "Not/AZone", NOW)
    assert "Wed, May 1, 2024, 12:00" in page
    assert "Times shown in UTC" in page


def _eta_line(page: str) -> str:
    found = re.search(r'<p class="big" id="eta-day">(.*?)</p>', page)
    assert found is not None
    return re.sub(r"<[^>]+>", "", found.group(1))


def _verdict(page: str) -> str | None:
    found = re.search(r'data-verdict="(\w+)"', page)
    return found.group(1) if found else None


def test_eta_reads_as_days_between_two_dates() -> None:
    page = trackpage.render(_track(), "en", "UTC", NOW)
    assert "Estimated delivery" in page
    assert _eta_line(page) == "Between Sun, Jun 9 and Wed, Jun 12"  # days, no hours, no year of this year
    assert "08:00" not in page.split('id="eta-day"', 1)[1].split("</section>", 1)[0]
    assert "Promised by Tue, Jun 11" in re.sub(r"<[^>]+>", "", page)
    assert "promised date" not in page
    next_year = trackpage.render(_track(), "en", "UTC", datetime(2023, 12, 1, tzinfo=UTC))
    assert _eta_line(next_year) == "Between Sun, Jun 9, 2024 and Wed, Jun 12, 2024"
    german = trackpage.render(_track(), "de", "UTC", NOW)
    assert _eta_line(german) == "Zwischen So., 9. Juni und Mi., 12. Juni"


def test_a_narrow_estimate_is_one_day_with_its_hours() -> None:
    eta = {**_track()["eta"], "earliest": "2024-05-06T13:00:00Z", "latest": "2024-05-06T17:30:00Z"}
    page = trackpage.render(_track(eta=eta), "en", "America/New_York", NOW)
    assert _eta_line(page) == "Tomorrow · Mon, May 6"  # NOW is Sun, May 5 in New York
    assert re.sub(r"<[^>]+>", "", page).count("Between 09:00 and 13:30") == 1
    wide_day = {**eta, "earliest": "2024-05-06T05:00:00Z", "latest": "2024-05-07T03:00:00Z"}
    page = trackpage.render(_track(eta=wide_day), "fr", "America/New_York", NOW)
    assert _eta_line(page) == "Demain · lun. 6 mai"
    assert "Entre 01:00" not in re.sub(r"<[^>]+>", "", page)  # a whole day: no hours


@pytest.mark.parametrize(
    ("eta", "now", "expected"),
    [
        ({"p_late": 0.05}, NOW_ISO, "on_time"),
        ({"p_late": 0.5}, NOW_ISO, "might_be_late"),
        ({"p_late": 0.9}, NOW_ISO, "late"),
        # p_late wins while the promise (Jun 11) is still ahead
        ({"p_late": 0.1, "predicted_at": "2024-06-11T12:00:00Z"}, NOW_ISO, "on_time"),
        ({"p_late": 0.05}, "2024-06-12T00:00:00Z", "late"),  # the promise has passed: p_late is stale
        ({}, NOW_ISO, "might_be_late"),  # no p_late: the window (to Jun 12) crosses the promise (Jun 11)
        ({"p_late": None, "latest": "2024-06-10T20:00:00Z"}, NOW_ISO, "on_time"),
        ({"p_late": "high", "predicted_at": "2024-06-11T12:00:00Z"}, NOW_ISO, "late"),
        ({}, "2024-06-11T01:00:00Z", "late"),  # the promised time has passed
        ({"promised_at": None}, NOW_ISO, None),
        ({"promised_at": None, "p_late": True}, NOW_ISO, None),
    ],
)
def test_on_time_might_be_late_or_late(eta: dict[str, Any], now: str, expected: str | None) -> None:
    track = _track(eta={**_track()["eta"], **eta})
    page = trackpage.render(track, "en", "UTC", datetime.fromisoformat(now))
    assert _verdict(page) == expected
    labels = {"on_time": "On time", "might_be_late": "Might be late", "late": "Running late"}
    if expected is not None:
        assert f">{labels[expected]}</p>" in page


def test_a_passed_promise_outranks_a_stale_p_late() -> None:
    promised = datetime(2024, 6, 11, tzinfo=UTC)
    eta = {"p_late": 0.05, "promised_at": promised.isoformat()}
    assert trackpage_journey.punctuality(eta, None, None, promised + timedelta(days=1)) == "late"
    assert trackpage_journey.punctuality(eta, None, None, promised - timedelta(days=1)) == "on_time"
    assert trackpage_journey.punctuality({"p_late": 0.05}, None, None, promised + timedelta(days=1)) == "on_time"


@pytest.mark.parametrize(
    ("status", "substatus", "codes", "current", "problem"),
    [
        ("pending", None, [], "ordered", False),
        ("info_received", None, ["booked"], "booked", False),
        ("in_transit", None, ["booked", "picked_up", "departed"], "in_transit", False),
        ("customs", "customs.hold", ["departed", "customs_hold"], "customs", True),
        ("in_transit", "customs.released", ["departed", "customs_released"], "customs", False),
        ("out_for_delivery", None, ["departed", "out_for_delivery"], "out_for_delivery", False),
        ("failed_attempt", None, ["departed", "out_for_delivery", "delivery_attempted"], "out_for_delivery", True),
        ("delivered", None, ["departed", "delivered"], "delivered", False),
        ("exception", None, ["departed", "exception"], "in_transit", True),
    ],
)
def test_progress_steps_follow_status_and_milestones(
    status: str, substatus: str | None, codes: list[str], current: str, problem: bool
) -> None:
    milestones = [{"code": c, "occurred_at": f"2024-05-{i + 1:02d}T12:00:00Z"} for i, c in enumerate(codes)]
    page = trackpage.render(_track(status=status, substatus=substatus, milestones=milestones), "en", "UTC", NOW)
    steps = re.findall(r'<li class="step ([a-z ]+)" data-step="(\w+)"', page)
    assert [name for _, name in steps] == list(trackpage_journey.STEPS)
    index = trackpage_journey.STEPS.index(current)
    assert [state for state, _ in steps] == ["done"] * index + ["current problem" if problem else "current"] + [
        "todo"
    ] * (len(trackpage_journey.STEPS) - index - 1)
    assert page.count('aria-current="step"') == 1
    assert f'data-step="{current}" aria-current="step"' in page


def test_steps_carry_the_day_reached_and_skip_customs_at_home() -> None:
    milestones = [
        {"code": "booked", "occurred_at": "2024-05-01T12:00:00Z"},
        {"code": "picked_up", "occurred_at": "2024-05-02T12:00:00Z"},
        {"code": "departed", "occurred_at": "2024-05-03T12:00:00Z"},
    ]
    domestic = _track(
        milestones=milestones,
        origin={"name": "Lyon", "country": "FR"},
        destination={"name": "Paris", "country": "FR", "lat": 48.85, "lon": 2.35},
    )
    page = trackpage.render(domestic, "en", "UTC", NOW)
    assert re.findall(r'data-step="(\w+)"', page) == [
        "ordered",
        "booked",
        "in_transit",
        "out_for_delivery",
        "delivered",
    ]
    in_transit = page.split('data-step="in_transit"', 1)[1].split("</li>", 1)[0]
    assert '<time datetime="2024-05-02">Thu, May 2</time>' in in_transit  # the first milestone of the step
    abroad = trackpage.render(
        _track(milestones=milestones, origin={"name": "Shanghai", "country": "CN"}), "en", "UTC", NOW
    )
    assert 'data-step="customs"' in abroad


def test_origin_and_destination_with_countries_in_the_language() -> None:
    track = _track(origin={"name": "Shanghai", "country": "CN"})
    page = trackpage.render(track, "de", "UTC", NOW)
    assert '<b id="origin">Shanghai, China</b>' in page
    assert '<b id="destination">Rotterdam, Niederlande</b>' in page
    zh = trackpage.render(track, "zh-Hans", "UTC", NOW)
    assert '<b id="destination">Rotterdam, 荷兰</b>' in zh
    assert 'id="origin"' not in trackpage.render(_track(), "en", "UTC", NOW)  # none given: only the destination


def test_branding_name_logo_colour_and_support_link() -> None:
    brand = {
        "name": "Acme & Sons",
        "logo_url": "https://cdn.acme.example:8443/logo.png?v=1&x=2",
        "colour": "#FFCC00",
        "support_url": "https://acme.example/help",
    }
    page = trackpage.render(_track(brand=brand), "en", "UTC", NOW)
    assert ":root{--brand:#ffcc00;--brand-ink:#111827}" in page  # dark text on a light colour
    assert '<img class="logo" src="https://cdn.acme.example:8443/logo.png?v=1&amp;x=2" alt="Acme &amp; Sons"' in page
    assert '<a id="support" href="https://acme.example/help"' in page
    assert "Contact Acme &amp; Sons" in page
    assert "<title>Acme &amp; Sons · Shipment tracking · MSKU1234565</title>" in page
    dark = trackpage.render(_track(brand={"name": "Night", "colour": "#101040"}), "en", "UTC", NOW)
    assert "--brand-ink:#ffffff" in dark
    assert '<span class="brand-name">Night</span>' in dark
    plain = trackpage.render(_track(), "en", "UTC", NOW)
    assert f"--brand:{trackpage.DEFAULT_ACCENT}" in plain
    assert 'id="brand"' not in plain
    assert 'id="support"' not in plain
    policy = trackpage.content_security_policy(brand["logo_url"])
    assert "img-src 'self' data: https://cdn.acme.example:8443;" in policy
    assert "img-src 'self' data:;" in trackpage.content_security_policy(None)


def test_brand_values_that_could_break_out_are_dropped() -> None:
    brand = {
        "name": "<b>x</b>",
        "logo_url": "javascript:alert(1)",
        "colour": "red;}body{color:red}",
        "support_url": 'https://a.example/"onmouseover=alert(1)',
    }
    page = trackpage.render(_track(brand=brand), "en", "UTC", NOW)
    assert "<b>x</b>" not in page
    assert "javascript:" not in page
    assert "red;}" not in page
    assert "onmouseover" not in page
    assert f"--brand:{trackpage.DEFAULT_ACCENT}" in page
    assert trackpage.content_security_policy("https://a.example;script-src *") == trackpage.content_security_policy()


@pytest.mark.parametrize(
    ("brand", "kept", "origin"),
    [
        ({"logo_url": "https://a_b.example/l.png"}, {}, None),
        ({"logo_url": "https://a.example/\\l.png"}, {}, None),
        ({"logo_url": "https://a.example:99999/l.png"}, {}, None),
        ({"logo_url": "https://user:pw@a.example/l.png"}, {}, None),
        ({"logo_url": "https://CDN.Acme.example:0443/l.png"}, {"logo_url": True}, "https://cdn.acme.example:443"),
        ({"name": "x" * 81, "colour": "#0A7D33\n"}, {}, None),
        ({"name": " Acme ", "colour": "#0A7D33"}, {"name": "Acme", "colour": "#0a7d33"}, None),
    ],
)
def test_the_page_keeps_only_brand_values_the_settings_accept(
    brand: dict[str, Any], kept: dict[str, Any], origin: str | None
) -> None:
    look = trackpage.Brand.of(brand)
    expected = {key: (brand[key] if value is True else value) for key, value in kept.items()}
    assert {key: value for key, value in asdict(look).items() if value is not None} == expected
    policy = trackpage.content_security_policy(brand.get("logo_url"))
    assert f"img-src 'self' data:{f' {origin}' if origin else ''};" in policy


@pytest.mark.parametrize("lang", ["en", "zh-Hans", "es", "de", "fr"])
def test_ended_and_unknown_link_pages_are_localized(lang: str) -> None:
    text = I18N[lang]["label"]
    unknown = trackpage.render_ended(lang, expired=False)
    assert f'<html lang="{lang}">' in unknown
    assert text["not_found_title"] in unknown
    assert 'data-kind="not_found"' in unknown
    assert "<script" not in unknown
    ended = trackpage.render_ended(lang, expired=True, brand={"name": "Acme", "colour": "#0a7d33"})
    assert text["ended_title"] in ended
    assert '<span class="brand-name">Acme</span>' in ended
    assert "--brand:#0a7d33" in ended
    assert "script-src 'none'" in trackpage.content_security_policy(None, scripts=False)


def test_delivered_shows_delivery_time_not_eta() -> None:
    milestones = [*_track()["milestones"], {"code": "delivered", "occurred_at": "2024-06-10T09:15:00Z"}]
    page = trackpage.render(_track(status="delivered", milestones=milestones), "fr", "Europe/Paris", NOW)
    assert "Livré" in page
    assert "lun. 10 juin 2024, 11:15" in page
    assert "Livraison estimée" not in page
    assert 'data-step="delivered" aria-current="step"' in page


def test_malicious_values_are_escaped() -> None:
    evil = '<script>alert("x")</script>'
    track = _track(
        tracking_number=evil,
        carrier='"><img src=x onerror=alert(1)>',
        status="<b>weird</b>",
        milestones=[{"code": "<i>code</i>", "occurred_at": "nonsense", "location": {"name": evil}}],
        destination={"name": "</script><script>alert(2)</script>", "country": "NL", "lat": 1, "lon": 2},
        route=[[1, 2], ["</script>", 3]],
    )
    page = trackpage.render(track, "en", "UTC", NOW)
    assert evil not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<img" not in page
    assert "<b>weird</b>" not in page
    assert "<i>code</i>" not in page
    assert "alert(2)</script>" not in page
    # Only the page's own scripts open or close a script element.
    opened = re.findall(r"<script\b[^>]*>", page)
    assert len(opened) == len(re.findall(r"</script>", page)) == 4


def test_route_map_only_same_origin_assets() -> None:
    page = trackpage.render(_track(), "en", "UTC", NOW)
    assert 'id="route-map"' in page
    assert "/static/vendor/leaflet/leaflet.js" in page
    assert "/static/vendor/world-atlas/countries-110m.json" in page
    assert "http://" not in page
    assert "https://" not in page
    data = re.search(r'<script type="application/json" id="route-data">(.*?)</script>', page)
    assert data is not None
    decoded = json.loads(data.group(1))
    assert decoded["route"][0] == [31.23, 121.47]
    assert decoded["destination"] == [51.95, 4.14]
    assert decoded["colour"] == trackpage.DEFAULT_ACCENT


def test_minimal_track_renders_without_map_or_eta() -> None:
    page = trackpage.render(
        {
            "tracking_number": "1Z999",
            "carrier": None,
            "status": "pending",
            "milestones": [],
            "eta": None,
            "route": [],
            "destination": None,
            "updated_at": None,
        },
        "es",
        "Europe/Madrid",
        NOW,
    )
    assert "Pendiente" in page
    assert "Todavía no hay actualizaciones." in page
    assert 'id="route-map"' not in page
    assert "<script" not in page
    assert "leaflet" not in page
