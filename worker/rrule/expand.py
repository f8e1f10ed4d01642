"""RFC 5545 §3.3.10 expansion of a `Rule` over naive wall-clock time, period by period.

Pure and zone-free: times are naive wall clock (the caller resolves them in a zone).
Internally a moment is an int, seconds since 0001-01-01T00:00 (proleptic, naive).

Each period (the year, month, week from WKST, day, hour or minute the FREQ names, every
INTERVAL-th from the one holding DTSTART) gives a set: its days (BYMONTH, BYWEEKNO,
BYYEARDAY, BYMONTHDAY, BYDAY expand or limit as the RFC table says; missing day parts
come from DTSTART) times its times of day (BYHOUR, BYMINUTE, BYSECOND, else DTSTART's),
sorted; BYSETPOS picks positions in that whole set. DTSTART is always the first
occurrence and counts for COUNT; set members before it are dropped.

Bounded CPU: a period's set is never built element by element (it is a product of
sorted lists, indexed arithmetically); the sizes of periods repeat in a cycle (a week
of positions for DAILY/HOURLY/MINUTELY without month or day-of-month parts, 4800 months
for MONTHLY, 400 years for YEARLY), so skipping empty periods and counting for COUNT
are arithmetic over one cycle, and a rule with no non-empty period in its cycle has
ended. Other rules (BYMONTH/BYMONTHDAY/BYYEARDAY on DAILY and finer, BYMONTH on WEEKLY)
are scanned period by period, at most `MAX_STEPS` periods per search; beyond that, and
beyond the year `MAX_YEAR`, the series is treated as ended.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime
from math import gcd

from worker.rrule.days import DayFilter
from worker.rrule.parse import Rule
from worker.rrule.sets import DAY, Set, Times, days_in, from_secs, picked_size, to_secs

MAX_STEPS = 5_000  # skips or periods one search may take one by one (~3 us each: CPU bound)
MAX_YEAR = 9000  # occurrences after this year are not produced (schedule.MAX_YEAR)
WEEK = 7 * DAY
_UNIT = {"WEEKLY": WEEK, "DAILY": DAY, "HOURLY": 3600, "MINUTELY": 60}
_CYCLE = {"MONTHLY": 4800, "YEARLY": 400}  # the Gregorian calendar repeats every 400 years
_DAY_TABLE = 1024  # longest repeat (days) of per-day period counts worth tabulating
_END = date(MAX_YEAR + 1, 1, 1).toordinal() * DAY


class Exhausted(Exception):
    """The search needed more than MAX_STEPS periods: treated as the end of the series."""


class Expander:
    """The occurrences of one rule from one DTSTART (naive wall clock, whole seconds)."""

    def __init__(self, rule: Rule, start: datetime) -> None:
        self.rule, self.start = rule, start.replace(microsecond=0)
        self.start_secs = to_secs(self.start)
        r, s = rule, self.start
        day_parts = r.byweekno or r.byyearday or r.bymonthday or r.byweekday or r.bynweekday
        self.bymonth, self.bymonthday, self.byweekday = r.bymonth, r.bymonthday, r.byweekday
        if r.freq == "YEARLY" and not day_parts:  # missing parts come from DTSTART
            self.bymonth = r.bymonth or (s.month,)
            self.bymonthday = (s.day,)
        elif r.freq == "YEARLY" and r.byweekno and not (r.byyearday or r.bymonthday
                                                        or r.byweekday or r.bynweekday):
            self.byweekday = (s.weekday(),)
        elif r.freq == "MONTHLY" and not (r.bymonthday or r.byweekday or r.bynweekday):
            self.bymonthday = (s.day,)
        elif r.freq == "WEEKLY" and not (r.byweekday or r.bynweekday):
            self.byweekday = (s.weekday(),)
        self.minutes = r.byminute or (s.minute,)
        self.seconds = r.bysecond or (s.second,)
        self.times = Times(r.byhour or (s.hour,), self.minutes, self.seconds)
        self.step = r.interval * _UNIT.get(r.freq, 0)
        day0 = s.toordinal()
        self.origin = {  # where period 0 starts: a month index, a year or a moment
            "YEARLY": s.year, "MONTHLY": s.year * 12 + s.month - 1,
            "WEEKLY": (day0 - (day0 - 1 - r.wkst) % 7) * DAY, "DAILY": day0 * DAY,
            "HOURLY": day0 * DAY + s.hour * 3600,
            "MINUTELY": day0 * DAY + s.hour * 3600 + s.minute * 60,
        }[r.freq]
        self._types: dict[tuple[int, ...], list[int]] = {}
        self._sub_times: dict[int, Times] = {}
        # Sizes of periods repeat: by position in the week (or day), or in 400 years.
        calendar_parts = r.bymonth or (r.freq != "WEEKLY" and (r.bymonthday or r.byyearday))
        if r.freq in _CYCLE:
            self.cycle: int | None = _CYCLE[r.freq] // gcd(_CYCLE[r.freq], r.interval)
        elif calendar_parts:
            self.cycle = None
        else:
            span = WEEK if self.byweekday else DAY
            self.cycle = span // gcd(span, self.step)
        self._sizes: list[int] | None = None
        self._prefix: list[int] = []
        self._nonempty: list[int] = []
        self.days = DayFilter(r, self.byweekday)  # limiting day parts below MONTHLY
        self.week: Expander | None = None
        self._day_table: list[int] | None = None
        if self.cycle is None:  # skip and count with the days that pass and the rest
            self.week = Expander(replace(r, bymonth=(), bymonthday=(), byyearday=()), start)

    # -- one period --------------------------------------------------------------------

    def _start_of(self, k: int) -> int:
        """First moment (secs) of period k."""
        r, o = self.rule, self.origin
        if r.freq == "YEARLY":
            year = o + k * r.interval
            return date(year, 1, 1).toordinal() * DAY if year <= MAX_YEAR else _END
        if r.freq == "MONTHLY":
            year, month = divmod(o + k * r.interval, 12)
            return date(year, month + 1, 1).toordinal() * DAY if year <= MAX_YEAR else _END
        return o + k * self.step

    def period_of(self, secs: int) -> int:
        """Index of the period holding moment `secs` (negative before period 0)."""
        r = self.rule
        if r.freq in _CYCLE:
            moment = date.fromordinal(min(secs // DAY, _END // DAY))
            number = moment.year if r.freq == "YEARLY" else moment.year * 12 + moment.month - 1
            return (number - self.origin) // r.interval
        return (secs - self.origin) // self.step

    def _days(self, k: int) -> list[int]:
        r = self.rule
        first = self._start_of(k) // DAY
        if r.freq in _CYCLE:
            day = date.fromordinal(first)
            if r.freq == "MONTHLY":
                if r.bymonth and day.month not in r.bymonth:
                    return []
                key: tuple[int, ...] = (day.month, calendar.isleap(day.year), day.weekday())
                length = calendar.monthrange(day.year, day.month)[1]
            else:
                length = 366 if calendar.isleap(day.year) else 365
                key = (day.weekday(), length)
                if r.byweekno:  # week numbers also depend on the years around
                    key += (calendar.isleap(day.year - 1), calendar.isleap(day.year + 1))
            offsets = self._types.get(key)
            if offsets is None:
                offsets = self._types[key] = days_in(
                    r, (self.bymonth, self.bymonthday, self.byweekday), first, length,
                    in_month=r.freq == "MONTHLY")
            return [first + o for o in offsets]
        if r.freq == "WEEKLY":
            return [d for d in range(first, first + 7)
                    if self.days.passes(d)]
        return [first] if self.days.passes(first) else []

    def _times_of(self, k: int) -> Times | None:
        """Times of day of period k; None when BYHOUR/BYMINUTE rule out an hour or minute."""
        r = self.rule
        if r.freq not in ("HOURLY", "MINUTELY"):
            return self.times
        rest = self._start_of(k) % DAY
        hour, minute = rest // 3600, rest // 60 % 60
        if (r.byhour and hour not in r.byhour) or (
                r.freq == "MINUTELY" and r.byminute and minute not in r.byminute):
            return None
        times = self._sub_times.get(rest)
        if times is None:
            minutes = (minute,) if r.freq == "MINUTELY" else self.minutes
            times = self._sub_times[rest] = Times((hour,), minutes, self.seconds)
        return times

    def period(self, k: int) -> Set | None:
        times = self._times_of(k)
        days = self._days(k) if times is not None else []
        if times is None or not days:
            return None
        found = Set(days, times, self.rule.bysetpos)
        return found if found.size else None

    def size(self, k: int) -> int:
        found = self.period(k)
        return found.size if found else 0

    # -- many periods ------------------------------------------------------------------

    def _position_ok(self, secs: int) -> bool:
        """Weekday, BYHOUR, BYMINUTE of a DAILY/HOURLY/MINUTELY period without calendar parts."""
        r = self.rule
        rest = secs % DAY
        return ((not self.byweekday or (secs // DAY - 1) % 7 in self.byweekday)
                and (r.freq == "DAILY" or not r.byhour or rest // 3600 in r.byhour)
                and (r.freq != "MINUTELY" or not r.byminute or rest // 60 % 60 in r.byminute))

    def _cycle_tables(self) -> None:
        assert self.cycle is not None
        if self._sizes is None and self.rule.freq in ("DAILY", "HOURLY", "MINUTELY"):
            whole = {"DAILY": self.times.size, "HOURLY": len(self.minutes) * len(self.seconds),
                     "MINUTELY": len(self.seconds)}[self.rule.freq]
            full = picked_size(whole, self.rule.bysetpos)
            self._sizes = [full if self._position_ok(self.origin + k * self.step) else 0
                           for k in range(self.cycle)]
        if self._sizes is None:
            self._sizes = [self.size(k) for k in range(self.cycle)]
        if not self._prefix:
            self._prefix = [0]
            for n in self._sizes:
                self._prefix.append(self._prefix[-1] + n)
            self._nonempty = [k for k, n in enumerate(self._sizes) if n]

    def next_nonempty(self, k: int, budget: list[int]) -> int | None:
        """The first period at or after k with a non-empty set; None if there is none."""
        for probe in range(k, k + 32):  # most rules: found at once, no tables built
            if self._start_of(probe) >= _END:
                return None
            if self.size(probe):
                return probe
        k += 32
        if self.cycle is not None:
            self._cycle_tables()
            if not self._nonempty:
                return None
            base, rest = divmod(k, self.cycle)
            i = bisect_left(self._nonempty, rest)
            if i == len(self._nonempty):
                base, i = base + 1, 0
            return base * self.cycle + self._nonempty[i]
        assert self.week is not None
        while True:  # the rest of the rule and the days that pass, each skipping ahead
            self._spend(budget)
            found = self.week.next_nonempty(k, budget)
            if found is None or self._start_of(found) >= _END:
                return None
            if self.size(found):
                return found
            day = self.days.next_day(self._start_of(found) // DAY + 1)
            if day is None:
                return None
            k = max(found + 1, self._period_from(day * DAY))

    def _period_from(self, secs: int) -> int:
        """The first period starting at or after `secs` (WEEKLY: the week holding it)."""
        if self.rule.freq == "WEEKLY":
            return (secs - self.origin) // self.step
        return -((self.origin - secs) // self.step)

    def _sum(self, a: int, b: int) -> int:
        """Total size of periods a..b-1 from the cycle tables (any a <= b)."""
        assert self.cycle is not None
        self._cycle_tables()
        full, rest = divmod(b, self.cycle)
        total = full * self._prefix[-1] + self._prefix[rest]
        full, rest = divmod(a, self.cycle)
        return total - full * self._prefix[-1] - self._prefix[rest]

    def count_between(self, a: int, b: int, budget: list[int]) -> int:
        """Total size of periods a..b-1 (1 <= a)."""
        if b <= a:
            return 0
        if self.cycle is not None:
            if b - a <= 64 and self._sizes is None:
                return sum(self.size(k) for k in range(a, b))
            return self._sum(a, b)
        assert self.week is not None
        week = self.week
        if self.rule.freq == "WEEKLY":
            total, k = 0, a  # visit the non-empty weeks
            while True:
                self._spend(budget)
                found = self.next_nonempty(k, budget)
                if found is None or found >= b:
                    return total
                total, k = total + self.size(found), found + 1
        # DAILY and finer: only days that pass hold periods; the rest of the rule counts
        # the periods starting on them arithmetically (week._sum).
        first, last = self._start_of(a) // DAY, (self._start_of(b) - 1) // DAY
        days = self.days.between(first, last + 1)
        span = week.cycle * week.step // DAY if week.cycle else 0
        if 0 < span <= _DAY_TABLE:  # per-day sums repeat every `span` days: tabulate
            if self._day_table is None:
                self._day_table = [self._periods_on(d, d + 1, a, b, bounded=False)
                                   for d in range(span)]
            budget[0] -= len(days) // 64
            self._spend(budget)
            table = self._day_table
            inner = sum(table[d % span] for d in days if first < d < last)
            edges = {d for d in (first, last) if d in days[:1] + days[-1:]}
            return inner + sum(self._periods_on(d, d + 1, a, b) for d in edges)
        total, i = 0, 0  # a long repeat: sum over runs of consecutive days instead
        while i < len(days):
            self._spend(budget)
            j = i
            while j + 1 < len(days) and days[j + 1] == days[j] + 1:
                j += 1
            total += self._periods_on(days[i], days[j] + 1, a, b)
            i = j + 1
        return total

    def _periods_on(self, day: int, end: int, a: int, b: int, bounded: bool = True) -> int:
        """Total size of the periods starting on days day..end-1 (within a..b-1 if bounded)."""
        assert self.week is not None
        lo, hi = self._period_from(day * DAY), self._period_from(end * DAY)
        if bounded:
            lo, hi = max(a, lo), min(b, hi)
        return self.week._sum(lo, hi) if lo < hi else 0

    @staticmethod
    def _spend(budget: list[int]) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise Exhausted

    def occurrences(self, low: datetime, stop: datetime | None = None) -> Iterator[datetime]:
        """Occurrences at or after `low` (and at or before `stop`), in wall-clock order.

        DTSTART first (when at or after `low`), then the rule's members after it.
        Honours COUNT (counted from DTSTART) and a local UNTIL; ends (returns) when
        the series ends, past MAX_YEAR, or after MAX_STEPS periods scanned one by one.
        """
        r = self.rule
        bounds = [b for b in (stop, r.until_local) if b is not None]
        last = min(to_secs(b) if b.microsecond == 0 else to_secs(b) - 1 for b in bounds) \
            if bounds else _END - 1
        low_secs = max(to_secs(low), self.start_secs)
        if to_secs(low) <= self.start_secs:
            yield self.start  # DTSTART is the first occurrence whatever the rule or UNTIL say
        if low_secs > last:
            return
        budget = [MAX_STEPS]
        try:
            k = max(0, self.period_of(low_secs))
            used = 1
            if k > 0 and r.count is not None:
                zero = self.period(0)
                above = zero.size - zero.first_ge(self.start_secs + 1) if zero else 0
                used = 1 + above + self.count_between(1, k, budget)
            while r.count is None or used < r.count:
                nxt = self.next_nonempty(k, budget)  # periods skipped are empty: count 0
                if nxt is None or self._start_of(nxt) >= _END:
                    return
                k = nxt
                found = self.period(k)
                assert found is not None
                first = found.first_ge(self.start_secs + 1) if k == 0 else 0
                skip = found.first_ge(low_secs)
                if skip > first:
                    used, first = used + skip - first, skip
                for j in range(first, found.size):
                    if r.count is not None and used >= r.count:
                        return
                    secs = found.at(j)
                    if secs > last:
                        return
                    used += 1
                    yield from_secs(secs)
                k += 1
        except Exhausted:
            return
