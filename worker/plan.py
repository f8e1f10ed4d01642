"""Pure planning: (task record, task event, now) -> what to do.

No I/O. The service executes a plan; `--dry-run` prints it. The record is a
`records.TaskRecord` (its JSON form and its meaning: see `records`). A job is
named by its reminder instant and the order of the event that first wanted it
(`keys.job_name`); a reminder that is not a plain one (kind overdue or snooze,
or deferred by quiet hours) is named by its slot (`kinds.Slot`). Day offsets and the
recurrence work from the wall clock as written (`Task.due_local`); when only the
zone changes, the instant stays where it was and the wall clock is derived again
in the new zone, except for a floating task (docs/reminders.md), whose wall clock stays
and whose instants (due, remind_at) follow the zone.

Partial application: an unusable optional part of an event (a bad field, one bad
entry of a list) is left out, the rest applies, and the part is listed with its
reason in `Plan.problems` (the service counts the event `partial`). A field left
out keeps the value it had before the event; a list field applies its usable
entries, or is left out when it has none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Final, Literal, TypeVar
from zoneinfo import ZoneInfo

from worker.errors import InvalidEvent, shown
from worker.events import TaskEvent, is_blank
from worker.keys import job_name, occurrence_key
from worker.messages import next_occurrence_body
from worker.records import NO_GRACE_LIMIT, NO_QUIET_HOURS, Order, Status, Task, TaskRecord
from worker.rules.kinds import Slot, parse_duration
from worker.rules.misfire import DEFAULT_GRACE, judge, task_grace
from worker.rules.quiet import QuietHours, defer, parse_quiet_hours
from worker.rules.recurrence import (
    Recurrence,
    next_from_completion,
    next_occurrence,
    parse_recurrence,
)
from worker.rules.repeat import overdue_instants, parse_repeat
from worker.rules.snooze import snooze_instant
from worker.schedule import (
    UTC,
    Offset,
    format_utc,
    load_zone,
    parse_offset,
    parse_when,
    parse_when_wall,
    reminder_instants,
    resolve_local,
    wall_clock,
)

T = TypeVar("T")

# A fired job may still be retrying (publish failed): keep its name live this
# long after its instant so an unrelated update does not orphan the retry.
FIRED_RETENTION: Final = timedelta(hours=6)
# A past reminder "fires at once"; one second of grace lets the record save land
# first, so the trigger does not find the record behind and wait for a retry.
AT_ONCE_GRACE: Final = timedelta(seconds=1)

TOMBSTONE_TTL_SECONDS: Final = 90 * 24 * 3600  # completed/deleted records: stale events stay stale
# Dapr's ttlInSeconds -1: keep the value and ignore a TTL set earlier (without it,
# what happens to an existing TTL depends on the store).
PERSIST: Final = -1

Outcome = Literal["processed", "duplicate", "stale"]
# What handling an event did: a plan's outcome, or "partial" (applied without some parts).
EventOutcome = Literal["processed", "partial", "duplicate", "stale"]
_STATUS_AFTER: Final[dict[str, Status]] = {
    "task.created": "active", "task.completed": "completed", "task.deleted": "deleted"}


@dataclass(frozen=True)
class PlanConfig:
    all_day_time: time = time(9, 0)
    default_offsets: tuple[Offset, ...] = ()
    misfire_grace: timedelta | None = DEFAULT_GRACE  # REMINDER_MISFIRE_GRACE (None: no limit)
    quiet_hours: QuietHours | None = None  # REMINDER_QUIET_HOURS


@dataclass(frozen=True)
class JobSpec:
    name: str
    due_time: datetime
    data: dict[str, Any]
    due_text: str  # due_time as RFC 3339 UTC, formatted once (log line, --dry-run)


@dataclass(frozen=True)
class NextOccurrence:
    key: str
    due_at: datetime
    body: dict[str, Any]


@dataclass
class Plan:
    outcome: Outcome
    record: TaskRecord
    schedule: list[JobSpec] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    next: NextOccurrence | None = None
    series_ended: bool = False
    skipped: int = 0  # reminders already past and too late (misfire policy), all kinds
    missed: dict[str, int] = field(default_factory=dict)  # the same, by kind
    missed_slots: list[Slot] = field(default_factory=list)  # the same, one per reminder job
    problems: list[str] = field(default_factory=list)  # parts left out: "payload.x: reason"

    @property
    def skipped_at(self) -> list[str]:
        """The instants (RFC 3339 UTC) of the reminders skipped as too late."""
        return [format_utc(slot.at) for slot in self.missed_slots]

    @property
    def event_outcome(self) -> EventOutcome:
        return "partial" if self.problems and self.outcome == "processed" else self.outcome

    def to_json(self, event: TaskEvent) -> dict[str, Any]:
        return {
            "event_type": event.event_type,
            "task_id": event.task_id,
            "user_id": event.user_id,
            "outcome": self.event_outcome,
            "schedule": [{"name": j.name, "due_time": j.due_text}
                         for j in self.schedule],
            "delete": self.delete,
            "skipped": self.skipped,
            "missed": self.missed,
            "next_occurrence": self.next.body if self.next else None,
            "series_ended": self.series_ended,
            "problems": self.problems,
        }


def order_of(event: TaskEvent) -> Order:
    return event.order


def compare(record: TaskRecord | None, event: TaskEvent) -> Outcome:
    """Is the event newer than what the record has applied?"""
    if record is None:
        return "processed"
    mine = order_of(event)
    if mine == record.order:
        return "duplicate"
    return "stale" if mine < record.order else "processed"


def make_plan(
    record: TaskRecord | None, event: TaskEvent, now: datetime, config: PlanConfig
) -> Plan:
    """What applying `event` to `record` at `now` takes. Raises InvalidEvent."""
    if record is not None and (
        record.user_id != event.user_id or record.task_id != event.task_id
    ):
        raise InvalidEvent("state record belongs to another task (digest collision)")
    outcome = compare(record, event)
    if record is not None and outcome != "processed":
        return _replan(outcome, record, event)
    prior = record.task if record else Task()
    problems = list(event.rejected.values())
    task = merge(prior, event.changes, config, problems)
    task = _snoozed(task, event, config, problems)
    old_status: Status = record.status if record else "active"
    status = _STATUS_AFTER.get(event.event_type, old_status)
    old_jobs: dict[str, Slot] = dict(record.jobs) if record else {}
    new_jobs: dict[str, Slot] = {}
    missed: list[Slot] = []
    if status == "active":
        new_jobs, missed = _wanted_jobs(event, task, old_jobs, now, config)
    order = order_of(event)
    delete = [name for name in old_jobs if name not in new_jobs]
    plan = Plan(
        "processed",
        TaskRecord(event.user_id, event.task_id, order, status, task, new_jobs,
                   tuple(sorted(delete))),
        schedule=[job_spec(event.user_id, event.task_id, name, at, order, now)
                  for name, at in new_jobs.items() if name not in old_jobs],
        delete=delete, skipped=sum(s.count for s in missed), missed=_by_kind(missed),
        missed_slots=missed, problems=problems,
    )
    if (event.event_type == "task.completed" and task.recurrence is not None
            and old_status == "active"):
        plan.next = _next(event, task, task.recurrence)
        plan.series_ended = plan.next is None
    return plan


def _replan(outcome: Outcome, record: TaskRecord, event: TaskEvent) -> Plan:
    """A duplicate or a stale event: nothing new to apply."""
    plan = Plan(outcome, record)
    if outcome == "duplicate":
        plan.delete = list(record.retired)
        rec = record.task.recurrence
        if event.event_type == "task.completed" and record.status == "completed" and rec:
            # The same completion again (e.g. replayed from the dead-letter topic after
            # the task service rejected it): the service re-asks only if that was so.
            plan.next = _next(event, record.task, rec)
    return plan


def merge(prior: Task, changes: dict[str, Any], config: PlanConfig,
          problems: list[str] | None = None) -> Task:
    """The task's fields after `changes`, each time value parsed in the effective zone.

    Raises InvalidEvent only for an unknown zone. Any other unusable part is left
    out and described in `problems` (see the module docstring).
    """
    problems = [] if problems is None else problems
    try:
        zone = load_zone((changes["timezone"] or "UTC") if "timezone" in changes
                         else prior.timezone)
    except ValueError as exc:
        raise InvalidEvent(f"payload.timezone: {exc}") from None
    new: dict[str, Any] = {"timezone": zone.key}
    due_applied = False
    for name, value in changes.items():
        try:
            if name == "title":
                new["title"] = value
            elif name == "due_at":
                when = None if value is None else parse_when_wall(value, zone, config.all_day_time)
                new["due_at"] = None if when is None else when.instant
                new["due_local"] = None if when is None else when.wall
                due_applied = True
            elif name == "reminders":
                offsets = _entries(name, value, parse_offset, problems)
                if offsets is not None:
                    new["offsets"] = tuple(offsets)
            elif name == "remind_at":
                instants = _entries(
                    name, value, lambda v: parse_when(v, zone, config.all_day_time), problems)
                if instants is not None:
                    new["remind_at"] = tuple(instants)
            elif name == "recurrence":
                new["recurrence"] = None if value is None else parse_recurrence(
                    value, zone, config.all_day_time)
            elif name == "misfire_grace":  # null: no limit (not "the setting")
                new["misfire_grace"] = (NO_GRACE_LIMIT if value is None
                                        else parse_duration(value, "misfire_grace"))
            elif name == "quiet_hours":  # null: none (not "the setting")
                new["quiet_hours"] = (NO_QUIET_HOURS if value is None
                                      else parse_quiet_hours(value))
            elif name == "repeat":
                new["repeat"] = None if value is None else parse_repeat(value)
            elif name == "floating":
                new["floating"] = bool(value)
        except (ValueError, OverflowError, TypeError) as exc:
            problems.append(f"payload.{name}: {exc}{shown(value, str(exc))}")
    if prior.due_at is not None and not due_applied and zone.key != prior.timezone:
        if new.get("floating", prior.floating) and prior.due_local is not None:
            new.update(_floated(prior, load_zone(prior.timezone), zone, "remind_at" in new))
        else:
            new["due_local"] = wall_clock(prior.due_at, zone)  # a new zone: the instant stays
    return dataclasses.replace(prior, **new)


def _floated(prior: Task, old: ZoneInfo, zone: ZoneInfo, remind_at_given: bool
             ) -> dict[str, Any]:
    """Floating time (docs/reminders.md): the wall clock stays, the instants follow `zone`."""
    assert prior.due_local is not None
    new: dict[str, Any] = {"due_at": resolve_local(prior.due_local, zone)}
    if prior.remind_at and not remind_at_given:
        new["remind_at"] = tuple(resolve_local(wall_clock(a, old), zone)
                                 for a in prior.remind_at)
    return new


def _snoozed(task: Task, event: TaskEvent, config: PlanConfig, problems: list[str]) -> Task:
    """`snooze` after the event: set by task.snoozed, cleared by task.created."""
    if event.event_type == "task.created" and task.snooze is not None:
        return dataclasses.replace(task, snooze=None)  # a new task starts unsnoozed
    if event.event_type != "task.snoozed":
        return task
    try:
        at = snooze_instant(event.changes, event.timestamp, load_zone(task.timezone),
                            config.all_day_time)
    except (ValueError, OverflowError) as exc:
        problems.append(f"payload: {exc}")
        return task
    return dataclasses.replace(task, snooze=at)


def grace_of(task: Task, config: PlanConfig) -> timedelta | None:
    """The task's misfire grace: its own, else the setting; None: no limit."""
    return task_grace(task, config.misfire_grace)


