"""Pure planning: (task record, task event, now) -> what to do.

No I/O. The service executes a plan; `--dry-run` prints it. A task record is
the JSON kept in the state store per (user, task):

    {"v": 2, "user_id", "task_id", "order": [timestamp, fingerprint],
     "status": "active" | "completed" | "deleted",
     "task": {"title", "timezone", "due_at", "due_local", "offsets", "remind_at",
              "recurrence"},
     "jobs": {job name: reminder instant}}

`order` is the last applied event: a later event applies, an equal one is a
duplicate, an earlier one is stale. `jobs` are the live reminder jobs; a fired
job publishes only if its name is still here and the task is active. A job is
named by its reminder instant and the order of the event that first wanted it
(`schedule.job_name`). `retired` (optional) lists the jobs the last applied
event made obsolete: deleted after the save, and again by a redelivery.

`due_at` is the due instant (RFC 3339 UTC, "Z"); `due_local` the wall-clock time
in `timezone` as the user wrote it, naive ISO 8601 ("2031-03-30T02:30:00", also
inside a DST gap, where `due_at` follows the DST policy). Day offsets and the
recurrence work from `due_local`. Version 1 records (no `due_local`) load as they
are: the wall clock is derived from `due_at`. When only the zone changes, the
instant stays where it was and `due_local` is derived again in the new zone.
`offsets` are ISO 8601 durations, "+PT15M" meaning after the due time.

Contract §8 adds to `task` (each written by `merge`, read by one function here):
`misfire_grace` (duration text; null = no limit; absent = the setting, `grace_of`),
`repeat` ({"every", "max"}, `wanted_slots`), `quiet_hours` ("HH:MM-HH:MM"; null =
none; absent = the setting, `quiet_of`), `floating` (bool: a zone-only change keeps
`due_local` and moves the instant, and every `remind_at` keeps its wall clock), and
`snooze` (the instant of the last `task.snoozed`, cleared by `task.created`). The
values of `jobs` are slot keys (`worker.kinds.Slot.key`): a plain reminder's is its
instant, as before; overdue, snooze and deferred reminders say so in the key.

Partial application: an unusable optional part of an event (a bad field, one bad
entry of a list) is left out, the rest applies, and the part is listed with its
reason in `Plan.problems` (the service counts the event `partial`). A field left
out keeps the value it had before the event; a list field applies its usable
entries, or is left out when it has none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Final, Literal, TypeVar
from zoneinfo import ZoneInfo

from worker.errors import InvalidEvent
from worker.events import TaskEvent, is_blank
from worker.kinds import Slot, parse_duration
from worker.misfire import DEFAULT_GRACE, judge
from worker.quiet import QuietHours, defer, parse_quiet_hours
from worker.recurrence import (
    Recurrence,
    next_from_completion,
    next_occurrence,
    parse_recurrence,
    series_start,
)
from worker.repeat import Repeat, overdue_instants, parse_repeat
from worker.schedule import (
    UTC,
    Offset,
    format_local,
    format_utc,
    job_name,
    load_zone,
    occurrence_key,
    parse_offset,
    parse_when,
    parse_when_wall,
    reminder_instants,
    resolve_local,
    wall_clock,
)
from worker.snooze import snooze_instant

T = TypeVar("T")

RECORD_VERSION: Final = 2  # 2: `due_local`, signed offsets; version 1 records still load
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


@dataclass(frozen=True)
class PlanConfig:
    all_day_time: time = time(9, 0)
    default_offsets: tuple[Offset, ...] = ()
    misfire_grace: timedelta | None = DEFAULT_GRACE  # REMINDER_MISFIRE_GRACE
    quiet_hours: QuietHours | None = None  # REMINDER_QUIET_HOURS


@dataclass(frozen=True)
class JobSpec:
    name: str
    due_time: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class NextOccurrence:
    key: str
    due_at: datetime
    body: dict[str, Any]


@dataclass
class Plan:
    outcome: Outcome
    record: dict[str, Any]
    schedule: list[JobSpec] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    next: NextOccurrence | None = None
    series_ended: bool = False
    skipped: int = 0  # reminders already past and too late (misfire policy), all kinds
    missed: dict[str, int] = field(default_factory=dict)  # the same, by kind
    problems: list[str] = field(default_factory=list)  # parts left out: "payload.x: reason"

    def to_json(self, event: TaskEvent) -> dict[str, Any]:
        return {
            "event_type": event.event_type,
            "task_id": event.task_id,
            "user_id": event.user_id,
            "outcome": "partial" if self.problems and self.outcome == "processed"
                       else self.outcome,
            "schedule": [{"name": j.name, "due_time": format_utc(j.due_time)}
                         for j in self.schedule],
            "delete": self.delete,
            "skipped": self.skipped,
            "missed": self.missed,
            "next_occurrence": self.next.body if self.next else None,
            "series_ended": self.series_ended,
            "problems": self.problems,
        }


def order_of(event: TaskEvent) -> list[str]:
    return [format_utc(event.timestamp), event.fingerprint]


def _order_key(order: list[str]) -> tuple[datetime, str]:
    return datetime.fromisoformat(order[0]), order[1]


def compare(record: dict[str, Any] | None, event: TaskEvent) -> Outcome:
    """Is the event newer than what the record has applied?"""
    if record is None:
        return "processed"
    mine, theirs = _order_key(order_of(event)), _order_key(record["order"])
    if mine == theirs:
        return "duplicate"
    return "stale" if mine < theirs else "processed"


def make_plan(
    record: dict[str, Any] | None, event: TaskEvent, now: datetime, config: PlanConfig
) -> Plan:
    """What applying `event` to `record` at `now` takes. Raises InvalidEvent."""
    if record is not None and (
        record.get("user_id") != event.user_id or record.get("task_id") != event.task_id
    ):
        raise InvalidEvent("state record belongs to another task (digest collision)")
    outcome = compare(record, event)
    if outcome != "processed":
        assert record is not None
        plan = Plan(outcome, record)
        if outcome == "duplicate":
            plan.delete = list(record.get("retired", ()))
        if (outcome == "duplicate" and event.event_type == "task.completed"
                and record["status"] == "completed" and record["task"].get("recurrence")):
            # The same completion again (e.g. replayed from the dead-letter topic after
            # the task service rejected it): the service re-asks only if that was so.
            plan.next = _next(event, record["task"])
        return plan
    prior = record["task"] if record else {}
    problems = list(event.rejected.values())
    task = merge(prior, event.changes, config, problems)
    if event.event_type == "task.created":
        task.pop("snooze", None)  # a new (or re-created) task starts unsnoozed
    elif event.event_type == "task.snoozed":
        try:
            task["snooze"] = format_utc(snooze_instant(
                event.changes, event.timestamp, load_zone(task["timezone"]),
                config.all_day_time))
        except (ValueError, OverflowError) as exc:
            problems.append(f"payload: {exc}")
    old_status = record["status"] if record else "active"
    status = {"task.created": "active", "task.completed": "completed",
              "task.deleted": "deleted"}.get(event.event_type, old_status)
    old_jobs: dict[str, str] = dict(record["jobs"]) if record else {}
    new_jobs: dict[str, str] = {}
    plan = Plan("processed", {}, problems=problems)
    if status == "active":
        new_jobs, plan.missed = _wanted_jobs(event, task, old_jobs, now, config)
        plan.skipped = sum(plan.missed.values())
    order = order_of(event)
    plan.schedule = [job_spec(event.user_id, event.task_id, name, at, order, now)
                     for name, at in new_jobs.items() if name not in old_jobs]
    plan.delete = [name for name in old_jobs if name not in new_jobs]
    if event.event_type == "task.completed" and task.get("recurrence") and old_status == "active":
        plan.next = _next(event, task)
        plan.series_ended = plan.next is None
    plan.record = {
        "v": RECORD_VERSION, "user_id": event.user_id, "task_id": event.task_id,
        "order": order, "status": status, "task": task, "jobs": new_jobs,
    }
    if plan.delete:
        plan.record["retired"] = sorted(plan.delete)
    return plan


def merge(prior: dict[str, Any], changes: dict[str, Any], config: PlanConfig,
          problems: list[str] | None = None) -> dict[str, Any]:
    """The task's fields after `changes`, each time value parsed in the effective zone.

    Raises InvalidEvent only for an unknown zone. Any other unusable part is left
    out and described in `problems` (see the module docstring).
    """
    problems = [] if problems is None else problems
    task = dict(prior)
    old_zone = prior.get("timezone") or "UTC"
    try:
        zone = load_zone((changes["timezone"] or "UTC") if "timezone" in changes else old_zone)
    except ValueError as exc:
        raise InvalidEvent(f"payload.timezone: {exc}") from None
    task["timezone"] = zone.key
    due_applied = False
    for name, value in changes.items():
        try:
            if name == "title":
                task["title"] = value
            elif name == "due_at":
                when = None if value is None else parse_when_wall(value, zone, config.all_day_time)
                task["due_at"] = None if when is None else format_utc(when.instant)
                task["due_local"] = None if when is None else when.wall.isoformat()
                due_applied = True
            elif name == "reminders":
                offsets = _entries(name, value, parse_offset, problems)
                if offsets is not None:
                    task["offsets"] = [o.iso() for o in offsets]
            elif name == "remind_at":
                instants = _entries(
                    name, value, lambda v: parse_when(v, zone, config.all_day_time), problems)
                if instants is not None:
                    task["remind_at"] = [format_utc(i) for i in instants]
            elif name == "recurrence":
                task["recurrence"] = None if value is None else _store_recurrence(
                    parse_recurrence(value, zone, config.all_day_time))
            elif name == "misfire_grace":  # null: no limit (not "the default")
                task["misfire_grace"] = (None if value is None
                                         else _checked_duration(value, "misfire_grace"))
            elif name == "repeat":
                task["repeat"] = None if value is None else parse_repeat(value).to_record()
            elif name == "quiet_hours":  # null: none (not "the default")
                task["quiet_hours"] = None if value is None else parse_quiet_hours(value).text()
            elif name == "floating":
                task["floating"] = bool(value)
        except (ValueError, OverflowError, TypeError) as exc:
            problems.append(f"payload.{name}: {exc}")
    if (task.get("floating") and task.get("due_at") and task.get("due_local")
            and not due_applied and zone.key != old_zone):
        _float(task, load_zone(old_zone), zone, moved_remind_at="remind_at" not in changes)
    elif task.get("due_at") and not due_applied and (
        not task.get("due_local") or zone.key != old_zone
    ):  # a version 1 record, or a new zone: the instant stays, the wall clock follows
        task["due_local"] = wall_clock(datetime.fromisoformat(task["due_at"]), zone).isoformat()
    return task


def _float(task: dict[str, Any], old: ZoneInfo, new: ZoneInfo, moved_remind_at: bool) -> None:
    """Floating time: the wall clock stays, the instants follow the new zone (§8)."""
    task["due_at"] = format_utc(resolve_local(datetime.fromisoformat(task["due_local"]), new))
    if moved_remind_at and task.get("remind_at"):
        task["remind_at"] = [format_utc(resolve_local(
            wall_clock(datetime.fromisoformat(a), old), new)) for a in task["remind_at"]]


def _checked_duration(value: object, what: str) -> str:
    parse_duration(value, what)
    assert isinstance(value, str)
    return value.strip()


def grace_of(task: dict[str, Any], config: PlanConfig) -> timedelta | None:
    """The task's misfire grace: its own (None = no limit), else the setting."""
    if "misfire_grace" not in task:
        return config.misfire_grace
    value = task["misfire_grace"]
    return None if value is None else parse_duration(value, "misfire_grace")


