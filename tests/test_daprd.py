"""The worker against what daprd really does (its paths, bodies and answers), over real HTTP.

Job data goes through daprd's protobuf Value: the development sidecar
round-trips it the same way, so a 64-bit task id riding in the data as a JSON
number comes back changed. Invoking an app id nobody serves is a 500.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from tests.harness import START, Stack, stack
from worker.keys import job_name, task_key

pytestmark = pytest.mark.anyio

SNOWFLAKE = 1234567890123456789  # above 2**53: a float64 cannot hold it
DUE = START + timedelta(hours=2)
AT = DUE - timedelta(hours=1)


def created(task_id: int | str) -> dict[str, Any]:
    return {"event_type": "task.created", "task_id": task_id, "user_id": "u1",
            "timestamp": "2026-11-26T11:00:00Z",
            "payload": {"title": "Pay rent", "due_at": "2026-11-26T14:00:00Z",
                        "reminders": ["PT1H"]}}


async def fire(s: Stack, name: str) -> list[dict[str, Any]]:
    s.clock.advance(AT - START + timedelta(seconds=2))
    await s.sidecar.wait_for(lambda: any(t.name == name and t.outcome == "done"
                                         for t in s.sidecar.job_triggers))
    return [env["data"] for env in s.reminders()]


@pytest.mark.parametrize("task_id", [SNOWFLAKE, -SNOWFLAKE, str(SNOWFLAKE), 7])
async def test_task_id_comes_back_exact_and_with_its_json_type(task_id: int | str) -> None:
    async with stack() as s:
        await s.deliver(created(task_id))
        [name] = s.sidecar.jobs()
        assert s.sidecar.jobs()[name].data["task_id"] == str(task_id)  # exact, in a string
        [data] = await fire(s, name)
        assert data["task_id"] == task_id and type(data["task_id"]) is type(task_id)


def legacy_data(task_id: int, order: list[str]) -> dict[str, Any]:
    """Job data as the worker wrote it before job data held strings only."""
    return {"user_id": "u1", "task_id": task_id, "remind_at": AT.isoformat().replace(
        "+00:00", "Z"), "order": order}


@pytest.mark.parametrize("task_id", [7, SNOWFLAKE])
async def test_a_job_scheduled_by_the_previous_release_still_fires(task_id: int) -> None:
    """Jobs already waiting in the scheduler carry the task id as a JSON number; a
    64-bit one comes back rounded and is recovered from the job name."""
    async with stack() as s:
        await s.deliver(created(task_id))
        [(current, job)] = s.sidecar.jobs().items()
        # what the previous release left: its record lists the job under the name it
        # gave jobs then (no generation), and the job holds the id as a number
        name = job_name("u1", task_id, AT)
        key = task_key("u1", task_id)
        record = s.records()[key]
        record["jobs"] = {name: record["jobs"][current]}
        got = await s.client.get(f"{s.sidecar_url}/v1.0/state/statestore/{key}")
        # with its ETag: like Dapr's Redis store, the sidecar refuses a save without one
        # to a key the worker wrote with first-write concurrency
        item = {"key": key, "value": record, "etag": got.headers["etag"],
                "options": {"concurrency": "first-write"}}
        resp = await s.client.post(f"{s.sidecar_url}/v1.0/state/statestore",
                                   content=json.dumps([item]))
        assert resp.status_code == 204
        assert (await s.client.delete(f"{s.sidecar_url}/v1.0/jobs/{current}")).status_code == 204
        body = {"dueTime": job.due_time_text, "overwrite": True,
                "data": legacy_data(task_id, job.data["order"])}
        resp = await s.client.post(f"{s.sidecar_url}/v1.0/jobs/{name}", content=json.dumps(body))
        assert resp.status_code == 204
        rounded = s.sidecar.jobs()[name].data["task_id"]
        assert (rounded == task_id) is (task_id == 7)  # daprd's float64 at work
        [data] = await fire(s, name)
        assert data["task_id"] == task_id and type(data["task_id"]) is int


async def test_a_wrong_task_app_id_is_retried_not_lost() -> None:
    """daprd answers 500 ERR_DIRECT_INVOKE for an unknown app id: the completion is
    redelivered (a fixed REMINDER_TASK_APP_ID still gets it), never acknowledged."""
    async with stack(env={"REMINDER_TASK_APP_ID": "todo-backnd"},
                     sidecar_options={"stub_apps": ("todo-backend",)}) as s:
        await s.deliver(created(7) | {"payload": {**created(7)["payload"],
                                                  "recurrence": "daily"}})
        done = {"event_type": "task.completed", "task_id": 7, "user_id": "u1",
                "timestamp": "2026-11-26T11:01:00Z"}
        ce = await s.publish(done)
        await s.sidecar.wait_for(lambda: len(s.answers(ce)) >= 2)
        assert s.answers(ce)[:2] == ["RETRY", "RETRY"]
        assert [i.app_id for i in s.sidecar.invocations][:1] == ["todo-backnd"]
