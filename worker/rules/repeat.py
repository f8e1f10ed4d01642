"""Repeat until done, pure (docs/reminders.md): the overdue reminders of a task.

`{"every": "PT1H", "max": 5}`: a reminder of kind `overdue` at due + every,
due + 2*every, ... at most `max` of them. Bounded: `every` at least MIN_EVERY,
`max` at most MAX_REPEATS; values outside are refused (the part is left out of the
event and reported), never silently changed.

All repetitions are planned at once as one-shot jobs, each named and identified
by its own instant. A Dapr job with `repeats` fires with no fire time and no
attempt number (as daprd triggers it), so a retried trigger could not be told from the
next repetition: its reminder id would not be exact. One-shot jobs per instant stay
exact under redelivery and re-fired triggers, and completion deletes the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from worker.rules.kinds import parse_duration
from worker.schedule import format_utc

MIN_EVERY: Final = timedelta(minutes=5)  # a floor so a typo cannot page someone every second
MAX_REPEATS: Final = 100  # one job per repetition: bounded sidecar work per event
DEFAULT_REPEATS: Final = 10


@dataclass(frozen=True)
class Repeat:
    every: timedelta
    max: int = DEFAULT_REPEATS

    def to_record(self) -> dict[str, object]:
        seconds = int(self.every.total_seconds())
        return {"every": f"PT{seconds}S", "max": self.max}


def parse_repeat(value: object) -> Repeat:
    """payload.repeat -> Repeat; ValueError with the reason."""
    if not isinstance(value, dict) or "every" not in value or not set(value) <= {"every", "max"}:
        raise ValueError('repeat must be {"every": "PT1H", "max": 5}')
    every = parse_duration(value["every"], "repeat.every")
    if every < MIN_EVERY:
        raise ValueError(f"repeat.every must be at least PT{MIN_EVERY.seconds // 60}M")
    count = value.get("max", DEFAULT_REPEATS)
    if count is None:
        count = DEFAULT_REPEATS
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REPEATS:
        raise ValueError(f"repeat.max must be an integer from 1 to {MAX_REPEATS}")
    return Repeat(every, count)


def overdue_instants(due: datetime | None, repeat: Repeat | None) -> list[datetime]:
    """due + k*every for k = 1..max (aware UTC); [] without a due time or repeat."""
    if due is None or repeat is None:
        return []
    format_utc(due)  # aware, or ValueError
    return [due + k * repeat.every for k in range(1, repeat.max + 1)]
