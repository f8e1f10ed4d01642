"""Crash consistency, deterministically, over real HTTP: the test plays daprd and
delivers each event to the worker itself, so it decides when a failed event is
redelivered and what overtakes it. Also the task service's answers (409, 422) and
poison inputs that must never be answered RETRY or 500."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry

from devsidecar import serve_asgi
from tests.cluster import Cluster, cluster
from tests.factory import event
from tests.harness import START
from tests.test_devsidecar import FakeApp
from worker.errors import (
    Conflict,
    InvalidEvent,
    PermanentSidecarError,
    SidecarUnavailable,
    Status,
)
from worker.keys import job_name, task_key
from worker.metrics import Metrics
from worker.service import Service
from worker.settings import load_settings

pytestmark = pytest.mark.anyio

DUE = "2026-11-28T14:00:00Z"  # two days after START: every reminder is in the future
PT1H, P1D = "2026-11-28T13:00:00Z", "2026-11-27T14:00:00Z"
_ce = itertools.count(1)


async def deliver(c: Cluster, doc: dict[str, Any], ce_id: str | None = None) -> str:
    """POST one delivery to the worker as daprd does; its pub/sub answer (or the HTTP
    status when it is not 200)."""
    envelope = {"specversion": "1.0", "id": ce_id or f"crash-{next(_ce)}",
                "source": "todo-backend", "type": "com.dapr.event.sent",
                "datacontenttype": "application/json", "data": doc}
    resp = await c.client.post(f"{c.replicas[0].app_url}/task-events",
                               content=json.dumps(envelope),
                               headers={"content-type": "application/cloudevents+json"})
    if resp.status_code != 200:
        return str(resp.status_code)
    return str(resp.json()["status"])


def updated(minute: int, **payload: Any) -> dict[str, Any]:
    return event("task.updated", minute, **payload)


def listed_jobs_exist(c: Cluster) -> None:
    """The invariant: every job a record lists is in the scheduler (until it fires)."""
    jobs = c.sidecar.jobs()
    for key, record in c.records().items():
        missing = set(record["jobs"]) - set(jobs)
        assert not missing, f"{key} lists jobs the scheduler does not have: {missing}"


def published_instants(c: Cluster) -> list[str]:
    return sorted(e["data"]["remind_at"] for e in c.reminders())


async def test_failed_update_overtaken_by_a_newer_one_loses_no_reminder() -> None:
    """Issue 9, sequence 1: t2 drops the PT1H reminder but its save fails; t3 (wanting
    PT1H again) is applied before t2's redelivery; t2 is then stale."""
    async with cluster(1) as c:
        t1 = event("task.created", 0, title="x", due_at=DUE, reminders=["PT1H", "P1D"])
        assert await deliver(c, t1) == "SUCCESS"
        c.sidecar.faults.fail("state", times=1, after=1)  # t2's GET passes, its save fails
        t2 = updated(1, reminders=["P1D"])
        assert await deliver(c, t2) == "RETRY"
        listed_jobs_exist(c)
        assert await deliver(c, updated(2, reminders=["PT1H", "P1D"])) == "SUCCESS"
        assert await deliver(c, t2) == "SUCCESS"  # stale now
        record = c.records()[task_key("u1", 1)]
        assert sorted(record["jobs"].values()) == [P1D, PT1H]
        listed_jobs_exist(c)
        await c.fire_until(START + timedelta(days=3), timedelta(hours=6))
        await c.drain_jobs()
        assert published_instants(c) == [P1D, PT1H]  # each once, none lost


async def test_kill_between_save_and_delete_leaves_no_listed_job_missing() -> None:
    """The record is saved, the obsolete job's delete fails (as after a kill): RETRY;
    the redelivery is a duplicate that deletes the retired job."""
    async with cluster(1) as c:
        t1 = event("task.created", 0, title="x", due_at=DUE, reminders=["PT1H", "P1D"])
        assert await deliver(c, t1) == "SUCCESS"
        c.sidecar.faults.fail("jobs", times=3)  # the delete and its two safe retries
        t2 = updated(1, reminders=["P1D"])
        assert await deliver(c, t2) == "RETRY"
        record = c.records()[task_key("u1", 1)]
        assert list(record["jobs"].values()) == [P1D] and len(record["retired"]) == 1
        assert len(c.sidecar.jobs()) == 2  # the PT1H job is still there: an orphan for now
        assert await deliver(c, t2) == "SUCCESS"  # duplicate: retires it again
        assert set(c.sidecar.jobs()) == set(record["jobs"])
        await c.fire_until(START + timedelta(days=3), timedelta(hours=6))
        assert published_instants(c) == [P1D]


