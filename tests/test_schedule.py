import re
from datetime import UTC, datetime, time, timedelta, timezone

import pytest

from worker.keys import job_name, occurrence_key, reminder_id, task_key
from worker.schedule import (
    Offset,
    format_local,
    format_utc,
    load_zone,
    parse_offset,
    parse_when,
    parse_when_wall,
    reminder_instants,
    resolve_local,
)

BERLIN = load_zone("Europe/Berlin")
NEW_YORK = load_zone("America/New_York")
NINE = time(9, 0)
UTC_ZONE = load_zone("UTC")
BER, NYC = "Europe/Berlin", "America/New_York"


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def wall(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi)  # noqa: DTZ001 - a naive wall-clock time on purpose


# --- zones -------------------------------------------------------------------------------


def test_load_zone_known_and_cached() -> None:
    assert load_zone("America/New_York").key == "America/New_York"
    assert load_zone("UTC") is load_zone("UTC")


@pytest.mark.parametrize(
    "name,key,offset",
    [
        ("+05:30", "+05:30", timedelta(hours=5, minutes=30)),
        ("-03:00", "-03:00", timedelta(hours=-3)),
        ("+01:00", "+01:00", timedelta(hours=1)),
        ("+0100", "+01:00", timedelta(hours=1)),
        ("-00:00", "+00:00", timedelta(0)),
        ("+14:00", "+14:00", timedelta(hours=14)),
        ("-12:00", "-12:00", timedelta(hours=-12)),
        ("UTC", "UTC", timedelta(0)),
    ],
)
def test_load_zone_fixed_offsets(name: str, key: str, offset: timedelta) -> None:
    zone = load_zone(name)
    assert zone.key == key
    for moment in (wall(1970, 1, 1), wall(2031, 3, 30, 2, 30), wall(2031, 10, 26, 2, 30),
                   wall(9000, 12, 31, 23, 59)):
        assert moment.replace(tzinfo=zone).utcoffset() == offset  # no DST, ever
        assert resolve_local(moment, zone) == moment.replace(tzinfo=UTC) - offset
    assert format_local(utc(2031, 6, 1, 12), zone) == (
        (datetime(2031, 6, 1, 12) + offset).isoformat()  # noqa: DTZ001
        + ("+00:00" if key == "UTC" else key))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Mars/Phobos",
        "+24:00",
        "+18:01",
        "+05:60",
        "+5:30",
        "05:30",
        "UTC+01:00",
        "+05:30 ",
        "../etc/passwd",
        "/etc/passwd",
        "Europe/../UTC",
        "Europe/Berlin\x00",
        "a" * 65,
        "localtime",
        "Europe",
        "Europe/Berlin ",
    ],
)
def test_load_zone_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        load_zone(name)


@pytest.mark.parametrize(("name", "says"), [
    ("Europe/Berln", "unknown time zone: 'Europe/Berln' (did you mean 'Europe/Berlin'?)"),
    ("europe/berlin", "unknown time zone: 'europe/berlin' (did you mean 'Europe/Berlin'?)"),
    ("Amerca/New_York", "(did you mean 'America/New_York'?)"),
    ("Europe/Berlin ", "(did you mean 'Europe/Berlin'?)"),
    ("Nowhere/City", "unknown time zone: 'Nowhere/City'"),
])
def test_an_unknown_zone_suggests_the_close_one(name: str, says: str) -> None:
    """Issue 20: the close IANA name, when there is one, and nothing made up."""
    with pytest.raises(ValueError) as info:
        load_zone(name)
    assert says in str(info.value)
    assert ("did you mean" in str(info.value)) == ("did you mean" in says)


# --- DST policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone,naive,expected",
    [
        # ordinary times
        (BERLIN, wall(2026, 12, 1, 9), utc(2026, 12, 1, 8)),
        (BERLIN, wall(2026, 7, 1, 9), utc(2026, 7, 1, 7)),
        # spring-forward gap: offset from before the gap (CET), i.e. 03:30 CEST
        (BERLIN, wall(2026, 3, 29, 2, 30), utc(2026, 3, 29, 1, 30)),
        (BERLIN, wall(2026, 3, 29, 2, 0), utc(2026, 3, 29, 1, 0)),
        (BERLIN, wall(2026, 3, 29, 3, 0), utc(2026, 3, 29, 1, 0)),
        # fall-back overlap: first occurrence (CEST)
        (BERLIN, wall(2026, 10, 25, 2, 30), utc(2026, 10, 25, 0, 30)),
        (BERLIN, wall(2026, 10, 25, 3, 0), utc(2026, 10, 25, 2, 0)),
        # New York: gap 02:00-03:00 EST->EDT, overlap 01:00-02:00 EDT->EST
        (NEW_YORK, wall(2026, 3, 8, 2, 30), utc(2026, 3, 8, 7, 30)),
        (NEW_YORK, wall(2026, 3, 8, 3, 30), utc(2026, 3, 8, 7, 30)),
        (NEW_YORK, wall(2026, 11, 1, 1, 30), utc(2026, 11, 1, 5, 30)),
        (NEW_YORK, wall(2026, 11, 1, 2, 0), utc(2026, 11, 1, 7, 0)),
    ],
)
def test_resolve_local(zone: object, naive: datetime, expected: datetime) -> None:
    assert isinstance(zone, type(BERLIN))
    result = resolve_local(naive, zone)
    assert result == expected
    assert result.utcoffset() == timedelta(0)


