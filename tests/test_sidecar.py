"""The sidecar client at the transport seam (httpx2.MockTransport): paths, headers, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx2 as httpx  # the worker's client library
import pytest
from prometheus_client import CollectorRegistry

from worker.dapr.sidecar import Sidecar, make_client
from worker.errors import (
    Conflict,
    PermanentSidecarError,
    SettingsError,
    SidecarUnavailable,
    StartupError,
)
from worker.metrics import Metrics

pytestmark = pytest.mark.anyio


def sidecar(handler: object, token: str | None = "tok") -> tuple[Sidecar, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)  # type: ignore[operator,no-any-return]

    async def no_sleep(_: float) -> None:
        return None

    client = make_client(httpx.MockTransport(record))
    metrics = Metrics.create(CollectorRegistry(), process=False)
    return Sidecar("http://dapr:3500", client, metrics, api_token=token, sleep=no_sleep), seen


@pytest.mark.parametrize(("version", "prefix"), [
    ("1.18.1", "/v1.0/jobs"), ("1.19.0", "/v1.0/jobs"), ("edge", "/v1.0/jobs"),
    ("1.17.4", "/v1.0-alpha1/jobs"), ("1.16.0", "/v1.0-alpha1/jobs"),
    ("v1.16.2-rc.1", "/v1.0-alpha1/jobs"), ("dev", "/v1.0/jobs"),
])
async def test_jobs_path_follows_the_runtime_version(version: str, prefix: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1.0/metadata":
            return httpx.Response(200, json={"id": "rw", "runtimeVersion": version})
        return httpx.Response(204)

    sc, seen = sidecar(answer)
    assert await sc.choose_jobs_api() == prefix
    await sc.job_schedule("rw-abc", datetime(2026, 12, 1, 8, tzinfo=UTC), {"a": 1})
    job = seen[-1]
    assert job.url.path == f"{prefix}/rw-abc" and job.headers["dapr-api-token"] == "tok"
    body = json.loads(job.content)
    assert body == {"dueTime": "2026-12-01T08:00:00Z", "data": {"a": 1}, "overwrite": True,
                    "failurePolicy": {"constant": {"interval": "10s", "maxRetries": 30}}}
    assert "name" not in body


@pytest.mark.parametrize(("version", "problem"), [
    ("1.15.9", "daprd 1.15.9 is too old"), ("1.14.0", "too old"), ("v0.11.3", "too old"),
    ("garbage", "not a version"), ("", "not a version"), (None, "not a version"),
    ("1.18", None), ("1.20.0+build.7", None),
])
async def test_daprd_older_than_1_16_or_unknown_is_refused(version: str | None,
                                                           problem: str | None) -> None:
    meta = {"id": "rw"} if version is None else {"id": "rw", "runtimeVersion": version}
    sc, _ = sidecar(lambda request: httpx.Response(200, json=meta))
    if problem is None:
        assert await sc.choose_jobs_api() == "/v1.0/jobs"
        return
    with pytest.raises(StartupError, match=problem) as info:
        await sc.choose_jobs_api()
    assert "1.16 or later" in str(info.value) and not isinstance(info.value, SettingsError)


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_token_is_a_settings_error_naming_dapr_api_token(status: int) -> None:
    sc, _ = sidecar(lambda request: httpx.Response(status, json={"errorCode": "x"}))
    with pytest.raises(SettingsError, match=r"^DAPR_API_TOKEN: .*rejects it"):
        await sc.choose_jobs_api()


async def test_state_get_missing_is_none_and_present_carries_the_etag() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/gone"):
            return httpx.Response(204)
        return httpx.Response(200, json={"v": 1}, headers={"etag": "7"})

    sc, seen = sidecar(answer, token=None)
    assert await sc.state_get("statestore", "gone") is None
    assert await sc.state_get("statestore", "here") == ({"v": 1}, "7")
    assert "dapr-api-token" not in seen[0].headers


async def test_bulk_get_keeps_the_keys_order_and_a_key_in_error_fails_the_call() -> None:
    """daprd's bulk answer: a missing key carries only its key; a key the store could
    not read carries `error` (then nothing of the answer is trusted: retry)."""
    def answer(request: httpx.Request) -> httpx.Response:
        keys = json.loads(request.content)["keys"]
        assert request.url.path == "/v1.0/state/statestore/bulk"
        if "bad" in keys:
            return httpx.Response(200, json=[{"key": "bad", "error": "redis down"}])
        return httpx.Response(200, json=[{"key": "b"}, {"key": "a", "data": {"v": 1},
                                                        "etag": "3"}])

    sc, _ = sidecar(answer, token=None)
    assert await sc.state_get_many("statestore", ["a", "b"]) == [({"v": 1}, "3"), None]
    with pytest.raises(SidecarUnavailable, match="redis down"):
        await sc.state_get_many("statestore", ["bad"])


async def test_save_with_etag_is_compare_and_set_and_409_is_a_conflict() -> None:
    sc, seen = sidecar(lambda r: httpx.Response(409, text="etag mismatch"))
    with pytest.raises(Conflict):
        await sc.state_save("statestore", "k", {"v": 2}, etag="7")
    assert len(seen) == 1  # a compare-and-set is never blindly repeated
    assert json.loads(seen[0].content) == [
        {"key": "k", "value": {"v": 2}, "etag": "7", "options": {"concurrency": "first-write"}}]


async def test_first_write_answered_500_is_a_conflict_like_postgresql() -> None:
    sc, seen = sidecar(lambda r: httpx.Response(500, text="duplicate key"))
    with pytest.raises(Conflict):
        await sc.state_save("statestore", "k", {}, first_write=True)
    assert len(seen) == 1


async def test_safe_calls_retry_then_fail_as_unavailable_unsafe_ones_do_not() -> None:
    sc, seen = sidecar(lambda r: httpx.Response(503, text="scheduler down"))
    with pytest.raises(SidecarUnavailable):
        await sc.job_delete("rw-abc")
    assert len(seen) == 3  # idempotent: 1 + 2 quick retries
    seen.clear()
    with pytest.raises(SidecarUnavailable):
        await sc.publish("ps", "reminders", {"id": "x"})
    assert len(seen) == 1  # a publish is not repeated here; Dapr's redelivery decides
    assert seen[0].headers["content-type"] == "application/cloudevents+json"


async def test_connection_errors_are_unavailable_and_4xx_is_permanent() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    sc, _ = sidecar(refuse)
    with pytest.raises(SidecarUnavailable):
        await sc.state_get("statestore", "k")
    assert not await sc.outbound_healthy()
    sc, _ = sidecar(lambda r: httpx.Response(400, json={"errorCode": "ERR_STATE_STORE_NOT_FOUND"}))
    with pytest.raises(PermanentSidecarError) as info:
        await sc.state_get("nostore", "k")
    assert info.value.status == 400


async def test_names_and_keys_are_escaped_in_urls() -> None:
    sc, seen = sidecar(lambda r: httpx.Response(204))
    await sc.state_get("statestore", "a/b?c#d")
    assert seen[0].url.raw_path == b"/v1.0/state/statestore/a%2Fb%3Fc%23d"


async def test_invoke_posts_json_to_the_method_path() -> None:
    sc, seen = sidecar(lambda r: httpx.Response(201, json={"id": 5}))
    assert await sc.invoke("todo-backend", "api/tasks/create-next", {"x": 1}) == (201, {"id": 5})
    assert seen[0].url.path == "/v1.0/invoke/todo-backend/method/api/tasks/create-next"
    assert seen[0].method == "POST" and json.loads(seen[0].content) == {"x": 1}
    sc, _ = sidecar(lambda r: httpx.Response(409, json={"error": "exists"}))
    assert await sc.invoke("todo-backend", "m", {}) == (409, {"error": "exists"})
    sc, _ = sidecar(lambda r: httpx.Response(422, json={"error": "bad"}))
    with pytest.raises(PermanentSidecarError) as info:
        await sc.invoke("todo-backend", "m", {})
    assert info.value.status == 422