async def test_orphan_of_a_stale_event_fires_once_and_publishes_nothing() -> None:
    """The mirror case: t1's save fails after its jobs are scheduled, a newer event wins,
    t1's redelivery is stale. Its jobs are orphans: they publish nothing and are gone
    once their instant has passed."""
    async with cluster(1) as c:
        # (503: a first-write answered 500 would be read as "maybe present" and re-read)
        c.sidecar.faults.fail("state", times=1, after=1, status=503)
        t1 = event("task.created", 0, title="x", due_at=DUE, reminders=["PT1H", "P1D"])
        assert await deliver(c, t1) == "RETRY"
        orphans = set(c.sidecar.jobs())
        assert len(orphans) == 2
        t2 = event("task.created", 1, title="x", due_at=DUE, reminders=["PT2H"])
        assert await deliver(c, t2) == "SUCCESS"
        assert await deliver(c, t1) == "SUCCESS"  # stale
        record = c.records()[task_key("u1", 1)]
        assert list(record["jobs"].values()) == ["2026-11-28T12:00:00Z"]
        assert orphans <= set(c.sidecar.jobs())  # still there, listed by no record
        await c.fire_until(START + timedelta(days=3), timedelta(hours=6))
        await c.drain_jobs()
        assert published_instants(c) == ["2026-11-28T12:00:00Z"]
        fired = {t.name for t in c.sidecar.job_triggers if t.outcome == "done"}
        assert orphans <= fired and c.sidecar.jobs() == {}


@asynccontextmanager
async def with_task_service(answers: list[tuple[int, bytes]] | None = None,
                            default: tuple[int, bytes] = (201, b"{}"),
                            ) -> AsyncIterator[tuple[Cluster, FakeApp]]:
    app = FakeApp(default=default)
    app.answers["/api/tasks/create-next"] = list(answers or [])
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_asgi, app, "127.0.0.1", 0)
        hosted = {"todo-backend": f"http://127.0.0.1:{port}"}
        async with cluster(1, sidecar_options={"hosted_apps": hosted}) as c:
            yield c, app
        tg.cancel_scope.cancel()


def requests(app: FakeApp) -> list[dict[str, Any]]:
    return [json.loads(call.body) for call in app.calls_to("/api/tasks/create-next")]


OVERDUE = {"title": "water plants", "due_at": "2026-11-23T09:00:00Z", "timezone": "UTC",
           "recurrence": "daily"}


async def test_kill_between_invocation_and_claim_asks_once_for_one_occurrence() -> None:
    """Issue 9, sequence 2: an overdue recurring task completed; the invocation reaches the
    task service, the claim is never marked done (the worker dies). After the lease the
    redelivery, two days later, asks for the same occurrence with the same key."""
    async with with_task_service() as (c, app):
        assert await deliver(c, event("task.created", 0, **OVERDUE)) == "SUCCESS"
        completed = event("task.completed", 1)
        # GET record, claim (first-write), [invoke]; then every state call fails, so
        # settling "done" (its ETag read and their retries) never lands
        c.sidecar.faults.fail("state", times=1000, after=2)
        assert await deliver(c, completed) == "RETRY"
        assert len(requests(app)) == 1
        assert c.sidecar.faults.injected["state"] > 0
        c.sidecar.faults.clear("state")  # the store is back
        claims = [v.value for k, v in c.sidecar.state().items() if k.startswith("rw-occ-")]
        assert [cl["state"] for cl in claims] == ["pending"]
        c.clock.advance(timedelta(days=2))  # far past the claim's lease
        assert await deliver(c, completed) == "SUCCESS"
        sent = requests(app)
        assert len(sent) == 2  # at least once; the task service dedupes by key
        assert sent[0]["idempotency_key"] == sent[1]["idempotency_key"]
        # the first occurrence after the completion (11:01 on the 26th), not after "now"
        assert {s["next_due_at"] for s in sent} == {"2026-11-27T09:00:00Z"}
        assert await deliver(c, completed) == "SUCCESS"  # a third copy asks nothing
        assert len(requests(app)) == 2


