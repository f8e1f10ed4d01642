"""`DevSidecar`: the state, the records and the raw ASGI app answering like daprd.

Routing is a hand-written dispatch on path segments (no framework). Every
call is counted per API, checked against `dapr_api_token` (except
`/v1.0/healthz*`), then passed through fault injection.

`/dev/...` paths are NOT Dapr: they expose the records for out-of-process
tests and benchmarks.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import httpx2
from anyio.abc import TaskStatus

from worker.clock import Clock, system_clock
from worker.server.serving import lifespan

from .asgi import (
    ApiError,
    ASGIApp,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    drop_connection,
    empty,
    json_response,
    read_request,
    send_response,
)
from .faults import APIS, Decision, Faults
from .jobs import Jobs
from .pubsub import PubSub
from .records import Delivery, Invocation, Job, Published, StateItem, StateWrite, Trigger
from .secretstores import SecretStores
from .state import StateStores

# Calls from the sidecar to the app: generous, but a hung app must not hang tests forever.
APP_CALL_TIMEOUT = 30.0
APP_MAX_CONNECTIONS = 128
_FAULT_CODES = {
    "state": "ERR_STATE_SAVE",
    "jobs": "DAPR_SCHEDULER_SCHEDULE_JOB",
    "publish": "ERR_PUBSUB_PUBLISH_MESSAGE",
    "invoke": "ERR_DIRECT_INVOKE",
    "secrets": "ERR_SECRET_GET",
    "metadata": "ERR_METADATA_GET",
    "health": "ERR_HEALTH_NOT_READY",
}
# Headers not forwarded on service invocation (hop-by-hop, or the sidecar's own).
_NOT_FORWARDED = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "dapr-api-token"}
)

Handler = Callable[[Request], Response | Awaitable[Response]]


@dataclass
class SidecarConfig:
    app_id: str = "reminder-worker"
    app_base_url: str = "http://127.0.0.1:8080"
    pubsubs: tuple[str, ...] = ("kafka-pubsub",)
    state_stores: tuple[str, ...] = ("statestore",)
    # store name -> JSON file (format in `secretstores`).
    secret_stores: dict[str, str] = field(default_factory=dict)
    dapr_api_token: str | None = None
    app_api_token: str | None = None
    runtime_version: str = "1.18.0"
    # other app id -> base URL, where invocations are forwarded.
    hosted_apps: dict[str, str] = field(default_factory=dict)
    # app ids the sidecar answers itself with 200 {} (a stand-in task service); invoking an
    # id in neither is 500 ERR_DIRECT_INVOKE, as daprd answers an unknown app id.
    stub_apps: tuple[str, ...] = ()
    # first-write on an existing key: 409 like the in-memory store, 500 like Redis and
    # PostgreSQL v2 (both are "maybe present" to a client; it confirms with a GET).
    first_write_conflict_status: int = 409
    # As Dapr's Redis state store: a key once saved with first-write concurrency (an
    # insert-if-absent, or any save with an ETag) refuses later saves without an ETag
    # (500). PostgreSQL v2 and the in-memory store accept them; a worker must work on
    # all three, so the strict answer is the default.
    sticky_first_write: bool = True
    # What /v1.0/metadata lists under each state store's `capabilities` (the features
    # components-contrib's state stores declare; the in-memory store has these three).
    state_capabilities: tuple[str, ...] = ("ETAG", "TRANSACTIONAL", "TTL")
    # More base URLs of the same app id (replicas): each delivery and job trigger
    # goes to a random one of app_base_url and these, as daprd does across replicas.
    replica_urls: tuple[str, ...] = ()
    # State keys no injected fault touches. A test harness exempts the worker's readiness
    # probe: a background read at times of its own, which would otherwise take a fault
    # counted in calls ("fail the 3rd to 8th state call") from the calls the test means.
    fault_exempt_keys: tuple[str, ...] = ()
    delivery_retry_interval: timedelta = timedelta(seconds=0.2)
    delivery_max_attempts: int = 5
    echo: Callable[[str], None] | None = None


class DevSidecar:
    """A development Dapr sidecar (laptops and tests only, never production)."""

    def __init__(self, config: SidecarConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else system_clock
        self.faults = Faults()
        # Called by a `kill` fault after the call's effect, before the connection is
        # dropped: a test harness kills the worker there (see tests/cluster.py).
        self.on_kill: Callable[[], Awaitable[None]] | None = None
        self.counts: dict[str, int] = dict.fromkeys(APIS, 0)
        self._published: list[Published] = []
        self._dead_letters: list[Published] = []
        self._deliveries: list[Delivery] = []
        self._triggers: list[Trigger] = []
        self._invocations: list[Invocation] = []
        self._state_writes: list[StateWrite] = []
        # (api, traceparent) of every API call that carried one: what daprd would join
        # to the caller's trace.
        self.traced: list[tuple[str, str]] = []
        self._client = httpx2.AsyncClient(
            timeout=APP_CALL_TIMEOUT,
            limits=httpx2.Limits(
                max_connections=APP_MAX_CONNECTIONS, max_keepalive_connections=APP_MAX_CONNECTIONS
            ),
        )
        self._state = StateStores(
            config.state_stores, config.app_id, self.clock,
            first_write_conflict_status=config.first_write_conflict_status,
            sticky_first_write=config.sticky_first_write,
            capabilities=config.state_capabilities, writes=self._state_writes,
        )
        self._secrets = SecretStores(config.secret_stores)
        self._jobs = Jobs(
            self.clock, self._client, config.app_base_url, config.app_api_token, self._triggers,
            replica_urls=config.replica_urls,
        )
        self._pubsub = PubSub(
            pubsubs=config.pubsubs,
            app_id=config.app_id,
            app_base_url=config.app_base_url,
            replica_urls=config.replica_urls,
            app_api_token=config.app_api_token,
            clock=self.clock,
            client=self._client,
            retry_interval=config.delivery_retry_interval,
            max_attempts=config.delivery_max_attempts,
            published=self._published,
            dead_letters=self._dead_letters,
            deliveries=self._deliveries,
            on_publish=self._echo_publish if config.echo is not None else None,
        )
        self._token = config.dapr_api_token.encode() if config.dapr_api_token is not None else None

        # A plain coroutine function (not a bound method), so servers detect ASGI 3.
        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            await self._asgi(scope, receive, send)

        self.asgi: ASGIApp = asgi

    # ---- inspection (copies)

    @property
    def published(self) -> list[Published]:
        return list(self._published)

    @property
    def dead_letters(self) -> list[Published]:
        return list(self._dead_letters)

    @property
    def deliveries(self) -> list[Delivery]:
        return list(self._deliveries)

    @property
    def job_triggers(self) -> list[Trigger]:
        return list(self._triggers)

    @property
    def invocations(self) -> list[Invocation]:
        return list(self._invocations)

    @property
    def state_writes(self) -> list[StateWrite]:
        """Every state write that landed, in order, with the clock when it did."""
        return list(self._state_writes)

    @property
    def subscriptions(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self._pubsub.subscriptions]

    @property
    def app_ready(self) -> bool:
        """True once the app's port has answered (subscription discovery done)."""
        return self._pubsub.app_answered

    def jobs(self) -> dict[str, Job]:
        return self._jobs.snapshot()

    def state(self, store: str = "statestore") -> dict[str, StateItem]:
        try:
            return self._state.snapshot(store)
        except ApiError as exc:
            raise KeyError(store) from exc

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - the public API's name; a polling deadline
    ) -> None:
        """Poll `predicate` until true; TimeoutError naming it and what the sidecar saw."""
        deadline = anyio.current_time() + timeout
        delay = 0.002
        while not predicate():
            if anyio.current_time() >= deadline:
                name = getattr(predicate, "__qualname__", repr(predicate))
                raise TimeoutError(
                    f"condition {name} not met within {timeout}s; sidecar saw "
                    f"{len(self._published)} published, {len(self._deliveries)} deliveries, "
                    f"{len(self._triggers)} job triggers, {len(self._invocations)} invocations, "
                    f"{len(self._dead_letters)} dead letters, app answered: {self.app_ready}"
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.02)

    # ---- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Discovery, delivery and the job scheduler, until cancelled."""
        async with anyio.create_task_group() as tg:
            await tg.start(self._pubsub.run)
            await tg.start(self._jobs.run)
            task_status.started()

    async def close(self) -> None:
        await self._client.aclose()

    # ---- ASGI

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = await read_request(scope, receive)
        decision = Decision()
        try:
            api, handler = self._route(request)
            if api is not None:
                self.counts[api] += 1
                if (trace := request.headers.get("traceparent")) is not None:
                    self.traced.append((api, trace))
            if self._token is not None and not request.path.startswith("/v1.0/healthz"):
                given = request.headers.get("dapr-api-token", "").encode()
                if not hmac.compare_digest(given, self._token):
                    raise ApiError(
                        401, "ERR_API_UNAUTHORIZED", "authentication error: api token mismatch"
                    )
            if api is not None and not self._fault_exempt(api, request.path):
                decision = self.faults.decide(api)
                if decision.latency:
                    await anyio.sleep(decision.latency)
                if decision.drop:
                    await drop_connection(send)
                    return
                if decision.fail_status is not None:
                    raise ApiError(
                        decision.fail_status, _FAULT_CODES[api], f"injected fault on the {api} API"
                    )
            result = handler(request)
            response = result if isinstance(result, Response) else await result
        except ApiError as exc:
            response = exc.response()
        if decision.kill:
            if self.on_kill is not None:
                await self.on_kill()
            await drop_connection(send)
            return
        await send_response(send, response)

    def _fault_exempt(self, api: str, path: str) -> bool:
        exempt = self.config.fault_exempt_keys
        return bool(exempt) and api == "state" and path.rsplit("/", 1)[-1] in exempt

    def _route(self, request: Request) -> tuple[str | None, Handler]:
        parts = request.path.split("/")[1:]
        method = request.method
        if not parts or parts[0] not in ("v1.0", "v1.0-alpha1", "dev"):
            return None, _not_found
        if parts[0] == "dev":
            return None, self._route_dev(parts[1:], method)
        if parts[0] == "v1.0-alpha1":
            if len(parts) >= 3 and parts[1] == "jobs":
                return "jobs", self._jobs_handler("/".join(parts[2:]), method)
            return None, _not_found
        rest = parts[1:]
        head = rest[0] if rest else ""
        if head == "jobs" and len(rest) >= 2:
            return "jobs", self._jobs_handler("/".join(rest[1:]), method)
        if head == "state" and len(rest) >= 2:
            return "state", self._state_handler(rest[1:], method)
        if head == "publish" and len(rest) >= 3:
            if rest[1] == "bulk" and len(rest) == 4:
                pubsub, topic = rest[2], rest[3]
                return "publish", _only(
                    "POST", method, lambda r: self._pubsub.bulk_publish(r, pubsub, topic)
                )
            if len(rest) == 3:
                pubsub, topic = rest[1], rest[2]
                return "publish", _only(
                    "POST", method, lambda r: self._pubsub.publish(r, pubsub, topic)
                )
        if head == "secrets" and len(rest) == 3:
            store, name = rest[1], rest[2]
            if name == "bulk":
                return "secrets", _only("GET", method, lambda r: self._secrets.bulk(r, store))
            return "secrets", _only("GET", method, lambda r: self._secrets.get(r, store, name))
        if head == "invoke" and len(rest) >= 4 and rest[2] == "method":
            app_id, target = rest[1], "/".join(rest[3:])
            return "invoke", lambda r: self._invoke(r, app_id, target)
        if head == "healthz" and len(rest) <= 2:
            if len(rest) == 1:
                return "health", _only("GET", method, self._healthz)
            if rest[1] == "outbound":
                return "health", _only("GET", method, lambda r: empty())
        if head == "metadata" and len(rest) == 1:
            return "metadata", _only("GET", method, self._metadata)
        return None, _not_found

    def _jobs_handler(self, name: str, method: str) -> Handler:
        jobs = self._jobs
        if method == "POST":
            return lambda r: jobs.schedule(r, name)
        if method == "GET":
            return lambda r: jobs.get(r, name)
        if method == "DELETE":
            return lambda r: jobs.delete(r, name)
        return _not_allowed

    def _state_handler(self, rest: list[str], method: str) -> Handler:
        state = self._state
        store = rest[0]
        if len(rest) == 1:
            return _only("POST", method, lambda r: state.save(r, store))
        key = "/".join(rest[1:])
        if len(rest) == 2 and key == "bulk" and method == "POST":
            return lambda r: state.bulk_get(r, store)
        if len(rest) == 2 and key == "transaction" and method in ("POST", "PUT"):
            return lambda r: state.transaction(r, store)
        if method == "GET":
            return lambda r: state.get(r, store, key)
        if method == "DELETE":
            return lambda r: state.delete(r, store, key)
        return _not_allowed

    def _route_dev(self, rest: list[str], method: str) -> Handler:
        path = "/".join(rest)
        listing: dict[str, Callable[[], Any]] = {
            "published": lambda: [p.to_json() for p in self._published],
            "dead-letters": lambda: [p.to_json() for p in self._dead_letters],
            "deliveries": lambda: [d.to_json() for d in self._deliveries],
            "invocations": lambda: [i.to_json() for i in self._invocations],
            "job-triggers": lambda: [t.to_json() for t in self._triggers],
            "state-writes": lambda: [w.to_json() for w in self._state_writes],
            "jobs": lambda: {n: j.to_json() for n, j in self.jobs().items()},
            "counts": lambda: {
                **self.counts,
                "published": len(self._published),
                "deliveries": len(self._deliveries),
                "deadLetters": len(self._dead_letters),
                "jobTriggers": len(self._triggers),
                "invocations": len(self._invocations),
                "stateWrites": len(self._state_writes),
                "jobs": len(self._jobs.snapshot()),
            },
            "subscriptions": lambda: self.subscriptions,
        }
        if path in listing:
            produce = listing[path]
            return _only("GET", method, lambda r: json_response(produce()))
        if len(rest) == 2 and rest[0] == "state":
            store = rest[1]
            return _only(
                "GET",
                method,
                lambda r: json_response(
                    {k: v.to_json() for k, v in self._state.snapshot(store).items()}
                ),
            )
        if path == "faults":
            if method == "GET":
                return lambda r: json_response(self.faults.to_json())
            return _only("POST", method, self._set_faults)
        return _not_found

    # ---- handlers kept here: invocation, health, metadata, faults

    async def _invoke(self, request: Request, app_id: str, method_path: str) -> Response:
        if app_id == self.config.app_id:
            base: str | None = self.config.app_base_url
        else:
            base = self.config.hosted_apps.get(app_id)
        record = Invocation(
            app_id=app_id,
            method=method_path,
            verb=request.method,
            header_items=tuple(request.headers.items()),
            body=request.body,
            query=request.raw_query.decode("latin-1"),
            time=self.clock(),
            forwarded=base is not None,
        )
        self._invocations.append(record)
        if self.config.echo is not None:
            self.config.echo(_invocation_summary(record))
        if base is None and app_id in self.config.stub_apps:
            return json_response({})
        if base is None:
            raise ApiError(
                500,
                "ERR_DIRECT_INVOKE",
                f"failed to invoke, id: {app_id}, err: couldn't find service: {app_id}",
            )
        headers = {k: v for k, v in request.headers.items() if k not in _NOT_FORWARDED}
        if self.config.app_api_token is not None:
            headers["dapr-api-token"] = self.config.app_api_token
        url = f"{base.rstrip('/')}/{method_path}"
        if request.raw_query:
            url += "?" + request.raw_query.decode("latin-1")
        try:
            answer = await self._client.request(
                request.method, url, content=request.body, headers=headers
            )
        except httpx2.HTTPError as exc:
            raise ApiError(
                500, "ERR_DIRECT_INVOKE", f"fail to invoke, id: {app_id}, err: {exc!r}"
            ) from None
        out_headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in answer.headers.items()
            if k.lower() in ("content-type", "etag", "location", "traceparent")
        ]
        return Response(answer.status_code, answer.content, out_headers)

    def _healthz(self, request: Request) -> Response:
        if not self.app_ready:
            raise ApiError(500, "ERR_HEALTH_NOT_READY", "dapr is not ready")
        return empty()

    def _metadata(self, request: Request) -> Response:
        components = [
            *self._state.describe(),
            *(
                {"name": n, "type": "pubsub.in-memory", "version": "v1"}
                for n in self.config.pubsubs
            ),
            *self._secrets.describe(),
        ]
        return json_response(
            {
                "id": self.config.app_id,
                "runtimeVersion": self.config.runtime_version,
                "enabledFeatures": [],
                "actors": [],
                "components": components,
                "httpEndpoints": [],
                "subscriptions": self.subscriptions,
                "appConnectionProperties": {
                    "channelAddress": self.config.app_base_url,
                    "protocol": "http",
                },
                "extended": {"devsidecar": "true"},
            }
        )

    def _set_faults(self, request: Request) -> Response:
        spec = request.json()
        specs = spec if isinstance(spec, list) else [spec]
        try:
            for item in specs:
                if not isinstance(item, dict):
                    raise ValueError("each fault spec must be an object")
                self.faults.apply(item)
        except ValueError as exc:
            raise ApiError(400, "ERR_MALFORMED_REQUEST", str(exc)) from None
        return json_response(self.faults.to_json())

    def _echo_publish(self, record: Published) -> None:
        echo = self.config.echo
        if echo is None:
            return
        envelope = json.loads(record.envelope_json)
        if envelope.get("type") != "reminder.due":
            return
        data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
        title = f" {data['title']!r}" if data.get("title") else ""
        kind = f" kind={data['kind']}" if data.get("kind") else ""
        deferred = (f" deferred_from={data['deferred_from']} count={data.get('count', 1)}"
                    if data.get("deferred_from") else "")
        due = f" due_at={data['due_at']}" if data.get("due_at") else ""  # absent: not said
        echo(
            f"reminder.due task={data.get('task_id')} user={data.get('user_id')}{title}{kind} "
            f"remind_at={data.get('remind_at')}{deferred}{due}"
        )


def _invocation_summary(record: Invocation) -> str:
    body = record.body.decode("utf-8", "replace")
    if len(body) > 200:
        body = body[:197] + "..."
    return f"invoke {record.app_id} {record.verb} /{record.method} {body}".rstrip()


def _only(allowed: str, method: str, handler: Handler) -> Handler:
    return handler if method == allowed else _not_allowed


def _not_found(request: Request) -> Response:
    return Response(404, b"404 page not found\n", [(b"content-type", b"text/plain; charset=utf-8")])


def _not_allowed(request: Request) -> Response:
    return Response(405, b"", [])