def test_resolve_local_ignores_fold_and_rejects_aware() -> None:
    assert resolve_local(wall(2026, 10, 25, 2, 30).replace(fold=1), BERLIN) == utc(
        2026, 10, 25, 0, 30
    )
    with pytest.raises(ValueError):
        resolve_local(utc(2026, 1, 1), BERLIN)


# --- parse_when --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        ("2026-12-01T09:00:00+01:00", utc(2026, 12, 1, 8)),
        ("2026-12-01T09:00:00-05:00", utc(2026, 12, 1, 14)),
        ("2026-12-01T08:00:00Z", utc(2026, 12, 1, 8)),
        ("2026-12-01t08:00:00z", utc(2026, 12, 1, 8)),
        ("2026-12-01T08:00:00.250Z", utc(2026, 12, 1, 8, 0, 0, 250000)),
        ("2026-12-01T09:00:00", utc(2026, 12, 1, 8)),  # naive: wall clock in Berlin
        ("2026-07-01T09:00:00", utc(2026, 7, 1, 7)),
        ("2026-12-01 09:00:00", utc(2026, 12, 1, 8)),
        ("2026-12-01T09:00", utc(2026, 12, 1, 8)),
        ("2026-12-01T09:00:00.123456789", utc(2026, 12, 1, 8, 0, 0, 123456)),
        ("2026-03-29T02:30:00", utc(2026, 3, 29, 1, 30)),  # gap policy applies
        ("2026-12-01", utc(2026, 12, 1, 8)),  # all-day: 09:00 local
        ("2026-07-01", utc(2026, 7, 1, 7)),
        ("  2026-12-01  ", utc(2026, 12, 1, 8)),
    ],
)
def test_parse_when(value: str, expected: datetime) -> None:
    result = parse_when(value, BERLIN, NINE)
    assert result == expected
    assert result.tzinfo is not None and result.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value,zone,instant,wall_clock",
    [
        # naive: the wall clock as written, also inside the gap (the instant follows the policy)
        ("2031-03-30T02:30:00", BER, utc(2031, 3, 30, 1, 30), wall(2031, 3, 30, 2, 30)),
        ("2031-03-09T02:15", NYC, utc(2031, 3, 9, 7, 15), wall(2031, 3, 9, 2, 15)),
        # overlap: written once, read as the first 02:30
        ("2031-10-26T02:30:00", BER, utc(2031, 10, 26, 0, 30), wall(2031, 10, 26, 2, 30)),
        # with an offset: the instant, and its local time in the zone
        ("2031-10-26T02:30:00+01:00", BER, utc(2031, 10, 26, 1, 30), wall(2031, 10, 26, 2, 30)),
        ("2031-03-30T01:30:00Z", BER, utc(2031, 3, 30, 1, 30), wall(2031, 3, 30, 3, 30)),
        ("2031-03-30", BER, utc(2031, 3, 30, 7), wall(2031, 3, 30, 9)),
        ("2031-03-30T02:30", "+05:30", utc(2031, 3, 29, 21), wall(2031, 3, 30, 2, 30)),
    ],
)
def test_parse_when_wall_keeps_the_wall_clock_as_written(
    value: str, zone: str, instant: datetime, wall_clock: datetime
) -> None:
    when = parse_when_wall(value, load_zone(zone), NINE)
    assert when.instant == instant and when.instant.utcoffset() == timedelta(0)
    assert when.wall == wall_clock and when.wall.tzinfo is None
    assert parse_when(value, load_zone(zone), NINE) == instant


