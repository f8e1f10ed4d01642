"""The task record: a frozen type inside the worker, JSON only at the state store.

Kept per (user, task) under `keys.task_key`. `load_record` reads what the store
holds (this version and version 1), `dump_record` writes this version:

    {"v": 2, "user_id", "task_id", "order": [timestamp, fingerprint],
     "status": "active" | "completed" | "deleted",
     "task": {"title", "timezone", "due_at", "due_local", "offsets", "remind_at",
              "recurrence"},
     "jobs": {job name: reminder instant}, "retired": [job name, ...]}

`order` is the last applied event: a later event applies, an equal one is a
duplicate, an earlier one is stale. `jobs` are the live reminder jobs; a fired
job publishes only if its name is still here and the task is active. `retired`
(written only when non-empty) lists the jobs the last applied event made
obsolete: deleted after the save, and again by a redelivery.

`due_at` is the due instant (RFC 3339 UTC, "Z"); `due_local` the wall-clock time
in `timezone` as the user wrote it, naive ISO 8601 ("2031-03-30T02:30:00", also
inside a DST gap, where `due_at` follows the DST policy). Version 1 records (no
`due_local`, a recurrence in UTC times) load with the wall clock derived from
`due_at` in the record's zone. `offsets` are ISO 8601 durations, "+PT15M"
meaning after the due time; absent means "never given" (the configured default
offsets apply), `[]` means "none".

The reminder rules (docs/reminders.md) add to `task`, each written only when set: `misfire_grace` (a
duration; null = no limit; absent = the setting), `quiet_hours` ("HH:MM-HH:MM";
null = none; absent = the setting), `repeat` ({"every", "max"}), `floating` (true),
`snooze` (the instant of the last `task.snoozed`). The values of `jobs` are slot
keys (`kinds.Slot.key`): a plain reminder's key is its instant, as before, so
records written before those rules read and write unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from functools import cached_property
from typing import Any, Final, Literal

from worker.errors import InvalidEvent
from worker.rules.kinds import Slot, parse_duration
from worker.rules.quiet import QuietHours, parse_quiet_hours
from worker.rules.recurrence import Recurrence
from worker.rules.repeat import Repeat, parse_repeat
from worker.schedule import Offset, format_utc, load_zone, parse_offset, wall_clock

RECORD_VERSION: Final = 2  # 2: `due_local`, signed offsets; version 1 records still load
READABLE_VERSIONS: Final = frozenset({1, 2})

Status = Literal["active", "completed", "deleted"]
STATUSES: Final[frozenset[str]] = frozenset({"active", "completed", "deleted"})
# A task's own "no limit" / "none" (JSON null), as opposed to "not given" (None: the
# setting applies). An unbounded grace and an empty window need no special case.
NO_GRACE_LIMIT: Final = timedelta.max
NO_QUIET_HOURS: Final = QuietHours(time(0), time(0))


@dataclass(frozen=True, order=True)
class Order:
    """Where an event stands among the events of its task: by timestamp, then fingerprint."""

    timestamp: datetime  # aware
    fingerprint: str

    def to_json(self) -> list[str]:
        return list(self._json)

    @cached_property
    def _json(self) -> tuple[str, str]:  # formatted once: names, job data and the record use it
        return format_utc(self.timestamp), self.fingerprint

    @classmethod
    def from_json(cls, value: object) -> Order:
        """ValueError unless `value` is [RFC 3339 instant with offset, str]."""
        if not (isinstance(value, list | tuple) and len(value) == 2
                and isinstance(value[0], str) and isinstance(value[1], str)):
            raise ValueError(f"order must be [timestamp, fingerprint], not {value!r:.80}")
        timestamp = datetime.fromisoformat(value[0])
        if timestamp.tzinfo is None:
            raise ValueError("order timestamp has no offset")
        return cls(timestamp, value[1])


@dataclass(frozen=True)
class Task:
    """What the worker keeps of a task: the fields of its events, merged."""

    timezone: str = "UTC"  # an IANA name or a fixed offset, as `schedule.load_zone` reads it
    title: str | None = None
    due_at: datetime | None = None  # aware
    due_local: datetime | None = None  # naive wall clock as written; set iff due_at is
    offsets: tuple[Offset, ...] | None = None  # None: never given, the defaults apply
    remind_at: tuple[datetime, ...] | None = None  # aware
    recurrence: Recurrence | None = None
    # the reminder rules (docs/reminders.md)
    misfire_grace: timedelta | None = None  # None: the setting; NO_GRACE_LIMIT: no limit
    quiet_hours: QuietHours | None = None  # None: the setting; NO_QUIET_HOURS: none
    repeat: Repeat | None = None
    floating: bool = False
    snooze: datetime | None = None  # aware


@dataclass(frozen=True)
class TaskRecord:
    user_id: str
    task_id: int | str
    order: Order
    status: Status
    task: Task
    jobs: Mapping[str, Slot] = field(default_factory=dict)  # live job name -> its reminder
    retired: tuple[str, ...] = ()  # sorted


def dump_record(record: TaskRecord) -> dict[str, Any]:
    """The JSON the state store keeps (version RECORD_VERSION)."""
    t = record.task
    task: dict[str, Any] = {"timezone": t.timezone}
    if t.title is not None:
        task["title"] = t.title
    if t.due_at is not None and t.due_local is not None:
        task["due_at"] = format_utc(t.due_at)
        task["due_local"] = t.due_local.isoformat()
    if t.offsets is not None:
        task["offsets"] = [o.iso() for o in t.offsets]
    if t.remind_at is not None:
        task["remind_at"] = [format_utc(a) for a in t.remind_at]
    if t.recurrence is not None:
        task["recurrence"] = t.recurrence.to_record()
    if t.misfire_grace is not None:
        task["misfire_grace"] = (None if t.misfire_grace == NO_GRACE_LIMIT
                                 else f"PT{int(t.misfire_grace.total_seconds())}S")
    if t.quiet_hours is not None:
        task["quiet_hours"] = None if t.quiet_hours == NO_QUIET_HOURS else t.quiet_hours.text()
    if t.repeat is not None:
        task["repeat"] = t.repeat.to_record()
    if t.floating:
        task["floating"] = True
    if t.snooze is not None:
        task["snooze"] = format_utc(t.snooze)
    doc: dict[str, Any] = {
        "v": RECORD_VERSION, "user_id": record.user_id, "task_id": record.task_id,
        "order": record.order.to_json(), "status": record.status, "task": task,
        "jobs": {name: slot.key() for name, slot in record.jobs.items()},
    }
    if record.retired:
        doc["retired"] = list(record.retired)
    return doc


def load_record(doc: object) -> TaskRecord:
    """A stored record (this version or version 1). InvalidEvent if it is not one."""
    try:
        return _load(doc)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidEvent(f"state record unreadable: {type(exc).__name__}: {exc}") from None


def _load(doc: object) -> TaskRecord:
    if not isinstance(doc, dict):
        raise TypeError("not an object")
    version = doc.get("v", 1)
    if version not in READABLE_VERSIONS:
        raise ValueError(f"version {version!r} (this worker reads {sorted(READABLE_VERSIONS)})")
    status = doc["status"]
    if status not in STATUSES:
        raise ValueError(f"status {status!r}")
    user_id, task_id = doc["user_id"], doc["task_id"]
    if not isinstance(user_id, str) or isinstance(task_id, bool) or not isinstance(
            task_id, int | str):
        raise TypeError("user_id or task_id of the wrong type")
    return TaskRecord(
        user_id=user_id, task_id=task_id, order=Order.from_json(doc["order"]), status=status,
        task=_load_task(doc["task"]),
        jobs={str(name): Slot.parse(key) for name, key in doc["jobs"].items()},
        retired=tuple(doc.get("retired") or ()),
    )


def _load_task(raw: Mapping[str, Any]) -> Task:
    timezone = raw.get("timezone") or "UTC"
    zone = load_zone(timezone)
    due_at = _instant(raw["due_at"]) if raw.get("due_at") else None
    due_local = None
    if due_at is not None:  # version 1: the wall clock of the stored instant
        local = raw.get("due_local")
        due_local = datetime.fromisoformat(local) if local else wall_clock(due_at, zone)
    offsets, remind_at, recurrence = raw.get("offsets"), raw.get("remind_at"), raw.get(
        "recurrence")
    return Task(
        timezone=zone.key,
        title=raw.get("title"),
        due_at=due_at,
        due_local=due_local,
        offsets=None if offsets is None else tuple(parse_offset(o) for o in offsets),
        remind_at=None if remind_at is None else tuple(_instant(a) for a in remind_at),
        recurrence=None if not recurrence else Recurrence.from_record(recurrence, zone),
        misfire_grace=(None if "misfire_grace" not in raw else NO_GRACE_LIMIT
                       if raw["misfire_grace"] is None
                       else parse_duration(raw["misfire_grace"], "misfire_grace")),
        quiet_hours=(None if "quiet_hours" not in raw else NO_QUIET_HOURS
                     if raw["quiet_hours"] is None else parse_quiet_hours(raw["quiet_hours"])),
        repeat=parse_repeat(raw["repeat"]) if raw.get("repeat") else None,
        floating=raw.get("floating") is True,
        snooze=_instant(raw["snooze"]) if raw.get("snooze") else None,
    )


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"instant without offset: {text!r:.40}")
    return value