def quiet_of(task: dict[str, Any], config: PlanConfig) -> QuietHours | None:
    """The task's quiet hours: its own (None = none), else the setting."""
    if "quiet_hours" not in task:
        return config.quiet_hours
    value = task["quiet_hours"]
    return None if value is None else parse_quiet_hours(value)


def wanted_slots(task: dict[str, Any], config: PlanConfig) -> list[Slot]:
    """Every reminder the task wants (contract §2, §8), sorted, one slot per (kind, instant).

    Offsets, default offsets and overdue repetitions falling in quiet hours move to
    the window's end, several of them to one slot that lists them; explicit
    `remind_at` instants and the snooze stay as given.
    """
    zone = load_zone(task["timezone"])
    due, due_wall = due_of(task, zone)
    offsets_raw = task.get("offsets")
    offsets = (config.default_offsets if offsets_raw is None and due is not None
               else tuple(parse_offset(o) for o in offsets_raw or ()))
    explicit = [datetime.fromisoformat(a) for a in task.get("remind_at") or ()]
    stored_repeat = task.get("repeat")
    repeat = (Repeat(parse_duration(stored_repeat["every"], "repeat.every"), stored_repeat["max"])
              if stored_repeat else None)
    quiet = quiet_of(task, config)
    groups: dict[tuple[str, datetime], set[datetime]] = {}
    sources = (("reminder", reminder_instants(due, zone, offsets, (), due_wall), True),
               ("reminder", reminder_instants(None, zone, (), explicit), False),
               ("overdue", overdue_instants(due, repeat), True))
    for kind, instants, movable in sources:
        for instant in instants:
            moved = defer(instant, zone, quiet) if movable else None
            origins = groups.setdefault((kind, moved or instant), set())
            if moved is not None:
                origins.add(instant)
    if task.get("snooze"):
        groups.setdefault(("snooze", datetime.fromisoformat(task["snooze"])), set())
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
            problems.append(f"payload.{name}[{index}]: {exc}")
            bad += 1
    return None if bad and not parsed else parsed


