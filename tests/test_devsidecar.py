"""The development sidecar, pinned to daprd's HTTP answers over real HTTP.

Contract tests talk to `serve_sidecar` on port 0 with httpx; behaviour tests
add a tiny raw ASGI app (served on another port) that the sidecar discovers,
delivers to and fires jobs at. Synchronisation is by `wait_for` deadlines.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from devsidecar import (
    DevSidecar,
    ManualClock,
    SidecarConfig,
    serve_asgi,
    serve_sidecar,
)
from devsidecar.asgi import Receive, Scope, Send
from devsidecar.cron import next_after, parse_schedule
from devsidecar.protovalue import go_double
from devsidecar.pubsub import classify
from devsidecar.timeparse import (
    parse_go_duration,
    parse_instant,
    parse_iso_duration,
    parse_proto_duration,
)

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOPIC = "task-events"
DLQ = "task-events-dlq"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---------------------------------------------------------------- fake app


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeApp:
    """A raw ASGI app standing in for the worker.

    `answers[path]` is a list of (status, body) popped per call; when empty the
    call gets `default`. `/dapr/subscribe` answers `subscriptions` (404 if None).
    """

    subscriptions: list[dict[str, Any]] | None = None
    answers: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    default: tuple[int, bytes] = (200, b"")
    calls: list[Call] = field(default_factory=list)

    def calls_to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        self.calls.append(Call(scope["method"], path, headers, body))
        if path == "/dapr/subscribe":
            if self.subscriptions is None:
                status, reply = 404, b""
            else:
                status, reply = 200, json.dumps(self.subscriptions).encode()
        elif self.answers.get(path):
            status, reply = self.answers[path].pop(0)
        else:
            status, reply = self.default
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": reply})


def subscription(**extra: Any) -> dict[str, Any]:
    return {"pubsubname": "kafka-pubsub", "topic": TOPIC, "route": "/events", **extra}


@dataclass
class Harness:
    sidecar: DevSidecar
    client: httpx.AsyncClient
    app: FakeApp | None


@asynccontextmanager
async def running(
    config: SidecarConfig | None = None,
    *,
    clock: ManualClock | None = None,
    app: FakeApp | None = None,
) -> AsyncIterator[Harness]:
    config = config or SidecarConfig()
    token = config.dapr_api_token
    async with anyio.create_task_group() as tg:
        if app is not None:
            app_port = await tg.start(serve_asgi, app, "127.0.0.1", 0)
            config = replace(config, app_base_url=f"http://127.0.0.1:{app_port}")
        else:
            # Nothing listens on port 9 (discard): the app never answers.
            config = replace(config, app_base_url="http://127.0.0.1:9")
        sidecar = DevSidecar(config, clock)
        port = await tg.start(serve_sidecar, sidecar, "127.0.0.1", 0)
        headers = {"dapr-api-token": token} if token else {}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=5
        ) as client:
            yield Harness(sidecar, client, app)
        tg.cancel_scope.cancel()


def triggers_reach(sidecar: DevSidecar, n: int) -> Callable[[], bool]:
    return lambda: len(sidecar.job_triggers) == n


def error_code(response: httpx.Response) -> str:
    return str(response.json()["errorCode"])


# ---------------------------------------------------------------- state


@pytest.mark.anyio
async def test_state_save_get_and_missing_key() -> None:
    async with running() as h:
        c = h.client
        r = await c.post("/v1.0/state/statestore", json=[{"key": "k1", "value": {"a": 1}}])
        assert (r.status_code, r.content) == (204, b"")
        r = await c.get("/v1.0/state/statestore/k1")
        assert r.status_code == 200
        assert r.json() == {"a": 1}
        assert r.headers["etag"]
        r = await c.get("/v1.0/state/statestore/nope")
        assert (r.status_code, r.content) == (204, b"")
        assert h.sidecar.state()["k1"].value == {"a": 1}


@pytest.mark.anyio
async def test_state_etag_first_write_and_bad_requests() -> None:
    async with running() as h:
        c = h.client
        url = "/v1.0/state/statestore"
        await c.post(url, json=[{"key": "k", "value": 1}])
        etag = (await c.get(f"{url}/k")).headers["etag"]

        r = await c.post(url, json=[{"key": "k", "value": 2, "etag": "not-" + etag}])
        assert r.status_code == 409
        assert error_code(r) == "ERR_STATE_SAVE"
        r = await c.post(url, json=[{"key": "k", "value": 2, "etag": etag}])
        assert r.status_code == 204

        first = {"concurrency": "first-write"}
        r = await c.post(url, json=[{"key": "k", "value": 3, "options": first}])
        assert r.status_code == 409
        r = await c.post(url, json=[{"key": "fresh", "value": 3, "options": first}])
        assert r.status_code == 204

        r = await c.post(url, json=[{"key": "a||b", "value": 1}])
        assert r.status_code == 400
        r = await c.get("/v1.0/state/nostore/k")
        assert r.status_code == 400
        assert error_code(r) == "ERR_STATE_STORE_NOT_FOUND"
        r = await c.post("/v1.0/state/nostore", json=[{"key": "k", "value": 1}])
        assert r.status_code == 400


@pytest.mark.anyio
async def test_state_bulk_delete_transaction_and_ttl() -> None:
    clock = ManualClock(START)
    async with running(clock=clock) as h:
        c = h.client
        url = "/v1.0/state/statestore"
        await c.post(url, json=[{"key": "a", "value": "x"}, {"key": "b", "value": [1]}])
        r = await c.post(f"{url}/bulk", json={"keys": ["a", "zz"]})
        assert r.status_code == 200
        etag_a = (await c.get(f"{url}/a")).headers["etag"]
        assert r.json() == [{"key": "a", "data": "x", "etag": etag_a}, {"key": "zz"}]

        r = await c.delete(f"{url}/a", headers={"If-Match": "999"})
        assert r.status_code == 409
        r = await c.delete(f"{url}/a", headers={"If-Match": etag_a})
        assert r.status_code == 204
        r = await c.delete(f"{url}/never-there")
        assert r.status_code == 204

        bad = {
            "operations": [
                {"operation": "upsert", "request": {"key": "c", "value": 1}},
                {"operation": "delete", "request": {"key": "b", "etag": "999"}},
            ]
        }
        r = await c.post(f"{url}/transaction", json=bad)
        assert r.status_code == 409
        assert "c" not in h.sidecar.state()  # all or nothing
        good = {
            "operations": [
                {"operation": "upsert", "request": {"key": "c", "value": 1}},
                {"operation": "delete", "request": {"key": "b"}},
            ]
        }
        r = await c.post(f"{url}/transaction", json=good)
        assert r.status_code == 204
        assert set(h.sidecar.state()) == {"c"}

        await c.post(url, json=[{"key": "t", "value": 1, "metadata": {"ttlInSeconds": "60"}}])
        assert (await c.get(f"{url}/t")).status_code == 200
        clock.advance(timedelta(seconds=61))
        assert (await c.get(f"{url}/t")).status_code == 204


@pytest.mark.anyio
async def test_state_writes_are_logged_in_order_with_the_clock_when_they_landed() -> None:
    clock = ManualClock(START)
    async with running(clock=clock) as h:
        c = h.client
        url = "/v1.0/state/statestore"
        await c.post(url, json=[{"key": "a", "value": {"status": "active"}}])
        clock.advance(timedelta(minutes=11))
        etag = (await c.get(f"{url}/a")).headers["etag"]
        await c.post(url, json=[{"key": "a", "value": {"status": "completed"}, "etag": etag}])
        r = await c.post(url, json=[{"key": "a", "value": {"status": "lost"}, "etag": etag}])
        assert r.status_code == 409  # refused: not logged
        await c.delete(f"{url}/a")
        writes = h.sidecar.state_writes
        assert [(w.key, w.value, w.time - START) for w in writes] == [
            ("a", {"status": "active"}, timedelta(0)),
            ("a", {"status": "completed"}, timedelta(minutes=11)),
            ("a", None, timedelta(minutes=11)),
        ]
        assert writes[1].etag == (await c.get("/dev/state-writes")).json()[1]["etag"] != etag
        assert writes[2].etag is None
        assert (await c.get("/dev/counts")).json()["stateWrites"] == 3


@pytest.mark.anyio
async def test_state_ttl_0_and_minus_1_mean_no_expiry_below_is_refused() -> None:
    """As PostgreSQL v2 reads ttlInSeconds (components-contrib ParseTTL)."""
    clock = ManualClock(START)
    async with running(clock=clock) as h:
        c, url = h.client, "/v1.0/state/statestore"

        async def save(key: str, ttl: Any) -> int:
            item = {"key": key, "value": 1, "metadata": {"ttlInSeconds": ttl}}
            return (await c.post(url, json=[item])).status_code

        assert await save("zero", "60") == 204
        assert await save("zero", "0") == 204  # no expiry, and the earlier TTL is gone
        assert await save("minus", "60") == 204
        assert await save("minus", "-1") == 204
        clock.advance(timedelta(days=400))
        assert (await c.get(f"{url}/zero")).status_code == 200
        assert (await c.get(f"{url}/minus")).status_code == 200
        for bad in ["-2", "-3600", "2147483648", "1.5", "soon"]:
            r = await c.post(url, json=[{"key": "b", "value": 1,
                                         "metadata": {"ttlInSeconds": bad}}])
            assert (r.status_code, error_code(r)) == (500, "ERR_STATE_SAVE"), bad
        assert await save("b", 60) == 400  # metadata values are strings
        assert "b" not in h.sidecar.state()


@pytest.mark.anyio
@pytest.mark.parametrize("status", [409, 500])
async def test_first_write_conflict_is_409_in_memory_or_500_like_redis_and_postgresql(
    status: int,
) -> None:
    async with running(SidecarConfig(first_write_conflict_status=status)) as h:
        c, url = h.client, "/v1.0/state/statestore"
        item = {"key": "k", "value": 1, "options": {"concurrency": "first-write"}}
        assert (await c.post(url, json=[item])).status_code == 204
        r = await c.post(url, json=[item])
        assert (r.status_code, error_code(r)) == (status, "ERR_STATE_SAVE")
        etag = (await c.get(f"{url}/k")).headers["etag"]
        r = await c.post(url, json=[{**item, "etag": str(int(etag) + 1)}])
        assert r.status_code == 409  # an ETag mismatch stays 409 on every store


# ---------------------------------------------------------------- jobs


@pytest.mark.anyio
async def test_jobs_contract() -> None:
    async with running(clock=ManualClock(START)) as h:
        c = h.client
        body = {"dueTime": "2026-03-02T09:00:00+01:00", "data": {"task": "t1"}}
        assert (await c.post("/v1.0/jobs/j1", json=body)).status_code == 204
        r = await c.post("/v1.0/jobs/j1", json=body)
        assert r.status_code == 409
        r = await c.post("/v1.0/jobs/j1", json={**body, "overwrite": True})
        assert r.status_code == 204
        r = await c.get("/v1.0/jobs/j1")
        assert r.status_code == 200
        assert r.json()["name"] == "j1"
        # as daprd 1.18.2 answers it: the protobuf Any it holds
        assert r.json()["data"] == {"@type": "type.googleapis.com/google.protobuf.Value",
                                    "value": {"task": "t1"}}
        assert r.json()["dueTime"] == body["dueTime"]
        assert h.sidecar.jobs()["j1"].due_time == datetime(2026, 3, 2, 8, tzinfo=UTC)
        # the alpha path is the same handler
        assert (await c.get("/v1.0-alpha1/jobs/j1")).status_code == 200

        r = await c.get("/v1.0/jobs/missing")
        assert r.status_code == 500
        assert error_code(r) == "DAPR_SCHEDULER_GET_JOB"
        assert r.json()["message"] == ("failed to get job due to: rpc error: code = NotFound "
                                       "desc = job not found: missing")
        assert (await c.delete("/v1.0/jobs/missing")).status_code == 204
        assert (await c.delete("/v1.0/jobs/j1")).status_code == 204
        assert h.sidecar.jobs() == {}


JOB_VALIDATION = [
    ({"name": "j", "dueTime": "1h"}, 400),
    ({"data": {}}, 400),
    ({"dueTime": "tomorrow"}, 500),
    ({"dueTime": "1h", "schedule": "every day"}, 500),
    ({"dueTime": "1h", "ttl": "2h"}, 400),
    ({"dueTime": "1h", "repeats": 3}, 400),
    ({"schedule": "@every 1m", "dueTime": "1h", "ttl": "30m"}, 400),
    ({"dueTime": "1h", "failurePolicy": {"constant": {"interval": "500ms"}}}, 400),
    ({"due_time": "30s", "failure_policy": {"drop": {}}}, 204),
    ({"dueTime": "PT30S"}, 204),
    ({"dueTime": "1h30m", "unknownField": 1}, 204),
    ({"schedule": "*/10 * * * * *", "repeats": 2, "ttl": "1h"}, 204),
    ({"schedule": "@daily"}, 204),
]


@pytest.mark.anyio
async def test_job_validation() -> None:
    # One sidecar for the whole table: starting one per case costs more than the cases.
    async with running(clock=ManualClock(START)) as h:
        for i, (body, status) in enumerate(JOB_VALIDATION):
            r = await h.client.post(f"/v1.0/jobs/job-{i}", json=body)
            assert r.status_code == status, (body, r.text)
            if status != 204:
                assert r.json()["errorCode"], body


@pytest.mark.anyio
@pytest.mark.anyio
@pytest.mark.parametrize("name", [
    "bad%2Fname", "bad%5Cname", "bad%23name", "bad%3Fname", "bad%00name", "bad%0Aname",
    "a" * 254, "a..b", ".a", "b.", "%C3%A9t%C3%A9", "-", "a%7C%7C", "a+b", "a@b",
])
async def test_job_names_are_validated_like_the_scheduler(name: str) -> None:
    """go-etcd-cron's validator answers a plain error: daprd turns it into 500 on every verb."""
    async with running() as h:
        r = await h.client.post(f"/v1.0/jobs/{name}", json={"dueTime": "1h"})
        assert (r.status_code, error_code(r)) == (500, "DAPR_SCHEDULER_SCHEDULE_JOB")
        assert (await h.client.get(f"/v1.0/jobs/{name}")).status_code == 500
        assert (await h.client.delete(f"/v1.0/jobs/{name}")).status_code == 500
        assert h.sidecar.jobs() == {}


