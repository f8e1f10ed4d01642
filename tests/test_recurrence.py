"""Recurrences: RRULE parsing and next occurrences, as tables of fixed, aware datetimes."""

from datetime import UTC, date, datetime, time, timedelta

import pytest

from worker.rules.recurrence import (
    Recurrence,
    next_occurrence,
    parse_recurrence,
    series_start,
)
from worker.schedule import format_utc, load_zone, resolve_local, wall_clock

BERLIN = load_zone("Europe/Berlin")
NEW_YORK = load_zone("America/New_York")
NINE = time(9, 0)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def wall(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s)  # noqa: DTZ001 - a naive wall-clock time on purpose


# --- recurrence parsing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,rrule",
    [
        ("FREQ=MONTHLY;BYMONTHDAY=1", "FREQ=MONTHLY;BYMONTHDAY=1"),
        ("RRULE:FREQ=MONTHLY;BYMONTHDAY=1", "FREQ=MONTHLY;BYMONTHDAY=1"),
        ("rrule:bymonthday=1;freq=monthly;", "FREQ=MONTHLY;BYMONTHDAY=1"),
        ("Daily", "FREQ=DAILY"),
        ("WEEKLY", "FREQ=WEEKLY"),
        ("monthly", "FREQ=MONTHLY"),
        ("yearly", "FREQ=YEARLY"),
        ("FREQ=HOURLY;INTERVAL=2;BYHOUR=3", "FREQ=HOURLY;INTERVAL=2;BYHOUR=3"),
        # what task services really send (docs/events.md)
        ("FREQ=WEEKLY; BYDAY=MO", "FREQ=WEEKLY;BYDAY=MO"),
        (" FREQ = WEEKLY ;BYDAY = MO , TU ", "FREQ=WEEKLY;BYDAY=MO,TU"),
        ("FREQ=MINUTELY;INTERVAL=30", "FREQ=MINUTELY;INTERVAL=30"),
        ("hourly", "FREQ=HOURLY"),
        (" Weekdays ", "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR"),
        ("FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3", "FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3"),
        ({"rrule": "weekly"}, "FREQ=WEEKLY"),
    ],
)
def test_parse_recurrence_normalizes(value: object, rrule: str) -> None:
    rec = parse_recurrence(value, BERLIN, NINE)
    assert rec == Recurrence(rrule)


def test_parse_recurrence_object_form() -> None:
    rec = parse_recurrence(
        {"rrule": "FREQ=DAILY", "dtstart": "2026-12-01", "exdates": "2026-12-03T09:00:00"},
        BERLIN,
        NINE,
    )
    assert rec == Recurrence("FREQ=DAILY", wall(2026, 12, 1, 9), (wall(2026, 12, 3, 9),))
    assert rec.to_json(BERLIN) == {
        "rrule": "FREQ=DAILY",
        "dtstart": "2026-12-01T09:00:00+01:00",
        "exdates": ["2026-12-03T09:00:00+01:00"],
    }
    listed = parse_recurrence(
        {"rrule": "daily", "exdates": ["2026-12-04T08:00:00Z", "2026-12-03T09:00:00"]}, BERLIN, NINE
    )
    assert listed.exdates == (wall(2026, 12, 3, 9), wall(2026, 12, 4, 9))
    assert series_start(listed, wall(2026, 12, 5, 9)) == wall(2026, 12, 5, 9)
    assert listed.to_json(BERLIN, wall(2026, 12, 5, 9))["dtstart"] == "2026-12-05T09:00:00+01:00"


def test_parse_recurrence_rdates_anchor_and_bare_date_exdates() -> None:
    rec = parse_recurrence(
        {"rrule": "FREQ=WEEKLY", "dtstart": "2026-12-01T18:00:00",
         "exdates": ["2026-12-08", "2026-12-15T17:00:00Z"],
         "rdates": ["2026-12-10", "2026-12-11T18:30:00+01:00"], "anchor": "completion"},
        BERLIN,
        NINE,
    )
    assert rec == Recurrence(
        "FREQ=WEEKLY", wall(2026, 12, 1, 18), (date(2026, 12, 8), wall(2026, 12, 15, 18)),
        (wall(2026, 12, 10, 9), wall(2026, 12, 11, 18, 30)), "completion",
    )
    assert rec.to_json(BERLIN) == {
        "rrule": "FREQ=WEEKLY",
        "dtstart": "2026-12-01T18:00:00+01:00",
        "exdates": ["2026-12-08", "2026-12-15T18:00:00+01:00"],
        "rdates": ["2026-12-10T09:00:00+01:00", "2026-12-11T18:30:00+01:00"],
        "anchor": "completion",
    }
    # cleared fields ("" or null) mean "not given"
    assert parse_recurrence(
        {"rrule": "daily", "dtstart": "", "exdates": None, "rdates": "", "anchor": None},
        BERLIN, NINE,
    ) == Recurrence("FREQ=DAILY")


