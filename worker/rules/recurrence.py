"""Recurrences, pure: a task's series (rule, start, exdates, rdates) and its next occurrence.

No I/O, no clock reads (`after` is passed in); results are aware UTC. Rule text is parsed
by `worker.rrule.parse` and expanded by `worker.rrule.expand` in naive wall-clock time;
every occurrence then goes through `schedule.resolve_local`, so the DST policy applies.

Decisions:
- Wall-clock values (dtstart, exdates, rdates, the current occurrence) are naive local
  times of the task's zone, kept as written: 02:30 on Berlin's spring-forward day stays
  02:30, so every occurrence takes its time of day from it (RFC 5545 §3.3.10); only an
  occurrence that does not exist is shifted, by `resolve_local` (02:30 -> 01:30Z).
- An aware input value is read as the zone's wall clock of its instant, except when
  the digits as written resolve to that very instant in the zone (what `format_wall`
  writes for a gap time, "02:30+01:00"): then the digits are kept, so what we send
  downstream comes back unchanged.
- DTSTART is always the first occurrence and counts for COUNT, even when the rule itself
  would not produce it (RFC 5545). RDATEs add occurrences (not counted for COUNT, not
  bounded by UNTIL); EXDATEs remove occurrences (a bare date: all of that local day) and
  do not make COUNT reach further.
- The search follows the zone's real UTC offsets near the instants searched
  (`zone_offsets`), not a constant margin, so Apia's 24-hour jump of 2011 is searched
  right and costs no more than Berlin's hour.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from worker.rrule.expand import MAX_YEAR, Expander
from worker.rrule.parse import MAX_COUNT, MAX_INTERVAL, parse_rule
from worker.schedule import UTC, check_window, resolve_local, to_utc, wall_clock

__all__ = ["MAX_COUNT", "MAX_INTERVAL", "Recurrence", "format_wall", "next_occurrence",
           "offset_jump", "parse_recurrence", "parse_wall", "series_start", "zone_offsets"]

MAX_DATES = 1000  # exdates or rdates per series
_WHEN = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(?:([Zz])|([+-])(\d{2}):?(\d{2}))?)?"
)
Anchor = Literal["due", "completion"]


@dataclass(frozen=True)
class Recurrence:
    """A task's series. Every datetime here is a NAIVE wall-clock time of the task's zone."""

    rrule: str  # normalized rule text
    dtstart: datetime | None = None  # series start as written; None: the current occurrence
    exdates: tuple[datetime | date, ...] = ()  # a date removes the whole local day
    rdates: tuple[datetime, ...] = ()
    anchor: Anchor = "due"

    def to_json(self, zone: ZoneInfo, start: datetime | None = None) -> dict[str, Any]:
        """The object form sent downstream, times as wall clock with offset (`format_wall`).

        `start` (naive) is written as dtstart when given (the series start: docs/events.md,
        "Next occurrence out").
        """
        dtstart = start if start is not None else self.dtstart
        out: dict[str, Any] = {
            "rrule": self.rrule,
            "dtstart": format_wall(dtstart, zone) if dtstart is not None else None,
            "exdates": [format_wall(d, zone) if isinstance(d, datetime) else d.isoformat()
                        for d in self.exdates],
        }
        if self.rdates:
            out["rdates"] = [format_wall(d, zone) for d in self.rdates]
        if self.anchor != "due":
            out["anchor"] = self.anchor
        return out

    def to_record(self) -> dict[str, Any]:
        """JSON for the state record: naive ISO times (no offset), bare dates YYYY-MM-DD."""
        out: dict[str, Any] = {
            "rrule": self.rrule,
            "dtstart": self.dtstart.isoformat() if self.dtstart else None,
            "exdates": [d.isoformat() for d in self.exdates],
            "rdates": [d.isoformat() for d in self.rdates],
        }
        if self.anchor != "due":
            out["anchor"] = self.anchor
        return out

    @classmethod
    def from_record(cls, d: Mapping[str, Any], zone: ZoneInfo | None = None) -> Recurrence:
        """Inverse of `to_record`; also reads the older form with UTC times, given `zone`."""

        def wall(text: str) -> datetime:
            value = datetime.fromisoformat(text)
            if value.tzinfo is None:
                return value
            if zone is None:
                raise ValueError("a stored recurrence with UTC times needs the zone")
            return wall_clock(value, zone)

        def day_or_wall(text: str) -> datetime | date:
            return date.fromisoformat(text) if len(text) == 10 else wall(text)

        anchor = _anchor(d.get("anchor"))
        return cls(
            rrule=d["rrule"],
            dtstart=wall(d["dtstart"]) if d.get("dtstart") else None,
            exdates=tuple(day_or_wall(x) for x in d.get("exdates") or ()),
            rdates=tuple(wall(x) for x in d.get("rdates") or ()),
            anchor=anchor,
        )


def format_wall(wall: datetime, zone: ZoneInfo) -> str:
    """A wall-clock time with the offset the DST policy reads it with.

    "2026-12-01T09:00:00+01:00"; a time in a gap keeps its digits with the offset from
    before the gap ("2031-03-30T02:30:00+01:00", the instant 01:30Z), so the wall clock
    as written survives a round trip through the task service.
    """
    instant = resolve_local(wall, zone)
    offset = wall - instant.replace(tzinfo=None)
    return wall.replace(tzinfo=timezone(offset)).isoformat()


def parse_wall(value: object, zone: ZoneInfo) -> datetime | date:
    """A due_at form -> naive wall clock in `zone` (see the module docstring); a bare date
    stays a date."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"expected a date or date-time string, not {value!r:.40}")
    match = _WHEN.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a date or RFC 3339 date-time: {value!r:.80}")
    year, month, day, hour, minute, second, zulu, sign, off_h, off_m = match.groups()
    try:
        if hour is None:
            bare = date(int(year), int(month), int(day))
            check_window(datetime.combine(bare, time()))
            return bare
        naive = datetime(int(year), int(month), int(day), int(hour), int(minute),  # noqa: DTZ001
                         int(second or 0))
    except ValueError as exc:
        raise ValueError(f"invalid date-time {value!r:.80}: {exc}") from None
    check_window(naive)
    if not zulu and not sign:
        return naive
    if sign and (int(off_h) > 23 or int(off_m) > 59):
        raise ValueError(f"invalid UTC offset in {value!r:.80}")
    delta = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
    instant = naive.replace(tzinfo=timezone(-delta if sign == "-" else delta)).astimezone(UTC)
    return naive if resolve_local(naive, zone) == instant else wall_clock(instant, zone)


