"""Issue 12, items 3 and 8, over real HTTP (worker + development sidecar in process):
the log line of an applied event says what changed, debug adds the plan, the
CloudEvent id stands in for a missing event_id, and the delivery's or trigger's
traceparent reaches every sidecar call and the published reminder.due."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import anyio
import pytest
import structlog

from tests.harness import START, stack
from worker.logs import merge_bound
from worker.schedule import format_utc

pytestmark = pytest.mark.anyio


def created(task_id: int, due: str, **payload: Any) -> dict[str, Any]:
    return {"event_type": "task.created", "task_id": task_id, "user_id": "u-logs",
            "timestamp": format_utc(START), "payload": {"due_at": due, **payload}}


def handled(logs: list[dict[str, Any]], task_id: int) -> dict[str, Any]:
    lines = [e for e in logs if e["event"] == "event handled" and e.get("task_id") == task_id]
    assert len(lines) == 1, logs
    return lines[0]


async def test_the_line_of_an_applied_event_says_what_changed() -> None:
    future = format_utc(START + timedelta(days=1))
    past = format_utc(START - timedelta(days=1))
    with structlog.testing.capture_logs(
            processors=[merge_bound]) as logs:
        async with stack() as s:
            ce_ids = await s.deliver(
                created(1, future, reminders=["PT1H"]),
                created(2, future, remind_befor=["PT1H"], color="red"),  # a misspelling
                created(3, past, reminders=["PT1H"]),
                created(4, future, reminders=["PT1H", "P1M"]),
            )
    one, typo, overdue, partial = (handled(logs, i) for i in (1, 2, 3, 4))
    assert one["outcome"] == "processed"
    assert [j["at"] for j in one["scheduled"]] == [format_utc(START + timedelta(hours=23))]
    assert one["scheduled"][0]["job"].startswith("rw-")
    assert one["event_id"] == ce_ids[0]  # no event_id in the task event: the CloudEvent id
    assert typo["ignored_fields"] == ["color", "remind_befor"] and "scheduled" not in typo
    assert overdue["skipped"] == [{"at": format_utc(START - timedelta(days=1, hours=1)),
                                   "kind": "reminder",
                                   "reason": f"in the past when applied, past the misfire "
                                             f"grace, and the task was already due ({past})"}]
    assert partial["outcome"] == "partial" and len(partial["scheduled"]) == 1
    assert partial["problems"][0].startswith("payload.reminders[1]")


async def test_traceparent_reaches_every_sidecar_call_and_the_reminder() -> None:
    delivered = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with stack() as s:
        envelope = {"specversion": "1.0", "id": "ce-traced", "source": "todo-backend",
                    "type": "com.dapr.event.sent", "datacontenttype": "application/json",
                    "data": created(7, format_utc(START + timedelta(minutes=30)),
                                    reminders=["PT10M"])}
        resp = await s.client.post(f"{s.sidecar_url}/v1.0/publish/kafka-pubsub/task-events",
                                   content=json.dumps(envelope),
                                   headers={"content-type": "application/cloudevents+json",
                                            "traceparent": delivered})
        assert resp.status_code == 204
        await s.sidecar.wait_for(lambda: s.settled("ce-traced"))
        during_delivery = list(s.sidecar.traced)
        apis = {api for api, trace in during_delivery if trace == delivered}
        assert {"state", "jobs"} <= apis  # read, schedule, save: all in the delivery's trace
        s.clock.advance(timedelta(minutes=21))
        await s.sidecar.wait_for(lambda: len(s.reminders()) == 1 and
                                 len(s.sidecar.job_triggers) == 1)
        trigger = s.sidecar.job_triggers[0].traceparent
        assert trigger and trigger != delivered
        reminder = s.reminders()[0]
        assert reminder["traceparent"] == trigger  # the notification joins the trigger's trace
        after = s.sidecar.traced[len(during_delivery):]
        assert ("publish", trigger) in after and ("state", trigger) in after
        assert all(trace in (delivered, trigger) for _, trace in s.sidecar.traced)
    await anyio.lowlevel.checkpoint()
