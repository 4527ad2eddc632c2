"""Business-hours calendars for ``during`` / ``outside``: a time zone, week days, hour ranges, holidays.

``{timezone: Europe/Berlin, days: [mon, tue, wed, thu, fri], hours: "08:00-18:00", holidays: [2026-12-24]}``.
``hours`` may be one range or a list; ranges are ``HH:MM-HH:MM`` within one day (``24:00`` allowed as an
end). Overnight shifts are written as two ranges, so a range can never silently mean the wrong day.
Evaluation converts the instant into the calendar's zone (``zoneinfo``), so DST is handled by the tz data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_WHOLE_HOURS = re.compile(r"^\s*(\d{1,2})\s*-\s*(\d{1,2})\s*$")  # "9-17": hours without minutes


class CalendarError(ValueError):
    """A calendar definition problem; the message is shown to the admin."""


@dataclass(frozen=True, slots=True)
class Calendar:
    """When a calendar is "on"; :meth:`contains` is pure."""

    name: str
    timezone: str
    days: frozenset[int]  # 0 = Monday
    ranges: tuple[tuple[int, int], ...]  # minutes since local midnight, [start, end)
    holidays: frozenset[date] = frozenset()

    def local_time(self, when: datetime) -> str:
        """``Sat 2026-12-05 10:00 America/New_York``: the instant as the calendar's admin thinks of it."""
        local = when.astimezone(ZoneInfo(self.timezone))
        return f"{DAY_NAMES[local.weekday()].capitalize()} {local:%Y-%m-%d %H:%M} {self.timezone}"

    def contains(self, when: datetime) -> bool:
        """Whether the (tz-aware) instant falls inside the calendar."""
        local = when.astimezone(ZoneInfo(self.timezone))
        if local.weekday() not in self.days or local.date() in self.holidays:
            return False
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.ranges)


def parse_timezone(name: str) -> str:
    """Validate an IANA zone name (with a suggestion for typos)."""
    if not isinstance(name, str) or not name:
        raise CalendarError("timezone must be an IANA name such as Europe/Berlin")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        import difflib

        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CalendarError(f"unknown timezone '{name}'{hint}") from None
    return name


def parse_days(values: object) -> frozenset[int]:
    if isinstance(values, list) and not values:  # a calendar that is never open: no rule using it would ever hold
        raise CalendarError(
            "days is empty, so the calendar is never open: list its days, e.g. [mon, tue, wed, thu, fri] "
            "(leave days out for every day)"
        )
    if not isinstance(values, list):
        raise CalendarError("days must be a list such as [mon, tue, wed, thu, fri]")
    out: set[int] = set()
    for value in values:
        text = str(value).lower()[:3] if isinstance(value, str) else ""
        if text not in DAY_NAMES:
            raise CalendarError(f"unknown day {value!r} (use {', '.join(DAY_NAMES)})")
        out.add(DAY_NAMES.index(text))
    return frozenset(out)


def parse_hours(value: object) -> tuple[tuple[int, int], ...]:
    """``hours``: one range or a list of them; an empty list would mean never open, so it is an error."""
    if isinstance(value, list) and not value:
        raise CalendarError(
            'hours is empty, so the calendar is never open: give its hours, e.g. ["08:00-18:00"] '
            "(leave hours out for all day)"
        )
    return tuple(parse_range(item) for item in (value if isinstance(value, list) else [value]))


def parse_range(text: object) -> tuple[int, int]:
    match = _RANGE.match(text) if isinstance(text, str) else None
    if not match:
        whole = _WHOLE_HOURS.match(text) if isinstance(text, str) else None
        hint = f' (did you mean "{int(whole[1]):02d}:00-{int(whole[2]):02d}:00"?)' if whole else ""
        raise CalendarError(f'hours must look like "08:00-18:00", got {text!r}{hint}')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60:
        raise CalendarError(f"hours out of range in {text!r}")
    if start >= end:
        raise CalendarError(
            f"hours {text!r} end before they start; write an overnight shift as two ranges, "
            'e.g. ["22:00-24:00", "00:00-06:00"]'
        )
    return start, end


def parse_holiday(value: object) -> date:
    if isinstance(value, datetime):
        raise CalendarError(f"holiday {value.isoformat()} must be a date (YYYY-MM-DD), not a time")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise CalendarError(f"holiday {value!r} is not a date: {exc}") from None
    raise CalendarError(f"holiday {value!r} must be a date (YYYY-MM-DD)")
