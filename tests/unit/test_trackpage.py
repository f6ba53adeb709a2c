"""The public tracking page: language choice, translations, time zones and escaping."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dashboards import trackpage
from trackd.codes import Milestone, Status

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
    assert trackpage.pick_language(header) == expected


def test_catalog_translates_every_code() -> None:
    assert set(I18N) == set(trackpage.LANGUAGES)
    labels = set(I18N["en"]["label"])
    for language, text in I18N.items():
        assert set(text["status"]) == {s.value for s in Status}, language
        assert set(text["milestone"]) == {m.value for m in Milestone}, language
        assert set(text["label"]) == labels, language
        assert len(text["format"]["weekdays"]) == 7
        assert len(text["format"]["months"]) == 12


@pytest.mark.parametrize("lang", ["en", "zh-Hans", "es", "de", "fr"])
def test_translated_status_and_milestones_appear(lang: str) -> None:
    page = trackpage.render(_track(), lang, "UTC")
    text = I18N[lang]
    assert f'<html lang="{lang}">' in page
    assert text["status"]["in_transit"] in page
    assert text["milestone"]["departed"] in page
    assert text["milestone"]["picked_up"] in page
    assert text["label"]["timeline"].replace("'", "&#x27;") in page


def test_chinese_page_uses_chinese_status() -> None:
    page = trackpage.render(_track(status="customs", substatus="customs.hold"), "zh-Hans", "Asia/Shanghai")
    assert "清关中" in page
    assert "海关扣留" in page
    assert "Maersk" in page


def test_times_are_converted_to_the_zone() -> None:
    shanghai = trackpage.render(_track(), "en", "Asia/Shanghai")
    # 2024-05-01T12:00Z is 20:00 in Shanghai (UTC+8); 2024-05-03T23:30Z is 07:30 the next day.
    assert "Wed, May 1, 2024, 20:00" in shanghai
    assert "Sat, May 4, 2024, 07:30" in shanghai
    assert 'datetime="2024-05-01T20:00:00+08:00"' in shanghai
    assert "Asia/Shanghai" in shanghai

    new_york = trackpage.render(_track(), "de", "America/New_York")
    # EDT (UTC-4) in May.
    assert "Mi., 1. Mai 2024, 08:00" in new_york
    assert "Fr., 3. Mai 2024, 19:30" in new_york


def test_unknown_zone_falls_back_to_utc() -> None:
    page = trackpage.render(_track(), "en", "Not/AZone")
    assert "Wed, May 1, 2024, 12:00" in page
    assert "Times shown in UTC" in page


def test_eta_window_and_promised_date() -> None:
    page = trackpage.render(_track(), "en", "UTC")
    assert "Estimated delivery" in page
    assert "Mon, Jun 10, 2024, 08:00" in page
    assert "Between" in page
    assert "Sun, Jun 9, 2024, 08:00" in page
    assert "Wed, Jun 12, 2024, 08:00" in page
    assert "Expected by the promised date" in page
    late = trackpage.render(_track(eta={**_track()["eta"], "predicted_at": "2024-06-11T12:00:00Z"}), "en", "UTC")
    assert "Expected after the promised date" in late


def test_delivered_shows_delivery_time_not_eta() -> None:
    milestones = [*_track()["milestones"], {"code": "delivered", "occurred_at": "2024-06-10T09:15:00Z"}]
    page = trackpage.render(_track(status="delivered", milestones=milestones), "fr", "Europe/Paris")
    assert "Livré" in page
    assert "lun. 10 juin 2024, 11:15" in page
    assert "Livraison estimée" not in page


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
    page = trackpage.render(track, "en", "UTC")
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
    page = trackpage.render(_track(), "en", "UTC")
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
    )
    assert "Pendiente" in page
    assert "Todavía no hay actualizaciones." in page
    assert 'id="route-map"' not in page
    assert "<script" not in page
    assert "leaflet" not in page