@pytest.mark.anyio
async def test_job_names_daprd_accepts() -> None:
    async with running() as h:
        for name in ["ok.name_1-2", "rw-" + "0f" * 20, "UPPER", "a:b c", "a" * 253, "a||b"]:
            r = await h.client.post(f"/v1.0/jobs/{name}", json={"dueTime": "1h"})
            assert r.status_code == 204, name
        r = await h.client.post("/v1.0/jobs/%20", json={"dueTime": "1h"})  # trimmed: empty
        assert (r.status_code, error_code(r)) == (400, "DAPR_SCHEDULER_JOB_NAME_EMPTY")


@pytest.mark.anyio
async def test_job_fires_at_due_time_with_exact_data() -> None:
    clock = ManualClock(START)
    app = FakeApp(subscriptions=[])
    config = SidecarConfig(app_api_token="app-secret")
    async with running(config, clock=clock, app=app) as h:
        data = {"task_id": "t1", "nested": [1, "two", None]}
        due = (START + timedelta(minutes=10)).isoformat()
        r = await h.client.post("/v1.0/jobs/remind-1", json={"dueTime": due, "data": data})
        assert r.status_code == 204

        clock.advance(timedelta(minutes=9))
        # A job due now fires at once; the scheduler handles instants in order, so once it
        # has fired the later job has been seen and not fired early.
        await h.client.post("/v1.0/jobs/probe", json={"dueTime": "0s", "data": 0})
        await h.sidecar.wait_for(lambda: len(app.calls_to("/job/probe")) == 1)
        assert app.calls_to("/job/remind-1") == []

        clock.advance(timedelta(minutes=1))
        await h.sidecar.wait_for(lambda: len(app.calls_to("/job/remind-1")) == 1)
        call = app.calls_to("/job/remind-1")[0]
        assert call.method == "POST"
        assert call.body == json.dumps(data, separators=(",", ":")).encode()
        assert json.loads(call.body) == data
        assert call.headers["content-type"] == "application/json"
        assert call.headers["dapr-api-token"] == "app-secret"
        assert call.headers["traceparent"].startswith("00-")
        await h.sidecar.wait_for(lambda: "remind-1" not in h.sidecar.jobs())


