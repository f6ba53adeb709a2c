"""The buyer-facing wording of the public tracking page: which language a reader gets and how the
page says things in it.

`pick_language` turns an `Accept-Language` header into one of the supported languages, `catalog`
holds the bundled translations (read once from `i18n.json`), and `PageText` formats for one
language and time zone: labels, status and milestone names, days and times, countries and places
(CLDR names through babel) and the time zone as a person names it.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import get_timezone_location

LANGUAGES: tuple[str, ...] = ("en", "zh-Hans", "es", "de", "fr")
DEFAULT_LANGUAGE = "en"

# Chinese tags read in Simplified script; Traditional ones (zh-Hant, zh-TW, zh-HK, zh-MO) are
# not served Simplified text, they fall through to the next preference.
_SIMPLIFIED_CHINESE = frozenset({"zh", "zh-cn", "zh-sg", "zh-my", "zh-hans"})
_TRADITIONAL_CHINESE = frozenset({"zh-hant", "zh-tw", "zh-hk", "zh-mo"})
_ABBREVIATION = re.compile(r"^[A-Z]{2,5}$")


@cache
def catalog() -> dict[str, Any]:
    """All translations, keyed by language (`en`, `zh-Hans`, ...), read once from `i18n.json`."""
    data: dict[str, Any] = json.loads(Path(__file__).with_name("i18n.json").read_text("utf-8"))
    return data


def _match(tag: str) -> str | None:
    """The supported language a single language tag asks for, if any."""
    tag = tag.strip().lower().replace("_", "-")
    if tag in _SIMPLIFIED_CHINESE or tag.startswith("zh-hans-"):
        return "zh-Hans"
    if tag in _TRADITIONAL_CHINESE or tag.startswith("zh-hant-"):
        return None
    if tag.startswith("zh-"):
        # zh-CN-x-..., zh-SG-..., and other region variants written with a script-less region
        region = tag.split("-")[1]
        return None if region in {"tw", "hk", "mo"} else "zh-Hans"
    primary = tag.split("-")[0]
    for language in LANGUAGES:
        if language.lower() == primary:
            return language
    return None


def pick_language(accept_language: str | None) -> str:
    """The best supported language for an `Accept-Language` header (RFC 9110 §12.5.4).

    Ranges are ranked by their q-value (default 1, ties keep header order); `q=0` means "not
    this one"; `*` accepts the default. Anything malformed is skipped. Falls back to English.
    """
    if not accept_language:
        return DEFAULT_LANGUAGE
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept_language.split(",")):
        parts = [part.strip() for part in item.split(";")]
        tag, quality = parts[0], 1.0
        if not tag:
            continue
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = -1.0
        if not 0.0 < quality <= 1.0 or math.isnan(quality):
            continue
        ranked.append((-quality, position, tag))
    for _, _, tag in sorted(ranked):
        if tag == "*":
            return DEFAULT_LANGUAGE
        language = _match(tag)
        if language is not None:
            return language
    return DEFAULT_LANGUAGE


def _zone(tz_name: str) -> tzinfo:
    try:
        return ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


@cache
def _locale(lang: str) -> Locale:
    return Locale.parse(lang.replace("-", "_"))


def parse_time(value: Any) -> datetime | None:
    """An aware datetime from an ISO 8601 string or epoch seconds; naive times are UTC."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _offset_name(offset: timedelta | None) -> str:
    """`UTC`, `UTC+8`, `UTC-3:30`."""
    minutes = round(offset.total_seconds() / 60) if offset is not None else 0
    if minutes == 0:
        return "UTC"
    sign, minutes = ("+" if minutes > 0 else "-"), abs(minutes)
    return f"UTC{sign}{minutes // 60}" + (f":{minutes % 60:02d}" if minutes % 60 else "")


