"""Time helpers: every time inside feesync is timezone-aware; ERP naive times are localised at the edge."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_FRAPPE_DT = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?$")


class BadTimeSetting(ValueError):
    """A time zone or duration that cannot be used (a ValueError, so pydantic collects it with the rest)."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadTimeSetting(f"unknown time zone {name!r}") from None


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_naive_local(text: str, tz: ZoneInfo) -> datetime:
    """Parse Frappe's naive site-local `YYYY-MM-DD HH:MM:SS[.ffffff]` into aware UTC.

    The fraction is optional (Frappe's str(datetime) drops it when it is zero). An ambiguous
    local time (DST fold) is taken as the first occurrence; the cursor's lookback window
    covers the hour a fold can move a timestamp back.
    """
    m = _FRAPPE_DT.match(text.strip())
    if not m:
        raise ValueError(f"not a Frappe datetime: {text[:40]!r}")
    y, mo, d, h, mi, s, frac = m.groups()
    micro = int((frac or "0").ljust(6, "0"))
    local = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=tz)
    return local.astimezone(UTC)


def dst_margin(tz: ZoneInfo, moment: datetime) -> timedelta:
    """How far naive local time can run backwards in this zone around `moment`'s year (the autumn
    repeated hour; 0 where there is no DST). A read from naive local time starts this much earlier."""
    offsets = {datetime(moment.year, m, 1, tzinfo=tz).utcoffset() for m in (1, 4, 7, 10)}
    offsets.discard(None)
    if len(offsets) <= 1:
        return timedelta(0)
    return max(offsets) - min(offsets)   # type: ignore[operator]


def format_naive_local(moment: datetime, tz: ZoneInfo) -> str:
    """Aware datetime -> the naive local string Frappe compares `modified` against (always with fraction)."""
    return moment.astimezone(tz).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """A calendar date at the institute's local midnight (rule 21)."""
    return datetime.combine(day, time(0, 0), tzinfo=tz)


def iso_with_offset(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.isoformat()


def parse_http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_iso(text: str) -> datetime:
    """Parse an ISO timestamp we wrote ourselves (always aware)."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


MAX_DURATION_SECONDS = 10 * 366 * 86400   # ten years: longer is a typo, and overflows date arithmetic


def parse_duration(text: str) -> timedelta:
    """'10m', '30s', '2h', '1d', or a number of seconds."""
    text = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            seconds = float(text[:-1]) * units[text[-1]]
        else:
            seconds = float(text)
    except ValueError:
        raise BadTimeSetting(f"not a duration: {text!r} (use e.g. 30s, 10m, 2h)") from None
    if seconds != seconds or seconds < 0 or seconds > MAX_DURATION_SECONDS:   # NaN, negative, absurd
        raise BadTimeSetting(f"duration {text!r} must be between 0s and {MAX_DURATION_SECONDS // 86400}d")
    return timedelta(seconds=seconds)
