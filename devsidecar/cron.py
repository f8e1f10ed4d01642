"""Pure job schedules: 6-field cron (seconds first), `@every <go duration>`, `@daily`….

`next_after(schedule, previous)` is a pure function of the instant given; cron
runs in UTC unless the spec starts with `CRON_TZ=Zone ` (daprd runs cron in
the scheduler host's zone; the development sidecar pins UTC so tests do not
depend on the laptop).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .timeparse import parse_go_duration

_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_MONTHS = {
    n: i
    for i, n in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1
    )
}
_DAYS = {n: i for i, n in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
# (low, high, names) per field: second, minute, hour, day of month, month, day of week.
_FIELDS: tuple[tuple[int, int, dict[str, int]], ...] = (
    (0, 59, {}),
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (1, 12, _MONTHS),
    (0, 6, _DAYS),
)
# A spec that matches nothing (30 February) must not spin forever.
_SEARCH_LIMIT = timedelta(days=366 * 5)


class ScheduleError(ValueError):
    """The schedule text cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Every:
    interval: timedelta


@dataclass(frozen=True, slots=True)
class Cron:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool
    zone: tzinfo


Schedule = Every | Cron


def parse_schedule(text: str) -> Schedule:
    spec = text.strip()
    zone: tzinfo = UTC
    if spec.startswith(("CRON_TZ=", "TZ=")):
        head, _, spec = spec.partition(" ")
        try:
            zone = ZoneInfo(head.split("=", 1)[1])
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ScheduleError(f"unknown time zone in {text!r}") from exc
        spec = spec.strip()
    if spec.startswith("@every "):
        interval = parse_go_duration(spec[len("@every ") :].strip())
        if interval is None or interval <= timedelta(0):
            raise ScheduleError(f"bad @every duration in {text!r}")
        return Every(interval)
    if spec.startswith("@"):
        if spec not in _DESCRIPTORS:
            raise ScheduleError(f"unknown descriptor {spec!r}")
        spec = _DESCRIPTORS[spec]
    parts = spec.split()
    if len(parts) != 6:
        raise ScheduleError(f"expected 6 cron fields (seconds first), got {len(parts)}: {text!r}")
    sets = [
        _parse_field(p, lo, hi, names) for p, (lo, hi, names) in zip(parts, _FIELDS, strict=True)
    ]
    weekdays = frozenset(d % 7 for d in sets[5])
    return Cron(
        seconds=sets[0],
        minutes=sets[1],
        hours=sets[2],
        days=sets[3],
        months=sets[4],
        weekdays=weekdays,
        days_restricted=parts[3] not in ("*", "?"),
        weekdays_restricted=parts[5] not in ("*", "?"),
        zone=zone,
    )


def _parse_field(text: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    # Day of week 7 is Sunday too.
    top = 7 if names is _DAYS else hi
    for item in text.split(","):
        rng, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"bad step in {text!r}")
            step = int(step_text)
        if rng in ("*", "?"):
            start, end = lo, hi
        elif "-" in rng:
            a, _, b = rng.partition("-")
            start, end = _value(a, names), _value(b, names)
        else:
            start = _value(rng, names)
            end = hi if step_text else start
        if not (lo <= start <= top and lo <= end <= top and start <= end):
            raise ScheduleError(f"value out of range in {text!r}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _value(text: str, names: dict[str, int]) -> int:
    upper = text.upper()
    if upper in names:
        return names[upper]
    if not text.isdigit():
        raise ScheduleError(f"bad cron value {text!r}")
    return int(text)


def next_after(schedule: Schedule, previous: datetime) -> datetime | None:
    """The first instant strictly after `previous` (aware); None if none within 5 years."""
    if isinstance(schedule, Every):
        return previous + schedule.interval
    local = previous.astimezone(schedule.zone).replace(tzinfo=None, microsecond=0)
    t = local + timedelta(seconds=1)
    limit = local + _SEARCH_LIMIT
    while t <= limit:
        if t.month not in schedule.months:
            t = (t.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0)
            continue
        if not _day_matches(schedule, t):
            t = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            continue
        if t.hour not in schedule.hours:
            t = (t + timedelta(hours=1)).replace(minute=0, second=0)
            continue
        if t.minute not in schedule.minutes:
            t = (t + timedelta(minutes=1)).replace(second=0)
            continue
        if t.second not in schedule.seconds:
            t += timedelta(seconds=1)
            continue
        return t.replace(tzinfo=schedule.zone).astimezone(UTC)
    return None


def _day_matches(schedule: Cron, t: datetime) -> bool:
    in_days = t.day in schedule.days
    in_weekdays = (t.isoweekday() % 7) in schedule.weekdays
    # Like robfig/cron: when both day fields are restricted, either may match.
    if schedule.days_restricted and schedule.weekdays_restricted:
        return in_days or in_weekdays
    return in_days and in_weekdays
