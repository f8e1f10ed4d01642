"""Fault injection: the sidecar down, failing, dropping connections or too slow, at start-up
and mid-flow, for every API the worker uses. Each event or trigger is retried and, once
the fault clears, has exactly its effect (no job too many or too few, one reminder.due
id, one next-occurrence idempotency key)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from devsidecar import DevSidecar, ManualClock, SidecarConfig, serve_sidecar
from tests.cluster import Cluster, cluster, reminder_counts
from tests.factory import created, event
from tests.harness import START, free_port
from worker.commands.daemon import Running, run_daemon
from worker.keys import task_key
from worker.settings import load_settings

pytestmark = pytest.mark.anyio


def assert_exact_effect(c: Cluster, task_id: int = 1, jobs: int = 2) -> None:
    """The record says what the event said, and the sidecar holds exactly its jobs."""
    record = c.records()[task_key("u1", task_id)]
    assert record["status"] == "active"
    assert set(record["jobs"]) == set(c.sidecar.jobs())
    assert len(c.sidecar.jobs()) == jobs


async def settle_one(c: Cluster, event_doc: dict[str, Any], wait: float = 30) -> list[str]:
    ce = await c.publish(event_doc)
    await c.wait_settled([ce], wait)
    return [d.answer for d in c.sidecar.deliveries if d.event_id == ce]


async def ready(client: httpx.AsyncClient, ops_url: str) -> int:
    return (await client.get(f"{ops_url}/readyz", timeout=3)).status_code


# -- start-up -----------------------------------------------------------------

async def test_sidecar_down_at_startup_then_up_worker_becomes_ready() -> None:
    """No sidecar yet: /readyz 503, /healthz 200, the worker polls and does not crash;
    the sidecar comes up later on its fixed port and the worker serves events."""
    clock = ManualClock(START)
    sidecar_port, app_port = free_port(), free_port()
    settings = load_settings({"DAPR_HTTP_PORT": str(sidecar_port), "REMINDER_PORT": str(app_port),
                              "REMINDER_OPS_PORT": "0", "REMINDER_OPS_HOST": "127.0.0.1"})
    running = Running()
    done = anyio.Event()
    async with httpx.AsyncClient() as client, anyio.create_task_group() as tg:
        async def daemon() -> None:
            try:
                await run_daemon(settings, clock=clock, running=running)
            finally:
                done.set()

        tg.start_soon(daemon)
        sidecar = DevSidecar(SidecarConfig(app_base_url=f"http://127.0.0.1:{app_port}"),
                             clock=clock)
        await sidecar.wait_for(lambda: running.ops_port != 0)
        ops = f"http://127.0.0.1:{running.ops_port}"

        def failed_health_checks(text: str) -> float:
            for line in text.splitlines():
                if line.startswith("reminder_worker_sidecar_request_seconds_count") and \
                        'api="health"' in line and 'outcome="error"' in line:
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        with anyio.fail_after(10):
            while failed_health_checks((await client.get(f"{ops}/metrics")).text) < 3:
                assert await ready(client, ops) == 503
                assert (await client.get(f"{ops}/healthz")).status_code == 200
                assert not done.is_set(), "the worker gave up without a sidecar"
                await anyio.sleep(0.05)
        assert running.app_port == 0  # the app port stays closed until the sidecar answers

        port = await tg.start(serve_sidecar, sidecar, "127.0.0.1", sidecar_port)
        assert port == sidecar_port
        for _ in range(200):  # the worker polls the sidecar every 0.5 s
            if await ready(client, ops) == 200:
                break
            await anyio.sleep(0.05)
        else:
            raise AssertionError("never ready after the sidecar came up")
        await sidecar.wait_for(lambda: sidecar.app_ready)
        body = {"specversion": "1.0", "id": "ce-late", "source": "t", "type": "x",
                "datacontenttype": "application/json", "data": created()}
        resp = await client.post(f"http://127.0.0.1:{sidecar_port}/v1.0/publish/kafka-pubsub/"
                                 "task-events", content=json.dumps(body),
                                 headers={"content-type": "application/cloudevents+json"})
        assert resp.status_code == 204
        await sidecar.wait_for(lambda: any(d.event_id == "ce-late" and d.outcome == "done"
                                           for d in sidecar.deliveries))
        assert len(sidecar.jobs()) == 2
        running.stop.set()
        with anyio.fail_after(25):
            await done.wait()
        tg.cancel_scope.cancel()


async def test_secret_store_failing_at_startup_is_waited_out(tmp_path: Path) -> None:
    """`secret:` settings are read at start-up; a secret store failing for a while
    (longer than the client's quick retries) delays readiness instead of killing the
    worker with a "bad setting"."""
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"apptoken": {"token": "tok-from-store"}}))
    env = {"APP_API_TOKEN": "secret:apptoken/token", "REMINDER_SECRET_STORE": "vault"}
    options = {"app_api_token": "tok-from-store", "secret_stores": {"vault": str(secrets)}}
    async with cluster(1, env=env, sidecar_options=options, start=False) as c:
        c.sidecar.faults.fail("secrets", times=6, status=500)
        await c.start_replica(0)
        await c.sidecar.wait_for(lambda: c.sidecar.app_ready)
        assert c.sidecar.faults.injected["secrets"] == 6
        assert (await settle_one(c, created()))[-1] == "SUCCESS"  # token from the store
        assert_exact_effect(c)


# -- the sidecar going down and coming back --------------------------------------

async def test_sidecar_down_mid_flow_and_back() -> None:
    async with cluster(1) as c:
        ops = c.replicas[0].ops_url
        c.sidecar.faults.latency("state", 0.3)  # holds the event at its first state call
        ce = await c.publish(created())
        c.sidecar.faults.latency("state", 0)
        c.sidecar.faults.set_down(True, seconds=1.5)  # every API drops, then comes back
        assert await ready(c.client, ops) == 503
        await c.wait_settled([ce])
        answers = [d.answer for d in c.sidecar.deliveries if d.event_id == ce]
        assert "RETRY" in answers and answers[-1] == "SUCCESS"
        assert_exact_effect(c)
        assert await ready(c.client, ops) == 200


# -- every API failing mid-flow ----------------------------------------------------

@pytest.mark.parametrize("mode", ["fail", "drop"])
async def test_state_save_failing_after_jobs_are_scheduled(mode: str) -> None:
    async with cluster(1) as c:
        # the record GET passes, the save (after the job calls) fails, many times
        getattr(c.sidecar.faults, mode)("state", times=8, after=1)
        answers = await settle_one(c, created())
        assert answers[0] == "RETRY" and answers[-1] == "SUCCESS"
        assert c.sidecar.faults.injected["state"] == 8
        assert_exact_effect(c)


@pytest.mark.parametrize("mode", ["fail", "drop"])
async def test_job_calls_failing_after_the_first_job(mode: str) -> None:
    async with cluster(1) as c:
        getattr(c.sidecar.faults, mode)("jobs", times=6, after=1)
        answers = await settle_one(c, created())
        assert answers[0] == "RETRY" and answers[-1] == "SUCCESS"
        assert_exact_effect(c)
        # an update after the fault: the old jobs go, exactly the new ones stay
        getattr(c.sidecar.faults, mode)("jobs", times=6, after=2)
        answers = await settle_one(c, event("task.updated", 1, reminders=["PT10M"]))
        assert answers[-1] == "SUCCESS"
        assert_exact_effect(c, jobs=1)
        [name] = c.sidecar.jobs()
        record = c.records()[task_key("u1", 1)]
        assert record["jobs"] == {name: "2026-11-26T13:50:00Z"}


@pytest.mark.parametrize(("mode", "status"), [("fail", 503), ("drop", None)])
async def test_publish_failing_then_reminder_published_once(mode: str, status: int) -> None:
    async with cluster(1) as c:
        await settle_one(c, created(reminders=["PT1H"]))
        if mode == "fail":
            c.sidecar.faults.fail("publish", times=2, status=status)
        else:
            c.sidecar.faults.drop("publish", times=2)
        c.clock.advance(timedelta(hours=1))
        await c.sidecar.wait_for(lambda: len(c.sidecar.job_triggers) == 1)
        assert c.sidecar.job_triggers[0].outcome == "retry" and c.reminders() == []
        await c.drain_jobs()
        assert [t.outcome for t in c.sidecar.job_triggers] == ["retry", "retry", "done"]
        assert len(c.reminders()) == 1


@pytest.mark.parametrize("mode", ["fail", "drop"])
async def test_invoke_failing_then_next_occurrence_requested_once(mode: str) -> None:
    async with cluster(1) as c:
        await settle_one(c, created(recurrence="weekly"))
        getattr(c.sidecar.faults, mode)("invoke", times=2)
        answers = await settle_one(c, event("task.completed", 1))
        assert answers[0] == "RETRY" and answers[-1] == "SUCCESS"
        assert len(c.sidecar.invocations) == 1  # the failed ones never reached the app
        claims = [v.value for k, v in c.sidecar.state().items() if k.startswith("rw-occ-")]
        assert [cl["state"] for cl in claims] == ["done"]
        assert c.sidecar.jobs() == {}


# -- timeouts behave like failures -------------------------------------------------

TIMEOUT = 0.25  # the worker's sidecar client timeout in these tests
SLOW = 0.6  # sidecar latency beyond it


async def test_state_timeouts_are_retried_then_applied_once() -> None:
    async with cluster(1, env={"REMINDER_SIDECAR_TIMEOUT": str(TIMEOUT)}) as c:
        c.sidecar.faults.latency("state", SLOW)
        ce = await c.publish(created())
        await c.sidecar.wait_for(lambda: any(d.event_id == ce for d in c.sidecar.deliveries),
                                 10)
        assert next(d.answer for d in c.sidecar.deliveries if d.event_id == ce) == "RETRY"
        c.sidecar.faults.latency("state", 0)
        await c.wait_settled([ce])
        assert_exact_effect(c)


async def test_job_timeouts_are_retried_and_leave_exactly_the_planned_jobs() -> None:
    async with cluster(1, env={"REMINDER_SIDECAR_TIMEOUT": str(TIMEOUT)}) as c:
        c.sidecar.faults.latency("jobs", SLOW)  # the sidecar still schedules them, late
        ce = await c.publish(created())
        await c.sidecar.wait_for(lambda: any(d.event_id == ce for d in c.sidecar.deliveries),
                                 10)
        c.sidecar.faults.latency("jobs", 0)
        await c.wait_settled([ce])
        assert next(d.answer for d in c.sidecar.deliveries if d.event_id == ce) == "RETRY"
        assert_exact_effect(c)  # late (timed-out) calls land on the same names: no extra job


async def test_publish_timeout_gives_the_same_reminder_id_again() -> None:
    """A publish that timed out may still have been published: the retry publishes the
    same CloudEvent id, so consumers dedupe; never a second id for one instant."""
    async with cluster(1, env={"REMINDER_SIDECAR_TIMEOUT": str(TIMEOUT)}) as c:
        await settle_one(c, created(reminders=["PT1H"]))
        c.sidecar.faults.latency("publish", SLOW)
        c.clock.advance(timedelta(hours=1))
        await c.sidecar.wait_for(lambda: len(c.sidecar.job_triggers) == 1, 10)
        c.sidecar.faults.latency("publish", 0)
        await c.sidecar.wait_for(lambda: len(c.reminders()) == 1, 5)  # the slow one landed
        await c.drain_jobs()
        ids = reminder_counts(c.reminders())
        assert len(ids) == 1 and all(len(v) == 1 for v in ids.values())
        assert [t.outcome for t in c.sidecar.job_triggers] == ["retry", "done"]


async def test_invoke_timeout_repeats_the_request_with_the_same_idempotency_key() -> None:
    async with cluster(1, env={"REMINDER_SIDECAR_TIMEOUT": str(TIMEOUT)}) as c:
        await settle_one(c, created(recurrence="weekly"))
        c.sidecar.faults.latency("invoke", SLOW)
        ce = await c.publish(event("task.completed", 1))
        await c.sidecar.wait_for(lambda: len(c.sidecar.invocations) >= 1, 10)
        c.sidecar.faults.latency("invoke", 0)
        await c.wait_settled([ce])
        keys = {i.json["idempotency_key"] for i in c.sidecar.invocations}
        assert len(keys) == 1 and len(c.sidecar.invocations) >= 2
        assert c.sidecar.jobs() == {}


# -- the fault primitives themselves --------------------------------------------------

def test_fault_primitives_after_timed_outage_and_counts() -> None:
    from devsidecar import Faults

    now = [0.0]
    faults = Faults(monotonic=lambda: now[0])
    faults.fail("state", times=2, status=503, after=1)
    decisions = [faults.decide("state") for _ in range(4)]
    assert [d.fail_status for d in decisions] == [None, 503, 503, None]
    faults.apply({"api": "jobs", "drop": 1, "after": 2})
    assert [faults.decide("jobs").drop for _ in range(4)] == [False, False, True, False]
    faults.apply({"down": True, "seconds": 2})
    assert faults.decide("publish").drop and faults.down
    now[0] = 2.5  # the outage is over on its own
    assert not faults.decide("publish").drop and not faults.down
    assert faults.injected == {"state": 2, "jobs": 1, "publish": 1, "invoke": 0,
                               "secrets": 0, "metadata": 0, "health": 0}
    assert faults.to_json()["injected"]["state"] == 2
    for bad in ({"down": True, "seconds": -1}, {"api": "state", "fail": 1, "after": -1}):
        with pytest.raises(ValueError):
            faults.apply(bad)
