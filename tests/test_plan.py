"""Pure planning: what an event does to a task record, at a given `now`."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.factory import event, parsed
from worker.errors import InvalidEvent
from worker.events import TaskEvent, parse_document
from worker.firing import parse_job_data
from worker.keys import job_name, occurrence_key
from worker.plan import PERSIST, TOMBSTONE_TTL_SECONDS, Plan, PlanConfig, make_plan, record_ttl
from worker.records import dump_record, load_record
from worker.schedule import Offset

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CFG = PlanConfig()


def ev(etype: str, minute: int = 0, task_id: int | str = 1, **payload: Any) -> TaskEvent:
    return parsed(event(etype, minute, task_id, "u", **payload))


def apply(*events: TaskEvent, now: datetime = NOW, cfg: PlanConfig = CFG) -> Plan:
    record = None
    plan = None
    for e in events:
        plan = make_plan(record, e, now, cfg)
        record = plan.record
    assert plan is not None
    return plan


def saved(plan: Plan) -> dict[str, Any]:
    """The plan's record as the state store gets it."""
    return dump_record(plan.record)


def due_times(plan: Plan) -> list[str]:
    return sorted(j.due_time.isoformat() for j in plan.schedule)


def test_created_schedules_one_job_per_reminder() -> None:
    plan = apply(ev("task.created", due_at="2026-12-01T09:00:00+01:00", timezone="Europe/Berlin",
                    reminders=["PT1H", "P1D", 30], remind_at=["2026-11-30T07:30:00Z"]))
    assert plan.outcome == "processed"
    assert due_times(plan) == ["2026-11-30T07:30:00+00:00", "2026-11-30T08:00:00+00:00",
                               "2026-12-01T07:00:00+00:00", "2026-12-01T07:30:00+00:00"]
    assert set(saved(plan)["jobs"]) == {j.name for j in plan.schedule}
    job = plan.schedule[0]
    assert job.name == job_name("u", 1, job.due_time, saved(plan)["order"])
    assert job.name != job_name("u", 1, job.due_time)  # a generation of its own
    assert parse_job_data(job.data, job.name)[:3] == ("u", 1, job.due_time)
    assert plan.delete == [] and saved(plan)["status"] == "active"


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
    assert sorted(moved.delete) == sorted(saved(first)["jobs"])


def test_update_with_only_a_title_touches_no_job() -> None:
    first = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00Z", reminders=["PT1H"]))
    plan = make_plan(first.record, ev("task.updated", 1, title="new"), NOW, CFG)
    assert plan.schedule == [] and plan.delete == []
    assert saved(plan)["jobs"] == saved(first)["jobs"] and saved(plan)["task"]["title"] == "new"


def test_naive_due_in_update_uses_zone_from_earlier_event() -> None:
    first = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00Z", timezone="Asia/Tokyo"))
    plan = make_plan(first.record, ev("task.updated", 1, due_at="2026-12-02T09:00"), NOW, CFG)
    assert saved(plan)["task"]["due_at"] == "2026-12-02T00:00:00Z"


