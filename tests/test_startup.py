"""Start-up against a sidecar that cannot run the worker: one line on stderr, exit 2.

The real command line (`python -m worker`) against the development sidecar
over HTTP: a daprd older than 1.16, one reporting no version, and one that
rejects DAPR_API_TOKEN.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from devsidecar import DevSidecar, SidecarConfig, serve_sidecar
from tests.harness import free_port

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def sidecar(config: SidecarConfig) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_sidecar, DevSidecar(config), "127.0.0.1", 0)
        yield port
        tg.cancel_scope.cancel()


async def start_worker(port: int, *args: str, **env: str) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("REMINDER_", "DAPR_", "APP_API"))}
    full |= {"DAPR_HTTP_PORT": str(port), "REMINDER_PORT": str(free_port()),
             "REMINDER_OPS_PORT": "0", "REMINDER_OPS_HOST": "127.0.0.1", **env}
    with anyio.fail_after(20):  # a worker that starts anyway never exits: fail, not hang
        done = await anyio.run_process([sys.executable, "-m", "worker", *args], env=full,
                                       input=b"", check=False)
    return done.returncode, done.stderr.decode()


@pytest.mark.parametrize(("version", "says"), [
    ("1.15.4", "reminder-worker: cannot start: daprd 1.15.4 is too old: this worker needs 1.16"),
    ("1.14.0", "reminder-worker: cannot start: daprd 1.14.0 is too old"),
    ("unknown", "reminder-worker: cannot start: the Dapr sidecar reports runtimeVersion 'unknown'"),
])
async def test_daprd_older_than_1_16_is_refused_at_start_up(version: str, says: str) -> None:
    async with sidecar(SidecarConfig(runtime_version=version)) as port:
        status, stderr = await start_worker(port)
    assert status == 2 and stderr.startswith(says)
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


async def test_rejected_dapr_api_token_is_a_start_up_error_naming_it() -> None:
    async with sidecar(SidecarConfig(dapr_api_token="the-right-one")) as port:
        status, stderr = await start_worker(port, DAPR_API_TOKEN="a-wrong-one")
    assert status == 2
    assert stderr.startswith("reminder-worker: bad setting: DAPR_API_TOKEN: the Dapr sidecar "
                             "rejects it (HTTP 401)")
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


async def test_replay_checks_the_sidecar_too() -> None:
    async with sidecar(SidecarConfig(runtime_version="1.15.0")) as port:
        status, stderr = await start_worker(port, "--replay", "-")
    assert status == 2 and stderr.startswith("reminder-worker: cannot start: daprd 1.15.0")


# -- ports and hosts (issue 12 item 1): no sidecar is needed to fail here -------------

def taken_port() -> socket.socket:
    """A port really taken: a listening socket held by the test."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(("setting", "args"), [
    ("REMINDER_OPS_PORT", ()), ("REMINDER_PORT", ()), ("REMINDER_PORT", ("--dev",)),
    ("DAPR_HTTP_PORT", ("--dev",)),
])
async def test_a_port_in_use_is_one_line_naming_port_and_setting(
        setting: str, args: tuple[str, ...]) -> None:
    with taken_port() as held:
        port = held.getsockname()[1]
        status, stderr = await start_worker(free_port(), *args, **{setting: str(port)})
    assert status == 2, stderr
    assert stderr.startswith(f"reminder-worker: port {port} ({setting}) is already in use")
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


@pytest.mark.parametrize(("env", "args", "says"), [
    ({"REMINDER_PORT": "0"}, ("--dev",), "reminder-worker: bad setting: REMINDER_PORT: --dev "
                                         "needs a fixed port"),
    ({"REMINDER_HOST": "999.1.1.1"}, (), "reminder-worker: REMINDER_HOST=999.1.1.1 is not an "
                                         "address or host name"),
    ({"REMINDER_HOST": "999.1.1.1"}, ("--dev",), "reminder-worker: REMINDER_HOST=999.1.1.1 "),
    ({"REMINDER_OPS_HOST": "not-a-host"}, (), "reminder-worker: REMINDER_OPS_HOST=not-a-host "
                                              "is not an address or host name"),
])
async def test_unusable_listen_settings_are_one_line(
        env: dict[str, str], args: tuple[str, ...], says: str) -> None:
    status, stderr = await start_worker(free_port(), *args, **env)
    assert status == 2, stderr
    assert stderr.startswith(says)
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


@pytest.mark.parametrize("args", [(), ("--dev",), ("--check", "--dev")])
async def test_every_port_in_use_is_told_in_one_line(args: tuple[str, ...]) -> None:
    """Issue 20: the app and ops ports (and with --dev the sidecar's) both taken are
    both named, not one per attempt."""
    with taken_port() as app, taken_port() as ops, taken_port() as dev:
        ports = {"REMINDER_PORT": app.getsockname()[1], "REMINDER_OPS_PORT": ops.getsockname()[1]}
        if args:
            ports["DAPR_HTTP_PORT"] = dev.getsockname()[1]
        status, stderr = await start_worker(free_port(), *args,
                                            **{k: str(v) for k, v in ports.items()})
    assert status == 2, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    for setting, port in ports.items():
        assert f"port {port} ({setting}) is already in use" in stderr, stderr