def _anchor(value: object) -> Anchor:
    if value in (None, "", "due"):
        return "due"
    if value == "completion":
        return "completion"
    raise ValueError('recurrence anchor must be "due" or "completion"')


def _date_list(raw: object, what: str) -> list[object]:
    items = [] if raw is None or raw == "" else [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or len(items) > MAX_DATES:
        raise ValueError(f"{what} must be a date-time or a list of at most {MAX_DATES}")
    return items


def parse_recurrence(value: object, zone: ZoneInfo, all_day_time: time) -> Recurrence:
    """payload.recurrence -> Recurrence: RRULE text, a shorthand, or the object form
    {"rrule", "dtstart", "exdates", "rdates", "anchor"}. ValueError says what is wrong."""
    if not isinstance(value, Mapping):
        if not isinstance(value, str):
            raise ValueError("recurrence must be an RRULE string, a shorthand or an object "
                             "with rrule")
        return Recurrence(parse_rule(value).text)
    extra = sorted(str(k) for k in value if k not in {"rrule", "dtstart", "exdates",
                                                      "rdates", "anchor"})
    if extra:
        raise ValueError(f"unknown recurrence field(s): {', '.join(extra)[:80]}")
    text = value.get("rrule")
    if not isinstance(text, str):
        raise ValueError("recurrence must be an RRULE string, a shorthand or an object with rrule")
    rule = parse_rule(text)

    def moment(item: object) -> datetime:
        parsed = parse_wall(item, zone)
        return parsed if isinstance(parsed, datetime) else datetime.combine(parsed, all_day_time)

    dtstart = None if value.get("dtstart") in (None, "") else moment(value["dtstart"])
    exdates = {parse_wall(x, zone) for x in _date_list(value.get("exdates"), "exdates")}
    rdates = {moment(x) for x in _date_list(value.get("rdates"), "rdates")}
    anchor = _anchor(value.get("anchor"))
    ordered = sorted(exdates, key=lambda d: d if isinstance(d, datetime)
                     else datetime.combine(d, time()))
    return Recurrence(rule.text, dtstart, tuple(ordered), tuple(sorted(rdates)), anchor)


def series_start(rec: Recurrence, current: datetime) -> datetime:
    """The first occurrence of the series (naive wall clock): dtstart, else `current`."""
    return rec.dtstart if rec.dtstart is not None else current


def zone_offsets(zone: ZoneInfo, instant: datetime) -> frozenset[timedelta]:
    """The UTC offsets the zone uses within 2 days of `instant` (one unless near a change).

    Sampled hourly (no zone keeps an offset for less than an hour): Berlin's DST gives
    +01/+02, Lord Howe's +10:30/+11, Troll's +00/+02, Apia's 2011-12-30 -10/+14.
    """
    return _offsets(zone, to_utc(instant, "instant").replace(minute=0, second=0, microsecond=0))


def offset_jump(zone: ZoneInfo, instant: datetime) -> timedelta:
    """Largest change of the zone's UTC offset within 2 days of `instant` (0 if none)."""
    offsets = zone_offsets(zone, instant)
    return max(offsets) - min(offsets)


@lru_cache(maxsize=4096)
def _offsets(zone: ZoneInfo, hour: datetime) -> frozenset[timedelta]:
    offsets = set()
    for h in range(-48, 49):
        offset = (hour + timedelta(hours=h)).astimezone(zone).utcoffset()
        assert offset is not None
        offsets.add(offset)
    return frozenset(offsets)


@lru_cache(maxsize=1024)
def _expander(rrule: str, start: datetime) -> Expander:
    return Expander(parse_rule(rrule), start)


def next_occurrence(
    rec: Recurrence, zone: ZoneInfo, current: datetime, after: datetime
) -> datetime | None:
    """First occurrence (aware UTC) strictly after the occurrence `current` (naive wall
    clock) and after the instant `after`; None when the series has ended.

    Occurrences are produced in wall-clock order, which is instant order except near a
    change of UTC offset. So the search runs once per offset o in use near the instants
    involved: a wall clock w read with offset o is after the cutoff c and before the best
    instant b found so far only if c + o < w < b + o, and that window closes fast.
    """
    if current.tzinfo is not None:
        raise ValueError("current must be a naive wall-clock time")
    rule = parse_rule(rec.rrule)
    cutoff = max(resolve_local(current, zone), to_utc(after, "after"))
    stop = None
    if rule.until_utc is not None and rule.until_utc <= cutoff:
        stop = datetime.min  # noqa: DTZ901 - ended: only DTSTART and rdates may be left
    elif rule.until_utc is not None and rule.until_utc.year < MAX_YEAR:
        # UNTIL is an instant: a wall-clock bound with the zone's margin there
        stop = wall_clock(rule.until_utc, zone) + offset_jump(zone, rule.until_utc)
    exdays = {d for d in rec.exdates if not isinstance(d, datetime)}
    excluded = {resolve_local(d, zone) for d in rec.exdates if isinstance(d, datetime)}
    start = series_start(rec, current).replace(microsecond=0)
    expander = _expander(rule.text, start)
    naive_cutoff = cutoff.replace(tzinfo=None)
    best: datetime | None = None
    done: set[timedelta] = set()
    todo = set(zone_offsets(zone, cutoff))
    while todo:
        offset = max(todo)  # the largest first: its first candidate is after the cutoff
        todo.discard(offset)
        done.add(offset)
        low = naive_cutoff + offset
        ruled = ((t, True) for t in expander.occurrences(low, stop))
        extra = sorted((t, False) for t in rec.rdates if t >= low)
        for local, from_rule in heapq.merge(ruled, extra):
            if best is not None and local >= best.replace(tzinfo=None) + offset:
                break  # read with this offset it cannot beat `best`; others are scanned too
            instant = resolve_local(local, zone)
            if instant <= cutoff or instant in excluded or local.date() in exdays:
                continue
            if (from_rule and rule.until_utc is not None and instant > rule.until_utc
                    and local != start):
                continue  # UNTIL bounds the rule's members; DTSTART is always an occurrence
            if best is None or instant < best:
                best = instant
        if best is not None:  # offsets in use near the best instant must be scanned too
            todo |= zone_offsets(zone, best) - done
    return best


SUBDAILY_FREQS = frozenset({"HOURLY", "MINUTELY"})
_COUNT_PART = re.compile(r";?COUNT=\d+")


def next_from_completion(
    rec: Recurrence, zone: ZoneInfo, due_wall: datetime | None, completed: datetime
) -> tuple[datetime, Recurrence] | None:
    """The next occurrence of a completion-anchored series (`anchor: "completion"`), and
    the series to send downstream with it; None when the series has ended.

    The series restarts at the completion (docs/reminders.md): for daily and coarser rules
    at the completion's local date with `due_wall`'s time of day (DAILY;INTERVAL=3,
    due 09:00, done Monday 20:00 -> Thursday 09:00); for hourly and finer rules at the
    completion's wall-clock time. UNTIL ends the series as usual; EXDATEs still apply;
    RDATEs have no meaning without a fixed grid and are not used.
    COUNT counts the task instances left, this one included: each next occurrence is
    sent with COUNT one less, and completing the instance of COUNT=1 ends the series.
    Depends only on the record and the completion's timestamp.
    """
    if due_wall is not None and due_wall.tzinfo is not None:
        raise ValueError("due_wall must be a naive wall-clock time")
    rule = parse_rule(rec.rrule)
    if rule.count is not None and rule.count <= 1:
        return None
    done_wall = wall_clock(to_utc(completed, "completed"), zone).replace(microsecond=0)
    if rule.freq in SUBDAILY_FREQS or due_wall is None:
        start = done_wall
    else:
        start = datetime.combine(done_wall.date(), due_wall.time().replace(microsecond=0))
    uncounted = _COUNT_PART.sub("", rule.text)
    nxt = next_occurrence(Recurrence(uncounted, start, rec.exdates), zone, start, completed)
    if nxt is None:
        return None
    text = parse_rule(uncounted if rule.count is None
                      else f"{uncounted};COUNT={rule.count - 1}").text
    return nxt, Recurrence(text, None, rec.exdates, (), "completion")
