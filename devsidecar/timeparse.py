"""Pure parsers for the time formats the jobs API accepts.

- RFC 3339 instants (offset required, any number of fraction digits);
- Go durations (`"30s"`, `"1h30m"`, `"1.5h"`, `"500ms"`);
- ISO 8601 durations (`"PT30S"`, `"P1DT2H"`; a year is 365 days, a month 30);
- protobuf JSON Durations (`"5s"`, `"0.5s"`: seconds only).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)
_GO_UNITS = {
    "ns": timedelta(microseconds=0.001),
    "us": timedelta(microseconds=1),
    "µs": timedelta(microseconds=1),
    "μs": timedelta(microseconds=1),
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_ISO = re.compile(
    r"^P(?:(\d+(?:\.\d+)?)Y)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)
_PROTO_DURATION = re.compile(r"^(-?)(\d+)(?:\.(\d{1,9}))?s$")


def parse_rfc3339(text: str) -> datetime | None:
    """An aware UTC datetime, or None when `text` is not RFC 3339."""
    m = _RFC3339.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    micros = int((m.group(7) or "0")[:6].ljust(6, "0"))
    zone = m.group(8)
    if zone in ("Z", "z"):
        tz = UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        when = datetime(year, month, day, hour, minute, second, micros, tzinfo=tz)
    except ValueError:
        return None
    return when.astimezone(UTC)


def parse_go_duration(text: str) -> timedelta | None:
    """A Go `time.ParseDuration` value, or None."""
    body = text
    sign = 1
    if body[:1] in ("+", "-"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return timedelta(0)
    if not body:
        return None
    total = timedelta(0)
    pos = 0
    while pos < len(body):
        m = _GO_PART.match(body, pos)
        if m is None:
            return None
        total += _GO_UNITS[m.group(2)] * float(m.group(1))
        pos = m.end()
    return total * sign


def parse_iso_duration(text: str) -> timedelta | None:
    """An ISO 8601 duration (`P…`), or None."""
    m = _ISO.match(text)
    if m is None or text in ("P", "PT") or text.endswith("T"):
        return None
    years, months, weeks, days, hours, minutes, seconds = (float(g or 0) for g in m.groups())
    return timedelta(
        days=years * 365 + months * 30 + weeks * 7 + days,
        hours=hours,
        minutes=minutes,
        seconds=seconds,
    )


def parse_proto_duration(text: str) -> timedelta | None:
    """A protobuf JSON Duration (`"1.5s"`), or None (`"500ms"` is not one)."""
    m = _PROTO_DURATION.match(text)
    if m is None:
        return None
    value = timedelta(
        seconds=int(m.group(2)), microseconds=int((m.group(3) or "0").ljust(9, "0")) / 1000
    )
    return -value if m.group(1) else value


def parse_instant(text: str, now: datetime) -> datetime | None:
    """A due time or ttl: RFC 3339, else a Go duration, else an ISO one, from `now`."""
    when = parse_rfc3339(text)
    if when is not None:
        return when
    delta = parse_go_duration(text)
    if delta is None:
        delta = parse_iso_duration(text)
    if delta is None:
        return None
    return now + delta


def format_rfc3339(when: datetime) -> str:
    """UTC with `Z`, microseconds only when non-zero."""
    text = when.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")