def test_past_reminder_fires_at_once_while_due_is_future_else_skipped() -> None:
    soon = apply(ev("task.created", due_at="2026-11-26T12:30:00Z", reminders=["PT1H"]))
    assert due_times(soon) == ["2026-11-26T12:00:01+00:00"]  # past: fires (almost) at once
    assert saved(soon)["jobs"] == {soon.schedule[0].name: "2026-11-26T11:30:00Z"}
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
    assert sorted(plan.delete) == sorted(saved(first)["jobs"]) and plan.schedule == []
    assert saved(plan)["jobs"] == {} and plan.next is None
    assert saved(plan)["status"] == etype.removeprefix("task.")


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


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe/Berlin ", "+25:00", "GMT+1"])
def test_unknown_zone_is_invalid(zone: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        apply(ev("task.created", due_at="2026-12-01T09:00:00Z", reminders=["PT1H"], timezone=zone))
    assert info.value.reason.startswith("payload.timezone")


GOOD = {"due_at": "2026-12-01T09:00:00Z", "reminders": ["PT1H"]}


@pytest.mark.parametrize(
    ("payload", "problems", "jobs"),
    [
        # one bad reminder value among good ones: the good ones are scheduled
        ({"reminders": ["PT1H", "P1M", 30, True, 1.5, "bogus"]},
         ["payload.reminders[1]: calendar months", "payload.reminders[3]: reminder offset must",
          "payload.reminders[4]: reminder offset must", "payload.reminders[5]: not an ISO 8601"],
         ["2026-12-01T08:00:00+00:00", "2026-12-01T08:30:00+00:00"]),
        ({"reminders": [-5, "PT2H"]}, ["payload.reminders[0]: negative minutes are ambiguous"],
         ["2026-12-01T07:00:00+00:00"]),
        # every entry bad: the field is left out (here: no reminders named, no defaults)
        ({"reminders": ["P1M"]}, ["payload.reminders[0]: calendar months"], []),
        ({"remind_at": ["tomorrow", "2026-11-30T07:30:00Z", 5]},
         ["payload.remind_at[0]: not a date", "payload.remind_at[2]: expected a date-time"],
         ["2026-11-30T07:30:00+00:00", "2026-12-01T08:00:00+00:00"]),
        ({"recurrence": "every tuesday"}, ["payload.recurrence: "], ["2026-12-01T08:00:00+00:00"]),
        ({"recurrence": "FREQ=SECONDLY"}, ["payload.recurrence: "], ["2026-12-01T08:00:00+00:00"]),
        ({"recurrence": 5}, ["payload.recurrence: must be a rule string"],
         ["2026-12-01T08:00:00+00:00"]),
        # a bad due date: offsets have nothing to count from, remind_at still works
        ({"due_at": "someday", "remind_at": "2026-11-30T07:30:00Z"},
         ["payload.due_at: not a date"], ["2026-11-30T07:30:00+00:00"]),
        ({"due_at": 20261201}, ["payload.due_at: must be a string"], []),
        ({"title": ["x"]}, ["payload.title: must be a string"], ["2026-12-01T08:00:00+00:00"]),
    ],
)
def test_unusable_part_is_left_out_and_reported(payload: dict[str, Any], problems: list[str],
                                                jobs: list[str]) -> None:
    plan = apply(ev("task.created", **{**GOOD, **payload}))
    assert plan.outcome == "processed" and saved(plan)["status"] == "active"
    assert len(plan.problems) == len(problems)
    for problem, expected in zip(plan.problems, problems, strict=True):
        assert problem.startswith(expected), problem
    assert due_times(plan) == jobs
    assert plan.to_json(ev("task.created"))["problems"] == plan.problems
    assert apply(ev("task.created", **GOOD)).problems == []


def test_bad_part_of_an_update_keeps_what_the_task_had() -> None:
    first = apply(ev("task.created", 0, **GOOD, recurrence="daily"))
    plan = make_plan(first.record, ev("task.updated", 1, due_at="someday", recurrence="nope",
                                      reminders=["P1Y"], title="renamed"), NOW, CFG)
    assert [p.split(":")[0] for p in plan.problems] == [
        "payload.due_at", "payload.reminders[0]", "payload.recurrence"]
    assert plan.schedule == [] and plan.delete == []
    assert saved(plan)["task"] == {**saved(first)["task"], "title": "renamed"}


def test_all_defaults_when_every_reminder_is_bad() -> None:
    cfg = PlanConfig(default_offsets=(Offset(seconds=900),))
    plan = apply(ev("task.created", due_at="2026-12-01T09:00:00Z", reminders=["bad"]), cfg=cfg)
    assert due_times(plan) == ["2026-12-01T08:45:00+00:00"] and len(plan.problems) == 1


def test_created_event_with_every_field_unusable_still_creates_the_task() -> None:
    plan = apply(ev("task.created", 0, due_at="never", reminders=["x"], remind_at=["y"],
                    recurrence="z", title=7))
    assert len(plan.problems) == 5 and plan.schedule == []
    assert saved(plan)["status"] == "active"
    later = make_plan(plan.record, ev("task.created", 0, due_at="never"), NOW, CFG)
    assert later.outcome == "stale"  # the record orders later deliveries
    done = make_plan(plan.record, ev("task.completed", 1), NOW, CFG)
    assert saved(done)["status"] == "completed" and done.next is None and done.problems == []


def test_cleared_fields() -> None:
    first = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00", timezone="Europe/Berlin",
                     reminders=["PT1H", "P1D"], remind_at=["2026-11-30T07:30:00Z"],
                     recurrence="daily", title="t"))
    assert len(first.schedule) == 3
    cleared = make_plan(first.record, ev("task.updated", 1, due_at="", recurrence="",
                                         title=None), NOW, CFG)
    task = cleared.record.task
    assert task.due_at is None and task.due_local is None
    assert task.recurrence is None and task.title is None
    assert due_times(cleared) == [] and len(cleared.delete) == 2  # remind_at stays
    assert cleared.problems == []
    done = make_plan(cleared.record, ev("task.completed", 2), NOW, CFG)
    assert done.next is None and not done.series_ended  # no longer recurring
    no_reminders = make_plan(first.record, ev("task.updated", 1, reminders="", remind_at=[""]),
                             NOW, PlanConfig(default_offsets=(Offset(seconds=60),)))
    assert sorted(no_reminders.delete) == sorted(saved(first)["jobs"])
    assert no_reminders.schedule == []  # cleared: no reminders, not the defaults