def test_wall_clock_in_a_gap_is_kept_as_written() -> None:
    # 02:30 does not exist in Berlin on 2031-03-30: kept as written, not moved to 03:30
    rec = parse_recurrence({"rrule": "daily", "dtstart": "2031-03-30T02:30:00"}, BERLIN, NINE)
    assert rec.dtstart == wall(2031, 3, 30, 2, 30)
    # sent downstream with the offset the DST policy reads it with (the instant 01:30Z) ...
    sent = rec.to_json(BERLIN)
    assert sent["dtstart"] == "2031-03-30T02:30:00+01:00"
    # ... and read back unchanged when the task service returns it
    assert parse_recurrence(sent, BERLIN, NINE) == rec
    # the same instant written in the zone's real offset is that wall clock (03:30)
    moved = parse_recurrence({"rrule": "daily", "dtstart": "2031-03-30T03:30:00+02:00"},
                             BERLIN, NINE)
    assert moved.dtstart == wall(2031, 3, 30, 3, 30)


def test_record_round_trip_and_the_older_stored_form() -> None:
    rec = Recurrence("FREQ=DAILY", wall(2031, 3, 30, 2, 30), (date(2031, 4, 2),
                     wall(2031, 4, 3, 2, 30)), (wall(2031, 4, 5, 7),), "completion")
    stored = rec.to_record()
    assert stored == {"rrule": "FREQ=DAILY", "dtstart": "2031-03-30T02:30:00",
                      "exdates": ["2031-04-02", "2031-04-03T02:30:00"],
                      "rdates": ["2031-04-05T07:00:00"], "anchor": "completion"}
    assert Recurrence.from_record(stored) == rec
    # records written before this change hold UTC instants
    older = {"rrule": "FREQ=DAILY", "dtstart": "2026-12-01T08:00:00Z",
             "exdates": ["2026-12-03T08:00:00Z"]}
    assert Recurrence.from_record(older, BERLIN) == Recurrence(
        "FREQ=DAILY", wall(2026, 12, 1, 9), (wall(2026, 12, 3, 9),))
    assert Recurrence.from_record({"rrule": "FREQ=DAILY", "dtstart": None, "exdates": []},
                                  BERLIN) == Recurrence("FREQ=DAILY")


@pytest.mark.parametrize(
    "value,message",
    [
        ("", "empty"),
        ("garbage", "malformed"),
        ("FREQ=", "malformed"),
        ("INTERVAL=2", "no FREQ"),
        ("FREQ=SECONDLY", "SECONDLY is not supported"),
        ("FREQ=DAILY;BYSECOND=60", "out of range"),
        ("FREQ=FORTNIGHTLY", "unknown FREQ"),
        ("FREQ=DAILY;FOO=1", "unknown rule part"),
        ("FREQ=DAILY;BYEASTER=0", "unknown rule part"),
        ("FREQ=DAILY;FREQ=WEEKLY", "twice"),
        ("FREQ=DAILY;COUNT=100001", "COUNT"),
        ("FREQ=DAILY;COUNT=0", "COUNT"),
        ("FREQ=DAILY;INTERVAL=10001", "INTERVAL"),
        ("FREQ=DAILY;INTERVAL=-1", "INTERVAL"),
        ("FREQ=DAILY;COUNT=2;UNTIL=20270101", "COUNT and UNTIL"),
        ("FREQ=DAILY;UNTIL=2027", "UNTIL"),
        ("FREQ=DAILY;UNTIL=20270230", "UNTIL"),
        ("DTSTART:20260101T090000\nRRULE:FREQ=DAILY", "DTSTART"),
        ("FREQ=DAILY;DTSTART=20260101T090000", "DTSTART"),
        ("RRULE:FREQ=DAILY\nEXDATE:20260102T090000", "single RRULE"),
        ("FREQ=DAILY;BYDAY=XX", "BYDAY"),
        ("FREQ=DAILY;BYDAY=1MO", "not valid with FREQ=DAILY"),
        ("FREQ=MONTHLY;BYDAY=6MO", "not valid"),
        ("FREQ=WEEKLY;BYMONTHDAY=1", "cannot be used"),
        ("FREQ=MONTHLY;BYWEEKNO=1", "cannot be used"),
        ("FREQ=DAILY;BYYEARDAY=1", "cannot be used"),
        ("FREQ=DAILY;BYHOUR=24", "out of range"),
        ("FREQ=MONTHLY;BYMONTHDAY=0", "out of range"),
        ("FREQ=MONTHLY;BYMONTHDAY=32", "out of range"),
        ("FREQ=DAILY;BYMONTH=13", "out of range"),
        ("FREQ=DAILY;WKST=XX", "WKST"),
        ("FREQ=DAILY;BYSETPOS=1", "needs another"),
        ("FREQ=DAILY;BYHOUR=9;BYSETPOS=2", "selects nothing"),
        ("FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=30", "never occur"),
        ("FREQ=YEARLY;BYMONTH=4;BYMONTHDAY=-31", "never occur"),
        ("FREQ=DAILY;" + "BYHOUR=1;" * 100, "too long"),
        (42, "RRULE string"),
        (None, "RRULE string"),
        (["FREQ=DAILY"], "RRULE string"),
        ({"dtstart": "2026-12-01"}, "RRULE string"),
        ({"rrule": "FREQ=DAILY", "until": "x"}, "unknown recurrence field"),
        ({"rrule": "FREQ=DAILY", "dtstart": "soon"}, "not a date"),
        ({"rrule": "FREQ=DAILY", "exdates": {"a": 1}}, "exdates"),
        ({"rrule": "FREQ=DAILY", "exdates": ["2026-12-01"] * 1001}, "exdates"),
        ({"rrule": "FREQ=DAILY", "rdates": ["2026-12-01", "soon"]}, "not a date"),
        ({"rrule": "FREQ=DAILY", "anchor": "done"}, "anchor"),
        ({"rrule": "FREQ=DAILY", "dtstart": "2026-12-01T09:00:00+25:00"}, "offset"),
    ],
)
def test_parse_recurrence_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_recurrence(value, BERLIN, NINE)


