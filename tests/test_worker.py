"""The worker over real HTTP against the development sidecar: every row of the table
"What each event does" in docs/events.md."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from tests.factory import DUE, created, event
from tests.harness import START, Stack, stack
from worker.keys import occurrence_key, reminder_id, task_key

pytestmark = pytest.mark.anyio


def job_times(s: Stack) -> list[str]:
    return sorted(j.due_time.isoformat() for j in s.sidecar.jobs().values())


async def test_created_schedules_jobs_and_a_firing_publishes_reminder_due() -> None:
    async with stack() as s:
        [ce] = await s.deliver(created())
        assert s.answers(ce) == ["SUCCESS"]
        assert job_times(s) == ["2026-11-26T13:00:00+00:00", "2026-11-26T13:30:00+00:00"]
        [name] = [n for n, j in s.sidecar.jobs().items()
                  if j.due_time == START + timedelta(hours=1)]
        job = s.sidecar.jobs()[name]
        assert job.data["user_id"] == "u1" and job.data["task_id"] == "1"
        record = s.records()[task_key("u1", 1)]
        assert record["status"] == "active" and set(record["jobs"]) == set(s.sidecar.jobs())

        s.clock.advance(timedelta(hours=1, seconds=3))
        await s.sidecar.wait_for(lambda: len(s.reminders()) == 1)
        [env] = s.reminders()
        assert env["type"] == "reminder.due" and env["source"] == "reminder-worker"
        assert env["id"] == reminder_id("u1", 1, START + timedelta(hours=1))
        assert env["datacontenttype"] == "application/json"
        assert env["data"] == {
            "event_type": "reminder.due", "event_version": "1.0", "task_id": 1,
            "user_id": "u1", "title": "Pay rent", "due_at": DUE,
            "remind_at": "2026-11-26T13:00:00Z", "fired_at": "2026-11-26T13:00:03Z",
            "timezone": "Europe/Berlin", "kind": "reminder",
        }
        published = next(p for p in s.sidecar.published if p.topic == "reminders")
        assert published.content_type.startswith("application/cloudevents+json")
        await s.sidecar.wait_for(lambda: name not in s.sidecar.jobs())  # one-shot: gone
        text = await s.metrics()
        assert 'reminder_worker_reminders_published_total{outcome="published"} 1.0' in text
        assert "reminder_worker_reminder_lateness_seconds_bucket" in text


async def test_sidecar_calls_for_a_created_task_are_k_plus_2() -> None:
    async with stack() as s:
        before = dict(s.sidecar.counts)
        await s.deliver(created(reminders=["PT1H", "PT90M", 15]))
        calls = {k: v - before.get(k, 0) for k, v in s.sidecar.counts.items()}
        assert calls["state"] == 2 and calls["jobs"] == 3


async def test_redelivered_event_has_no_second_effect() -> None:
    async with stack() as s:
        await s.deliver(created())
        jobs, calls = s.sidecar.jobs(), dict(s.sidecar.counts)
        [ce] = await s.deliver(created())
        assert s.answers(ce) == ["SUCCESS"] and s.sidecar.jobs() == jobs
        assert s.sidecar.counts["jobs"] == calls["jobs"]  # no job call at all
        assert 'outcome="duplicate",type="task.created"' in await s.metrics()


async def test_out_of_order_older_event_changes_nothing() -> None:
    async with stack() as s:
        newer = event("task.updated", 5, due_at="2026-11-26T16:00:00Z", reminders=["PT1H"],
                      timezone="UTC")
        await s.deliver(newer, created(0))
        assert job_times(s) == ["2026-11-26T15:00:00+00:00"]
        assert s.records()[task_key("u1", 1)]["task"]["due_at"] == "2026-11-26T16:00:00Z"
        assert 'outcome="stale",type="task.created"' in await s.metrics()


async def test_update_reschedules_and_deletes_vanished_jobs() -> None:
    async with stack() as s:
        await s.deliver(created(), event("task.updated", 1, reminders=["P1D", "PT10M"]))
        # P1D before is already past but the task is still due ahead: it fires at once.
        assert job_times(s) == ["2026-11-26T12:00:01+00:00", "2026-11-26T13:50:00+00:00"]
        s.clock.advance(timedelta(seconds=1))
        await s.sidecar.wait_for(lambda: len(s.reminders()) == 1)
        assert s.reminders()[0]["data"]["remind_at"] == "2026-11-25T14:00:00Z"


async def test_completed_deletes_jobs_and_requests_next_occurrence_once() -> None:
    async with stack() as s:
        await s.deliver(created(recurrence="FREQ=DAILY;COUNT=5", task_id=9))
        assert len(s.sidecar.jobs()) == 2
        done = event("task.completed", 3, task_id=9)
        await s.deliver(done, done)  # redelivered
        assert s.sidecar.jobs() == {}
        [call] = s.sidecar.invocations
        assert (call.app_id, call.method) == ("todo-backend", "api/tasks/create-next")
        nxt = START.replace(day=27, hour=14)
        assert call.json == {
            "parent_task_id": 9, "user_id": "u1", "next_due_at": "2026-11-27T14:00:00Z",
            "next_due_local": "2026-11-27T15:00:00+01:00", "timezone": "Europe/Berlin",
            "recurrence": {"rrule": "FREQ=DAILY;COUNT=5",
                           "dtstart": "2026-11-26T15:00:00+01:00", "exdates": []},
            "idempotency_key": occurrence_key("u1", 9, nxt), "title": "Pay rent",
        }
        assert 'reminder_worker_next_occurrences_total{outcome="requested"} 1.0' in (
            await s.metrics())


async def test_series_that_ended_requests_nothing() -> None:
    async with stack() as s:
        rec = {"rrule": "FREQ=DAILY;COUNT=2", "dtstart": "2026-11-25T14:00:00Z"}
        await s.deliver(created(recurrence=rec), event("task.completed", 1))
        assert s.sidecar.invocations == []
        assert 'reminder_worker_next_occurrences_total{outcome="ended"} 1.0' in (
            await s.metrics())


async def test_deleted_task_deletes_jobs_and_a_late_trigger_publishes_nothing() -> None:
    async with stack() as s:
        await s.deliver(created())
        jobs = s.sidecar.jobs()
        await s.deliver(event("task.deleted", 1))
        assert s.sidecar.jobs() == {}
        # A trigger already in flight when the task was deleted arrives anyway.
        name, job = next(iter(jobs.items()))
        resp = await s.client.post(f"{s.app_url}/job/{name}", content=json.dumps(job.data),
                                   headers={"content-type": "application/json"})
        assert resp.status_code == 200 and s.reminders() == []


async def test_invalid_event_is_dropped_to_the_dead_letter_topic() -> None:
    async with stack() as s:
        ce = await s.publish(created(timezone="Mars/Base"))
        await s.sidecar.wait_for(lambda: s.settled(ce))
        assert s.answers(ce) == ["DROP"]
        await s.sidecar.wait_for(lambda: len(s.sidecar.dead_letters) == 1)
        assert s.sidecar.dead_letters[0].topic == "task-events-dlq"
        assert 'outcome="invalid",type="task.created"' in await s.metrics()


async def test_event_with_one_unusable_part_is_applied_without_it_and_counted_partial() -> None:
    from structlog.testing import capture_logs

    async with stack() as s:
        with capture_logs() as logs:
            [ce] = await s.deliver(created(reminders=["PT1H", "P1M", 30], recurrence="sometimes"))
        assert s.answers(ce) == ["SUCCESS"] and s.sidecar.dead_letters == []
        assert job_times(s) == ["2026-11-26T13:00:00+00:00", "2026-11-26T13:30:00+00:00"]
        metrics = await s.metrics()
        assert 'outcome="partial",type="task.created"' in metrics
        assert 'outcome="processed",type="task.created"' not in metrics
        [warning] = [x for x in logs if x["log_level"] == "warning"]
        assert warning["event"] == "event applied without some parts"
        assert [p.split(":")[0] for p in warning["problems"]] == [
            "payload.reminders[1]", "payload.recurrence"]
        await s.deliver(event("task.updated", 1, title="x"))
        assert 'outcome="processed",type="task.updated"' in await s.metrics()


async def test_other_event_types_are_acknowledged_and_ignored() -> None:
    async with stack() as s:
        [ce] = await s.deliver({"event_type": "task.archived", "task_id": 1, "user_id": "u"})
        assert s.answers(ce) == ["SUCCESS"] and s.sidecar.dead_letters == []
        assert 'outcome="ignored",type="other"' in await s.metrics()


@pytest.mark.parametrize("api", ["state", "jobs"])
async def test_sidecar_failing_then_recovering_loses_nothing(api: str) -> None:
    async with stack() as s:
        s.sidecar.faults.fail(api, times=6, status=500)  # outlasts quick retries
        ce = await s.publish(created())
        await s.sidecar.wait_for(lambda: s.settled(ce))
        assert s.answers(ce)[0] == "RETRY" and s.answers(ce)[-1] == "SUCCESS"
        assert len(s.sidecar.jobs()) == 2
        assert set(s.records()[task_key("u1", 1)]["jobs"]) == set(s.sidecar.jobs())


async def test_brief_sidecar_failure_is_absorbed_by_quick_retries() -> None:
    async with stack() as s:
        s.sidecar.faults.fail("jobs", times=2, status=503)
        [ce] = await s.deliver(created())
        assert s.answers(ce) == ["SUCCESS"] and len(s.sidecar.jobs()) == 2


async def test_trigger_retried_while_publish_fails_then_published_once() -> None:
    async with stack() as s:
        await s.deliver(created(reminders=["PT1H"]))
        s.sidecar.faults.fail("publish", times=1, status=500)
        s.clock.advance(timedelta(hours=1))
        await s.sidecar.wait_for(lambda: any(t.status_code == 500 for t in s.sidecar.job_triggers))
        assert s.reminders() == []
        s.clock.advance(timedelta(seconds=11))  # the job's failure policy: retry in 10 s
        await s.sidecar.wait_for(lambda: len(s.reminders()) == 1)
        assert 'reminder_worker_reminders_published_total{outcome="error"} 1.0' in (
            await s.metrics())


async def test_next_occurrence_invocation_failing_is_retried_and_requested_once() -> None:
    async with stack() as s:
        await s.deliver(created(recurrence="weekly"))
        s.sidecar.faults.fail("invoke", times=1, status=500)
        ce = await s.publish(event("task.completed", 1))
        await s.sidecar.wait_for(lambda: s.settled(ce))
        assert s.answers(ce)[0] == "RETRY" and s.answers(ce)[-1] == "SUCCESS"
        assert len(s.sidecar.invocations) == 1  # the failed one never reached the app


async def test_app_api_token_is_required_and_sent_by_the_sidecar() -> None:
    env = {"APP_API_TOKEN": "app-secret", "DAPR_API_TOKEN": "dapr-secret"}
    async with stack(env) as s:
        await s.deliver(created())
        assert len(s.sidecar.jobs()) == 2  # both directions carried their tokens
        for headers in ({}, {"dapr-api-token": "wrong"}):
            resp = await s.client.post(f"{s.app_url}/task-events", content=b"{}",
                                       headers=headers)
            assert resp.status_code == 401
            resp = await s.client.get(f"{s.app_url}/dapr/subscribe", headers=headers)
            assert resp.status_code == 401
        assert (await s.client.get(f"{s.app_url}/healthz")).status_code == 204


async def test_subscription_and_http_surface() -> None:
    async with stack() as s:
        resp = await s.client.get(f"{s.app_url}/dapr/subscribe")
        assert resp.json() == [{"pubsubname": "kafka-pubsub", "topic": "task-events",
                                "route": "/task-events", "deadLetterTopic": "task-events-dlq"}]
        big = await s.client.post(f"{s.app_url}/task-events", content=b"x" * (1024 * 1024 + 1))
        assert big.status_code == 413
        assert (await s.client.get(f"{s.app_url}/nope")).status_code == 404
        assert (await s.client.get(f"{s.app_url}/task-events")).status_code == 405
        assert (await s.client.get(f"{s.ops_url}/healthz")).status_code == 200
        ready = await s.client.get(f"{s.ops_url}/readyz")
        assert (ready.status_code, ready.text) == (200, "ready\n"), ready.text
        s.sidecar.faults.fail("health", times=100, status=500)
        assert (await s.client.get(f"{s.ops_url}/readyz")).status_code == 503
        s.sidecar.faults.clear()
        text = await s.metrics()
        for name in ("reminder_worker_events_total", "reminder_worker_jobs_total",
                     "reminder_worker_sidecar_request_seconds_bucket",
                     "process_resident_memory_bytes"):
            assert name in text


async def test_trigger_with_foreign_data_is_acknowledged_not_retried() -> None:
    async with stack() as s:
        for body in (b"", b"not json", b'{"a": 1}'):
            resp = await s.client.post(f"{s.app_url}/job/rw-0000", content=body)
            assert resp.status_code == 200
        assert s.reminders() == []


async def test_secret_settings_are_resolved_through_the_secrets_api(tmp_path: Any) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"tokens": {"app": "from-the-store"}}))
    env = {"APP_API_TOKEN": "secret:tokens/app", "REMINDER_SECRET_STORE": "local"}
    options = {"secret_stores": {"local": str(secrets)}, "app_api_token": "from-the-store"}
    async with stack(env, options) as s:
        assert s.settings.app_api_token is not None
        assert s.settings.app_api_token.get_secret_value() == "from-the-store"
        await s.deliver(created())  # the sidecar's token is accepted
        assert len(s.sidecar.jobs()) == 2
        bad = await s.client.post(f"{s.app_url}/task-events", content=b"{}",
                                  headers={"dapr-api-token": "secret:tokens/app"})
        assert bad.status_code == 401


async def test_log_lines_of_an_event_carry_its_ids() -> None:
    from structlog.testing import capture_logs

    from worker.logs import merge_bound

    async with stack() as s:
        await s.deliver(created(recurrence="daily"))
        with capture_logs(processors=[merge_bound]) as logs:
            done = event("task.completed", 1)
            done["event_id"] = "ev-77"
            await s.deliver(done)
        lines = [line for line in logs if line.get("event_id") == "ev-77"]
        assert {"next occurrence requested", "event handled"} <= {x["event"] for x in lines}
        assert all(x["task_id"] == 1 and x["trace_id"] for x in lines)


async def test_replay_through_the_sidecar_is_idempotent(tmp_path: Any) -> None:
    import io

    from worker.commands.replay import live, read_lines

    path = tmp_path / "events.jsonl"
    rows = [json.dumps(created()), "{broken", json.dumps(event("task.updated", 2, title="x"))]
    path.write_text("\n".join(rows) + "\n")
    async with stack() as s:
        err = io.StringIO()
        assert await live(read_lines(str(path)), s.settings, err, clock=s.clock) == 1
        assert "line 2: not JSON" in err.getvalue()
        jobs = s.sidecar.jobs()
        assert len(jobs) == 2
        err = io.StringIO()
        await live(read_lines(str(path)), s.settings, err, clock=s.clock)  # again
        # the update is a duplicate now, and the created event is older than the record
        assert "duplicate 1, stale 1" in err.getvalue() and s.sidecar.jobs() == jobs


async def test_job_trigger_log_lines_carry_task_and_trace_ids() -> None:
    from structlog.testing import capture_logs

    async with stack() as s:
        await s.deliver(created(reminders=["PT1H"]))
        with capture_logs() as logs:
            s.clock.advance(timedelta(hours=1))
            # the trigger is recorded once answered, a moment after its publish
            await s.sidecar.wait_for(lambda: len(s.reminders()) == 1
                                     and len(s.sidecar.job_triggers) == 1)
        [line] = [x for x in logs if x["event"] == "reminder published"]
        assert line["task_id"] == 1 and line["job"] in {j.name for j in s.sidecar.job_triggers}
        assert str(line["trace_id"]).startswith("00-")  # the trigger's traceparent header


async def test_deleted_record_is_a_tombstone_with_ttl_until_re_created() -> None:
    async with stack() as s:
        await s.deliver(created(), event("task.deleted", 1))
        key = task_key("u1", 1)
        assert s.sidecar.state()[key].expiry is not None  # tombstone: expires in 90 days
        await s.deliver(event("task.created", 2, due_at=DUE, reminders=["PT1H"]))
        item = s.sidecar.state()[key]
        assert item.value["status"] == "active" and item.expiry is None
        assert len(s.sidecar.jobs()) == 1
