"""Task events in (CloudEvent envelope or bare), structurally validated.

Only the shape is checked here; time values are parsed in `plan`, where the
task's effective time zone (possibly from an earlier event) is known.

What makes a whole event invalid (InvalidEvent, DROP) is only what leaves nothing
to apply: not JSON, not an object, neither a CloudEvent nor a task event, no
usable ids or timestamp, a payload that is not an object, a time zone that is not
a string. An optional payload field of a JSON type that can never be right is
*rejected* alone (`TaskEvent.rejected`, reported by the plan as a problem) and the
rest of the event still applies. `null` and `""` mean the field is cleared.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Final

import structlog

from worker import jsoncodec
from worker.errors import InvalidEvent, shown
from worker.records import Order
from worker.schedule import MAX_YEAR, MIN_YEAR, UTC

TASK_EVENT_TYPES: Final = frozenset(
    {"task.created", "task.updated", "task.completed", "task.deleted", "task.snoozed"}
)
MAX_ID_LENGTH: Final = 1024  # ids are hashed, never used raw; this only bounds memory
MAX_LIST: Final = 100  # reminders per task: enough for people, bounded for the sidecar
# A longer title is cut to this many characters (and logged), not refused: the task
# and its reminders matter more than the end of its title.
MAX_TITLE: Final = 2000
log = structlog.get_logger("worker")

_FINGERPRINT_ENCODE: Final = jsoncodec.stable_encoder(sort_keys=True, default=str)

# Payload field -> accepted names, first wins when several are present.
ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "title": ("title",),
    "due_at": ("due_at", "due_date"),
    "timezone": ("timezone",),
    "reminders": ("reminders", "remind_before", "remind_before_minutes"),
    "remind_at": ("remind_at",),
    "recurrence": ("recurrence",),
    # the reminder rules (docs/reminders.md)
    "misfire_grace": ("misfire_grace",),
    "repeat": ("repeat",),
    "quiet_hours": ("quiet_hours",),
    "floating": ("floating",),
    "until": ("until",),  # task.snoozed
    "for": ("for",),  # task.snoozed
}


@dataclass(frozen=True)
class TaskEvent:
    """One task event, ids checked, payload fields raw but of acceptable JSON types.

    `changes` holds only the fields the event carried (None = explicitly cleared);
    `rejected` the payload fields left out as unusable, with the reason.
    """

    event_type: str
    task_id: int | str
    user_id: str
    timestamp: datetime
    event_id: str | None = None
    trace_id: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    # For logs only (never in the fingerprint): the envelope's id, and payload fields
    # the worker does not know (a typo like `remind_befor`) or that an alias shadowed.
    ce_id: str | None = None
    ignored: tuple[str, ...] = ()

    @cached_property
    def fingerprint(self) -> str:
        """Stable digest of the event's meaning: equal for a redelivery of the same event."""
        parts: list[object] = [self.event_type, self.event_id, self.changes]
        if self.rejected:  # only when present, so digests of clean events stay as they were
            parts.append(self.rejected)
        blob = _FINGERPRINT_ENCODE(parts)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @cached_property
    def order(self) -> Order:
        """Where the event stands among its task's events (one instance: its text is
        formatted once for the job names, the job data and the record)."""
        return Order(self.timestamp, self.fingerprint)


@dataclass(frozen=True)
class Ignored:
    """A well-formed delivery whose type is not a task event: acknowledged, counted."""

    event_type: str


def parse_delivery(body: bytes) -> TaskEvent | Ignored:
    """Parse a pub/sub delivery (structured CloudEvent or a bare task event)."""
    try:
        doc = jsoncodec.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidEvent("body is not JSON") from None
    return parse_document(doc)


def parse_document(doc: object) -> TaskEvent | Ignored:
    """Same as parse_delivery for an already decoded JSON value (replay lines)."""
    if not isinstance(doc, dict):
        raise InvalidEvent("event is not a JSON object")
    trace_id: str | None = None
    ce_type: str | None = None
    ce_id: str | None = None
    if "specversion" in doc:
        ce_id = doc["id"][:256] if isinstance(doc.get("id"), str) else None
        ce_type = doc.get("type") if isinstance(doc.get("type"), str) else None
        trace = doc.get("traceparent") or doc.get("traceid")
        trace_id = trace if isinstance(trace, str) and len(trace) < 256 else None
        if "data" not in doc:
            if "data_base64" in doc:
                raise InvalidEvent("CloudEvent data is binary (data_base64), not a JSON object")
            if ce_type in TASK_EVENT_TYPES:
                raise InvalidEvent("CloudEvent has no data")
            return Ignored(ce_type or "")
        data = doc["data"]
        if isinstance(data, str):  # published as text/plain: the JSON arrives as a string
            try:
                data = json.loads(data)
            except json.JSONDecodeError:
                raise InvalidEvent("CloudEvent data is a string that is not JSON") from None
        if not isinstance(data, dict):
            raise InvalidEvent("CloudEvent data is not a JSON object")
    elif "event_type" in doc or "task_id" in doc:
        data = doc
    else:
        raise InvalidEvent("neither a CloudEvent nor a task event")
    event_type = data.get("event_type", ce_type)
    if not isinstance(event_type, str):
        raise InvalidEvent("event_type missing or not a string")
    if event_type not in TASK_EVENT_TYPES:
        return Ignored(event_type[:100])
    changes, rejected, ignored = _changes(data.get("payload"))
    return TaskEvent(
        event_type=event_type,
        task_id=_task_id(data.get("task_id")),
        user_id=_user_id(data.get("user_id")),
        timestamp=_timestamp(data.get("timestamp")),
        event_id=_event_id(data.get("event_id")),
        trace_id=trace_id,
        changes=changes,
        rejected=rejected,
        ce_id=ce_id,
        ignored=ignored,
    )