@pytest.mark.anyio
async def test_job_data_numbers_come_back_as_float64_like_daprd() -> None:
    """daprd holds job data as a protobuf Value: an integer above 2**53 returns changed."""
    app = FakeApp(subscriptions=[])
    async with running(app=app) as h:
        body = '{"dueTime": "0s", "data": {"id": 1234567890123456789, "n": [3, 2.50, 1e-7, 1e21]}}'
        r = await h.client.post("/v1.0/jobs/numbers", content=body)
        assert r.status_code == 204
        await h.sidecar.wait_for(lambda: len(app.calls_to("/job/numbers")) == 1)
        sent = b'{"id":1234567890123456800,"n":[3,2.5,1e-7,1e+21]}'
        assert app.calls_to("/job/numbers")[0].body == sent
        r = await h.client.post("/v1.0/jobs/huge", content='{"dueTime": "1h", "data": 1e400}')
        assert r.status_code == 400


@pytest.mark.parametrize(("number", "text"), [
    (0.0, "0"), (-0.0, "-0"), (1.0, "1"), (-2.0, "-2"), (0.1, "0.1"), (1.5e-6, "0.0000015"),
    (9.9e-7, "9.9e-7"), (1e-10, "1e-10"), (1e16, "10000000000000000"),
    (float(2**63), "9223372036854776000"), (float(1234567890123456789), "1234567890123456800"),
    (1e21, "1e+21"), (1.5e300, "1.5e+300"),
])
def test_go_double_prints_like_protojson(number: float, text: str) -> None:
    assert go_double(number) == text


