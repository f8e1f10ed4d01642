"""Issue 8's recurrence inputs through `--replay --dry-run`: what a task service sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.test_cli import run


def created(task_id: int, due_at: str, recurrence: object) -> dict[str, Any]:
    return {"event_type": "task.created", "task_id": task_id, "user_id": "u",
            "timestamp": "2030-01-01T00:00:00Z",
            "payload": {"due_at": due_at, "timezone": "Europe/Berlin",
                        "recurrence": recurrence}}


def completed(task_id: int) -> dict[str, Any]:
    return {"event_type": "task.completed", "task_id": task_id, "user_id": "u",
            "timestamp": "2030-01-01T00:01:00Z"}


@pytest.mark.parametrize(
    "due_at,recurrence,next_due_at",
    [
        # WEEKLY + BYSETPOS takes the whole week: due Wednesday, next is Monday
        ("2030-01-09T09:00:00", "FREQ=WEEKLY;BYDAY=MO,TH;BYSETPOS=1", "2030-01-14T08:00:00Z"),
        # spaces, MINUTELY, the shorthands hourly and weekdays
        ("2030-01-09T09:00:00", "FREQ=WEEKLY; BYDAY=MO", "2030-01-14T08:00:00Z"),
        ("2030-01-09T09:00:00", "FREQ=MINUTELY;INTERVAL=30", "2030-01-09T08:30:00Z"),
        ("2030-01-09T09:00:00", "hourly", "2030-01-09T09:00:00Z"),
        ("2030-01-11T09:00:00", "weekdays", "2030-01-14T08:00:00Z"),
        # rdates and a bare-date exdate (the whole local day, for an 18:00 task)
        ("2030-01-09T18:00:00", {"rrule": "FREQ=DAILY", "exdates": ["2030-01-10"],
                                 "rdates": ["2030-01-11T07:00:00"]}, "2030-01-11T06:00:00Z"),
        # an exdate removes an rdate too (RFC 5545: from the whole recurrence set)
        ("2030-01-09T18:00:00", {"rrule": "FREQ=DAILY", "exdates": ["2030-01-10"],
                                 "rdates": ["2030-01-10T07:00:00"]}, "2030-01-11T17:00:00Z"),
        ("2030-01-09T18:00:00", {"rrule": "FREQ=DAILY", "exdates": ["2030-01-10"]},
         "2030-01-11T17:00:00Z"),
    ],
)
def test_next_occurrence_through_replay(due_at: str, recurrence: object,
                                        next_due_at: str) -> None:
    lines = [created(1, due_at, recurrence), completed(1)]
    out = run("--replay", "-", "--dry-run", stdin="".join(json.dumps(x) + "\n" for x in lines))
    assert out.returncode == 0, out.stderr
    plans = [json.loads(line) for line in out.stdout.splitlines()]
    assert plans[-1]["next_occurrence"]["next_due_at"] == next_due_at
