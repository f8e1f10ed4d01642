"""One period's set of an RRULE, indexed arithmetically; naive moments as int seconds.

A moment is an int: seconds since 0001-01-01T00:00 (naive, proleptic Gregorian), so
sets are compared and indexed without building datetimes. A period's set is the sorted
product days x times of day (never materialized: 366 days x 86 400 times is a valid
rule), then BYSETPOS positions in it. `days_in` lists the days of a month or year that
match the day parts of MONTHLY and YEARLY rules.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left
from datetime import date, datetime, timedelta
from functools import lru_cache

from worker.rrule.parse import Rule

DAY = 86_400


def to_secs(dt: datetime) -> int:
    """Naive datetime -> seconds since 0001-01-01 (microseconds rounded up)."""
    secs = dt.toordinal() * DAY + dt.hour * 3600 + dt.minute * 60 + dt.second
    return secs + (1 if dt.microsecond else 0)


def from_secs(secs: int) -> datetime:
    day, rest = divmod(secs, DAY)
    return datetime.fromordinal(day) + timedelta(seconds=rest)


class Times:
    """The sorted product hours x minutes x seconds, as seconds of the day, by index."""

    def __init__(self, hours: tuple[int, ...], minutes: tuple[int, ...],
                 seconds: tuple[int, ...]) -> None:
        self.h, self.m, self.s = hours, minutes, seconds
        self.ms = len(minutes) * len(seconds)
        self.size = len(hours) * self.ms

    def at(self, i: int) -> int:
        h, rest = divmod(i, self.ms)
        m, s = divmod(rest, len(self.s))
        return self.h[h] * 3600 + self.m[m] * 60 + self.s[s]

    def first_ge(self, secs: int) -> int:
        return bisect_left(range(self.size), secs, key=self.at)


def picked_size(whole: int, setpos: tuple[int, ...]) -> int:
    """How many members BYSETPOS picks from a set of `whole` members."""
    if not setpos:
        return whole
    return len({p - 1 if p > 0 else whole + p for p in setpos if -whole <= p <= whole})


class Set:
    """One period's set: days (ordinals, sorted) x times, then BYSETPOS positions."""

    def __init__(self, days: list[int], times: Times, setpos: tuple[int, ...]) -> None:
        self.days, self.times = days, times
        whole = len(days) * times.size
        self.picked: list[int] | None = None
        if setpos:
            self.picked = sorted({p - 1 if p > 0 else whole + p for p in setpos
                                  if -whole <= p <= whole})
        self.size = whole if self.picked is None else len(self.picked)

    def at(self, j: int) -> int:
        i = j if self.picked is None else self.picked[j]
        d, t = divmod(i, self.times.size)
        return self.days[d] * DAY + self.times.at(t)

    def first_ge(self, secs: int) -> int:
        if self.picked is not None:
            return bisect_left(range(self.size), secs, key=self.at)
        day, rest = divmod(secs, DAY)
        i = bisect_left(self.days, day)
        if i < len(self.days) and self.days[i] == day:
            return i * self.times.size + self.times.first_ge(rest)
        return i * self.times.size


def weekno(ordinal: int, wkst: int) -> tuple[int, int]:
    """(week number, negative week number) of a day, weeks from WKST (RFC 5545 BYWEEKNO)."""
    week_start = ordinal - (ordinal - 1 - wkst) % 7  # ordinal 1 is a Monday
    year = date.fromordinal(week_start + 3).year  # the year holding 4+ days of the week
    number = (week_start - _week_one(year, wkst)) // 7 + 1
    weeks = (_week_one(year + 1, wkst) - _week_one(year, wkst)) // 7
    return number, number - weeks - 1


@lru_cache(maxsize=4096)
def _week_one(year: int, wkst: int) -> int:
    """Ordinal of the first day of week 1: the first week with 4+ days in the year."""
    jan1 = date(year, 1, 1).toordinal()
    start = jan1 - (jan1 - 1 - wkst) % 7
    return start + 7 if jan1 - start > 3 else start


def days_in(r: Rule, parts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
            first: int, length: int, in_month: bool) -> list[int]:
    """Days (offsets from `first`) of a month or year (MONTHLY, YEARLY) matching the day
    parts; `parts` are BYMONTH, BYMONTHDAY, plain BYDAY with DTSTART's defaults applied."""
    bymonth, bymonthday, byweekday = parts
    start = date.fromordinal(first)
    months = [start.month] if in_month else list(range(1, 13))
    weekday1 = (first - 1) % 7  # ordinal 1 is a Monday
    weeknos = set(r.byweekno)
    out, before = [], 0
    for month in months:
        mlen = calendar.monthrange(start.year, month)[1]
        if bymonth and month not in bymonth:
            before += mlen
            continue
        for day in range(1, mlen + 1):
            offset = before + day - 1
            if bymonthday and (day not in bymonthday
                                    and day - mlen - 1 not in bymonthday):
                continue
            if r.byyearday and (offset + 1 not in r.byyearday
                                and offset - length not in r.byyearday):
                continue
            if weeknos and not weeknos.intersection(weekno(first + offset, r.wkst)):
                continue
            if byweekday or r.bynweekday:
                weekday = (weekday1 + offset) % 7
                if in_month or r.bymonth:  # nth weekday of the month
                    nth, last = (day - 1) // 7 + 1, -((mlen - day) // 7 + 1)
                else:  # nth weekday of the year
                    nth, last = offset // 7 + 1, -((length - 1 - offset) // 7 + 1)
                if weekday not in byweekday and (weekday, nth) not in r.bynweekday \
                        and (weekday, last) not in r.bynweekday:
                    continue
            out.append(offset)
        before += mlen
    return out
