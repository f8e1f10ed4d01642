"""Overload and misconfiguration: a hung sidecar meets a deadline below daprd's own, a
caller that goes away cancels its handler (no late saves), probes never queue behind
work, an empty app token is refused, a long title is cut instead of dead-lettering the
task, and accept errors are logged once per interval."""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog
import yaml

from tests.cluster import cluster
from tests.factory import DUE, created
from worker.dapr.sidecar import BACKOFF_BASE, DEFAULT_TIMEOUT, SAFE_RETRIES
from worker.errors import SettingsError
from worker.events import MAX_TITLE, TaskEvent, parse_document
from worker.keys import task_key
from worker.server.app import READY_TIMEOUT
from worker.server.serving import (
    APP_MAX_CONNECTIONS,
    OPS_MAX_CONNECTIONS,
    AcceptErrorFilter,
    connection_caps,
)
from worker.settings import DEFAULT_HANDLER_DEADLINE, load_settings, with_secrets

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 1.0  # REMINDER_HANDLER_DEADLINE in these tests
HUNG = 30.0  # a state store "hung": far longer than any deadline here


def test_deadline_fits_between_the_sidecar_calls_and_daprds_app_delivery_timeout() -> None:
    spec = yaml.safe_load((ROOT / "components" / "resiliency.yaml").read_text())["spec"]
    app_delivery = spec["policies"]["timeouts"]["appDelivery"]
    assert app_delivery.endswith("s")
    one_call = (1 + SAFE_RETRIES) * DEFAULT_TIMEOUT.read + sum(  # type: ignore[operator]
        BACKOFF_BASE * 2**i * 1.5 for i in range(SAFE_RETRIES))
    assert one_call < DEFAULT_HANDLER_DEADLINE < float(app_delivery[:-1])


async def test_hung_state_store_answers_retry_and_500_within_the_deadline() -> None:
    env = {"REMINDER_HANDLER_DEADLINE": str(DEADLINE)}
    async with cluster(1, env=env) as c:
        ce = await c.publish(created())  # scheduled while the store is fine
        await c.wait_settled([ce])
        c.sidecar.faults.latency("state", HUNG)

        def answers(ce_id: str) -> list[str]:
            return [d.answer for d in c.sidecar.deliveries if d.event_id == ce_id]

        start = time.monotonic()
        ce2 = await c.publish(created(minute=1, task_id=2))
        await c.sidecar.wait_for(lambda: bool(answers(ce2)), DEADLINE + 3)
        assert answers(ce2)[0] == "RETRY"
        assert time.monotonic() - start < DEADLINE + 1.5
        # a job trigger meets the same deadline: 500, so the scheduler retries it
        start = time.monotonic()
        c.clock.set(c.clock() + timedelta(hours=1, minutes=1))  # the first reminder is due
        await c.sidecar.wait_for(lambda: bool(c.sidecar.job_triggers), DEADLINE + 3)
        trigger = c.sidecar.job_triggers[0]
        assert (trigger.status_code, trigger.outcome) == (500, "retry")
        assert time.monotonic() - start < DEADLINE + 1.5
        c.sidecar.faults.clear()


async def test_a_caller_that_goes_away_cancels_its_handler_and_no_late_save_lands() -> None:
    """Every state call takes 1 s. A delivery whose caller hangs up after 0.3 s is
    cancelled: its GET is abandoned, no job and no record follow. A second delivery,
    sent after it and waited for, is the barrier: by the time it is applied, an
    abandoned handler would have scheduled its jobs and saved its record."""
    with structlog.testing.capture_logs() as logs:
        async with cluster(1) as c:
            c.sidecar.faults.latency("state", 1.0)
            url = f"{c.replicas[0].app_url}/task-events"
            with pytest.raises(httpx.ReadTimeout):
                await c.client.post(url, content=json.dumps(created(task_id=1)), timeout=0.3)
            resp = await c.client.post(url, content=json.dumps(created(task_id=2)), timeout=10)
            assert resp.json() == {"status": "SUCCESS"}
            records = c.records()
            assert task_key("u1", 2) in records
            assert task_key("u1", 1) not in records, "the abandoned handler saved late"
            assert len(c.sidecar.jobs()) == 2, "the abandoned handler scheduled jobs"
            c.sidecar.faults.clear()
    assert any(e["event"] == "caller went away; handler cancelled" for e in logs)


