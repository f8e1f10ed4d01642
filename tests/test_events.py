"""Parsing of deliveries: envelopes, bare events, aliases, and every invalid form."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from worker.errors import InvalidEvent
from worker.events import Ignored, TaskEvent, parse_delivery, parse_document

BASE = {"event_type": "task.created", "task_id": 7, "user_id": "u1",
        "timestamp": "2026-11-26T10:00:00+01:00"}


def ce(data: object, **extra: object) -> bytes:
    env = {"specversion": "1.0", "id": "x", "source": "todo", "type": "com.dapr.event.sent",
           "datacontenttype": "application/json", "data": data, **extra}
    return json.dumps(env).encode()


def test_cloudevent_envelope() -> None:
    ev = parse_delivery(ce({**BASE, "payload": {"title": "T"}}, traceparent="00-abc-def-01"))
    assert isinstance(ev, TaskEvent)
    assert ev.task_id == 7 and ev.user_id == "u1" and ev.event_type == "task.created"
    assert ev.timestamp == datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    assert ev.changes == {"title": "T"} and ev.trace_id == "00-abc-def-01"


def test_bare_event_and_string_task_id() -> None:
    ev = parse_delivery(json.dumps({**BASE, "task_id": "t-9"}).encode())
    assert isinstance(ev, TaskEvent) and ev.task_id == "t-9"


def test_type_from_cloudevent_when_data_has_none() -> None:
    data = {k: v for k, v in BASE.items() if k != "event_type"}
    ev = parse_delivery(ce(data, type="task.deleted"))
    assert isinstance(ev, TaskEvent) and ev.event_type == "task.deleted"


def test_data_as_json_string() -> None:
    ev = parse_delivery(ce(json.dumps(BASE)))
    assert isinstance(ev, TaskEvent) and ev.task_id == 7


@pytest.mark.parametrize("etype", ["task.archived", "user.created", "com.dapr.event.sent"])
def test_other_types_are_ignored(etype: str) -> None:
    assert parse_delivery(ce({**BASE, "event_type": etype})) == Ignored(etype)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"due_date": "2026-12-01"}, {"due_at": "2026-12-01"}),
        ({"due_at": "a", "due_date": "b"}, {"due_at": "a"}),
        ({"remind_before": "PT1H"}, {"reminders": ["PT1H"]}),
        ({"remind_before_minutes": 30}, {"reminders": [30]}),
        ({"reminders": ["PT1H", 30, "P1D"]}, {"reminders": ["PT1H", 30, "P1D"]}),
        ({"reminders": 15.0}, {"reminders": [15]}),
        ({"remind_at": "2026-12-01T07:30:00Z"}, {"remind_at": ["2026-12-01T07:30:00Z"]}),
        ({"recurrence": {"rrule": "FREQ=DAILY"}}, {"recurrence": {"rrule": "FREQ=DAILY"}}),
        ({"due_at": None}, {"due_at": None}),
        ({"unknown": 1}, {}),
        # what task services really send: "" is a cleared field like null
        ({"due_at": "", "recurrence": " ", "title": "", "timezone": ""},
         {"due_at": None, "recurrence": None, "title": None, "timezone": None}),
        ({"reminders": "", "remind_at": None}, {"reminders": None, "remind_at": None}),
        # entries are only normalized here; the plan parses and reports each one
        ({"reminders": ["PT1H", "", None, True, 1.5, 30.0]},
         {"reminders": ["PT1H", "", None, True, 1.5, 30]}),
        ({"remind_before_minutes": "PT1H"}, {"reminders": ["PT1H"]}),
    ],
)
def test_payload_aliases(payload: dict[str, object], expected: dict[str, object]) -> None:
    ev = parse_document({**BASE, "payload": payload})
    assert isinstance(ev, TaskEvent) and ev.changes == expected


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"hello": 1}', "neither a CloudEvent nor a task event"),
        (json.dumps({**BASE, "task_id": None}).encode(), "task_id"),
        (json.dumps({**BASE, "task_id": True}).encode(), "task_id"),
        (json.dumps({**BASE, "task_id": 1.5}).encode(), "task_id"),
        (json.dumps({**BASE, "task_id": ""}).encode(), "task_id"),
        (json.dumps({**BASE, "task_id": 2**70}).encode(), "task_id"),
        (json.dumps({**BASE, "user_id": 5}).encode(), "user_id"),
        (json.dumps({**BASE, "user_id": "x" * 5000}).encode(), "user_id"),
        (json.dumps({**BASE, "timestamp": "yesterday"}).encode(), "timestamp"),
        (json.dumps({**BASE, "timestamp": "2026-11-26T10:00:00"}).encode(), "offset"),
        (json.dumps({k: v for k, v in BASE.items() if k != "timestamp"}).encode(), "timestamp"),
        (json.dumps({**BASE, "event_type": 5}).encode(), "event_type"),
        (json.dumps({**BASE, "payload": [1]}).encode(), "payload"),
        (json.dumps({**BASE, "payload": {"timezone": 5}}).encode(), "payload.timezone"),
        (json.dumps({**BASE, "payload": {"timezone": ["UTC"]}}).encode(), "payload.timezone"),
        (ce([1]), "not a JSON object"),
        (ce("not json"), "not JSON"),
        (json.dumps({"specversion": "1.0", "type": "task.created"}).encode(), "no data"),
    ],
)
def test_invalid(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_delivery(body)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ({"due_at": 5}, "due_at", "payload.due_at: must be a string"),
        ({"due_date": "x" * 65}, "due_at", "payload.due_date: must be a string"),
        ({"title": {"a": 1}}, "title", "payload.title: must be a string"),
        ({"reminders": list(range(101))}, "reminders", "payload.reminders: more than 100"),
        ({"remind_at": list(range(101))}, "remind_at", "payload.remind_at: more than 100"),
        ({"recurrence": 5}, "recurrence", "payload.recurrence: must be a rule string"),
        ({"recurrence": ["FREQ=DAILY"]}, "recurrence", "payload.recurrence: must be a rule"),
    ],
)
def test_unusable_field_is_rejected_alone(payload: dict[str, object], field: str,
                                          reason: str) -> None:
    ev = parse_document({**BASE, "payload": {**payload, "title": "kept"} if field != "title"
                         else {**payload, "due_at": "2026-12-01"}})
    assert isinstance(ev, TaskEvent)
    assert list(ev.rejected) == [field] and ev.rejected[field].startswith(reason)
    assert field not in ev.changes and len(ev.changes) == 1  # the rest of the payload stays


def test_fingerprint_counts_rejected_fields_and_is_unchanged_without() -> None:
    a = parse_document({**BASE, "payload": {"due_at": 5}})
    b = parse_document({**BASE, "payload": {"due_at": 5}})
    c = parse_document({**BASE, "payload": {}})
    assert isinstance(a, TaskEvent) and isinstance(b, TaskEvent) and isinstance(c, TaskEvent)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_fingerprint_is_stable_and_distinguishes_content() -> None:
    a = parse_document({**BASE, "payload": {"title": "a"}})
    b = parse_document({**BASE, "payload": {"title": "a"}})
    c = parse_document({**BASE, "payload": {"title": "b"}})
    assert isinstance(a, TaskEvent) and isinstance(b, TaskEvent) and isinstance(c, TaskEvent)
    assert a.fingerprint == b.fingerprint != c.fingerprint
