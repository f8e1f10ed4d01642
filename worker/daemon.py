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
import structlog
from prometheus_client import CollectorRegistry

from worker.app import OpsApp, WorkerApp
from worker.errors import PermanentSidecarError, SettingsError, StartupError, TransientError
from worker.metrics import Metrics
from worker.service import Service, system_clock
from worker.serving import (
    Server,
    bind_socket,
    connection_caps,
    install_accept_error_filter,
    make_server,
)
from worker.settings import Settings, env_name, with_secrets
from worker.sidecar import Sidecar, make_client
from worker.types import ASGIApp, Clock

DRAIN_SECONDS: Final = 20  # in-flight requests get this long after SIGTERM
SIDECAR_POLL: Final = 0.5
# A secret store blip at start-up is waited out (not ready meanwhile); a missing
# secret (daprd answers 500 too) still ends in a one-line error after this long.
SECRETS_PATIENCE: Final = 30.0
log = structlog.get_logger("worker")


def make_worker_server(app: ASGIApp, max_connections: int) -> Server:
    return make_server(app, max_connections, timeout_graceful_shutdown=DRAIN_SECONDS,
                       server_header=False, date_header=False)


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


async def resolve_secrets(settings: Settings, sidecar: Sidecar, *,
                          patience: float = 0.0) -> Settings:
    """Replace `secret:` settings by their values; a failing secret store (5xx, no
    answer) is retried for `patience` seconds before it is a SettingsError."""
    refs = settings.secret_refs()
    if not refs:
        return settings
    assert settings.secret_store is not None
    resolved: dict[str, str] = {}
    deadline = anyio.current_time() + patience
    for field_name, (name, key) in refs.items():
        while True:
            try:
                values = await sidecar.secret(settings.secret_store, name)
                break
            except TransientError as exc:
                if anyio.current_time() >= deadline:
                    raise SettingsError(
                        f"{env_name(field_name)}: cannot read secret {name}: {exc}") from None
                log.warning("secret store not answering; retrying", secret=name, error=str(exc))
                await anyio.sleep(SIDECAR_POLL)
            except PermanentSidecarError as exc:
                raise SettingsError(
                    f"{env_name(field_name)}: cannot read secret {name}: {exc}") from None
        if key not in values:
            raise SettingsError(f"{env_name(field_name)}: secret {name} has no key {key}")
        resolved[field_name] = values[key]
    return with_secrets(settings, resolved)


async def check_sidecar(sidecar: Sidecar, *, patience: float = 0.0) -> str:
    """The jobs path of a sidecar that can run this worker (token accepted, daprd 1.16 or
    later); its metadata failing (5xx, no answer) is retried for `patience` seconds.
    Raises StartupError (SettingsError for a rejected DAPR_API_TOKEN)."""
    deadline = anyio.current_time() + patience
    while True:
        try:
            return await sidecar.choose_jobs_api()
        except TransientError as exc:
            if anyio.current_time() >= deadline:
                raise StartupError(f"the Dapr sidecar's metadata does not answer: {exc}") from None
            log.warning("sidecar metadata not answering; retrying", error=str(exc))
            await anyio.sleep(SIDECAR_POLL)
        except PermanentSidecarError as exc:
            raise StartupError(f"the Dapr sidecar refuses its metadata: {exc}") from None


async def run_daemon(
    settings: Settings, *, clock: Clock = system_clock, running: Running | None = None,
    sidecar_timeout: float | None = None,
    task_status: anyio.abc.TaskStatus[Running] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `running.stop` is set, then drain in-flight requests and return.

    `sidecar_timeout` (seconds) overrides the sidecar client's timeout (tests).
    """
    running = running or Running()
    install_accept_error_filter()
    app_cap, ops_cap = connection_caps(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    metrics = Metrics.create(running.registry)
    token = settings.dapr_api_token.get_secret_value() if settings.dapr_api_token else None
    async with make_client(timeout=sidecar_timeout) as client, anyio.create_task_group() as tg:
        sidecar = Sidecar(settings.sidecar_url, client, metrics, api_token=token)
        ops = OpsApp(running.registry, sidecar)
        ops_sock = bind_socket(settings.ops_host, settings.ops_port)
        running.ops_port = ops_sock.getsockname()[1]
        ops_server = make_worker_server(ops, ops_cap)
        running.servers.append(ops_server)
        tg.start_soon(ops_server.serve, [ops_sock])

        waited = False
        while not await sidecar.outbound_healthy():
            if not waited:
                log.info("waiting for the Dapr sidecar", url=settings.sidecar_url)
                waited = True
            with anyio.move_on_after(SIDECAR_POLL):
                await running.stop.wait()
            if running.stop.is_set():
                ops_server.should_exit = True
                return
        try:
            jobs_api = await check_sidecar(sidecar, patience=SECRETS_PATIENCE)
            settings = await resolve_secrets(settings, sidecar, patience=SECRETS_PATIENCE)
        except BaseException:
            ops_sock.close()  # the cancelled ops server leaves its socket open
            raise
        running.settings = settings
        if settings.app_api_token is None:
            log.warning("APP_API_TOKEN is not set: the app port accepts calls from anyone "
                        "who can reach it")
        service = Service(settings, sidecar, metrics, clock)
        app = running.app = WorkerApp(settings, service)
        app_sock = bind_socket(settings.host, settings.port)
        running.app_port = app_sock.getsockname()[1]
        app_server = make_worker_server(app, app_cap)
        running.servers.append(app_server)
        app_done = anyio.Event()

        async def serve_app() -> None:
            try:
                await app_server.serve([app_sock])
            finally:
                app_done.set()

        tg.start_soon(serve_app)
        while not app_server.started:  # noqa: ASYNC110 (uvicorn offers no event for this)
            await anyio.sleep(0.01)
        ops.started = True
        log.info("worker ready", app_port=running.app_port, ops_port=running.ops_port,
                 jobs_api=jobs_api, sidecar=settings.sidecar_url,
                 app_max_connections=app_cap, ops_max_connections=ops_cap)
        task_status.started(running)
        await running.stop.wait()
        log.info("draining", seconds=DRAIN_SECONDS)
        ops.started = False
        app.accepting = False
        app_server.should_exit = True
        await app_done.wait()
        ops_server.should_exit = True
