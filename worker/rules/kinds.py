"""Reminder kinds and slots, pure: what one reminder job stands for
(docs/reminders.md, "Kinds").

A *slot* is one reminder the task wants: its kind, the instant it fires, and (when
quiet hours moved it) the instants it was meant for. Its text key is what the task
record keeps per job; a plain reminder's key is its instant ("2026-12-01T08:00:00Z"),
exactly what records held before kinds existed, so old records and old job names
read unchanged. Other keys: "overdue@<instant>", "snooze@<instant>", and a deferred
slot adds "<" and the original instants, comma-separated ("reminder@<at><<a>,<b>").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Final, Literal

from worker.schedule import format_utc, parse_offset, to_utc

Kind = Literal["reminder", "overdue", "snooze"]
KINDS: Final[tuple[Kind, ...]] = ("reminder", "overdue", "snooze")


@dataclass(frozen=True, order=True)
class Slot:
    at: datetime  # aware UTC: when the reminder fires
    kind: Kind = "reminder"
    deferred_from: tuple[datetime, ...] = ()  # quiet hours moved these here (sorted)

    def key(self) -> str:
        return self._key

    @property
    def plain(self) -> bool:
        """A plain reminder (not deferred): its key is its instant's text."""
        return self.kind == "reminder" and not self.deferred_from

    @cached_property  # the record, the job name and the job data each need it
    def _key(self) -> str:
        at = format_utc(self.at)
        if self.plain:
            return at
        key = f"{self.kind}@{at}"
        if self.deferred_from:
            key += "<" + ",".join(format_utc(d) for d in self.deferred_from)
        return key

    @classmethod
    def parse(cls, key: str) -> Slot:
        """Inverse of `key`. ValueError for anything else."""
        kind, sep, rest = key.partition("@")
        if not sep:
            return cls(_instant(key))
        if kind not in KINDS:
            raise ValueError(f"unknown reminder kind in slot {key[:80]!r}")
        at, _, origins = rest.partition("<")
        deferred = tuple(_instant(o) for o in origins.split(",") if o)
        return cls(_instant(at), kind, deferred)

    @property
    def count(self) -> int:
        """How many reminders this one publication stands for (1 unless merged)."""
        return max(1, len(self.deferred_from))


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"instant without offset: {text!r:.40}")
    return to_utc(value, "instant")


def parse_duration(value: object, what: str) -> timedelta:
    """An unsigned ISO 8601 duration (PnW, PnD, PTnHnMnS) -> exact timedelta.

    Days count as 24 hours here: a grace, a repetition interval or a snooze is a
    length of time, not a calendar step. ValueError names `what`.
    """
    if not isinstance(value, str) or value.strip()[:1] in ("+", "-"):
        raise ValueError(f"{what} must be an ISO 8601 duration such as PT1H")
    try:
        offset = parse_offset(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    return timedelta(days=offset.days, seconds=offset.seconds)
