"""Recurrences: RRULE parsing and next occurrences, as tables of fixed, aware datetimes."""

import time as clock
from datetime import UTC, datetime, time, timedelta

import pytest

from worker.recurrence import (
    Recurrence,
    next_occurrence,
    parse_recurrence,
    series_start,
)
from worker.schedule import format_utc, load_zone

BERLIN = load_zone("Europe/Berlin")
NEW_YORK = load_zone("America/New_York")
NINE = time(9, 0)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def wall(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi)  # noqa: DTZ001 - a naive wall-clock time on purpose


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
    assert rec == Recurrence("FREQ=DAILY", utc(2026, 12, 1, 8), (utc(2026, 12, 3, 8),))
    assert rec.to_json(BERLIN, series_start(rec, utc(2026, 12, 5, 8))) == {
        "rrule": "FREQ=DAILY",
        "dtstart": "2026-12-01T09:00:00+01:00",
        "exdates": ["2026-12-03T09:00:00+01:00"],
    }
    listed = parse_recurrence(
        {"rrule": "daily", "exdates": ["2026-12-04T08:00:00Z", "2026-12-03T09:00:00"]}, BERLIN, NINE
    )
    assert listed.exdates == (utc(2026, 12, 3, 8), utc(2026, 12, 4, 8))
    assert series_start(listed, utc(2026, 12, 5, 8)) == utc(2026, 12, 5, 8)


@pytest.mark.parametrize(
    "value,message",
    [
        ("", "empty"),
        ("garbage", "malformed"),
        ("FREQ=", "malformed"),
        ("INTERVAL=2", "no FREQ"),
        ("FREQ=MINUTELY", "at most hourly"),
        ("FREQ=SECONDLY", "at most hourly"),
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
    assert next_occurrence(rec, BERLIN, current, now) == expected


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
        found = next_occurrence(rec, zone, current, current)
        assert found is not None
        seen.append(found)
        current = found
    assert seen == expected


def test_count_is_counted_from_the_series_start() -> None:
    with_start = parse_recurrence(
        {"rrule": "FREQ=DAILY;COUNT=3", "dtstart": "2026-12-01"}, BERLIN, NINE
    )
    assert next_occurrence(with_start, BERLIN, utc(2026, 12, 2, 8), utc(2026, 12, 2, 8)) == utc(
        2026, 12, 3, 8
    )
    assert next_occurrence(with_start, BERLIN, utc(2026, 12, 3, 8), utc(2026, 12, 3, 8)) is None
    # without dtstart the current occurrence starts the series
    bare = parse_recurrence("FREQ=DAILY;COUNT=3", BERLIN, NINE)
    assert next_occurrence(bare, BERLIN, utc(2026, 12, 3, 8), utc(2026, 12, 3, 8)) == utc(
        2026, 12, 4, 8
    )


def test_dtstart_is_the_first_occurrence_even_off_rule() -> None:
    # RFC 5545: DTSTART counts as the first instance, even when the rule would not produce it
    rec = parse_recurrence(
        {"rrule": "FREQ=MONTHLY;BYMONTHDAY=1;COUNT=2", "dtstart": "2026-11-15"}, BERLIN, NINE
    )
    start = utc(2026, 11, 1)
    assert next_occurrence(rec, BERLIN, start, start) == utc(2026, 11, 15, 8)
    assert next_occurrence(rec, BERLIN, utc(2026, 11, 15, 8), start) == utc(2026, 12, 1, 8)
    assert next_occurrence(rec, BERLIN, utc(2026, 12, 1, 8), start) is None


def test_interval_keeps_the_phase_of_the_series_start() -> None:
    rec = parse_recurrence(
        {"rrule": "FREQ=DAILY;INTERVAL=3", "dtstart": "2026-12-01"}, BERLIN, NINE
    )
    assert next_occurrence(rec, BERLIN, utc(2026, 12, 5, 8), utc(2026, 12, 5, 8)) == utc(
        2026, 12, 7, 8
    )
    old = parse_recurrence(
        {"rrule": "FREQ=HOURLY;INTERVAL=5", "dtstart": "2000-01-01T00:00:00Z"}, UTC_ZONE, NINE
    )
    now = utc(2026, 12, 1, 8, 17)
    hours = int((now - utc(2000, 1, 1)).total_seconds() // 3600) // 5 * 5 + 5
    assert next_occurrence(old, UTC_ZONE, now, now) == utc(2000, 1, 1) + timedelta(hours=hours)


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
    assert next_occurrence(rec, BERLIN, DEC_1, DEC_1) == expected


def test_exdates_do_not_extend_count() -> None:
    rec = parse_recurrence(
        {"rrule": "FREQ=DAILY;COUNT=2", "dtstart": "2026-12-01", "exdates": "2026-12-02"},
        BERLIN,
        NINE,
    )
    assert next_occurrence(rec, BERLIN, DEC_1, DEC_1) is None


@pytest.mark.parametrize(
    "rule,dtstart,now,expected",
    [
        # decades of hourly occurrences: skipped whole, exact answer
        ("FREQ=HOURLY", "1976-01-01T00:30:00Z", utc(2026, 6, 1, 12, 5), utc(2026, 6, 1, 12, 30)),
        # COUNT cannot skip ahead: counted, then ended
        ("FREQ=HOURLY;COUNT=100000", "1976-01-01T00:30:00Z", utc(2026, 6, 1, 12, 5), None),
        # never matches (INTERVAL pins Monday, BYDAY wants Tuesday): bounded scan, ended
        ("FREQ=DAILY;INTERVAL=7;BYDAY=TU", "2026-01-05T09:00:00Z", utc(2026, 1, 5, 9), None),
        # impossible nth-weekday/monthday combination: ends at the year bound
        ("FREQ=MONTHLY;BYDAY=5MO;BYMONTHDAY=1", "2026-01-05T09:00:00Z", utc(2026, 1, 5, 9), None),
        # BYHOUR unreachable with this INTERVAL from an odd start hour
        ("FREQ=HOURLY;INTERVAL=2;BYHOUR=4", "2026-01-05T09:00:00Z", utc(2026, 1, 5, 9), None),
    ],
)
def test_bounded_cpu(rule: str, dtstart: str, now: datetime, expected: datetime | None) -> None:
    rec = parse_recurrence({"rrule": rule, "dtstart": dtstart}, UTC_ZONE, NINE)
    started = clock.perf_counter()
    assert next_occurrence(rec, UTC_ZONE, now, now) == expected
    assert clock.perf_counter() - started < 2.0


