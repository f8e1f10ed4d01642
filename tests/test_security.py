"""Security: tokens in both directions (missing, wrong, compared in constant time), only
the health path exempt, no token or secret value in logs or metrics, the app port on
loopback by default, the container not root."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import structlog

from tests.cluster import cluster
from tests.factory import created, event
from worker.errors import SettingsError, startup_error
from worker.keys import task_key
from worker.settings import load_settings

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent

APP_TOKEN = "app-tok-9d81c2"
DAPR_TOKEN = "dapr-tok-55e0aa"
SECRET_VALUE = "s3cret-from-the-store-77ab"


async def test_app_token_required_on_every_path_but_healthz() -> None:
    env = {"APP_API_TOKEN": APP_TOKEN, "DAPR_API_TOKEN": DAPR_TOKEN}
    async with cluster(1, env=env) as c:
        url = c.replicas[0].app_url
        paths = ["/dapr/subscribe", "/task-events", "/job/rw-0", "/metrics", "/readyz",
                 "/healthz/", "/healthz/x", "/HEALTHZ", "//healthz", "/healthz%00",
                 "/dapr/subscribe?healthz", "/", "/nope"]
        for headers in ({}, {"dapr-api-token": "wrong"}, {"dapr-api-token": ""},
                        {"dapr-api-token": APP_TOKEN[:-1]},
                        {"dapr-api-token": APP_TOKEN + "x"},
                        {"authorization": f"Bearer {APP_TOKEN}"}):
            for path in paths:
                for method in ("GET", "POST"):
                    resp = await c.client.request(method, url + path, headers=headers,
                                                  content=b"{}")
                    assert resp.status_code == 401, (method, path, headers)
        assert (await c.client.get(f"{url}/healthz")).status_code == 204  # the probe: exempt
        good = {"dapr-api-token": APP_TOKEN}
        assert (await c.client.get(f"{url}/dapr/subscribe", headers=good)).status_code == 200
        # a second header with the right token does not rescue a wrong first one
        resp = await c.client.get(f"{url}/dapr/subscribe", headers=[
            ("dapr-api-token", "wrong"), ("dapr-api-token", APP_TOKEN)])
        assert resp.status_code == 401
        ce = await c.publish(created())  # the sidecar sends the token: accepted
        await c.wait_settled([ce])
        assert c.final_answers([ce]) == {"SUCCESS": 1}


async def test_worker_sends_its_dapr_token_and_a_wrong_one_is_refused() -> None:
    env = {"DAPR_API_TOKEN": "not-the-sidecars"}
    async with cluster(1, env=env, sidecar_options={"dapr_api_token": DAPR_TOKEN},
                       start=False) as c:
        with pytest.raises(BaseException) as info:
            await c.start_replica(0)
        error = startup_error(info.value)  # a start-up error, never "ready" with a bad token
        assert isinstance(error, SettingsError) and str(error).startswith("DAPR_API_TOKEN: ")
        assert not c.sidecar.app_ready and c.sidecar.subscriptions == []
    async with cluster(1, env={"DAPR_API_TOKEN": DAPR_TOKEN}) as c:
        ce = await c.publish(created())
        await c.wait_settled([ce])
        assert c.final_answers([ce]) == {"SUCCESS": 1} and len(c.sidecar.jobs()) == 2


def _token_operand(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return isinstance(name, str) and name.lower().endswith(("token", "given"))


@pytest.mark.parametrize("module", ["worker/server/app.py", "devsidecar/app.py"])
def test_token_comparisons_are_constant_time(module: str) -> None:
    """Statically: tokens are compared with hmac.compare_digest, never with == or !=."""
    tree = ast.parse((ROOT / module).read_text())
    digest_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                    and ast.unparse(n.func) == "hmac.compare_digest"]
    assert digest_calls, f"{module} does not use hmac.compare_digest"
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq)
                                                 for op in node.ops):
            operands = [node.left, *node.comparators]
            assert not any(_token_operand(o) for o in operands), ast.unparse(node)


async def test_tokens_and_secret_values_never_in_logs_or_metrics(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"app": {"token": SECRET_VALUE}}))
    env = {"APP_API_TOKEN": "secret:app/token", "REMINDER_SECRET_STORE": "vault",
           "DAPR_API_TOKEN": DAPR_TOKEN, "REMINDER_LOG_LEVEL": "debug"}
    options = {"app_api_token": SECRET_VALUE, "secret_stores": {"vault": str(secrets)}}
    with structlog.testing.capture_logs() as logs:
        async with cluster(1, env=env, sidecar_options=options, start=False) as c:
            c.sidecar.faults.fail("secrets", times=4)  # start-up retries log errors
            await c.start_replica(0)
            await c.sidecar.wait_for(lambda: c.sidecar.app_ready)
            url = c.replicas[0].app_url
            c.sidecar.faults.fail("state", times=3)  # failures log sidecar answers
            ce = await c.publish(created(recurrence="daily"))
            await c.wait_settled([ce])
            c.sidecar.faults.fail("invoke", times=1)
            ce = await c.publish(event("task.completed", 2))
            await c.wait_settled([ce])
            for token in ("wrong", DAPR_TOKEN, SECRET_VALUE[:-1]):  # refused callers
                await c.client.post(f"{url}/task-events", headers={"dapr-api-token": token})
            await c.client.post(f"{url}/task-events", content=b"not json",
                                headers={"dapr-api-token": SECRET_VALUE})
            metrics = (await c.client.get(f"{c.replicas[0].ops_url}/metrics")).text
            assert task_key("u1", 1) in c.records()
    text = repr(logs)
    assert "event will be retried" in text and "secret store not answering" in text
    for value in (SECRET_VALUE, DAPR_TOKEN):
        assert value not in text and value not in metrics
    assert "secret:app/token" not in metrics


async def test_app_port_binds_loopback_by_default() -> None:
    assert load_settings({}).host == "127.0.0.1"
    async with cluster(1) as c:  # REMINDER_HOST unset
        app_server = c.replicas[0].running.servers[-1]
        addresses = {sock.getsockname()[0] for srv in app_server.servers
                     for sock in (srv.sockets or ())}
        assert addresses == {"127.0.0.1"}


def test_container_runs_as_non_root() -> None:
    dockerfile = ROOT / "Dockerfile"
    users = re.findall(r"^\s*USER\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE)
    assert users, "the Dockerfile never sets USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit() and int(user) >= 1000  # numeric: runAsNonRoot can verify it
