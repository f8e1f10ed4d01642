"""SIGTERM under load, for real: `python -m worker` as a subprocess beside a development
sidecar in this process. In-flight deliveries finish (answered SUCCESS), new ones are
refused (503 or connection refused, so Dapr redelivers), the process exits 0, and a
restarted worker gets every refused event: nothing is lost. Tokens never reach stderr."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import Process

from devsidecar import DevSidecar, SidecarConfig, serve_sidecar
from tests.harness import free_port
from worker.clock import system_clock
from worker.commands.daemon import DRAIN_SECONDS
from worker.keys import task_key
from worker.schedule import format_utc

pytestmark = pytest.mark.anyio

DAPR_TOKEN = "dapr-tok-7f3a9c"
APP_TOKEN = "app-tok-41b2e8"


@asynccontextmanager
async def worker_process(env: dict[str, str], log: Path) -> AsyncIterator[Process]:
    with log.open("ab") as err:
        proc = await anyio.open_process([sys.executable, "-m", "worker"], env=env,
                                        stdout=err, stderr=err)
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def wait_ready(client: httpx.AsyncClient, ops_url: str, proc: Process) -> None:
    for _ in range(400):
        assert proc.returncode is None, "the worker exited during start-up"
        try:
            if (await client.get(f"{ops_url}/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await anyio.sleep(0.05)
    raise AssertionError("worker never ready")


async def test_sigterm_under_load_drains_exits_0_and_loses_nothing(tmp_path: Path) -> None:
    app_port, ops_port = free_port(), free_port()
    config = SidecarConfig(app_base_url=f"http://127.0.0.1:{app_port}",
                           dapr_api_token=DAPR_TOKEN, app_api_token=APP_TOKEN,
                           delivery_max_attempts=100_000,
                           delivery_retry_interval=timedelta(seconds=0.1))
    sidecar = DevSidecar(config)
    log = tmp_path / "worker.log"
    async with httpx.AsyncClient(timeout=10) as client, anyio.create_task_group() as tg:
        port = await tg.start(serve_sidecar, sidecar, "127.0.0.1", 0)
        env = {**os.environ, "DAPR_HTTP_PORT": str(port), "REMINDER_PORT": str(app_port),
               "REMINDER_OPS_PORT": str(ops_port), "REMINDER_OPS_HOST": "127.0.0.1",
               "DAPR_API_TOKEN": DAPR_TOKEN, "APP_API_TOKEN": APP_TOKEN,
               "REMINDER_LOG_LEVEL": "debug"}
        ops_url = f"http://127.0.0.1:{ops_port}"
        now = system_clock()
        events = [{"event_type": "task.created", "task_id": i, "user_id": "u",
                   "timestamp": format_utc(now),
                   "payload": {"due_at": format_utc(now + timedelta(days=1)),
                               "reminders": [60]}} for i in range(150)]
        # The dev sidecar has 32 deliveries in flight: with 150 events, many are still
        # queued when SIGTERM lands after the first wave, so some must be refused.
        async with worker_process(env, log) as proc:
            await wait_ready(client, ops_url, proc)
            sidecar.faults.latency("state", 0.3)  # every event takes >= 0.6 s: work in flight
            for doc in events:
                resp = await client.post(
                    f"http://127.0.0.1:{port}/v1.0/publish/kafka-pubsub/task-events",
                    content=json.dumps(doc),
                    headers={"content-type": "application/json", "dapr-api-token": DAPR_TOKEN})
                assert resp.status_code == 204
            await sidecar.wait_for(lambda: sum(d.outcome == "done"
                                               for d in sidecar.deliveries) >= 3, 20)
            before = len(sidecar.deliveries)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(25):
                assert await proc.wait() == 0
        after: list[Any] = sidecar.deliveries[before:]
        answers = {d.answer for d in after}
        assert "SUCCESS" in answers, "in-flight deliveries were not finished"
        assert answers & {"HTTP_503", "CONNECTION_ERROR"}, "nothing was refused"
        assert answers <= {"SUCCESS", "HTTP_503", "CONNECTION_ERROR"}, answers
        done = {d.event_id for d in sidecar.deliveries if d.outcome == "done"}
        assert len(done) < len(events)  # some were refused and are still pending

        sidecar.faults.clear()
        async with worker_process(env, log) as proc:  # a new replica: Dapr redelivers
            await wait_ready(client, ops_url, proc)
            await sidecar.wait_for(lambda: len({d.event_id for d in sidecar.deliveries
                                                if d.outcome == "done"}) == len(events), 30)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(25):
                assert await proc.wait() == 0
        assert all(d.answer in ("SUCCESS", "HTTP_503", "CONNECTION_ERROR")
                   for d in sidecar.deliveries)
        assert sidecar.dead_letters == []
        records = {k: v.value for k, v in sidecar.state().items()}
        assert all(task_key("u", i) in records for i in range(len(events)))
        assert len(sidecar.jobs()) == len(events)
        text = log.read_text()
        assert "draining" in text and "stopped" in text
        # the longest the drain may wait, not a wait of that length (issue 20)
        draining = next(json.loads(line) for line in text.splitlines() if '"draining"' in line)
        assert draining["up_to_seconds"] == DRAIN_SECONDS and "seconds" not in draining
        assert DAPR_TOKEN not in text and APP_TOKEN not in text
        tg.cancel_scope.cancel()