@pytest.mark.anyio
async def test_job_without_data_has_empty_body() -> None:
    app = FakeApp(subscriptions=[])
    async with running(app=app) as h:
        await h.client.post("/v1.0/jobs/nodata", json={"dueTime": "2020-01-01T00:00:00Z"})
        await h.sidecar.wait_for(lambda: len(app.calls_to("/job/nodata")) == 1)
        assert app.calls_to("/job/nodata")[0].body == b""


@pytest.mark.anyio
async def test_a_job_without_data_cannot_be_read_back() -> None:
    """daprd 1.18.2 fails to encode a data-less job's GET (one reason to always send data)."""
    async with running(clock=ManualClock(START)) as h:
        await h.client.post("/v1.0/jobs/nodata", json={"dueTime": "2030-01-01T00:00:00Z"})
        r = await h.client.get("/v1.0/jobs/nodata")
        assert r.status_code == 500 and error_code(r) == "ERR_INTERNAL"


@pytest.mark.anyio
async def test_job_500_retried_per_failure_policy_then_lost() -> None:
    clock = ManualClock(START)
    app = FakeApp(subscriptions=[], default=(500, b""))
    async with running(clock=clock, app=app) as h:
        policy = {"constant": {"interval": "5s", "maxRetries": 2}}
        r = await h.client.post(
            "/v1.0/jobs/flaky", json={"dueTime": "0s", "data": 1, "failurePolicy": policy}
        )
        assert r.status_code == 204
        for attempts in (1, 2, 3):
            await h.sidecar.wait_for(triggers_reach(h.sidecar, attempts))
            clock.advance(timedelta(seconds=5))
        outcomes = [(t.attempt, t.status_code, t.outcome) for t in h.sidecar.job_triggers]
        assert outcomes == [(1, 500, "retry"), (2, 500, "retry"), (3, 500, "lost")]
        assert "flaky" not in h.sidecar.jobs()


@pytest.mark.anyio
async def test_job_404_is_done_and_never_retried() -> None:
    app = FakeApp(subscriptions=[], default=(404, b""))
    async with running(clock=ManualClock(START), app=app) as h:
        await h.client.post("/v1.0/jobs/gone", json={"dueTime": "0s", "data": {}})
        await h.sidecar.wait_for(lambda: "gone" not in h.sidecar.jobs())
        assert [(t.status_code, t.outcome) for t in h.sidecar.job_triggers] == [(404, "done")]


@pytest.mark.anyio
async def test_repeating_job_fires_until_repeats_end() -> None:
    clock = ManualClock(START)
    app = FakeApp(subscriptions=[])
    async with running(clock=clock, app=app) as h:
        r = await h.client.post(
            "/v1.0/jobs/tick", json={"schedule": "@every 10s", "repeats": 2, "data": "x"}
        )
        assert r.status_code == 204
        assert h.sidecar.jobs()["tick"].due_time == START + timedelta(seconds=10)
        clock.advance(timedelta(seconds=10))
        await h.sidecar.wait_for(lambda: len(app.calls_to("/job/tick")) == 1)
        await h.sidecar.wait_for(
            lambda: h.sidecar.jobs()["tick"].due_time == START + timedelta(seconds=20)
        )
        clock.advance(timedelta(seconds=10))
        await h.sidecar.wait_for(lambda: "tick" not in h.sidecar.jobs())
        assert len(app.calls_to("/job/tick")) == 2


# ---------------------------------------------------------------- pub/sub