def wanted_slots(task: Task, config: PlanConfig) -> list[Slot]:
    """Every reminder the task wants (docs/reminders.md), sorted, one slot per (kind, instant).

    Offsets, default offsets and overdue repetitions falling in quiet hours move to
    the window's end, several of them to one slot that lists them; explicit
    `remind_at` instants and the snooze stay as given.
    """
    zone = load_zone(task.timezone)
    due = task.due_at
    offsets = (config.default_offsets if task.offsets is None and due is not None
               else task.offsets or ())
    quiet = config.quiet_hours if task.quiet_hours is None else task.quiet_hours
    groups: dict[tuple[str, datetime], set[datetime]] = {}
    sources = (("reminder", reminder_instants(due, zone, offsets, (), task.due_local), True),
               ("reminder", reminder_instants(None, zone, (), list(task.remind_at or ())),
                False),
               ("overdue", overdue_instants(due, task.repeat), True))
    for kind, instants, movable in sources:
        for instant in instants:
            moved = defer(instant, zone, quiet) if movable else None
            origins = groups.setdefault((kind, moved or instant), set())
            if moved is not None:
                origins.add(instant)
    if task.snooze is not None:
        groups.setdefault(("snooze", task.snooze), set())
    return sorted(Slot(at, kind, tuple(sorted(origins)))  # type: ignore[arg-type]
                  for (kind, at), origins in groups.items())