def due_of(task: dict[str, Any], zone: ZoneInfo) -> tuple[datetime | None, datetime | None]:
    """(due instant, naive wall clock as written) of a stored task; (None, None) if no due."""
    if not task.get("due_at"):
        return None, None
    due = datetime.fromisoformat(task["due_at"])
    local = task.get("due_local")
    return due, datetime.fromisoformat(local) if local else wall_clock(due, zone)


# -- the recurrence seam: the only places that know Recurrence's shape --------------


def _store_recurrence(rec: Recurrence) -> dict[str, Any]:
    """A parsed recurrence as kept in the record (naive wall-clock times as written)."""
    return rec.to_record()


def _load_recurrence(stored: dict[str, Any], zone: ZoneInfo) -> Recurrence:
    """The recurrence kept in a record (older records hold UTC times)."""
    return Recurrence.from_record(stored, zone)


def _wanted_jobs(
    event: TaskEvent, task: dict[str, Any], old_jobs: dict[str, str], now: datetime,
    config: PlanConfig,
) -> tuple[dict[str, str], dict[str, int]]:
    """(job name -> slot key) the task wants now, and the reminders missed, by kind."""
    try:
        slots = wanted_slots(task, config)
    except (ValueError, OverflowError) as exc:
        raise InvalidEvent(f"payload: reminder instants out of range: {exc}") from None
    due, _ = due_of(task, load_zone(task["timezone"]))
    grace = grace_of(task, config)
    live = {key: name for name, key in old_jobs.items()}  # slot -> the job that has it
    order = order_of(event)
    wanted: dict[str, str] = {}
    missed: dict[str, int] = {}
    late_overdue: list[Slot] = []
    for slot in slots:
        key = slot.key()
        name = live.get(key)
        if slot.at > now:
            wanted[name or slot_job_name(event.user_id, event.task_id, slot, order)] = key
        elif name is not None:
            # Scheduled earlier and due by now: it fired or is retrying; keep it
            # live for a while, never schedule it twice.
            if slot.at > now - FIRED_RETENTION:
                wanted[name] = key
        elif judge(slot.at, due, now, grace).publish:
            if slot.kind == "overdue":  # only the latest past repetition: no burst
                late_overdue.append(slot)
            else:  # late but still useful: fires at once
                wanted[slot_job_name(event.user_id, event.task_id, slot, order)] = key
        else:
            missed[slot.kind] = missed.get(slot.kind, 0) + slot.count
    for slot in late_overdue[:-1]:
        missed["overdue"] = missed.get("overdue", 0) + slot.count
    if late_overdue:
        last = late_overdue[-1]
        wanted[slot_job_name(event.user_id, event.task_id, last, order)] = last.key()
    return wanted, missed


