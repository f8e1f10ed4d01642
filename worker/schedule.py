"""Pure time math of the worker: no I/O, no clock reads (`now` is always passed in).

Every datetime that crosses this module's boundary is timezone-aware; results are UTC.
The one exception is a *wall-clock time* (`When.wall`, `resolve_local`'s input): a
naive datetime meaning "this reading of the clock in the task's zone", kept as the
user wrote it, because a time written in a DST gap (02:30 on the spring change) has
no instant of its own and would be lost by a round trip through UTC.

DST policy (RFC 5545 §3.3.5), applied by `resolve_local` to every wall-clock time:
a local time inside a spring-forward gap takes the UTC offset from before the gap
(Berlin 02:30 on the gap day is 01:30Z, shown as 03:30 CEST); a local time inside a
fall-back overlap is its first occurrence (the earlier instant).


Recurrences (RRULE expansion) live in `worker.rules.recurrence`.
"""

from __future__ import annotations

import difflib
import io
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cached_property, lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

UTC = ZoneInfo("UTC")

MIN_YEAR = 1970  # sane window for input instants: far from datetime's limits,
MAX_YEAR = 9000  # so offset and DST arithmetic can never overflow
MAX_OFFSET_DAYS = 366  # a reminder more than a year ahead is a data error, not a wish

_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
_FIXED_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")
MAX_FIXED_OFFSET = timedelta(hours=18)  # ISO 8601 / RFC 3339 practice; real zones span -12..+14
_WHEN = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(?:([Zz])|([+-])(\d{2}):?(\d{2}))?)?"
)
_DURATION = re.compile(
    r"P(?:(\d{1,6})W)?(?:(\d{1,6})D)?(?:T(?=\d)(?:(\d{1,8})H)?(?:(\d{1,8})M)?(?:(\d{1,9})S)?)?"
)


@lru_cache(maxsize=512)
def load_zone(name: str) -> ZoneInfo:
    """The ZoneInfo of an IANA zone name, `UTC`, or a fixed offset (`+05:30`, `-0300`).

    ValueError for anything else (unknown IANA names stay invalid).
    """
    if isinstance(name, str) and (fixed := _FIXED_OFFSET.fullmatch(name)):
        return fixed_offset_zone(*fixed.groups())
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= 64
        or not _ZONE_NAME.fullmatch(name)
        or name in {"localtime", "posixrules"}  # files in the zone directory, not zones
    ):
        raise ValueError(f"unknown time zone: {name!r:.80}{_did_you_mean(name)}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone: {name!r}{_did_you_mean(name)}") from exc


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    """Every IANA zone name, by its lower-case form (read once: it lists a directory)."""
    return {zone.lower(): zone for zone in available_timezones()}


def _did_you_mean(name: object) -> str:
    """` (did you mean 'Europe/Berlin'?)` for a close IANA name, else nothing."""
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        return ""
    names = _zone_names()
    close = difflib.get_close_matches(name.strip().lower(), names, n=1, cutoff=0.8)
    return f" (did you mean {names[close[0]]!r}?)" if close else ""


def fixed_offset_zone(sign: str, hours: str, minutes: str) -> ZoneInfo:
    """A ZoneInfo with one constant offset, keyed "+05:30".

    A real ZoneInfo (built from a one-type TZif file, RFC 8536), not a
    `datetime.timezone`, so every function taking a zone keeps one type and the
    DST policy code needs no special case.
    """
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if int(minutes) > 59 or delta > MAX_FIXED_OFFSET:
        raise ValueError(f"unknown time zone: UTC offset out of range: {sign}{hours}:{minutes}")
    key = f"{'-' if sign == '-' and delta else '+'}{hours}:{minutes}"
    seconds = int(delta.total_seconds()) * (-1 if sign == "-" else 1)
    abbr = key.replace(":", "").encode() + b"\0"
    counts = struct.pack(">6l", 0, 0, 0, 0, 1, len(abbr))  # one type, no transitions
    block = counts + struct.pack(">lBB", seconds, 0, 0) + abbr
    header = b"TZif2" + b"\0" * 15
    # POSIX TZ footer: the sign is inverted ("<+0530>-5:30" is five and a half hours east).
    footer = f"<{key.replace(':', '')}>{'+' if seconds < 0 else '-'}{hours}:{minutes}"
    tzif = header + block + header + block + b"\n" + footer.encode() + b"\n"
    return ZoneInfo.from_file(io.BytesIO(tzif), key=key)