# --- next occurrence ---------------------------------------------------------------------

DEC_1 = utc(2026, 12, 1, 8)  # Tuesday 09:00 Berlin


@pytest.mark.parametrize(
    "recurrence,current,now,expected",
    [
        # shorthands
        ("daily", DEC_1, DEC_1, utc(2026, 12, 2, 8)),
        ("weekly", DEC_1, DEC_1, utc(2026, 12, 8, 8)),
        ("monthly", DEC_1, DEC_1, utc(2027, 1, 1, 8)),
        ("yearly", DEC_1, DEC_1, utc(2027, 12, 1, 8)),
        ("FREQ=HOURLY", DEC_1, DEC_1, utc(2026, 12, 1, 9)),
        # INTERVAL
        ("FREQ=WEEKLY;INTERVAL=2", DEC_1, DEC_1, utc(2026, 12, 15, 8)),
        ("FREQ=DAILY;INTERVAL=3", DEC_1, DEC_1, utc(2026, 12, 4, 8)),
        ("FREQ=WEEKLY;BYDAY=MO,FR", DEC_1, DEC_1, utc(2026, 12, 4, 8)),
        # wall clock kept across DST: 09:00 CET -> 09:00 CEST
        ("daily", utc(2026, 3, 28, 8), utc(2026, 3, 28, 8), utc(2026, 3, 29, 7)),
        ("weekly", utc(2026, 10, 20, 7), utc(2026, 10, 20, 7), utc(2026, 10, 27, 8)),
        # skipping occurrences in the past (now far after current); strictly after now
        ("daily", utc(2026, 1, 1, 8), utc(2026, 6, 15, 12), utc(2026, 6, 16, 7)),
        ("daily", utc(2026, 1, 1, 8), utc(2026, 6, 15, 7), utc(2026, 6, 16, 7)),
        ("monthly", utc(2020, 1, 15, 8), utc(2026, 6, 15, 7), utc(2026, 7, 15, 7)),
        ("FREQ=WEEKLY;INTERVAL=2", utc(2020, 1, 7, 8), utc(2026, 12, 1, 9), utc(2026, 12, 15, 8)),
        # month ends and leap years
        (
            "FREQ=MONTHLY;BYMONTHDAY=-1",
            utc(2026, 1, 31, 8),
            utc(2026, 1, 31, 8),
            utc(2026, 2, 28, 8),
        ),
        (
            "FREQ=MONTHLY;BYMONTHDAY=-1",
            utc(2028, 1, 31, 8),
            utc(2028, 1, 31, 8),
            utc(2028, 2, 29, 8),
        ),
        (
            "FREQ=MONTHLY;BYMONTHDAY=31",
            utc(2026, 1, 31, 8),
            utc(2026, 1, 31, 8),
            utc(2026, 3, 31, 7),
        ),
        ("monthly", utc(2026, 1, 31, 8), utc(2026, 1, 31, 8), utc(2026, 3, 31, 7)),
        ("yearly", utc(2028, 2, 29, 8), utc(2028, 2, 29, 8), utc(2032, 2, 29, 8)),
        # BYSETPOS: last weekday of the month
        (
            "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
            utc(2026, 1, 30, 8),
            utc(2026, 1, 30, 8),
            utc(2026, 2, 27, 8),
        ),
        (
            "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
            utc(2026, 2, 27, 8),
            utc(2026, 2, 27, 8),
            utc(2026, 3, 31, 7),
        ),
        ("FREQ=MONTHLY;BYDAY=2TU", DEC_1, DEC_1, utc(2026, 12, 8, 8)),
        (
            "FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR",
            utc(2026, 12, 4, 8),
            utc(2026, 12, 4, 8),
            utc(2026, 12, 7, 8),
        ),
        ("FREQ=DAILY;BYMONTH=1", DEC_1, DEC_1, utc(2027, 1, 1, 8)),
        # UNTIL: Z form (instant), local form (wall clock), date form (whole local day)
        ("FREQ=DAILY;UNTIL=20261202T080000Z", DEC_1, DEC_1, utc(2026, 12, 2, 8)),
        ("FREQ=DAILY;UNTIL=20261202T075959Z", DEC_1, DEC_1, None),
        ("FREQ=DAILY;UNTIL=20261202T090000", DEC_1, DEC_1, utc(2026, 12, 2, 8)),
        ("FREQ=DAILY;UNTIL=20261202T085959", DEC_1, DEC_1, None),
        ("FREQ=DAILY;UNTIL=20261202", DEC_1, DEC_1, utc(2026, 12, 2, 8)),
        ("FREQ=DAILY;UNTIL=20261201", DEC_1, DEC_1, None),
        # the series has ended
        ("FREQ=DAILY;COUNT=1", DEC_1, DEC_1, None),
        ("FREQ=DAILY;COUNT=2", DEC_1, DEC_1, utc(2026, 12, 2, 8)),
        ("FREQ=DAILY;UNTIL=20261231", DEC_1, utc(2027, 1, 1), None),
    ],
)
def test_next_occurrence(
    recurrence: str, current: datetime, now: datetime, expected: datetime | None
) -> None:
    rec = parse_recurrence(recurrence, BERLIN, NINE)
    assert next_occurrence(rec, BERLIN, wall_clock(current, BERLIN), now) == expected


