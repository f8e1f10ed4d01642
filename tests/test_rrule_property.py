"""next_occurrence against a brute-force RFC 5545 expansion written here (no dateutil).

The brute force follows RFC 5545 §3.3.10 literally: every period (year, month, week from
WKST, day, hour, minute, every INTERVAL-th from DTSTART's) is enumerated day by day and
time by time, each BY part is applied as a filter (the RFC table's "expand" parts expand
to exactly the members that satisfy them), missing day and time parts come from DTSTART,
BYSETPOS picks positions in the period's sorted set, DTSTART is the first occurrence,
then COUNT and UNTIL. Wall-clock times are resolved by the DST policy of RFC 5545 §3.3.5
computed from the zone's offsets (not with `fold`): a gap time takes the offset from
before the gap, an ambiguous one its earlier instant.
"""

from __future__ import annotations

import calendar
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import product
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from worker.rrule.parse import parse_rule
from worker.rules.recurrence import Recurrence, next_occurrence

FREQS = ["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY"]
DAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
UNIT = {"YEARLY": timedelta(days=366), "MONTHLY": timedelta(days=31), "WEEKLY": timedelta(7),
        "DAILY": timedelta(1), "HOURLY": timedelta(hours=1), "MINUTELY": timedelta(minutes=1)}
HORIZON = {"YEARLY": 8, "MONTHLY": 30, "WEEKLY": 40, "DAILY": 90, "HOURLY": 200,
           "MINUTELY": 400}  # periods searched past the cutoff by the brute force
ZONES = {  # zone -> instants of transitions to put due times around
    "Europe/Berlin": ["2026-03-29T01:00", "2026-10-25T01:00"],
    "America/New_York": ["2026-03-08T07:00", "2026-11-01T06:00"],
    "Australia/Lord_Howe": ["2026-04-04T15:00", "2026-10-03T15:30"],
    "Europe/Dublin": ["2026-03-29T01:00", "2026-10-25T01:00"],
    "Antarctica/Troll": ["2026-03-29T01:00", "2026-10-25T01:00"],
    "Pacific/Apia": ["2011-12-30T10:00"],
    "UTC": ["2028-02-29T12:00"],
}


@dataclass
class Spec:
    freq: str
    interval: int
    count: int | None
    until: str | None
    parts: dict[str, list[int]]
    byday: list[tuple[int | None, int]]
    wkst: int

    def text(self) -> str:
        out = [f"FREQ={self.freq}", f"INTERVAL={self.interval}", f"WKST={DAYS[self.wkst]}"]
        if self.count:
            out.append(f"COUNT={self.count}")
        if self.until:
            out.append(f"UNTIL={self.until}")
        out += [f"{k}={','.join(map(str, v))}" for k, v in self.parts.items() if v]
        if self.byday:
            out.append("BYDAY=" + ",".join(f"{n or ''}{DAYS[w]}" for n, w in self.byday))
        return ";".join(out)


# --- the DST policy, from offsets ---------------------------------------------------------

@cache
def resolve(wall: datetime, zone: ZoneInfo) -> datetime:
    offsets = {(wall - timedelta(hours=h)).replace(tzinfo=UTC).astimezone(zone).utcoffset()
               for h in range(-30, 31, 2)}
    offsets.discard(None)
    real = [o for o in offsets if o is not None]
    fits = [wall - o for o in real
            if (wall - o).replace(tzinfo=UTC).astimezone(zone).replace(tzinfo=None) == wall]
    if fits:
        return min(fits).replace(tzinfo=UTC)  # an overlap: the earlier instant
    earliest = (wall - max(real)).replace(tzinfo=UTC)  # before the gap
    before = earliest.astimezone(zone).utcoffset()
    assert before is not None
    return (wall - before).replace(tzinfo=UTC)


