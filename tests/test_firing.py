"""Pure: job data read back, the decision at firing, and the reminder.due it publishes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.test_plan import apply, ev
from worker.errors import InvalidEvent
from worker.firing import decide, parse_job_data
from worker.keys import job_name, reminder_id
from worker.messages import reminder_due
from worker.records import NO_GRACE_LIMIT, Order, Task
from worker.rules.kinds import Slot


def test_decide_at_firing() -> None:
    plan = apply(ev("task.created", 5, due_at="2026-12-01T09:00:00Z", reminders=["PT1H"]))
    [job] = plan.schedule
    order = Order.from_json(job.data["order"])
    record = plan.record
    now = job.due_time
    assert decide(None, job.name, order, now) == "behind"  # its record's save is in flight
    older = apply(ev("task.created", 1, due_at="2026-12-01T09:00:00Z")).record
    assert decide(older, job.name, order, now) == "behind"
    assert decide(record, job.name, order, now) == "publish"
    assert decide(record, "rw-other", order, now) == "skip"  # superseded by a later event
    for status in ("completed", "deleted"):
        assert decide(dataclasses.replace(record, status=status), job.name, order, now) == "skip"
    newer = dataclasses.replace(record, order=Order(record.order.timestamp, "z" * 16))
    assert decide(newer, job.name, order, now) == "publish"  # a later event still lists the job


def test_decide_applies_the_misfire_grace() -> None:
    # reminder 08:00, due 09:00: late but before the due time still publishes (misfire policy)
    plan = apply(ev("task.created", 5, due_at="2026-12-01T09:00:00Z", reminders=["PT1H"]))
    [job] = plan.schedule
    order, record = Order.from_json(job.data["order"]), plan.record
    at = datetime(2026, 12, 1, 8, tzinfo=UTC)
    hour = timedelta(hours=1)
    assert decide(record, job.name, order, at + hour - timedelta(seconds=1)) == "publish"
    assert decide(record, job.name, order, at + hour) == "publish"  # grace: exactly 1 h late
    assert decide(record, job.name, order, at + hour + timedelta(seconds=1)) == "missed"
    assert decide(record, job.name, order, at + 3 * hour, default_grace=3 * hour) == "publish"
    assert decide(record, job.name, order, at + 3 * hour, default_grace=None) == "publish"
    own = dataclasses.replace(record, task=dataclasses.replace(
        record.task, misfire_grace=timedelta(minutes=90)))  # the task's own beats the setting
    assert decide(own, job.name, order, at + 85 * timedelta(minutes=1)) == "publish"
    assert decide(own, job.name, order, at + 2 * hour, default_grace=None) == "missed"
    unlimited = dataclasses.replace(record, task=dataclasses.replace(
        record.task, misfire_grace=NO_GRACE_LIMIT))
    assert decide(unlimited, job.name, order, at + 1000 * hour) == "publish"
    # the order still comes first: a record behind is retried, not judged
    assert decide(None, job.name, order, at + 1000 * hour) == "behind"


def test_reminder_due_envelope() -> None:
    task = Task(timezone="Europe/Berlin", title="Pay rent",
                due_at=datetime(2026, 11, 26, 14, tzinfo=UTC),
                due_local=datetime(2026, 11, 26, 15))  # noqa: DTZ001 (wall clock)
    instant = datetime(2026, 11, 26, 13, tzinfo=UTC)
    fired = datetime(2026, 11, 26, 13, 0, 3, tzinfo=UTC)
    envelope = reminder_due("reminder-worker", "u1", 1, task, instant, fired)
    assert envelope == {
        "specversion": "1.0", "type": "reminder.due", "source": "reminder-worker",
        "id": reminder_id("u1", 1, instant), "time": "2026-11-26T13:00:03Z",
        "datacontenttype": "application/json",
        "data": {"event_type": "reminder.due", "event_version": "1.0", "task_id": 1,
                 "user_id": "u1", "title": "Pay rent", "due_at": "2026-11-26T14:00:00Z",
                 "remind_at": "2026-11-26T13:00:00Z", "fired_at": "2026-11-26T13:00:03Z",
                 "timezone": "Europe/Berlin", "kind": "reminder"},
    }
    # a plain reminder's id is the one it had before kinds existed (consumers dedupe on it)
    assert envelope["id"] == "rw-rem-e75a12a494f291958cab3f88a1f9ceefbc290752"
    assert reminder_due("reminder-worker", "u1", 1, task, Slot(instant), fired) == envelope
    bare = reminder_due("w", "u1", "7", Task(), instant, fired)["data"]
    assert bare["due_at"] is None and "title" not in bare and bare["task_id"] == "7"
    assert bare["timezone"] == "UTC"


def test_reminder_due_of_other_kinds_and_deferred_reminders() -> None:
    task = Task(timezone="Europe/Berlin", due_at=datetime(2026, 11, 26, 14, tzinfo=UTC))
    at = datetime(2026, 11, 26, 15, tzinfo=UTC)
    fired = at + timedelta(seconds=2)
    ids = set()
    for kind in ("reminder", "overdue", "snooze"):
        env = reminder_due("w", "u1", 1, task, Slot(at, kind), fired)
        assert env["data"]["kind"] == kind and env["id"] == reminder_id("u1", 1, at, kind)
        assert "deferred_from" not in env["data"] and "count" not in env["data"]
        ids.add(env["id"])
    assert len(ids) == 3  # one id per (kind, instant)
    meant = (datetime(2026, 11, 26, 5, tzinfo=UTC), datetime(2026, 11, 26, 5, 30, tzinfo=UTC))
    data = reminder_due("w", "u1", 1, task, Slot(at, "reminder", meant), fired)["data"]
    assert (data["kind"], data["deferred_from"], data["count"]) == (
        "reminder", "2026-11-26T05:00:00Z", 2)
    assert data["remind_at"] == "2026-11-26T15:00:00Z"


def test_job_data_with_a_slot() -> None:
    plan = apply(ev("task.created", 5, due_at="2026-12-01T09:00:00Z", reminders=["PT1H"],
                    repeat={"every": "PT1H", "max": 2}))
    plain, overdue, _ = sorted(plan.schedule, key=lambda j: j.due_time)
    assert [j.data.get("slot", "plain")[:7] for j in plan.schedule].count("overdue") == 2
    # a plain reminder keeps the job name and data it had before kinds
    assert plain.name == job_name("u", 1, plain.due_time, plain.data["order"])
    assert overdue.data["slot"] == "overdue@2026-12-01T10:00:00Z"
    assert overdue.name == job_name("u", 1, overdue.due_time, overdue.data["order"],
                                    slot=overdue.data["slot"])
    assert overdue.name != job_name("u", 1, overdue.due_time, overdue.data["order"])
    assert parse_job_data(overdue.data, overdue.name)[:3] == ("u", 1, overdue.due_time)
    with pytest.raises(InvalidEvent):  # the slot is part of the name
        parse_job_data({k: v for k, v in overdue.data.items() if k != "slot"}, overdue.name)
    with pytest.raises(InvalidEvent):  # a slot of another instant
        parse_job_data(overdue.data | {"slot": "overdue@2026-12-01T11:00:00Z"}, overdue.name)
    with pytest.raises(InvalidEvent):
        parse_job_data(overdue.data | {"slot": "nonsense@x"}, overdue.name)


def _job_data(**fields: Any) -> dict[str, Any]:
    base = {"user_id": "u", "remind_at": "2026-11-26T13:00:00Z",
            "order": ["2026-11-26T11:00:00Z", "f"]}
    return base | fields


AT = datetime(2026, 11, 26, 13, 0, tzinfo=UTC)
BIG = 2**62 + 12345  # a float64 rounds it


@pytest.mark.parametrize(("fields", "task_id"), [
    ({"task_id": str(BIG), "task_id_type": "number"}, BIG),
    ({"task_id": "-7", "task_id_type": "number"}, -7),
    ({"task_id": "007", "task_id_type": "string"}, "007"),
    ({"task_id": 7}, 7),  # a job of the previous release
    ({"task_id": "7"}, "7"),
    ({"task_id": int(float(BIG))}, BIG),  # previous release, rounded by daprd: recovered
    ({"task_id": -int(float(BIG))}, -BIG),
])
def test_job_data_in_both_forms(fields: dict[str, Any], task_id: int | str) -> None:
    name = job_name("u", task_id, AT)
    assert parse_job_data(_job_data(**fields), name) == ("u", task_id, AT, Order.from_json(
        _job_data()["order"]))


@pytest.mark.parametrize("fields", [
    {"task_id": "07", "task_id_type": "number"},
    {"task_id": "7.0", "task_id_type": "number"},
    {"task_id": 7, "task_id_type": "number"},
    {"task_id": True},
    {"task_id": 7.5},
    {"task_id": "7", "task_id_type": "boolean"},
])
def test_job_data_of_another_shape_is_foreign(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        parse_job_data(_job_data(**fields), job_name("u", 7, AT))


def test_job_data_that_does_not_match_its_name_is_foreign() -> None:
    exact = {"task_id": str(BIG), "task_id_type": "number"}
    with pytest.raises(InvalidEvent, match="does not match"):
        parse_job_data(_job_data(**exact), job_name("u", BIG + 1, AT))  # exact: no guessing
    with pytest.raises(InvalidEvent, match="does not match"):  # no id rounds to BIG fits
        parse_job_data(_job_data(task_id=BIG), job_name("u", BIG + 10**6, AT))
    with pytest.raises(InvalidEvent, match="does not match"):  # beyond 64 bits: not searched
        parse_job_data(_job_data(task_id=2**70), job_name("u", 2**70 + 1, AT))
