"""The long-running worker: ops port first, wait for the sidecar, then the app port.

Start-up order matters: daprd's /v1.0/healthz/outbound answers before the app
is up (waiting on it cannot deadlock); then /v1.0/metadata proves the token
and the daprd version (a StartupError, exit 2, before anything else is read);
the app port opens only once secrets are resolved, so the sidecar never meets
a half-configured worker.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Final

import anyio
import httpx2
import structlog
from prometheus_client import CollectorRegistry

from worker.clock import Clock, system_clock
from worker.commands.connect import SIDECAR_POLL, Connection, connect
from worker.dapr.readiness import Readiness
from worker.server.app import OpsApp, WorkerApp
from worker.server.listen import listen
from worker.server.serving import (
    Limits,
    Server,
    connection_caps,
    install_accept_error_filter,
    make_server,
    ops_limits,
    serve_socket,
)
from worker.settings import Settings
from worker.types import ASGIApp

DRAIN_SECONDS: Final = 20  # in-flight requests get this long after SIGTERM
# While no sidecar answers, the warning is repeated at growing intervals (seconds).
WAIT_WARN_FIRST: Final = 1.0
WAIT_WARN_MAX: Final = 60.0
# A secret store blip at start-up is waited out (not ready meanwhile); a missing
# secret (daprd answers 500 too) still ends in a one-line error after this long.
SECRETS_PATIENCE: Final = 30.0
log = structlog.get_logger("worker")


def make_worker_server(app: ASGIApp, max_connections: int,
                       limits: Limits | None = None) -> Server:
    return make_server(app, max_connections, limits=limits,
                       timeout_graceful_shutdown=DRAIN_SECONDS, server_header=False,
                       date_header=False)


@dataclass
class Running:
    """Handles a test or the CLI gets once the worker serves."""

    app_port: int = 0
    ops_port: int = 0
    settings: Settings | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    stop: anyio.Event = field(default_factory=anyio.Event)
    servers: list[Server] = field(default_factory=list)
    app: WorkerApp | None = None


async def run_daemon(
    settings: Settings, *, clock: Clock = system_clock, running: Running | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    task_status: anyio.abc.TaskStatus[Running] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `running.stop` is set, then drain in-flight requests and return.

    `transport`: the sidecar client's (tests); None for worker.dapr.http1's.
    """
    running = running or Running()
    install_accept_error_filter()
    app_cap, ops_cap = connection_caps(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    async with (connect(settings, clock=clock, registry=running.registry,
                        transport=transport) as conn,
                anyio.create_task_group() as tg):
        ops = OpsApp(running.registry, conn.sidecar)
        ops_sock = listen(settings.ops_host, settings.ops_port, "REMINDER_OPS_HOST",
                          "REMINDER_OPS_PORT")
        running.ops_port = ops_sock.getsockname()[1]
        ops_server = make_worker_server(ops, ops_cap, ops_limits(ops_cap))
        running.servers.append(ops_server)
        tg.start_soon(ops_server.serve, [ops_sock])
        try:
            ready = await _until_sidecar_ready(conn, running)
        except BaseException:
            ops_sock.close()  # the cancelled ops server leaves its socket open
            raise
        if ready is None:  # stopped while waiting
            ops_server.should_exit = True
            return
        jobs_api, app = ready
        try:
            app_sock = listen(conn.settings.host, conn.settings.port, "REMINDER_HOST",
                              "REMINDER_PORT")
        except BaseException:
            ops_sock.close()
            raise
        running.app_port = app_sock.getsockname()[1]
        app_server = make_worker_server(app, app_cap)
        running.servers.append(app_server)
        async with anyio.create_task_group() as app_tg:
            await app_tg.start(serve_socket, app_server, app_sock)
            readiness = Readiness(conn.settings, conn.sidecar, started=dict(
                app_port=running.app_port, ops_port=running.ops_port, jobs_api=jobs_api,
                sidecar=conn.settings.sidecar_url, app_max_connections=app_cap,
                ops_max_connections=ops_cap))
            ops.not_ready = readiness.not_ready
            ops.started = True
            app_tg.start_soon(readiness.watch, running.stop)  # logs `worker ready` or why not
            task_status.started(running)
            await running.stop.wait()
            log.info("draining", up_to_seconds=DRAIN_SECONDS)
            ops.started = False
            ops.stopping = True
            app.accepting = False
            app_server.should_exit = True
        ops_server.should_exit = True  # the app server has drained


async def _until_sidecar_ready(conn: Connection,
                               running: Running) -> tuple[str, WorkerApp] | None:
    """Wait for the sidecar, check it, resolve secrets: (jobs API, the app port's app);
    None when `running.stop` is set first. StartupError when it cannot run the worker."""
    started, warn_at, warn_every = anyio.current_time(), 0.0, WAIT_WARN_FIRST
    while not await conn.sidecar.outbound_healthy():
        if (now := anyio.current_time()) >= warn_at:  # 1, 2, 4 ... 60 s apart
            log.warning("waiting for the Dapr sidecar", url=conn.settings.sidecar_url,
                        waits_for="GET /v1.0/healthz/outbound",
                        waited_seconds=round(now - started),
                        hint="start daprd beside it, or try --dev")
            warn_at, warn_every = now + warn_every, min(warn_every * 2, WAIT_WARN_MAX)
        with anyio.move_on_after(SIDECAR_POLL):
            await running.stop.wait()
        if running.stop.is_set():
            return None
    jobs_api, service = await conn.ready(patience=SECRETS_PATIENCE)
    running.settings = conn.settings
    if conn.settings.app_api_token is None:
        log.warning("APP_API_TOKEN is not set: the app port accepts calls from anyone "
                    "who can reach it")
    running.app = WorkerApp(conn.settings, service)
    return jobs_api, running.app
