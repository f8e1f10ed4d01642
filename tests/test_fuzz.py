"""Hostile and malformed input, property-based: the parser, the time math, the planner and
the ASGI app never raise anything but their documented error (InvalidEvent, ValueError)
and never answer 500 or RETRY to bad input (DROP with a reason instead); user-given ids
never reach a sidecar URL or a state key; absurd dates, offsets and rules stay bounded."""

from __future__ import annotations

import json
import re
import resource
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any

import anyio
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from devsidecar import DevSidecar, ManualClock, SidecarConfig
from tests.cluster import SAFE_JOB, SAFE_KEY
from worker.dapr.sidecar import Sidecar
from worker.errors import InvalidEvent
from worker.events import TaskEvent, parse_delivery, parse_document
from worker.metrics import Metrics
from worker.plan import PlanConfig, make_plan
from worker.records import dump_record, load_record
from worker.rules.recurrence import (
    next_occurrence,
    parse_recurrence,
)
from worker.schedule import (
    load_zone,
    parse_offset,
    parse_when,
    wall_clock,
)
from worker.server.app import MAX_BODY, WorkerApp
from worker.service import Service
from worker.settings import load_settings

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
FAST = settings(max_examples=150, deadline=timedelta(seconds=2),
                suppress_health_check=[HealthCheck.too_slow])

HOSTILE = ["/", "..", "../../etc/passwd", "a/b", "?x=1", "#frag", "a||b", "||", "%2F%2e%2e",
           "üser ✓ 名前", "\x00", "\n\r", " ", "a" * 10_000, "a" * 1024, "a" * 1025,
           "{{7*7}}", "' OR 1=1 --", "\ud800"]
ids = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40),
                st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), st.none(),
                st.floats(allow_nan=True), st.lists(st.integers(), max_size=2),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                      st.text(max_size=30), st.sampled_from(HOSTILE))
json_any = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
# Instants at the edges of the calendar: a UTC offset takes them past datetime's range.
EDGES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00", "0001-01-01T00:00:00",
         "9999-12-31T23:59:59", "0001-01-01", "9999-12-31", "0001-01-01T00:59:59+14:00",
         "9999-12-31T23:59:59.999999-12:00", "1970-01-01T00:00:00Z", "9000-12-31T23:00:00Z"]
EDGE_ZONES = ["America/New_York", "Pacific/Kiritimati", "Etc/GMT+12", "Pacific/Apia",
              "Antarctica/Troll", "+14:00", "-12:00", "UTC"]
dates = st.one_of(
    st.sampled_from(EDGES),
    st.sampled_from(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2026-02-30",
                     "2026-11-26T25:00:00Z", "2026-11-26T10:00:00+99:00", "2026-11-26",
                     "2026-11-26T10:00:00", "2026-11-26T10:00:00.1234567891Z", "", "now",
                     "1969-12-31T23:59:59Z", "2026-11-26T10:00:00+01:00"]),
    st.text(max_size=30), st.integers(), st.none())
offsets = st.one_of(
    st.sampled_from(["PT15M", "P1D", "P1W", "P1Y", "P1M", "-PT1M", "PT999999999S",
                     "P999999W", "P", "PT", "1e9", "+15", "PT0S"]),
    st.integers(min_value=-(2**64), max_value=2**64), st.floats(), st.text(max_size=15))
rules = st.one_of(
    st.sampled_from([
        "FREQ=SECONDLY", "FREQ=MINUTELY", "FREQ=DAILY;COUNT=1000000000",
        "FREQ=DAILY;INTERVAL=1000000000", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;COUNT=100000",
        "FREQ=DAILY;UNTIL=99991231T000000Z", "FREQ=HOURLY;BYHOUR=25", "RRULE:FREQ=WEEKLY",
        "FREQ=MONTHLY;BYSETPOS=-1;BYDAY=MO,TU,WE,TH,FR", "DTSTART:20260101T000000Z",
        "FREQ=DAILY\nRRULE:FREQ=HOURLY", "FREQ=YEARLY;BYYEARDAY=366;BYMONTH=2", "weekly",
        "FREQ=DAILY;COUNT=5;UNTIL=20270101T000000Z", "FREQ=WEEKLY;BYDAY=XX",
        "FREQ=DAILY;UNTIL=00010101T000000Z", "FREQ=DAILY;UNTIL=00010101",
        "FREQ=YEARLY;UNTIL=99991231T235959Z", "FREQ=MINUTELY;COUNT=100000",
        "FREQ=HOURLY;BYMINUTE=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,"
        "24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,"
        "51,52,53,54,55,56,57,58,59"]),
    st.text(max_size=60),
    st.fixed_dictionaries({"rrule": st.text(max_size=30)},
                          optional={"dtstart": dates, "exdates": st.lists(dates, max_size=3)}),
    json_any)