@pytest.mark.parametrize(
    "zone,rule,dtstart,expected",
    [
        # FREQ=DAILY at 02:30 across the Berlin gap: 02:30 CET offset, i.e. 03:30 CEST
        (
            BERLIN,
            "daily",
            utc(2026, 3, 28, 1, 30),
            [utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)],
        ),
        # at 02:30 across the Berlin overlap: the first (CEST) occurrence
        (
            BERLIN,
            "daily",
            utc(2026, 10, 24, 0, 30),
            [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
        ),
        # New York spring gap at 02:30 (EST offset) and fall overlap at 01:30 (EDT)
        (
            NEW_YORK,
            "daily",
            utc(2026, 3, 7, 7, 30),
            [utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)],
        ),
        (
            NEW_YORK,
            "daily",
            utc(2026, 10, 31, 5, 30),
            [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
        ),
        # hourly across the gap: 02:30 and 03:30 are one instant, given once
        (
            BERLIN,
            "FREQ=HOURLY",
            utc(2026, 3, 29, 0, 30),
            [utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 30)],
        ),
        # hourly across the overlap: the repeated 02:30 is not produced twice
        (
            BERLIN,
            "FREQ=HOURLY",
            utc(2026, 10, 24, 23, 30),
            [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 2, 30)],
        ),
    ],
)
def test_next_occurrence_dst_policy(
    zone: object, rule: str, dtstart: datetime, expected: list[datetime]
) -> None:
    assert isinstance(zone, type(BERLIN))
    # anchored at dtstart, as the worker sends it on: 02:30 stays the rule's time after the gap
    rec = parse_recurrence({"rrule": rule, "dtstart": format_utc(dtstart)}, zone, NINE)
    current, seen = dtstart, []
    for _ in expected:
        found = next_occurrence(rec, zone, wall_clock(current, zone), current)
        assert found is not None
        seen.append(found)
        current = found
    assert seen == expected