async def test_task_service_409_means_it_already_has_the_occurrence() -> None:
    async with with_task_service(default=(409, b'{"error":"exists"}')) as (c, app):
        assert await deliver(c, event("task.created", 0, **OVERDUE)) == "SUCCESS"
        assert await deliver(c, event("task.completed", 1)) == "SUCCESS"
        assert len(requests(app)) == 1
        claims = [v.value for k, v in c.sidecar.state().items() if k.startswith("rw-occ-")]
        assert [cl["state"] for cl in claims] == ["done"]
        assert c.records()[task_key("u1", 1)]["status"] == "completed"


async def test_task_service_422_applies_the_completion_and_dead_letters_it() -> None:
    """A request the task service refuses (400/422) is not retried for ever: the
    completion is applied (its reminders stop), the event is dropped to the dead-letter
    topic, and replaying it once the task service accepts asks again."""
    async with with_task_service(answers=[(422, b'{"error":"bad recurrence"}')]) as (c, app):
        created = event("task.created", 0, **{**OVERDUE, "due_at": DUE,
                                               "reminders": ["PT1H"]})
        assert await deliver(c, created) == "SUCCESS"
        completed = event("task.completed", 1)
        assert await deliver(c, completed) == "DROP"
        record = c.records()[task_key("u1", 1)]
        assert record["status"] == "completed" and c.sidecar.jobs() == {}
        claims = [v.value for k, v in c.sidecar.state().items() if k.startswith("rw-occ-")]
        assert [cl["state"] for cl in claims] == ["rejected"]
        assert await deliver(c, completed) == "SUCCESS"  # replayed from the DLQ: accepted
        assert len(requests(app)) == 2
        claims = [v.value for k, v in c.sidecar.state().items() if k.startswith("rw-occ-")]
        assert [cl["state"] for cl in claims] == ["done"]
        assert await deliver(c, completed) == "SUCCESS"
        assert len(requests(app)) == 2


POISON_TIMESTAMPS = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"]


@pytest.mark.parametrize("timestamp", POISON_TIMESTAMPS)
async def test_timestamps_at_the_edge_of_the_calendar_are_dropped(timestamp: str) -> None:
    async with cluster(1) as c:
        doc = {**event("task.created", 0, title="x", due_at=DUE), "timestamp": timestamp}
        assert await deliver(c, doc) == "DROP"


@pytest.mark.parametrize("doc", [
    # completed with an UNTIL in year 1, and with no due date and a year-1 timestamp
    [event("task.created", 0, title="x", timezone="America/New_York",
           due_at="2026-11-20T09:00:00", recurrence="FREQ=DAILY;UNTIL=00010101T000000Z"),
     event("task.completed", 1)],
    [event("task.created", 0, title="x", recurrence="daily"),
     {**event("task.completed", 1), "timestamp": "0001-01-01T00:00:00Z"}],
])
async def test_poison_completions_are_never_retried(doc: list[dict[str, Any]]) -> None:
    async with cluster(1) as c:
        answers = [await deliver(c, d) for d in doc]
        assert "RETRY" not in answers and all(a in ("SUCCESS", "DROP") for a in answers)


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    json.dumps({"user_id": "u1", "task_id": 1, "remind_at": "0001-01-01T00:00:00+01:00",
                "order": ["2026-11-26T11:00:00Z", "f"]}).encode(),
])
async def test_hostile_job_triggers_are_answered_200(body: bytes) -> None:
    async with cluster(1) as c:
        resp = await c.client.post(f"{c.replicas[0].app_url}/job/rw-{'0' * 40}", content=body)
        assert resp.status_code == 200


