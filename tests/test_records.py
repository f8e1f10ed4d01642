"""The task record: JSON written by earlier releases loads, and round-trips unchanged."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from worker.errors import InvalidEvent
from worker.events import TaskEvent, parse_document
from worker.plan import PlanConfig, make_plan
from worker.records import Order, dump_record, load_record
from worker.schedule import Offset

# Written by the code of main d33ab93 (make_plan at 2031-03-01T12:00Z; task "A-7": created
# with due_at 2031-03-30T02:30:00 Europe/Berlin, reminders PT15M/P1D/+PT10M, a remind_at and
# a recurrence with dtstart, exdates (one a bare date) and rdates; then updated at
# 10:05:00.25 to reminders PT30M), copied as it was saved to the state store.
V2_ACTIVE = json.loads("""
{"jobs": {"rw-22eb615188e8a7dd08f895cf46aefe7d19f47759": "2031-03-30T01:00:00Z",
          "rw-79d30b034b280986af892f9fe0f5c247f80ae283": "2031-03-29T18:00:00Z"},
 "order": ["2031-03-01T10:05:00.250000Z", "1bd33394999e5d78"],
 "retired": ["rw-370a60e0b3bbb94bec06580f022f4d261a9c5ae2",
             "rw-734bafaf54b08501d56180affbd98a0af71baeba",
             "rw-aebc2f83f0c50de683a566e426d98c4721065b52"],
 "status": "active",
 "task": {"due_at": "2031-03-30T01:30:00Z", "due_local": "2031-03-30T02:30:00",
          "offsets": ["PT30M"],
          "recurrence": {"dtstart": "2031-03-28T02:30:00",
                         "exdates": ["2031-03-31T02:30:00", "2031-04-02"],
                         "rdates": ["2031-04-10T08:00:00"], "rrule": "FREQ=DAILY;COUNT=20"},
          "remind_at": ["2031-03-29T18:00:00Z"], "timezone": "Europe/Berlin",
          "title": "Water plants"},
 "task_id": "A-7", "user_id": "u", "v": 2}
""")
# The same task after task.completed at 2031-03-02T10:00:00Z, and the body it sent.
V2_COMPLETED = json.loads("""
{"jobs": {}, "order": ["2031-03-02T10:00:00Z", "404ca4d428fbe6f7"],
 "retired": ["rw-22eb615188e8a7dd08f895cf46aefe7d19f47759",
             "rw-79d30b034b280986af892f9fe0f5c247f80ae283"],
 "status": "completed",
 "task": {"due_at": "2031-03-30T01:30:00Z", "due_local": "2031-03-30T02:30:00",
          "offsets": ["PT30M"],
          "recurrence": {"dtstart": "2031-03-28T02:30:00",
                         "exdates": ["2031-03-31T02:30:00", "2031-04-02"],
                         "rdates": ["2031-04-10T08:00:00"], "rrule": "FREQ=DAILY;COUNT=20"},
          "remind_at": ["2031-03-29T18:00:00Z"], "timezone": "Europe/Berlin",
          "title": "Water plants"},
 "task_id": "A-7", "user_id": "u", "v": 2}
""")
NEXT_BODY = json.loads("""
{"idempotency_key": "rw-occ-0d5aa9c90a0a037b-44dafb231d85d2d1ccdf637e129a1f46",
 "next_due_at": "2031-04-01T00:30:00Z", "next_due_local": "2031-04-01T02:30:00+02:00",
 "parent_task_id": "A-7",
 "recurrence": {"dtstart": "2031-03-28T02:30:00+01:00",
                "exdates": ["2031-03-31T02:30:00+02:00", "2031-04-02"],
                "rdates": ["2031-04-10T08:00:00+02:00"], "rrule": "FREQ=DAILY;COUNT=20"},
 "timezone": "Europe/Berlin", "title": "Water plants", "user_id": "u"}
""")
V2_FIXED_OFFSET = json.loads("""
{"jobs": {}, "order": ["2031-03-01T10:00:00Z", "f7d5fa5b4ce5116f"], "status": "active",
 "task": {"due_at": "2031-03-30T03:30:00Z", "due_local": "2031-03-30T09:00:00",
          "timezone": "+05:30"},
 "task_id": 12, "user_id": "u", "v": 2}
""")
V2_CLEARED = json.loads("""
{"jobs": {}, "order": ["2031-03-01T10:00:00Z", "173ab3ee53abf603"], "status": "active",
 "task": {"due_at": null, "due_local": null, "offsets": [],
          "recurrence": {"anchor": "completion", "dtstart": null, "exdates": [], "rdates": [],
                         "rrule": "FREQ=WEEKLY"},
          "timezone": "UTC", "title": null},
 "task_id": 13, "user_id": "u", "v": 2}
""")
# Version 1 (before wall clocks were kept): no due_local, the recurrence in UTC times.
V1 = json.loads("""
{"v": 1, "user_id": "u", "task_id": 7, "order": ["2031-03-01T10:00:00Z", "90a55c08a4c375fb"],
 "status": "active", "task": {"timezone": "Europe/Berlin", "title": "Water plants",
 "due_at": "2031-03-30T01:30:00Z", "offsets": ["PT15M", "P1D"],
 "remind_at": ["2031-03-29T18:00:00Z"], "recurrence": {"rrule": "FREQ=DAILY",
 "dtstart": "2031-03-28T01:30:00Z", "exdates": ["2031-03-31T00:30:00Z"]}},
 "jobs": {"rw-e7d3e43c1402154aa9c9384c63cdcbf53b0e4391": "2031-03-29T02:30:00Z"}}