def test_parse_when_all_day_time_and_zone_are_used() -> None:
    assert parse_when("2026-12-01", NEW_YORK, time(7, 30)) == utc(2026, 12, 1, 12, 30)
    assert parse_when("2026-12-01T09:00:00", NEW_YORK, NINE) == utc(2026, 12, 1, 14)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tomorrow",
        "2026-13-01",
        "2026-02-30",
        "2026-12-01T25:00:00",
        "2026-12-01T09:61",
        "2026-12-01T09:00:00+25:00",
        "12/01/2026",
        "2026-12-01T09:00:00 +01:00",
        "1969-12-31",
        "9999-01-01",
        "0001-01-01T00:00:00Z",
        "2026-12-01T23:59:60Z",
        "2026-12-01T09:00:00+01:00x",
        "2026-1-1",
    ],
)
def test_parse_when_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_when(value, BERLIN, NINE)


def test_parse_when_rejects_non_string() -> None:
    with pytest.raises(ValueError):
        parse_when(20261201, BERLIN, NINE)  # type: ignore[arg-type]


# --- offsets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected,iso",
    [
        ("PT1H", Offset(seconds=3600), "PT1H"),
        ("PT15M", Offset(seconds=900), "PT15M"),
        ("PT90S", Offset(seconds=90), "PT1M30S"),
        ("PT1H30M", Offset(seconds=5400), "PT1H30M"),
        ("P1D", Offset(days=1), "P1D"),
        ("p1d", Offset(days=1), "P1D"),
        ("P1W", Offset(days=7), "P7D"),
        ("P1W2D", Offset(days=9), "P9D"),
        ("P1DT2H", Offset(days=1, seconds=7200), "P1DT2H"),
        ("PT24H", Offset(seconds=86400), "PT24H"),
        ("PT0S", Offset(), "PT0S"),
        ("P366D", Offset(days=366), "P366D"),
        (30, Offset(seconds=1800), "PT30M"),
        (0, Offset(), "PT0S"),
        ("30", Offset(seconds=1800), "PT30M"),
        (" 45 ", Offset(seconds=2700), "PT45M"),
        # iCalendar signs: "-" is before (the same as none), "+" is after the due time
        ("-PT15M", Offset(seconds=900), "PT15M"),
        ("-P1D", Offset(days=1), "P1D"),
        ("+PT15M", Offset(seconds=-900), "+PT15M"),
        ("+P1DT2H", Offset(days=-1, seconds=-7200), "+P1DT2H"),
        ("+p1w", Offset(days=-7), "+P7D"),
        ("+PT0S", Offset(), "PT0S"),
        ("+P366D", Offset(days=-366), "+P366D"),
    ],
)
def test_parse_offset(value: str | int, expected: Offset, iso: str) -> None:
    offset = parse_offset(value)
    assert offset == expected
    assert offset.iso() == iso
    assert parse_offset(offset.iso()) == offset  # canonical form round-trips


@pytest.mark.parametrize(
    "value,message",
    [
        (True, "duration or minutes"),
        (False, "duration or minutes"),
        (1.5, "duration or minutes"),
        (-5, "ambiguous"),
        ("-30", "ambiguous"),
        ("+30", "ambiguous"),
        ("--PT1H", "not an ISO 8601"),
        ("+-PT1H", "not an ISO 8601"),
        ("- PT1H", "not an ISO 8601"),
        ("+P367D", "longer than 366 days"),
        ("+P1M", "calendar months/years"),
        ("P1M", "calendar months/years"),
        ("P1Y", "calendar months/years"),
        ("P1Y2M3D", "calendar months/years"),
        ("garbage", "not an ISO 8601"),
        ("P", "not an ISO 8601"),
        ("PT", "not an ISO 8601"),
        ("P1DT", "not an ISO 8601"),
        ("PT0.5H", "not an ISO 8601"),
        ("1H", "not an ISO 8601"),
        ("", "not an ISO 8601"),
        ("P367D", "longer than 366 days"),
        ("P53W", "longer than 366 days"),
        ("PT9000H", "longer than 366 days"),
        (10**9, "longer than 366 days"),
        ("999999999", "longer than 366 days"),
    ],
)
def test_parse_offset_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_offset(value)  # type: ignore[arg-type]


# --- reminder instants -------------------------------------------------------------------


def test_reminder_instants_day_offsets_keep_wall_clock_time_across_dst() -> None:
    due = utc(2026, 3, 29, 7)  # 09:00 CEST, the day DST starts
    result = reminder_instants(due, BERLIN, [parse_offset("P1D"), parse_offset("PT24H")], [])
    # P1D: 09:00 CET the day before (08:00Z); PT24H: exactly 24 h earlier (08:00 CET, 07:00Z)
    assert result == [utc(2026, 3, 28, 7), utc(2026, 3, 28, 8)]


