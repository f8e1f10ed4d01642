"""The Dapr sidecar HTTP client: one long-lived client, tokens, timeouts,
bounded retries where a call is safe to repeat, and a concurrency gate.

Errors map onto worker.errors: no answer / 5xx -> SidecarUnavailable
(transient), 409 -> Conflict (transient), other 4xx -> PermanentSidecarError.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

import anyio
import httpx2
from httpx_aiohttp.httpx2 import AiohttpTransport

from worker.errors import Conflict, PermanentSidecarError, SidecarUnavailable
from worker.metrics import Metrics
from worker.schedule import format_utc

# About 24-32 calls in flight saturate one sidecar (style.md); more only queue there.
DEFAULT_CONCURRENCY: Final = 32
# daprd itself waits up to 30 s for the scheduler; a stuck call must fail before the
# worker's handler deadline (settings.DEFAULT_HANDLER_DEADLINE, 20 s, itself below
# daprd's 30 s appDelivery): 3 attempts x 6 s + backoff = 18.2 s at worst.
DEFAULT_TIMEOUT: Final = httpx2.Timeout(6.0, connect=2.0)
SAFE_RETRIES: Final = 2  # extra attempts for idempotent calls, with jittered backoff
BACKOFF_BASE: Final = 0.05
# Reminder triggers retry for minutes, not Dapr's default 3 x 1 s.
JOB_FAILURE_POLICY: Final = {"constant": {"interval": "10s", "maxRetries": 30}}
CE_JSON: Final = "application/cloudevents+json"


def make_client(
    transport: httpx2.AsyncBaseTransport | None = None, timeout: float | None = None
) -> httpx2.AsyncClient:
    """The process's one HTTP client for the sidecar.

    httpx2 (the maintained fork of httpx, same API) on aiohttp's connection pool:
    stock httpx/httpcore spends most of a small request in pool scans and anyio
    locks (bench/RESULTS.md: about 3.5x the CPU per event). A transport passed in
    (tests) replaces aiohttp's.
    """
    limits = httpx2.Limits(max_connections=DEFAULT_CONCURRENCY * 2,
                           max_keepalive_connections=DEFAULT_CONCURRENCY * 2)
    if transport is None:
        transport = AiohttpTransport(limits=limits)
    return httpx2.AsyncClient(timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                              limits=limits, transport=transport)


_URL_SAFE = re.compile(r"[A-Za-z0-9._-]+")
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once, not per call


def _q(segment: str) -> str:
    # Job names and keys are digests already; quote only what is not plainly safe.
    return segment if _URL_SAFE.fullmatch(segment) else quote(segment, safe="")


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


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
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.metrics = metrics
        self.headers: dict[str, str] = {"dapr-api-token": api_token} if api_token else {}
        self.gate = anyio.CapacityLimiter(concurrency)
        self.jobs_prefix = "/v1.0-alpha1/jobs"  # works on every daprd >= 1.14
        self._sleep = sleep
        self._observe = {
            (api, outcome): metrics.sidecar_seconds.labels(api, outcome)
            for api in ("jobs", "state", "publish", "invoke", "secrets", "health", "metadata")
            for outcome in ("ok", "error")
        }

    async def _call(
        self, api: str, method: str, path: str, *, body: bytes | None = None,
        content_type: str = "application/json", headers: Mapping[str, str] | None = None,
        safe: bool = False, ok: tuple[int, ...] = (200, 204),
    ) -> httpx2.Response:
        hdrs = dict(self.headers)
        if body is not None:
            hdrs["content-type"] = content_type
        if headers:
            hdrs.update(headers)
        url = self.base_url + path
        attempts = 1 + (SAFE_RETRIES if safe else 0)
        # Health checks never queue behind work: /readyz must answer within 2 s.
        gate = self.gate if api != "health" else contextlib.nullcontext()
        for attempt in range(attempts):
            start = time.perf_counter()
            try:
                async with gate:
                    resp = await self.client.request(method, url, content=body, headers=hdrs)
            except httpx2.HTTPError as exc:
                self._observe[api, "error"].observe(time.perf_counter() - start)
                error: Exception = SidecarUnavailable(api, f"{type(exc).__name__}: {exc}")
            else:
                elapsed = time.perf_counter() - start
                if resp.status_code in ok:
                    self._observe[api, "ok"].observe(elapsed)
                    return resp
                self._observe[api, "error"].observe(elapsed)
                if resp.status_code == 409:
                    raise Conflict(f"{api}: 409 {resp.text[:200]}")
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
            return resp.json(), resp.headers.get("etag")
        except ValueError:
            raise PermanentSidecarError("state", resp.status_code, "value is not JSON") from None

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
        try:
            await self._call("state", "POST", f"/v1.0/state/{_q(store)}", body=_dumps([item]),
                             safe=etag is None and not first_write)
        except SidecarUnavailable as exc:
            if first_write and exc.status == 500:
                raise Conflict(f"state: first-write answered 500 for {key}") from exc
            raise

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

    async def job_delete(self, name: str) -> None:
        """Delete a job; a missing job is fine (daprd answers 204)."""
        await self._call("jobs", "DELETE", f"{self.jobs_prefix}/{_q(name)}", safe=True)

    # -- pub/sub, invocation, secrets -------------------------------------
    async def publish(self, pubsub: str, topic: str, envelope: dict[str, Any]) -> None:
        """Publish our own CloudEvent (daprd keeps its id, type, source and data)."""
        await self._call("publish", "POST", f"/v1.0/publish/{_q(pubsub)}/{_q(topic)}",
                         body=_dumps(envelope), content_type=CE_JSON)

    async def invoke(self, app_id: str, method: str, body: Any,
                     headers: Mapping[str, str] | None = None) -> Any:
        """POST to another app through Dapr; the target's 2xx body (JSON or None)."""
        path = f"/v1.0/invoke/{_q(app_id)}/method/{quote(method, safe='/')}"
        resp = await self._call("invoke", "POST", path, body=_dumps(body), headers=headers,
                                ok=(200, 201, 202, 204))
        try:
            return resp.json() if resp.content else None
        except ValueError:
            return None

    async def secret(self, store: str, name: str) -> dict[str, str]:
        resp = await self._call("secrets", "GET", f"/v1.0/secrets/{_q(store)}/{_q(name)}",
                                safe=True)
        value = resp.json()
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
        value = resp.json()
        return value if isinstance(value, dict) else {}

    async def choose_jobs_api(self) -> str:
        """Use the stable jobs path on daprd >= 1.18, the alpha path before."""
        version = str((await self.metadata()).get("runtimeVersion", ""))
        self.jobs_prefix = "/v1.0/jobs" if _at_least(version, (1, 18)) else "/v1.0-alpha1/jobs"
        return self.jobs_prefix


def _at_least(version: str, wanted: tuple[int, int]) -> bool:
    if version in ("edge", "dev", "latest"):
        return True
    parts = version.lstrip("v").split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= wanted
    except (ValueError, IndexError):
        return False