def slot_job_name(user_id: str, task_id: int | str, slot: Slot, order: list[str]) -> str:
    """The job name of one slot; a plain reminder's is what it was before kinds."""
    key = slot.key()
    plain = key == format_utc(slot.at)
    return job_name(user_id, task_id, slot.at, order, slot=None if plain else key)


def job_spec(user_id: str, task_id: int | str, name: str, at: str, order: list[str],
             now: datetime) -> JobSpec:
    """The job of one reminder slot (key `at`), scheduled by the event of `order`.

    daprd holds job data as a protobuf Value: every number comes back as a float64
    (a 64-bit id returns changed), so the data holds strings only, and the task
    id's JSON type beside it so `reminder.due` can echo the id as it came.
    """
    slot = Slot.parse(at)
    instant = format_utc(slot.at)
    data = {"user_id": user_id, "task_id": str(task_id),
            "task_id_type": "string" if isinstance(task_id, str) else "number",
            "remind_at": instant, "order": order}
    if at != instant:
        data["slot"] = at  # not a plain reminder: the name is derived from the slot
    return JobSpec(name, max(slot.at, now + AT_ONCE_GRACE), data)


def _next(event: TaskEvent, task: dict[str, Any]) -> NextOccurrence | None:
    zone = load_zone(task["timezone"])
    rec = _load_recurrence(task["recurrence"], zone)
    current, current_wall = due_of(task, zone)
    if current is None or current_wall is None:  # no due date: the series runs from completion
        current, current_wall = event.timestamp, wall_clock(event.timestamp, zone)
    # "Now" for this purpose is when the task was completed, never when the event
    # happens to be handled: a redelivery hours later asks for the same occurrence
    # with the same idempotency key (contract §4).
    if rec.anchor == "completion":  # contract §8: the series restarts at the completion
        restarted = next_from_completion(rec, zone, due_of(task, zone)[1], event.timestamp)
        if restarted is None:
            return None
        nxt, series = restarted
        sent = series.to_json(zone, wall_clock(nxt, zone))
    else:
        found = next_occurrence(rec, zone, current_wall, max(current, event.timestamp))
        if found is None:
            return None
        nxt, sent = found, rec.to_json(zone, series_start(rec, current_wall))
    key = occurrence_key(event.user_id, event.task_id, nxt)
    body: dict[str, Any] = {
        "parent_task_id": event.task_id,
        "user_id": event.user_id,
        "next_due_at": format_utc(nxt),
        "next_due_local": format_local(nxt, zone),
        "timezone": task["timezone"],
        "recurrence": sent,
        "idempotency_key": key,
    }
    if task.get("title") is not None:
        body["title"] = task["title"]
    return NextOccurrence(key, nxt.astimezone(UTC), body)


_DECIMAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")
# Jobs scheduled before job data held strings carry the task id as a JSON number;
# daprd rounds one above 2**53 to a float64. Ids up to 2**64 are recovered from the
# job name (at most 2 x 4096 digests); beyond that no Snowflake-style id goes.
_EXACT_FLOAT_INT: Final = 2**53
_RECOVERABLE_INT: Final = 2**64


def parse_job_data(data: object, name: str) -> tuple[str, int | str, datetime, list[str]]:
    """(user_id, task_id, instant, order) of the job `name` from its data.

    Reads the string form `job_spec` writes and the number form of older jobs.
    InvalidEvent if the data is foreign or does not match the name.
    """
    foreign = InvalidEvent("job data is not a reminder of this worker")
    if not isinstance(data, dict):
        raise InvalidEvent("job data is not an object")
    try:
        user_id, raw_id = data["user_id"], data["task_id"]
        instant = datetime.fromisoformat(data["remind_at"])
        order = data["order"]
        _order_key(order)
        slot = data.get("slot")
        if slot is not None and (not isinstance(slot, str) or Slot.parse(slot).at != instant):
            raise foreign
    except (KeyError, TypeError, ValueError, IndexError):
        raise foreign from None
    id_type = data.get("task_id_type")
    task_id: int | str
    if id_type == "string" and isinstance(raw_id, str):
        task_id = raw_id
    elif id_type == "number" and isinstance(raw_id, str) and _DECIMAL_INT.fullmatch(raw_id):
        task_id = int(raw_id)
    elif id_type is None and isinstance(raw_id, int | str) and not isinstance(raw_id, bool):
        task_id = raw_id  # a job scheduled before job data held strings
    else:
        raise foreign
    if not isinstance(user_id, str) or instant.tzinfo is None:
        raise foreign
    if name not in (job_name(user_id, task_id, instant, order, slot=slot),
                    job_name(user_id, task_id, instant)):  # named before generations
        recovered = (_unrounded(user_id, task_id, instant, name)
                     if id_type is None and isinstance(task_id, int) else None)
        if recovered is None:
            raise InvalidEvent("job name does not match its data")
        task_id = recovered
    return user_id, task_id, instant, list(order)


def _unrounded(user_id: str, rounded: int, instant: datetime, name: str) -> int | None:
    """The integer id that daprd's float64 rounding turned into `rounded`, found by
    the job name it was scheduled under; None when there is none."""
    if not _EXACT_FLOAT_INT < abs(rounded) < _RECOVERABLE_INT:
        return None
    image = float(rounded)
    centre, spacing = int(image), int(math.ulp(image))
    for candidate in range(centre - spacing, centre + spacing + 1):
        if float(candidate) == image and job_name(user_id, candidate, instant) == name:
            return candidate
    return None


def record_is_behind(record: dict[str, Any] | None, order: list[str]) -> bool:
    """A job scheduled by an event the record does not show yet (its save is in flight)."""
    return record is None or _order_key(record["order"]) < _order_key(order)


def record_ttl(old: dict[str, Any] | None, new: dict[str, Any]) -> int | None:
    """The ttlInSeconds to save `new` with: tombstones expire, a re-created task persists."""
    if new["status"] != "active":
        return TOMBSTONE_TTL_SECONDS
    if old is not None and old["status"] != "active":
        return PERSIST  # a re-created task: drop the tombstone's TTL explicitly
    return None
