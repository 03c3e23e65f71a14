"""Calendar arithmetic for the detector: the calling window's edges and working days.

Both are computed in the configured time zone (the callee's local time for calling hours; the
provider's for filing deadlines) and handed to SQL as UTC instants, so the database never needs
to know about time zones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo

from callwarden.config.model import TimeSpan


def _local(day: dt.date, t: dt.time, tz: ZoneInfo) -> dt.datetime:
    if t == dt.time.max:  # "..-24:00": the next midnight
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tz)
    return dt.datetime.combine(day, t, tz)


def edge_intervals(start: dt.datetime, end: dt.datetime, tz: ZoneInfo, window: TimeSpan,
                   edge_minutes: int) -> list[tuple[dt.datetime, dt.datetime]]:
    """UTC ``[a, b)`` spans within ``edge_minutes`` either side of the window's start and end.

    With the default 08:00-21:00 and 30 minutes: 07:30-08:30 and 20:30-21:30 local time, on every
    local day that ``[start, end]`` touches; clipped to ``[start, end]``.
    """
    edge = dt.timedelta(minutes=edge_minutes)
    first = start.astimezone(tz).date() - dt.timedelta(days=1)
    last = end.astimezone(tz).date() + dt.timedelta(days=1)
    spans: list[tuple[dt.datetime, dt.datetime]] = []
    day = first
    while day <= last:
        for boundary in (window.start, window.end):
            at = _local(day, boundary, tz)
            a, b = max(at - edge, start), min(at + edge, end)
            if a < b:
                spans.append((a.astimezone(dt.UTC), b.astimezone(dt.UTC)))
        day += dt.timedelta(days=1)
    return _merge(spans)


def _merge(spans: list[tuple[dt.datetime, dt.datetime]]) -> list[tuple[dt.datetime, dt.datetime]]:
    merged: list[tuple[dt.datetime, dt.datetime]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


class WorkingCalendar:
    """Mon-Fri are working days, except ``holidays``; ``workdays`` are worked weekend days."""

    def __init__(self, holidays: Iterable[dt.date] = (), workdays: Iterable[dt.date] = ()):
        self.holidays = frozenset(holidays)
        self.workdays = frozenset(workdays)

    def is_working(self, day: dt.date) -> bool:
        if day in self.holidays:
            return False
        return day.weekday() < 5 or day in self.workdays

    def add_working_days(self, day: dt.date, n: int) -> dt.date:
        """The ``n``-th working day after ``day`` (``day`` itself does not count)."""
        if n < 1:
            raise ValueError("n must be at least 1")
        count = 0
        while count < n:
            day += dt.timedelta(days=1)
            if self.is_working(day):
                count += 1
        return day

    def working_days_between(self, after: dt.date, until: dt.date) -> int:
        """Working days in ``(after, until]``."""
        count, day = 0, after
        while day < until:
            day += dt.timedelta(days=1)
            if self.is_working(day):
                count += 1
        return count
