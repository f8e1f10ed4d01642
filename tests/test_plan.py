"""Pure planning: what an event does to a task record, at a given `now`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.errors import InvalidEvent
from worker.events import TaskEvent, parse_document
from worker.plan import Plan, PlanConfig, make_plan, parse_job_data, record_is_behind
from worker.schedule import Offset, job_name, occurrence_key

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CFG = PlanConfig()


def ev(etype: str, minute: int = 0, task_id: int | str = 1, **payload: Any) -> TaskEvent:
    doc: dict[str, Any] = {"event_type": etype, "task_id": task_id, "user_id": "u",
                           "timestamp": f"2026-11-26T11:{minute:02d}:00Z"}
    if payload:
        doc["payload"] = payload
    parsed = parse_document(doc)
    assert isinstance(parsed, TaskEvent)
    return parsed


def apply(*events: TaskEvent, now: datetime = NOW, cfg: PlanConfig = CFG) -> Plan:
    record = None
    plan = None
    for e in events:
        plan = make_plan(record, e, now, cfg)
        record = plan.record
    assert plan is not None
    return plan


def due_times(plan: Plan) -> list[str]:
    return sorted(j.due_time.isoformat() for j in plan.schedule)


def test_created_schedules_one_job_per_reminder() -> None:
    plan = apply(ev("task.created", due_at="2026-12-01T09:00:00+01:00", timezone="Europe/Berlin",
                    reminders=["PT1H", "P1D", 30], remind_at=["2026-11-30T07:30:00Z"]))
    assert plan.outcome == "processed"
    assert due_times(plan) == ["2026-11-30T07:30:00+00:00", "2026-11-30T08:00:00+00:00",
                               "2026-12-01T07:00:00+00:00", "2026-12-01T07:30:00+00:00"]
    assert set(plan.record["jobs"]) == {j.name for j in plan.schedule}
    job = plan.schedule[0]
    assert job.name == job_name("u", 1, job.due_time, plan.record["order"])
    assert job.name != job_name("u", 1, job.due_time)  # a generation of its own
    assert parse_job_data(job.data, job.name)[:3] == ("u", 1, job.due_time)
    assert plan.delete == [] and plan.record["status"] == "active"


def test_redelivery_is_duplicate_and_older_event_is_stale() -> None:
    created = ev("task.created", 5, due_at="2026-12-01T09:00:00Z", reminders=["PT1H"])
    plan = apply(created)
    assert make_plan(plan.record, created, NOW, CFG).outcome == "duplicate"
    older = ev("task.updated", 1, due_at="2026-12-02T09:00:00Z")
    stale = make_plan(plan.record, older, NOW, CFG)
    assert stale.outcome == "stale" and stale.schedule == [] and stale.delete == []


def test_update_moves_jobs_and_deletes_vanished_ones() -> None:
    first = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00Z", reminders=["PT1H", "P1D"]))
    moved = make_plan(first.record, ev("task.updated", 1, due_at="2026-12-01T10:00:00Z"), NOW, CFG)
    assert due_times(moved) == ["2026-11-30T10:00:00+00:00", "2026-12-01T09:00:00+00:00"]
    assert sorted(moved.delete) == sorted(first.record["jobs"])


def test_update_with_only_a_title_touches_no_job() -> None:
    first = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00Z", reminders=["PT1H"]))
    plan = make_plan(first.record, ev("task.updated", 1, title="new"), NOW, CFG)
    assert plan.schedule == [] and plan.delete == []
    assert plan.record["jobs"] == first.record["jobs"] and plan.record["task"]["title"] == "new"


def test_naive_due_in_update_uses_zone_from_earlier_event() -> None:
    first = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00Z", timezone="Asia/Tokyo"))
    plan = make_plan(first.record, ev("task.updated", 1, due_at="2026-12-02T09:00"), NOW, CFG)
    assert plan.record["task"]["due_at"] == "2026-12-02T00:00:00Z"


def test_past_reminder_fires_at_once_while_due_is_future_else_skipped() -> None:
    soon = apply(ev("task.created", due_at="2026-11-26T12:30:00Z", reminders=["PT1H"]))
    assert due_times(soon) == ["2026-11-26T12:00:01+00:00"]  # past: fires (almost) at once
    assert soon.record["jobs"] == {soon.schedule[0].name: "2026-11-26T11:30:00Z"}
    overdue = apply(ev("task.created", due_at="2026-11-26T11:00:00Z", reminders=["PT1H"]))
    assert overdue.schedule == [] and overdue.skipped == 1


def test_fired_job_is_never_scheduled_twice() -> None:
    first = apply(ev("task.created", 0, due_at="2026-11-26T14:00:00Z", reminders=["PT1H"]))
    later = NOW + timedelta(hours=1, minutes=30)  # the 13:00 reminder has fired
    plan = make_plan(first.record, ev("task.updated", 1, title="x"), later, CFG)
    assert plan.schedule == [] and plan.delete == []


def test_default_reminders_only_when_task_names_none() -> None:
    cfg = PlanConfig(default_offsets=(Offset(seconds=900),))
    plan = apply(ev("task.created", due_at="2026-12-01T09:00:00Z"), cfg=cfg)
    assert due_times(plan) == ["2026-12-01T08:45:00+00:00"]
    none = apply(ev("task.created", due_at="2026-12-01T09:00:00Z", reminders=[]), cfg=cfg)
    assert none.schedule == []


@pytest.mark.parametrize("etype", ["task.completed", "task.deleted"])
def test_completed_and_deleted_delete_pending_jobs(etype: str) -> None:
    first = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00Z", reminders=["PT1H", 30]))
    plan = make_plan(first.record, ev(etype, 1), NOW, CFG)
    assert sorted(plan.delete) == sorted(first.record["jobs"]) and plan.schedule == []
    assert plan.record["jobs"] == {} and plan.next is None
    assert plan.record["status"] == etype.removeprefix("task.")


def test_completing_a_recurring_task_requests_the_next_occurrence() -> None:
    created = ev("task.created", 0, due_at="2026-12-01T09:00:00+01:00", timezone="Europe/Berlin",
                 recurrence="FREQ=MONTHLY;BYMONTHDAY=1", title="Pay rent")
    plan = apply(created, ev("task.completed", 1))
    assert plan.next is not None
    nxt = datetime(2027, 1, 1, 8, 0, tzinfo=UTC)
    assert plan.next.body == {
        "parent_task_id": 1, "user_id": "u", "next_due_at": "2027-01-01T08:00:00Z",
        "next_due_local": "2027-01-01T09:00:00+01:00", "timezone": "Europe/Berlin",
        "recurrence": {"rrule": "FREQ=MONTHLY;BYMONTHDAY=1",
                       "dtstart": "2026-12-01T09:00:00+01:00", "exdates": []},
        "idempotency_key": occurrence_key("u", 1, nxt), "title": "Pay rent",
    }


def test_series_that_ended_requests_nothing() -> None:
    rec = {"rrule": "FREQ=DAILY;COUNT=3", "dtstart": "2026-11-29T09:00:00Z"}
    plan = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00Z", recurrence=rec),
                 ev("task.completed", 1))
    assert plan.next is None and plan.series_ended


def test_completed_twice_requests_once() -> None:
    first = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00Z", recurrence="daily"),
                  ev("task.completed", 1))
    again = make_plan(first.record, ev("task.completed", 2), NOW, CFG)
    assert again.next is None  # already completed: nothing new to request


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"timezone": "Mars/Olympus"}, "payload.timezone"),
        ({"due_at": "someday"}, "payload.due_at"),
        ({"reminders": ["P1M"]}, "payload.reminders"),
        ({"reminders": [-5]}, "payload.reminders"),
        ({"remind_at": ["tomorrow"]}, "payload.remind_at"),
        ({"recurrence": "FREQ=SECONDLY"}, "payload.recurrence"),
        ({"recurrence": "every tuesday"}, "payload.recurrence"),
    ],
)
def test_invalid_fields(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        apply(ev("task.created", **payload))
    assert info.value.reason.startswith(reason)


def test_job_fired_before_its_record_was_saved_is_behind() -> None:
    plan = apply(ev("task.created", 5, due_at="2026-12-01T09:00:00Z", reminders=["PT1H"]))
    order = plan.schedule[0].data["order"]
    assert record_is_behind(None, order)
    assert not record_is_behind(plan.record, order)
    older = apply(ev("task.created", 1, due_at="2026-12-01T09:00:00Z"))
    assert record_is_behind(older.record, order)


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
    assert parse_job_data(_job_data(**fields), name) == ("u", task_id, AT, list(
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
