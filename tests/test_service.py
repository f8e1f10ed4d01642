"""The service against the in-memory sidecar: no sockets, milliseconds per test."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.factory import DUE, created, event, parsed
from worker.dapr.memsidecar import Invocation, MemorySidecar
from worker.errors import Conflict, SidecarUnavailable, Status
from worker.keys import occurrence_key, task_key
from worker.metrics import Metrics
from worker.records import load_record
from worker.service import Service
from worker.settings import load_settings

pytestmark = pytest.mark.anyio
START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
STORE = "statestore"
KEY = task_key("u1", 1)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def make(invoke_status: int = 200) -> tuple[Service, MemorySidecar, Clock]:
    sidecar = MemorySidecar(lambda _: invoke_status)
    clock = Clock()
    metrics = Metrics.create(CollectorRegistry(), process=False)
    return Service(load_settings({}), sidecar, metrics, clock), sidecar, clock


async def deliver(service: Service, doc: dict[str, Any]) -> Status:
    return await service.handle_delivery(json.dumps(doc).encode())


async def fire(service: Service, sidecar: MemorySidecar, name: str) -> int:
    return await service.handle_job(name, json.dumps(sidecar.jobs[name].data).encode())


async def test_created_costs_k_plus_2_calls_and_saves_a_readable_record() -> None:
    service, sidecar, _ = make()
    assert await deliver(service, created()) == Status.SUCCESS
    assert sidecar.calls == {"state.get": 1, "jobs.schedule": 2, "state.save": 1}
    record = load_record(sidecar.value(STORE, KEY))
    assert set(record.jobs) == set(sidecar.jobs) and record.status == "active"
    assert sidecar.state[STORE, KEY].ttl_seconds is None


async def test_a_trigger_publishes_then_a_deleted_task_publishes_nothing() -> None:
    service, sidecar, clock = make()
    await deliver(service, created())
    first, second = sorted(sidecar.jobs, key=lambda n: sidecar.jobs[n].due_time)
    clock.now = START + timedelta(hours=1, seconds=3)
    assert await fire(service, sidecar, first) == 200
    [(pubsub, topic, envelope)] = sidecar.published
    assert (pubsub, topic) == ("kafka-pubsub", "reminders")
    assert envelope["data"]["remind_at"] == "2026-11-26T13:00:00Z"
    assert envelope["data"]["fired_at"] == "2026-11-26T13:00:03Z"
    assert envelope["data"]["due_at"] == DUE and envelope["data"]["task_id"] == 1
    data = sidecar.jobs[second].data
    assert await deliver(service, event("task.deleted", 1)) == Status.SUCCESS
    assert sidecar.jobs == {} and sidecar.state[STORE, KEY].ttl_seconds == 90 * 24 * 3600
    assert await service.handle_job(second, json.dumps(data).encode()) == 200
    assert len(sidecar.published) == 1  # skipped: the task is deleted


async def test_a_trigger_ahead_of_its_record_is_retried() -> None:
    service, sidecar, _ = make()
    sidecar.fail("state.save", SidecarUnavailable("state", "down"))
    assert await deliver(service, created()) == Status.RETRY
    [name, _] = sidecar.jobs  # scheduled, but the record is not saved
    assert await fire(service, sidecar, name) == 500
    assert await deliver(service, created()) == Status.SUCCESS  # the redelivery
    assert await fire(service, sidecar, name) == 200 and len(sidecar.published) == 1


async def test_a_lost_compare_and_set_re_reads_and_re_plans() -> None:
    service, sidecar, _ = make()
    sidecar.fail("state.save", Conflict("etag"))
    assert await deliver(service, created()) == Status.SUCCESS
    assert sidecar.calls["state.get"] == 2 and sidecar.calls["jobs.schedule"] == 2


async def test_a_completion_asks_for_the_next_occurrence_once() -> None:
    service, sidecar, clock = make()
    await deliver(service, created(recurrence="daily"))
    done = event("task.completed", 1)
    assert await deliver(service, done) == Status.SUCCESS
    clock.now += timedelta(days=3)  # a redelivery much later: the same occurrence, not asked
    assert await deliver(service, done) == Status.SUCCESS
    [call] = sidecar.invocations
    assert call.body["next_due_at"] == "2026-11-27T14:00:00Z"
    key = occurrence_key("u1", 1, datetime(2026, 11, 27, 14, tzinfo=UTC))
    assert call.body["idempotency_key"] == key and sidecar.value(STORE, key)["state"] == "done"


async def test_a_rejected_next_occurrence_is_dropped_and_asked_again_on_replay() -> None:
    service, sidecar, _ = make(invoke_status=422)
    await deliver(service, created(recurrence="daily"))
    done = event("task.completed", 1)
    assert await deliver(service, done) == Status.DROP  # to the dead-letter topic
    assert load_record(sidecar.value(STORE, KEY)).status == "completed"  # applied anyway
    sidecar.invoke_status = lambda _: 201  # the task service fixed
    assert await deliver(service, done) == Status.SUCCESS  # replayed from the dead letters
    assert len(sidecar.invocations) == 2
    assert sidecar.value(STORE, sidecar.invocations[1].body["idempotency_key"])["state"] == "done"


async def test_a_sidecar_failure_is_retried_and_the_redelivery_has_exactly_its_effect() -> None:
    service, sidecar, _ = make()
    sidecar.fail("jobs.schedule", SidecarUnavailable("jobs", "down"))
    assert await deliver(service, created()) == Status.RETRY
    assert sidecar.calls["state.save"] == 0
    assert await deliver(service, created()) == Status.SUCCESS
    assert set(load_record(sidecar.value(STORE, KEY)).jobs) == set(sidecar.jobs)
    assert len(sidecar.jobs) == 2


async def test_handle_event_returns_the_outcome() -> None:
    service, _, _ = make()
    assert await service.handle_event(parsed(created())) == "processed"
    assert await service.handle_event(parsed(created())) == "duplicate"
    assert await service.handle_event(parsed(event("task.updated", 1, reminders=["x"]))) \
        == "partial"
    assert await service.handle_event(parsed(created(minute=0, title="older"))) == "stale"


async def test_the_fake_keeps_etag_and_first_write_semantics() -> None:
    sidecar = MemorySidecar()
    await sidecar.state_save(STORE, "k", {"a": 1}, first_write=True)
    with pytest.raises(Conflict):
        await sidecar.state_save(STORE, "k", {"a": 2}, first_write=True)
    got = await sidecar.state_get(STORE, "k")
    assert got is not None
    with pytest.raises(Conflict):
        await sidecar.state_save(STORE, "k", {"a": 3}, etag="stale")
    await sidecar.state_save(STORE, "k", {"a": 4}, etag=got[1])
    assert sidecar.value(STORE, "k") == {"a": 4}
    with pytest.raises(TypeError):
        await sidecar.state_save(STORE, "k", {"a": object()})  # only JSON is kept
    assert await sidecar.invoke("app", "m", {}) == (200, None)
    assert sidecar.invocations == [Invocation("app", "m", {})]