def task_doc() -> st.SearchStrategy[dict[str, Any]]:
    payload = st.fixed_dictionaries({}, optional={
        "title": json_any, "due_at": dates, "due_date": dates,
        "timezone": st.one_of(st.sampled_from(["UTC", "Europe/Berlin", "Mars/Base", "../UTC",
                                               "localtime", "", "a" * 100, *EDGE_ZONES]),
                              json_leaf),
        "reminders": st.one_of(offsets, st.lists(offsets, max_size=5),
                               st.lists(st.just(1), min_size=101, max_size=101)),
        "remind_before_minutes": st.one_of(offsets, st.lists(offsets, max_size=3)),
        "remind_at": st.one_of(dates, st.lists(dates, max_size=3)),
        "recurrence": rules})
    return st.fixed_dictionaries(
        {"event_type": st.one_of(st.sampled_from(["task.created", "task.updated",
                                                  "task.completed", "task.deleted"]),
                                 json_leaf),
         "task_id": ids, "user_id": ids},
        optional={"timestamp": dates, "payload": st.one_of(payload, json_any),
                  "event_id": ids})


def envelope_of(doc: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(doc), st.fixed_dictionaries(
        {"specversion": st.just("1.0"), "data": st.one_of(st.just(doc), json_any,
                                                         st.just(json.dumps(doc)))},
        optional={"type": json_leaf, "id": json_leaf, "traceparent": json_leaf}))


# -- the parser ---------------------------------------------------------------------

@FAST
@given(st.binary(max_size=300))
def test_parse_delivery_of_any_bytes(body: bytes) -> None:
    try:
        parse_delivery(body)
    except InvalidEvent as exc:
        assert exc.reason


@FAST
@given(task_doc().flatmap(envelope_of))
def test_parse_document_of_hostile_events(doc: Any) -> None:
    try:
        parse_document(doc)
    except InvalidEvent as exc:
        assert exc.reason and len(exc.reason) < 500