def resolve_local(naive: datetime, zone: ZoneInfo) -> datetime:
    """Wall-clock time in `zone` -> aware UTC, with the DST policy of RFC 5545 §3.3.5."""
    if naive.tzinfo is not None:
        raise ValueError("resolve_local expects a naive wall-clock time")
    # PEP 495: fold=0 takes the offset before a transition, which is exactly the
    # RFC 5545 policy for both the gap and the overlap.
    return naive.replace(tzinfo=zone, fold=0).astimezone(UTC)


def check_window(dt: datetime) -> None:
    if not MIN_YEAR <= dt.year <= MAX_YEAR:
        raise ValueError(f"date out of range (years {MIN_YEAR}..{MAX_YEAR}): {dt.year}")


class When(NamedTuple):
    """A parsed time value: the instant and the wall-clock time in the task's zone.

    `wall` is naive. For a naive input it is the text as written (also inside a DST
    gap, where `instant` follows the DST policy); for an input with an offset or Z
    it is the instant's local time in the zone.
    """

    instant: datetime  # aware UTC
    wall: datetime  # naive wall clock in the zone


def parse_when(value: str, zone: ZoneInfo, all_day_time: time) -> datetime:
    """Parse a due_at form (RFC 3339, naive date-time, bare date) -> aware UTC."""
    return parse_when_wall(value, zone, all_day_time).instant


def parse_when_wall(value: str, zone: ZoneInfo, all_day_time: time) -> When:
    """Parse a due_at form -> (aware UTC instant, naive wall clock in `zone` as written)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a date-time string, got {type(value).__name__}")
    match = _WHEN.fullmatch(value.strip()) if len(value) <= 64 else None
    if match is None:
        raise ValueError(f"not a date or RFC 3339 date-time: {value!r:.80}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        if hour is None:
            naive = datetime.combine(date(int(year), int(month), int(day)), all_day_time)
            naive = naive.replace(tzinfo=None)
        else:
            micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
            naive = datetime(int(year), int(month), int(day), int(hour),  # noqa: DTZ001
                             int(minute), int(second) if second else 0, micro)
    except ValueError as exc:
        raise ValueError(f"invalid date-time {value!r}: {exc}") from None
    check_window(naive)
    if zulu:
        instant = naive.replace(tzinfo=UTC)
    elif sign:
        hours, minutes = int(off_h), int(off_m)
        if hours > 23 or minutes > 59:
            raise ValueError(f"invalid UTC offset in {value!r}")
        # UTC = the local reading minus its offset (check_window keeps this in range).
        delta = timedelta(hours=hours, minutes=minutes)
        instant = (naive - delta if sign == "+" else naive + delta).replace(tzinfo=UTC)
    else:
        return When(resolve_local(naive, zone), naive)
    return When(instant, wall_clock(instant, zone))


@dataclass(frozen=True)
class Offset:
    """A reminder offset *before* the due time; negative values are *after* it.

    Signed so that iCalendar's TRIGGER forms fit: `-PT15M` (before) is
    Offset(seconds=900), `+PT15M` (after) is Offset(seconds=-900). Days and seconds
    never have opposite signs (one duration carries one sign).
    """

    days: int = 0  # nominal days: subtracted in wall-clock time (RFC 5545 dur-day)
    seconds: int = 0  # exact seconds: subtracted on the UTC timeline

    def __post_init__(self) -> None:
        if self.days * self.seconds < 0:
            raise ValueError("a reminder offset has one sign for all its parts")
        if abs(self.days) * 86_400 + abs(self.seconds) > MAX_OFFSET_DAYS * 86_400:
            raise ValueError(f"reminder offset longer than {MAX_OFFSET_DAYS} days")

    def iso(self) -> str:
        """Canonical ISO 8601 duration: "P1DT2H" before, "+PT15M" after, "PT0S" (weeks as days)."""
        return self._iso

    @cached_property  # every record save writes it; parse_offset hands out shared instances
    def _iso(self) -> str:
        hours, rest = divmod(abs(self.seconds), 3600)
        minutes, secs = divmod(rest, 60)
        day_part = f"{abs(self.days)}D" if self.days else ""
        units = ((hours, "H"), (minutes, "M"), (secs, "S"))
        time_part = "".join(f"{n}{unit}" for n, unit in units if n)
        if not day_part and not time_part:
            return "PT0S"
        after = "+" if self.days < 0 or self.seconds < 0 else ""
        return f"{after}P{day_part}" + (f"T{time_part}" if time_part else "")


# typed: True must not share the cache entry of 1 (a bool is rejected, 1 minute is not).
@lru_cache(maxsize=1024, typed=True)
def parse_offset(value: str | int) -> Offset:
    """Parse an ISO 8601 duration (PnW, PnD, PTnHnMnS) or integer minutes -> Offset.

    A duration may carry a sign as in iCalendar: none or "-" = before the due time,
    "+" = after it. Minutes are always "before" and unsigned (a signed number is
    ambiguous: -5 reads as "before" in iCalendar and as "after" in arithmetic).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"reminder offset must be a duration or minutes, not {value!r:.40}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative minutes are ambiguous; write -PT15M (before) "
                             "or +PT15M (after)")
        if value > MAX_OFFSET_DAYS * 1440:
            raise ValueError(f"reminder offset longer than {MAX_OFFSET_DAYS} days")
        return Offset(seconds=value * 60)
    text = value.strip().upper()
    if re.fullmatch(r"\d{1,9}", text):
        return parse_offset(int(text))
    if re.fullmatch(r"[+-]\d{1,9}", text):
        raise ValueError("signed minutes are ambiguous; write -PT15M (before) or +PT15M (after)")
    after = text.startswith("+")
    text = text[1:] if text[:1] in ("+", "-") else text
    match = _DURATION.fullmatch(text) if text != "P" else None
    if match is None:
        if re.fullmatch(r"P(\d+Y)?(\d+M)?(\d+[WD])*(T.*)?", text) and re.search(
            r"\d[YM]", text.split("T")[0]
        ):
            raise ValueError("calendar months/years are not supported as reminder offsets")
        raise ValueError(f"not an ISO 8601 duration or minutes: {value!r:.40}")
    weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    if weeks * 7 + days > MAX_OFFSET_DAYS:
        raise ValueError(f"reminder offset longer than {MAX_OFFSET_DAYS} days")
    sign = -1 if after else 1
    return Offset(days=sign * (weeks * 7 + days),
                  seconds=sign * (hours * 3600 + minutes * 60 + seconds))