def test_count_is_counted_from_the_series_start() -> None:
    with_start = parse_recurrence(
        {"rrule": "FREQ=DAILY;COUNT=3", "dtstart": "2026-12-01"}, BERLIN, NINE
    )
    dec_2, dec_3 = wall(2026, 12, 2, 9), wall(2026, 12, 3, 9)
    assert next_occurrence(with_start, BERLIN, dec_2, utc(2026, 12, 2, 8)) == utc(2026, 12, 3, 8)
    assert next_occurrence(with_start, BERLIN, dec_3, utc(2026, 12, 3, 8)) is None
    # without dtstart the current occurrence starts the series
    bare = parse_recurrence("FREQ=DAILY;COUNT=3", BERLIN, NINE)
    assert next_occurrence(bare, BERLIN, dec_3, utc(2026, 12, 3, 8)) == utc(2026, 12, 4, 8)


def test_dtstart_is_the_first_occurrence_even_off_rule() -> None:
    # RFC 5545: DTSTART counts as the first instance, even when the rule would not produce it
    rec = parse_recurrence(
        {"rrule": "FREQ=MONTHLY;BYMONTHDAY=1;COUNT=2", "dtstart": "2026-11-15"}, BERLIN, NINE
    )
    start = utc(2026, 11, 1)
    assert next_occurrence(rec, BERLIN, wall(2026, 11, 1, 1), start) == utc(2026, 11, 15, 8)
    assert next_occurrence(rec, BERLIN, wall(2026, 11, 15, 9), start) == utc(2026, 12, 1, 8)
    assert next_occurrence(rec, BERLIN, wall(2026, 12, 1, 9), start) is None


