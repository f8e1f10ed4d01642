"""RRULE text -> a validated, normalized `Rule` (RFC 5545 §3.3.10); pure, cached.

What is accepted (docs/reminders.md, "Recurrence"): the text with or without "RRULE:",
in any case, with spaces anywhere (`FREQ=WEEKLY; BYDAY=MO`); FREQ from YEARLY down to
MINUTELY (SECONDLY is refused); the shorthands in `SHORTHANDS`. Refused: other content
lines (DTSTART, EXDATE) inside the text, unknown parts, parts RFC 5545 marks N/A for the
frequency, COUNT with UNTIL, values out of range, day parts no date can satisfy,
BYSETPOS that selects nothing.
BYSECOND=60 (a leap second) is refused: a naive datetime cannot hold it.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import lru_cache

MAX_COUNT = 100_000
MAX_INTERVAL = 10_000
FREQS = ("YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY")
WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
SHORTHANDS = {
    "daily": "FREQ=DAILY",
    "weekly": "FREQ=WEEKLY",
    "monthly": "FREQ=MONTHLY",
    "yearly": "FREQ=YEARLY",
    "hourly": "FREQ=HOURLY",
    "weekdays": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR",
}
_INT_PARTS = {  # key -> (low, high, signed: zero excluded and negatives allowed)
    "BYSECOND": (0, 59, False),
    "BYMINUTE": (0, 59, False),
    "BYHOUR": (0, 23, False),
    "BYMONTH": (1, 12, False),
    "BYMONTHDAY": (1, 31, True),
    "BYYEARDAY": (1, 366, True),
    "BYWEEKNO": (1, 53, True),
    "BYSETPOS": (1, 366, True),
}
_NOT_APPLICABLE = {  # RFC 5545 §3.3.10 table: parts that make no sense for a frequency
    "BYWEEKNO": {"MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY"},
    "BYYEARDAY": {"MONTHLY", "WEEKLY", "DAILY"},
    "BYMONTHDAY": {"WEEKLY"},
}


@dataclass(frozen=True)
class Rule:
    """A parsed RRULE. Lists are sorted and de-duplicated; empty means "not given"."""

    text: str  # normalized, as stored and sent downstream
    freq: str
    interval: int = 1
    count: int | None = None
    until_utc: datetime | None = None  # UNTIL with "Z": an instant
    until_local: datetime | None = None  # naive wall clock, inclusive (a date: its last moment)
    bysecond: tuple[int, ...] = ()
    byminute: tuple[int, ...] = ()
    byhour: tuple[int, ...] = ()
    byweekday: tuple[int, ...] = ()  # plain BYDAY entries, Monday = 0
    bynweekday: tuple[tuple[int, int], ...] = ()  # (weekday, n) of BYDAY entries like -1FR
    bymonthday: tuple[int, ...] = ()
    byyearday: tuple[int, ...] = ()
    byweekno: tuple[int, ...] = ()
    bymonth: tuple[int, ...] = ()
    bysetpos: tuple[int, ...] = ()
    wkst: int = 0


def _ints(key: str, value: str, typed: str) -> tuple[int, ...]:
    """`value`'s integers; a ValueError shows `typed`, the value as the user typed it."""
    low, high, signed = _INT_PARTS[key]
    numbers = set()
    for index, item in enumerate(value.split(",")):
        if not re.fullmatch(r"[+-]?\d{1,3}" if signed else r"\d{1,2}", item):
            raise ValueError(f"invalid {key}: {typed:.40}")
        number = int(item)
        if not low <= abs(number) <= high or (number < 0 and not signed):
            raise ValueError(f"{key} value out of range: {_item(typed, index)}")
        numbers.add(number)
    return tuple(sorted(numbers))


def _item(typed: str, index: int) -> str:
    """Entry `index` of a comma-separated value as typed."""
    items = typed.split(",")
    return items[index].strip() if index < len(items) else typed


