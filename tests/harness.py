"""The worker and the development sidecar, in one event loop, over real HTTP.

A ManualClock is shared: the worker's `now` and the sidecar's scheduler agree,
so tests move time instead of sleeping.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx

from devsidecar import DevSidecar, ManualClock, SidecarConfig, serve_sidecar
from worker.commands.daemon import Running, run_daemon
from worker.dapr.readiness import READY_PROBE_KEY
from worker.settings import Settings, load_settings

START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    sidecar: DevSidecar
    clock: ManualClock
    settings: Settings
    running: Running
    sidecar_url: str
    client: httpx.AsyncClient

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.running.app_port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.running.ops_port}"

    async def publish(self, event: Any, ce_id: str | None = None,
                      topic: str = "task-events") -> str:
        """Publish a task event in a CloudEvent of ours; returns the envelope id."""
        ce_id = ce_id or f"ce-{next(_ids)}"
        envelope = {"specversion": "1.0", "id": ce_id, "source": "todo-backend",
                    "type": "com.dapr.event.sent", "datacontenttype": "application/json",
                    "data": event}
        headers = {"content-type": "application/cloudevents+json"}
        if self.settings.dapr_api_token:
            headers["dapr-api-token"] = self.settings.dapr_api_token.get_secret_value()
        resp = await self.client.post(f"{self.sidecar_url}/v1.0/publish/kafka-pubsub/{topic}",
                                      content=json.dumps(envelope), headers=headers)
        assert resp.status_code == 204, resp.text
        return ce_id

    def settled(self, *ce_ids: str) -> bool:
        """Every delivery of these envelopes got a final answer (done or dropped)."""
        final = {d.event_id for d in self.sidecar.deliveries if d.outcome in ("done", "drop")}
        return all(i in final for i in ce_ids)

    def answers(self, ce_id: str) -> list[str]:
        return [d.answer for d in self.sidecar.deliveries if d.event_id == ce_id]

    async def deliver(self, *events: Any) -> list[str]:
        """Publish events one after another, each settled before the next is sent."""
        ids = []
        for event in events:
            ce_id = await self.publish(event)
            await self.sidecar.wait_for(lambda i=ce_id: self.settled(i))  # type: ignore[misc]
            ids.append(ce_id)
        return ids

    def records(self) -> dict[str, Any]:
        return {k: v.value for k, v in self.sidecar.state().items() if k.startswith("rw-task-")}

    def reminders(self) -> list[dict[str, Any]]:
        return [p.envelope for p in self.sidecar.published if p.topic == "reminders"]

    async def metrics(self) -> str:
        return (await self.client.get(f"{self.ops_url}/metrics")).text


@asynccontextmanager
async def stack(env: dict[str, str] | None = None,
                sidecar_options: dict[str, Any] | None = None) -> AsyncIterator[Stack]:
    clock = ManualClock(START)
    app_port = free_port()
    env = dict(env or {})
    options: dict[str, Any] = {"app_base_url": f"http://127.0.0.1:{app_port}",
                               "dapr_api_token": env.get("DAPR_API_TOKEN"),
                               "app_api_token": env.get("APP_API_TOKEN"),
                               # the task service stands in: invoking another id is a 500
                               "stub_apps": (env.get("REMINDER_TASK_APP_ID", "todo-backend"),),
                               # its reads at times of their own would take counted faults
                               "fault_exempt_keys": (READY_PROBE_KEY,)}
    config = SidecarConfig(**(options | (sidecar_options or {})))
    sidecar = DevSidecar(config, clock=clock)
    async with httpx.AsyncClient() as client, anyio.create_task_group() as tg:
        port = await tg.start(serve_sidecar, sidecar, "127.0.0.1", 0)
        settings = load_settings({"DAPR_HTTP_PORT": str(port), "REMINDER_PORT": str(app_port),
                                  "REMINDER_OPS_PORT": "0", "REMINDER_OPS_HOST": "127.0.0.1",
                                  **env})
        done = anyio.Event()

        async def daemon(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await run_daemon(settings, clock=clock, task_status=task_status)
            finally:
                done.set()

        running = await tg.start(daemon)
        s = Stack(sidecar, clock, running.settings or settings, running,
                  f"http://127.0.0.1:{port}", client)
        await sidecar.wait_for(lambda: sidecar.app_ready)
        try:
            yield s
        finally:
            running.stop.set()
            with anyio.fail_after(25):
                await done.wait()
            tg.cancel_scope.cancel()