def test_interval_keeps_the_phase_of_the_series_start() -> None:
    rec = parse_recurrence(
        {"rrule": "FREQ=DAILY;INTERVAL=3", "dtstart": "2026-12-01"}, BERLIN, NINE
    )
    assert next_occurrence(rec, BERLIN, wall(2026, 12, 5, 9), utc(2026, 12, 5, 8)) == utc(
        2026, 12, 7, 8
    )
    old = parse_recurrence(
        {"rrule": "FREQ=HOURLY;INTERVAL=5", "dtstart": "2000-01-01T00:00:00Z"}, UTC_ZONE, NINE
    )
    now = utc(2026, 12, 1, 8, 17)
    hours = int((now - utc(2000, 1, 1)).total_seconds() // 3600) // 5 * 5 + 5
    assert next_occurrence(old, UTC_ZONE, wall(2026, 12, 1, 8, 17), now) == utc(
        2000, 1, 1) + timedelta(hours=hours)


UTC_ZONE = load_zone("UTC")


@pytest.mark.parametrize(
    "exdates,expected",
    [
        (["2026-12-02T09:00:00"], utc(2026, 12, 3, 8)),
        (["2026-12-02T08:00:00Z"], utc(2026, 12, 3, 8)),
        (["2026-12-02T09:00:00", "2026-12-03"], utc(2026, 12, 4, 8)),
        (["2026-12-02T10:00:00"], utc(2026, 12, 2, 8)),  # not an occurrence: no effect
    ],
)
def test_exdates(exdates: list[str], expected: datetime) -> None:
    rec = parse_recurrence({"rrule": "daily", "exdates": exdates}, BERLIN, NINE)
    assert next_occurrence(rec, BERLIN, wall(2026, 12, 1, 9), DEC_1) == expected


def test_a_bare_date_exdate_removes_the_whole_local_day() -> None:
    # an 18:00 task: the exdate "2026-12-02" must remove 18:00 on that day (it used to
    # mean 09:00, the all-day time, and removed nothing)
    rec = parse_recurrence({"rrule": "FREQ=DAILY;BYHOUR=7,18", "exdates": ["2026-12-02"]},
                           BERLIN, NINE)
    assert next_occurrence(rec, BERLIN, wall(2026, 12, 1, 18), utc(2026, 12, 1, 17)) == utc(
        2026, 12, 3, 6)


def test_rdates_add_occurrences_outside_the_rule() -> None:
    rec = parse_recurrence(
        {"rrule": "FREQ=WEEKLY;COUNT=2", "dtstart": "2026-12-01T18:00:00",
         "rdates": ["2026-12-04T07:00:00", "2026-12-25"]},
        BERLIN, NINE,
    )
    tue = wall(2026, 12, 1, 18)
    assert next_occurrence(rec, BERLIN, tue, utc(2026, 12, 1, 17)) == utc(2026, 12, 4, 6)
    assert next_occurrence(rec, BERLIN, wall(2026, 12, 4, 7), utc(2026, 12, 4, 6)) == utc(
        2026, 12, 8, 17)
    # COUNT=2 has ended the rule; the rdate still occurs, then nothing
    assert next_occurrence(rec, BERLIN, wall(2026, 12, 8, 18), utc(2026, 12, 8, 17)) == utc(
        2026, 12, 25, 8)
    assert next_occurrence(rec, BERLIN, wall(2026, 12, 25, 9), utc(2026, 12, 25, 8)) is None


def test_exdates_do_not_extend_count() -> None:
    rec = parse_recurrence(
        {"rrule": "FREQ=DAILY;COUNT=2", "dtstart": "2026-12-01", "exdates": "2026-12-02"},
        BERLIN,
        NINE,
    )
    assert next_occurrence(rec, BERLIN, wall(2026, 12, 1, 9), DEC_1) is None


def test_current_must_be_a_wall_clock_time() -> None:
    with pytest.raises(ValueError, match="naive"):
        next_occurrence(Recurrence("FREQ=DAILY"), BERLIN, DEC_1, DEC_1)


# --- issue 8: wall clocks in gaps, whole BYSETPOS sets, zones with odd transitions --------

LORD_HOWE = load_zone("Australia/Lord_Howe")  # DST of 30 minutes
DUBLIN = load_zone("Europe/Dublin")  # "negative DST": winter is the saving time
TROLL = load_zone("Antarctica/Troll")  # DST of 2 hours
APIA = load_zone("Pacific/Apia")  # skipped 2011-12-30 entirely (-10 -> +14)


@pytest.mark.parametrize(
    "zone,rule,dtstart,current,after,expected",
    [
        # a DAILY series written at 02:30 on Berlin's gap day: that day's occurrence is
        # 01:30Z (03:30 CEST), the next day's is 02:30 CEST again, not 03:30
        (BERLIN, "FREQ=DAILY", wall(2031, 3, 30, 2, 30), wall(2031, 3, 29, 2, 30),
         utc(2031, 3, 29), utc(2031, 3, 30, 1, 30)),
        (BERLIN, "FREQ=DAILY", wall(2031, 3, 30, 2, 30), wall(2031, 3, 30, 2, 30),
         utc(2031, 3, 30, 1, 30), utc(2031, 3, 31, 0, 30)),
        (BERLIN, "FREQ=DAILY", wall(2031, 3, 30, 2, 30), wall(2031, 4, 5, 2, 30),
         utc(2031, 4, 5), utc(2031, 4, 6, 0, 30)),
        # a dtstart in the gap, the due date outside it: the time of day is still 02:30
        (BERLIN, "FREQ=WEEKLY", wall(2031, 3, 30, 2, 30), wall(2031, 4, 6, 2, 30),
         utc(2031, 4, 6), utc(2031, 4, 13, 0, 30)),
        # New York: gap at 02:30 (EST offset) and overlap at 01:30 (EDT, the first)
        (NEW_YORK, "FREQ=DAILY", wall(2026, 3, 7, 2, 30), wall(2026, 3, 7, 2, 30),
         utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30)),
        (NEW_YORK, "FREQ=DAILY", wall(2026, 3, 7, 2, 30), wall(2026, 3, 8, 2, 30),
         utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)),
        (NEW_YORK, "FREQ=DAILY", wall(2026, 10, 31, 1, 30), wall(2026, 10, 31, 1, 30),
         utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30)),
        # Lord Howe: 02:00 -> 02:30 in October, 02:00 -> 01:30 in April
        (LORD_HOWE, "FREQ=DAILY", wall(2026, 10, 3, 2, 15), wall(2026, 10, 3, 2, 15),
         utc(2026, 10, 2, 15, 45), utc(2026, 10, 3, 15, 45)),
        (LORD_HOWE, "FREQ=DAILY", wall(2026, 10, 3, 2, 15), wall(2026, 10, 4, 2, 15),
         utc(2026, 10, 3, 15, 45), utc(2026, 10, 4, 15, 15)),
        (LORD_HOWE, "FREQ=DAILY", wall(2026, 4, 4, 1, 45), wall(2026, 4, 4, 1, 45),
         utc(2026, 4, 3, 14, 45), utc(2026, 4, 4, 14, 45)),
        (LORD_HOWE, "FREQ=DAILY", wall(2026, 4, 4, 1, 45), wall(2026, 4, 5, 1, 45),
         utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)),
        # Dublin: +00 in winter, +01 in summer, transitions at 01:00 UTC
        (DUBLIN, "FREQ=DAILY", wall(2026, 3, 28, 1, 30), wall(2026, 3, 28, 1, 30),
         utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30)),
        (DUBLIN, "FREQ=DAILY", wall(2026, 3, 28, 1, 30), wall(2026, 3, 29, 1, 30),
         utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)),
        (DUBLIN, "FREQ=DAILY", wall(2026, 10, 24, 1, 30), wall(2026, 10, 24, 1, 30),
         utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30)),
        (DUBLIN, "FREQ=DAILY", wall(2026, 10, 24, 1, 30), wall(2026, 10, 25, 1, 30),
         utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)),
        # Troll: 01:00 -> 03:00 in March; hourly, 03:30 is 01:30Z again: the next
        # instant after 01:30Z is 02:30Z (02:30 in the gap, and 04:30 CEST)
        (TROLL, "FREQ=DAILY", wall(2026, 3, 28, 2), wall(2026, 3, 28, 2),
         utc(2026, 3, 28, 2), utc(2026, 3, 29, 2)),
        (TROLL, "FREQ=DAILY", wall(2026, 3, 28, 2), wall(2026, 3, 29, 2),
         utc(2026, 3, 29, 2), utc(2026, 3, 30, 0)),
        (TROLL, "FREQ=HOURLY", wall(2026, 3, 29, 0, 30), wall(2026, 3, 29, 1, 30),
         utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 30)),
        (TROLL, "FREQ=DAILY", wall(2026, 10, 24, 2), wall(2026, 10, 25, 2),
         utc(2026, 10, 25, 0), utc(2026, 10, 26, 2)),
        # Apia, 2011-12-30 skipped: 09:00 on the 30th is 19:00Z, the same as the 31st
        (APIA, "FREQ=DAILY", wall(2011, 12, 29, 9), wall(2011, 12, 29, 9),
         utc(2011, 12, 29, 19), utc(2011, 12, 30, 19)),
        (APIA, "FREQ=DAILY", wall(2011, 12, 29, 9), wall(2011, 12, 30, 9),
         utc(2011, 12, 30, 19), utc(2011, 12, 31, 19)),
        # a later wall clock (22 h later, past the jump) is the earlier instant: a
        # constant 3-hour search margin missed it
        (APIA, "FREQ=HOURLY;INTERVAL=22", wall(2011, 12, 21, 2), wall(2011, 12, 29, 13),
         utc(2011, 12, 29, 23), utc(2011, 12, 30, 14)),
        # WEEKLY + BYSETPOS: the set is the whole week from WKST (dateutil #1398)
        (BERLIN, "FREQ=WEEKLY;BYDAY=MO,TH;BYSETPOS=1", None, wall(2026, 12, 2, 9),
         utc(2026, 12, 2, 8), utc(2026, 12, 7, 8)),
        (BERLIN, "FREQ=WEEKLY;BYDAY=MO,TH;BYSETPOS=-1", None, wall(2026, 12, 2, 9),
         utc(2026, 12, 2, 8), utc(2026, 12, 3, 8)),
        (BERLIN, "FREQ=WEEKLY;BYDAY=MO,TH;BYSETPOS=1;WKST=TH", None, wall(2026, 12, 2, 9),
         utc(2026, 12, 2, 8), utc(2026, 12, 3, 8)),
        # ... also long after the series start (the old skip-ahead restarted mid-week)
        (BERLIN, "FREQ=WEEKLY;BYDAY=MO,TH;BYSETPOS=1", wall(2020, 1, 1, 9),
         wall(2026, 12, 2, 9), utc(2026, 12, 2, 8), utc(2026, 12, 7, 8)),
        (BERLIN, "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,FR;BYSETPOS=2", wall(2026, 11, 30, 9),
         wall(2026, 12, 4, 9), utc(2026, 12, 4, 8), utc(2026, 12, 18, 8)),
        # minutely rules are rules like any other
        (BERLIN, "FREQ=MINUTELY;INTERVAL=30", None, wall(2026, 12, 2, 9, 10),
         utc(2026, 12, 2, 8, 10), utc(2026, 12, 2, 8, 40)),
        (BERLIN, "FREQ=MINUTELY;INTERVAL=30;BYHOUR=9", wall(2026, 12, 2, 9),
         wall(2026, 12, 2, 9, 30), utc(2026, 12, 2, 8, 30), utc(2026, 12, 3, 8)),
    ],
)
def test_next_occurrence_in_real_zones(
    zone: object, rule: str, dtstart: datetime | None, current: datetime, after: datetime,
    expected: datetime | None,
) -> None:
    assert isinstance(zone, type(BERLIN))
    rec = Recurrence(rule, dtstart)
    assert next_occurrence(rec, zone, current, after) == expected