@pytest.mark.anyio
async def test_publish_contract_and_envelopes() -> None:
    async with running(SidecarConfig(app_id="publisher")) as h:
        c = h.client
        r = await c.post("/v1.0/publish/nope/t", json={"a": 1})
        assert r.status_code == 404
        assert error_code(r) == "ERR_PUBSUB_NOT_FOUND"

        assert (
            await c.post(f"/v1.0/publish/kafka-pubsub/{TOPIC}", json={"a": 1})
        ).status_code == 204
        own = {"id": "evt-1", "type": "reminder.due", "source": "me", "specversion": "1.0",
               "datacontenttype": "application/json", "data": {"b": 2}}  # fmt: skip
        r = await c.post(
            "/v1.0/publish/kafka-pubsub/reminders",
            content=json.dumps(own),
            headers={"content-type": "application/cloudevents+json"},
        )
        assert r.status_code == 204
        r = await c.post(
            "/v1.0/publish/kafka-pubsub/t",
            content=b'{"not": "parsed"}',
            headers={"content-type": "text/plain"},
        )
        assert r.status_code == 204

        wrapped, kept, text = (p.envelope for p in h.sidecar.published)
        assert wrapped["type"] == "com.dapr.event.sent"
        assert wrapped["source"] == "publisher"
        assert wrapped["datacontenttype"] == "application/json"
        assert wrapped["data"] == {"a": 1}
        assert (wrapped["topic"], wrapped["pubsubname"]) == (TOPIC, "kafka-pubsub")
        assert wrapped["id"] and wrapped["traceparent"]
        assert (kept["id"], kept["type"], kept["source"], kept["data"]) == (
            "evt-1", "reminder.due", "me", {"b": 2},
        )  # fmt: skip
        assert kept["topic"] == "reminders"
        assert text["data"] == '{"not": "parsed"}'

        entries = [
            {"entryId": "1", "event": {"n": 1}, "contentType": "application/json"},
            {"entryId": "2", "event": "hello", "contentType": "text/plain"},
        ]
        r = await c.post(f"/v1.0/publish/bulk/kafka-pubsub/{TOPIC}", json=entries)
        assert r.status_code == 204
        assert [p.envelope["data"] for p in h.sidecar.published[-2:]] == [{"n": 1}, "hello"]


@pytest.mark.anyio
async def test_discovery_and_delivery_success() -> None:
    app = FakeApp(subscriptions=[subscription(deadLetterTopic=DLQ)])
    config = SidecarConfig(app_api_token="app-secret")
    async with running(config, app=app) as h:
        await h.sidecar.wait_for(lambda: h.sidecar.app_ready)
        assert app.calls_to("/dapr/subscribe")[0].method == "GET"
        assert h.sidecar.subscriptions[0]["topic"] == TOPIC

        r = await h.client.post(f"/v1.0/publish/kafka-pubsub/{TOPIC}", json={"task": 1})
        assert r.status_code == 204
        await h.sidecar.wait_for(lambda: len(h.sidecar.deliveries) == 1)
        delivery = h.sidecar.deliveries[0]
        assert (delivery.answer, delivery.outcome, delivery.attempt) == ("SUCCESS", "done", 1)
        call = app.calls_to("/events")[0]
        assert call.headers["content-type"] == "application/cloudevents+json"
        assert call.headers["pubsubname"] == "kafka-pubsub"
        assert call.headers["dapr-api-token"] == "app-secret"
        assert call.headers["traceparent"]
        envelope = json.loads(call.body)
        assert envelope["data"] == {"task": 1}
        assert envelope["id"] == h.sidecar.published[0].event_id


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("first", "outcome"),
    [
        ((200, b'{"status": "RETRY"}'), "retry"),
        ((200, b'{"status": "success"}'), "retry"),
        ((503, b""), "retry"),
        ((200, b'{"status": "SUCCESS"}'), "done"),
        ((200, b"not json"), "done"),
    ],
)
async def test_delivery_answers_redeliver_or_done(first: tuple[int, bytes], outcome: str) -> None:
    app = FakeApp(subscriptions=[subscription()], answers={"/events": [first]})
    config = SidecarConfig(delivery_retry_interval=timedelta(milliseconds=10))
    async with running(config, app=app) as h:
        await h.client.post(f"/v1.0/publish/kafka-pubsub/{TOPIC}", json={"n": 1})
        expected = 2 if outcome == "retry" else 1
        await h.sidecar.wait_for(lambda: len(h.sidecar.deliveries) == expected)
        deliveries = h.sidecar.deliveries
        assert deliveries[0].outcome == outcome
        if outcome == "retry":
            assert (deliveries[1].attempt, deliveries[1].outcome) == (2, "done")
            assert deliveries[0].event_id == deliveries[1].event_id


@pytest.mark.anyio
async def test_drop_and_404_go_to_the_dead_letter_topic() -> None:
    app = FakeApp(
        subscriptions=[subscription(deadLetterTopic=DLQ)],
        answers={"/events": [(200, b'{"status": "DROP"}'), (404, b"")]},
    )
    async with running(app=app) as h:
        await h.client.post(f"/v1.0/publish/kafka-pubsub/{TOPIC}", json={"n": 1})
        await h.sidecar.wait_for(lambda: len(h.sidecar.dead_letters) == 1)
        dead = h.sidecar.dead_letters[0]
        assert dead.topic == DLQ
        assert dead.envelope["data"] == {"n": 1}

        await h.client.post(f"/v1.0/publish/kafka-pubsub/{TOPIC}", json={"n": 2})
        await h.sidecar.wait_for(lambda: len(h.sidecar.deliveries) == 2)
        assert (h.sidecar.deliveries[1].answer, h.sidecar.deliveries[1].outcome) == (
            "HTTP_404",
            "drop",
        )
        await h.sidecar.wait_for(lambda: len(h.sidecar.dead_letters) == 2)  # 404 is like DROP
        assert h.sidecar.dead_letters[1].envelope["data"] == {"n": 2}
        assert len(app.calls_to("/events")) == 2


