"""The Dapr sidecar HTTP client: one long-lived client, tokens, timeouts,
bounded retries where a call is safe to repeat, and a concurrency gate.

Errors map onto worker.errors: no answer / 5xx -> SidecarUnavailable
(transient), 409 -> Conflict (transient), other 4xx -> PermanentSidecarError.
Each call is timed in reminder_worker_sidecar_request_seconds with its outcome:
ok, conflict (an ETag or first-write race lost: another replica or a redelivery
got there first, an ordinary event that the caller settles by re-reading), or
error (everything else: a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

import anyio
import httpx2

from worker import jsoncodec, tracing
from worker.dapr.http1 import Http1Transport
from worker.errors import (
    Conflict,
    PermanentSidecarError,
    SettingsError,
    SidecarUnavailable,
    StartupError,
)
from worker.metrics import Metrics
from worker.schedule import format_utc
from worker.settings import MAX_SIDECAR_TIMEOUT

# About 24-32 calls in flight saturate one sidecar; more only queue there (the gate:
# docs/guarantees.md, "Sidecar client").
DEFAULT_CONCURRENCY: Final = 32
# The pool's bound: a connection per call the gate lets through, plus two for the health
# and metadata calls, which bypass the gate so that /readyz never queues behind work.
# httpx2 ignores the client's Limits once a transport is given: the transport gets them.
MAX_CONNECTIONS: Final = DEFAULT_CONCURRENCY + 2
# Seconds an idle connection is kept. Shorter than the idle timeout of any Go server or
# proxy in front of the sidecar (daprd's own API server sets none), so that the worker
# drops an idle connection before the peer does, not while a request is being written.
KEEPALIVE_EXPIRY: Final = 5.0
# daprd itself waits up to 30 s for the scheduler; a stuck call must fail before the
# worker's handler deadline (settings.DEFAULT_HANDLER_DEADLINE, 20 s, itself below
# daprd's 30 s appDelivery): 3 attempts x 6 s + backoff = 18.2 s at worst.
DEFAULT_TIMEOUT: Final = httpx2.Timeout(MAX_SIDECAR_TIMEOUT, connect=2.0)
SAFE_RETRIES: Final = 2  # extra attempts for idempotent calls, with jittered backoff
BACKOFF_BASE: Final = 0.05
# Reminder triggers retry for minutes, not Dapr's default 3 x 1 s.
JOB_FAILURE_POLICY: Final = {"constant": {"interval": "10s", "maxRetries": 30}}
CE_JSON: Final = "application/cloudevents+json"
# The jobs' `overwrite` and `failurePolicy` exist from daprd 1.16.0; older sidecars drop
# them silently (3 x 1 s retries, 409 on a re-schedule). The stable jobs path from 1.18.
MIN_RUNTIME: Final = (1, 16)
STABLE_JOBS_RUNTIME: Final = (1, 18)
# daprd built from source without a release version reports "edge" (dapr's Makefile).
CURRENT_BUILDS: Final = frozenset({"edge", "dev", "latest"})
_VERSION: Final = re.compile(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+][0-9A-Za-z.+-]*)?\Z")


def make_client(
    transport: httpx2.AsyncBaseTransport | None = None, timeout: float | None = None
) -> httpx2.AsyncClient:
    """The process's one HTTP client for the sidecar.

    httpx2 (the maintained fork of httpx, same API) on worker.dapr.http1's keep-alive
    transport for plain http; httpx2's own transport behind it for the rest (an
    https endpoint), where per-call CPU matters less than TLS done right. httpx2's
    own transport costs 3-5x the CPU per call (bench/transport_cost.py). Both are
    bounded at MAX_CONNECTIONS per host with idle connections dropped after
    KEEPALIVE_EXPIRY (httpx2 ignores the client's Limits once a transport is given:
    each transport gets them). Before reusing an idle connection the transport checks
    its socket: one the peer closed, or wrote on out of turn, is closed and a new one
    opened, even when the worker's loop was too busy to notice. A request header
    with CR, LF or NUL is refused before anything is sent, and trailers are not
    headers. The transport sends a request again only when a reused connection died
    before any answer byte and the method is idempotent; Sidecar._call retries
    idempotent calls only. No proxy from the environment applies (a transport is
    given). A transport passed in (tests) replaces both, with its own limits.
    """
    limits = httpx2.Limits(max_connections=MAX_CONNECTIONS,
                           max_keepalive_connections=MAX_CONNECTIONS,
                           keepalive_expiry=KEEPALIVE_EXPIRY)
    if transport is None:
        transport = Http1Transport(httpx2.AsyncHTTPTransport(limits=limits),
                                   max_connections=MAX_CONNECTIONS,
                                   keepalive_expiry=KEEPALIVE_EXPIRY)
    if timeout is not None and timeout < DEFAULT_TIMEOUT.read:  # type: ignore[operator]
        client_timeout = httpx2.Timeout(timeout, connect=min(timeout, 2.0))
    else:
        client_timeout = DEFAULT_TIMEOUT
    return httpx2.AsyncClient(timeout=client_timeout, limits=limits, transport=transport)


_URL_SAFE = re.compile(r"[A-Za-z0-9._-]+")
# Would end or split the header line (settings strip a trailing line break already).
_NOT_IN_HEADER = re.compile(r"[\r\n\x00]")


def _q(segment: str) -> str:
    # Job names and keys are digests already; quote only what is not plainly safe.
    return segment if _URL_SAFE.fullmatch(segment) else quote(segment, safe="")


def _dumps(value: Any) -> bytes:
    return jsoncodec.dumps(value)


class Sidecar:
    """Typed calls to the subset of the Dapr HTTP API the worker uses."""

    def __init__(
        self,
        base_url: str,
        client: httpx2.AsyncClient,
        metrics: Metrics,
        *,
        api_token: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if api_token is not None and (_NOT_IN_HEADER.search(api_token)
                                      or api_token != api_token.strip(" \t")):
            raise SettingsError("DAPR_API_TOKEN: contains a line break or NUL character, or "
                                "begins or ends with a space or tab; it cannot be sent in a header")
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.metrics = metrics
        self.headers: dict[str, str] = {"dapr-api-token": api_token} if api_token else {}
        # asyncio's semaphore takes a free slot without a checkpoint; anyio's limiter
        # cost a scheduling round per call (the worker runs on asyncio only: uvicorn).
        self.gate = asyncio.Semaphore(concurrency)
        self.jobs_prefix = "/v1.0-alpha1/jobs"  # works on every daprd >= 1.14
        self._sleep = sleep
        self._observe = {
            (api, outcome): metrics.sidecar_seconds.labels(api, outcome)
            for api in ("jobs", "state", "publish", "invoke", "secrets", "health", "metadata")
            for outcome in ("ok", "conflict", "error")
        }

    async def _call(
        self, api: str, method: str, path: str, *, body: bytes | None = None,
        content_type: str = "application/json", headers: Mapping[str, str] | None = None,
        safe: bool = False, ok: tuple[int, ...] = (200, 204),
        conflict: tuple[int, ...] = (409,), gated: bool = True,
    ) -> httpx2.Response:
        hdrs = dict(self.headers)
        if body is not None:
            hdrs["content-type"] = content_type
        if headers:
            hdrs.update(headers)
        if (trace := tracing.current.get()) is not None:  # daprd's spans join the caller's
            hdrs["traceparent"] = trace
        url = self.base_url + path
        attempts = 1 + (SAFE_RETRIES if safe else 0)
        # Health and metadata never queue behind work: /readyz must answer within 2 s.
        ungated = api in ("health", "metadata") or not gated
        gate = contextlib.nullcontext() if ungated else self.gate
        for attempt in range(attempts):
            start = time.perf_counter()
            try:
                async with gate:
                    resp = await self.client.request(method, url, content=body, headers=hdrs)
            except (httpx2.HTTPError, RuntimeError) as exc:
                # RuntimeError: the client is closed (shutting down) - a sidecar failure
                # to the caller, to be retried, never a reason to drop the input.
                self._observe[api, "error"].observe(time.perf_counter() - start)
                error: Exception = SidecarUnavailable(api, f"{type(exc).__name__}: {exc}")
            else:
                elapsed = time.perf_counter() - start
                if resp.status_code in ok:
                    self._observe[api, "ok"].observe(elapsed)
                    return resp
                if resp.status_code in conflict:  # a race lost, not a failure
                    self._observe[api, "conflict"].observe(elapsed)
                    raise Conflict(f"{api}: {resp.status_code} {resp.text[:200]}")
                self._observe[api, "error"].observe(elapsed)
                if resp.status_code < 500:
                    raise PermanentSidecarError(api, resp.status_code, resp.text)
                error = SidecarUnavailable(api, f"HTTP {resp.status_code}: {resp.text[:200]}",
                                           resp.status_code)
            if attempt + 1 < attempts:
                await self._sleep(BACKOFF_BASE * (2**attempt) * (0.5 + random.random()))
        raise error

    # -- state ------------------------------------------------------------
    async def state_get(self, store: str, key: str) -> tuple[Any, str | None] | None:
        """The value and ETag of `key`, or None when missing (daprd answers 204)."""
        resp = await self._call("state", "GET", f"/v1.0/state/{_q(store)}/{_q(key)}", safe=True)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return jsoncodec.loads(resp.content), resp.headers.get("etag")
        except ValueError:
            raise PermanentSidecarError("state", resp.status_code, "value is not JSON") from None

    async def state_get_many(self, store: str,
                             keys: list[str]) -> list[tuple[Any, str | None] | None]:
        """`state_get` of several keys in one call (daprd's bulk get), in their order.
        A key daprd could not read (an `error` in its item) fails the whole call."""
        resp = await self._call("state", "POST", f"/v1.0/state/{_q(store)}/bulk",
                                body=_dumps({"keys": keys}), safe=True)
        try:
            items = jsoncodec.loads(resp.content)
        except ValueError:
            raise PermanentSidecarError("state", resp.status_code, "bulk is not JSON") from None
        found: dict[str, tuple[Any, str | None] | None] = {}
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                continue
            if item.get("error"):
                raise SidecarUnavailable("state", f"bulk get of a key: {item['error']}"[:300])
            data = item.get("data")
            found[item["key"]] = None if data is None else (data, item.get("etag"))
        if any(key not in found for key in keys):
            raise PermanentSidecarError("state", resp.status_code, "bulk answer lacks a key")
        return [found[key] for key in keys]

    async def state_save(
        self, store: str, key: str, value: Any, *, etag: str | None = None,
        first_write: bool = False, ttl_seconds: int | None = None,
    ) -> None:
        """Save one key. With an etag: compare-and-set; first_write without: insert-if-absent.

        Raises Conflict when the ETag does not match or the key exists. PostgreSQL
        answers a first-write insert of an existing key with 500: that is also a
        Conflict here (the caller re-reads, which settles it).
        """
        item: dict[str, Any] = {"key": key, "value": value}
        if etag is not None:
            item["etag"] = etag
        if etag is not None or first_write:
            item["options"] = {"concurrency": "first-write"}
        if ttl_seconds is not None:
            item["metadata"] = {"ttlInSeconds": str(ttl_seconds)}
        # PostgreSQL's 500 for an existing key is the same race lost as a 409.
        await self._call("state", "POST", f"/v1.0/state/{_q(store)}", body=_dumps([item]),
                         safe=etag is None and not first_write,
                         conflict=(409, 500) if first_write else (409,))

    async def state_probe(self, store: str, key: str) -> None:
        """Read `key` once, beside the concurrency gate (for /readyz: it must answer
        while every slot is taken by work); raises as any call does."""
        await self._call("state", "GET", f"/v1.0/state/{_q(store)}/{_q(key)}", gated=False)

    async def state_delete(self, store: str, key: str, *, etag: str | None = None) -> None:
        headers = {"if-match": etag} if etag else None
        await self._call("state", "DELETE", f"/v1.0/state/{_q(store)}/{_q(key)}",
                         headers=headers, safe=etag is None)

    # -- jobs -------------------------------------------------------------
    async def job_schedule(self, name: str, due_time: datetime, data: Any) -> None:
        """Register (or overwrite) a one-shot job; idempotent for a given name."""
        body = {"dueTime": format_utc(due_time), "data": data, "overwrite": True,
                "failurePolicy": JOB_FAILURE_POLICY}
        await self._call("jobs", "POST", f"{self.jobs_prefix}/{_q(name)}", body=_dumps(body),
                         safe=True)

    async def job_get(self, name: str) -> dict[str, Any] | None:
        """The scheduler's view of a job, or None when it has none: daprd answers a
        missing job with 500 DAPR_SCHEDULER_GET_JOB (docs/operations.md, "--explain"),
        newer ones may 404."""
        resp = await self._call("jobs", "GET", f"{self.jobs_prefix}/{_q(name)}",
                                ok=(200, 404, 500))
        if resp.status_code == 404:
            return None
        if resp.status_code == 500:
            if "DAPR_SCHEDULER_GET_JOB" in resp.text and "not found" in resp.text:
                return None
            raise SidecarUnavailable("jobs", f"HTTP 500: {resp.text[:200]}", 500)
        try:
            value = resp.json()
        except ValueError:
            raise PermanentSidecarError("jobs", resp.status_code, "job is not JSON") from None
        return value if isinstance(value, dict) else {}

    async def job_delete(self, name: str) -> None:
        """Delete a job; a missing job is fine (daprd answers 204)."""
        await self._call("jobs", "DELETE", f"{self.jobs_prefix}/{_q(name)}", safe=True)

    # -- pub/sub, invocation, secrets -------------------------------------
    async def publish(self, pubsub: str, topic: str, envelope: dict[str, Any]) -> None:
        """Publish our own CloudEvent (daprd keeps its id, type, source and data)."""
        await self._call("publish", "POST", f"/v1.0/publish/{_q(pubsub)}/{_q(topic)}",
                         body=_dumps(envelope), content_type=CE_JSON)

    async def invoke(self, app_id: str, method: str, body: Any,
                     headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """POST to another app through Dapr: (status, JSON body or None) for a 2xx or a
        409 (the target already has it); other 4xx raise PermanentSidecarError."""
        path = f"/v1.0/invoke/{_q(app_id)}/method/{quote(method, safe='/')}"
        resp = await self._call("invoke", "POST", path, body=_dumps(body), headers=headers,
                                ok=(200, 201, 202, 204, 409))
        try:
            return resp.status_code, jsoncodec.loads(resp.content) if resp.content else None
        except ValueError:
            return resp.status_code, None

    async def secret(self, store: str, name: str) -> dict[str, str]:
        resp = await self._call("secrets", "GET", f"/v1.0/secrets/{_q(store)}/{_q(name)}",
                                safe=True)
        value = jsoncodec.loads(resp.content)
        if not isinstance(value, dict):
            raise PermanentSidecarError("secrets", resp.status_code, "not an object")
        return {str(k): str(v) for k, v in value.items()}

    # -- health, metadata -------------------------------------------------
    async def outbound_healthy(self) -> bool:
        try:
            await self._call("health", "GET", "/v1.0/healthz/outbound")
        except (SidecarUnavailable, PermanentSidecarError, Conflict):
            return False
        return True

    async def metadata(self) -> dict[str, Any]:
        resp = await self._call("metadata", "GET", "/v1.0/metadata", safe=True)
        value = jsoncodec.loads(resp.content)
        return value if isinstance(value, dict) else {}

    async def choose_jobs_api(self) -> str:
        """Check that this daprd can run the worker, and pick its jobs path.

        The stable path on daprd >= 1.18, the alpha path on 1.16 and 1.17. Raises
        SettingsError when the sidecar rejects DAPR_API_TOKEN, StartupError for a
        daprd older than 1.16 or a runtimeVersion that is not a version.
        """
        try:
            meta = await self.metadata()
        except PermanentSidecarError as exc:
            if exc.status in (401, 403):
                raise SettingsError(
                    f"DAPR_API_TOKEN: the Dapr sidecar rejects it (HTTP {exc.status}); "
                    "set it to the sidecar's API token") from None
            raise
        version = meta.get("runtimeVersion")
        release = runtime_release(version if isinstance(version, str) else "")
        self.jobs_prefix = ("/v1.0/jobs" if release is None or release >= STABLE_JOBS_RUNTIME
                            else "/v1.0-alpha1/jobs")
        return self.jobs_prefix


def runtime_release(version: str) -> tuple[int, int] | None:
    """(major, minor) of daprd's runtimeVersion; None for a build of current source.

    StartupError below 1.16, or when the text is not a version: a sidecar that
    cannot say which it is may be one that drops job fields silently.
    """
    if version in CURRENT_BUILDS:
        return None
    match = _VERSION.match(version)
    if match is None:
        raise StartupError(
            f"the Dapr sidecar reports runtimeVersion {version[:40]!r}, not a version; "
            f"this worker needs daprd {_dotted(MIN_RUNTIME)} or later")
    release = int(match[1]), int(match[2])
    if release < MIN_RUNTIME:
        raise StartupError(
            f"daprd {version[:40]} is too old: this worker needs {_dotted(MIN_RUNTIME)} or later "
            "(older sidecars drop the jobs' overwrite and failurePolicy silently); upgrade Dapr")
    return release


def _dotted(release: tuple[int, int]) -> str:
    return ".".join(map(str, release))
