"""The worker's whole flow through the real daprd and scheduler: discovery,
scheduling, firing, rescheduling, cancelling, the next occurrence, and at-least-once
delivery. Run three times: Redis state and Redis streams, PostgreSQL v2 and Redis
streams, PostgreSQL v2 and Kafka (production's pair)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from e2e.conftest import Pod, TaskService, Topics
from e2e.procs import wait_until
from worker.keys import reminder_id, task_key

SNOWFLAKE = 1234567890123456789  # above 2**53: daprd's job data (a float64) cannot hold it


def z(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def event(kind: str, user: str, task: int | str, at: datetime | None = None,
          **payload: Any) -> dict[str, Any]:
    return {"event_type": kind, "task_id": task, "user_id": user,
            "timestamp": z(at or datetime.now(UTC)), "payload": payload}


def record(pod: Pod, user: str, task: int | str, what: str = "its record",
           where: Any = bool, within: float = 30) -> dict[str, Any]:
    """The worker's record of a task once `where(record)` holds."""
    key = task_key(user, task)

    def got() -> Any:
        rec = pod.daprd.state(key)
        return rec if rec is not None and where(rec) else None
    return dict(wait_until(got, within, f"{what} for task {task}",
                           lambda: pod.worker.proc.tail() + "\n" + pod.daprd.proc.tail()))


def reminders_for(topics: Topics, user: str, topic: str = "reminders") -> list[dict[str, Any]]:
    return [m for m in topics.messages(topic) if (m.get("data") or {}).get("user_id") == user]


def test_daprd_discovers_the_subscription_and_reports_the_pinned_version(pod: Pod) -> None:
    meta = pod.daprd.metadata()
    assert meta["runtimeVersion"] == "1.18.2"
    [sub] = [s for s in meta["subscriptions"] if s["topic"] == "task-events"]
    assert sub["pubsubname"] == "pubsub"
    assert sub["deadLetterTopic"] == "task-events-dlq"
    assert [r["path"] for r in sub["rules"]] == ["/task-events"]
    names = {c["name"]: c["type"] for c in meta["components"]}
    assert names["statestore"] == ("state.redis" if pod.store == "redis" else "state.postgresql")
    assert names["pubsub"] == f"pubsub.{pod.broker}"


def test_created_leaves_a_job_with_its_due_time_and_data(pod: Pod, user: str) -> None:
    due = now() + timedelta(hours=3)
    pod.daprd.publish(event("task.created", user, 41, title="Pay rent", due_at=z(due),
                            reminders=["PT30M"]))
    rec = record(pod, user, 41, "a job in the record", lambda r: r.get("jobs"))
    [name] = rec["jobs"]
    job = pod.daprd.job(name)
    assert job is not None, "the record names a job the scheduler does not have"
    assert datetime.fromisoformat(job["dueTime"]) == due - timedelta(minutes=30)
    # daprd answers the data as the protobuf Any it holds
    assert job["data"]["@type"] == "type.googleapis.com/google.protobuf.Value"
    data = job["data"]["value"]
    assert data["user_id"] == user and data["task_id"] == "41"


def test_a_reminder_fires_and_reaches_the_topic_once(pod: Pod, user: str) -> None:
    at = now() + timedelta(seconds=4)
    pod.daprd.publish(event("task.created", user, SNOWFLAKE, title="Call mum",
                            due_at=z(at + timedelta(hours=1)), remind_at=[z(at)]))
    [msg] = wait_until(lambda: reminders_for(pod.topics, user), 40, "reminder.due on `reminders`",
                       pod.worker.proc.tail)
    assert msg["id"] == reminder_id(user, SNOWFLAKE, at)
    assert msg["type"] == "reminder.due" and msg["source"] == "reminder-worker"
    data = msg["data"]
    assert data["task_id"] == SNOWFLAKE  # exact, and still a JSON number
    assert data["kind"] == "reminder" and data["remind_at"] == z(at) and data["title"] == "Call mum"
    assert datetime.fromisoformat(data["fired_at"]) >= at  # never early
    assert len(reminders_for(pod.topics, user)) == 1


def test_an_update_reschedules_and_a_delete_cancels(pod: Pod, user: str) -> None:
    t0 = now()
    due1, due2 = t0 + timedelta(hours=2), t0 + timedelta(hours=5)
    pod.daprd.publish(event("task.created", user, 7, t0, due_at=z(due1), reminders=["PT1H"]))
    [old] = record(pod, user, 7, "the first job", lambda r: r.get("jobs"))["jobs"]
    pod.daprd.publish(event("task.updated", user, 7, t0 + timedelta(seconds=1), due_at=z(due2)))
    rec = record(pod, user, 7, "the moved job", lambda r: r.get("jobs") and old not in r["jobs"])
    [new] = rec["jobs"]
    # the worker deletes a retired job after it saves the record that retires it
    wait_until(lambda: pod.daprd.job(old) is None, 30, f"the old job {old} deleted")
    job = pod.daprd.job(new)
    assert job is not None and datetime.fromisoformat(job["dueTime"]) == due2 - timedelta(hours=1)
    pod.daprd.publish(event("task.deleted", user, 7, t0 + timedelta(seconds=2)))
    record(pod, user, 7, "the deletion", lambda r: r.get("status") == "deleted" and not r["jobs"])
    wait_until(lambda: pod.daprd.job(new) is None, 30, f"the job {new} deleted")


