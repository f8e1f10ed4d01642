"""The apps the benchmark serves on the pinned core: baselines and worker variants.

- `hello` (B): the least a raw ASGI app can do per request.
- `reference` (S): the straightforward implementation, as the popular Dapr
  examples write it: per event a new httpx.AsyncClient for each sidecar call,
  a state GET then a state POST as the "seen it?" check, then one jobs POST.
- `worker_app(settings, client)`: the real WorkerApp + Service + Sidecar on a
  given HTTP client (the client comparison passes its candidates here).
- `noop_worker_app` (R0): the same worker with a sidecar client that answers
  204 without any I/O: the worker's own overhead.
- `answer_app(settings)` (A): the real WorkerApp whose service answers SUCCESS
  at once (nothing parsed): what the app layer adds to B.
- `answer_app(settings, spin_us)` (W): A whose service first burns `spin_us` of
  CPU, reading only the clock: a control for what a handler as slow as R0 pays
  (the kernel waking the idle load generator once per answer), whatever its code.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
import httpx2
from prometheus_client import CollectorRegistry

from bench.fakesidecar import Receive, Scope, Send, _body
from worker.dapr.sidecar import Sidecar
from worker.errors import Status
from worker.metrics import Metrics
from worker.server.app import WorkerApp
from worker.service import Service
from worker.settings import Settings

_HELLO = b'{"status":"SUCCESS"}'


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """B: read the body, answer a constant SUCCESS."""
    if scope["type"] != "http":
        return
    await _body(receive)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"20"), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": _HELLO})


def reference_app(sidecar_url: str) -> Any:
    """S: a new client per sidecar call, GET-then-POST dedupe, one job per event."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        envelope = json.loads(await _body(receive))
        event = envelope.get("data", envelope)
        payload = event["payload"]
        key = f"seen-{event['user_id']}-{event['task_id']}"
        status = b'{"status":"SUCCESS"}'
        async with httpx.AsyncClient() as client:
            seen = await client.get(f"{sidecar_url}/v1.0/state/statestore/{key}")
        if seen.status_code == 204:
            async with httpx.AsyncClient() as client:
                await client.post(f"{sidecar_url}/v1.0/state/statestore",
                                  json=[{"key": key, "value": True}])
            due = datetime.fromisoformat(payload["due_at"]) - timedelta(hours=1)
            name = hashlib.sha1(f"{key}-{due.isoformat()}".encode()).hexdigest()
            async with httpx.AsyncClient() as client:
                resp = await client.post(f"{sidecar_url}/v1.0-alpha1/jobs/{name}",
                                         json={"dueTime": due.isoformat(), "data": event})
            if resp.status_code >= 300:
                status = b'{"status":"RETRY"}'
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(status)).encode()),
                                (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": status})

    return app


def worker_app(settings: Settings, client: httpx2.AsyncClient | Any) -> WorkerApp:
    """The worker as run_daemon wires it (app port only), on the given client."""
    metrics = Metrics.create(CollectorRegistry())
    sidecar = Sidecar(settings.sidecar_url, client, metrics)
    return WorkerApp(settings, Service(settings, sidecar, metrics))


class NoopSidecar(Sidecar):
    """R0: every sidecar call answers 204 at once, no I/O."""

    _response = httpx2.Response(204)

    async def _call(self, api: str, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        return self._response


def noop_worker_app(settings: Settings) -> WorkerApp:
    metrics = Metrics.create(CollectorRegistry())
    sidecar = NoopSidecar(settings.sidecar_url, httpx2.AsyncClient(), metrics)
    return WorkerApp(settings, Service(settings, sidecar, metrics))


class _AnswerAtOnce(Service):
    """A service that answers every delivery SUCCESS, after `spin` seconds of CPU."""

    spin = 0.0

    async def handle_delivery(self, body: bytes, trace_id: str | None = None) -> Status:
        if self.spin:
            until = time.perf_counter() + self.spin
            while time.perf_counter() < until:
                pass
        return Status.SUCCESS


def answer_app(settings: Settings, spin_us: float = 0.0) -> WorkerApp:
    """A (spin_us 0) or W: the WorkerApp in front of a service that does no work."""
    metrics = Metrics.create(CollectorRegistry())
    sidecar = NoopSidecar(settings.sidecar_url, httpx2.AsyncClient(), metrics)
    service = _AnswerAtOnce(settings, sidecar, metrics)
    service.spin = spin_us / 1e6
    return WorkerApp(settings, service)