@pytest.mark.parametrize(
    "zone,due_wall,offset,expected",
    [
        # Berlin 2031-03-30 02:00 -> 03:00: 02:30 in the gap; P1D = 02:30 CET the day before
        ("Europe/Berlin", wall(2031, 3, 30, 2, 30), "P1D", utc(2031, 3, 29, 1, 30)),
        ("Europe/Berlin", wall(2031, 3, 30, 2, 30), "P1DT1H", utc(2031, 3, 29, 0, 30)),
        ("Europe/Berlin", wall(2031, 3, 30, 2, 30), "P7D", utc(2031, 3, 23, 1, 30)),
        # exact offsets count back from the instant the policy gives (01:30Z)
        ("Europe/Berlin", wall(2031, 3, 30, 2, 30), "PT1H", utc(2031, 3, 30, 0, 30)),
        # after the due time: a day after 02:30 is 02:30 CEST
        ("Europe/Berlin", wall(2031, 3, 30, 2, 30), "+P1D", utc(2031, 3, 31, 0, 30)),
        ("Europe/Berlin", wall(2031, 3, 30, 2, 30), "+PT15M", utc(2031, 3, 30, 1, 45)),
        # New York, 2031-03-09 02:00 EST -> 03:00 EDT
        ("America/New_York", wall(2031, 3, 9, 2, 15), "P1D", utc(2031, 3, 8, 7, 15)),
        # Lord Howe: half-hour DST, 2031-10-05 02:00 +10:30 -> 02:30 +11
        ("Australia/Lord_Howe", wall(2031, 10, 5, 2, 15), "P1D", utc(2031, 10, 3, 15, 45)),
        ("Australia/Lord_Howe", wall(2031, 10, 5, 2, 15), "PT15M", utc(2031, 10, 4, 15, 30)),
        # Dublin: negative DST (winter is the "summer" offset), 2031-03-30 01:00 GMT -> 02:00 IST
        ("Europe/Dublin", wall(2031, 3, 30, 1, 30), "P1D", utc(2031, 3, 29, 1, 30)),
        # a day after a time in the overlap (Berlin 2031-10-26 02:30 twice): 02:30 CET
        ("Europe/Berlin", wall(2031, 10, 25, 2, 30), "+P1D", utc(2031, 10, 26, 0, 30)),
        ("Europe/Berlin", wall(2031, 10, 27, 2, 30), "P1D", utc(2031, 10, 26, 0, 30)),
        # fixed offsets have no DST at all
        ("+05:30", wall(2031, 3, 30, 2, 30), "P1D", utc(2031, 3, 28, 21)),
        ("-03:00", wall(2031, 3, 30, 2, 30), "+PT30M", utc(2031, 3, 30, 6)),
    ],
)
def test_reminder_instants_from_the_wall_clock_as_written(
    zone: str, due_wall: datetime, offset: str, expected: datetime
) -> None:
    tz = load_zone(zone)
    due = resolve_local(due_wall, tz)
    assert reminder_instants(due, tz, [parse_offset(offset)], [], due_wall) == [expected]


def test_reminder_instants_day_offset_from_an_aware_due_in_the_overlap() -> None:
    due = utc(2031, 10, 26, 1, 30)  # the second 02:30 in Berlin (CET)
    assert reminder_instants(due, BERLIN, [parse_offset("P1D")], []) == [utc(2031, 10, 25, 0, 30)]
    assert reminder_instants(due, BERLIN, [parse_offset("PT1H")], []) == [utc(2031, 10, 26, 0, 30)]
    with pytest.raises(ValueError, match="naive"):
        reminder_instants(due, BERLIN, [Offset(days=1)], [], due)


def test_reminder_instants_exact_offset_across_gap() -> None:
    due = utc(2026, 3, 29, 1, 30)  # 03:30 CEST
    assert reminder_instants(due, BERLIN, [parse_offset("PT1H")], []) == [utc(2026, 3, 29, 0, 30)]


def test_reminder_instants_week_across_fall_back_new_york() -> None:
    due = utc(2026, 11, 5, 14)  # 09:00 EST
    assert reminder_instants(due, NEW_YORK, [parse_offset("P1W")], []) == [utc(2026, 10, 29, 13)]