async def test_readyz_answers_while_every_sidecar_slot_is_taken_by_work() -> None:
    async with cluster(1) as c:
        c.sidecar.faults.latency("state", 3.0)
        url = f"{c.replicas[0].app_url}/task-events"

        async def deliver(i: int) -> None:
            await c.client.post(url, content=json.dumps(created(task_id=i)), timeout=20)

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(deliver, i)
            # the 32-call gate is full, the rest queue behind it
            await c.sidecar.wait_for(lambda: c.sidecar.counts["state"] >= 32, 5)
            start = time.monotonic()
            resp = await c.client.get(f"{c.replicas[0].ops_url}/readyz")
            assert resp.status_code == 200
            assert time.monotonic() - start < READY_TIMEOUT
            c.sidecar.faults.clear()


async def test_a_title_over_the_bound_is_cut_and_the_task_kept() -> None:
    with structlog.testing.capture_logs() as logs:
        async with cluster(1) as c:
            ce = await c.publish(created(title="é" * (MAX_TITLE + 500)))
            await c.wait_settled([ce])
            assert c.final_answers([ce]) == {"SUCCESS": 1}
            record = c.records()[task_key("u1", 1)]
            assert record["task"]["title"] == "é" * MAX_TITLE
            assert record["task"]["due_at"] == DUE and len(c.sidecar.jobs()) == 2
    assert any(e["event"] == "title truncated" and e["length"] == MAX_TITLE + 500 for e in logs)
    # a title that is not text: that part is left out (a partial event), the task kept
    parsed = parse_document({"event_type": "task.created", "task_id": 1, "user_id": "u",
                             "timestamp": "2026-11-26T11:00:00Z", "payload": {"title": ["x"]}})
    assert isinstance(parsed, TaskEvent)
    assert "title" not in parsed.changes and "title" in parsed.rejected["title"]


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_app_token_is_a_bad_setting_exit_2(token: str) -> None:
    with pytest.raises(SettingsError, match="APP_API_TOKEN: is empty"):
        load_settings({"APP_API_TOKEN": token})
    settings = load_settings({"APP_API_TOKEN": "secret:app/token",
                              "REMINDER_SECRET_STORE": "vault"})
    with pytest.raises(SettingsError, match=r"APP_API_TOKEN: .*is empty"):
        with_secrets(settings, {"app_api_token": token})


async def test_empty_app_token_exits_2_with_one_line_and_no_token_warns() -> None:
    env = {**os.environ, "APP_API_TOKEN": ""}
    with anyio.fail_after(20):  # a worker that accepts the setting waits for its sidecar
        result = await anyio.run_process([sys.executable, "-m", "worker"], env=env,
                                         check=False)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "APP_API_TOKEN" in lines[0]
    for env_, warned in (({}, True), ({"APP_API_TOKEN": "tok-1"}, False)):
        with structlog.testing.capture_logs() as logs:
            async with cluster(1, env=env_):
                pass
        assert any("APP_API_TOKEN is not set" in e["event"] for e in logs) == warned


def test_accept_errors_are_logged_once_per_interval() -> None:
    now = [0.0]
    handler = AcceptErrorFilter(interval=10.0, monotonic=lambda: now[0])
    context: dict[str, Any] = {"message": "socket.accept() out of system resource",
                               "exception": OSError(errno.EMFILE, "Too many open files")}
    with structlog.testing.capture_logs() as logs:
        for i in range(5000):
            now[0] = i * 0.001  # 5,000 errors in 5 s
            handler(None, context)  # type: ignore[arg-type]
        now[0] = 11.0
        handler(None, context)  # type: ignore[arg-type]
    assert len(logs) == 2 and logs[1]["suppressed"] == 4999


@pytest.mark.parametrize(("nofile", "app", "ops"), [
    (1_048_576, APP_MAX_CONNECTIONS, OPS_MAX_CONNECTIONS),
    (1024, APP_MAX_CONNECTIONS, OPS_MAX_CONNECTIONS),
    (400, 115, 28),
    (64, 4, 4),
])
def test_connection_caps_fit_the_open_file_limit(nofile: int, app: int, ops: int) -> None:
    assert connection_caps(nofile) == (app, ops)