@pytest.mark.anyio
async def test_exhausted_redelivery_dead_letters() -> None:
    app = FakeApp(subscriptions=[subscription(deadLetterTopic=DLQ)], default=(500, b""))
    config = SidecarConfig(
        delivery_retry_interval=timedelta(milliseconds=5), delivery_max_attempts=3
    )
    async with running(config, app=app) as h:
        await h.client.post(f"/v1.0/publish/kafka-pubsub/{TOPIC}", json={"n": 1})
        await h.sidecar.wait_for(lambda: len(h.sidecar.dead_letters) == 1)
        assert [d.attempt for d in h.sidecar.deliveries] == [1, 2, 3]
        assert h.sidecar.deliveries[-1].outcome == "drop"


@pytest.mark.anyio
async def test_raw_payload_publish() -> None:
    raw_sub = subscription(route="/raw", topic="raw", metadata={"rawPayload": "true"})
    app = FakeApp(subscriptions=[raw_sub, subscription(topic="raw")])
    async with running(app=app) as h:
        r = await h.client.post(
            "/v1.0/publish/kafka-pubsub/raw?metadata.rawPayload=true", content=b"\x00bytes"
        )
        assert r.status_code == 204
        await h.sidecar.wait_for(lambda: len(h.sidecar.deliveries) == 2)
        assert app.calls_to("/raw")[0].body == b"\x00bytes"
        wrapped = json.loads(app.calls_to("/events")[0].body)
        assert wrapped["data_base64"] == "AGJ5dGVz"
        assert wrapped["datacontenttype"] == "application/octet-stream"


@pytest.mark.anyio
async def test_routing_rules_match_event_type() -> None:
    routes = {
        "rules": [{"match": 'event.type == "reminder.due"', "path": "/due"}],
        "default": "/other",
    }
    app = FakeApp(subscriptions=[{"pubsubname": "kafka-pubsub", "topic": TOPIC, "routes": routes}])
    async with running(app=app) as h:
        event = {"id": "1", "type": "reminder.due", "source": "s", "specversion": "1.0", "data": 1}
        headers = {"content-type": "application/cloudevents+json"}
        url = f"/v1.0/publish/kafka-pubsub/{TOPIC}"
        await h.client.post(url, content=json.dumps(event), headers=headers)
        await h.client.post(url, json={"x": 1})
        await h.sidecar.wait_for(lambda: len(h.sidecar.deliveries) == 2)
        assert len(app.calls_to("/due")) == 1
        assert len(app.calls_to("/other")) == 1


# ---------------------------------------------------------------- the rest of the surface


@pytest.mark.anyio
async def test_secrets(tmp_path: Path) -> None:
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"db": {"user": "u", "password": "p"}, "api-key": "k1"}))
    config = SidecarConfig(secret_stores={"local": str(secrets_file)})
    async with running(config) as h:
        r = await h.client.get("/v1.0/secrets/local/db")
        assert (r.status_code, r.json()) == (200, {"user": "u", "password": "p"})
        r = await h.client.get("/v1.0/secrets/local/api-key")
        assert r.json() == {"api-key": "k1"}
        r = await h.client.get("/v1.0/secrets/local/bulk")
        assert r.json()["db"]["user"] == "u"
        r = await h.client.get("/v1.0/secrets/other/db")
        assert r.status_code == 401
        assert error_code(r) == "ERR_SECRET_STORE_NOT_FOUND"
        r = await h.client.get("/v1.0/secrets/local/missing")
        assert r.status_code == 500
        assert error_code(r) == "ERR_SECRET_GET"


@pytest.mark.anyio
async def test_api_token_required_except_healthz() -> None:
    async with running(SidecarConfig(dapr_api_token="s3cret")) as h:
        async with httpx.AsyncClient(base_url=h.client.base_url) as anonymous:
            r = await anonymous.get("/v1.0/state/statestore/k")
            assert r.status_code == 401
            assert error_code(r) == "ERR_API_UNAUTHORIZED"
            r = await anonymous.get("/v1.0/metadata", headers={"dapr-api-token": "wrong"})
            assert r.status_code == 401
            assert (await anonymous.get("/v1.0/healthz/outbound")).status_code == 204
            assert (await anonymous.get("/v1.0/healthz")).status_code == 500
        assert (await h.client.get("/v1.0/state/statestore/k")).status_code == 204


@pytest.mark.anyio
async def test_health_metadata_and_routing_errors() -> None:
    app = FakeApp(subscriptions=[subscription(deadLetterTopic=DLQ)])
    async with running(SidecarConfig(runtime_version="1.18.3"), app=app) as h:
        c = h.client
        assert (await c.get("/v1.0/healthz/outbound")).status_code == 204
        await h.sidecar.wait_for(lambda: h.sidecar.app_ready)
        assert (await c.get("/v1.0/healthz")).status_code == 204
        meta = (await c.get("/v1.0/metadata")).json()
        assert meta["id"] == "reminder-worker"
        assert meta["runtimeVersion"] == "1.18.3"
        names = {(x["name"], x["type"]) for x in meta["components"]}
        assert {("statestore", "state.in-memory"), ("kafka-pubsub", "pubsub.in-memory")} <= names
        assert meta["subscriptions"][0]["deadLetterTopic"] == DLQ
        assert "extended" in meta
        assert (await c.get("/v1.0/nothing-here")).status_code == 404
        assert (await c.get("/elsewhere")).status_code == 404
        assert (await c.delete("/v1.0/metadata")).status_code == 405
        assert (await c.get("/v1.0/publish/kafka-pubsub/t")).status_code == 405