def test_reminder_instants_merge_dedupe_sort() -> None:
    due = utc(2026, 12, 1, 8)
    offsets = [parse_offset(v) for v in ("PT1H", "P1D", 30, "PT60M", "P1DT2H")]
    remind_at = [
        datetime(2026, 12, 1, 8, 30, tzinfo=timezone(timedelta(hours=1))),  # == 07:30Z
        utc(2026, 12, 1, 7),  # duplicate of PT1H
    ]
    assert reminder_instants(due, BERLIN, offsets, remind_at) == [
        utc(2026, 11, 30, 6),
        utc(2026, 11, 30, 8),
        utc(2026, 12, 1, 7),
        utc(2026, 12, 1, 7, 30),
    ]
    assert all(
        dt.utcoffset() == timedelta(0) for dt in reminder_instants(due, BERLIN, offsets, remind_at)
    )


def test_reminder_instants_without_due_date_and_naive_input() -> None:
    assert reminder_instants(None, BERLIN, [parse_offset("P1D")], [utc(2026, 1, 1)]) == [
        utc(2026, 1, 1)
    ]
    with pytest.raises(ValueError):
        reminder_instants(wall(2026, 1, 1), BERLIN, [Offset()], [])


# --- ids and formats ---------------------------------------------------------------------

SAFE = re.compile(r"[A-Za-z0-9._-]+")
INSTANT = utc(2026, 12, 1, 7)


@pytest.mark.parametrize(
    "make,length",
    [
        (lambda u, t, i: task_key(u, t), len("rw-task-") + 16 + 1 + 32),
        (job_name, len("rw-") + 40),
        (reminder_id, len("rw-rem-") + 40),
        (occurrence_key, len("rw-occ-") + 16 + 1 + 32),
    ],
)
def test_ids(make: object, length: int) -> None:
    assert callable(make)
    cases = [
        ("user-456", 123),
        ("user-456", "123"),
        ("a|b", "c"),
        ("a", "b|c"),
        ("../x y/ü", "../../z"),
    ]
    ids = [make(user, task, INSTANT) for user, task in cases]
    assert len(set(ids)) == len(ids)  # int vs str, separator games: all distinct
    for (user, task), value in zip(cases, ids, strict=True):
        assert SAFE.fullmatch(value) and len(value) == length
        assert value == make(user, task, INSTANT)  # deterministic
        for raw in (user, str(task)):  # no raw input inside (hex-looking inputs aside)
            assert re.fullmatch(r"[0-9a-f]*", raw) or raw not in value
    with pytest.raises(ValueError):
        make("u", True, INSTANT)


def test_state_keys_carry_the_user_digest() -> None:
    assert task_key("u1", 1).split("-")[2] == occurrence_key("u1", 1, INSTANT).split("-")[2]
    assert task_key("u1", 1).split("-")[2] != task_key("u2", 1).split("-")[2]


def test_instant_ids_ignore_the_representation() -> None:
    berlin = INSTANT.astimezone(BERLIN)
    fixed = INSTANT.astimezone(timezone(timedelta(hours=-5)))
    assert job_name("u", 1, berlin) == job_name("u", 1, fixed) == job_name("u", 1, INSTANT)
    assert reminder_id("u", 1, berlin) == reminder_id("u", 1, INSTANT)
    assert job_name("u", 1, INSTANT) != job_name("u", 1, INSTANT + timedelta(seconds=1))
    assert job_name("u", 1, INSTANT) != job_name("u", 2, INSTANT)
    assert job_name("u", 1, INSTANT)[3:] != reminder_id("u", 1, INSTANT)[7:]
    with pytest.raises(ValueError):
        job_name("u", 1, wall(2026, 12, 1, 7))


@pytest.mark.parametrize(
    "value,utc_text,local_text",
    [
        (utc(2026, 12, 1, 8), "2026-12-01T08:00:00Z", "2026-12-01T09:00:00+01:00"),
        (utc(2026, 7, 1, 7), "2026-07-01T07:00:00Z", "2026-07-01T09:00:00+02:00"),
        (
            utc(2026, 7, 1, 7, 0, 0, 5),
            "2026-07-01T07:00:00.000005Z",
            "2026-07-01T09:00:00.000005+02:00",
        ),
        (
            datetime(2026, 12, 1, 3, tzinfo=timezone(timedelta(hours=-5))),
            "2026-12-01T08:00:00Z",
            "2026-12-01T09:00:00+01:00",
        ),
    ],
)
def test_formats(value: datetime, utc_text: str, local_text: str) -> None:
    assert format_utc(value) == utc_text
    assert format_local(value, BERLIN) == local_text
    assert parse_when(utc_text, UTC_ZONE, NINE) == value
    assert parse_when(local_text, UTC_ZONE, NINE) == value