def test_completing_a_recurring_task_asks_the_task_service_once(
        pod: Pod, user: str, task_service: TaskService) -> None:
    t0 = now()
    due = (t0 + timedelta(hours=1)).replace(minute=0, second=0)
    created = event("task.created", user, 9, t0, due_at=z(due), timezone="Europe/Berlin",
                    recurrence="FREQ=DAILY", reminders=["PT10M"])
    pod.daprd.publish(created, ce_id=f"{user}-c")
    record(pod, user, 9)
    done = event("task.completed", user, 9, t0 + timedelta(seconds=5))
    pod.daprd.publish(done, ce_id=f"{user}-d")
    [call] = wait_until(lambda: task_service.for_user(user), 30, "the create-next call",
                        pod.worker.proc.tail)
    assert call.path == "/api/tasks/create-next"
    assert call.body["parent_task_id"] == 9
    assert call.body["next_due_at"] == z(due + timedelta(days=1))
    # the same delivery again, and the same completion under another CloudEvent id
    pod.daprd.publish(done, ce_id=f"{user}-d")
    pod.daprd.publish(done, ce_id=f"{user}-d2")
    wait_until(lambda: pod.worker.metric("reminder_worker_events_total", outcome="duplicate") >= 1,
               30, "the redeliveries to be seen")
    record(pod, user, 9, "completion applied", lambda r: r.get("status") == "completed")
    assert len(task_service.for_user(user)) == 1


def test_a_redelivered_event_has_no_second_effect(pod: Pod, user: str) -> None:
    before = pod.worker.metric("reminder_worker_events_total", outcome="duplicate")
    ev = event("task.created", user, 11, due_at=z(now() + timedelta(hours=4)), reminders=["PT1H"])
    pod.daprd.publish(ev, ce_id=f"{user}-1")
    rec = record(pod, user, 11, "the job", lambda r: r.get("jobs"))
    pod.daprd.publish(ev, ce_id=f"{user}-1")
    wait_until(lambda: pod.worker.metric("reminder_worker_events_total",
                                         outcome="duplicate") > before,
               30, "the duplicate to be counted")
    assert record(pod, user, 11)["jobs"] == rec["jobs"]


def test_a_refired_job_publishes_nothing_more(pod: Pod, user: str) -> None:
    at = now() + timedelta(seconds=3)
    pod.daprd.publish(event("task.created", user, 12, due_at=z(at + timedelta(hours=1)),
                            remind_at=[z(at)]))
    [name] = record(pod, user, 12, "the job", lambda r: r.get("jobs"))["jobs"]
    job = pod.daprd.job(name)
    assert job is not None
    wait_until(lambda: reminders_for(pod.topics, user), 40, "the first reminder.due")
    wait_until(lambda: pod.daprd.job(name) is None, 30, "the one-shot job gone once fired")
    handled = [line for line in pod.worker.logs() if line.get("job") == name]
    # the scheduler fires the same job again (at-least-once): same name, same data
    resp = pod.daprd.http.post(f"/v1.0-alpha1/jobs/{name}", json={
        "dueTime": "0s", "data": job["data"]["value"], "overwrite": True})
    assert resp.status_code == 204, resp.text
    wait_until(lambda: len([line for line in pod.worker.logs() if line.get("job") == name])
               > len(handled), 30, "the worker to log the second trigger", pod.worker.proc.tail)
    assert len(reminders_for(pod.topics, user)) == 1


def test_retry_is_redelivered_by_daprd(pod: Pod, user: str, task_service: TaskService) -> None:
    retried = pod.worker.metric("reminder_worker_events_total", type="task.completed",
                                outcome="retry")
    # Down for four calls: daprd's resiliency policy for the task service retries an
    # invocation 3 times itself (4 calls), then the worker answers RETRY and daprd
    # redelivers the event, whose call succeeds. (A fifth failure in a row would trip
    # the policy's circuit breaker for 60 s.)
    task_service.fail_next = 4
    t0 = now()
    pod.daprd.publish(event("task.created", user, 13, t0, due_at=z(t0 + timedelta(hours=1)),
                            recurrence="FREQ=WEEKLY"))
    record(pod, user, 13)
    pod.daprd.publish(event("task.completed", user, 13, t0 + timedelta(seconds=1)))
    wait_until(lambda: len(task_service.for_user(user)) >= 5, 60,
               "four failed create-next calls and a fifth that succeeds", pod.worker.proc.tail)
    record(pod, user, 13, "the completion", lambda r: r.get("status") == "completed")
    assert pod.worker.metric("reminder_worker_events_total", type="task.completed",
                             outcome="retry") >= retried + 1, "the worker never answered RETRY"
    assert len(task_service.for_user(user)) == 5


def test_an_invalid_event_is_dropped_to_the_dead_letter_topic(pod: Pod, user: str) -> None:
    bad = event("task.created", user, 14, due_at="2026-12-01T09:00:00", timezone="Europe/Berln")
    pod.daprd.publish(bad, ce_id=f"{user}-bad")
    [dead] = wait_until(lambda: [m for m in pod.topics.messages("task-events-dlq")
                                 if m.get("id") == f"{user}-bad"],
                        60, "the event on task-events-dlq", pod.daprd.proc.tail)
    assert dead["data"]["payload"]["timezone"] == "Europe/Berln"
    assert pod.daprd.state(task_key(user, 14)) is None
