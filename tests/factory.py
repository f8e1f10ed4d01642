"""Task events for tests: one builder, bare documents or parsed."""

from __future__ import annotations

from typing import Any

from worker.events import TaskEvent, parse_document

DUE = "2026-11-26T14:00:00Z"  # two hours after the harness's START (12:00Z)


def event(etype: str, minute: int = 0, task_id: int | str = 1, user: str = "u1",
          **payload: Any) -> dict[str, Any]:
    """A bare task event; `minute` orders events of one task (timestamp 11:mm)."""
    doc: dict[str, Any] = {"event_type": etype, "event_version": "1.0", "task_id": task_id,
                           "user_id": user, "timestamp": f"2026-11-26T11:{minute:02d}:00Z"}
    if payload:
        doc["payload"] = payload
    return doc


def created(minute: int = 0, task_id: int | str = 1, user: str = "u1",
            **extra: Any) -> dict[str, Any]:
    """task.created due at DUE (Europe/Berlin) with reminders 1 h and 30 min before."""
    payload = {"title": "Pay rent", "due_at": DUE, "timezone": "Europe/Berlin",
               "reminders": ["PT1H", 30], **extra}
    return event("task.created", minute, task_id, user, **payload)


def parsed(doc: dict[str, Any]) -> TaskEvent:
    """The TaskEvent of a document (fails the test when it is ignored)."""
    result = parse_document(doc)
    assert isinstance(result, TaskEvent), result
    return result