def _bounded_int(parts: dict[str, str], key: str, high: int, typed: dict[str, str]
                 ) -> int | None:
    if key not in parts:
        return None
    if not re.fullmatch(r"\d{1,9}", parts[key]) or not 1 <= int(parts[key]) <= high:
        raise ValueError(f"{key} must be an integer from 1 to {high}: {typed[key]:.20}")
    return int(parts[key])


def _parse_until(value: str, typed: str) -> tuple[datetime | None, datetime | None]:
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})(?:T(\d{2})(\d{2})(\d{2})(Z)?)?", value)
    if match is None:
        raise ValueError(f"invalid UNTIL: {typed:.40}")
    y, mo, d, h, mi, s, z = match.groups()
    try:
        if h is None:  # a date: the whole local day is included
            return None, datetime.combine(date(int(y), int(mo), int(d)), time.max)
        moment = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))  # noqa: DTZ001
    except ValueError:
        raise ValueError(f"invalid UNTIL date: {typed:.40}") from None
    return (moment.replace(tzinfo=UTC), None) if z else (None, moment)


def _satisfiable(months: tuple[int, ...], monthdays: tuple[int, ...],
                 yeardays: tuple[int, ...]) -> bool:
    for year in (2000, 2001):  # a leap year and a common year hold every (month, day, yday)
        ylength = 366 if year == 2000 else 365
        for month in months or range(1, 13):
            length = calendar.monthrange(year, month)[1]
            for day in range(1, length + 1):
                yday = date(year, month, day).timetuple().tm_yday
                if (not monthdays or day in monthdays or day - length - 1 in monthdays) and (
                    not yeardays or yday in yeardays or yday - ylength - 1 in yeardays
                ):
                    return True
    return False


def _split(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """The rule's parts, KEY -> VALUE normalized (upper case, no blanks), and each
    value as the user typed it (for messages: a rule is told as it was written)."""
    if not isinstance(text, str) or not text.strip() or len(text) > 512:
        raise ValueError("recurrence rule is empty or too long")
    written = text.strip()
    if written[:6].upper() == "RRULE:":
        written = written[6:]
    body = re.sub(r"[ \t]+", "", written).upper()  # spaces around ";" and "=" are accepted
    if "DTSTART" in body:
        raise ValueError(
            "DTSTART inside the rule text is not supported; "
            'use the object form {"rrule": ..., "dtstart": ...}'
        )
    if any(c in body for c in ":\r\n"):
        raise ValueError("only a single RRULE is supported (no other content lines)")
    parts: dict[str, str] = {}
    typed: dict[str, str] = {}
    for piece in written.split(";"):
        pair = re.sub(r"[ \t]+", "", piece).upper()
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Z]+", key) or not value:
            raise ValueError(f"malformed rule part: {piece.strip()!r:.40}")
        if key in parts:
            raise ValueError(f"rule part given twice: {piece.strip().partition('=')[0].strip()}")
        parts[key] = value
        typed[key] = piece.partition("=")[2].strip()
    return parts, typed