class PageText:
    """Formatting helpers bound to one language, one time zone and, when known, today."""

    def __init__(self, lang: str, tz_name: str, now: datetime | None = None) -> None:
        translations = catalog()
        self.lang = lang if lang in translations else DEFAULT_LANGUAGE
        self.text: Mapping[str, Any] = translations[self.lang]
        self.zone = _zone(tz_name)
        self.zone_id = tz_name if self.zone is not UTC else "UTC"
        self.now = now
        self.today = self.local(now).date() if now is not None else None

    def label(self, key: str, **values: str) -> str:
        """A page label, with `values` (already HTML) put into its `{placeholders}`."""
        template = html.escape(str(self.text["label"][key]))
        for name, value in values.items():
            template = template.replace("{" + name + "}", value)
        return template

    def status(self, status: Any) -> str:
        names: Mapping[str, str] = self.text["status"]
        return html.escape(names.get(str(status), str(status or self.text["label"]["unknown"])))

    def substatus(self, substatus: Any) -> str | None:
        names: Mapping[str, str] = self.text["substatus"]
        name = names.get(str(substatus)) if substatus else None
        return html.escape(name) if name else None

    def milestone(self, code: Any) -> str:
        names: Mapping[str, str] = self.text["milestone"]
        return html.escape(names.get(str(code), str(code)))

    def step(self, step: str) -> str:
        return html.escape(str(self.text["step"][step]))

    def local(self, moment: datetime) -> datetime:
        try:
            return moment.astimezone(self.zone)
        except OverflowError:  # at the edge of the calendar (year 1 or 9999): shown in its own offset
            return moment

    def _format(self, key: str, local: datetime | date) -> str:
        fmt: Mapping[str, Any] = self.text["format"]
        return str(fmt[key]).format(
            weekday=fmt["weekdays"][local.weekday()],
            day=local.day,
            month=fmt["months"][local.month - 1],
            month_num=local.month,
            year=local.year,
            time=f"{local:%H:%M}" if isinstance(local, datetime) else "",
        )

    def when(self, moment: datetime) -> str:
        """`moment` in the page's zone and language, as a `<time>` element."""
        local = self.local(moment)
        return f'<time datetime="{local.isoformat()}">{html.escape(self._format("datetime", local))}</time>'

    def maybe_when(self, value: Any) -> str | None:
        moment = parse_time(value)
        return self.when(moment) if moment is not None else None

    def day(self, moment: datetime, relative: bool = False) -> str:
        """The calendar day of `moment` in the page's zone (the year only when it is not this one's);
        with `relative`, today and tomorrow say so."""
        local = self.local(moment).date()
        text = self._format("day" if self.today is not None and local.year == self.today.year else "day_year", local)
        if relative and self.today is not None and local in (self.today, self.today + timedelta(days=1)):
            text = self.text["label"]["today" if local == self.today else "tomorrow"] + " · " + text
        return f'<time datetime="{local.isoformat()}">{html.escape(text)}</time>'

    def hour(self, moment: datetime) -> str:
        local = self.local(moment)
        return f'<time datetime="{local.isoformat()}">{local:%H:%M}</time>'

    def country(self, code: Any) -> str | None:
        if not isinstance(code, str) or not code:
            return None
        return str(_locale(self.lang).territories.get(code.upper(), code))

    def place(self, location: Any) -> str:
        """`Name, Country` of a location, the country named in the page's language."""
        if not isinstance(location, Mapping):
            return ""
        name = location.get("name")
        country = self.country(location.get("country"))
        parts = [str(p) for p in (name, country) if p]
        return html.escape(", ".join(parts))

    def zone_name(self, moment: datetime) -> str:
        """The page's time zone as a person names it, with its abbreviation (or offset) at `moment`:
        `New York time (EST)`, `Ortszeit Singapur (UTC+8)`."""
        at = self.local(moment) if self.zone is not UTC else None
        if at is None or self.zone_id.startswith(("Etc/", "UTC", "GMT")):
            return html.escape(_offset_name(at.utcoffset() if at is not None else None))
        abbreviation = at.tzname() or ""
        if not _ABBREVIATION.match(abbreviation):
            abbreviation = _offset_name(at.utcoffset())
        try:
            city = get_timezone_location(self.zone_id, locale=_locale(self.lang), return_city=True)
        except (LookupError, ValueError):  # a zone newer than the CLDR data: its own city name
            city = self.zone_id.rsplit("/", 1)[-1].replace("_", " ")
        return self.label("zone", city=html.escape(city)) + f" ({html.escape(abbreviation)})"
