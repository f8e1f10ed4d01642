"""Task events for the benchmark, the same bodies bench/load.lua sends (and replay files)."""

from __future__ import annotations

import json
from typing import Any

DUE_AT = "2030-01-01T09:00:00+01:00"
REMINDERS = {"task1": ["PT1H"], "task3": ["PT1H", "P1D", 30]}
RECURRENCE = "FREQ=MONTHLY;BYMONTHDAY=1"


def task_event(kind: str, tag: str, n: int, *, timestamp: str = "2026-11-26T10:00:00Z",
               envelope: bool = True) -> dict[str, Any]:
    """kind: task1, task3 (task.created with 1 / 3 reminders) or completed (recurring)."""
    payload: dict[str, Any] = {"title": "Pay rent", "due_at": DUE_AT, "timezone": "Europe/Berlin"}
    if kind == "completed":
        payload["recurrence"] = RECURRENCE
    else:
        payload["reminders"] = REMINDERS[kind]
    data = {"event_type": "task.completed" if kind == "completed" else "task.created",
            "event_version": "1.0", "event_id": f"ev-{tag}-{n}", "task_id": n,
            "user_id": f"user-{tag}", "timestamp": timestamp, "payload": payload}
    if not envelope:
        return data
    return {"specversion": "1.0", "id": f"ce-{tag}-{n}", "source": "todo-backend",
            "type": "com.dapr.event.sent", "datacontenttype": "application/json",
            "topic": "task-events", "pubsubname": "kafka-pubsub", "data": data}


def replay_lines(count: int) -> bytes:
    """A realistic replay file: per task, created (3 reminders, recurring), updated, completed;
    plus tasks with one reminder. Half the lines are CloudEvents, half bare events."""
    out: list[bytes] = []
    n = 0
    while len(out) < count:
        n += 1
        created = task_event("task3", "replay", n, envelope=n % 2 == 0)
        data = created.get("data", created)
        data["payload"]["recurrence"] = RECURRENCE
        out.append(json.dumps(created).encode())
        updated = {"event_type": "task.updated", "task_id": n, "user_id": "user-replay",
                   "timestamp": "2026-11-26T11:00:00Z",
                   "payload": {"due_at": "2030-01-02T09:00:00+01:00"}}
        out.append(json.dumps(updated).encode())
        completed = {"event_type": "task.completed", "task_id": n, "user_id": "user-replay",
                     "timestamp": "2026-11-26T12:00:00Z"}
        out.append(json.dumps(completed).encode())
        out.append(json.dumps(task_event("task1", "replay1", n, envelope=n % 2 == 1)).encode())
    return b"\n".join(out[:count]) + b"\n"
