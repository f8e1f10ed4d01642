"""Snooze, pure (docs/reminders.md): the instant of a `task.snoozed` event's extra reminder.

`payload.until` (a due_at form, read in the task's zone) or `payload.for` (an
unsigned duration counted from the event's `timestamp`, never from when the event
is handled, so a redelivery hours later asks for the same instant). Both given:
`until` wins.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from worker.rules.kinds import parse_duration
from worker.schedule import parse_when, to_utc


def snooze_instant(changes: dict[str, Any], timestamp: datetime, zone: ZoneInfo,
                   all_day_time: time) -> datetime:
    """The snooze instant (aware UTC); ValueError when neither field is usable."""
    if changes.get("until") is not None:
        return parse_when(changes["until"], zone, all_day_time)
    if changes.get("for") is not None:
        return to_utc(timestamp, "timestamp") + parse_duration(changes["for"], "payload.for")
    raise ValueError("task.snoozed needs payload.until (an instant) or payload.for "
                     "(a duration)")