""")
NOW = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)


def _without_nulls(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "task": {k: v for k, v in doc["task"].items() if v is not None}}


def event(etype: str, timestamp: str, **payload: Any) -> TaskEvent:
    parsed = parse_document({"event_type": etype, "task_id": "A-7", "user_id": "u",
                             "timestamp": timestamp, "payload": payload})
    assert isinstance(parsed, TaskEvent)
    return parsed


@pytest.mark.parametrize("stored", [V2_ACTIVE, V2_COMPLETED, V2_FIXED_OFFSET, V2_CLEARED])
def test_a_record_of_this_version_round_trips(stored: dict[str, Any]) -> None:
    copied = copy.deepcopy(stored)
    # a cleared field is written absent rather than null: both read as "not set"
    assert dump_record(load_record(copied)) == _without_nulls(stored)
    assert copied == stored


def test_loaded_record_is_typed() -> None:
    record = load_record(V2_ACTIVE)
    assert record.order == Order(datetime(2031, 3, 1, 10, 5, 0, 250000, tzinfo=UTC),
                                 "1bd33394999e5d78")
    assert record.status == "active" and record.task_id == "A-7"
    assert record.task.due_at == datetime(2031, 3, 30, 1, 30, tzinfo=UTC)
    assert record.task.due_local == datetime(2031, 3, 30, 2, 30)  # noqa: DTZ001 (wall clock)
    assert record.task.offsets == (Offset(seconds=1800),)
    assert record.task.recurrence is not None and record.task.recurrence.rrule.startswith("FREQ")
    assert all(slot.at.tzinfo is not None for slot in record.jobs.values())
    assert record.retired == tuple(V2_ACTIVE["retired"])
    assert load_record(V2_CLEARED).task.offsets == ()  # "none", not "never given"
    assert load_record(V2_FIXED_OFFSET).task.offsets is None


def test_a_version_1_record_loads_with_the_wall_clock_of_its_instant() -> None:
    doc = dump_record(load_record(V1))
    assert doc["v"] == 2 and doc["task"]["due_local"] == "2031-03-30T03:30:00"
    assert doc["task"]["recurrence"]["dtstart"] == "2031-03-28T02:30:00"  # CET, naive
    assert doc["task"]["recurrence"]["exdates"] == ["2031-03-31T02:30:00"]  # CEST
    assert doc["jobs"] == V1["jobs"] and doc["order"] == V1["order"]


def test_a_stored_record_plans_as_it_did_when_written() -> None:
    # the update that wrote V2_ACTIVE, delivered again: a duplicate that deletes the retired
    update = event("task.updated", "2031-03-01T10:05:00.250Z", reminders=["PT30M"])
    again = make_plan(load_record(V2_ACTIVE), update, NOW, PlanConfig())
    assert again.outcome == "duplicate" and again.delete == V2_ACTIVE["retired"]
    # the completion written as V2_COMPLETED: the same record and the same request body
    done = make_plan(load_record(V2_ACTIVE), event("task.completed", "2031-03-02T10:00:00Z"),
                     NOW, PlanConfig())
    assert dump_record(done.record) == V2_COMPLETED
    assert done.next is not None and done.next.body == NEXT_BODY
    # handled a day later: the same occurrence (from the completion, not the handling time)
    later = make_plan(load_record(V2_ACTIVE), event("task.completed", "2031-03-02T10:00:00Z"),
                      NOW + timedelta(days=1), PlanConfig())
    assert later.next is not None and later.next.body == NEXT_BODY


@pytest.mark.parametrize(("change", "reason"), [
    ({"v": 3}, "version 3"),
    ({"status": "snoozing"}, "status"),
    ({"order": ["2031-03-01T10:00:00", "f"]}, "offset"),
    ({"order": "2031-03-01T10:00:00Z"}, "order must be"),
    ({"task_id": True}, "wrong type"),
    ({"jobs": {"rw-x": "2031-03-30T01:00:00"}}, "without offset"),
])
def test_an_unreadable_record_is_named(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        load_record(V2_ACTIVE | change)


@pytest.mark.parametrize(("a", "b", "less"), [
    (["2031-03-01T10:00:00Z", "b"], ["2031-03-01T10:00:01Z", "a"], True),
    (["2031-03-01T10:00:00Z", "a"], ["2031-03-01T10:00:00Z", "b"], True),
    (["2031-03-01T11:00:00+01:00", "a"], ["2031-03-01T10:00:00Z", "a"], False),  # same instant
    (["2031-03-01T10:00:00.5Z", "a"], ["2031-03-01T10:00:00Z", "z"], False),
])
def test_order_compares_by_instant_then_fingerprint(a: list[str], b: list[str],
                                                    less: bool) -> None:
    assert (Order.from_json(a) < Order.from_json(b)) is less


def test_order_json_is_utc_with_z() -> None:
    order = Order(datetime(2031, 3, 1, 11, tzinfo=timezone(timedelta(hours=1))), "f")
    assert order.to_json() == ["2031-03-01T10:00:00Z", "f"]
    assert Order.from_json(order.to_json()) == order
