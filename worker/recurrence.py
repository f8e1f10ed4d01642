"""Recurrences, pure: RFC 5545 RRULEs expanded in the task's wall-clock time.

No I/O, no clock reads (`now` is passed in); results are aware UTC. Every local
time goes through `schedule.resolve_local`, so its DST policy applies.

Decisions:
- Rules are expanded in wall-clock time of the task's zone from a naive local start,
  so 09:00 stays 09:00 across DST; each occurrence then goes through `resolve_local`.
- The series start (DTSTART) is always its first occurrence and counts for COUNT, as
  RFC 5545 says, even when the rule itself would not generate it.
- DTSTART (or any other content line) inside the rule text is rejected: the object form
  `{"rrule", "dtstart", "exdates"}` is the one way to say where a series starts.
- COUNT and UNTIL are applied here, not by dateutil (a UTC UNTIL cannot be given to
  dateutil together with a naive start). Both together are rejected, as RFC 5545 says.
- Rule parts that RFC 5545 marks N/A for the frequency, and BYMONTH/BYMONTHDAY/BYYEARDAY
  combinations that no date satisfies, are rejected when parsed.
- Bounded CPU: a search looks at no more than `MAX_SCAN` candidates and never past the
  year `MAX_YEAR`; beyond that the series is treated as ended (None). Without COUNT, the
  search of HOURLY/DAILY/WEEKLY rules starts near `now` (whole periods skipped), so an
  old series costs no more than a new one.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from dateutil.rrule import rrule, rrulestr

from worker.schedule import (
    MAX_YEAR,
    UTC,
    format_local,
    parse_when,
    resolve_local,
    to_utc,
    wall_clock,
)

MAX_SCAN = 200_000  # candidates one next_occurrence may look at (bounds CPU per event)
MAX_COUNT = 100_000
MAX_INTERVAL = 10_000
_DST_SLACK = timedelta(hours=3)  # largest real DST shift is 2 h (Antarctica/Troll)
_FAST_FORWARD_MARGIN = timedelta(days=2)  # > any UTC offset difference, keeps BYSETPOS sets whole
_SHORTHANDS = {"daily": "DAILY", "weekly": "WEEKLY", "monthly": "MONTHLY", "yearly": "YEARLY"}


@dataclass(frozen=True)
class Recurrence:
    """A parsed recurrence: normalized RRULE text, optional series start and exdates (UTC)."""

    rrule: str
    dtstart: datetime | None = None
    exdates: tuple[datetime, ...] = ()

    def to_json(self, zone: ZoneInfo, series_start: datetime) -> dict[str, object]:
        """The object form sent downstream, dates as local wall-clock time with offset."""
        return {
            "rrule": self.rrule,
            "dtstart": format_local(series_start, zone),
            "exdates": [format_local(dt, zone) for dt in self.exdates],
        }


_FREQS = ("YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY")
_WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_INT_PARTS = {  # key -> (low, high, signed: zero excluded and negatives allowed)
    "BYSECOND": (0, 60, False),
    "BYMINUTE": (0, 59, False),
    "BYHOUR": (0, 23, False),
    "BYMONTH": (1, 12, False),
    "BYMONTHDAY": (1, 31, True),
    "BYYEARDAY": (1, 366, True),
    "BYWEEKNO": (1, 53, True),
    "BYSETPOS": (1, 366, True),
}
_NOT_APPLICABLE = {  # RFC 5545 §3.3.10 table: parts that make no sense for a frequency
    "BYWEEKNO": {"MONTHLY", "WEEKLY", "DAILY", "HOURLY"},
    "BYYEARDAY": {"MONTHLY", "WEEKLY", "DAILY"},
    "BYMONTHDAY": {"WEEKLY"},
}
_DAY_FILTERS = ("BYMONTH", "BYMONTHDAY", "BYYEARDAY", "BYDAY")
_FIXED_PERIOD = {"HOURLY": timedelta(hours=1), "DAILY": timedelta(1), "WEEKLY": timedelta(7)}


@dataclass(frozen=True)
class _Rule:
    text: str  # normalized, as sent downstream
    freq: str
    interval: int
    count: int | None
    until_utc: datetime | None
    until_local: datetime | None  # naive wall clock, inclusive
    expand_text: str  # what dateutil expands: no COUNT/UNTIL, day filters of DAILY/HOURLY removed
    # Day filters applied here for DAILY/HOURLY: dateutil would loop to year 9999
    # without yielding on a rule that never matches; here every candidate counts.
    months: frozenset[int] = frozenset()
    monthdays: frozenset[int] = frozenset()
    yeardays: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()

    def keeps(self, local: datetime) -> bool:
        if self.months and local.month not in self.months:
            return False
        if self.weekdays and local.weekday() not in self.weekdays:
            return False
        if self.monthdays:
            length = calendar.monthrange(local.year, local.month)[1]
            if local.day not in self.monthdays and local.day - length - 1 not in self.monthdays:
                return False
        if self.yeardays:
            number = local.timetuple().tm_yday
            length = 366 if calendar.isleap(local.year) else 365
            if number not in self.yeardays and number - length - 1 not in self.yeardays:
                return False
        return True


def _ints(key: str, value: str) -> list[int]:
    low, high, signed = _INT_PARTS[key]
    numbers = []
    for item in value.split(","):
        if not re.fullmatch(r"[+-]?\d{1,3}" if signed else r"\d{1,2}", item):
            raise ValueError(f"invalid {key}: {value}")
        number = int(item)
        if not low <= abs(number) <= high or (number < 0 and not signed):
            raise ValueError(f"{key} value out of range: {item}")
        numbers.append(number)
    return numbers


def _parse_until(value: str) -> tuple[datetime | None, datetime | None]:
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})(?:T(\d{2})(\d{2})(\d{2})(Z)?)?", value)
    if match is None:
        raise ValueError(f"invalid UNTIL: {value:.40}")
    y, mo, d, h, mi, s, z = match.groups()
    try:
        if h is None:  # a date: the whole local day is included
            return None, datetime.combine(date(int(y), int(mo), int(d)), time.max)
        moment = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))  # noqa: DTZ001
    except ValueError:
        raise ValueError(f"invalid UNTIL date: {value}") from None
    return (moment.replace(tzinfo=UTC), None) if z else (None, moment)


def _satisfiable(months: list[int], monthdays: list[int], yeardays: list[int]) -> bool:
    for year in (2000, 2001):  # a leap year and a common year hold every (month, day, yday)
        day = date(year, 1, 1)
        while day.year == year:
            length = calendar.monthrange(year, day.month)[1]
            ylength = 366 if year == 2000 else 365
            yday = day.timetuple().tm_yday
            if (
                (not months or day.month in months)
                and (not monthdays or day.day in monthdays or day.day - length - 1 in monthdays)
                and (not yeardays or yday in yeardays or yday - ylength - 1 in yeardays)
            ):
                return True
            day += timedelta(days=1)
    return False


@lru_cache(maxsize=1024)
def _compile(text: str) -> _Rule:
    """Validate and normalize rule text (without "RRULE:"); cached, parsing is the cost."""
    if not text or len(text) > 512:
        raise ValueError("recurrence rule is empty or too long")
    body = text.strip()
    if body.upper().startswith("RRULE:"):
        body = body[6:]
    if "DTSTART" in body.upper():
        raise ValueError(
            "DTSTART inside the rule text is not supported; "
            'use the object form {"rrule": ..., "dtstart": ...}'
        )
    if any(c in body for c in ":\r\n"):
        raise ValueError("only a single RRULE is supported (no other content lines)")
    parts: dict[str, str] = {}
    for pair in filter(None, body.upper().split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Z]+", key) or not value:
            raise ValueError(f"malformed rule part: {pair!r:.40}")
        if key in parts:
            raise ValueError(f"rule part given twice: {key}")
        parts[key] = value
    freq = parts.get("FREQ")
    if freq is None:
        raise ValueError("recurrence rule has no FREQ")
    if freq in {"MINUTELY", "SECONDLY"}:
        raise ValueError(f"FREQ={freq} is not supported: tasks recur at most hourly")
    if freq not in _FREQS:
        raise ValueError(f"unknown FREQ: {freq}")
    known = {"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "WKST", *_INT_PARTS}
    unknown = sorted(set(parts) - known)
    if unknown:
        raise ValueError(f"unknown rule part(s): {', '.join(unknown)}")
    for key, freqs in _NOT_APPLICABLE.items():
        if key in parts and freq in freqs:
            raise ValueError(f"{key} cannot be used with FREQ={freq}")
    interval = _bounded_int(parts, "INTERVAL", MAX_INTERVAL) or 1
    count = _bounded_int(parts, "COUNT", MAX_COUNT)
    if count is not None and "UNTIL" in parts:
        raise ValueError("COUNT and UNTIL cannot both be given")
    until_utc, until_local = _parse_until(parts["UNTIL"]) if "UNTIL" in parts else (None, None)
    numbers = {key: _ints(key, parts[key]) for key in _INT_PARTS if key in parts}
    weekdays: list[int] = []
    for item in parts.get("BYDAY", "").split(",") if "BYDAY" in parts else []:
        match = re.fullmatch(r"([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)", item)
        if match is None:
            raise ValueError(f"invalid BYDAY: {parts['BYDAY']}")
        if match.group(1) is not None:
            nth, limit = int(match.group(1)), {"MONTHLY": 5, "YEARLY": 53}.get(freq, 0)
            if not 1 <= abs(nth) <= limit or (freq == "YEARLY" and "BYWEEKNO" in parts):
                raise ValueError(f"BYDAY {item} is not valid with FREQ={freq}")
        weekdays.append(_WEEKDAYS.index(match.group(2)))
    if "WKST" in parts and parts["WKST"] not in _WEEKDAYS:
        raise ValueError(f"invalid WKST: {parts['WKST']}")
    if "BYSETPOS" in parts:
        if not set(parts) & (set(_INT_PARTS) - {"BYSETPOS"} | {"BYDAY"}):
            raise ValueError("BYSETPOS needs another BY... rule part")
        if freq in _FIXED_PERIOD:  # a fixed period has a known largest set: check it
            size = len(set(weekdays)) if freq == "WEEKLY" and weekdays else 1
            keys = ("BYHOUR", "BYMINUTE", "BYSECOND")[1 if freq == "HOURLY" else 0 :]
            for key in keys:
                size *= len(set(numbers.get(key, [0])))
            if min(abs(n) for n in numbers["BYSETPOS"]) > size:
                raise ValueError("BYSETPOS selects nothing: every position is out of range")
    if not _satisfiable(*(numbers.get(k, []) for k in ("BYMONTH", "BYMONTHDAY", "BYYEARDAY"))):
        raise ValueError("the rule can never occur: no date matches its BY... parts")
    normalized = ";".join([f"FREQ={freq}", *(f"{k}={v}" for k, v in parts.items() if k != "FREQ")])
    filtered = freq in {"DAILY", "HOURLY"}
    skipped = {"FREQ", "COUNT", "UNTIL", *(_DAY_FILTERS if filtered else ())}
    expand = ";".join(
        [f"FREQ={freq}", *(f"{k}={v}" for k, v in parts.items() if k not in skipped)]
        + ([] if "WKST" in parts else ["WKST=MO"])  # dateutil's default is a process global
    )
    rule = _Rule(normalized, freq, interval, count, until_utc, until_local, expand)
    if filtered:
        rule = replace(
            rule,
            months=frozenset(numbers.get("BYMONTH", ())),
            monthdays=frozenset(numbers.get("BYMONTHDAY", ())),
            yeardays=frozenset(numbers.get("BYYEARDAY", ())),
            weekdays=frozenset(weekdays),
        )
    try:  # INTERVAL left out: with BYHOUR its validity depends on the start hour
        _expander(re.sub(r";INTERVAL=\d+", "", expand), datetime(2000, 1, 1))  # noqa: DTZ001
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"invalid recurrence rule: {exc}") from None
    return rule


def _bounded_int(parts: dict[str, str], key: str, high: int) -> int | None:
    if key not in parts:
        return None
    if not re.fullmatch(r"\d{1,9}", parts[key]) or not 1 <= int(parts[key]) <= high:
        raise ValueError(f"{key} must be an integer from 1 to {high}: {parts[key]:.20}")
    return int(parts[key])


@lru_cache(maxsize=1024)
def _expander(expand_text: str, seed: datetime) -> rrule:
    result = rrulestr(expand_text, dtstart=seed)
    assert isinstance(result, rrule)
    return result


def parse_recurrence(value: object, zone: ZoneInfo, all_day_time: time) -> Recurrence:
    """Parse payload.recurrence: RRULE text, a shorthand, or {"rrule", "dtstart", "exdates"}."""
    dtstart: datetime | None = None
    exdates: tuple[datetime, ...] = ()
    if isinstance(value, Mapping):
        extra = sorted(str(k) for k in value if k not in {"rrule", "dtstart", "exdates"})
        if extra:
            raise ValueError(f"unknown recurrence field(s): {', '.join(extra)[:80]}")
        text = value.get("rrule")
        if value.get("dtstart") is not None:
            dtstart = parse_when(value["dtstart"], zone, all_day_time)
        raw = value.get("exdates")
        raw_list = [] if raw is None else [raw] if isinstance(raw, str) else raw
        if not isinstance(raw_list, list) or len(raw_list) > 1000:
            raise ValueError("exdates must be a date-time or a list of at most 1000")
        exdates = tuple(sorted({parse_when(item, zone, all_day_time) for item in raw_list}))
    else:
        text = value
    if not isinstance(text, str):
        raise ValueError("recurrence must be an RRULE string, a shorthand or an object with rrule")
    shorthand = _SHORTHANDS.get(text.strip().lower())
    rule = _compile(f"FREQ={shorthand}" if shorthand else text)
    return Recurrence(rule.text, dtstart, exdates)


def series_start(rec: Recurrence, current: datetime) -> datetime:
    """The first occurrence of the series: rec.dtstart, else the current occurrence."""
    return to_utc(rec.dtstart if rec.dtstart is not None else current, "series start")


def _candidates(rule: _Rule, seed: datetime, start: datetime | None) -> Iterator[datetime]:
    """Naive local occurrences from `seed`; `start` (the series start) is always the first."""
    if start is not None:
        yield start
    for scanned, local in enumerate(_expander(rule.expand_text, seed), start=1):
        if scanned > MAX_SCAN or local.year > MAX_YEAR:
            return  # bounded CPU: treated as the end of the series
        if local != start and rule.keeps(local):
            yield local


def next_occurrence(
    rec: Recurrence, zone: ZoneInfo, current: datetime, now: datetime
) -> datetime | None:
    """First occurrence strictly after `current` and `now` (aware UTC), or None when ended."""
    rule = _compile(rec.rrule)
    start = wall_clock(series_start(rec, current), zone).replace(microsecond=0)
    cutoff = max(to_utc(current, "current"), to_utc(now, "now"))
    seed: datetime = start
    first: datetime | None = start
    step = _FIXED_PERIOD.get(rule.freq)
    if rule.count is None and step is not None:
        # Without COUNT only the phase of the series matters: skip whole periods
        # (in blocks of 64 so the cached expander is reused for a while).
        behind = (wall_clock(cutoff, zone) - _FAST_FORWARD_MARGIN - start) // (step * rule.interval)
        if behind >= 64:
            seed, first = start + (behind // 64 * 64) * step * rule.interval, None
    exdates = {to_utc(dt, "exdate") for dt in rec.exdates}
    best: datetime | None = None
    best_local: datetime | None = None
    try:
        for number, local in enumerate(_candidates(rule, seed, first), start=1):
            if rule.count is not None and number > rule.count:
                break
            if rule.until_local is not None and local > rule.until_local:
                break
            if best_local is not None and local > best_local + _DST_SLACK:
                break  # later wall-clock times cannot map to an earlier instant
            instant = resolve_local(local, zone)
            if rule.until_utc is not None and instant > rule.until_utc:
                if local > wall_clock(rule.until_utc, zone) + _DST_SLACK:
                    break
                continue
            if instant <= cutoff or instant in exdates:
                continue
            if best is None or instant < best:
                best, best_local = instant, best_local or local
    except ValueError:  # dateutil: BYHOUR unreachable with this INTERVAL from this start
        return best
    return best