class Raising:
    """A sidecar whose every call raises `exc`: what the service answers for each kind."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            raise self.exc
        return call


RETRYABLE = [SidecarUnavailable("state", "down"), Conflict("etag"),
             PermanentSidecarError("state", 403, "no"), ConnectionResetError(),
             TimeoutError()]
HOPELESS = [InvalidEvent("bad"), ValueError("x"), OverflowError("date value out of range"),
            RecursionError(), TypeError("x"), KeyError("x"), IndexError("x"),
            ZeroDivisionError(), AssertionError("x"), UnicodeError("x"), RuntimeError("x")]


@pytest.mark.parametrize("exc", RETRYABLE + HOPELESS, ids=lambda e: type(e).__name__)
async def test_only_sidecar_and_network_failures_are_retried(exc: Exception) -> None:
    """Every exception type the handling can raise: RETRY (task event) / 500 (job
    trigger) only when the sidecar or the network failed; anything the same input
    would raise again is DROP / 200, counted, never retried."""
    settings = load_settings({})
    metrics = Metrics.create(CollectorRegistry(), process=False)
    service = Service(settings, Raising(exc), metrics)  # type: ignore[arg-type]
    doc = event("task.created", 0, title="x", due_at=DUE, reminders=["PT1H"])
    status = await service.handle_delivery(json.dumps(doc).encode())
    assert status == (Status.RETRY if exc in RETRYABLE else Status.DROP)
    order = ["2026-11-26T11:00:00Z", "f" * 16]
    data = {"user_id": "u1", "task_id": "1", "task_id_type": "number",
            "remind_at": PT1H, "order": order}
    name = job_name("u1", 1, datetime.fromisoformat(PT1H), order)
    code = await service.handle_job(name, json.dumps(data).encode())
    assert code == (500 if exc in RETRYABLE else 200)


REPEATING = {"title": "x", "due_at": DUE, "timezone": "UTC",
             "repeat": {"every": "PT10M", "max": 3}}  # overdue at 14:10, 14:20, 14:30


@pytest.mark.parametrize(("kill_after", "published"), [
    (0, ["2026-11-28T14:10:00Z"]),  # killed after its GET: the record stays active
    (1, []),  # killed after its save: the record says completed from then on
])
async def test_completion_cut_off_by_a_kill_races_the_repetition_the_restart_made_due(
        kill_after: int, published: list[str]) -> None:
    """The soak's rare extra overdue reminder (seed 2): a completion's delivery is cut off
    by a kill, the replicas come back 11 minutes later (clock moved), past a repetition.
    Its trigger publishes only if the completion's save had not landed when it read the
    record: a repetition is published if and only if it is due at or before the clock
    when the save landed, whichever comes first, the trigger or the redelivery."""
    async with cluster(1) as c:
        c.restart_on_kill(timedelta(minutes=11))
        assert await deliver(c, event("task.created", 0, **REPEATING)) == "SUCCESS"
        await c.fire_until(datetime.fromisoformat("2026-11-28T14:05:00Z"), timedelta(hours=6))
        completed = event("task.completed", 1, **REPEATING)
        c.sidecar.faults.kill("state", times=1, after=kill_after)
        with pytest.raises(httpx.RemoteProtocolError):  # the kill: no answer, ever
            await deliver(c, completed)
        await c.wait_until(lambda: not c.killing, 60, "the replica to be back")
        assert c.clock() == datetime.fromisoformat("2026-11-28T14:16:00Z")
        # (fired while the replica was down, it is retried 10 s later)
        await c.wait_until(lambda: not c.due_jobs(), 30, "the 14:10 repetition to fire")
        await c.drain_retries()
        assert published_instants(c) == published
        assert await deliver(c, completed) == "SUCCESS"  # the redelivery
        await c.fire_until(datetime.fromisoformat("2026-11-28T15:00:00Z"), timedelta(minutes=10))
        await c.drain_jobs()
        assert published_instants(c) == published and c.sidecar.jobs() == {}
        saved = next(w.time for w in c.sidecar.state_writes
                     if (w.value or {}).get("status") == "completed")
        assert all(datetime.fromisoformat(at) <= saved for at in published)
