"""Raw ASGI: the app port the sidecar calls, and the ops port for Kubernetes/Prometheus."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import structlog
from prometheus_client import CollectorRegistry, make_asgi_app

from worker import jsoncodec, tracing
from worker.dapr.sidecar import Sidecar
from worker.errors import Status
from worker.server.serving import lifespan
from worker.service import Service
from worker.settings import Settings
from worker.types import Receive, Scope, Send

TASK_ROUTE: Final = "/task-events"
JOB_PREFIX: Final = "/job/"
MAX_BODY: Final = 1024 * 1024  # task events are a few hundred bytes; 1 MiB is generous
READY_TIMEOUT: Final = 1.5  # /readyz must answer within 2 s
log = structlog.get_logger("worker")


class BodyTooLarge(Exception):
    pass


# A delivery answered sooner than this never gets a disconnect watcher (a task per
# request would cost more than the handling); a caller that leaves earlier has its
# handler cancelled this much later.
WATCH_AFTER: Final = 0.05


class _Guard:
    """Cancels one handler's task where it stands: at its deadline ("deadline"), when
    its caller goes away ("gone"), or when the worker is killed ("stopped").

    Plain asyncio, not anyio scopes: uvicorn runs only on asyncio, and two cancel
    scopes and a task group per request were a fifth of the worker's own CPU per
    event (bench/RESULTS.md). One timer per request: it first fires at WATCH_AFTER,
    starts the disconnect watcher (once the body is read) and is then set again for
    the rest of the deadline; most deliveries are answered before it ever fires.
    The task's CancelledError is caught in `_handle`, which uncancels it when the
    reason is ours.
    """

    __slots__ = ("closed", "deadline", "loop", "reason", "receive", "task", "ticked",
                 "timer", "watcher")

    def __init__(self, deadline: float) -> None:
        self.task = asyncio.current_task()
        self.reason: str | None = None
        self.closed = False
        self.ticked = False
        self.deadline = deadline
        self.receive: Receive | None = None  # set once the body is read
        self.watcher: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        self.timer = self.loop.call_later(min(WATCH_AFTER, deadline), self._tick)

    def stop(self, reason: str) -> None:
        if not self.closed and self.reason is None and self.task is not None:
            self.reason = reason
            self.task.cancel()

    def watch(self, receive: Receive) -> None:
        """The body is read: watch for the caller going away (now, if WATCH_AFTER passed)."""
        self.receive = receive
        if self.ticked:
            self._start_watcher()

    def _tick(self) -> None:
        self.ticked = True
        if self.closed:
            return
        if self.deadline <= WATCH_AFTER:
            self.stop("deadline")
            return
        self.timer = self.loop.call_later(self.deadline - WATCH_AFTER, self.stop, "deadline")
        self._start_watcher()

    def _start_watcher(self) -> None:
        if self.receive is not None and self.watcher is None and not self.closed:
            self.watcher = asyncio.ensure_future(self._until_gone(self.receive))

    async def _until_gone(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # nothing else can arrive once the body is read
        self.stop("gone")

    def close(self) -> None:
        self.closed = True
        self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


async def read_body(receive: Receive, limit: int = MAX_BODY) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise anyio.EndOfStream
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes = b"",
                  content_type: bytes = b"application/json") -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json(value: Any) -> bytes:
    return jsoncodec.dumps(value)


_STATUS_BODY: Final = {s: _json({"status": s.value}) for s in Status}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")[:256]  # type: ignore[no-any-return]
    return None


class WorkerApp:
    """The app port: subscription discovery, task events, job triggers, health."""

    def __init__(self, settings: Settings, service: Service) -> None:
        self.service = service
        token = settings.app_api_token
        self.token = token.get_secret_value().encode() if token else None
        self.subscription = _json([{
            "pubsubname": settings.pubsub,
            "topic": settings.task_topic,
            "route": TASK_ROUTE,
            "deadLetterTopic": settings.dead_letter_topic,
        }])
        self.accepting = True  # false while draining: new work is refused and redelivered
        self._inflight: set[_Guard] = set()
        self.deadline = settings.handler_deadline

    def _authorized(self, scope: Scope) -> bool:
        if self.token is None:
            return True
        for name, value in scope["headers"]:
            if name == b"dapr-api-token":
                return hmac.compare_digest(value, self.token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/healthz":  # the sidecar's app health probe carries no token
            return await respond(send, 204 if method in ("GET", "HEAD") else 405)
        if not self._authorized(scope):
            return await respond(send, 401, _json({"error": "missing or wrong dapr-api-token"}))
        if path == "/dapr/subscribe":
            if method != "GET":
                return await respond(send, 405)
            return await respond(send, 200, self.subscription)
        if path == TASK_ROUTE or path.startswith(JOB_PREFIX):
            if method != "POST":
                return await respond(send, 405)
            if not self.accepting:
                return await respond(send, 503, _json({"error": "shutting down"}))
            return await self._handle(path, scope, receive, send)
        return await respond(send, 404)

    async def _handle(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """A delivery or a job trigger, answered within `deadline` seconds (RETRY / 500
        when it passes) and cancelled when the caller goes away."""
        answer: int | Status | None = None
        trace = _header(scope, b"traceparent")
        tracing.current.set(tracing.valid(trace))  # this request's task only
        guard = _Guard(self.deadline)
        self._inflight.add(guard)
        try:
            try:
                body = await read_body(receive)
            except BodyTooLarge:
                answer = 413
            except anyio.EndOfStream:
                return None
            else:
                guard.watch(receive)
                if path == TASK_ROUTE:
                    answer = await self.service.handle_delivery(body, trace)
                else:
                    answer = await self.service.handle_job(path[len(JOB_PREFIX):], body, trace)
        except asyncio.CancelledError:
            # Ours (deadline, caller gone, killed) or the server's; only ours is answered.
            if guard.reason is None or (guard.task is not None and guard.task.uncancel()):
                raise
        finally:
            guard.close()
            self._inflight.discard(guard)
        if guard.reason == "gone":
            log.warning("caller went away; handler cancelled", route=path[:100], trace_id=trace)
            return None
        if guard.reason == "stopped":
            return None  # stopped where it stood: no answer, the sidecar delivers again
        if answer == 413:
            return await respond(send, 413, _json({"error": "body over 1 MiB"}))
        if answer is None:
            log.warning("handler deadline passed; answered for a retry", route=path[:100],
                        deadline=self.deadline, trace_id=trace)
            answer = Status.RETRY if path == TASK_ROUTE else 500
        if isinstance(answer, Status):
            return await respond(send, 200, _STATUS_BODY[answer])
        return await respond(send, answer)

    def cancel_inflight(self) -> None:
        """Stop every handler where it stands (no further sidecar call is made)."""
        for guard in list(self._inflight):
            guard.stop("stopped")


class OpsApp:
    """The ops port: /metrics, /healthz (alive), /readyz (sidecar reachable)."""

    def __init__(self, registry: CollectorRegistry, sidecar: Sidecar) -> None:
        self.metrics_app = make_asgi_app(registry)
        self.sidecar = sidecar
        self.started = False  # set once start-up (secrets, metadata) is done
        # What the worker needs from the sidecar (components, subscription...): None
        # when all is there, else the reason (worker.dapr.readiness.Readiness, cached).
        self.not_ready: Callable[[], Awaitable[str | None]] | None = None
        self.stopping = False  # set once the worker drains

    async def readiness(self) -> str | None:
        """None when ready, else why not (the /readyz body), within READY_TIMEOUT."""
        if not self.started:
            return ("stopping: the worker drains its requests" if self.stopping else
                    "starting: waiting for the Dapr sidecar, its checks and the secrets")
        reason: str | None = (f"the Dapr sidecar did not answer within {READY_TIMEOUT} s")
        with anyio.move_on_after(READY_TIMEOUT):
            if not await self.sidecar.outbound_healthy():
                reason = ("the Dapr sidecar's outbound health check fails "
                          "(GET /v1.0/healthz/outbound)")
            else:
                reason = None if self.not_ready is None else await self.not_ready()
        return reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            return await self.metrics_app(scope, receive, send)  # type: ignore[no-any-return]
        if path == "/healthz":
            return await respond(send, 200, b"ok\n", b"text/plain")
        if path == "/readyz":
            reason = await self.readiness()
            body = b"ready\n" if reason is None else f"not ready: {reason}\n".encode()
            return await respond(send, 200 if reason is None else 503, body, b"text/plain")
        return await respond(send, 404)
