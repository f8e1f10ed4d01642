"""Pure planning: (task record, task event, now) -> what to do.

No I/O. The service executes a plan; `--dry-run` prints it. A task record is
the JSON kept in the state store per (user, task):

    {"v": 1, "user_id", "task_id", "order": [timestamp, fingerprint],
     "status": "active" | "completed" | "deleted",
     "task": {"title", "due_at", "timezone", "offsets", "remind_at", "recurrence"},
     "jobs": {job name: reminder instant}}

`order` is the last applied event: a later event applies, an equal one is a
duplicate, an earlier one is stale. `jobs` are the live reminder jobs; a fired
job publishes only if its name is still here and the task is active.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from worker.errors import InvalidEvent
from worker.events import TaskEvent
from worker.recurrence import (
    Recurrence,
    next_occurrence,
    parse_recurrence,
    series_start,
)
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
    reminder_instants,
    wall_clock,
)

RECORD_VERSION: Final = 1
# A fired job may still be retrying (publish failed): keep its name live this
# long after its instant so an unrelated update does not orphan the retry.
FIRED_RETENTION: Final = timedelta(hours=6)
# A past reminder "fires at once"; one second of grace lets the record save land
# first, so the trigger does not find the record behind and wait for a retry.
AT_ONCE_GRACE: Final = timedelta(seconds=1)

Outcome = Literal["processed", "duplicate", "stale"]


@dataclass(frozen=True)
class PlanConfig:
    all_day_time: time = time(9, 0)
    default_offsets: tuple[Offset, ...] = ()


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
    skipped: int = 0  # reminder instants already past with the task overdue

    def to_json(self, event: TaskEvent) -> dict[str, Any]:
        return {
            "event_type": event.event_type,
            "task_id": event.task_id,
            "user_id": event.user_id,
            "outcome": self.outcome,
            "schedule": [{"name": j.name, "due_time": format_utc(j.due_time)}
                         for j in self.schedule],
            "delete": self.delete,
            "skipped": self.skipped,
            "next_occurrence": self.next.body if self.next else None,
            "series_ended": self.series_ended,
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
        return Plan(outcome, record)
    prior = record["task"] if record else {}
    task = merge(prior, event.changes, config)
    old_status = record["status"] if record else "active"
    status = {"task.created": "active", "task.completed": "completed",
              "task.deleted": "deleted"}.get(event.event_type, old_status)
    old_jobs: dict[str, str] = dict(record["jobs"]) if record else {}
    new_jobs: dict[str, str] = {}
    plan = Plan("processed", {})
    if status == "active":
        new_jobs, plan.skipped = _wanted_jobs(event, task, old_jobs, now, config)
    order = order_of(event)
    plan.schedule = [job_spec(event.user_id, event.task_id, name, at, order, now)
                     for name, at in new_jobs.items() if name not in old_jobs]
    plan.delete = [name for name in old_jobs if name not in new_jobs]
    if event.event_type == "task.completed" and task.get("recurrence") and old_status == "active":
        plan.next = _next(event, task, now)
        plan.series_ended = plan.next is None
    plan.record = {
        "v": RECORD_VERSION, "user_id": event.user_id, "task_id": event.task_id,
        "order": order, "status": status, "task": task, "jobs": new_jobs,
    }
    return plan


def merge(prior: dict[str, Any], changes: dict[str, Any], config: PlanConfig) -> dict[str, Any]:
    """The task's fields after `changes`, each time value parsed in the effective zone."""
    task = dict(prior)
    try:
        zone_name = changes.get("timezone") or prior.get("timezone") or "UTC"
        zone = load_zone(zone_name)
        task["timezone"] = zone_name
    except ValueError as exc:
        raise InvalidEvent(f"payload.timezone: {exc}") from None
    for name, value in changes.items():
        try:
            if name == "title":
                task["title"] = value
            elif name == "due_at":
                task["due_at"] = None if value is None else format_utc(
                    parse_when(value, zone, config.all_day_time))
            elif name == "reminders":
                task["offsets"] = [] if value is None else [parse_offset(v).iso() for v in value]
            elif name == "remind_at":
                task["remind_at"] = [] if value is None else [
                    format_utc(parse_when(v, zone, config.all_day_time)) for v in value]
            elif name == "recurrence":
                task["recurrence"] = None if value is None else parse_recurrence(
                    value, zone, config.all_day_time).to_record()
        except InvalidEvent:
            raise
        except (ValueError, OverflowError, TypeError) as exc:
            raise InvalidEvent(f"payload.{name}: {exc}") from None
    return task