def _entries(name: str, value: list[Any] | None, parse: Callable[[Any], T],
             problems: list[str]) -> list[T] | None:
    """Parse a list field entry by entry: the usable entries, or None if there are none.

    None (cleared) and an empty or all-blank list give []; every unusable entry is
    reported as "payload.<name>[i]: reason".
    """
    if value is None:
        return []
    parsed: list[T] = []
    bad = 0
    for index, item in enumerate(value):
        if is_blank(item):
            continue
        try:
            parsed.append(parse(item))
        except (ValueError, OverflowError, TypeError) as exc:
            problems.append(f"payload.{name}[{index}]: {exc}{shown(item, str(exc))}")
            bad += 1
    return None if bad and not parsed else parsed


def _wanted_jobs(
    event: TaskEvent, task: Task, old_jobs: dict[str, Slot], now: datetime,
    config: PlanConfig,
) -> tuple[dict[str, Slot], list[Slot]]:
    """(job name -> slot) the task wants now, and the reminders missed."""
    try:
        slots = wanted_slots(task, config)
    except (ValueError, OverflowError) as exc:
        raise InvalidEvent(f"payload: reminder instants out of range: {exc}") from None
    grace = grace_of(task, config)
    live = {slot: name for name, slot in old_jobs.items()}  # slot -> the job that has it
    order = order_of(event)
    wanted: dict[str, Slot] = {}
    missed: list[Slot] = []
    late_overdue: list[Slot] = []
    for slot in slots:
        name = live.get(slot)
        if slot.at > now:
            wanted[name or slot_job_name(event.user_id, event.task_id, slot, order)] = slot
        elif name is not None:
            # Scheduled earlier and due by now: it fired or is retrying; keep it
            # live for a while, never schedule it twice.
            if slot.at > now - FIRED_RETENTION:
                wanted[name] = slot
        elif judge(slot.at, task.due_at, now, grace).publish:
            if slot.kind == "overdue":  # only the latest past repetition: no burst
                late_overdue.append(slot)
            else:  # late but still useful: fires at once
                wanted[slot_job_name(event.user_id, event.task_id, slot, order)] = slot
        else:
            missed.append(slot)
    missed += late_overdue[:-1]
    if late_overdue:
        last = late_overdue[-1]
        wanted[slot_job_name(event.user_id, event.task_id, last, order)] = last
    return wanted, missed