@pytest.mark.anyio
async def test_invocation_recorded_or_forwarded() -> None:
    target = FakeApp(default=(201, b'{"created": true}'))
    async with anyio.create_task_group() as tg:
        target_port = await tg.start(serve_asgi, target, "127.0.0.1", 0)
        config = SidecarConfig(hosted_apps={"other": f"http://127.0.0.1:{target_port}"},
                               stub_apps=("todo-backend",))
        async with running(config) as h:
            body = {"parent_task_id": "t1"}
            r = await h.client.post(
                "/v1.0/invoke/todo-backend/method/api/tasks/create-next",
                json=body,
                headers={"x-custom": "1"},
            )
            assert (r.status_code, r.json()) == (200, {})
            inv = h.sidecar.invocations[0]
            assert (inv.app_id, inv.method, inv.verb) == (
                "todo-backend", "api/tasks/create-next", "POST",
            )  # fmt: skip
            assert inv.json == body
            assert inv.headers["x-custom"] == "1"
            assert not inv.forwarded

            r = await h.client.put("/v1.0/invoke/other/method/things/1?x=2", content=b"raw")
            assert (r.status_code, r.json()) == (201, {"created": True})
            forwarded = target.calls[0]
            assert (forwarded.method, forwarded.path, forwarded.body) == (
                "PUT",
                "/things/1",
                b"raw",
            )

            # an app id nobody serves (a wrong REMINDER_TASK_APP_ID): 500, as daprd answers
            r = await h.client.post("/v1.0/invoke/todo-backnd/method/x", json={})
            assert (r.status_code, error_code(r)) == (500, "ERR_DIRECT_INVOKE")

            h.sidecar.faults.fail("invoke")
            r = await h.client.post("/v1.0/invoke/todo-backend/method/x", json={})
            assert r.status_code == 500
            assert error_code(r) == "ERR_DIRECT_INVOKE"
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_faults_from_python_and_http() -> None:
    async with running() as h:
        c = h.client
        h.sidecar.faults.fail("state", times=2, status=503)
        for _ in range(2):
            r = await c.get("/v1.0/state/statestore/k")
            assert r.status_code == 503
            assert r.json()["errorCode"].startswith("ERR_STATE")
        assert (await c.get("/v1.0/state/statestore/k")).status_code == 204

        h.sidecar.faults.drop("jobs")
        with pytest.raises(httpx.TransportError):
            await c.post("/v1.0/jobs/x", json={"dueTime": "1h"})
        assert (await c.post("/v1.0/jobs/x", json={"dueTime": "1h"})).status_code == 204

        r = await c.post("/dev/faults", json={"down": True})
        assert r.status_code == 200
        with pytest.raises(httpx.TransportError):
            await c.get("/v1.0/healthz/outbound")
        h.sidecar.faults.clear()
        assert (await c.get("/v1.0/healthz/outbound")).status_code == 204

        r = await c.post("/dev/faults", json={"api": "publish", "fail": 1, "status": 500})
        assert r.status_code == 200
        r = await c.post("/v1.0/publish/kafka-pubsub/t", json={})
        assert (r.status_code, error_code(r)) == (500, "ERR_PUBSUB_PUBLISH_MESSAGE")
        assert (await c.post("/dev/faults", json={"api": "nope", "fail": 1})).status_code == 400

        h.sidecar.faults.latency("metadata", 0.05)
        started = anyio.current_time()
        assert (await c.get("/v1.0/metadata")).status_code == 200
        assert anyio.current_time() - started >= 0.04

        assert h.sidecar.counts["state"] == 3
        assert h.sidecar.counts["jobs"] == 2
        assert h.sidecar.counts["health"] == 2


@pytest.mark.anyio
async def test_dev_endpoints() -> None:
    async with running() as h:
        c = h.client
        await c.post("/v1.0/state/statestore", json=[{"key": "k", "value": {"v": 1}}])
        await c.post("/v1.0/publish/kafka-pubsub/t", json={"p": 1})
        await c.post("/v1.0/jobs/j", json={"dueTime": "1h", "data": 1})
        await c.post("/v1.0/invoke/x/method/y", json={})
        state = (await c.get("/dev/state/statestore")).json()
        assert state["k"]["value"] == {"v": 1}
        assert (await c.get("/dev/published")).json()[0]["envelope"]["data"] == {"p": 1}
        assert "j" in (await c.get("/dev/jobs")).json()
        assert (await c.get("/dev/invocations")).json()[0]["appId"] == "x"
        assert (await c.get("/dev/dead-letters")).json() == []
        assert (await c.get("/dev/deliveries")).json() == []
        counts = (await c.get("/dev/counts")).json()
        assert (counts["state"], counts["publish"], counts["jobs"], counts["invoke"]) == (
            1,
            1,
            1,
            1,
        )


