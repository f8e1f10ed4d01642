"""Issue 12 items 4 and 5 over real HTTP and real subprocesses: `--check` against
development sidecars that cannot run the worker (wrong token, a missing component,
an old daprd, a store without TTL, a failing jobs API, no subscription), /readyz
decided by the same checks, and `--explain` of a task whose job was deleted behind
the worker's back."""

from __future__ import annotations

import itertools
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import pytest
import structlog
from prometheus_client import CollectorRegistry

from devsidecar import DevSidecar, SidecarConfig, serve_sidecar
from tests.harness import free_port, stack
from worker.dapr.readiness import READY_REFRESH_FAILING, READY_REFRESH_OK, Readiness
from worker.errors import TransientError
from worker.server.app import OpsApp
from worker.settings import load_settings

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def bare_sidecar(**options: Any) -> AsyncIterator[tuple[int, DevSidecar]]:
    """A development sidecar with no worker beside it."""
    sidecar = DevSidecar(SidecarConfig(**options))
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_sidecar, sidecar, "127.0.0.1", 0)
        yield port, sidecar
        tg.cancel_scope.cancel()


async def cli(port: int, *args: str, **env: str) -> tuple[int, str, str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("REMINDER_", "DAPR_", "APP_API"))}
    full |= {"DAPR_HTTP_PORT": str(port), "REMINDER_PORT": str(free_port()), **env}
    with anyio.fail_after(30):
        done = await anyio.run_process([sys.executable, "-m", "worker", *args], env=full,
                                       check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def lines_of(out: str) -> dict[str, str]:
    """check name -> its line."""
    return {line[6:].split(":")[0]: line for line in out.splitlines() if line[:4] in
            ("ok  ", "FAIL", "skip", "info")}


async def test_check_passes_beside_a_running_worker() -> None:
    async with stack() as s:
        port = s.sidecar_url.rsplit(":", 1)[1]
        jobs_before = dict(s.sidecar.jobs())
        status, out, err = await cli(int(port), "--check", REMINDER_PORT=str(s.running.app_port))
        assert s.sidecar.jobs() == jobs_before  # the probe job is gone again
    assert status == 0, out + err
    checks = lines_of(out)
    assert len(checks) == 9 and all(line.startswith("ok  ") for line in checks.values()), out
    assert "jobs API" in checks and "subscription kafka-pubsub/task-events" in checks
    assert out.rstrip().endswith("9 of 9 checks passed") and err == ""


@pytest.mark.parametrize(("options", "env", "failing", "says"), [
    ({"dapr_api_token": "right"}, {"DAPR_API_TOKEN": "wrong"}, "DAPR_API_TOKEN",
     "the sidecar rejects it (HTTP 401); set DAPR_API_TOKEN"),
    ({"dapr_api_token": "right"}, {}, "DAPR_API_TOKEN", "set DAPR_API_TOKEN"),
    ({"runtime_version": "1.15.3"}, {}, "daprd version", "daprd 1.15.3 is too old"),
    ({"pubsubs": ("pubsub",)}, {}, "pub/sub component 'kafka-pubsub'",
     "not loaded (the sidecar has pubsub components: pubsub); set REMINDER_PUBSUB"),
    ({}, {"REMINDER_STATE_STORE": "tasks"}, "state store 'tasks'",
     "not loaded (the sidecar has state components: statestore); set REMINDER_STATE_STORE"),
    ({"state_capabilities": ("ETAG", "TRANSACTIONAL")}, {}, "state store 'statestore' features",
     "lacks TTL"),
    ({}, {"REMINDER_SECRET_STORE": "vault"}, "secret store 'vault'", "not loaded"),
])
async def test_check_names_what_is_wrong_and_exits_1(
        options: dict[str, Any], env: dict[str, str], failing: str, says: str) -> None:
    async with bare_sidecar(**options) as (port, _):
        status, out, _err = await cli(port, "--check", **env)
    assert status == 1, out
    checks = lines_of(out)
    assert checks[failing].startswith(f"FAIL  {failing}: ") and says in checks[failing], out


async def test_a_missing_subscription_fails_only_once_the_app_port_answers() -> None:
    """Issue 20: daprd asks for the subscription once the app port is open, so a
    pre-flight --check (nothing on the app port) says it is not checkable yet and
    passes; with something listening there (the worker runs) its absence fails."""
    name = "subscription kafka-pubsub/task-events"
    with socket.socket() as app:
        app.bind(("127.0.0.1", 0))
        app_port = str(app.getsockname()[1])
        async with bare_sidecar() as (port, _):
            status, out, _err = await cli(port, "--check", REMINDER_PORT=app_port)
            assert status == 0, out
            assert lines_of(out)[name].startswith(f"info  {name}: not checkable yet: nothing "
                                                  f"answers on the app port (127.0.0.1:"
                                                  f"{app_port}"), out
            assert out.rstrip().endswith("8 of 8 checks passed; 1 not checkable yet (see info)")
            app.listen()  # the worker's port answers: daprd should have asked by now
            status, out, _err = await cli(port, "--check", REMINDER_PORT=app_port)
    assert status == 1, out
    assert lines_of(out)[name].startswith(f"FAIL  {name}: not registered"), out


async def test_check_probes_the_jobs_api_and_finds_no_sidecar() -> None:
    async with bare_sidecar() as (port, sidecar):
        sidecar.faults.fail("jobs", times=100, status=500)
        status, out, _ = await cli(port, "--check")
    assert status == 1 and lines_of(out)["jobs API"].startswith("FAIL  jobs API: /v1.0/jobs:")
    status, out, _ = await cli(free_port(), "--check")  # nothing listens there
    checks = lines_of(out)
    assert status == 1 and checks["sidecar reachable"].startswith("FAIL")
    assert "or try --dev" in checks["sidecar reachable"]
    assert checks["jobs API"].startswith("skip")


async def test_readyz_is_503_with_the_reason_while_a_component_is_missing() -> None:
    """Issue 20: the reason is logged at start-up without any probe (not `worker
    ready`), and the /readyz body gives it."""
    with structlog.testing.capture_logs() as logs:
        async with stack(env={"REMINDER_PUBSUB": "pubsub"}) as s:
            with anyio.fail_after(5):  # no probe yet: the worker tells by itself
                for _ in itertools.count():
                    if any(e["event"] == "worker started, not ready" for e in logs):
                        break
                    await anyio.sleep(0.02)
            start = anyio.current_time()
            answer = await s.client.get(f"{s.ops_url}/readyz")
            assert anyio.current_time() - start < 2
            assert answer.status_code == 503
            assert answer.text.startswith("not ready: pub/sub component 'pubsub': not loaded")
            # cached: a second probe does not read the metadata again
            reads = s.sidecar.counts["metadata"]
            assert (await s.client.get(f"{s.ops_url}/readyz")).status_code == 503
            assert s.sidecar.counts["metadata"] == reads
    told = [e for e in logs if e["event"] == "worker started, not ready"]
    assert len(told) == 1 and told[0]["reason"].startswith("pub/sub component 'pubsub': "
                                                           "not loaded"), told
    assert told[0]["log_level"] == "warning" and told[0]["app_port"] == s.running.app_port
    assert not any(e["event"] in ("worker ready", "not ready") for e in logs)


async def test_readyz_says_why_while_starting_and_once_the_sidecar_is_gone() -> None:
    async with stack() as s:
        ops = OpsApp(CollectorRegistry(), s.running.app.service.sidecar)  # type: ignore[union-attr]
        assert await ops.readiness() == ("starting: waiting for the Dapr sidecar, its checks "
                                         "and the secrets")
        ops.started = True
        assert await ops.readiness() is None
        s.sidecar.faults.fail("health", times=10, status=500)
        assert await ops.readiness() == ("the Dapr sidecar's outbound health check fails "
                                         "(GET /v1.0/healthz/outbound)")
        answer = await s.client.get(f"{s.ops_url}/readyz")
        assert (answer.status_code, answer.text) == (
            503, "not ready: the Dapr sidecar's outbound health check fails "
                 "(GET /v1.0/healthz/outbound)\n")


class _Meta:
    """A sidecar whose metadata is set by the test."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta: dict[str, Any] | Exception = meta
        self.store: Exception | None = None  # what a state read raises, if anything

    async def metadata(self) -> dict[str, Any]:
        if isinstance(self.meta, Exception):
            raise self.meta
        return self.meta

    async def state_probe(self, store: str, key: str) -> None:
        if self.store is not None:
            raise self.store


def test_readiness_logs_the_start_up_line_then_every_change() -> None:
    settings = load_settings({})
    good = {"runtimeVersion": "1.16.0", "subscriptions": [
                {"pubsubname": "kafka-pubsub", "topic": "task-events"}],
            "components": [{"name": "kafka-pubsub", "type": "pubsub.kafka"},
                           {"name": "statestore", "type": "state.postgresql",
                            "capabilities": ["ETAG", "TTL"]}]}
    sidecar = _Meta(good)
    now = [0.0]
    readiness = Readiness(settings, sidecar, clock=lambda: now[0],  # type: ignore[arg-type]
                          started={"app_port": 8080})

    async def run() -> list[str | None]:
        seen = [await readiness.not_ready()]
        sidecar.meta = {**good, "subscriptions": []}
        now[0] += READY_REFRESH_OK
        seen.append(await readiness.not_ready())
        sidecar.meta = TransientError("no answer")
        now[0] += READY_REFRESH_FAILING
        seen.append(await readiness.not_ready())
        sidecar.meta = good  # back at once: a failed reading is not kept
        seen.append(await readiness.not_ready())
        return seen

    with structlog.testing.capture_logs() as logs:
        seen = anyio.run(run)
    assert seen[0] is None and seen[3] is None
    assert seen[1] is not None and seen[1].startswith("subscription kafka-pubsub/task-events")
    assert seen[2] == "metadata: no answer"
    assert [(e["event"], e.get("reason")) for e in logs] == [
        ("worker ready", None), ("not ready", seen[1]), ("not ready", seen[2]),
        ("ready: the sidecar has what the worker needs", None)]
    assert logs[0]["app_port"] == 8080


def test_readiness_fails_while_the_state_store_does_not_answer() -> None:
    """daprd's health and metadata stay green while Redis or PostgreSQL is down (seen
    end to end): /readyz reads a key of its own from the store."""
    settings = load_settings({})
    sidecar = _Meta({"runtimeVersion": "1.18.2", "subscriptions": [
                         {"pubsubname": "kafka-pubsub", "topic": "task-events"}],
                     "components": [{"name": "kafka-pubsub", "type": "pubsub.kafka"},
                                    {"name": "statestore", "type": "state.redis",
                                     "capabilities": ["ETAG", "TTL"]}]})
    now = [0.0]
    readiness = Readiness(settings, sidecar, clock=lambda: now[0])  # type: ignore[arg-type]

    async def run() -> list[str | None]:
        await readiness.refresh_store()  # what `watch` does before each reading
        seen = [await readiness.not_ready()]
        sidecar.store = TransientError("state: HTTP 500: connection refused")
        await readiness.refresh_store()
        now[0] += READY_REFRESH_OK
        seen.append(await readiness.not_ready())
        sidecar.store = None
        await readiness.refresh_store()
        now[0] += READY_REFRESH_FAILING
        seen.append(await readiness.not_ready())
        return seen

    seen = anyio.run(run)
    assert seen[0] is None and seen[2] is None
    assert seen[1] == "state store statestore does not answer: state: HTTP 500: connection refused"


# -- --explain ---------------------------------------------------------------------

def created(task_id: int | str, **payload: Any) -> dict[str, Any]:
    return {"event_type": "task.created", "task_id": task_id, "user_id": "u-explain",
            "timestamp": "2026-11-26T12:00:00Z", "payload": payload}


async def test_explain_shows_reminders_and_what_the_scheduler_really_has() -> None:
    async with stack() as s:
        port = int(s.sidecar_url.rsplit(":", 1)[1])
        await s.deliver(created(5, title="Pay rent", due_at="2031-02-01T09:00:00",
                                timezone="Europe/Berlin", reminders=["PT1H", "P1D"],
                                recurrence="FREQ=MONTHLY"))
        jobs = sorted(s.sidecar.jobs().items(), key=lambda item: item[1].due_time)
        assert len(jobs) == 2
        gone = jobs[1][0]  # the 08:00 Berlin one, deleted behind the worker's back
        resp = await s.client.delete(f"{s.sidecar_url}/v1.0/jobs/{gone}")
        assert resp.status_code == 204
        status, out, err = await cli(port, "--explain", "u-explain", "5", "--json")
        human_status, human, _ = await cli(port, "--explain", "u-explain", "5")
        none_status, none, _ = await cli(port, "--explain", "u-explain", "6")
        none_json_status, _, _ = await cli(port, "--explain", "u-explain", "6", "--json")
    assert status == 0, err
    found = json.loads(out)
    assert (found["user_id"], found["task_id"], found["status"]) == ("u-explain", 5, "active")
    assert found["due_at"] == "2031-02-01T08:00:00Z" and found["timezone"] == "Europe/Berlin"
    assert found["reminders"] == [
        {"at": "2031-01-31T08:00:00Z", "local": "2031-01-31T09:00:00+01:00", "kind": "reminder",
         "job": jobs[0][0], "scheduled": True, "state": "pending"},
        {"at": "2031-02-01T07:00:00Z", "local": "2031-02-01T08:00:00+01:00", "kind": "reminder",
         "job": gone, "scheduled": False, "state": "MISSING from the scheduler"},
    ]
    nxt = found["next_occurrence"]
    assert nxt["due_at"] == "2031-03-01T08:00:00Z" and "completed now" in nxt["assumes"]
    assert datetime.fromisoformat(found["last_event"]).year == 2026
    assert human_status == 0
    assert f"{gone}  not scheduled (MISSING from the scheduler)" in human
    assert "next occurrence" in human and "if the task is completed now" in human
    assert (none_status, none_json_status) == (1, 1) and "no record of task 6" in none


async def test_check_reads_secret_settings_first(tmp_path: Any) -> None:
    """Issue 20: --check reads the secret: settings from the store and checks their
    values (here the state store's name), with a line saying so."""
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"rw": {"store": "tasks-db"}}))
    async with bare_sidecar(state_stores=("tasks-db",), secret_stores={"vault": str(secrets)}
                            ) as (port, _):
        status, out, _err = await cli(port, "--check", REMINDER_SECRET_STORE="vault",
                                      REMINDER_STATE_STORE="secret:rw/store")
    checks = lines_of(out)
    assert checks["secret settings"] == ("ok    secret settings: REMINDER_STATE_STORE read "
                                          "from secret store 'vault'"), out
    assert checks["state store 'tasks-db'"].startswith("ok  "), out
    assert status == 0, out