def test_cleared_zone_is_utc_and_the_due_instant_stays() -> None:
    first = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00", timezone="Asia/Tokyo",
                     reminders=["P1D"]))
    plan = make_plan(first.record, ev("task.updated", 1, timezone=""), NOW, CFG)
    task = saved(plan)["task"]
    assert task["timezone"] == "UTC" and task["due_at"] == "2026-12-01T00:00:00Z"
    assert task["due_local"] == "2026-12-01T00:00:00"
    assert plan.schedule == [] and plan.delete == []  # no DST either side: P1D is the same


BERLIN_GAP = {"due_at": "2031-03-30T02:30:00", "timezone": "Europe/Berlin"}
BEFORE_2031 = datetime(2031, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "due_at", "reminders", "jobs"),
    [
        # the wall clock written in the spring-forward gap is kept: P1D is 02:30 the day before
        ("Europe/Berlin", "2031-03-30T02:30:00", ["P1D"], ["2031-03-29T01:30:00+00:00"]),
        ("Europe/Berlin", "2031-03-30T02:30:00", ["PT15M", "+PT15M", "-PT15M"],
         ["2031-03-30T01:15:00+00:00", "2031-03-30T01:45:00+00:00"]),
        ("Europe/Berlin", "2031-03-30T02:30:00", ["P1DT1H", "+P1D"],
         ["2031-03-29T00:30:00+00:00", "2031-03-31T00:30:00+00:00"]),
        ("America/New_York", "2031-03-09T02:30", ["P1D", "P7D"],
         ["2031-03-02T07:30:00+00:00", "2031-03-08T07:30:00+00:00"]),
        ("Australia/Lord_Howe", "2031-10-05T02:15:00", ["P1D"], ["2031-10-03T15:45:00+00:00"]),
        ("Europe/Dublin", "2031-03-30T01:30:00", ["P1D"], ["2031-03-29T01:30:00+00:00"]),
        # the overlap: written once, the first 02:30; a day before it is 02:30 CEST
        ("Europe/Berlin", "2031-10-26T02:30:00", ["P1D", "PT0S"],
         ["2031-10-25T00:30:00+00:00", "2031-10-26T00:30:00+00:00"]),
        # the second 02:30, written with its offset: P1D is 02:30 CEST the day before
        ("Europe/Berlin", "2031-10-26T02:30:00+01:00", ["P1D", "PT0S"],
         ["2031-10-25T00:30:00+00:00", "2031-10-26T01:30:00+00:00"]),
        # fixed offsets: no DST
        ("+01:00", "2031-03-30T02:30:00", ["P1D", "+PT1H"],
         ["2031-03-29T01:30:00+00:00", "2031-03-30T02:30:00+00:00"]),
        ("+05:30", "2031-03-30", ["PT30M"], ["2031-03-30T03:00:00+00:00"]),
        ("-03:00", "2031-03-30T02:30:00", ["P1D"], ["2031-03-29T05:30:00+00:00"]),
        ("UTC", "2031-03-30T02:30:00", ["P1D"], ["2031-03-29T02:30:00+00:00"]),
    ],
)
def test_reminders_from_the_wall_clock_as_written(zone: str, due_at: str, reminders: list[str],
                                                  jobs: list[str]) -> None:
    plan = apply(ev("task.created", due_at=due_at, timezone=zone, reminders=reminders),
                 now=BEFORE_2031)
    assert due_times(plan) == jobs and plan.problems == []


def test_record_keeps_the_wall_clock_beside_the_instant() -> None:
    plan = apply(ev("task.created", **BERLIN_GAP, reminders=["P1D"]), now=BEFORE_2031)
    task = saved(plan)["task"]
    assert saved(plan)["v"] == 2
    assert task["due_at"] == "2031-03-30T01:30:00Z"
    assert task["due_local"] == "2031-03-30T02:30:00"
    aware = apply(ev("task.created", due_at="2031-03-30T01:30:00Z", timezone="Europe/Berlin"),
                  now=BEFORE_2031)
    assert saved(aware)["task"]["due_local"] == "2031-03-30T03:30:00"  # the instant's local time
    # a later event without due_at keeps the wall clock as written
    later = make_plan(plan.record, ev("task.updated", 1, title="x"), BEFORE_2031, CFG)
    assert saved(later)["task"]["due_local"] == "2031-03-30T02:30:00"
    assert later.schedule == [] and later.delete == []


