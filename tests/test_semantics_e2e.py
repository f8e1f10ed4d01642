"""The reminder rules (docs/reminders.md) end to end: the worker over real HTTP against
the development sidecar, one test per rule, time moved by the shared ManualClock (no
sleeps)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.harness import START, Stack, stack
from worker.keys import reminder_id, task_key
from worker.schedule import UTC

pytestmark = pytest.mark.anyio


def event(etype: str, ts: str, task_id: int | str = 1, user: str = "u1",
          **payload: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"event_type": etype, "event_version": "1.0", "task_id": task_id,
                           "user_id": user, "timestamp": ts}
    if payload:
        doc["payload"] = payload
    return doc


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of `name` with exactly these labels (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
        if match and (match.group(1) or "") == want:
            return float(match.group(2))
    return 0.0


def job_times(s: Stack) -> list[str]:
    return sorted(j.due_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                  for j in s.sidecar.jobs().values())


async def advance_to(s: Stack, when: datetime) -> None:
    """Move the clock to `when` and wait until every job due by then has been answered."""
    s.clock.set(when)
    await s.sidecar.wait_for(lambda: all(j.due_time > when for j in s.sidecar.jobs().values()))


async def test_late_trigger_past_the_grace_is_missed_and_counted() -> None:
    async with stack() as s:
        # due 14:00; a reminder at 13:00 (before) and one at 14:30 (after the due time)
        await s.deliver(event("task.created", "2026-11-26T11:00:00Z", title="Call",
                              due_at="2026-11-26T14:00:00Z", reminders=["PT1H", "+PT30M"]))
        assert job_times(s) == ["2026-11-26T13:00:00Z", "2026-11-26T14:30:00Z"]
        # the worker's scheduler was away: both fire at 15:30 (2h30 and 1h late)
        await advance_to(s, START + timedelta(hours=3, minutes=30))
        published = [e["data"]["remind_at"] for e in s.reminders()]
        assert published == ["2026-11-26T14:30:00Z"]  # exactly the grace late: still sent
        text = await s.metrics()
        assert metric(text, "reminder_worker_reminders_missed_total", kind="reminder") == 1
        assert metric(text, "reminder_worker_reminders_published_total",
                      outcome="skipped") == 1
        assert s.sidecar.jobs() == {}


async def test_past_instants_when_an_event_is_applied_follow_the_same_rule() -> None:
    async with stack(env={"REMINDER_MISFIRE_GRACE": "PT45M"}) as s:
        # due three hours ago: 11:30 is 30 minutes late (fires at once), 10:00 two hours
        await s.deliver(event("task.created", "2026-11-26T11:00:00Z", due_at="2026-11-26T09:00Z",
                              remind_at=["2026-11-26T10:00:00Z", "2026-11-26T11:30:00Z"]))
        assert job_times(s) == ["2026-11-26T12:00:01Z"]
        text = await s.metrics()
        assert metric(text, "reminder_worker_reminders_missed_total", kind="reminder") == 1
        # a task's own grace wins: null is no limit
        await s.deliver(event("task.created", "2026-11-26T11:00:00Z", task_id=2,
                              due_at="2026-11-26T09:00Z", misfire_grace=None,
                              remind_at=["2026-11-26T10:00:00Z"]))
        assert len(s.sidecar.jobs()) == 2


async def test_completion_anchored_series_restarts_at_each_completion() -> None:
    async with stack() as s:
        rec = {"rrule": "FREQ=DAILY;INTERVAL=3;COUNT=3", "anchor": "completion"}
        await s.deliver(event("task.created", "2026-11-26T07:00:00Z", task_id=7,
                              due_at="2026-11-26T09:00:00", timezone="Europe/Berlin",
                              recurrence=rec))
        # done Monday 20:00 Berlin: next Thursday 09:00 (not Sunday, three days after due)
        await s.deliver(event("task.completed", "2026-11-30T19:00:00Z", task_id=7))
        [first] = s.sidecar.invocations
        assert first.json["next_due_at"] == "2026-12-03T08:00:00Z"
        assert first.json["next_due_local"] == "2026-12-03T09:00:00+01:00"
        assert first.json["recurrence"] == {
            "rrule": "FREQ=DAILY;INTERVAL=3;COUNT=2", "dtstart": "2026-12-03T09:00:00+01:00",
            "exdates": [], "anchor": "completion"}
        # the task service creates that instance (task 8) with what it was sent; it is
        # done late, on Saturday morning: the series restarts from there
        await s.deliver(event("task.created", "2026-12-03T07:00:00Z", task_id=8,
                              due_at=first.json["next_due_local"], timezone="Europe/Berlin",
                              recurrence=first.json["recurrence"]))
        await s.deliver(event("task.completed", "2026-12-05T07:30:00Z", task_id=8))
        second = s.sidecar.invocations[1].json
        assert second["next_due_at"] == "2026-12-08T08:00:00Z"
        assert second["recurrence"]["rrule"] == "FREQ=DAILY;INTERVAL=3;COUNT=1"
        # the last instance: completing it ends the series
        await s.deliver(event("task.created", "2026-12-08T07:00:00Z", task_id=9,
                              due_at=second["next_due_local"], timezone="Europe/Berlin",
                              recurrence=second["recurrence"]))
        await s.deliver(event("task.completed", "2026-12-08T09:00:00Z", task_id=9))
        assert len(s.sidecar.invocations) == 2
        text = await s.metrics()
        assert metric(text, "reminder_worker_next_occurrences_total", outcome="ended") == 1


async def test_three_overdue_repetitions_then_completion_stops_them() -> None:
    async with stack() as s:
        await s.deliver(event("task.created", "2026-11-26T11:00:00Z", title="Water plants",
                              due_at="2026-11-26T14:00:00Z", reminders=[],
                              repeat={"every": "PT30M", "max": 10}))
        assert len(s.sidecar.jobs()) == 10
        for k in (1, 2, 3):
            await advance_to(s, z("2026-11-26T14:00Z") + timedelta(minutes=30 * k, seconds=2))
            assert len(s.reminders()) == k
        assert [e["data"]["kind"] for e in s.reminders()] == ["overdue"] * 3
        ats = [z(e["data"]["remind_at"]) for e in s.reminders()]
        assert ats == [z("2026-11-26T14:30Z"), z("2026-11-26T15:00Z"), z("2026-11-26T15:30Z")]
        assert [e["id"] for e in s.reminders()] == [reminder_id("u1", 1, a, "overdue")
                                                    for a in ats]
        assert len(set(e["id"] for e in s.reminders())) == 3
        await s.deliver(event("task.completed", "2026-11-26T15:40:00Z"))
        assert s.sidecar.jobs() == {}
        await advance_to(s, z("2026-11-27T12:00Z"))
        assert len(s.reminders()) == 3


async def test_new_due_time_moves_the_repetitions() -> None:
    async with stack() as s:
        await s.deliver(event("task.created", "2026-11-26T11:00:00Z",
                              due_at="2026-11-26T14:00:00Z", repeat={"every": "PT1H", "max": 2}),
                        event("task.updated", "2026-11-26T11:01:00Z",
                              due_at="2026-11-26T18:00:00Z"))
        assert job_times(s) == ["2026-11-26T19:00:00Z", "2026-11-26T20:00:00Z"]


async def test_snooze_fires_once_as_kind_snooze_and_completion_cancels_another() -> None:
    async with stack() as s:
        await s.deliver(event("task.created", "2026-11-26T11:00:00Z", title="Call mum",
                              due_at="2026-11-26T12:30:00Z", reminders=[]))
        snooze = event("task.snoozed", "2026-11-26T11:05:00Z", **{"for": "PT3H"})
        await s.deliver(snooze, snooze)  # redelivered: one job
        assert job_times(s) == ["2026-11-26T14:05:00Z"]
        await advance_to(s, z("2026-11-26T14:05:01Z"))
        [env] = s.reminders()
        assert env["data"]["kind"] == "snooze" and env["data"]["title"] == "Call mum"
        assert env["id"] == reminder_id("u1", 1, z("2026-11-26T14:05Z"), "snooze")
        assert env["id"] != reminder_id("u1", 1, z("2026-11-26T14:05Z"))
        # snoozed again, until an instant; completion cancels it
        await s.deliver(event("task.snoozed", "2026-11-26T14:06:00Z",
                              until="2026-11-26T16:00:00Z"))
        assert job_times(s) == ["2026-11-26T16:00:00Z"]
        await s.deliver(event("task.completed", "2026-11-26T14:07:00Z"))
        await advance_to(s, z("2026-11-26T17:00Z"))
        assert len(s.reminders()) == 1 and s.sidecar.jobs() == {}


async def test_reminders_in_quiet_hours_are_deferred_to_its_end_and_published_once() -> None:
    async with stack(env={"REMINDER_QUIET_HOURS": "22:00-07:00"}) as s:
        # due 07:30 Berlin; 9 h and 8 h before are 22:30 and 23:30: both move to 07:00
        await s.deliver(event("task.created", "2026-11-26T11:00:00Z", title="Train",
                              due_at="2026-11-27T07:30:00", timezone="Europe/Berlin",
                              reminders=["PT9H", "PT8H", "PT10M"],
                              remind_at=["2026-11-26T21:45:00Z"]))  # explicit: kept
        assert job_times(s) == ["2026-11-26T21:45:00Z", "2026-11-27T06:00:00Z",
                                "2026-11-27T06:20:00Z"]
        for at in ("2026-11-26T21:45:01Z", "2026-11-27T06:00:01Z", "2026-11-27T06:20:01Z"):
            await advance_to(s, z(at))
        data = [e["data"] for e in s.reminders()]
        assert [(d["remind_at"], d.get("deferred_from"), d.get("count")) for d in data] == [
            ("2026-11-26T21:45:00Z", None, None),
            ("2026-11-27T06:00:00Z", "2026-11-26T21:30:00Z", 2),
            ("2026-11-27T06:20:00Z", None, None)]
        assert s.reminders()[1]["id"] == reminder_id("u1", 1, z("2026-11-27T06:00Z"))
        text = await s.metrics()
        assert metric(text, "reminder_worker_reminders_deferred_total", kind="reminder") == 2
        # the task's own window wins over the setting; null means none
        await s.deliver(event("task.created", "2026-11-26T11:00:00Z", task_id=2,
                              due_at="2026-11-28T07:30:00", timezone="Europe/Berlin",
                              reminders=["PT9H"], quiet_hours=None))
        assert "2026-11-27T21:30:00Z" in job_times(s)


async def test_zone_change_moves_a_floating_task_and_keeps_a_fixed_one() -> None:
    async with stack() as s:
        for task_id, floating in ((1, True), (2, False)):
            await s.deliver(event("task.created", "2026-11-26T11:00:00Z", task_id=task_id,
                                  due_at="2026-11-27T09:00:00", timezone="Europe/Berlin",
                                  reminders=["PT1H"], floating=floating))
        assert job_times(s) == ["2026-11-27T07:00:00Z"] * 2
        for task_id in (1, 2):  # the user flies to New York
            await s.deliver(event("task.updated", "2026-11-26T11:01:00Z", task_id=task_id,
                                  timezone="America/New_York"))
        records = s.records()
        assert records[task_key("u1", 1)]["task"]["due_at"] == "2026-11-27T14:00:00Z"
        assert records[task_key("u1", 2)]["task"]["due_at"] == "2026-11-27T08:00:00Z"
        assert job_times(s) == ["2026-11-27T07:00:00Z", "2026-11-27T13:00:00Z"]
        await advance_to(s, z("2026-11-27T07:00:01Z"))
        await advance_to(s, z("2026-11-27T13:00:01Z"))
        fired = {e["data"]["task_id"]: e["data"] for e in s.reminders()}
        assert fired[1]["due_at"] == "2026-11-27T14:00:00Z"
        assert fired[1]["timezone"] == "America/New_York"
        assert fired[2]["due_at"] == "2026-11-27T08:00:00Z"
