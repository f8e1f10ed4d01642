"""Quiet hours, pure (docs/reminders.md): move an instant out of a wall-clock window.

The window is wall-clock time in the task's zone, `start` inclusive, `end`
exclusive; `start > end` spans midnight (22:00-07:00). An instant whose local time
falls inside moves to the window's end on the right local day, resolved by the DST
policy of `schedule.resolve_local` (so 07:00 stays 07:00 across DST; an end inside a
spring-forward gap takes the offset from before the gap). start == end: no window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from worker.schedule import resolve_local, wall_clock

_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time

    def text(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _clock(value: object, what: str) -> time:
    match = _HHMM.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{what} must be HH:MM (00:00-23:59)")
    return time(int(match.group(1)), int(match.group(2)))


def parse_quiet_hours(value: object) -> QuietHours:
    """`{"start": "22:00", "end": "07:00"}` or `"22:00-07:00"` -> QuietHours."""
    if isinstance(value, str):
        start, sep, end = value.partition("-")
        if not sep:
            raise ValueError("quiet hours must be HH:MM-HH:MM")
        return QuietHours(_clock(start, "quiet hours start"), _clock(end, "quiet hours end"))
    if isinstance(value, dict) and set(value) == {"start", "end"}:
        return QuietHours(_clock(value["start"], "quiet_hours.start"),
                          _clock(value["end"], "quiet_hours.end"))
    raise ValueError('quiet_hours must be {"start": "HH:MM", "end": "HH:MM"} or null')


def defer(instant: datetime, zone: ZoneInfo, quiet: QuietHours | None) -> datetime | None:
    """The end of the window `instant` falls in (aware UTC), or None when outside."""
    if quiet is None or quiet.start == quiet.end:
        return None
    local = wall_clock(instant, zone)
    clock = local.time()
    if quiet.start < quiet.end:
        inside, end_day = quiet.start <= clock < quiet.end, local.date()
    else:  # spans midnight: the evening part ends tomorrow
        inside = clock >= quiet.start or clock < quiet.end
        end_day = local.date() + timedelta(days=1) if clock >= quiet.start else local.date()
    if not inside:
        return None
    end = resolve_local(datetime.combine(end_day, quiet.end), zone)
    return end if end > instant else None  # never earlier (a DST gap at the end)