def local(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


# --- the expansion ------------------------------------------------------------------------

def week_one(year: int, wkst: int) -> date:
    jan4 = date(year, 1, 4)  # week 1 is the first with 4+ days in the year: it holds Jan 4
    return jan4 - timedelta((jan4.weekday() - wkst) % 7)


def week_numbers(day: date, wkst: int) -> set[int]:
    for year in (day.year + 1, day.year, day.year - 1):
        first = week_one(year, wkst)
        if first <= day:
            number = (day - first).days // 7 + 1
            weeks = (week_one(year + 1, wkst) - first).days // 7
            return {number, number - weeks - 1}
    raise AssertionError(day)


def nth_of(days: list[date]) -> dict[date, set[int]]:
    """Each day's position among the same weekdays of `days`, from the start and the end."""
    out: dict[date, set[int]] = {}
    for weekday in range(7):
        same = [d for d in days if d.weekday() == weekday]
        for i, d in enumerate(same):
            out[d] = {i + 1, i - len(same)}
    return out


def period_days(spec: Spec, start: date, k: int) -> list[date]:
    step = spec.interval * k
    if spec.freq == "YEARLY":
        year = start.year + step
        return [date(year, 1, 1) + timedelta(i) for i in range(366 if calendar.isleap(year)
                                                                  else 365)]
    if spec.freq == "MONTHLY":
        year, month = divmod(start.year * 12 + start.month - 1 + step, 12)
        return [date(year, month + 1, d)
                for d in range(1, calendar.monthrange(year, month + 1)[1] + 1)]
    if spec.freq == "WEEKLY":
        first = start - timedelta((start.weekday() - spec.wkst) % 7) + timedelta(7 * step)
        return [first + timedelta(i) for i in range(7)]
    raise AssertionError(spec.freq)


def day_matches(spec: Spec, dtstart: datetime, day: date, nth: dict[date, set[int]]) -> bool:
    p = spec.parts
    months, monthdays, yeardays = p.get("BYMONTH"), p.get("BYMONTHDAY"), p.get("BYYEARDAY")
    weeknos = p.get("BYWEEKNO")
    byday = spec.byday
    any_day = bool(months or monthdays or yeardays or weeknos or byday)
    if spec.freq == "YEARLY" and not any_day:
        months, monthdays = [dtstart.month], [dtstart.day]
    elif spec.freq == "YEARLY" and months and not (monthdays or yeardays or weeknos or byday):
        monthdays = [dtstart.day]
    elif spec.freq == "YEARLY" and weeknos and not (monthdays or yeardays or byday):
        byday = [(None, dtstart.weekday())]
    elif spec.freq == "MONTHLY" and not (monthdays or byday):
        monthdays = [dtstart.day]
    elif spec.freq == "WEEKLY" and not byday:
        byday = [(None, dtstart.weekday())]
    mlen = calendar.monthrange(day.year, day.month)[1]
    ylen = 366 if calendar.isleap(day.year) else 365
    yday = (day - date(day.year, 1, 1)).days + 1
    return (
        (not months or day.month in months)
        and (not monthdays or day.day in monthdays or day.day - mlen - 1 in monthdays)
        and (not yeardays or yday in yeardays or yday - ylen - 1 in yeardays)
        and (not weeknos or bool(week_numbers(day, spec.wkst) & set(weeknos)))
        and (not byday or any(w == day.weekday() and (n is None or n in nth[day])
                              for n, w in byday))
    )


def expand(spec: Spec, dtstart: datetime, zone: ZoneInfo, end: datetime) -> list[datetime]:
    """Every occurrence (naive wall clock) from DTSTART up to `end`, COUNT and UNTIL applied."""
    p = spec.parts
    found = [dtstart]
    until_local = until_utc = None
    if spec.until and spec.until.endswith("Z"):
        until_utc = datetime.strptime(spec.until, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    elif spec.until:
        # a naive wall-clock bound on purpose; a bare date includes its whole day
        until_local = datetime.fromisoformat(spec.until if "T" in spec.until
                                             else spec.until + "T235959")
    sub_daily = spec.freq in ("DAILY", "HOURLY", "MINUTELY")
    unit = {"DAILY": timedelta(1), "HOURLY": timedelta(hours=1),
            "MINUTELY": timedelta(minutes=1)}.get(spec.freq)
    origin = dtstart.replace(second=0, minute=0 if spec.freq != "MINUTELY" else dtstart.minute,
                             hour=0 if spec.freq == "DAILY" else dtstart.hour)
    k = 0
    while True:
        if sub_daily:
            assert unit is not None
            begin = origin + unit * spec.interval * k
            days = [begin.date()]
        else:
            days = period_days(spec, dtstart.date(), k)
            begin = datetime.combine(days[0], datetime.min.time())
        if begin > end or begin.year > 2200:
            break
        k += 1
        nth = nth_of(days) if spec.freq != "YEARLY" or not p.get("BYMONTH") else {}
        if spec.freq == "YEARLY" and p.get("BYMONTH"):  # nth weekday within the month
            for month in range(1, 13):
                nth.update(nth_of([d for d in days if d.month == month]))
        hours = p.get("BYHOUR") or [dtstart.hour]
        minutes = p.get("BYMINUTE") or [dtstart.minute]
        seconds = p.get("BYSECOND") or [dtstart.second]
        if spec.freq in ("HOURLY", "MINUTELY"):
            if p.get("BYHOUR") and begin.hour not in p["BYHOUR"]:
                continue
            hours = [begin.hour]
        if spec.freq == "MINUTELY":
            if p.get("BYMINUTE") and begin.minute not in p["BYMINUTE"]:
                continue
            minutes = [begin.minute]
        members = sorted(
            datetime.combine(d, datetime.min.time()).replace(hour=h, minute=m, second=s)
            for d in days if day_matches(spec, dtstart, d, nth)
            for h, m, s in product(hours, minutes, seconds)
        )
        if p.get("BYSETPOS"):
            members = sorted({members[i - 1 if i > 0 else i] for i in p["BYSETPOS"]
                              if i <= len(members) and -i <= len(members)})
        for member in members:
            if member <= dtstart:
                continue
            if until_local is not None and member > until_local:
                return found
            if until_utc is not None and resolve(member, zone) > until_utc:
                continue
            found.append(member)
            if spec.count and len(found) >= spec.count:
                return found[: spec.count]
    return found[: spec.count] if spec.count else found


# --- the property -------------------------------------------------------------------------

def small_list(values: st.SearchStrategy[int], most: int = 3) -> st.SearchStrategy[list[int]]:
    """Mostly absent (each part narrows the rule), else 1..most distinct values."""
    return st.one_of(st.just([]), st.just([]), st.just([]),
                     st.lists(values, min_size=1, max_size=most, unique=True))


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    freq = draw(st.sampled_from(FREQS))
    monthday = st.integers(-31, 31).filter(bool)
    parts = {
        "BYMONTH": draw(small_list(st.integers(1, 12))),
        "BYMONTHDAY": draw(small_list(monthday)) if freq != "WEEKLY" else [],
        "BYYEARDAY": (draw(small_list(st.integers(-366, 366).filter(bool), 2))
                      if freq in ("YEARLY", "HOURLY", "MINUTELY") else []),
        "BYWEEKNO": draw(small_list(st.integers(-53, 53).filter(bool), 2))
        if freq == "YEARLY" else [],
        "BYHOUR": draw(small_list(st.integers(0, 23))),
        "BYMINUTE": draw(small_list(st.integers(0, 59))),
        "BYSECOND": draw(st.one_of(st.just([]), small_list(st.integers(0, 59), 2))),
        "BYSETPOS": draw(small_list(st.integers(-6, 6).filter(bool), 2)),
    }
    limit = {"MONTHLY": 5, "YEARLY": 0 if parts["BYWEEKNO"] else 53}.get(freq, 0)
    ns = st.none() if not limit else st.one_of(st.none(), st.integers(-limit, limit).filter(
        lambda n: n != 0 and (not parts["BYMONTH"] or abs(n) <= 5)))
    byday = draw(st.lists(st.tuples(ns, st.integers(0, 6)), max_size=3,
                          unique_by=lambda t: t))
    count = draw(st.one_of(st.none(), st.integers(1, 40)))
    until = None
    if count is None and draw(st.booleans()):
        until = draw(st.sampled_from(["20260401", "20261028T013000", "20260329T020000Z",
                                      "20120105T000000Z", "20261101T063000Z", "20270301"]))
    return Spec(freq, draw(st.sampled_from([1, 1, 2, 3, 5, 7, 13])), count, until, parts,
                byday, draw(st.integers(0, 6)))


EXAMPLES = int(os.environ.get("RRULE_EXAMPLES", "250"))  # ~3 s in `make test`


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(spec=specs(), zone_name=st.sampled_from(sorted(ZONES)), data=st.data())
def test_next_occurrence_matches_a_brute_force_expansion(
    spec: Spec, zone_name: str, data: st.DataObject
) -> None:
    try:
        rule = parse_rule(spec.text())
    except ValueError:
        assume(False)
        return
    zone = ZoneInfo(zone_name)
    transition = datetime.fromisoformat(data.draw(st.sampled_from(ZONES[zone_name])))
    unit = UNIT[spec.freq] * spec.interval
    around = timedelta(minutes=data.draw(st.integers(-3 * 1440, 3 * 1440)))
    current = local(transition.replace(tzinfo=UTC) + around, zone).replace(second=0)
    back = data.draw(st.integers(0, 12))
    seconds = data.draw(st.sampled_from([0, 0, 0, 17]))
    dtstart = (current - unit * back - timedelta(minutes=data.draw(st.integers(0, 180)))
               ).replace(second=seconds)
    if data.draw(st.booleans()):
        dtstart = current  # the due time starts the series
    after = resolve(current, zone) + timedelta(minutes=data.draw(st.sampled_from(
        [0, 0, 0, -90, 45, 1440 * 3])))
    cutoff = max(resolve(current, zone), after)
    end = local(cutoff, zone) + UNIT[spec.freq] * spec.interval * HORIZON[spec.freq]
    series = expand(spec, dtstart, zone, end + timedelta(days=2))
    ahead = [w for w in series if resolve(w, zone) > cutoff]
    exdates: tuple[datetime | date, ...] = ()
    if ahead and data.draw(st.booleans()):  # remove the answer: by its time or its day
        first = min(ahead, key=lambda w: resolve(w, zone))
        exdates = (first,) if data.draw(st.booleans()) else (first.date(),)
    rdates = tuple(data.draw(st.lists(st.sampled_from(
        [current + timedelta(minutes=m) for m in (-60, 30, 150, 1500)]), max_size=2,
        unique=True)))
    removed = {resolve(x, zone) for x in exdates if isinstance(x, datetime)}  # by instant
    candidates = [w for w in [*series, *rdates] if resolve(w, zone) > cutoff
                  and resolve(w, zone) not in removed and w.date() not in exdates]
    expected = min((resolve(w, zone) for w in candidates), default=None)

    rec = Recurrence(rule.text, dtstart, exdates, tuple(sorted(rdates)))
    got = next_occurrence(rec, zone, current, after)
    event(f"{spec.freq}: {'an occurrence' if expected else 'none'} within the horizon")
    if expected is not None and local(expected, zone) <= end:
        assert got == expected, (spec.text(), dtstart, current, after)
    else:  # nothing within the brute force's horizon
        assert got is None or local(got, zone) > end - timedelta(days=2), (
            spec.text(), dtstart, current, after, got)
