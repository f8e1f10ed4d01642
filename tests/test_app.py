"""The app port over an ASGI transport, on the in-memory sidecar: no sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.factory import created
from worker.dapr.memsidecar import MemorySidecar
from worker.metrics import Metrics
from worker.server.app import WorkerApp
from worker.service import Service
from worker.settings import load_settings

pytestmark = pytest.mark.anyio
START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TOKEN = "app-token-for-tests"


@asynccontextmanager
async def app_client(env: dict[str, str] | None = None,
                     ) -> AsyncIterator[tuple[httpx.AsyncClient, MemorySidecar]]:
    settings = load_settings(env or {})
    sidecar = MemorySidecar()
    service = Service(settings, sidecar, Metrics.create(CollectorRegistry(), process=False),
                      lambda: START + timedelta(hours=1))
    transport = httpx.ASGITransport(app=WorkerApp(settings, service))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        yield client, sidecar


def envelope(doc: dict[str, Any]) -> bytes:
    return json.dumps({"specversion": "1.0", "id": "ce-1", "source": "tasks",
                       "type": doc["event_type"], "datacontenttype": "application/json",
                       "data": doc}).encode()


async def test_subscription_delivery_and_job_trigger() -> None:
    async with app_client() as (client, sidecar):
        [sub] = (await client.get("/dapr/subscribe")).json()
        assert sub["route"] == "/task-events" and sub["deadLetterTopic"]
        resp = await client.post("/task-events", content=envelope(created()),
                                 headers={"content-type": "application/cloudevents+json"})
        assert resp.status_code == 200 and resp.json() == {"status": "SUCCESS"}
        assert len(sidecar.jobs) == 2
        name, job = next(iter(sidecar.jobs.items()))
        resp = await client.post(f"/job/{name}", content=json.dumps(job.data))
        assert resp.status_code == 200 and len(sidecar.published) == 1


async def test_a_refired_job_publishes_nothing_more() -> None:
    """The scheduler delivers at least once: the second trigger of one job finds the
    mark the first left after publishing."""
    async with app_client() as (client, sidecar):
        await client.post("/task-events", content=envelope(created()),
                          headers={"content-type": "application/cloudevents+json"})
        name, job = next(iter(sidecar.jobs.items()))
        for _ in range(3):
            resp = await client.post(f"/job/{name}", content=json.dumps(job.data))
            assert resp.status_code == 200
        assert len(sidecar.published) == 1


async def test_poison_is_dropped_and_an_unreachable_sidecar_retried() -> None:
    async with app_client() as (client, sidecar):
        resp = await client.post("/task-events", content=b"{not json")
        assert resp.json() == {"status": "DROP"}
        sidecar.fail("state.get", ConnectionResetError())
        resp = await client.post("/task-events", content=envelope(created()))
        assert resp.json() == {"status": "RETRY"}
        assert (await client.post("/job/rw-x", content=b"[]")).status_code == 200  # foreign


async def test_token_is_required_except_for_the_health_probe() -> None:
    async with app_client({"APP_API_TOKEN": TOKEN}) as (client, _):
        assert (await client.get("/healthz")).status_code == 204
        assert (await client.get("/dapr/subscribe")).status_code == 401
        wrong = {"dapr-api-token": "nope"}
        assert (await client.post("/task-events", content=b"{}", headers=wrong)).status_code \
            == 401
        right = {"dapr-api-token": TOKEN}
        assert (await client.get("/dapr/subscribe", headers=right)).status_code == 200
        assert (await client.get("/task-events", headers=right)).status_code == 405
        assert (await client.get("/elsewhere", headers=right)).status_code == 404