def test_new_zone_keeps_the_instant_and_derives_the_wall_clock_again() -> None:
    first = apply(ev("task.created", 0, **BERLIN_GAP, reminders=["P1D"]), now=BEFORE_2031)
    plan = make_plan(first.record, ev("task.updated", 1, timezone="Asia/Tokyo"), BEFORE_2031, CFG)
    task = saved(plan)["task"]
    assert task["due_at"] == "2031-03-30T01:30:00Z" and task["timezone"] == "Asia/Tokyo"
    assert task["due_local"] == "2031-03-30T10:30:00"
    assert plan.schedule == [] and plan.delete == []  # P1D: 10:30 JST the day before = 01:30Z
    # due_at in the same event as the zone: read in the new zone, as written
    both = make_plan(first.record, ev("task.updated", 1, timezone="Asia/Tokyo",
                                      due_at="2031-03-30T02:30:00"), BEFORE_2031, CFG)
    assert saved(both)["task"]["due_local"] == "2031-03-30T02:30:00"
    assert due_times(both) == ["2031-03-28T17:30:00+00:00"]
    # a new zone with an unusable due_at: the due_at is left out, so the instant stays
    bad = make_plan(first.record, ev("task.updated", 1, timezone="Asia/Tokyo", due_at="x"),
                    BEFORE_2031, CFG)
    assert saved(bad)["task"]["due_local"] == "2031-03-30T10:30:00" and len(bad.problems) == 1


# A record saved by the code before wall clocks were kept (make_plan at 2031-03-01T12:00Z of
# the event OLD_EVENT below), copied as it was written to the state store.
OLD_RECORD = json.loads("""
{"v": 1, "user_id": "u", "task_id": 7, "order": ["2031-03-01T10:00:00Z", "90a55c08a4c375fb"],
 "status": "active", "task": {"timezone": "Europe/Berlin", "title": "Water plants",
 "due_at": "2031-03-30T01:30:00Z", "offsets": ["PT15M", "P1D"],
 "remind_at": ["2031-03-29T18:00:00Z"], "recurrence": {"rrule": "FREQ=DAILY",
 "dtstart": "2031-03-28T01:30:00Z", "exdates": ["2031-03-31T00:30:00Z"]}},
 "jobs": {"rw-e7d3e43c1402154aa9c9384c63cdcbf53b0e4391": "2031-03-29T02:30:00Z",
          "rw-68e357e807c08135fa8d319f3dec567b9cec655c": "2031-03-29T18:00:00Z",
          "rw-d867ce47b73d36f89191a66a3009d4ab78f01224": "2031-03-30T01:15:00Z"}}
""")
OLD_EVENT = {"event_type": "task.created", "task_id": 7, "user_id": "u",
             "timestamp": "2031-03-01T10:00:00Z",
             "payload": {"title": "Water plants", "due_at": "2031-03-30T02:30:00",
                         "timezone": "Europe/Berlin", "reminders": ["PT15M", "P1D"],
                         "remind_at": ["2031-03-29T18:00:00Z"],
                         "recurrence": {"rrule": "FREQ=DAILY", "dtstart": "2031-03-28T02:30:00",
                                        "exdates": ["2031-03-31T02:30:00"]}}}
OLD_NOW = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)


def old_ev(etype: str, **payload: Any) -> TaskEvent:
    doc = {"event_type": etype, "task_id": 7, "user_id": "u", "timestamp": "2031-03-02T10:00:00Z",
           "payload": payload}
    parsed = parse_document(doc)
    assert isinstance(parsed, TaskEvent)
    return parsed