def test_deeply_nested_json_is_refused_not_a_crash() -> None:
    for body in (b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        with pytest.raises(InvalidEvent):
            parse_delivery(body)


# -- the time math --------------------------------------------------------------------

@FAST
@given(dates, st.sampled_from(["UTC", "Europe/Berlin", "Pacific/Kiritimati"]))
def test_parse_when_only_raises_value_error(value: Any, zone: str) -> None:
    try:
        parsed = parse_when(value, load_zone(zone), dtime(9))
    except ValueError:
        return
    assert parsed.tzinfo is not None and 1970 <= parsed.year <= 9000


@FAST
@given(offsets)
def test_parse_offset_only_raises_value_error(value: Any) -> None:
    try:
        off = parse_offset(value)
    except ValueError:
        return
    assert 0 <= off.days * 86400 + off.seconds <= 366 * 86400


@FAST
@given(rules, st.sampled_from(["UTC", "Europe/Berlin", "America/St_Johns"]))
def test_recurrence_parse_and_expand_bounded(value: Any, zone_name: str) -> None:
    zone = load_zone(zone_name)
    try:
        rec = parse_recurrence(value, zone, dtime(9))
    except ValueError:
        return
    started = time.perf_counter()
    nxt = next_occurrence(rec, zone, wall_clock(NOW, zone), NOW)
    assert time.perf_counter() - started < 1.5
    assert nxt is None or nxt > NOW


ABSURD = [
    "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;COUNT=100000",
    "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO",
    "FREQ=HOURLY;INTERVAL=7;BYHOUR=3",
    "FREQ=DAILY;INTERVAL=10000;COUNT=100000",
    "FREQ=MONTHLY;BYMONTHDAY=31;BYMONTH=2,4,6,9,11,12",
    {"rrule": "FREQ=DAILY;COUNT=100000", "dtstart": "1970-01-01T00:00:00Z"},
    {"rrule": "FREQ=HOURLY", "dtstart": "1970-01-01T00:00:00Z"},
    {"rrule": "FREQ=HOURLY;COUNT=100000", "dtstart": "1970-01-01T00:00:00Z"},
    {"rrule": "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYSETPOS=1;COUNT=100000",
     "dtstart": "1970-01-01"},
    {"rrule": "FREQ=YEARLY;BYDAY=MO;BYWEEKNO=53;BYMONTH=1", "dtstart": "1970-01-01"},
]


def _expand_far(rule: Any) -> None:
    zone = load_zone("Europe/Berlin")
    try:
        rec = parse_recurrence(rule, zone, dtime(9))
    except ValueError:
        return
    next_occurrence(rec, zone, wall_clock(NOW, zone), datetime(8999, 12, 1, tzinfo=UTC))
    next_occurrence(rec, zone, wall_clock(NOW, zone), NOW)


@pytest.mark.parametrize("rule", ABSURD, ids=range(len(ABSURD)))
def test_absurd_rules_are_bounded_in_cpu_and_memory(rule: Any) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
    started = time.process_time()
    _expand_far(rule)
    assert time.process_time() - started < 2.5  # measured: < 1 s on this machine class
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown < 64 * 1024  # KiB: the peak grew by less than 64 MiB


@pytest.mark.parametrize("value", ["FREQ=SECONDLY", "FREQ=SECONDLY;COUNT=5",
                                   "FREQ=DAILY;COUNT=1000000000",
                                   "FREQ=DAILY;INTERVAL=1000000000"])
def test_rules_beyond_the_limits_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_recurrence(value, load_zone("UTC"), dtime(9))


def test_year_9999_and_huge_offsets_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_when("9999-12-31T23:59:59Z", load_zone("UTC"), dtime(9))
    with pytest.raises(ValueError):
        parse_offset("P99999W")
    with pytest.raises(ValueError):
        parse_offset(10**12)


# -- the planner -----------------------------------------------------------------------

@FAST
@given(task_doc(), st.sampled_from([None, "prior"]))
def test_planner_never_raises_anything_but_invalid_event(doc: Any, prior: str | None) -> None:
    try:
        event = parse_document(doc)
    except InvalidEvent:
        return
    if not isinstance(event, TaskEvent):
        return
    record = None
    if prior:
        base = TaskEvent("task.created", event.task_id, event.user_id,
                         NOW - timedelta(days=400),
                         changes={"due_at": "2026-12-01T09:00:00Z", "reminders": ["PT1H"],
                                  "recurrence": "daily"})
        record = make_plan(None, base, NOW, PlanConfig()).record
    started = time.perf_counter()
    try:
        plan = make_plan(record, event, NOW, PlanConfig())
    except InvalidEvent as exc:
        assert exc.reason
        return
    finally:
        assert time.perf_counter() - started < 2
    for job in plan.schedule:
        assert SAFE_JOB.fullmatch(job.name) and job.due_time > NOW
    stored = json.loads(json.dumps(dump_record(plan.record)))  # what is saved is JSON
    assert load_record(stored) == plan.record  # and reads back as it was


@FAST
@given(st.sampled_from([*EDGES, "2026-11-26T10:00:00Z"]),
       st.one_of(st.none(), st.sampled_from(EDGES)), st.sampled_from(EDGE_ZONES),
       st.sampled_from(["daily", "FREQ=HOURLY;INTERVAL=49",
                        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",
                        "FREQ=DAILY;UNTIL=00010101T000000Z", "FREQ=MINUTELY;INTERVAL=30",
                        "FREQ=MONTHLY;BYDAY=-1FR;BYSETPOS=1"]),
       st.sampled_from(["PT1H", "P1D", "+PT15M", "P366D"]))
def test_completions_at_the_edges_of_the_calendar(completed_at: str, due: str | None,
                                                  zone: str, rule: str, offset: str) -> None:
    """A recurring task created and completed with instants at the calendar's edges:
    the planner answers or raises InvalidEvent; nothing else (an OverflowError here
    would be a poison message answered RETRY for ever)."""
    created = {"event_type": "task.created", "task_id": 1, "user_id": "u",
               "timestamp": "2026-11-26T09:00:00Z",
               "payload": {"timezone": zone, "recurrence": rule, "reminders": [offset],
                           **({"due_at": due} if due else {})}}
    try:
        record = make_plan(None, parse_document(created), NOW, PlanConfig()).record
        done = parse_document({"event_type": "task.completed", "task_id": 1, "user_id": "u",
                               "timestamp": completed_at})
    except InvalidEvent:
        return
    assert isinstance(done, TaskEvent)
    started = time.process_time()
    try:
        plan = make_plan(record, done, NOW, PlanConfig())
    except InvalidEvent as exc:
        assert exc.reason
        return
    assert time.process_time() - started < 0.5
    assert load_record(json.loads(json.dumps(dump_record(plan.record)))) == plan.record
    if plan.next is not None:
        json.dumps(plan.next.body)


# -- the ASGI app, over a recording transport to the development sidecar -----------------

class Recorder(httpx2.AsyncBaseTransport):
    """Every URL the worker sends to the sidecar, then the sidecar's ASGI app."""

    def __init__(self, sidecar: DevSidecar) -> None:
        self.inner = httpx2.ASGITransport(app=sidecar.asgi)
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.paths.append(request.url.raw_path.decode("ascii"))
        return await self.inner.handle_async_request(request)


SAFE_PATH = re.compile(
    rf"/v1\.0/state/statestore(/{SAFE_KEY.pattern})?"
    rf"|/v1\.0(-alpha1)?/jobs/{SAFE_JOB.pattern}"
    r"|/v1\.0/publish/kafka-pubsub/reminders"
    r"|/v1\.0/invoke/todo-backend/method/api/tasks/create-next")


async def call(app: WorkerApp, path: str, body: bytes, method: str = "POST",
               chunk: int = 0) -> tuple[int, bytes, int]:
    """Call the raw ASGI app; (status, body, body messages it read)."""
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        if read > len(chunks):  # like a server: the caller waits for its answer
            await anyio.sleep_forever()
        return {"type": "http.request", "body": chunks[read - 1],
                "more_body": read < len(chunks)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": method, "path": path, "headers": [],
             "query_string": b""}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, out, read


async def with_app(test: Any) -> None:
    clock = ManualClock(NOW)
    sidecar = DevSidecar(SidecarConfig(stub_apps=("todo-backend",)), clock=clock)
    recorder = Recorder(sidecar)
    settings_ = load_settings({})
    async with httpx2.AsyncClient(transport=recorder) as client:
        side = Sidecar("http://sidecar", client, Metrics.create(CollectorRegistry(),
                                                                process=False))
        app = WorkerApp(settings_, Service(settings_, side, side.metrics, clock))
        await test(app, sidecar)
    await sidecar.close()
    for path in recorder.paths:
        assert SAFE_PATH.fullmatch(path), path
    for key in sidecar.state():
        assert SAFE_KEY.fullmatch(key), key
    for name in sidecar.jobs():
        assert SAFE_JOB.fullmatch(name), name


APP = settings(max_examples=80, deadline=timedelta(seconds=3),
               suppress_health_check=[HealthCheck.too_slow])


@APP
@given(task_doc().flatmap(envelope_of))
def test_app_answers_hostile_events_success_or_drop_never_500(doc: Any) -> None:
    async def test(app: WorkerApp, sidecar: DevSidecar) -> None:
        body = json.dumps(doc).encode()
        status, out, _ = await call(app, "/task-events", body)
        assert status == 200
        assert json.loads(out)["status"] in ("SUCCESS", "DROP")  # RETRY: a sidecar refusal

    anyio.run(with_app, test)


@APP
@given(st.sampled_from([*HOSTILE, "x"]), st.one_of(st.sampled_from(HOSTILE), ids))
def test_hostile_ids_never_reach_a_url_or_a_key(user: str, task: Any) -> None:
    async def test(app: WorkerApp, sidecar: DevSidecar) -> None:
        for etype in ("task.created", "task.completed"):
            doc = {"event_type": etype, "task_id": task, "user_id": user,
                   "timestamp": "2026-11-26T11:00:00Z" if etype == "task.created"
                   else "2026-11-26T11:01:00Z",
                   "payload": {"due_at": "2026-11-27T10:00:00Z", "reminders": [30, 60],
                               "recurrence": "daily", "title": user}}
            status, out, _ = await call(app, "/task-events", json.dumps(doc).encode())
            assert status == 200 and json.loads(out)["status"] in ("SUCCESS", "DROP")

    anyio.run(with_app, test)


@APP
@given(st.text(max_size=60), st.binary(max_size=200))
def test_job_route_with_any_name_and_body_is_never_a_500(name: str, body: bytes) -> None:
    async def test(app: WorkerApp, sidecar: DevSidecar) -> None:
        status, _, _ = await call(app, "/job/" + name, body)
        assert status == 200  # foreign or malformed: acknowledged, never retried forever

    anyio.run(with_app, test)


def test_oversized_and_wrongly_typed_bodies_are_refused() -> None:
    async def test(app: WorkerApp, sidecar: DevSidecar) -> None:
        big = b"x" * (MAX_BODY * 2)
        status, _, read = await call(app, "/task-events", big, chunk=64 * 1024)
        assert status == 413 and read <= MAX_BODY // (64 * 1024) + 1  # stopped reading
        status, _, _ = await call(app, "/job/rw-0", big, chunk=64 * 1024)
        assert status == 413
        for body in (b"", b"[]", b"null", b"42", b'"text"', b"\xff\xfe", b"{'a': 1}",
                     json.dumps({"specversion": "1.0", "data_base64": "eA=="}).encode()):
            status, out, _ = await call(app, "/task-events", body)
            assert (status, json.loads(out)["status"]) == (200, "DROP"), body
        status, _, _ = await call(app, "/task-events", b"{}", method="PUT")
        assert status == 405
        assert sidecar.state() == {} and sidecar.jobs() == {}

    anyio.run(with_app, test)