def to_utc(dt: datetime, what: str) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return dt.astimezone(UTC)


def wall_clock(dt: datetime, zone: ZoneInfo) -> datetime:
    """Aware -> naive wall-clock time in `zone` (fold dropped: the policy picks it again)."""
    return dt.astimezone(zone).replace(tzinfo=None, fold=0)


def reminder_instants(
    due_at: datetime | None,
    zone: ZoneInfo,
    offsets: Sequence[Offset],
    remind_at: Sequence[datetime],
    due_wall: datetime | None = None,
) -> list[datetime]:
    """Every (due_at minus offset) plus every remind_at: aware UTC, de-duplicated, sorted.

    Day parts are subtracted from `due_wall`, the naive wall clock as the user wrote
    it (default: due_at's local time), then resolved by the DST policy: "P1D before
    02:30 written on the spring-change day" is 02:30 the day before. Exact parts are
    subtracted on the UTC timeline from there.
    """
    instants = {to_utc(dt, "remind_at") for dt in remind_at}
    if due_at is not None:
        due = to_utc(due_at, "due_at")
        if due_wall is not None and due_wall.tzinfo is not None:
            raise ValueError("due_wall must be a naive wall-clock time")
        wall = due_wall if due_wall is not None else wall_clock(due, zone)
        for offset in offsets:
            base = due
            if offset.days:
                base = resolve_local(wall - timedelta(days=offset.days), zone)
            instants.add(base - timedelta(seconds=offset.seconds))
    return sorted(instants)


def format_utc(dt: datetime) -> str:
    """RFC 3339 UTC with "Z"; microseconds only when there are any."""
    if dt.tzinfo is not UTC:  # most instants here are UTC already: no conversion
        dt = to_utc(dt, "instant")
    return dt.isoformat()[:-6] + "Z"  # "+00:00" -> "Z"


def format_local(dt: datetime, zone: ZoneInfo) -> str:
    """Wall-clock time in `zone` with its offset, e.g. "2026-12-01T09:00:00+01:00"."""
    return to_utc(dt, "instant").astimezone(zone).isoformat()
