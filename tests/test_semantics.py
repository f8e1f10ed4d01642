"""Table tests of the pure reminder rules (docs/reminders.md): misfire, quiet hours, repeat, snooze,
completion-anchored recurrence, slots. Fixed aware datetimes, across DST."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

import pytest

from worker.rules.kinds import Slot, parse_duration
from worker.rules.misfire import judge
from worker.rules.quiet import QuietHours, defer, parse_quiet_hours
from worker.rules.recurrence import next_from_completion, parse_recurrence
from worker.rules.repeat import Repeat, overdue_instants, parse_repeat
from worker.rules.snooze import snooze_instant
from worker.schedule import UTC, load_zone


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


H = timedelta(hours=1)


@pytest.mark.parametrize(("instant", "due", "now", "grace", "action", "late"), [
    ("2026-11-26T10:00Z", "2026-11-26T12:00Z", "2026-11-26T11:30Z", H, "publish", 90),
    ("2026-11-26T10:00Z", "2026-11-26T09:00Z", "2026-11-26T10:59Z", H, "publish", 59),
    ("2026-11-26T10:00Z", "2026-11-26T09:00Z", "2026-11-26T11:00Z", H, "publish", 60),
    ("2026-11-26T10:00Z", "2026-11-26T09:00Z", "2026-11-26T11:01Z", H, "missed", 61),
    ("2026-11-26T10:00Z", None, "2026-11-26T11:01Z", H, "missed", 61),
    ("2026-11-26T10:00Z", "2026-11-26T09:00Z", "2026-12-01T10:00Z", None, "publish", 7200),
    ("2026-11-26T10:00Z", "2026-11-26T09:00Z", "2026-11-26T10:00Z", timedelta(0), "publish", 0),
    ("2026-11-26T10:00Z", "2026-11-26T09:00Z", "2026-11-26T10:01Z", timedelta(0), "missed", 1),
    ("2026-11-26T10:00Z", "2026-11-26T10:02Z", "2026-11-26T10:01Z", timedelta(0), "publish", 1),
    ("2026-11-26T10:00Z", "2026-11-26T09:00Z", "2026-11-26T09:00Z", H, "publish", 0),  # early
])
def test_misfire_verdict(instant: str, due: str | None, now: str, grace: timedelta | None,
                         action: str, late: int) -> None:
    verdict = judge(z(instant), z(due) if due else None, z(now), grace)
    assert (verdict.action, verdict.late) == (action, timedelta(minutes=late))


NIGHT = QuietHours(time(22, 0), time(7, 0))
NOON = QuietHours(time(12, 0), time(14, 0))


@pytest.mark.parametrize(("instant", "zone", "quiet", "moved_to"), [
    # spans midnight, the evening part ends tomorrow, across the spring change (Berlin)
    ("2026-03-28T21:30Z", "Europe/Berlin", NIGHT, "2026-03-29T05:00Z"),  # 22:30 CET
    ("2026-03-28T23:30Z", "Europe/Berlin", NIGHT, "2026-03-29T05:00Z"),  # 00:30 CET
    ("2026-03-29T04:59Z", "Europe/Berlin", NIGHT, "2026-03-29T05:00Z"),  # 06:59 CEST
    ("2026-03-29T05:00Z", "Europe/Berlin", NIGHT, None),  # 07:00 CEST: end is outside
    ("2026-03-28T21:00Z", "Europe/Berlin", NIGHT, "2026-03-29T05:00Z"),  # 22:00: start inside
    ("2026-03-28T20:59Z", "Europe/Berlin", NIGHT, None),
    # across the autumn change: 07:00 CET is 06:00Z
    ("2026-10-24T21:30Z", "Europe/Berlin", NIGHT, "2026-10-25T06:00Z"),  # 23:30 CEST
    ("2026-10-25T00:30Z", "Europe/Berlin", NIGHT, "2026-10-25T06:00Z"),  # 02:30 CEST (1st)
    ("2026-10-25T01:30Z", "Europe/Berlin", NIGHT, "2026-10-25T06:00Z"),  # 02:30 CET (2nd)
    # New York's spring change: 23:00 EST -> 07:00 EDT
    ("2026-03-08T04:00Z", "America/New_York", NIGHT, "2026-03-08T11:00Z"),
    # a window within one day
    ("2026-11-26T11:30Z", "Europe/Berlin", NOON, "2026-11-26T13:00Z"),  # 12:30 CET
    ("2026-11-26T13:00Z", "Europe/Berlin", NOON, None),
    ("2026-11-26T12:30Z", "UTC", NOON, "2026-11-26T14:00Z"),
    # the end inside the spring-forward gap: the offset from before the gap (01:30Z)
    ("2026-03-29T00:30Z", "Europe/Berlin", QuietHours(time(1), time(2, 30)), "2026-03-29T01:30Z"),
    # start == end: no window; none: no window
    ("2026-11-26T11:30Z", "UTC", QuietHours(time(8), time(8)), None),
    ("2026-11-26T11:30Z", "UTC", None, None),
])
def test_quiet_hours_move_to_the_window_end(instant: str, zone: str, quiet: QuietHours | None,
                                            moved_to: str | None) -> None:
    got = defer(z(instant), load_zone(zone), quiet)
    assert got == (z(moved_to) if moved_to else None)


@pytest.mark.parametrize(("value", "parsed"), [
    ({"start": "22:00", "end": "07:00"}, NIGHT),
    ("22:00-07:00", NIGHT),
    (" 12:00 - 14:00 ", NOON),
    ({"start": "24:00", "end": "07:00"}, ValueError),
    ({"start": "22:00"}, ValueError),
    ("22:00", ValueError),
    ("7:00-8:00", ValueError),
    (22, ValueError),
])
def test_parse_quiet_hours(value: Any, parsed: Any) -> None:
    if parsed is ValueError:
        with pytest.raises(ValueError, match="quiet"):
            parse_quiet_hours(value)
    else:
        assert parse_quiet_hours(value) == parsed


@pytest.mark.parametrize(("value", "parsed"), [
    ({"every": "PT1H", "max": 5}, Repeat(H, 5)),
    ({"every": "PT5M"}, Repeat(timedelta(minutes=5), 10)),
    ({"every": "P1D", "max": 100}, Repeat(timedelta(days=1), 100)),
    ({"every": "PT1H", "max": None}, Repeat(H, 10)),
    ({"every": "PT4M59S"}, "at least PT5M"),
    ({"every": "PT1H", "max": 0}, "from 1 to 100"),
    ({"every": "PT1H", "max": 101}, "from 1 to 100"),
    ({"every": "PT1H", "max": True}, "from 1 to 100"),
    ({"every": "PT1H", "max": 2.5}, "from 1 to 100"),
    ({"every": "-PT1H"}, "ISO 8601 duration"),
    ({"every": 60}, "ISO 8601 duration"),
    ({"every": "PT1H", "until": "x"}, "repeat must be"),
    ("PT1H", "repeat must be"),
])
def test_parse_repeat(value: Any, parsed: Repeat | str) -> None:
    if isinstance(parsed, str):
        with pytest.raises(ValueError, match=parsed):
            parse_repeat(value)
    else:
        assert parse_repeat(value) == parsed


def test_overdue_instants_start_one_interval_after_due() -> None:
    due = z("2026-11-26T14:00Z")
    assert overdue_instants(due, Repeat(timedelta(minutes=30), 3)) == [
        z("2026-11-26T14:30Z"), z("2026-11-26T15:00Z"), z("2026-11-26T15:30Z")]
    assert len(overdue_instants(due, Repeat(timedelta(minutes=5), 100))) == 100
    assert overdue_instants(None, Repeat(H, 3)) == []
    assert overdue_instants(due, None) == []


@pytest.mark.parametrize(("changes", "zone", "instant"), [
    ({"until": "2026-11-26T15:00:00Z"}, "UTC", "2026-11-26T15:00Z"),
    ({"until": "2026-11-26T15:00:00"}, "Europe/Berlin", "2026-11-26T14:00Z"),  # wall clock
    ({"until": "2026-11-27"}, "Europe/Berlin", "2026-11-27T08:00Z"),  # all-day time
    ({"for": "PT30M"}, "UTC", "2026-11-26T12:30Z"),  # from the event's timestamp
    ({"for": "P1D"}, "UTC", "2026-11-27T12:00Z"),
    ({"until": "2026-11-26T15:00:00Z", "for": "PT30M"}, "UTC", "2026-11-26T15:00Z"),
    ({"for": "-PT30M"}, "UTC", "ISO 8601 duration"),
    ({"for": "soon"}, "UTC", "payload.for"),
    ({}, "UTC", "needs payload.until"),
])
def test_snooze_instant(changes: dict[str, Any], zone: str, instant: str) -> None:
    timestamp = z("2026-11-26T12:00Z")
    if not instant[:1].isdigit():
        with pytest.raises(ValueError, match=instant):
            snooze_instant(changes, timestamp, load_zone(zone), time(9))
    else:
        got = snooze_instant(changes, timestamp, load_zone(zone), time(9))
        assert got == z(instant)


BERLIN = "Europe/Berlin"


@pytest.mark.parametrize(("rule", "due_wall", "completed", "zone", "nxt", "sent"), [
    # the documented example: every 3 days after it is done, at the due time of day
    ("FREQ=DAILY;INTERVAL=3", "2026-11-26T09:00", "2026-11-30T19:00Z", BERLIN,
     "2026-12-03T08:00Z", "FREQ=DAILY;INTERVAL=3"),
    # done before the due time of day: still three days later
    ("FREQ=DAILY;INTERVAL=3", "2026-11-26T09:00", "2026-11-30T06:00Z", BERLIN,
     "2026-12-03T08:00Z", "FREQ=DAILY;INTERVAL=3"),
    # daily across the spring change: 09:00 CET -> 09:00 CEST
    ("FREQ=DAILY", "2026-03-01T09:00", "2026-03-28T19:00Z", BERLIN,
     "2026-03-29T07:00Z", "FREQ=DAILY"),
    # weekly from the completion's weekday (done Wednesday -> next Wednesday)
    ("weekly", "2026-11-23T09:00", "2026-11-25T10:00Z", BERLIN,
     "2026-12-02T08:00Z", "FREQ=WEEKLY"),
    # hourly restarts at the completion time
    ("FREQ=HOURLY;INTERVAL=2", "2026-11-26T09:00", "2026-11-26T13:37:12Z", BERLIN,
     "2026-11-26T15:37:12Z", "FREQ=HOURLY;INTERVAL=2"),
    ("FREQ=MINUTELY;INTERVAL=45", "2026-11-26T09:00", "2026-11-26T13:00:00Z", "UTC",
     "2026-11-26T13:45Z", "FREQ=MINUTELY;INTERVAL=45"),
    # COUNT counts the instances left: one less downstream; COUNT=1 was the last
    ("FREQ=DAILY;COUNT=3", "2026-11-26T09:00", "2026-11-30T19:00Z", BERLIN,
     "2026-12-01T08:00Z", "FREQ=DAILY;COUNT=2"),
    ("FREQ=DAILY;COUNT=1", "2026-11-26T09:00", "2026-11-30T19:00Z", BERLIN, None, None),
    # UNTIL ends the series
    ("FREQ=DAILY;UNTIL=20261201T000000Z", "2026-11-26T09:00", "2026-11-30T19:00Z", BERLIN,
     None, None),
    ("FREQ=DAILY;UNTIL=20261202T000000Z", "2026-11-26T09:00", "2026-11-30T19:00Z", BERLIN,
     "2026-12-01T08:00Z", "FREQ=DAILY;UNTIL=20261202T000000Z"),
])
def test_next_occurrence_from_completion(rule: str, due_wall: str, completed: str, zone: str,
                                         nxt: str | None, sent: str | None) -> None:
    tz = load_zone(zone)
    rec = parse_recurrence({"rrule": rule, "anchor": "completion"}, tz, time(9))
    got = next_from_completion(rec, tz, datetime.fromisoformat(due_wall), z(completed))
    if nxt is None:
        assert got is None
    else:
        assert got is not None
        assert got[0] == z(nxt)
        assert (got[1].rrule, got[1].anchor) == (sent, "completion")


def test_completion_anchor_honours_exdates() -> None:
    tz = load_zone(BERLIN)
    rec = parse_recurrence({"rrule": "daily", "anchor": "completion",
                            "exdates": ["2026-12-01"]}, tz, time(9))
    wall = datetime.fromisoformat("2026-11-26T09:00")
    got = next_from_completion(rec, tz, wall, z("2026-11-30T19:00Z"))
    assert got is not None and got[0] == z("2026-12-02T08:00Z")


@pytest.mark.parametrize("slot", [
    Slot(z("2026-11-26T13:00Z")),
    Slot(z("2026-11-26T13:00Z"), "overdue"),
    Slot(z("2026-11-26T13:00:00.5Z"), "snooze"),
    Slot(z("2026-11-27T06:00Z"), "reminder", (z("2026-11-26T22:00Z"), z("2026-11-26T23:00Z"))),
])
def test_slot_key_round_trips(slot: Slot) -> None:
    assert Slot.parse(slot.key()) == slot


def test_plain_reminder_slot_key_is_the_instant_records_held() -> None:
    assert Slot(z("2026-11-26T13:00Z")).key() == "2026-11-26T13:00:00Z"
    assert Slot(z("2026-11-26T13:00Z"), "overdue").key() == "overdue@2026-11-26T13:00:00Z"
    with pytest.raises(ValueError, match="kind"):
        Slot.parse("later@2026-11-26T13:00:00Z")


@pytest.mark.parametrize(("text", "length"), [
    ("PT1H", H), ("P1D", timedelta(days=1)), ("PT90M", timedelta(minutes=90)),
    ("P1W", timedelta(days=7)),
])
def test_parse_duration(text: str, length: timedelta) -> None:
    assert parse_duration(text, "x") == length


def test_record_keeps_the_section_8_fields_and_slots_through_json() -> None:
    from worker.records import (
        NO_GRACE_LIMIT,
        NO_QUIET_HOURS,
        Order,
        Task,
        TaskRecord,
        dump_record,
        load_record,
    )

    slots = {"rw-a": Slot(z("2026-11-26T13:00Z")),
             "rw-b": Slot(z("2026-11-27T06:00Z"), "overdue", (z("2026-11-26T22:00Z"),)),
             "rw-c": Slot(z("2026-11-26T15:00Z"), "snooze")}
    for grace, quiet in ((timedelta(minutes=90), NIGHT), (NO_GRACE_LIMIT, NO_QUIET_HOURS),
                         (None, None)):
        task = Task(timezone="Europe/Berlin", due_at=z("2026-11-26T14:00Z"),
                    due_local=datetime.fromisoformat("2026-11-26T15:00"), misfire_grace=grace,
                    quiet_hours=quiet, repeat=Repeat(H, 3), floating=True,
                    snooze=z("2026-11-26T15:00Z"))
        record = TaskRecord("u1", 1, Order(z("2026-11-26T11:00Z"), "f"), "active", task, slots)
        doc = dump_record(record)
        assert load_record(doc) == record
        assert doc["jobs"]["rw-a"] == "2026-11-26T13:00:00Z"  # a plain reminder: as before
        assert ("misfire_grace" in doc["task"]) == (grace is not None)
        if grace is NO_GRACE_LIMIT:
            assert doc["task"]["misfire_grace"] is None and doc["task"]["quiet_hours"] is None