def _task_id(value: object) -> int | str:
    if isinstance(value, bool) or value is None:
        raise InvalidEvent("task_id missing or not an integer or string")
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise InvalidEvent("task_id out of range")
        return value
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    raise InvalidEvent("task_id missing, empty, too long, or not an integer or string")


def _user_id(value: object) -> str:
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    raise InvalidEvent("user_id missing, empty, too long, or not a string")


def _event_id(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool) and len(str(value)) <= 256:
        return str(value)
    raise InvalidEvent("event_id is not a short string")


def _timestamp(value: object) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidEvent("timestamp missing or not a string")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent("timestamp is not RFC 3339") from None
    if ts.tzinfo is None:
        raise InvalidEvent("timestamp has no offset (RFC 3339 needs Z or +hh:mm)")
    # The window of every instant the worker handles (schedule.check_window): far
    # enough from datetime's ends that offset and DST arithmetic cannot overflow.
    if not MIN_YEAR <= ts.year <= MAX_YEAR:
        raise InvalidEvent(f"timestamp out of range (years {MIN_YEAR}..{MAX_YEAR})")
    return ts.astimezone(UTC)


def _changes(payload: object) -> tuple[dict[str, Any], dict[str, str], tuple[str, ...]]:
    """The fields read (normalized), the fields rejected with why, and the payload's
    fields no alias reads or that an earlier alias shadows (sorted: `ignored`)."""
    if payload is None:
        return {}, {}, ()
    if not isinstance(payload, dict):
        raise InvalidEvent("payload is not a JSON object")
    changes: dict[str, Any] = {}
    rejected: dict[str, str] = {}
    read: set[str] = set()
    for name, names in ALIASES.items():
        for alias in names:
            if alias in payload:
                read.add(alias)
                try:
                    changes[name] = _checked(name, payload[alias])
                except ValueError as exc:
                    said = f"payload.{alias}: {exc}{shown(payload[alias], str(exc))}"
                    if name == "timezone":  # every wall-clock time depends on it
                        raise InvalidEvent(said) from None
                    rejected[name] = said
                break
    ignored: tuple[str, ...] = ()
    if len(read) < len(payload):
        ignored = tuple(sorted(str(k)[:100] for k in payload if k not in read))[:MAX_LIST]
    return changes, rejected, ignored


def is_blank(value: object) -> bool:
    """`null` or an empty string: a cleared field, or a list entry that says nothing."""
    return value is None or (isinstance(value, str) and not value.strip())


def _checked(name: str, value: object) -> object:
    """Normalize one field; ValueError when its JSON type can never be right or it is huge.

    Entries of a list are only normalized here (whole floats made integers); each is
    parsed, skipped when blank, and reported alone when unusable, by the plan.
    """
    if is_blank(value):
        return None
    if name == "title" and isinstance(value, str) and len(value) > MAX_TITLE:
        log.warning("title truncated", length=len(value), bound=MAX_TITLE)
        return value[:MAX_TITLE]
    if name in ("title", "due_at", "timezone"):
        if isinstance(value, str) and len(value) <= (MAX_TITLE if name == "title" else 64):
            return value
        raise ValueError("must be a string" + ("" if name == "title" else " of at most 64"))
    if name in ("reminders", "remind_at"):
        items = value if isinstance(value, list) else [value]
        if len(items) > MAX_LIST:
            raise ValueError(f"more than {MAX_LIST} entries")
        return [int(i) if isinstance(i, float) and math.isfinite(i) and i.is_integer() else i
                for i in items]
    if name == "recurrence":
        if isinstance(value, str) and len(value) <= 1000:
            return value
        if isinstance(value, dict) and len(json.dumps(value)) <= 20_000:
            return value
        raise ValueError("must be a rule string or an object")
    if name in ("misfire_grace", "until", "for"):
        if isinstance(value, str) and len(value) <= 64:
            return value
        raise ValueError("must be a string of at most 64")
    if name in ("repeat", "quiet_hours"):
        if isinstance(value, dict | str) and len(json.dumps(value)) <= 200:
            return value
        raise ValueError("must be an object")
    if name == "floating":
        if isinstance(value, bool):
            return value
        raise ValueError("must be true or false")
    raise AssertionError(name)  # pragma: no cover
