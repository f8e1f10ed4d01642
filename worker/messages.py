"""Pure: what the worker sends out, built from a record and the moment.

`reminder_due` is the CloudEvent published when a reminder fires (docs/events.md,
"`reminder.due` out"); `next_occurrence_body` the task service's create-next request
(docs/events.md, "Next occurrence out").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from worker.keys import reminder_id
from worker.records import Task
from worker.rules.kinds import Slot
from worker.rules.recurrence import Recurrence, series_start
from worker.schedule import format_local, format_utc


def reminder_due(source: str, user_id: str, task_id: int | str, task: Task,
                 reminder: Slot | datetime, fired_at: datetime) -> dict[str, Any]:
    """The `reminder.due` CloudEvent of one reminder (a slot; an instant is a plain
    reminder). Its id is the same for every fire of that (kind, instant), so consumers
    can dedupe; a plain reminder's id is the one it had before kinds (docs/reminders.md,
    "Kinds")."""
    slot = reminder if isinstance(reminder, Slot) else Slot(reminder)
    data: dict[str, Any] = {
        "event_type": "reminder.due", "event_version": "1.0",
        "task_id": task_id, "user_id": user_id,
        "due_at": format_utc(task.due_at) if task.due_at else None,
        "remind_at": format_utc(slot.at),
        "fired_at": format_utc(fired_at), "timezone": task.timezone,
        "kind": slot.kind,
    }
    if slot.deferred_from:  # quiet hours moved it (several: published once)
        data["deferred_from"] = format_utc(slot.deferred_from[0])
        data["count"] = slot.count
    if task.title is not None:
        data["title"] = task.title
    return {
        "specversion": "1.0", "type": "reminder.due", "source": source,
        "id": reminder_id(user_id, task_id, slot.at, slot.kind), "time": data["fired_at"],
        "datacontenttype": "application/json", "data": data,
    }


def next_occurrence_body(user_id: str, task_id: int | str, task: Task, rec: Recurrence,
                         zone: ZoneInfo, nxt: datetime, current_wall: datetime,
                         key: str) -> dict[str, Any]:
    """The create-next request for occurrence `nxt` of the series whose current occurrence
    is `current_wall`; `recurrence` carries the series start so COUNT stays exact."""
    body: dict[str, Any] = {
        "parent_task_id": task_id,
        "user_id": user_id,
        "next_due_at": format_utc(nxt),
        "next_due_local": format_local(nxt, zone),
        "timezone": task.timezone,
        "recurrence": rec.to_json(zone, series_start(rec, current_wall)),
        "idempotency_key": key,
    }
    if task.title is not None:
        body["title"] = task.title
    return body