def test_record_of_the_previous_version_loads_and_replans() -> None:
    stored = copy.deepcopy(OLD_RECORD)
    record = load_record(stored)
    redelivered = parse_document(OLD_EVENT)
    assert isinstance(redelivered, TaskEvent)
    assert make_plan(record, redelivered, OLD_NOW, CFG).outcome == "duplicate"
    # an update that changes nothing about time: the jobs stay as they are, the wall clock
    # is derived from the stored instant (03:30 CEST: what the old record knew)
    titled = make_plan(record, old_ev("task.updated", title="Water the plants"), OLD_NOW, CFG)
    assert titled.schedule == [] and titled.delete == [] and titled.problems == []
    assert saved(titled)["jobs"] == OLD_RECORD["jobs"]
    assert saved(titled)["v"] == 2 and saved(titled)["task"]["due_local"] == "2031-03-30T03:30:00"
    assert stored == OLD_RECORD  # the stored record is not mutated
    # sending the due time again repairs the day offset: 02:30 CET the day before
    again = make_plan(record, old_ev("task.updated", due_at="2031-03-30T02:30:00"), OLD_NOW, CFG)
    assert due_times(again) == ["2031-03-29T01:30:00+00:00"]
    assert again.delete == ["rw-e7d3e43c1402154aa9c9384c63cdcbf53b0e4391"]
    # completion of the old record's recurring task asks for the next occurrence
    done = make_plan(record, old_ev("task.completed"), OLD_NOW, CFG)
    assert done.next is not None and saved(done)["status"] == "completed"
    assert sorted(done.delete) == sorted(OLD_RECORD["jobs"])
    assert done.next.body["next_due_at"] > "2031-03-30T01:30:00Z"


@pytest.mark.parametrize(("old", "new", "ttl"), [
    (None, "active", None),
    ("active", "active", None),
    ("active", "completed", TOMBSTONE_TTL_SECONDS),
    ("completed", "deleted", TOMBSTONE_TTL_SECONDS),
    ("deleted", "active", PERSIST),  # re-created: the tombstone's TTL is dropped explicitly
    ("completed", "active", PERSIST),
])
def test_record_ttl(old: str | None, new: str, ttl: int | None) -> None:
    base = apply(ev("task.created", 0, due_at="2026-12-01T09:00:00Z")).record
    old_record = None if old is None else dataclasses.replace(base, status=old)
    assert record_ttl(old_record, dataclasses.replace(base, status=new)) == ttl


@pytest.mark.parametrize(("rule", "says"), [
    ("every second tuesday-ish", "malformed rule part: 'every second tuesday-ish'"),
    ("freq=weekly;byday=mo,xx", "invalid BYDAY: mo,xx"),
    ("freq=montly", "unknown FREQ: montly"),
    ("Freq=Monthly; ByDay=+7mo", "BYDAY +7mo is not valid with FREQ=Monthly"),
    ("freq=daily;until=2030", "invalid UNTIL: 2030"),
    ("freq=daily;interval= 0x", "INTERVAL must be an integer from 1 to 10000: 0x"),
])
def test_a_bad_recurrence_is_told_as_it_was_typed(rule: str, says: str) -> None:
    """Issue 20: not upper-cased and stripped of its blanks ('EVERYSECONDTUESDAY-ISH')."""
    doc = event("task.created", 0, due_at="2031-01-01T09:00:00Z", recurrence=rule)
    plan = make_plan(None, parsed(doc), datetime(2026, 1, 1, tzinfo=UTC), PlanConfig())
    [problem] = plan.problems
    # the part as typed, then the whole rule as typed (unless the part is the whole)
    whole = "" if says.endswith(repr(rule)) else f' (got "{rule}")'
    assert problem == f"payload.recurrence: {says}{whole}"


@pytest.mark.parametrize(("payload", "says"), [
    ({"title": 5}, "payload.title: must be a string (got 5)"),
    ({"floating": "x"}, 'payload.floating: must be true or false (got "x")'),
    ({"reminders": ["PT1H", 5000000]},
     "payload.reminders[1]: reminder offset longer than 366 days (got 5000000)"),
    ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "payload.quiet_hours: quiet_hours."
     'start must be HH:MM (00:00-23:59) (got {"start": "25:00", "end": "07:00"})'),
    ({"due_at": "tomorrow"}, "payload.due_at: not a date or RFC 3339 date-time: 'tomorrow'"),
    ({"title": 7, "x": "y" * 200}, "payload.title: must be a string (got 7)"),
])
def test_a_problem_shows_the_value(payload: dict[str, Any], says: str) -> None:
    """Issue 20: the value left out is shown (once: not again when the reason has it)."""
    doc = event("task.created", 0, **payload)
    plan = make_plan(None, parsed(doc), datetime(2026, 1, 1, tzinfo=UTC), PlanConfig())
    assert plan.problems == [says]


def test_a_shown_value_is_cut() -> None:
    from worker.errors import shown

    assert shown("z" * 500, "must be short") == f' (got "{"z" * 76}...)'