@lru_cache(maxsize=2048)
def parse_rule(text: str) -> Rule:
    """Validate and normalize RRULE text (ValueError with the reason); cached."""
    shorthand = SHORTHANDS.get(text.strip().lower()) if isinstance(text, str) else None
    parts, typed = _split(shorthand or text)
    freq = parts.get("FREQ")
    if freq is None:
        raise ValueError("recurrence rule has no FREQ")
    if freq == "SECONDLY":
        raise ValueError("FREQ=SECONDLY is not supported: tasks recur at most every minute")
    if freq not in FREQS:
        raise ValueError(f"unknown FREQ: {typed['FREQ']:.20}")
    known = {"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "WKST", *_INT_PARTS}
    unknown = sorted(set(parts) - known)
    if unknown:
        raise ValueError(f"unknown rule part(s): {', '.join(unknown)[:80]}")
    for key, freqs in _NOT_APPLICABLE.items():
        if key in parts and freq in freqs:
            raise ValueError(f"{key} cannot be used with FREQ={freq}")
    interval = _bounded_int(parts, "INTERVAL", MAX_INTERVAL, typed) or 1
    count = _bounded_int(parts, "COUNT", MAX_COUNT, typed)
    if count is not None and "UNTIL" in parts:
        raise ValueError("COUNT and UNTIL cannot both be given")
    until_utc, until_local = (_parse_until(parts["UNTIL"], typed["UNTIL"]) if "UNTIL" in parts
                              else (None, None))
    numbers = {key: _ints(key, parts[key], typed[key]) for key in _INT_PARTS if key in parts}
    plain: set[int] = set()
    nth: set[tuple[int, int]] = set()
    for index, item in enumerate(parts["BYDAY"].split(",") if "BYDAY" in parts else ()):
        match = re.fullmatch(r"([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)", item)
        if match is None:
            raise ValueError(f"invalid BYDAY: {typed['BYDAY']:.40}")
        weekday = WEEKDAYS.index(match.group(2))
        if match.group(1) is None:
            plain.add(weekday)
            continue
        n, limit = int(match.group(1)), {"MONTHLY": 5, "YEARLY": 53}.get(freq, 0)
        if not 1 <= abs(n) <= limit or (freq == "YEARLY" and "BYWEEKNO" in parts):
            raise ValueError(f"BYDAY {_item(typed['BYDAY'], index)} is not valid with "
                             f"FREQ={typed['FREQ']}")
        if freq == "YEARLY" and "BYMONTH" in parts and abs(n) > 5:
            raise ValueError(f"BYDAY {_item(typed['BYDAY'], index)} is not valid within a "
                             "month (BYMONTH)")
        nth.add((weekday, n))
    if "WKST" in parts and parts["WKST"] not in WEEKDAYS:
        raise ValueError(f"invalid WKST: {typed['WKST']:.10}")
    months, monthdays, yeardays = (numbers.get(k, ()) for k in ("BYMONTH", "BYMONTHDAY",
                                                                "BYYEARDAY"))
    if not _satisfiable(months, monthdays, yeardays):
        raise ValueError("the rule can never occur: no date matches its BY... parts")
    if "BYSETPOS" in parts:
        if not set(parts) & (set(_INT_PARTS) - {"BYSETPOS"} | {"BYDAY"}):
            raise ValueError("BYSETPOS needs another BY... rule part")
        if min(abs(n) for n in numbers["BYSETPOS"]) > _largest_set(freq, parts, numbers):
            raise ValueError("BYSETPOS selects nothing: every position is out of range")
    normalized = ";".join([f"FREQ={freq}", *(f"{k}={v}" for k, v in parts.items() if k != "FREQ")])
    return Rule(
        normalized, freq, interval, count, until_utc, until_local,
        bysecond=numbers.get("BYSECOND", ()), byminute=numbers.get("BYMINUTE", ()),
        byhour=numbers.get("BYHOUR", ()), byweekday=tuple(sorted(plain)),
        bynweekday=tuple(sorted(nth)), bymonthday=monthdays, byyearday=yeardays,
        byweekno=numbers.get("BYWEEKNO", ()), bymonth=months,
        bysetpos=numbers.get("BYSETPOS", ()), wkst=WEEKDAYS.index(parts.get("WKST", "MO")),
    )


def _largest_set(freq: str, parts: dict[str, str], numbers: dict[str, tuple[int, ...]]) -> int:
    """Upper bound of a period's set size, to refuse BYSETPOS that can select nothing."""
    days = {"YEARLY": 366, "MONTHLY": 31, "WEEKLY": 7, "DAILY": 1, "HOURLY": 1, "MINUTELY": 1}
    size = days[freq]
    if freq == "WEEKLY":
        size = len(set(parts.get("BYDAY", "MO").split(",")))
    keys = {"HOURLY": ("BYMINUTE", "BYSECOND"), "MINUTELY": ("BYSECOND",)}.get(
        freq, ("BYHOUR", "BYMINUTE", "BYSECOND"))
    for key in keys:
        size *= len(numbers.get(key, (0,)))
    return size

