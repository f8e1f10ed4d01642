"""The days a rule's limiting day parts let through, year by year (pure, cached).

For DAILY, HOURLY and MINUTELY (BYMONTH, BYMONTHDAY, BYYEARDAY, BYDAY) and WEEKLY
(BYMONTH, BYDAY): which days of a year pass depends only on whether the year is a leap
year and on the weekday of its 1 January, so 14 lists serve every year. They are built
from the parts (only the months and month days named are looked at), not by testing
each day, and answer "the next day that passes" with one bisection per year.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left
from datetime import date

from worker.rrule.parse import Rule

_MAX_YEAR = 9000  # rrule_expand.MAX_YEAR


class DayFilter:
    def __init__(self, rule: Rule, weekdays: tuple[int, ...]) -> None:
        self.months = set(rule.bymonth)
        self.monthdays = rule.bymonthday
        self.yeardays = set(rule.byyearday)
        self.weekdays = set(weekdays)
        self._lists: dict[tuple[bool, int], list[int]] = {}

    def year(self, year: int) -> tuple[int, list[int]]:
        """(ordinal of 1 January, sorted offsets from it of the days that pass)."""
        jan1 = date(year, 1, 1).toordinal()
        key = (calendar.isleap(year), (jan1 - 1) % 7)  # ordinal 1 is a Monday
        offsets = self._lists.get(key)
        if offsets is None:
            offsets = self._lists[key] = self._build(year, key[1])
        return jan1, offsets

    def _build(self, year: int, weekday1: int) -> list[int]:
        length = 366 if calendar.isleap(year) else 365
        out, before = [], 0
        for month in range(1, 13):
            mlen = calendar.monthrange(year, month)[1]
            if not self.months or month in self.months:
                days = (sorted({d if d > 0 else mlen + d + 1 for d in self.monthdays
                                if -mlen <= d <= mlen}) if self.monthdays
                        else range(1, mlen + 1))
                for day in days:
                    offset = before + day - 1
                    if self.yeardays and (offset + 1 not in self.yeardays
                                          and offset - length not in self.yeardays):
                        continue
                    if self.weekdays and (weekday1 + offset) % 7 not in self.weekdays:
                        continue
                    out.append(offset)
            before += mlen
        return out

    def passes(self, ordinal: int) -> bool:
        jan1, offsets = self.year(date.fromordinal(ordinal).year)
        i = bisect_left(offsets, ordinal - jan1)
        return i < len(offsets) and offsets[i] == ordinal - jan1

    def next_day(self, ordinal: int) -> int | None:
        """The first day at or after `ordinal` that passes; None before the year bound."""
        year = date.fromordinal(ordinal).year
        while year <= _MAX_YEAR:
            jan1, offsets = self.year(year)
            i = bisect_left(offsets, ordinal - jan1)
            if i < len(offsets):
                return jan1 + offsets[i]
            year += 1
        return None

    def between(self, first: int, last: int) -> list[int]:
        """Ordinals of the days that pass, first <= day < last."""
        out: list[int] = []
        year = date.fromordinal(first).year
        while first < last:
            jan1, offsets = self.year(year)
            following = date(year + 1, 1, 1).toordinal()
            lo = bisect_left(offsets, first - jan1)
            hi = bisect_left(offsets, min(last, following) - jan1)
            out.extend(jan1 + o for o in offsets[lo:hi])
            first, year = following, year + 1
        return out