def recurrence_of(stored: dict[str, Any], zone: ZoneInfo) -> Recurrence:
    """The stored recurrence (naive wall-clock times; older records hold UTC times)."""
    return Recurrence.from_record(stored, zone)


def _wanted_jobs(
    event: TaskEvent, task: dict[str, Any], old_jobs: dict[str, str], now: datetime,
    config: PlanConfig,
) -> tuple[dict[str, str], int]:
    zone = load_zone(task["timezone"])
    due = datetime.fromisoformat(task["due_at"]) if task.get("due_at") else None
    offsets_raw = task.get("offsets")
    offsets = (config.default_offsets if offsets_raw is None and due is not None
               else tuple(parse_offset(o) for o in offsets_raw or ()))
    remind_at = [datetime.fromisoformat(a) for a in task.get("remind_at") or ()]
    try:
        instants = reminder_instants(due, zone, offsets, remind_at)
    except (ValueError, OverflowError) as exc:
        raise InvalidEvent(f"payload: reminder instants out of range: {exc}") from None
    wanted: dict[str, str] = {}
    skipped = 0
    for instant in instants:
        name = job_name(event.user_id, event.task_id, instant)
        if instant > now:
            wanted[name] = format_utc(instant)
        elif name in old_jobs:
            # Scheduled earlier and due by now: it fired or is retrying; keep it
            # live for a while, never schedule it twice.
            if instant > now - FIRED_RETENTION:
                wanted[name] = old_jobs[name]
        elif due is not None and due > now:
            wanted[name] = format_utc(instant)  # late but still useful: fires at once
        else:
            skipped += 1
    return wanted, skipped


def job_spec(user_id: str, task_id: int | str, name: str, at: str, order: list[str],
             now: datetime) -> JobSpec:
    """The job of one reminder instant `at`, scheduled by the event of `order`."""
    data = {"user_id": user_id, "task_id": task_id, "remind_at": at, "order": order}
    return JobSpec(name, max(datetime.fromisoformat(at), now + AT_ONCE_GRACE), data)


def _next(event: TaskEvent, task: dict[str, Any], now: datetime) -> NextOccurrence | None:
    zone = load_zone(task["timezone"])
    rec = recurrence_of(task["recurrence"], zone)
    due = datetime.fromisoformat(task["due_at"]) if task.get("due_at") else event.timestamp
    current = wall_clock(due, zone)
    nxt = next_occurrence(rec, zone, current, now)
    if nxt is None:
        return None
    key = occurrence_key(event.user_id, event.task_id, nxt)
    body: dict[str, Any] = {
        "parent_task_id": event.task_id,
        "user_id": event.user_id,
        "next_due_at": format_utc(nxt),
        "next_due_local": format_local(nxt, zone),
        "timezone": task["timezone"],
        "recurrence": rec.to_json(zone, series_start(rec, current)),
        "idempotency_key": key,
    }
    if task.get("title") is not None:
        body["title"] = task["title"]
    return NextOccurrence(key, nxt.astimezone(UTC), body)


def parse_job_data(data: object) -> tuple[str, int | str, datetime, list[str]]:
    """(user_id, task_id, instant, order) from a job's data; InvalidEvent if foreign."""
    if not isinstance(data, dict):
        raise InvalidEvent("job data is not an object")
    try:
        user_id, task_id = data["user_id"], data["task_id"]
        instant = datetime.fromisoformat(data["remind_at"])
        order = data["order"]
        _order_key(order)
    except (KeyError, TypeError, ValueError, IndexError):
        raise InvalidEvent("job data is not a reminder of this worker") from None
    if not isinstance(user_id, str) or not isinstance(task_id, int | str) or instant.tzinfo is None:
        raise InvalidEvent("job data is not a reminder of this worker")
    return user_id, task_id, instant, list(order)


def record_is_behind(record: dict[str, Any] | None, order: list[str]) -> bool:
    """A job scheduled by an event the record does not show yet (its save is in flight)."""
    return record is None or _order_key(record["order"]) < _order_key(order)