@pytest.mark.parametrize(
    "rule,dtstart,current,expected",
    [
        # decades of hourly occurrences: skipped whole, exact answer
        ("FREQ=HOURLY", wall(1976, 1, 1, 0, 30), wall(2026, 6, 1, 12, 5),
         utc(2026, 6, 1, 12, 30)),
        # COUNT is counted arithmetically: ended long ago, or still going, exactly
        ("FREQ=HOURLY;COUNT=100000", wall(1976, 1, 1, 0, 30), wall(2026, 6, 1, 12, 5), None),
        ("FREQ=HOURLY;COUNT=100000", wall(2015, 1, 1, 0, 30), wall(2026, 5, 29, 15, 29),
         utc(2026, 5, 29, 15, 30)),
        ("FREQ=HOURLY;COUNT=100000", wall(2015, 1, 1, 0, 30), wall(2026, 5, 29, 15, 30), None),
        ("FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR;COUNT=5000", wall(2000, 1, 3, 9),
         wall(2019, 2, 28, 9), utc(2019, 3, 1, 9)),
        ("FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR;COUNT=5000", wall(2000, 1, 3, 9),
         wall(2019, 3, 1, 9), None),
        # never matches again (INTERVAL pins Monday, BYDAY wants another day): ended
        ("FREQ=DAILY;INTERVAL=7;BYDAY=TU", wall(2026, 1, 5, 9), wall(2026, 1, 5, 9), None),
        ("FREQ=DAILY;INTERVAL=7;BYDAY=SU;COUNT=3", wall(2026, 1, 5, 9), wall(2026, 1, 5, 9),
         None),
        ("FREQ=DAILY;INTERVAL=7;BYDAY=SU;UNTIL=20250101", None, wall(2026, 1, 5, 9), None),
        ("FREQ=HOURLY;INTERVAL=49;BYHOUR=1,2,3;BYDAY=SU", wall(2026, 1, 5, 9),
         wall(2026, 1, 5, 9), None),
        ("FREQ=MONTHLY;INTERVAL=3;BYMONTH=5", wall(2026, 1, 5, 9), wall(2026, 1, 5, 9), None),
        ("FREQ=MONTHLY;BYDAY=5MO;BYMONTHDAY=1", wall(2026, 1, 5, 9), wall(2026, 1, 5, 9), None),
        ("FREQ=YEARLY;BYMONTH=2", wall(2026, 1, 31, 9), wall(2026, 1, 31, 9), None),
        # BYHOUR unreachable with this INTERVAL from an odd start hour
        ("FREQ=HOURLY;INTERVAL=2;BYHOUR=4", wall(2026, 1, 5, 9), wall(2026, 1, 5, 9), None),
        # ... but reachable ones are found, however rare
        # (24 periods of 49 h are 7 weeks: Sunday 02:00 again)
        ("FREQ=HOURLY;INTERVAL=49;BYHOUR=1,2,3;BYDAY=SU", wall(2026, 1, 4, 2),
         wall(2026, 1, 4, 2), utc(2026, 2, 22, 2)),
        ("FREQ=MONTHLY;INTERVAL=3;BYMONTH=4", wall(2026, 1, 5, 9), wall(2026, 1, 5, 9),
         utc(2026, 4, 5, 9)),
        ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO", wall(2026, 1, 5, 9),
         wall(2026, 1, 5, 9), utc(2044, 2, 29, 9)),
        ("FREQ=HOURLY;BYMINUTE=" + ",".join(map(str, range(60))), wall(2026, 1, 5, 9),
         wall(2026, 1, 5, 9, 59), utc(2026, 1, 5, 10)),
        ("FREQ=MINUTELY;BYSECOND=" + ",".join(map(str, range(0, 60, 2))), wall(2026, 1, 5, 9),
         wall(2026, 1, 5, 9, 59, 58), utc(2026, 1, 5, 10)),
    ],
)
def test_costly_rules_are_answered(
    rule: str, dtstart: datetime | None, current: datetime, expected: datetime | None
) -> None:
    # correctness only: their CPU cost is measured by `python -m bench.rrule_cost`
    rec = parse_recurrence(rule, UTC_ZONE, NINE)
    rec = Recurrence(rec.rrule, dtstart)
    assert next_occurrence(rec, UTC_ZONE, current, resolve_local(current, UTC_ZONE)) == expected