def _by_kind(missed: list[Slot]) -> dict[str, int]:
    by_kind: dict[str, int] = {}
    for slot in missed:
        by_kind[slot.kind] = by_kind.get(slot.kind, 0) + slot.count
    return by_kind


def slot_job_name(user_id: str, task_id: int | str, slot: Slot, order: Order) -> str:
    """The job name of one slot; a plain reminder's is what it was before kinds."""
    # A plain reminder's key is its instant's text: the same digest as before kinds.
    return job_name(user_id, task_id, slot.at, order.to_json(), slot=slot.key())


def job_spec(user_id: str, task_id: int | str, name: str, slot: Slot, order: Order,
             now: datetime) -> JobSpec:
    """The job of one reminder `slot`, scheduled by the event of `order`.

    daprd holds job data as a protobuf Value: every number comes back as a float64
    (a 64-bit id returns changed), so the data holds strings only, and the task
    id's JSON type beside it so `reminder.due` can echo the id as it came.
    """
    key = slot.key()
    plain = slot.plain
    data: dict[str, Any] = {
        "user_id": user_id, "task_id": str(task_id),
        "task_id_type": "string" if isinstance(task_id, str) else "number",
        "remind_at": key if plain else format_utc(slot.at), "order": order.to_json()}
    if not plain:
        data["slot"] = key  # not a plain reminder: the name is derived from the slot
    due = max(slot.at, now + AT_ONCE_GRACE)
    return JobSpec(name, due, data, data["remind_at"] if due == slot.at else format_utc(due))


def _next(event: TaskEvent, task: Task, rec: Recurrence) -> NextOccurrence | None:
    zone = load_zone(task.timezone)
    current, current_wall = task.due_at, task.due_local
    if current is None or current_wall is None:  # no due date: the series runs from completion
        current, current_wall = event.timestamp, wall_clock(event.timestamp, zone)
    # "Now" for this purpose is when the task was completed, never when the event
    # happens to be handled: a redelivery hours later asks for the same occurrence
    # with the same idempotency key (docs/events.md, "Next occurrence out").
    if rec.anchor == "completion":  # the series restarts at the completion
        restarted = next_from_completion(rec, zone, task.due_local, event.timestamp)
        if restarted is None:
            return None
        nxt, series = restarted
        rec, current_wall = series, wall_clock(nxt, zone)  # sent with dtstart = next
    else:
        found = next_occurrence(rec, zone, current_wall, max(current, event.timestamp))
        if found is None:
            return None
        nxt = found
    key = occurrence_key(event.user_id, event.task_id, nxt)
    return NextOccurrence(key, nxt.astimezone(UTC), next_occurrence_body(
        event.user_id, event.task_id, task, rec, zone, nxt, current_wall, key))


def requested_next(record: TaskRecord) -> NextOccurrence | None:
    """The next occurrence the completion that completed `record` requested (its last
    applied event), None when the series ended there; planned again as a redelivery
    of that completion would be (`_next` works from the completion's timestamp)."""
    rec = record.task.recurrence
    if record.status != "completed" or rec is None:
        return None
    event = TaskEvent(event_type="task.completed", task_id=record.task_id,
                      user_id=record.user_id, timestamp=record.order.timestamp,
                      event_id="explain")
    return _next(event, record.task, rec)


def record_ttl(old: TaskRecord | None, new: TaskRecord) -> int | None:
    """The ttlInSeconds to save `new` with: tombstones expire, a re-created task persists."""
    if new.status != "active":
        return TOMBSTONE_TTL_SECONDS
    if old is not None and old.status != "active":
        return PERSIST  # a re-created task: drop the tombstone's TTL explicitly
    return None