@pytest.mark.anyio
async def test_echo_summarises_reminders_and_invocations() -> None:
    lines: list[str] = []
    async with running(SidecarConfig(echo=lines.append)) as h:
        event = {"id": "r1", "type": "reminder.due", "source": "reminder-worker",
                 "specversion": "1.0", "data": {"task_id": "t1", "user_id": "u1",
                 "title": "Pay rent", "remind_at": "2026-03-01T09:00:00Z"}}  # fmt: skip
        await h.client.post(
            "/v1.0/publish/kafka-pubsub/reminders",
            content=json.dumps(event),
            headers={"content-type": "application/cloudevents+json"},
        )
        await h.client.post("/v1.0/publish/kafka-pubsub/reminders", json={"other": 1})
        await h.client.post("/v1.0/invoke/todo-backend/method/api/tasks/create-next", json={})
        deferred = {**event, "id": "r2", "data": {
            **event["data"], "kind": "reminder", "remind_at": "2026-03-01T07:00:00Z",
            "deferred_from": "2026-03-01T02:00:00Z", "count": 3,
            "due_at": "2026-03-01T10:00:00Z"}}
        await h.client.post(
            "/v1.0/publish/kafka-pubsub/reminders",
            content=json.dumps(deferred),
            headers={"content-type": "application/cloudevents+json"},
        )
        assert len(lines) == 3
        assert "t1" in lines[0] and "Pay rent" in lines[0] and "kind=" not in lines[0]
        assert "due_at" not in lines[0] and "None" not in lines[0]  # absent: not said
        assert lines[1].startswith("invoke todo-backend POST /api/tasks/create-next")
        assert ("kind=reminder remind_at=2026-03-01T07:00:00Z "
                "deferred_from=2026-03-01T02:00:00Z count=3 due_at=2026-03-01T10:00:00Z") \
            in lines[2]


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("spec", "previous", "expected"),
    [
        ("@every 1h30m", START, START + timedelta(hours=1, minutes=30)),
        ("@daily", START, datetime(2026, 3, 2, tzinfo=UTC)),
        ("@hourly", START, datetime(2026, 3, 1, 13, tzinfo=UTC)),
        ("*/15 * * * * *", START, START + timedelta(seconds=15)),
        ("0 30 9 * * MON-FRI", START, datetime(2026, 3, 2, 9, 30, tzinfo=UTC)),  # 1 March: Sunday
        ("0 0 0 29 2 *", START, datetime(2028, 2, 29, tzinfo=UTC)),
        ("CRON_TZ=Europe/Paris 0 0 9 * * *", START, datetime(2026, 3, 2, 8, tzinfo=UTC)),
    ],
)
def test_next_after(spec: str, previous: datetime, expected: datetime) -> None:
    assert next_after(parse_schedule(spec), previous) == expected


@pytest.mark.parametrize("spec", ["* * * * *", "61 * * * * *", "@sometimes", "@every soon"])
def test_bad_schedules(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(spec)


def test_time_formats() -> None:
    assert parse_go_duration("1h30m") == timedelta(hours=1, minutes=30)
    assert parse_go_duration("1.5s") == timedelta(seconds=1.5)
    assert parse_go_duration("500ms") == timedelta(milliseconds=500)
    assert parse_go_duration("1d") is None
    assert parse_iso_duration("P1DT2H") == timedelta(days=1, hours=2)
    assert parse_iso_duration("P") is None
    assert parse_proto_duration("0.5s") == timedelta(milliseconds=500)
    assert parse_proto_duration("500ms") is None
    assert parse_instant("2026-03-01T12:00:00.123456789-05:00", START) == datetime(
        2026, 3, 1, 17, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_instant("30s", START) == START + timedelta(seconds=30)
    assert parse_instant("next week", START) is None


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"", ("SUCCESS", "done")),
        (204, b"", ("SUCCESS", "done")),
        (200, b"[1]", ("SUCCESS", "done")),
        (200, b'{"other": 1}', ("SUCCESS", "done")),
        (200, b'{"status": "SUCCESS"}', ("SUCCESS", "done")),
        (200, b'{"status": "RETRY"}', ("RETRY", "retry")),
        (200, b'{"status": "DROP"}', ("DROP", "drop")),
        (200, b'{"status": "success"}', ("success", "retry")),
        (404, b"", ("HTTP_404", "drop")),
        (500, b'{"status": "SUCCESS"}', ("HTTP_500", "retry")),
        (None, b"", ("CONNECTION_ERROR", "retry")),
    ],
)
def test_delivery_answer_table(status: int | None, body: bytes, expected: tuple[str, str]) -> None:
    assert classify(status, body) == expected


@pytest.mark.anyio
async def test_fault_exempt_keys_are_served_and_leave_the_faults_to_other_calls() -> None:
    """A key a harness exempts (the worker's readiness probe, read on a timer of its own)
    neither takes an injected state fault nor moves a fault's `after` count."""
    async with running(SidecarConfig(fault_exempt_keys=("probe",))) as h:
        c = h.client
        h.sidecar.faults.fail("state", times=1, after=1)
        assert (await c.get("/v1.0/state/statestore/probe")).status_code == 204
        assert (await c.get("/v1.0/state/statestore/a")).status_code == 204  # the `after` one
        assert (await c.get("/v1.0/state/statestore/probe")).status_code == 204
        assert (await c.get("/v1.0/state/statestore/b")).status_code == 500
        assert h.sidecar.faults.injected["state"] == 1
    async with running() as h:  # not exempt unless configured: a store fault is a fault
        h.sidecar.faults.fail("state", times=1)
        assert (await h.client.get("/v1.0/state/statestore/probe")).status_code == 500
